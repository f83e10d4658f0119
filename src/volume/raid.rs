//! A RAID volume as a block device. Each reactor's channel splits a host I/O into member
//! I/Os by the layout and submits them through the members' channels on the same ring.
//!
//! Parity levels write stripe by stripe: a stripe write takes the stripe's lock (shared by
//! all reactors), reads what its strategy needs (old data and parity for read-modify-write,
//! the untouched rows for reconstruct-write, nothing for a full stripe), computes parity
//! and writes data and parity. The host I/O completes when every member write has.
//! Reads never lock: they go straight to the data strips.
//!
//! Every member completion, even a synchronous one, is handled from one queue, so the
//! state machines advance iteratively and never recurse.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tracing::info;

use super::layout::{Layout, LayoutError, Level, Location};
use super::plan::{self, Rows, Strategy, StripeWrite, MAX_DATA};
use crate::bdev::{Bdev, BdevChannel, BdevInfo, BdevIo, BdevOp, Completions, FileRegistry, SqeSink, Submitted};
use crate::parity::{self, Update};
use crate::reactor::token::{Kind, Token};
use crate::util::aligned::AlignedRegion;
use crate::util::slab::Slab;

/// Bytes at the start of every member kept for the superblock and write-intent bitmap.
pub const RESERVED_BYTES: u64 = 1 << 20;
/// Host I/Os one channel (one reactor) may have in flight on a volume.
const MAX_PARENTS: usize = 4096;
/// Stripe writes one host write keeps in flight.
const STRIPE_WINDOW: u32 = 4;
/// Member I/Os one channel may have in flight.
const MAX_CHILDREN: usize = 1 << 19;
/// Stripe locks shared by the reactors (hashed; unrelated stripes rarely collide).
const LOCK_BUCKETS: usize = 1 << 16;
/// Scratch memory per channel for old data and parity.
const SCRATCH_BYTES: usize = 32 << 20;

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
}

/// One lock per hashed stripe, shared by every reactor's channel of a volume.
#[derive(Debug)]
struct StripeLocks(Box<[AtomicBool]>);

impl StripeLocks {
    fn new() -> Self {
        StripeLocks((0..LOCK_BUCKETS).map(|_| AtomicBool::new(false)).collect())
    }
    fn try_lock(&self, key: usize) -> bool {
        self.0[key].compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }
    fn unlock(&self, key: usize) {
        let was = self.0[key].swap(false, Ordering::Release);
        debug_assert!(was, "unlocking a free stripe lock");
    }
}

#[derive(Debug)]
pub struct RaidBdev {
    info: BdevInfo,
    layout: Arc<Layout>,
    members: Vec<Arc<dyn Bdev>>,
    /// Blocks reserved at the start of each member.
    data_offset: u64,
    locks: Arc<StripeLocks>,
}

impl RaidBdev {
    pub fn new(name: &str, level: Level, members: Vec<Arc<dyn Bdev>>, group_size: usize, strip_bytes: u64) -> Result<Self, VolumeError> {
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
        Ok(RaidBdev { info, layout: Arc::new(layout), members, data_offset, locks: Arc::new(StripeLocks::new()) })
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
        let strip_bytes = (self.layout.strip_blocks as usize) << self.info.block_size.trailing_zeros();
        let parity = self.layout.level.parity_count() > 0;
        Ok(Box::new(RaidChannel {
            index,
            layout: self.layout.clone(),
            members,
            block_shift: self.info.block_size.trailing_zeros(),
            data_offset: self.data_offset,
            locks: self.locks.clone(),
            parents: Slab::with_capacity(MAX_PARENTS),
            stripes: Slab::with_capacity(if parity { MAX_PARENTS * STRIPE_WINDOW as usize } else { 0 }),
            children: Slab::with_capacity(MAX_CHILDREN),
            waiting: VecDeque::with_capacity(if parity { MAX_PARENTS * STRIPE_WINDOW as usize } else { 0 }),
            sync_done: VecDeque::with_capacity(1024),
            completed: Vec::with_capacity(MAX_PARENTS),
            submitting: None,
            submit_result: None,
            scratch: Scratch::new(if parity { strip_bytes } else { 0 }, self.layout.group_size)?,
            zeroes: AlignedRegion::new(if parity { strip_bytes } else { 0 })?,
            next_copy: 0,
        }))
    }
}

