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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crossbeam::channel::Sender;

use tracing::{info, warn};

use super::assemble::{assemble, AssemblyError, Candidate, Wanted};
use super::layout::{Layout, LayoutError, Level, Location};
use super::metadata::{now_unix, read_superblock, Epochs, MetaMsg, Metadata, VolumeIdentity};
use super::plan::{self, Strategy, StripeWrite, MAX_DATA};
use crate::bdev::{Bdev, BdevChannel, BdevInfo, BdevIo, BdevOp, Completions, FileRegistry, SqeSink, Submitted};
use crate::reactor::token::{Kind, Token};
use crate::util::aligned::AlignedRegion;
use crate::util::slab::Slab;

/// Bytes at the start of every member kept for the superblock and write-intent bitmap.
pub const RESERVED_BYTES: u64 = 1 << 20;
/// Host I/Os one channel (one reactor) may have in flight on a volume.
const MAX_PARENTS: usize = 4096;
/// Stripe writes one host write keeps in flight.
pub(super) const STRIPE_WINDOW: u32 = 4;
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
    #[error("device '{device}': superblock: {message}")]
    Superblock { device: String, message: String },
    #[error("{0}")]
    Assembly(#[from] AssemblyError),
    #[error("too many members failed or missing to serve the volume: {0:?}")]
    Offline(Vec<String>),
}

/// Background parity resync after an unclean shutdown: every stripe's P (and Q) is
/// recomputed from its data, under the stripe lock, one stripe op at a time per volume.
#[derive(Debug, Default)]
pub struct Resync {
    /// Next stripe index to start (group-major); `total` when all are started.
    pub(super) next: AtomicU64,
    /// Stripes finished.
    pub(super) done: AtomicU64,
    pub(super) total: AtomicU64,
    /// Only one reactor's channel drives the resync: the first to claim this.
    pub(super) driver: AtomicBool,
}

impl Resync {
    /// (stripes done, total); total 0 when no resync was needed.
    pub fn progress(&self) -> (u64, u64) {
        (self.done.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed))
    }
    pub fn active(&self) -> bool {
        let (done, total) = self.progress();
        done < total
    }
}

/// One lock per hashed stripe, shared by every reactor's channel of a volume.
#[derive(Debug)]
pub(super) struct StripeLocks(Box<[AtomicBool]>);

impl StripeLocks {
    fn new() -> Self {
        StripeLocks((0..LOCK_BUCKETS).map(|_| AtomicBool::new(false)).collect())
    }
    pub(super) fn try_lock(&self, key: usize) -> bool {
        self.0[key].compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }
    pub(super) fn unlock(&self, key: usize) {
        let was = self.0[key].swap(false, Ordering::Release);
        debug_assert!(was, "unlocking a free stripe lock");
    }
    pub(super) fn buckets(&self) -> usize {
        self.0.len()
    }
}

/// Which members have failed, shared by every reactor's channel of a volume. A member
/// is failed when it returns an I/O error or the operator fails it; it is then never
/// read or written again, and its strips are rebuilt from the survivors.
#[derive(Debug)]
pub struct MemberHealth {
    volume: String,
    names: Vec<String>,
    failed: Box<[AtomicBool]>,
    group_size: usize,
    tolerance: usize,
    epochs: Epochs,
    notify: OnceLock<Sender<MetaMsg>>,
}

impl MemberHealth {
    fn new(volume: &str, members: &[Arc<dyn Bdev>], layout: &Layout) -> Self {
        MemberHealth {
            volume: volume.into(),
            names: members.iter().map(|m| m.name().to_string()).collect(),
            failed: members.iter().map(|_| AtomicBool::new(false)).collect(),
            group_size: layout.group_size,
            tolerance: layout.level.tolerance(layout.group_size),
            epochs: Epochs::default(),
            notify: OnceLock::new(),
        }
    }

    fn set_notifier(&self, tx: Sender<MetaMsg>) {
        let _ = self.notify.set(tx);
    }

    /// A slot assembly found failed, absent or stale.
    fn mark_failed_at_assembly(&self, member: usize) {
        self.failed[member].store(true, Ordering::Release);
    }

