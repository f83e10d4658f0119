//! A fault-injecting wrapper around any device, switchable while the target runs: fail
//! every I/O, only reads or writes, I/O touching a range of blocks, or everything after N
//! more I/Os; and delay each I/O (devices completing through io_uring only).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{opcode, squeue, types};

use super::{
    Bdev, BdevChannel, BdevInfo, BdevIo, BdevOp, ChildRoute, Completions, FileRegistry, SqeSink,
    Submitted,
};
use crate::reactor::token::{Kind, Token};

/// The switches, shared by every reactor's channel of the device.
#[derive(Debug, Default)]
pub struct FaultControl {
    fail_all: AtomicBool,
    fail_reads: AtomicBool,
    fail_writes: AtomicBool,
    /// Blocks [start, end) whose I/O fails; empty when start >= end.
    bad_start: AtomicU64,
    bad_end: AtomicU64,
    /// I/Os left before every I/O fails; u64::MAX when off.
    fail_after: AtomicU64,
    delay_us: AtomicU64,
    injected: AtomicU64,
}

impl FaultControl {
    pub fn new() -> Self {
        let c = FaultControl::default();
        c.fail_after.store(u64::MAX, Ordering::Relaxed);
        c
    }

    /// Fail (true) or heal (false) the whole device.
    pub fn fail_device(&self, on: bool) {
        self.fail_all.store(on, Ordering::Relaxed);
    }
    pub fn fail_reads(&self, on: bool) {
        self.fail_reads.store(on, Ordering::Relaxed);
    }
    pub fn fail_writes(&self, on: bool) {
        self.fail_writes.store(on, Ordering::Relaxed);
    }
    /// Fail I/O that touches blocks [start, end).
    pub fn fail_range(&self, start: u64, end: u64) {
        self.bad_start.store(start, Ordering::Relaxed);
        self.bad_end.store(end, Ordering::Relaxed);
    }
    /// Let `n` more I/Os succeed, then fail everything.
    pub fn fail_after(&self, n: u64) {
        self.fail_after.store(n, Ordering::Relaxed);
    }
    pub fn set_delay(&self, d: Duration) {
        self.delay_us.store(d.as_micros() as u64, Ordering::Relaxed);
    }
    /// Clear every fault.
    pub fn heal(&self) {
        self.fail_device(false);
        self.fail_reads(false);
        self.fail_writes(false);
        self.fail_range(0, 0);
        self.fail_after.store(u64::MAX, Ordering::Relaxed);
        self.set_delay(Duration::ZERO);
    }
    /// I/Os failed so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    fn should_fail(&self, io: &BdevIo, block_shift: u32) -> bool {
        let countdown = self.fail_after.load(Ordering::Relaxed);
        if countdown != u64::MAX {
            // Racy between reactors by at most a few I/Os, which is fine for rehearsals.
            self.fail_after
                .store(countdown.saturating_sub(1), Ordering::Relaxed);
        }
        let (start, end) = (
            io.offset >> block_shift,
            (io.offset + io.len as u64) >> block_shift,
        );
        let in_bad_range = start < self.bad_end.load(Ordering::Relaxed)
            && self.bad_start.load(Ordering::Relaxed) < end.max(start + 1);
        self.fail_all.load(Ordering::Relaxed)
            || countdown == 0
            || (io.op == BdevOp::Read && self.fail_reads.load(Ordering::Relaxed))
            || (matches!(io.op, BdevOp::Write | BdevOp::WriteZeroes)
                && self.fail_writes.load(Ordering::Relaxed))
            || (matches!(io.op, BdevOp::Read | BdevOp::Write | BdevOp::WriteZeroes) && in_bad_range)
    }
}

#[derive(Debug)]
pub struct FaultBdev {
    inner: Arc<dyn Bdev>,
    control: Arc<FaultControl>,
}

impl FaultBdev {
    pub fn new(inner: Arc<dyn Bdev>) -> Self {
        FaultBdev {
            inner,
            control: Arc::new(FaultControl::new()),
        }
    }
    pub fn control(&self) -> &Arc<FaultControl> {
        &self.control
    }
}

