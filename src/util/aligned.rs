//! Page-aligned memory regions from mmap: O_DIRECT needs aligned buffers, and untouched
//! pages of a large region cost nothing until used.

use std::ptr::NonNull;

#[derive(Debug)]
pub struct AlignedRegion {
    ptr: NonNull<u8>,
    len: usize,
}

// The region is plain memory; whoever holds pointers into it coordinates access.
unsafe impl Send for AlignedRegion {}
unsafe impl Sync for AlignedRegion {}

impl AlignedRegion {
    /// Map `len` bytes of zeroed, page-aligned anonymous memory.
    pub fn new(len: usize) -> std::io::Result<Self> {
        Self::map(len, false)
    }

    /// The same, with every page faulted in now: for memory that I/O will use, so the
    /// data path never takes a page fault (a RAM device).
    pub fn populated(len: usize) -> std::io::Result<Self> {
        Self::map(len, true)
    }

    fn map(len: usize, populate: bool) -> std::io::Result<Self> {
        let len = len.max(1).next_multiple_of(4096);
        // SAFETY: anonymous private mapping with no address hint; checked for failure.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // Huge pages where the kernel has them: I/O buffers and RAM devices are copied
        // at random offsets, and 4 KiB pages cost a TLB miss per copy (two-level in a VM).
        // Advice only, so failure is harmless.
        // SAFETY: advice on the mapping just made.
        unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
        let region = AlignedRegion {
            ptr: NonNull::new(p as *mut u8).unwrap(),
            len,
        };
        if populate {
            region.fault_in();
        }
        Ok(region)
    }

    fn fault_in(&self) {
        // SAFETY: the whole range is our mapping.
        if unsafe {
            libc::madvise(
                self.ptr.as_ptr() as *mut libc::c_void,
                self.len,
                libc::MADV_POPULATE_WRITE,
            )
        } == 0
        {
            return;
        }
        // Kernels before 5.14: touch every page.
        for off in (0..self.len).step_by(4096) {
            // SAFETY: inside the mapping; writing the zero it already holds.
            unsafe { std::ptr::write_volatile(self.ptr.as_ptr().add(off), 0) };
        }
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slice `[offset, offset + len)` of the region.
    ///
    /// # Safety
    /// The caller must ensure no other live reference overlaps the range.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset + len <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset), len)
    }
}

impl Drop for AlignedRegion {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe {
            libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len);
        }
    }
}
