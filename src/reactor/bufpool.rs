//! A reactor's preallocated pool of aligned data buffers in two size classes, registered
//! with its io_uring so member I/O can use fixed-buffer reads and writes.

use crate::util::aligned::AlignedRegion;

/// Buffer counts per class; each class is one aligned region.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    pub small_size: usize,
    pub small_count: usize,
    pub large_size: usize,
    pub large_count: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            small_size: 128 * 1024,
            small_count: 256,
            large_size: 1 << 20,
            large_count: 32,
        }
    }
}

/// A buffer taken from the pool; returned with `BufferPool::put`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolBuf {
    class: u8,
    index: u32,
}

struct Class {
    region: AlignedRegion,
    size: usize,
    free: Vec<u32>,
    first_reg_index: u16,
}

pub struct BufferPool {
    classes: [Class; 2],
    registered: bool,
}

impl BufferPool {
    pub fn new(cfg: &PoolConfig) -> std::io::Result<Self> {
        let class = |size: usize, count: usize, first: usize| -> std::io::Result<Class> {
            assert!(size.is_multiple_of(4096) && count > 0);
            Ok(Class {
                region: AlignedRegion::new(size * count)?,
                size,
                free: (0..count as u32).rev().collect(),
                first_reg_index: first as u16,
            })
        };
        assert!(cfg.small_count + cfg.large_count < u16::MAX as usize);
        Ok(BufferPool {
            classes: [
                class(cfg.small_size, cfg.small_count, 0)?,
                class(cfg.large_size, cfg.large_count, cfg.small_count)?,
            ],
            registered: false,
        })
    }

    /// iovecs of every buffer in registration order (index = registered buffer index).
    pub fn iovecs(&self) -> Vec<libc::iovec> {
        let mut v = Vec::new();
        for c in &self.classes {
            let count = c.region.len() / c.size;
            for i in 0..count {
                // SAFETY: the offset stays inside the class region.
                let base = unsafe { c.region.as_ptr().add(i * c.size) };
                v.push(libc::iovec {
                    iov_base: base as *mut libc::c_void,
                    iov_len: c.size,
                });
            }
        }
        v
    }

    pub fn max_len(&self) -> usize {
        self.classes[1].size
    }

    /// Smallest free buffer holding `len` bytes; None when none is free (the caller waits).
    pub fn get(&mut self, len: usize) -> Option<PoolBuf> {
        for (ci, c) in self.classes.iter_mut().enumerate() {
            if len <= c.size {
                if let Some(index) = c.free.pop() {
                    return Some(PoolBuf {
                        class: ci as u8,
                        index,
                    });
                }
            }
        }
        None
    }

    pub fn put(&mut self, b: PoolBuf) {
        let c = &mut self.classes[b.class as usize];
        debug_assert!(!c.free.contains(&b.index), "double free of pool buffer");
        c.free.push(b.index);
    }

    pub fn ptr(&self, b: PoolBuf) -> *mut u8 {
        let c = &self.classes[b.class as usize];
        // SAFETY: index < count, so the offset is inside the region.
        unsafe { c.region.as_ptr().add(b.index as usize * c.size) }
    }

    /// Record that `iovecs()` were registered with the ring.
    pub fn set_registered(&mut self, yes: bool) {
        self.registered = yes;
    }

    pub fn is_registered(&self) -> bool {
        self.registered
    }

    /// Registered buffer index, when the pool is registered with the ring.
    pub fn reg_index(&self, b: PoolBuf) -> Option<u16> {
        self.registered
            .then(|| self.classes[b.class as usize].first_reg_index + b.index as u16)
    }

    pub fn free_count(&self) -> usize {
        self.classes.iter().map(|c| c.free.len()).sum()
    }

    pub fn capacity(&self) -> usize {
        self.classes.iter().map(|c| c.region.len() / c.size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_smallest_fitting_class_and_returns() {
        let cfg = PoolConfig {
            small_size: 8192,
            small_count: 2,
            large_size: 65536,
            large_count: 1,
        };
        let mut p = BufferPool::new(&cfg).unwrap();
        let a = p.get(100).unwrap();
        let b = p.get(8192).unwrap();
        let c = p.get(100).unwrap(); // small class exhausted: falls back to large
        assert_eq!(p.reg_index(c), None);
        p.set_registered(true);
        assert_eq!(p.reg_index(c), Some(2));
        assert!(p.get(1).is_none());
        assert!(p.get(65537).is_none());
        assert_eq!(p.ptr(a) as usize % 4096, 0);
        assert_ne!(p.ptr(a), p.ptr(b));
        p.put(a);
        p.put(b);
        p.put(c);
        assert_eq!(p.free_count(), p.capacity());
        assert_eq!(p.iovecs().len(), 3);
    }
}