    /// Failure epoch: changes on every failure.
    pub fn epoch(&self) -> u64 {
        self.epochs.changed.load(Ordering::Acquire)
    }

    pub(super) fn set_recorded(&self, epoch: u64) {
        self.epochs.recorded.store(epoch, Ordering::Release);
    }

    /// Every failure so far is recorded in the superblocks.
    pub fn recorded(&self) -> bool {
        self.epochs.up_to_date()
    }

    pub fn is_failed(&self, member: usize) -> bool {
        self.failed[member].load(Ordering::Relaxed)
    }

    /// Mark a member failed (once; later calls do nothing).
    pub fn fail(&self, member: usize, why: &str) {
        if !self.failed[member].swap(true, Ordering::AcqRel) {
            self.epochs.changed.fetch_add(1, Ordering::AcqRel);
            warn!(volume = self.volume, member = self.names[member], why, online = self.online(), "member failed");
            if let Some(tx) = self.notify.get() {
                let _ = tx.send(MetaMsg::Update);
            }
        }
    }

    pub fn failed_in_group(&self, group: usize) -> usize {
        let g = group * self.group_size;
        (g..g + self.group_size).filter(|&m| self.is_failed(m)).count()
    }

    /// The volume can serve every block: no group has lost more than it tolerates.
    pub fn online(&self) -> bool {
        (0..self.failed.len() / self.group_size).all(|g| self.failed_in_group(g) <= self.tolerance)
    }

    pub fn failed_members(&self) -> Vec<String> {
        (0..self.failed.len()).filter(|&m| self.is_failed(m)).map(|m| self.names[m].clone()).collect()
    }
}

pub struct RaidBdev {
    info: BdevInfo,
    layout: Arc<Layout>,
    members: Vec<Arc<dyn Bdev>>,
    /// Blocks reserved at the start of each member.
    data_offset: u64,
    locks: Arc<StripeLocks>,
    health: Arc<MemberHealth>,
    meta_tx: Sender<MetaMsg>,
    meta_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    resync: Arc<Resync>,
}