/// Fixed-size scratch chunks (one strip each) for old data, row images and parity.
struct Scratch {
    region: AlignedRegion,
    chunk: usize,
    free: Vec<u16>,
}

impl Scratch {
    fn new(chunk: usize, group_size: usize) -> std::io::Result<Scratch> {
        if chunk == 0 {
            return Ok(Scratch { region: AlignedRegion::new(0)?, chunk: 0, free: Vec::new() });
        }
        // Room for several whole-stripe operations whatever the strip size.
        let count = (SCRATCH_BYTES / chunk).clamp(4 * (group_size + 2), u16::MAX as usize);
        Ok(Scratch { region: AlignedRegion::new(count * chunk)?, chunk, free: (0..count as u16).rev().collect() })
    }

    fn ptr(&self, id: u16) -> *mut u8 {
        // SAFETY: id < count, so the chunk lies inside the region.
        unsafe { self.region.as_ptr().add(id as usize * self.chunk) }
    }
}

#[derive(Debug, Clone, Copy)]
enum Owner {
    Parent(u32),
    Stripe(u32),
}

/// A host I/O in progress.
#[derive(Debug, Clone, Copy)]
struct Parent {
    user_data: u64,
    op: BdevOp,
    buf: *mut u8,
    buf_index: Option<u16>,
    /// Bytes on success (what the submitter expects), or the first negative errno.
    result: i32,
    /// Member I/Os (mirrors, striping) or live stripe writes (parity) outstanding.
    pending: u32,
    /// Parity writes: first block of the I/O, next block to plan, end.
    io_start: u64,
    cursor: u64,
    end: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StripeState {
    Waiting,
    Reading,
    Writing,
}

/// Slot of P and Q in `StripeOp::chunks`, after the data strips.
const P_CHUNK: usize = MAX_DATA;
const Q_CHUNK: usize = MAX_DATA + 1;
const NO_CHUNK: u16 = u16::MAX;

#[derive(Debug, Clone, Copy)]
struct StripeOp {
    parent: u32,
    w: StripeWrite,
    strategy: Strategy,
    state: StripeState,
    pending: u32,
    failed: bool,
    /// Scratch chunk per data index (old data or row image), then P and Q.
    chunks: [u16; MAX_DATA + 2],
}

struct RaidChannel {
    index: u16,
    layout: Arc<Layout>,
    members: Vec<Box<dyn BdevChannel>>,
    block_shift: u32,
    data_offset: u64,
    locks: Arc<StripeLocks>,
    parents: Slab<Parent>,
    stripes: Slab<StripeOp>,
    /// Child tag -> (owner, bytes the child must transfer).
    children: Slab<(Owner, i32)>,
    /// Stripe writes waiting for their lock or scratch, oldest first.
    waiting: VecDeque<u32>,
    /// Member completions not yet processed (synchronous ones land here too).
    sync_done: VecDeque<(u32, i32)>,
    /// Finished host I/Os to hand to the reactor.
    completed: Completions,
    /// The host I/O `submit` is working on, whose result it returns directly.
    submitting: Option<u32>,
    submit_result: Option<i32>,
    scratch: Scratch,
    zeroes: AlignedRegion,
    /// Round-robin choice among mirror copies for reads.
    next_copy: usize,
}

impl RaidChannel {
    fn parity(&self) -> usize {
        self.layout.level.parity_count()
    }

    fn bytes(&self, blocks: u64) -> usize {
        (blocks << self.block_shift) as usize
    }

    /// Submit one member I/O; its completion comes back through `sync_done` or the ring.
    fn child(&mut self, owner: Owner, member: usize, mut io: BdevIo, sq: &mut dyn SqeSink) {
        let expect = if matches!(io.op, BdevOp::Read | BdevOp::Write) { io.len as i32 } else { 0 };
        let tag = self.children.insert((owner, expect)).expect("member I/O table sized for the worst case");
        match owner {
            Owner::Parent(p) => self.parents.get_mut(p).pending += 1,
            Owner::Stripe(s) => self.stripes.get_mut(s).pending += 1,
        }
        io.user_data = Token::new(Kind::Child, self.index, 0, tag).encode();
        if let Submitted::Done(res) = self.members[member].submit(&io, sq) {
            self.sync_done.push_back((tag, res));
        }
    }

