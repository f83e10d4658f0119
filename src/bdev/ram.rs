//! A RAM-backed device: an anonymous mapping faulted in at creation (no page faults on
//! the data path), copied synchronously on the reactor the way a device's DMA would touch
//! it (`util::devcopy`: streaming stores in, prefetched reads out).

use std::sync::Arc;

use super::{
    Bdev, BdevChannel, BdevInfo, BdevIo, BdevOp, ChildRoute, FileRegistry, SqeSink, Submitted,
};
use crate::util::aligned::AlignedRegion;
use crate::util::devcopy;

#[derive(Debug)]
pub struct RamBdev {
    info: BdevInfo,
    mem: Arc<AlignedRegion>,
}

impl RamBdev {
    pub fn new(name: &str, block_size: u32, size_bytes: u64) -> std::io::Result<Self> {
        let mem = AlignedRegion::populated(size_bytes as usize)?;
        let info = BdevInfo {
            name: name.into(),
            block_size,
            num_blocks: mem.len() as u64 / block_size as u64,
        };
        Ok(RamBdev {
            info,
            mem: Arc::new(mem),
        })
    }
}

impl Bdev for RamBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn sync_io(&self, op: BdevOp, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let io = BdevIo {
            op,
            offset,
            len: buf.len() as u32,
            buf: buf.as_mut_ptr(),
            buf_index: None,
            user_data: 0,
        };
        match (RamChannel {
            mem: self.mem.clone(),
        })
        .submit(&io, &mut NoRing)
        {
            Submitted::Done(n) if n >= 0 => Ok(()),
            _ => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
    fn open_channel(
        &self,
        _: &mut dyn FileRegistry,
        _: ChildRoute,
    ) -> std::io::Result<Box<dyn BdevChannel>> {
        Ok(Box::new(RamChannel {
            mem: self.mem.clone(),
        }))
    }
}

/// RAM I/O never touches a ring.
struct NoRing;
impl SqeSink for NoRing {
    fn push(&mut self, _: io_uring::squeue::Entry) {
        unreachable!("RAM devices complete synchronously")
    }
}

struct RamChannel {
    mem: Arc<AlignedRegion>,
}

impl BdevChannel for RamChannel {
    fn submit(&mut self, io: &BdevIo, _: &mut dyn SqeSink) -> Submitted {
        let (off, len) = (io.offset as usize, io.len as usize);
        if io.op != BdevOp::Flush && off.checked_add(len).is_none_or(|end| end > self.mem.len()) {
            return Submitted::Done(-libc::EINVAL);
        }
        // SAFETY: the range was bounds-checked above; `io.buf` holds `len` bytes owned by
        // the request. Concurrent writers to one LBA race exactly as on a real disk.
        unsafe {
            let dev = self.mem.as_ptr().add(off);
            match io.op {
                BdevOp::Read => devcopy::from_device(io.buf, dev, len),
                BdevOp::Write => devcopy::to_device(dev, io.buf, len),
                BdevOp::WriteZeroes | BdevOp::Discard => std::ptr::write_bytes(dev, 0, len),
                BdevOp::Flush => {}
            }
        }
        Submitted::Done(if matches!(io.op, BdevOp::Read | BdevOp::Write) {
            io.len as i32
        } else {
            0
        })
    }
}