impl RaidBdev {
    /// Assemble the volume from `devices` (in any order: each superblock names its slot),
    /// or create it when none carries a superblock. Writes the next generation of
    /// superblocks before returning.
    pub fn new(name: &str, level: Level, devices: Vec<Arc<dyn Bdev>>, group_size: usize, strip_bytes: u64) -> Result<Self, VolumeError> {
        let block_size = devices.first().map_or(512, |m| m.block_size());
        if let Some(m) = devices.iter().find(|m| m.block_size() != block_size) {
            return Err(VolumeError::BlockSize { member: m.name().into(), got: m.block_size(), want: block_size });
        }
        if !strip_bytes.is_power_of_two() || strip_bytes < block_size as u64 || strip_bytes > 1 << 20 {
            return Err(VolumeError::Strip(strip_bytes));
        }
        let data_offset = RESERVED_BYTES / block_size as u64;
        let strip_blocks = strip_bytes / block_size as u64;
        let grouped = matches!(level, Level::Raid10 | Level::Raid50 | Level::Raid60);
        let wanted = Wanted {
            name: name.into(),
            level,
            group_size: if grouped { group_size as u16 } else { devices.len() as u16 },
            strip_blocks: strip_blocks as u32,
            block_size,
            members: devices.len(),
        };
        let mut candidates = Vec::with_capacity(devices.len());
        for d in &devices {
            let sb = read_superblock(d.as_ref())
                .map_err(|e| VolumeError::Superblock { device: d.name().into(), message: e.to_string() })?
                .map_err(|e| VolumeError::Superblock { device: d.name().into(), message: e.to_string() })?;
            candidates.push(Candidate { name: d.name().into(), sb });
        }
        let seed = format!("{name}/{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        let new_uuid = *uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, seed.as_bytes()).as_bytes();
        let asm = assemble(&wanted, &candidates, new_uuid)?;
        for note in &asm.notes {
            warn!(volume = name, "{note}");
        }
        // Members in slot order; an absent device is a stand-in that is failed from the start.
        let members: Vec<Arc<dyn Bdev>> = asm
            .slots
            .iter()
            .enumerate()
            .map(|(slot, d)| match d {
                Some(i) => devices[*i].clone(),
                None => Arc::new(crate::bdev::NullBdev::new(&format!("{name}-missing-slot{slot}"), block_size, 0)) as Arc<dyn Bdev>,
            })
            .collect();
        let sizes: Vec<u64> = members
            .iter()
            .zip(&asm.slots)
            .map(|(m, present)| if present.is_some() { m.num_blocks().saturating_sub(data_offset) } else { u64::MAX / 4 })
            .collect();
        if let Some((m, _)) = members.iter().zip(&sizes).find(|(_, s)| **s == 0) {
            return Err(VolumeError::TooSmall(m.name().into()));
        }
        let layout = Layout::new(level, &sizes, group_size, strip_blocks)?;
        if level != Level::Concat && sizes.iter().any(|s| *s != layout.member_blocks && *s != u64::MAX / 4) {
            info!(volume = name, used_blocks = layout.member_blocks, "members differ in size: each contributes only as much as the smallest");
        }
        let info = BdevInfo { name: name.into(), block_size, num_blocks: layout.capacity() };
        let layout = Arc::new(layout);
        let health = Arc::new(MemberHealth::new(name, &members, &layout));
        for (slot, failed) in asm.failed.iter().enumerate() {
            if *failed {
                health.mark_failed_at_assembly(slot);
            }
        }
        if asm.created {
            info!(volume = name, level = ?level, "new volume: superblocks written");
        }
        let resync = Arc::new(Resync::default());
        if asm.unclean && layout.level.parity_count() > 0 {
            let total = layout.stripes_per_group() * layout.groups() as u64;
            resync.total.store(total, Ordering::Relaxed);
            warn!(volume = name, stripes = total, "the volume was not shut down cleanly: resynchronising parity in the background");
        }
        let identity = VolumeIdentity { uuid: asm.volume_uuid, name: name.into(), device_ids: asm.device_ids.clone(), data_offset, created: now_unix() };
        let meta = Arc::new(Metadata::new(identity, layout.clone(), block_size, members.clone(), health.clone(), asm.generation));
        meta.write_all(false);
        if !health.online() {
            return Err(VolumeError::Offline(health.failed_members()));
        }
        let (tx, rx) = crossbeam::channel::unbounded();
        health.set_notifier(tx.clone());
        let m = meta.clone();
        let thread = std::thread::Builder::new().name(format!("meta-{name}")).spawn(move || m.run(rx)).map_err(|e| VolumeError::Superblock { device: name.into(), message: e.to_string() })?;
        Ok(RaidBdev {
            info,
            layout,
            members,
            data_offset,
            locks: Arc::new(StripeLocks::new()),
            health,
            meta_tx: tx,
            meta_thread: Mutex::new(Some(thread)),
            resync,
        })
    }

    /// Orderly shutdown: write the superblocks (clean unless a resync is unfinished) and
    /// stop the metadata thread.
    pub fn close(&self) {
        let (reply_tx, reply_rx) = crossbeam::channel::bounded(1);
        if self.meta_tx.send(MetaMsg::Close { reply: reply_tx, clean: !self.resync.active() }).is_ok() {
            let _ = reply_rx.recv_timeout(std::time::Duration::from_secs(30));
        }
        if let Some(t) = self.meta_thread.lock().unwrap().take() {
            let _ = t.join();
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn health(&self) -> &Arc<MemberHealth> {
        &self.health
    }

    pub fn resync(&self) -> &Arc<Resync> {
        &self.resync
    }

    /// Member device names in slot order.
    pub fn member_names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name().to_string()).collect()
    }

    /// Whether the member in `slot` can fail without taking the volume offline.
    pub fn can_lose(&self, slot: usize) -> bool {
        let group = slot / self.layout.group_size;
        self.health.failed_in_group(group) < self.layout.level.tolerance(self.layout.group_size)
    }

    /// Index of the member device named `name`.
    pub fn member_index(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name() == name)
    }
}

