//! Block devices: one interface (read, write, flush, write zeroes, discard) over several
//! backends. A `Bdev` is shared; each reactor opens its own `BdevChannel` on it, which
//! submits through that reactor's io_uring and never takes a lock.

pub mod fault;
pub mod file;
pub mod null;
pub mod ram;
pub mod remote;

use std::fmt::Debug;
use std::os::fd::RawFd;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BdevOp {
    Read,
    Write,
    Flush,
    WriteZeroes,
    Discard,
}

/// One block I/O. `buf` points at `len` bytes that stay valid until completion.
#[derive(Debug, Clone, Copy)]
pub struct BdevIo {
    pub op: BdevOp,
    pub offset: u64,
    pub len: u32,
    pub buf: *mut u8,
    /// Index of `buf` in the ring's registered buffer table, when it is registered.
    pub buf_index: Option<u16>,
    /// Returned with the completion.
    pub user_data: u64,
}

/// What became of a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Queued on the ring; a completion with `user_data` will follow.
    Queued,
    /// Finished synchronously: bytes transferred, or a negative errno.
    Done(i32),
}

/// Where a channel puts io_uring submissions: the reactor's ring.
pub trait SqeSink {
    fn push(&mut self, entry: io_uring::squeue::Entry);
}

/// Registers file descriptors with the reactor's ring; returns the fixed-file index.
pub trait FileRegistry {
    fn register(&mut self, fd: RawFd) -> Option<u32>;
}

/// Where the completions of a channel's own ring operations go: `Kind::Child` tokens for
/// the reactor's channel `index`, carrying a tag of up to 44 bits. A channel owns the tags
/// `base | t` for `t` below `1 << (bits - 1)`; a composite device (a volume, a stretched
/// volume) gives each device inside it a route of its own in the upper half of its range
/// (`member`), and hands the completions that arrive there back to that device
/// (`member_of`), so devices nest without knowing where they sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildRoute {
    pub index: u16,
    pub base: u64,
    /// Tag bits this channel and everything inside it may use.
    pub bits: u32,
}

/// Bits naming a device inside a composite: up to 128 devices.
const DEVICE_BITS: u32 = 7;
/// Member devices a composite can route completions to.
pub const MAX_ROUTED_DEVICES: usize = 1 << DEVICE_BITS;

impl ChildRoute {
    pub fn top(index: u16) -> ChildRoute {
        ChildRoute {
            index,
            base: 0,
            bits: crate::reactor::token::CHILD_TAG_BITS,
        }
    }

    /// Tags the channel may use for its own operations: 0 up to this.
    pub fn own_tags(&self) -> u64 {
        1 << (self.bits - 1)
    }

    /// The `user_data` of an operation with the channel's own `tag`.
    pub fn token(&self, tag: u64) -> u64 {
        debug_assert!(tag < self.own_tags());
        crate::reactor::token::Token::child(self.index, self.base | tag)
    }

    /// The route of device `device` inside this channel's device.
    pub fn member(&self, device: usize) -> ChildRoute {
        assert!(device < MAX_ROUTED_DEVICES);
        let bits = self.bits - 1 - DEVICE_BITS;
        assert!(bits >= 8, "devices nested too deep for the completion tag");
        ChildRoute {
            index: self.index,
            base: self.base | self.own_tags() | (device as u64) << bits,
            bits,
        }
    }

    /// A completion tag (relative to this channel) that belongs to a device inside it:
    /// (device, the tag relative to that device).
    pub fn member_of(&self, tag: u64) -> Option<(usize, u64)> {
        if tag < self.own_tags() {
            return None;
        }
        let bits = self.bits - 1 - DEVICE_BITS;
        Some((
            ((tag - self.own_tags()) >> bits) as usize,
            tag & ((1 << bits) - 1),
        ))
    }
}

/// What every device reports about itself.
#[derive(Debug, Clone)]
pub struct BdevInfo {
    pub name: String,
    pub block_size: u32,
    pub num_blocks: u64,
}

pub trait Bdev: Send + Sync + Debug {
    fn info(&self) -> &BdevInfo;
    fn name(&self) -> &str {
        &self.info().name
    }
    fn block_size(&self) -> u32 {
        self.info().block_size
    }
    fn num_blocks(&self) -> u64 {
        self.info().num_blocks
    }
    /// Blocking read or write of `buf` at byte `offset`, outside any reactor: superblocks
    /// and other metadata at assembly and on state changes. `buf` must be 4 KiB aligned
    /// and a multiple of 4 KiB. Writes are durable when this returns.
    fn sync_io(&self, op: BdevOp, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let _ = (op, offset, buf);
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("{} has no metadata I/O", self.name()),
        ))
    }

    /// After a crash: the byte ranges of the device that may hold writes that were in
    /// flight when it happened (a volume's write-intent bitmap knows them). None: unknown,
    /// any byte may.
    fn crash_ranges(&self) -> Option<Vec<(u64, u64)>> {
        None
    }

    /// The remote namespace behind this device, if it is one (status and metrics).
    fn remote(&self) -> Option<&remote::RemoteBdev> {
        None
    }

    /// Make every completed write durable (a flush outside any reactor, at shutdown).
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }

    /// Open this reactor's handle to the device. `route` addresses the completions of the
    /// channel's own ring operations (a composite device's member I/O, a remote device's
    /// socket operations) back to it (see `BdevChannel::child_complete`).
    fn open_channel(
        &self,
        files: &mut dyn FileRegistry,
        route: ChildRoute,
    ) -> std::io::Result<Box<dyn BdevChannel>>;
}

/// Completions a composite channel hands back to the reactor: (parent user_data, result).
pub type Completions = Vec<(u64, i32)>;

pub trait BdevChannel {
    fn submit(&mut self, io: &BdevIo, sq: &mut dyn SqeSink) -> Submitted;

    /// A completion for one of this channel's own ring operations or child I/Os (submitted
    /// with a `Kind::Child` token of its route); `tag` is relative to the route's base.
    /// Parent I/Os that finish are pushed to `done`.
    fn child_complete(&mut self, tag: u64, res: i32, sq: &mut dyn SqeSink, done: &mut Completions) {
        let _ = (tag, res, sq, done);
        unreachable!("this device submits no child I/O");
    }

    /// Whether `poll` can ever have work: composite devices. Asked once, when the reactor
    /// opens the channel; the reactor polls only these, on every turn.
    fn needs_polling(&self) -> bool {
        false
    }

    /// Called once per reactor loop turn: retry work waiting for a resource and hand back
    /// what finished. Returns true while work is waiting (the reactor then keeps polling).
    fn poll(&mut self, sq: &mut dyn SqeSink, done: &mut Completions) -> bool {
        let _ = (sq, done);
        false
    }

    /// Composite devices: append copies of their members' statistics (then reset them
    /// when asked). Called on request, off the I/O path.
    fn member_stats(&mut self, out: &mut Vec<crate::stats::MemberStats>, reset: bool) {
        let _ = (out, reset);
    }
}

/// The channel of a device that could not be opened: every I/O fails (so a volume fails
/// the member).
pub struct FailingChannel;

impl BdevChannel for FailingChannel {
    fn submit(&mut self, _: &BdevIo, _: &mut dyn SqeSink) -> Submitted {
        Submitted::Done(-libc::EIO)
    }
}

pub use file::FileBdev;
pub use null::NullBdev;
pub use ram::RamBdev;