    fn member_io(&self, op: BdevOp, loc: Location, blocks: u64, buf: *mut u8, buf_index: Option<u16>) -> BdevIo {
        BdevIo {
            op,
            offset: (self.data_offset + loc.member_lba) << self.block_shift,
            len: self.bytes(blocks) as u32,
            buf,
            buf_index,
            user_data: 0,
        }
    }

    fn finish_parent_if_done(&mut self, p: u32) {
        let parent = *self.parents.get_mut(p);
        if parent.pending > 0 || parent.cursor < parent.end {
            return;
        }
        self.parents.remove(p);
        if self.submitting == Some(p) {
            self.submit_result = Some(parent.result);
        } else {
            self.completed.push((parent.user_data, parent.result));
        }
    }

    fn fail_parent(&mut self, p: u32, res: i32) {
        let parent = self.parents.get_mut(p);
        if parent.result >= 0 {
            parent.result = if res < 0 { res } else { -libc::EIO };
        }
    }

    fn on_child(&mut self, tag: u32, res: i32, sq: &mut dyn SqeSink) {
        let (owner, expect) = self.children.remove(tag);
        match owner {
            Owner::Parent(p) => {
                if res != expect {
                    self.fail_parent(p, res);
                }
                self.parents.get_mut(p).pending -= 1;
                self.finish_parent_if_done(p);
            }
            Owner::Stripe(s) => {
                let op = self.stripes.get_mut(s);
                op.failed |= res != expect;
                op.pending -= 1;
                if op.pending == 0 {
                    self.advance(s, sq);
                }
            }
        }
    }

    /// Process queued member completions until none are left.
    fn drain(&mut self, sq: &mut dyn SqeSink) {
        while let Some((tag, res)) = self.sync_done.pop_front() {
            self.on_child(tag, res, sq);
        }
    }

    // ------------------------------------------------------------ mirrors and striping

    /// Each run of the request that stays inside one strip: (volume lba, blocks, offset).
    fn for_each_run(&mut self, io: &BdevIo, mut f: impl FnMut(&mut Self, u64, u64, usize)) {
        let mut lba = io.offset >> self.block_shift;
        let end = lba + (io.len as u64 >> self.block_shift);
        let mut offset = 0;
        while lba < end {
            let n = self.layout.run_in_strip(lba).min(end - lba);
            f(self, lba, n, offset);
            lba += n;
            offset += self.bytes(n);
        }
    }

    fn fan_out(&mut self, p: u32, io: &BdevIo, sq: &mut dyn SqeSink) {
        let sub = |io: &BdevIo, off: usize| if io.buf.is_null() { io.buf } else { io.buf.wrapping_add(off) };
        match io.op {
            BdevOp::Flush => {
                for m in 0..self.members.len() {
                    self.child(Owner::Parent(p), m, BdevIo { user_data: 0, ..*io }, sq);
                }
            }
            BdevOp::Read => self.for_each_run(io, |ch, lba, n, off| {
                let copies = ch.layout.copies(lba).count();
                ch.next_copy = ch.next_copy.wrapping_add(1);
                let loc = ch.layout.copies(lba).nth(ch.next_copy % copies).unwrap();
                let mio = ch.member_io(BdevOp::Read, loc, n, sub(io, off), io.buf_index);
                ch.child(Owner::Parent(p), loc.member, mio, sq);
            }),
            BdevOp::Write | BdevOp::WriteZeroes | BdevOp::Discard => self.for_each_run(io, |ch, lba, n, off| {
                let copies = ch.layout.copies(lba).count();
                for c in 0..copies {
                    let loc = ch.layout.copies(lba).nth(c).unwrap();
                    let mio = ch.member_io(io.op, loc, n, sub(io, off), io.buf_index);
                    ch.child(Owner::Parent(p), loc.member, mio, sq);
                }
            }),
        }
    }

    // ------------------------------------------------------------ parity writes