impl std::fmt::Debug for RaidBdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaidBdev").field("name", &self.info.name).field("level", &self.layout.level).finish()
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
            health: self.health.clone(),
            resync: self.resync.clone(),
            resync_inflight: false,
            resync_driver: false,
            parents: Slab::with_capacity(MAX_PARENTS),
            stripes: Slab::with_capacity(if parity { MAX_PARENTS * STRIPE_WINDOW as usize } else { 0 }),
            children: Slab::with_capacity(MAX_CHILDREN),
            waiting: VecDeque::with_capacity(if parity { MAX_PARENTS * STRIPE_WINDOW as usize } else { 0 }),
            sync_done: VecDeque::with_capacity(1024),
            completed: Vec::with_capacity(MAX_PARENTS),
            held: Vec::with_capacity(MAX_PARENTS),
            submitting: None,
            submit_result: None,
            scratch: Scratch::new(if parity { strip_bytes } else { 0 }, self.layout.group_size)?,
            zeroes: AlignedRegion::new(if parity { strip_bytes } else { 0 })?,
            next_copy: 0,
        }))
    }
}

/// Fixed-size scratch chunks (one strip each) for old data, row images and parity.
pub(super) struct Scratch {
    region: AlignedRegion,
    chunk: usize,
    pub(super) free: Vec<u16>,
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