impl Bdev for FaultBdev {
    fn info(&self) -> &BdevInfo {
        self.inner.info()
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
        if self
            .control
            .should_fail(&io, self.inner.block_size().trailing_zeros())
        {
            self.control.injected.fetch_add(1, Ordering::Relaxed);
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.sync_io(op, offset, buf)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.inner.sync()
    }
    fn remote(&self) -> Option<&super::remote::RemoteBdev> {
        self.inner.remote()
    }
    fn open_channel(
        &self,
        files: &mut dyn FileRegistry,
        route: ChildRoute,
    ) -> std::io::Result<Box<dyn BdevChannel>> {
        Ok(Box::new(FaultChannel {
            inner: self.inner.open_channel(files, route)?,
            control: self.control.clone(),
            block_shift: self.inner.block_size().trailing_zeros(),
            delay: Box::new(types::Timespec::new()),
        }))
    }
}

struct FaultChannel {
    inner: Box<dyn BdevChannel>,
    control: Arc<FaultControl>,
    block_shift: u32,
    /// The delay a linked timeout waits; boxed so its address is stable for the kernel.
    delay: Box<types::Timespec>,
}

/// Hands entries to the real ring, linking the first one behind a delay.
struct Delayed<'a> {
    sq: &'a mut dyn SqeSink,
    delay: Option<&'a types::Timespec>,
}

impl SqeSink for Delayed<'_> {
    fn push(&mut self, entry: squeue::Entry) {
        if let Some(ts) = self.delay.take() {
            // A hard link runs the I/O after the timeout even though the timeout "fails"
            // with ETIME; its own completion is ignored by the reactor.
            let t = opcode::Timeout::new(ts)
                .build()
                .flags(squeue::Flags::IO_HARDLINK)
                .user_data(Token::new(Kind::Ignore, 0, 0, 0).encode());
            self.sq.push(t);
        }
        self.sq.push(entry);
    }
}

impl BdevChannel for FaultChannel {
    fn submit(&mut self, io: &BdevIo, sq: &mut dyn SqeSink) -> Submitted {
        if self.control.should_fail(io, self.block_shift) {
            self.control.injected.fetch_add(1, Ordering::Relaxed);
            return Submitted::Done(-libc::EIO);
        }
        let us = self.control.delay_us.load(Ordering::Relaxed);
        if us == 0 {
            return self.inner.submit(io, sq);
        }
        *self.delay = types::Timespec::from(Duration::from_micros(us));
        let mut delayed = Delayed {
            sq,
            delay: Some(&self.delay),
        };
        self.inner.submit(io, &mut delayed)
    }

    fn child_complete(&mut self, tag: u64, res: i32, sq: &mut dyn SqeSink, done: &mut Completions) {
        self.inner.child_complete(tag, res, sq, done)
    }

    fn needs_polling(&self) -> bool {
        self.inner.needs_polling()
    }

    fn poll(&mut self, sq: &mut dyn SqeSink, done: &mut Completions) -> bool {
        self.inner.poll(sq, done)
    }

    fn member_stats(&mut self, out: &mut Vec<crate::stats::MemberStats>, reset: bool) {
        self.inner.member_stats(out, reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(op: BdevOp, lba: u64, blocks: u32) -> BdevIo {
        BdevIo {
            op,
            offset: lba * 512,
            len: blocks * 512,
            buf: std::ptr::null_mut(),
            buf_index: None,
            user_data: 0,
        }
    }

    #[test]
    fn switches() {
        let c = FaultControl::new();
        assert!(!c.should_fail(&io(BdevOp::Read, 0, 8), 9));
        c.fail_range(10, 20);
        assert!(c.should_fail(&io(BdevOp::Read, 5, 8), 9));
        assert!(!c.should_fail(&io(BdevOp::Read, 20, 8), 9));
        assert!(!c.should_fail(&io(BdevOp::Flush, 0, 0), 9));
        c.heal();
        c.fail_writes(true);
        assert!(c.should_fail(&io(BdevOp::Write, 0, 1), 9));
        assert!(!c.should_fail(&io(BdevOp::Read, 0, 1), 9));
        c.heal();
        c.fail_after(2);
        assert!(!c.should_fail(&io(BdevOp::Read, 0, 1), 9));
        assert!(!c.should_fail(&io(BdevOp::Read, 0, 1), 9));
        assert!(c.should_fail(&io(BdevOp::Read, 0, 1), 9));
    }
}
