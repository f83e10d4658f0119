//! The null device: every I/O succeeds at once and moves no data. For benchmarks of the
//! fabric and the target's own overhead.

use super::{
    Bdev, BdevChannel, BdevInfo, BdevIo, BdevOp, ChildRoute, FileRegistry, SqeSink, Submitted,
};

#[derive(Debug)]
pub struct NullBdev {
    info: BdevInfo,
}

impl NullBdev {
    pub fn new(name: &str, block_size: u32, size_bytes: u64) -> Self {
        NullBdev {
            info: BdevInfo {
                name: name.into(),
                block_size,
                num_blocks: size_bytes / block_size as u64,
            },
        }
    }
}

impl Bdev for NullBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    /// Reads see zeroes (no superblock), writes vanish: a null member is always new.
    fn sync_io(&self, op: BdevOp, _offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if op == BdevOp::Read {
            buf.fill(0);
        }
        Ok(())
    }
    fn open_channel(
        &self,
        _: &mut dyn FileRegistry,
        _: ChildRoute,
    ) -> std::io::Result<Box<dyn BdevChannel>> {
        Ok(Box::new(NullChannel))
    }
}

struct NullChannel;

impl BdevChannel for NullChannel {
    fn submit(&mut self, io: &BdevIo, _: &mut dyn SqeSink) -> Submitted {
        match io.op {
            BdevOp::Read | BdevOp::Write => Submitted::Done(io.len as i32),
            _ => Submitted::Done(0),
        }
    }
}