    /// Start more stripe writes of host write `p`, up to its window.
    fn pump(&mut self, p: u32, sq: &mut dyn SqeSink) {
        loop {
            let parent = *self.parents.get_mut(p);
            if parent.cursor >= parent.end || parent.pending >= STRIPE_WINDOW {
                return;
            }
            let (w, next) = plan::next_stripe(&self.layout, parent.io_start, parent.cursor, parent.end);
            let op = StripeOp {
                parent: p,
                strategy: plan::choose(&w, self.parity()),
                w,
                state: StripeState::Waiting,
                pending: 0,
                failed: false,
                chunks: [NO_CHUNK; MAX_DATA + 2],
            };
            let s = self.stripes.insert(op).expect("stripe table sized for every parent's window");
            let parent = self.parents.get_mut(p);
            parent.cursor = next;
            parent.pending += 1;
            if !self.try_start(s, sq) {
                self.waiting.push_back(s);
            }
        }
    }

    fn lock_key(&self, w: &StripeWrite) -> usize {
        (w.stripe as usize).wrapping_mul(self.layout.groups()).wrapping_add(w.group) % LOCK_BUCKETS
    }

    /// Data strips that need a scratch chunk under the op's strategy.
    fn needs_chunk(op: &StripeOp, i: usize) -> bool {
        let written = op.w.written[i];
        match op.strategy {
            Strategy::ReadModifyWrite => !written.is_empty(),
            Strategy::ReconstructWrite => written != op.w.rows,
        }
    }

    /// Take the stripe lock and scratch, then issue the reads. False: try again later.
    fn try_start(&mut self, s: u32, sq: &mut dyn SqeSink) -> bool {
        let mut op = *self.stripes.get_mut(s);
        let key = self.lock_key(&op.w);
        let data_chunks = (0..op.w.k).filter(|&i| Self::needs_chunk(&op, i)).count();
        if self.scratch.free.len() < data_chunks + self.parity() || !self.locks.try_lock(key) {
            return false;
        }
        for i in 0..op.w.k {
            if Self::needs_chunk(&op, i) {
                op.chunks[i] = self.scratch.free.pop().unwrap();
            }
        }
        op.chunks[P_CHUNK] = self.scratch.free.pop().unwrap();
        if self.parity() == 2 {
            op.chunks[Q_CHUNK] = self.scratch.free.pop().unwrap();
        }
        op.state = StripeState::Reading;
        *self.stripes.get_mut(s) = op;
        self.issue_reads(s, sq);
        if self.stripes.get_mut(s).pending == 0 {
            self.advance(s, sq);
        }
        true
    }

    fn member_for(&self, w: &StripeWrite, slot: usize) -> usize {
        self.layout.member_of(w.group, slot)
    }

    fn stripe_io(&mut self, s: u32, op: BdevOp, slot: usize, rows: Rows, buf: *mut u8, buf_index: Option<u16>, sq: &mut dyn SqeSink) {
        let w = self.stripes.get_mut(s).w;
        let loc = Location { member: self.member_for(&w, slot), member_lba: w.stripe * self.layout.strip_blocks + rows.start };
        let io = self.member_io(op, loc, rows.len(), buf, buf_index);
        self.child(Owner::Stripe(s), loc.member, io, sq);
    }

    /// Pointer to the chunk's bytes for `row` when the chunk starts at row `base`.
    fn chunk_at(&self, id: u16, base: u64, row: u64) -> *mut u8 {
        self.scratch.ptr(id).wrapping_add(self.bytes(row - base))
    }

    fn issue_reads(&mut self, s: u32, sq: &mut dyn SqeSink) {
        let op = *self.stripes.get_mut(s);
        let (w, rows) = (op.w, op.w.rows);
        for i in 0..w.k {
            if op.chunks[i] == NO_CHUNK {
                continue;
            }
            let slot = self.layout.data_slot(w.stripe, i);
            let written = w.written[i];
            match op.strategy {
                Strategy::ReadModifyWrite => {
                    let dst = self.chunk_at(op.chunks[i], written.start, written.start);
                    self.stripe_io(s, BdevOp::Read, slot, written, dst, None, sq);
                }
                Strategy::ReconstructWrite => {
                    // The rows of `rows` this strip does not write: before and after.
                    let (before, after) = if written.is_empty() {
                        (rows, Rows::default())
                    } else {
                        (Rows { start: rows.start, end: written.start }, Rows { start: written.end, end: rows.end })
                    };
                    for part in [before, after] {
                        if !part.is_empty() {
                            let dst = self.chunk_at(op.chunks[i], rows.start, part.start);
                            self.stripe_io(s, BdevOp::Read, slot, part, dst, None, sq);
                        }
                    }
                }
            }
        }
        if op.strategy == Strategy::ReadModifyWrite {
            let p_slot = self.layout.p_slot(w.stripe);
            self.stripe_io(s, BdevOp::Read, p_slot, rows, self.scratch.ptr(op.chunks[P_CHUNK]), None, sq);
            if let Some(q_slot) = self.layout.q_slot(w.stripe) {
                self.stripe_io(s, BdevOp::Read, q_slot, rows, self.scratch.ptr(op.chunks[Q_CHUNK]), None, sq);
            }
        }
    }