    pub(super) fn ptr(&self, id: u16) -> *mut u8 {
        // SAFETY: id < count, so the chunk lies inside the region.
        unsafe { self.region.as_ptr().add(id as usize * self.chunk) }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Owner {
    Parent(u32),
    Stripe(u32),
}

/// A host I/O in progress.
#[derive(Debug, Clone, Copy)]
pub(super) struct Parent {
    pub(super) user_data: u64,
    pub(super) op: BdevOp,
    pub(super) buf: *mut u8,
    pub(super) buf_index: Option<u16>,
    /// What success reports (bytes for reads and writes, else 0).
    pub(super) ok: i32,
    /// `ok`, or the first negative errno.
    pub(super) result: i32,
    /// Member I/Os (mirrors, striping) or live stripe ops (parity) outstanding.
    pub(super) pending: u32,
    /// Parity writes: first block of the I/O, next block to plan, end.
    pub(super) io_start: u64,
    pub(super) cursor: u64,
    pub(super) end: u64,
    /// A member read failed: run the I/O again once its member I/Os are back.
    pub(super) retry: bool,
}

impl Parent {
    /// The host I/O again, for a retry.
    fn as_io(&self, block_shift: u32) -> BdevIo {
        BdevIo {
            op: self.op,
            offset: self.io_start << block_shift,
            len: ((self.end - self.io_start) << block_shift) as u32,
            buf: self.buf,
            buf_index: self.buf_index,
            user_data: self.user_data,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StripeState {
    Waiting,
    Reading,
    Writing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StripeKind {
    Write,
    /// Rebuild rows of a strip on a failed member for a host read.
    Read,
    /// Recompute a stripe's parity from its data (after an unclean shutdown).
    Resync,
}

/// user_data of work the volume does for itself (resync), never reported to a host.
pub(super) const INTERNAL: u64 = u64::MAX;

/// Slot of P and Q in `StripeOp::chunks`, after the data strips.
pub(super) const P_CHUNK: usize = MAX_DATA;
pub(super) const Q_CHUNK: usize = MAX_DATA + 1;
pub(super) const NO_CHUNK: u16 = u16::MAX;

#[derive(Debug, Clone, Copy)]
pub(super) struct StripeOp {
    pub(super) parent: u32,
    pub(super) kind: StripeKind,
    pub(super) w: StripeWrite,
    pub(super) strategy: Strategy,
    pub(super) state: StripeState,
    pub(super) pending: u32,
    pub(super) failed: bool,
    /// Scratch chunk per data index (old data or row image), then P and Q.
    pub(super) chunks: [u16; MAX_DATA + 2],
}

pub(super) struct RaidChannel {
    index: u16,
    pub(super) layout: Arc<Layout>,
    members: Vec<Box<dyn BdevChannel>>,
    block_shift: u32,
    data_offset: u64,
    pub(super) locks: Arc<StripeLocks>,
    pub(super) health: Arc<MemberHealth>,
    pub(super) resync: Arc<Resync>,
    /// This channel drives the resync and has a stripe of it in flight.
    pub(super) resync_inflight: bool,
    pub(super) resync_driver: bool,
    pub(super) parents: Slab<Parent>,
    pub(super) stripes: Slab<StripeOp>,
    /// Child tag -> (owner, bytes the child must transfer, member).
    children: Slab<(Owner, i32, u16)>,
    /// Stripe ops waiting for their lock or scratch, oldest first.
    pub(super) waiting: VecDeque<u32>,
    /// Member completions not yet processed (synchronous ones land here too).
    sync_done: VecDeque<(u32, i32)>,
    /// Finished host I/Os to hand to the reactor.
    completed: Completions,
    /// Finished writes waiting for a member failure to reach the superblocks.
    held: Completions,
    /// The host I/O `submit` is working on, whose result it returns directly.
    submitting: Option<u32>,
    submit_result: Option<i32>,
    pub(super) scratch: Scratch,
    pub(super) zeroes: AlignedRegion,
    /// Round-robin choice among mirror copies for reads.
    next_copy: usize,
}

impl RaidChannel {
    pub(super) fn parity(&self) -> usize {
        self.layout.level.parity_count()
    }

    pub(super) fn bytes(&self, blocks: u64) -> usize {
        (blocks << self.block_shift) as usize
    }

    /// Submit one member I/O; its completion comes back through `sync_done` or the ring.
    pub(super) fn child(&mut self, owner: Owner, member: usize, mut io: BdevIo, sq: &mut dyn SqeSink) {
        debug_assert!(!self.health.is_failed(member), "I/O to a failed member");
        let expect = if matches!(io.op, BdevOp::Read | BdevOp::Write) { io.len as i32 } else { 0 };
        let tag = self.children.insert((owner, expect, member as u16)).expect("member I/O table sized for the worst case");
        match owner {
            Owner::Parent(p) => self.parents.get_mut(p).pending += 1,
            Owner::Stripe(s) => self.stripes.get_mut(s).pending += 1,
        }
        io.user_data = Token::new(Kind::Child, self.index, 0, tag).encode();
        if let Submitted::Done(res) = self.members[member].submit(&io, sq) {
            self.sync_done.push_back((tag, res));
        }
    }

    pub(super) fn member_io(&self, op: BdevOp, loc: Location, blocks: u64, buf: *mut u8, buf_index: Option<u16>) -> BdevIo {
        BdevIo {
            op,
            offset: (self.data_offset + loc.member_lba) << self.block_shift,
            len: self.bytes(blocks) as u32,
            buf,
            buf_index,
            user_data: 0,
        }
    }

    pub(super) fn finish_parent_if_done(&mut self, p: u32, sq: &mut dyn SqeSink) {
        let parent = *self.parents.get(p);
        if parent.pending > 0 || parent.cursor < parent.end {
            return;
        }
        if parent.retry && self.health.online() {
            // A member failed under a read: read again, around it.
            let pr = self.parents.get_mut(p);
            pr.retry = false;
            pr.result = pr.ok;
            let io = parent.as_io(self.block_shift);
            self.fan_out(p, &io, sq);
            return self.finish_parent_if_done(p, sq);
        }
        let parent = self.parents.remove(p);
        let result = if parent.retry { -libc::EIO } else { parent.result };
        if parent.user_data == INTERNAL {
            return self.resync_stripe_done();
        }
        if parent.op != BdevOp::Read && !self.health.recorded() {
            // Written around a member whose failure is not yet in the superblocks: the
            // acknowledgement waits until it is (see `poll`).
            self.held.push((parent.user_data, result));
        } else if self.submitting == Some(p) {
            self.submit_result = Some(result);
        } else {
            self.completed.push((parent.user_data, result));
        }
    }

    pub(super) fn fail_parent(&mut self, p: u32, res: i32) {
        let parent = self.parents.get_mut(p);
        if parent.result >= 0 {
            parent.result = if res < 0 { res } else { -libc::EIO };
        }
    }

    fn on_child(&mut self, tag: u32, res: i32, sq: &mut dyn SqeSink) {
        let (owner, expect, member) = self.children.remove(tag);
        if res != expect {
            self.health.fail(member as usize, if res < 0 { "I/O error" } else { "short transfer" });
        }
        match owner {
            Owner::Parent(p) => {
                let parent = self.parents.get_mut(p);
                parent.pending -= 1;
                if res != expect {
                    // Redundant levels retry reads around the failed member; writes and
                    // flushes already reached the surviving copies.
                    if parent.op == BdevOp::Read {
                        parent.retry = true;
                    } else if !self.health.online() {
                        self.fail_parent(p, res);
                    }
                }
                self.finish_parent_if_done(p, sq);
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

    /// Alive copies of `lba` (one location for non-mirrored levels), in preference order
    /// starting from `first`.
    fn alive_copy(&self, lba: u64, first: usize) -> Option<Location> {
        let copies = self.layout.copies(lba).count();
        (0..copies).map(|c| self.layout.copies(lba).nth((first + c) % copies).unwrap()).find(|l| !self.health.is_failed(l.member))
    }

    pub(super) fn fan_out(&mut self, p: u32, io: &BdevIo, sq: &mut dyn SqeSink) {
        let sub = |io: &BdevIo, off: usize| if io.buf.is_null() { io.buf } else { io.buf.wrapping_add(off) };
        match io.op {
            BdevOp::Flush => {
                for m in 0..self.members.len() {
                    if !self.health.is_failed(m) {
                        self.child(Owner::Parent(p), m, BdevIo { user_data: 0, ..*io }, sq);
                    }
                }
            }
            BdevOp::Read => self.for_each_run(io, |ch, lba, n, off| {
                ch.next_copy = ch.next_copy.wrapping_add(1);
                match ch.alive_copy(lba, ch.next_copy) {
                    Some(loc) => {
                        let mio = ch.member_io(BdevOp::Read, loc, n, sub(io, off), io.buf_index);
                        ch.child(Owner::Parent(p), loc.member, mio, sq);
                    }
                    // A data strip on a failed member of a parity level: rebuild it.
                    None if ch.parity() > 0 => {
                        let start = io.offset >> ch.block_shift;
                        let (w, _) = plan::next_stripe(&ch.layout, start, lba, lba + n);
                        ch.start_stripe_op(p, w, StripeKind::Read, sq);
                    }
                    None => ch.fail_parent(p, -libc::ENXIO),
                }
            }),
            BdevOp::Write | BdevOp::WriteZeroes | BdevOp::Discard => self.for_each_run(io, |ch, lba, n, off| {
                let copies = ch.layout.copies(lba).count();
                for c in 0..copies {
                    let loc = ch.layout.copies(lba).nth(c).unwrap();
                    if !ch.health.is_failed(loc.member) {
                        let mio = ch.member_io(io.op, loc, n, sub(io, off), io.buf_index);
                        ch.child(Owner::Parent(p), loc.member, mio, sq);
                    }
                }
            }),
        }
    }
}

impl BdevChannel for RaidChannel {
    fn submit(&mut self, io: &BdevIo, sq: &mut dyn SqeSink) -> Submitted {
        let ok = if matches!(io.op, BdevOp::Read | BdevOp::Write) { io.len as i32 } else { 0 };
        let start = io.offset >> self.block_shift;
        let end = start + (io.len as u64 >> self.block_shift);
        let parity_write = self.parity() > 0 && matches!(io.op, BdevOp::Write | BdevOp::WriteZeroes);
        if !self.health.online() {
            return Submitted::Done(-libc::ENXIO);
        }
        let parent = Parent {
            user_data: io.user_data,
            op: io.op,
            buf: io.buf,
            buf_index: io.buf_index,
            ok,
            result: ok,
            pending: 0,
            io_start: start,
            cursor: if parity_write { start } else { end },
            end,
            retry: false,
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
        self.finish_parent_if_done(p, sq);
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
        self.drive_resync(sq);
        if !self.waiting.is_empty() {
            self.retry_waiting(sq);
            self.drain(sq);
        }
        if !self.held.is_empty() && self.health.recorded() {
            done.append(&mut self.held);
        }
        done.append(&mut self.completed);
        !self.waiting.is_empty() || !self.held.is_empty() || (self.resync_driver && self.resync.active())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::RamBdev;
    use crate::parity;

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
                let mut data: Vec<u8> = (0..nlb * 512).map(|i| (i ^ x) as u8).collect();
                let op = if x.is_multiple_of(7) { BdevOp::WriteZeroes } else { BdevOp::Write };
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
