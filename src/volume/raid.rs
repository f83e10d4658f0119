//! A RAID volume as a block device: each reactor's channel splits a host I/O into member
//! I/Os by the layout, submits them through the members' channels on the same ring, and
//! completes the host I/O when the last member I/O returns.
//!
//! This engine serves the levels without parity (concat, RAID 0, 1 and 10); parity levels
//! are refused by configuration until their write path exists.

use std::sync::Arc;

use tracing::info;

use super::layout::{Layout, LayoutError, Level, Location};
use crate::bdev::{Bdev, BdevChannel, BdevInfo, BdevIo, BdevOp, Completions, FileRegistry, SqeSink, Submitted};
use crate::reactor::token::{Kind, Token};
use crate::util::slab::Slab;

/// Bytes at the start of every member kept for the superblock and write-intent bitmap.
pub const RESERVED_BYTES: u64 = 1 << 20;
/// Host I/Os one channel (one reactor) may have in flight on a volume.
const MAX_PARENTS: usize = 8192;
/// Member I/Os one channel may have in flight.
const MAX_CHILDREN: usize = 65536;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0}")]
    Layout(#[from] LayoutError),
    #[error("member '{member}' has block size {got}, the volume uses {want}")]
    BlockSize { member: String, got: u32, want: u32 },
    #[error("member '{0}' is smaller than the reserved metadata area")]
    TooSmall(String),
    #[error("strip size {0} bytes is not a power of two between the block size and 1 MiB")]
    Strip(u64),
    #[error("{0:?} volumes are not supported yet")]
    Unsupported(Level),
}

#[derive(Debug)]
pub struct RaidBdev {
    info: BdevInfo,
    layout: Arc<Layout>,
    members: Vec<Arc<dyn Bdev>>,
    /// Blocks reserved at the start of each member.
    data_offset: u64,
}

impl RaidBdev {
    pub fn new(name: &str, level: Level, members: Vec<Arc<dyn Bdev>>, group_size: usize, strip_bytes: u64) -> Result<Self, VolumeError> {
        if level.parity_count() > 0 {
            return Err(VolumeError::Unsupported(level));
        }
        let block_size = members.first().map_or(512, |m| m.block_size());
        if let Some(m) = members.iter().find(|m| m.block_size() != block_size) {
            return Err(VolumeError::BlockSize { member: m.name().into(), got: m.block_size(), want: block_size });
        }
        if !strip_bytes.is_power_of_two() || strip_bytes < block_size as u64 || strip_bytes > 1 << 20 {
            return Err(VolumeError::Strip(strip_bytes));
        }
        let data_offset = RESERVED_BYTES / block_size as u64;
        let mut sizes = Vec::with_capacity(members.len());
        for m in &members {
            sizes.push(m.num_blocks().checked_sub(data_offset).filter(|s| *s > 0).ok_or_else(|| VolumeError::TooSmall(m.name().into()))?);
        }
        let layout = Layout::new(level, &sizes, group_size, strip_bytes / block_size as u64)?;
        if level != Level::Concat && sizes.iter().any(|s| *s != layout.member_blocks) {
            info!(volume = name, used_blocks = layout.member_blocks, "members differ in size: each contributes only as much as the smallest");
        }
        let info = BdevInfo { name: name.into(), block_size, num_blocks: layout.capacity() };
        Ok(RaidBdev { info, layout: Arc::new(layout), members, data_offset })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }
}

impl Bdev for RaidBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self, files: &mut dyn FileRegistry, index: u16) -> std::io::Result<Box<dyn BdevChannel>> {
        // Member channels are private to this volume channel: their completions come back
        // as Child tokens of the volume and are routed here by the reactor.
        let members = self.members.iter().map(|m| m.open_channel(files, index)).collect::<Result<_, _>>()?;
        Ok(Box::new(RaidChannel {
            index,
            layout: self.layout.clone(),
            members,
            block_shift: self.info.block_size.trailing_zeros(),
            data_offset: self.data_offset,
            parents: Slab::with_capacity(MAX_PARENTS),
            children: Slab::with_capacity(MAX_CHILDREN),
            next_copy: 0,
        }))
    }
}