    /// New data for `len` rows of data strip `i` from `row`: the host's buffer, or zeroes.
    fn new_data(&self, op: &StripeOp, i: usize, row: u64, len: u64) -> *mut u8 {
        let parent = *self.parents.get(op.parent);
        if parent.op == BdevOp::WriteZeroes {
            debug_assert!(self.bytes(len) <= self.zeroes.len());
            return self.zeroes.as_ptr();
        }
        let block = op.w.host_block[i] + (row - op.w.written[i].start);
        parent.buf.wrapping_add(self.bytes(block))
    }

    /// # Safety
    /// `p` must point at `len` bytes that nothing else writes while the slice lives.
    unsafe fn slice<'a>(p: *const u8, len: usize) -> &'a [u8] {
        std::slice::from_raw_parts(p, len)
    }

    fn compute_parity(&mut self, s: u32) {
        let op = *self.stripes.get_mut(s);
        let rows = op.w.rows;
        let plen = self.bytes(rows.len());
        // SAFETY: the P and Q chunks belong to this stripe op alone until it finishes.
        let p = unsafe { std::slice::from_raw_parts_mut(self.scratch.ptr(op.chunks[P_CHUNK]), plen) };
        let mut q = (self.parity() == 2).then(|| unsafe { std::slice::from_raw_parts_mut(self.scratch.ptr(op.chunks[Q_CHUNK]), plen) });
        match op.strategy {
            Strategy::ReadModifyWrite => {
                for i in (0..op.w.k).filter(|&i| !op.w.written[i].is_empty()) {
                    let wr = op.w.written[i];
                    let len = self.bytes(wr.len());
                    // SAFETY: old data sits in this op's chunk; new data in the host buffer,
                    // which stays untouched until the host I/O completes.
                    let old = unsafe { Self::slice(self.scratch.ptr(op.chunks[i]), len) };
                    let new = unsafe { Self::slice(self.new_data(&op, i, wr.start, wr.len()), len) };
                    let at = self.bytes(wr.start - rows.start);
                    let u = [Update { index: i, old, new }];
                    match q.as_deref_mut() {
                        Some(q) => parity::pq_update(&u, &mut p[at..at + len], &mut q[at..at + len]),
                        None => parity::p_update(&u, &mut p[at..at + len]),
                    }
                }
            }
            Strategy::ReconstructWrite => self.reconstruct_parity(&op, p, q),
        }
    }

    /// Parity of the whole stripe over its rows, segment by segment: inside a segment each
    /// strip's bytes come from one contiguous source (new data or its row image).
    fn reconstruct_parity(&self, op: &StripeOp, p: &mut [u8], mut q: Option<&mut [u8]>) {
        let rows = op.w.rows;
        let mut cuts = [0u64; 2 * MAX_DATA + 2];
        let mut n = 0;
        for r in [rows].iter().chain(op.w.written[..op.w.k].iter()).filter(|r| !r.is_empty()) {
            cuts[n] = r.start;
            cuts[n + 1] = r.end;
            n += 2;
        }
        let cuts = &mut cuts[..n];
        cuts.sort_unstable();
        let mut srcs: [&[u8]; MAX_DATA] = [&[]; MAX_DATA];
        for seg in cuts.windows(2).filter(|c| c[0] < c[1]) {
            let (a, b) = (seg[0], seg[1]);
            let len = self.bytes(b - a);
            for (i, src) in srcs.iter_mut().enumerate().take(op.w.k) {
                let wr = op.w.written[i];
                let ptr = if wr.start <= a && b <= wr.end { self.new_data(op, i, a, b - a) } else { self.chunk_at(op.chunks[i], rows.start, a) };
                // SAFETY: as in compute_parity: op-owned chunks or the untouched host buffer.
                *src = unsafe { Self::slice(ptr, len) };
            }
            let at = self.bytes(a - rows.start);
            match q.as_deref_mut() {
                Some(q) => parity::pq_gen(&srcs[..op.w.k], &mut p[at..at + len], &mut q[at..at + len]),
                None => parity::xor_gen(&srcs[..op.w.k], &mut p[at..at + len]),
            }
        }
    }

