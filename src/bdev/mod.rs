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
/// the reactor's channel `index`, with tags at or above `tag_base`. A top-level device has
/// base 0; a volume gives each member device a base of its own and routes the member's
/// completions back to it (see `ChildRoute::member`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildRoute {
    pub index: u16,
    pub tag_base: u32,
}

/// Tags with this bit belong to a member device of a volume: bits 20..27 name the
/// device, bits 0..20 are the member's own tag.
const MEMBER_ROUTE: u32 = 1 << 27;
const MEMBER_SHIFT: u32 = 20;
/// Member devices a volume can route completions to.
pub const MAX_ROUTED_DEVICES: usize = 128;

impl ChildRoute {
    pub fn top(index: u16) -> ChildRoute {
        ChildRoute { index, tag_base: 0 }
    }

    /// The `user_data` of an operation with the channel's own `tag`.
    pub fn token(&self, tag: u32) -> u64 {
        debug_assert!(tag < 1 << MEMBER_SHIFT || self.tag_base == 0);
        crate::reactor::token::Token::new(crate::reactor::token::Kind::Child, self.index, 0, self.tag_base | tag).encode()
    }

    /// The route a volume (itself top-level) gives its member device `device`.
    pub fn member(&self, device: usize) -> ChildRoute {
        assert_eq!(self.tag_base, 0, "volumes are not nested");
        assert!(device < MAX_ROUTED_DEVICES);
        ChildRoute { index: self.index, tag_base: MEMBER_ROUTE | (device as u32) << MEMBER_SHIFT }
    }

    /// A tag of a member device's own operation: (device, the member's tag).
    pub fn member_of(tag: u32) -> Option<(usize, u32)> {
        (tag & MEMBER_ROUTE != 0).then(|| (((tag & !MEMBER_ROUTE) >> MEMBER_SHIFT) as usize, tag & ((1 << MEMBER_SHIFT) - 1)))
    }

    /// Tags a volume may use for its own member I/O (below the member routes).
    pub const OWN_TAGS: u32 = MEMBER_ROUTE;
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
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, format!("{} has no metadata I/O", self.name())))
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
    fn open_channel(&self, files: &mut dyn FileRegistry, route: ChildRoute) -> std::io::Result<Box<dyn BdevChannel>>;
}

/// Completions a composite channel hands back to the reactor: (parent user_data, result).
pub type Completions = Vec<(u64, i32)>;

pub trait BdevChannel {
    fn submit(&mut self, io: &BdevIo, sq: &mut dyn SqeSink) -> Submitted;

    /// A completion for one of this channel's own child I/Os (submitted with a
    /// `Kind::Child` token). Parent I/Os that finish are pushed to `done`.
    fn child_complete(&mut self, tag: u32, res: i32, sq: &mut dyn SqeSink, done: &mut Completions) {
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