/// A host I/O in progress.
#[derive(Debug, Clone, Copy)]
struct Parent {
    user_data: u64,
    pending: u32,
    /// Bytes on success (what the submitter expects), or the first negative errno.
    result: i32,
}

struct RaidChannel {
    index: u16,
    layout: Arc<Layout>,
    members: Vec<Box<dyn BdevChannel>>,
    block_shift: u32,
    data_offset: u64,
    parents: Slab<Parent>,
    /// Child tag -> (parent, bytes the child must transfer).
    children: Slab<(u32, i32)>,
    /// Round-robin choice among mirror copies for reads.
    next_copy: usize,
}

impl RaidChannel {
    fn member_io(&self, io: &BdevIo, loc: Location, vol_offset: u64, blocks: u64) -> BdevIo {
        let bytes = blocks << self.block_shift;
        let buf = if io.buf.is_null() {
            io.buf
        } else {
            // SAFETY: vol_offset + bytes lies inside the parent's buffer of io.len bytes.
            unsafe { io.buf.add(vol_offset as usize) }
        };
        BdevIo {
            op: io.op,
            offset: (self.data_offset + loc.member_lba) << self.block_shift,
            len: bytes as u32,
            buf,
            buf_index: io.buf_index,
            user_data: 0,
        }
    }

    /// Submit one member I/O on behalf of parent `p`.
    fn child(&mut self, p: u32, member: usize, mut io: BdevIo, sq: &mut dyn SqeSink) {
        let expect = if matches!(io.op, BdevOp::Read | BdevOp::Write) { io.len as i32 } else { 0 };
        let Some(tag) = self.children.insert((p, expect)) else {
            self.note(p, -libc::EBUSY, 0);
            return;
        };
        io.user_data = Token::new(Kind::Child, self.index, 0, tag).encode();
        match self.members[member].submit(&io, sq) {
            Submitted::Queued => self.parents.get_mut(p).pending += 1,
            Submitted::Done(res) => {
                self.children.remove(tag);
                self.note(p, res, expect);
            }
        }
    }

    fn note(&mut self, p: u32, res: i32, expect: i32) {
        let parent = self.parents.get_mut(p);
        if res != expect && parent.result >= 0 {
            parent.result = if res < 0 { res } else { -libc::EIO };
        }
    }

    /// Each run of the request that stays inside one strip: (volume lba, blocks, offset).
    fn for_each_run(&mut self, io: &BdevIo, mut f: impl FnMut(&mut Self, u64, u64, u64)) {
        let mut lba = io.offset >> self.block_shift;
        let end = lba + (io.len as u64 >> self.block_shift);
        let mut offset = 0;
        while lba < end {
            let n = self.layout.run_in_strip(lba).min(end - lba);
            f(self, lba, n, offset);
            lba += n;
            offset += n << self.block_shift;
        }
    }

    fn fan_out(&mut self, p: u32, io: &BdevIo, sq: &mut dyn SqeSink) {
        match io.op {
            BdevOp::Flush => {
                for m in 0..self.members.len() {
                    let fio = BdevIo { user_data: 0, ..*io };
                    self.child(p, m, fio, sq);
                }
            }
            BdevOp::Read => self.for_each_run(io, |ch, lba, n, off| {
                let copies = ch.layout.copies(lba).count();
                ch.next_copy = ch.next_copy.wrapping_add(1);
                let loc = ch.layout.copies(lba).nth(ch.next_copy % copies).unwrap();
                let mio = ch.member_io(io, loc, off, n);
                ch.child(p, loc.member, mio, sq);
            }),
            BdevOp::Write | BdevOp::WriteZeroes | BdevOp::Discard => self.for_each_run(io, |ch, lba, n, off| {
                let copies = ch.layout.copies(lba).count();
                for c in 0..copies {
                    let loc = ch.layout.copies(lba).nth(c).unwrap();
                    let mio = ch.member_io(io, loc, off, n);
                    ch.child(p, loc.member, mio, sq);
                }
            }),
        }
    }
}