    fn issue_writes(&mut self, s: u32, sq: &mut dyn SqeSink) {
        let op = *self.stripes.get_mut(s);
        let parent = *self.parents.get(op.parent);
        let host_index = if parent.op == BdevOp::WriteZeroes { None } else { parent.buf_index };
        for i in (0..op.w.k).filter(|&i| !op.w.written[i].is_empty()) {
            let wr = op.w.written[i];
            let slot = self.layout.data_slot(op.w.stripe, i);
            let src = self.new_data(&op, i, wr.start, wr.len());
            self.stripe_io(s, BdevOp::Write, slot, wr, src, host_index, sq);
        }
        let p_slot = self.layout.p_slot(op.w.stripe);
        self.stripe_io(s, BdevOp::Write, p_slot, op.w.rows, self.scratch.ptr(op.chunks[P_CHUNK]), None, sq);
        if let Some(q_slot) = self.layout.q_slot(op.w.stripe) {
            self.stripe_io(s, BdevOp::Write, q_slot, op.w.rows, self.scratch.ptr(op.chunks[Q_CHUNK]), None, sq);
        }
    }

    /// All of a stripe op's member I/Os for its current state have returned.
    fn advance(&mut self, s: u32, sq: &mut dyn SqeSink) {
        let op = *self.stripes.get_mut(s);
        match op.state {
            StripeState::Reading if !op.failed => {
                self.compute_parity(s);
                self.stripes.get_mut(s).state = StripeState::Writing;
                self.issue_writes(s, sq);
            }
            StripeState::Reading | StripeState::Writing => self.finish_stripe(s, sq),
            StripeState::Waiting => unreachable!("a waiting stripe op has no member I/O"),
        }
    }

    fn finish_stripe(&mut self, s: u32, sq: &mut dyn SqeSink) {
        let op = self.stripes.remove(s);
        self.locks.unlock(self.lock_key(&op.w));
        for c in op.chunks.iter().filter(|c| **c != NO_CHUNK) {
            self.scratch.free.push(*c);
        }
        if op.failed {
            self.fail_parent(op.parent, -libc::EIO);
        }
        self.parents.get_mut(op.parent).pending -= 1;
        self.pump(op.parent, sq);
        self.finish_parent_if_done(op.parent);
        self.retry_waiting(sq);
    }

    fn retry_waiting(&mut self, sq: &mut dyn SqeSink) {
        for _ in 0..self.waiting.len() {
            let s = self.waiting.pop_front().unwrap();
            if !self.try_start(s, sq) {
                self.waiting.push_back(s);
            }
        }
    }
}

impl BdevChannel for RaidChannel {
    fn submit(&mut self, io: &BdevIo, sq: &mut dyn SqeSink) -> Submitted {
        let ok = if matches!(io.op, BdevOp::Read | BdevOp::Write) { io.len as i32 } else { 0 };
        let start = io.offset >> self.block_shift;
        let end = start + (io.len as u64 >> self.block_shift);
        let parity_write = self.parity() > 0 && matches!(io.op, BdevOp::Write | BdevOp::WriteZeroes);
        let parent = Parent {
            user_data: io.user_data,
            op: io.op,
            buf: io.buf,
            buf_index: io.buf_index,
            result: ok,
            pending: 0,
            io_start: start,
            cursor: if parity_write { start } else { end },
            end,
        };
        let Some(p) = self.parents.insert(parent) else {
            return Submitted::Done(-libc::EBUSY);
        };
        self.submitting = Some(p);
        self.submit_result = None;
        if parity_write {
            self.pump(p, sq);
        } else if !(self.parity() > 0 && io.op == BdevOp::Discard) {
            // Deallocation is advisory; on parity levels it would break parity, so it is
            // acknowledged without touching the members.
            self.fan_out(p, io, sq);
        }
        self.finish_parent_if_done(p);
        self.drain(sq);
        self.submitting = None;
        match self.submit_result.take() {
            Some(res) => Submitted::Done(res),
            None => Submitted::Queued,
        }
    }