impl BdevChannel for RaidChannel {
    fn submit(&mut self, io: &BdevIo, sq: &mut dyn SqeSink) -> Submitted {
        let ok = if matches!(io.op, BdevOp::Read | BdevOp::Write) { io.len as i32 } else { 0 };
        let Some(p) = self.parents.insert(Parent { user_data: io.user_data, pending: 0, result: ok }) else {
            return Submitted::Done(-libc::EBUSY);
        };
        self.fan_out(p, io, sq);
        let parent = *self.parents.get_mut(p);
        if parent.pending == 0 {
            self.parents.remove(p);
            return Submitted::Done(parent.result);
        }
        Submitted::Queued
    }

    fn child_complete(&mut self, tag: u32, res: i32, _sq: &mut dyn SqeSink, done: &mut Completions) {
        let (p, expect) = self.children.remove(tag);
        self.note(p, res, expect);
        let parent = self.parents.get_mut(p);
        parent.pending -= 1;
        if parent.pending == 0 {
            let parent = self.parents.remove(p);
            done.push((parent.user_data, parent.result));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::RamBdev;

    struct NoFiles;
    impl FileRegistry for NoFiles {
        fn register(&mut self, _: std::os::fd::RawFd) -> Option<u32> {
            None
        }
    }
    struct NoRing;
    impl SqeSink for NoRing {
        fn push(&mut self, _: io_uring::squeue::Entry) {
            panic!("RAM members complete synchronously");
        }
    }

    fn volume(level: Level, members: usize, group: usize) -> (RaidBdev, Vec<Arc<dyn Bdev>>) {
        let m: Vec<Arc<dyn Bdev>> = (0..members).map(|i| Arc::new(RamBdev::new(&format!("m{i}"), 512, 4 << 20).unwrap()) as Arc<dyn Bdev>).collect();
        (RaidBdev::new("v", level, m.clone(), group, 16384).unwrap(), m)
    }

    fn rw(ch: &mut dyn BdevChannel, op: BdevOp, offset: u64, buf: &mut [u8]) -> Submitted {
        let io = BdevIo { op, offset, len: buf.len() as u32, buf: buf.as_mut_ptr(), buf_index: None, user_data: 1 };
        ch.submit(&io, &mut NoRing)
    }

    #[test]
    fn writes_read_back_and_land_where_the_layout_says() {
        for (level, n, g) in [(Level::Raid0, 3, 0), (Level::Raid1, 3, 0), (Level::Raid10, 4, 2), (Level::Concat, 2, 0)] {
            let (v, members) = volume(level, n, g);
            let mut ch = v.open_channel(&mut NoFiles, 0).unwrap();
            let mut data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + 3) as u8).collect();
            data.truncate(200_192); // whole blocks
            let len = data.len() / 512 * 512;
            let data = &mut data[..len];
            let offset = 512 * 37;
            assert_eq!(rw(&mut *ch, BdevOp::Write, offset, data), Submitted::Done(len as i32));
            let mut back = vec![0u8; len];
            assert_eq!(rw(&mut *ch, BdevOp::Read, offset, &mut back), Submitted::Done(len as i32));
            assert!(back == data, "{level:?}");
            // Every copy of block 37 + 40 holds the right bytes on its member.
            let lba = 37 + 40;
            for loc in v.layout().copies(lba) {
                let mut mch = members[loc.member].open_channel(&mut NoFiles, 0).unwrap();
                let mut blk = vec![0u8; 512];
                rw(&mut *mch, BdevOp::Read, (v.data_offset + loc.member_lba) * 512, &mut blk);
                assert_eq!(blk, data[40 * 512..41 * 512], "{level:?} member {}", loc.member);
            }
        }
    }

    #[test]
    fn parity_levels_are_refused_for_now() {
        let m: Vec<Arc<dyn Bdev>> = (0..4).map(|i| Arc::new(RamBdev::new(&format!("m{i}"), 512, 4 << 20).unwrap()) as Arc<dyn Bdev>).collect();
        assert!(matches!(RaidBdev::new("v", Level::Raid5, m, 0, 65536), Err(VolumeError::Unsupported(Level::Raid5))));
    }
}