    fn child_complete(&mut self, tag: u32, res: i32, sq: &mut dyn SqeSink, done: &mut Completions) {
        self.on_child(tag, res, sq);
        self.drain(sq);
        done.append(&mut self.completed);
    }

    fn poll(&mut self, sq: &mut dyn SqeSink, done: &mut Completions) -> bool {
        if !self.waiting.is_empty() {
            self.retry_waiting(sq);
            self.drain(sq);
        }
        done.append(&mut self.completed);
        !self.waiting.is_empty()
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

    fn read_member(m: &Arc<dyn Bdev>, lba: u64, blocks: usize) -> Vec<u8> {
        let mut ch = m.open_channel(&mut NoFiles, 0).unwrap();
        let mut b = vec![0u8; blocks * 512];
        rw(&mut *ch, BdevOp::Read, lba * 512, &mut b);
        b
    }

    #[test]
    fn writes_read_back_and_land_where_the_layout_says() {
        for (level, n, g) in [(Level::Raid0, 3, 0), (Level::Raid1, 3, 0), (Level::Raid10, 4, 2), (Level::Concat, 2, 0), (Level::Raid5, 4, 0), (Level::Raid6, 5, 0), (Level::Raid50, 6, 3)] {
            let (v, members) = volume(level, n, g);
            let mut ch = v.open_channel(&mut NoFiles, 0).unwrap();
            let len = 200_192;
            let mut data: Vec<u8> = (0..len as u32).map(|i| (i * 7 + 3) as u8).collect();
            let offset = 512 * 37;
            assert_eq!(rw(&mut *ch, BdevOp::Write, offset, &mut data), Submitted::Done(len as i32), "{level:?}");
            let mut back = vec![0u8; len];
            assert_eq!(rw(&mut *ch, BdevOp::Read, offset, &mut back), Submitted::Done(len as i32));
            assert!(back == data, "{level:?}");
            // Every copy of block 37 + 40 holds the right bytes on its member.
            for loc in v.layout().copies(37 + 40) {
                let blk = read_member(&members[loc.member], v.data_offset + loc.member_lba, 1);
                assert_eq!(blk, data[40 * 512..41 * 512], "{level:?} member {}", loc.member);
            }
        }
    }

    /// After any mix of partial writes, every stripe's P (and Q) equals the parity of its
    /// data as computed from scratch.
    #[test]
    fn parity_stays_consistent_under_partial_writes() {
        for (level, n, g) in [(Level::Raid4, 4, 0), (Level::Raid5, 5, 0), (Level::Raid6, 6, 0), (Level::Raid60, 8, 4)] {
            let (v, members) = volume(level, n, g);
            let mut ch = v.open_channel(&mut NoFiles, 0).unwrap();
            let mut x = 12345u64;
            for _ in 0..200 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let nlb = 1 + (x >> 33) % 100;
                let lba = (x >> 13) % (v.num_blocks() - nlb);
                let mut data: Vec<u8> = (0..nlb * 512).map(|i| (i as u64 ^ x) as u8).collect();
                let op = if x % 7 == 0 { BdevOp::WriteZeroes } else { BdevOp::Write };
                let res = rw(&mut *ch, op, lba * 512, &mut data);
                assert!(matches!(res, Submitted::Done(r) if r >= 0), "{level:?} {res:?}");
            }
            let l = v.layout();
            let strip = l.strip_blocks as usize;
            for group in 0..l.groups() {
                for stripe in 0..l.stripes_per_group() {
                    let read = |slot: usize| read_member(&members[l.member_of(group, slot)], v.data_offset + stripe * l.strip_blocks, strip);
                    let data: Vec<Vec<u8>> = (0..l.data_per_stripe()).map(|i| read(l.data_slot(stripe, i))).collect();
                    let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
                    let (mut p, mut q) = (vec![0u8; strip * 512], vec![0u8; strip * 512]);
                    parity::pq_gen(&refs, &mut p, &mut q);
                    assert!(read(l.p_slot(stripe)) == p, "{level:?} group {group} stripe {stripe}: P");
                    if let Some(qs) = l.q_slot(stripe) {
                        assert!(read(qs) == q, "{level:?} group {group} stripe {stripe}: Q");
                    }
                }
            }
        }
    }
}
