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
use std::sync::{Arc, Mutex};

use crossbeam::channel::Sender;

use tracing::{info, warn};

use super::assemble::{assemble, Assembly, AssemblyError, Candidate, Wanted};
use super::bitmap::{self, WriteIntent, BITMAP_BYTES, BITMAP_OFFSET};
use super::layout::{Layout, LayoutError, Level, Location};
use super::members::{Device, Members, MembersInit, SlotState};
use super::metadata::{now_unix, read_superblock, MetaMsg, Metadata, VolumeIdentity};
use super::plan::{self, Strategy, StripeWrite, MAX_DATA};
use super::rebuild::RebuildDriver;
use super::scrub::{Scrub, ScrubDriver};
use super::slow::{LatencyCells, SlowPolicy, PROBE_EVERY};
use crate::bdev::{
    Bdev, BdevChannel, BdevInfo, BdevIo, BdevOp, ChildRoute, Completions, FileRegistry, SqeSink,
    Submitted,
};
use crate::reactor::token::{Kind, Token};
use crate::stats::{MemberStats, OpClass, OpSet};
use crate::util::aligned::AlignedRegion;
use crate::util::clock::Stamp;
use crate::util::slab::Slab;

/// Bytes at the start of every member kept for the superblock and write-intent bitmap.
pub const RESERVED_BYTES: u64 = 1 << 20;
/// Host I/Os one channel (one reactor) may have in flight on a volume.
const MAX_PARENTS: usize = 4096;
/// Wake-ups queued for a volume's metadata thread; more would only repeat them.
const META_QUEUE: usize = 8;
/// Stripe writes one host write keeps in flight.
pub(super) const STRIPE_WINDOW: u32 = 4;
/// Member I/Os one channel may have in flight.
const MAX_CHILDREN: usize = 1 << 19;
/// Stripe locks shared by the reactors (hashed; unrelated stripes rarely collide).
const LOCK_BUCKETS: usize = 1 << 16;
/// Scrub rate until the configuration sets one: bytes per second of member data read.
pub const DEFAULT_SCRUB_RATE: u64 = 100 << 20;
/// Scratch memory per channel for old data and parity.
const SCRATCH_BYTES: usize = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0}")]
    Layout(#[from] LayoutError),
    #[error("member '{member}' has block size {got}, the volume uses {want}")]
    BlockSize { member: String, got: u32, want: u32 },
    #[error("member '{member}' has {have} bytes; it needs {need} bytes ({why})")]
    TooSmall {
        member: String,
        have: u64,
        need: u64,
        why: &'static str,
    },
    #[error("strip size {0} bytes is not a power of two between the block size and 1 MiB")]
    Strip(u64),
    #[error("device '{device}': superblock: {message}")]
    Superblock { device: String, message: String },
    #[error("{0}")]
    Assembly(#[from] AssemblyError),
    #[error("too many members failed or missing to serve the volume: {0:?}")]
    Offline(Vec<String>),
    #[error("spare '{spare}' has {have} bytes; the volume's members need {need} bytes (their data area plus the 1 MiB metadata area)")]
    SpareTooSmall { spare: String, have: u64, need: u64 },
    #[error("{0}")]
    Refused(String),
}

/// Background resync after an unclean shutdown: the rows of the regions the write-intent
/// bitmap marks (every row when it is unknown) are made consistent, parity recomputed
/// from data or mirror copies made equal, under the stripe lock, one row op at a time.
#[derive(Debug, Default)]
pub struct Resync {
    /// Next work item to start; `total` when all are started.
    pub(super) next: AtomicU64,
    /// Work items finished.
    pub(super) done: AtomicU64,
    pub(super) total: AtomicU64,
    /// Only one reactor's channel drives the resync: the first to claim this.
    pub(super) driver: AtomicBool,
    /// Dirty regions, or empty for every row.
    regions: Vec<u32>,
    region_rows: u64,
    rows: u64,
    groups: u64,
}

impl Resync {
    /// Resync of the rows in `regions` (None: every row) of every group.
    fn new(regions: Option<Vec<u32>>, region_rows: u64, rows: u64, groups: usize) -> Self {
        let groups = groups as u64;
        let total = match &regions {
            None => rows * groups,
            Some(r) => r.len() as u64 * region_rows * groups,
        };
        Resync {
            total: AtomicU64::new(total),
            regions: regions.unwrap_or_default(),
            region_rows,
            rows,
            groups,
            ..Default::default()
        }
    }

    /// (items done, total); total 0 when no resync was needed.
    pub fn progress(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }

    pub fn active(&self) -> bool {
        let (done, total) = self.progress();
        done < total
    }

    /// The next work item, if any is left (the driver alone calls this).
    pub(super) fn claim(&self) -> Option<u64> {
        let i = self.next.load(Ordering::Relaxed);
        (i < self.total.load(Ordering::Relaxed)).then(|| {
            self.next.store(i + 1, Ordering::Relaxed);
            i
        })
    }

    /// (group, row) of work item `i`; None past the last row.
    pub(super) fn locate(&self, i: u64) -> Option<(usize, u64)> {
        let (row, group) = if self.regions.is_empty() {
            (i / self.groups, i % self.groups)
        } else {
            let per_region = self.region_rows * self.groups;
            let within = i % per_region;
            (
                self.regions[(i / per_region) as usize] as u64 * self.region_rows
                    + within / self.groups,
                within % self.groups,
            )
        };
        (row < self.rows).then_some((group as usize, row))
    }
}

/// The stripe locks: one bucket per stripe, hashed (see `RangeLocks`).
pub(super) type StripeLocks = crate::util::locks::RangeLocks;

/// How a volume was left by `close`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    Clean,
    /// A resync was unfinished: it goes on at the next start.
    ResyncPending,
    /// The stop did not drain: writes were still in flight on the members, so the volume
    /// stays dirty and the next start resynchronises the regions they touched.
    WritesInFlight,
}

/// How a volume is built: what the configuration says of it.
pub struct VolumeSpec {
    pub name: String,
    pub level: Level,
    /// Members that could be opened, in configuration order.
    pub members: Vec<Arc<dyn Bdev>>,
    /// Members the configuration lists that could not be opened.
    pub absent: Vec<String>,
    pub spares: Vec<Arc<dyn Bdev>>,
    /// Members per group (RAID 10/50/60).
    pub group_size: usize,
    pub strip_bytes: u64,
    /// Rebuild rate limit in bytes per second; 0 = unlimited.
    pub rebuild_rate: u64,
    /// Configured member names in order (a blank device's position tells which slot it
    /// replaces when several have no device); may be empty.
    pub member_order: Vec<String>,
    pub slow_policy: SlowPolicy,
}

pub struct RaidBdev {
    info: BdevInfo,
    /// The members' block: the unit of the layout and of every member I/O. The volume's
    /// own block (`info.block_size`) is the same, except for RAID 3, whose block is the
    /// data members' blocks together.
    member_block_size: u32,
    layout: Arc<Layout>,
    /// Blocks reserved at the start of each member.
    data_offset: u64,
    locks: Arc<StripeLocks>,
    health: Arc<Members>,
    meta_tx: Sender<MetaMsg>,
    meta_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    resync: Arc<Resync>,
    scrub: Arc<Scrub>,
    /// Seconds between scheduled scrubs; 0: none.
    scrub_every: Arc<AtomicU64>,
    volume_uuid: [u8; 16],
    intent: Option<Arc<WriteIntent>>,
}

fn superblock_error(device: &str, e: impl std::fmt::Display) -> VolumeError {
    VolumeError::Superblock {
        device: device.into(),
        message: e.to_string(),
    }
}

/// A stand-in for a device that is absent: failed from the start, never used.
fn stand_in(volume: &str, slot: usize, block_size: u32) -> Arc<dyn Bdev> {
    Arc::new(crate::bdev::NullBdev::new(
        &format!("{volume}-missing-slot{slot}"),
        block_size,
        0,
    ))
}

impl RaidBdev {
    /// Assemble the volume from its devices (in any order: each superblock names its
    /// slot), or create it when none carries a superblock. Writes the next generation of
    /// superblocks before returning.
    pub fn new(spec: VolumeSpec) -> Result<Self, VolumeError> {
        let VolumeSpec {
            name,
            level,
            members: member_devs,
            absent,
            spares: spare_devs,
            group_size,
            strip_bytes,
            rebuild_rate,
            member_order,
            slow_policy,
        } = spec;
        let name = name.as_str();
        let all: Vec<Arc<dyn Bdev>> = member_devs.iter().chain(&spare_devs).cloned().collect();
        let block_size = all.first().map_or(512, |m| m.block_size());
        if let Some(m) = all.iter().find(|m| m.block_size() != block_size) {
            return Err(VolumeError::BlockSize {
                member: m.name().into(),
                got: m.block_size(),
                want: block_size,
            });
        }
        if !strip_bytes.is_power_of_two()
            || strip_bytes < block_size as u64
            || strip_bytes > 1 << 20
        {
            return Err(VolumeError::Strip(strip_bytes));
        }
        let data_offset = RESERVED_BYTES / block_size as u64;
        let strip_blocks = strip_bytes / block_size as u64;
        // A device whose superblock area cannot be read is left out like an absent one.
        let mut absent = absent;
        let mut candidates = Vec::with_capacity(all.len());
        let mut readable = Vec::with_capacity(all.len());
        for (i, d) in all.iter().enumerate() {
            match read_superblock(d.as_ref()) {
                Ok(Ok(sb)) => {
                    let position = member_order
                        .iter()
                        .position(|n| n == d.name())
                        .or((i < member_devs.len()).then_some(i));
                    candidates.push(Candidate {
                        name: d.name().into(),
                        sb,
                        spare: i >= member_devs.len(),
                        position,
                    });
                    readable.push(d.clone());
                }
                Ok(Err(e)) if i < member_devs.len() => return Err(superblock_error(d.name(), e)),
                Err(e) if i < member_devs.len() => {
                    warn!(volume = name, device = d.name(), error = %e, "cannot read the superblock: member left out");
                    absent.push(d.name().into());
                }
                Ok(Err(e)) => {
                    warn!(volume = name, device = d.name(), error = %e, "spare with a damaged superblock left out")
                }
                Err(e) => {
                    warn!(volume = name, device = d.name(), error = %e, "cannot read the superblock: spare left out")
                }
            }
        }
        let all = readable;
        let present = candidates.iter().filter(|c| !c.spare).count();
        let grouped = level.is_grouped();
        let wanted = Wanted {
            name: name.into(),
            level,
            group_size: if grouped {
                group_size as u16
            } else {
                (present + absent.len()) as u16
            },
            strip_blocks: strip_blocks as u32,
            block_size,
            members: present + absent.len(),
        };
        let seed = format!(
            "{name}/{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let new_uuid = *uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, seed.as_bytes()).as_bytes();
        if !absent.is_empty() && candidates.iter().all(|c| c.sb.is_none()) {
            return Err(VolumeError::Refused(format!(
                "cannot create the volume without members {absent:?}"
            )));
        }
        let asm = assemble(&wanted, &candidates, new_uuid)?;
        for note in &asm.notes {
            warn!(volume = name, "{note}");
        }
        let recorded_blocks = candidates
            .iter()
            .filter_map(|c| c.sb.as_ref())
            .filter(|sb| sb.volume_uuid == asm.volume_uuid)
            .map(|sb| sb.member_blocks)
            .max();
        let layout = Self::layout_for(
            name,
            level,
            &asm,
            &all,
            group_size,
            strip_blocks,
            data_offset,
            recorded_blocks,
        )?;
        let needed = layout.member_blocks + data_offset;
        if let Some((ci, _)) = asm
            .spares
            .iter()
            .find(|(ci, _)| level != Level::Concat && all[*ci].num_blocks() < needed)
        {
            let bs = block_size as u64;
            return Err(VolumeError::SpareTooSmall {
                spare: all[*ci].name().into(),
                have: all[*ci].num_blocks() * bs,
                need: needed * bs,
            });
        }
        let spread = match level.spec().strip {
            super::level::StripWidth::MemberBlock => layout.data_per_stripe() as u32,
            super::level::StripWidth::Configured => 1,
        };
        let info = BdevInfo {
            name: name.into(),
            block_size: block_size * spread,
            num_blocks: layout.capacity() / spread as u64,
        };
        let layout = Arc::new(layout);
        let slots = asm
            .slots
            .iter()
            .enumerate()
            .map(|(slot, f)| {
                let bdev = f
                    .device
                    .map_or_else(|| stand_in(name, slot, block_size), |ci| all[ci].clone());
                (
                    Device {
                        bdev,
                        id: f.id,
                        present: f.device.is_some(),
                    },
                    f.state,
                )
            })
            .collect();
        let spares = asm
            .spares
            .iter()
            .map(|(ci, id)| Device {
                bdev: all[*ci].clone(),
                id: *id,
                present: true,
            })
            .collect();
        let health = Arc::new(Members::new(MembersInit {
            volume: name.into(),
            slots,
            spares,
            group_size: layout.group_size,
            tolerance: layout.level.tolerance(layout.group_size),
            rows: layout.stripes_per_group(),
            row_bytes: strip_bytes,
            rebuild_rate,
            rebuild_from: asm.rebuild_from,
            slow_policy,
        }));
        if asm.created {
            info!(volume = name, level = ?level, "new volume: superblocks written");
        }
        let redundant = layout.level.tolerance(layout.group_size) > 0;
        let intent =
            redundant.then(|| Arc::new(WriteIntent::new(layout.stripes_per_group(), strip_bytes)));
        let resync = Arc::new(match (&intent, asm.unclean) {
            (Some(intent), true) => {
                let dirty = Self::dirty_regions(&health, intent, &asm.volume_uuid);
                match &dirty {
                    Some(d) => warn!(volume = name, regions = d.len(), of = intent.regions(), "not shut down cleanly: resynchronising the regions the write-intent bitmap marks"),
                    None => warn!(volume = name, "not shut down cleanly and no write-intent bitmap: resynchronising everything"),
                }
                let all: Vec<u32> = (0..intent.regions() as u32).collect();
                intent.mark_dirty(dirty.as_deref().unwrap_or(&all));
                Resync::new(
                    dirty,
                    intent.region_rows(),
                    layout.stripes_per_group(),
                    layout.groups(),
                )
            }
            _ => Resync::new(Some(vec![]), 1, layout.stripes_per_group(), layout.groups()),
        });
        if let (Some(intent), false) = (&intent, asm.unclean || health.all_active()) {
            // Started with a member out: the bits on disk (never swept while it was out)
            // say what it missed, for its re-add; with none intact it misses everything.
            let all: Vec<u32> = (0..intent.regions() as u32).collect();
            intent
                .mark_dirty(&Self::dirty_regions(&health, intent, &asm.volume_uuid).unwrap_or(all));
        }
        let identity = VolumeIdentity {
            uuid: asm.volume_uuid,
            name: name.into(),
            data_offset,
            created: now_unix(),
        };
        let mut meta = Metadata::new(
            identity,
            layout.clone(),
            block_size,
            health.clone(),
            asm.generation,
        );
        if let Some(intent) = &intent {
            let r = resync.clone();
            meta = meta.with_intent(intent.clone(), Box::new(move || !r.active()));
        }
        let scrub = Arc::new(Scrub::new(
            layout.stripes_per_group(),
            layout.groups(),
            DEFAULT_SCRUB_RATE,
        ));
        let scrub_every = Arc::new(AtomicU64::new(0));
        if redundant {
            meta = meta.with_scrub_schedule(scrub.clone(), scrub_every.clone(), resync.clone());
        }
        let meta = Arc::new(meta);
        meta.write_all(false);
        meta.write_bitmap();
        if !health.online() {
            return Err(VolumeError::Offline(health.failed_members()));
        }
        let (tx, rx) = crossbeam::channel::bounded(META_QUEUE);
        health.set_notifier(tx.clone());
        if (0..health.slots()).any(|s| health.is_failed(s)) && !health.spares().is_empty() {
            health.request_update();
        }
        let m = meta.clone();
        let thread = std::thread::Builder::new()
            .name(format!("meta-{name}"))
            .spawn(move || m.run(rx))
            .map_err(|e| superblock_error(name, e))?;
        Ok(RaidBdev {
            info,
            member_block_size: block_size,
            layout,
            data_offset,
            locks: Arc::new(StripeLocks::new(LOCK_BUCKETS)),
            health,
            meta_tx: tx,
            meta_thread: Mutex::new(Some(thread)),
            resync,
            scrub,
            scrub_every,
            volume_uuid: asm.volume_uuid,
            intent,
        })
    }

    /// The layout over the assembled slots. An existing volume keeps the member size its
    /// superblocks record, whatever devices are present now.
    #[allow(clippy::too_many_arguments)]
    fn layout_for(
        name: &str,
        level: Level,
        asm: &Assembly,
        all: &[Arc<dyn Bdev>],
        group_size: usize,
        strip_blocks: u64,
        data_offset: u64,
        recorded: Option<u64>,
    ) -> Result<Layout, VolumeError> {
        let usable = |ci: usize| all[ci].num_blocks().saturating_sub(data_offset);
        let mut sizes = Vec::with_capacity(asm.slots.len());
        for f in &asm.slots {
            let size = match (f.device, recorded) {
                (Some(ci), Some(r)) if level != Level::Concat => {
                    if usable(ci) < r {
                        let bs = all[ci].block_size() as u64;
                        return Err(VolumeError::TooSmall {
                            member: all[ci].name().into(),
                            have: all[ci].num_blocks() * bs,
                            need: (r + data_offset) * bs,
                            why: "the volume's member size its superblocks record, plus the 1 MiB metadata area",
                        });
                    }
                    r
                }
                (Some(ci), _) => usable(ci),
                (None, r) => r.unwrap_or(u64::MAX / 4),
            };
            if size == 0 {
                let (member, have, bs) = f.device.map_or_else(
                    || (name.to_string(), 0, 512),
                    |ci| {
                        (
                            all[ci].name().to_string(),
                            all[ci].num_blocks(),
                            all[ci].block_size() as u64,
                        )
                    },
                );
                return Err(VolumeError::TooSmall {
                    member,
                    have: have * bs,
                    need: (data_offset + 1) * bs,
                    why: "the 1 MiB metadata area plus one block of data",
                });
            }
            sizes.push(size);
        }
        let layout = Layout::new(level, &sizes, group_size, strip_blocks)?;
        if asm.created && level != Level::Concat && sizes.iter().any(|s| *s != layout.member_blocks)
        {
            info!(
                volume = name,
                used_blocks = layout.member_blocks,
                "members differ in size: each contributes only as much as the smallest"
            );
        }
        Ok(layout)
    }

    /// Orderly shutdown: flush the members, write the superblocks and stop the metadata
    /// thread. The volume is marked clean only when no resync is unfinished and every
    /// write it started has completed on every member; otherwise its write-intent bits
    /// stay set and the next start resynchronises those regions. Returns how it was left.
    pub fn close(&self) -> Closed {
        for slot in (0..self.health.slots()).filter(|&s| !self.health.is_failed(s)) {
            let dev = self.health.slot_device(slot);
            if let Err(e) = dev.bdev.sync() {
                warn!(volume = self.info.name, member = dev.bdev.name(), error = %e, "flush at shutdown failed");
                self.health.fail(slot, "flush at shutdown failed");
            }
        }
        let in_flight = self.intent.as_ref().map_or(0, |i| i.writes_in_flight());
        if in_flight > 0 {
            warn!(
                volume = self.info.name,
                writes = in_flight,
                "stopped with writes still in flight on the members: the volume stays dirty and the next start resynchronises the regions they touched"
            );
        }
        let state = match (in_flight, self.resync.active()) {
            (0, false) => Closed::Clean,
            (0, true) => Closed::ResyncPending,
            _ => Closed::WritesInFlight,
        };
        let clean = state == Closed::Clean;
        let (reply_tx, reply_rx) = crossbeam::channel::bounded(1);
        if self
            .meta_tx
            .send(MetaMsg::Close {
                reply: reply_tx,
                clean,
            })
            .is_ok()
        {
            let _ = reply_rx.recv_timeout(std::time::Duration::from_secs(30));
        }
        if let Some(t) = self.meta_thread.lock().unwrap().take() {
            let _ = t.join();
        }
        state
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn health(&self) -> &Arc<Members> {
        &self.health
    }

    pub fn resync(&self) -> &Arc<Resync> {
        &self.resync
    }

    pub fn scrub(&self) -> &Arc<Scrub> {
        &self.scrub
    }

    /// Scrub (check only) every `every`, counted from the target's start or the last
    /// scrub's start; None: no schedule.
    pub fn set_scrub_schedule(&self, every: Option<std::time::Duration>) {
        self.scrub_every
            .store(every.map_or(0, |d| d.as_secs().max(1)), Ordering::Relaxed);
    }

    /// Start a scrub: check every row (and repair mismatches when `repair`). Refused while
    /// the volume lacks a member, resynchronises or already scrubs.
    pub fn start_scrub(&self, repair: bool) -> Result<(), VolumeError> {
        if !self.redundant() {
            return Err(VolumeError::Refused(format!(
                "a {:?} volume has no parity or copies to check",
                self.layout.level
            )));
        }
        super::scrub::ready(&self.health, &self.resync).map_err(VolumeError::Refused)?;
        self.scrub.start(repair).map_err(VolumeError::Refused)
    }

    /// Member device names in slot order.
    pub fn member_names(&self) -> Vec<String> {
        (0..self.health.slots())
            .map(|s| self.health.slot_device(s).bdev.name().to_string())
            .collect()
    }

    /// online, degraded (a member failed), rebuilding (onto a spare) or offline.
    pub fn state(&self) -> &'static str {
        let h = &self.health;
        if !h.online() {
            "offline"
        } else if h.rebuilding() {
            "rebuilding"
        } else if (0..h.slots()).any(|s| h.is_failed(s)) {
            "degraded"
        } else {
            "online"
        }
    }

    /// Whether the member in `slot` can fail without taking the volume offline.
    pub fn can_lose(&self, slot: usize) -> bool {
        self.health.can_lose(slot)
    }

    /// Slot of the member device named `name`.
    /// The members' block size (the volume's own differs for RAID 3).
    pub fn member_block_size(&self) -> u32 {
        self.member_block_size
    }

    pub fn member_index(&self, name: &str) -> Option<usize> {
        self.health.slot_named(name)
    }

    /// Dirty write-intent regions after a crash: the union of the intact bitmap blocks of
    /// the members holding valid data (a flush is acknowledged only once every member has
    /// it, so any intact block holds every bit a write waited for). None when no member
    /// has an intact block.
    fn dirty_regions(health: &Members, intent: &WriteIntent, uuid: &[u8; 16]) -> Option<Vec<u32>> {
        let mut union: Option<std::collections::BTreeSet<u32>> = None;
        for slot in (0..health.slots()).filter(|&s| health.state(s) == SlotState::Active) {
            let dev = health.slot_device(slot);
            let Ok(buf) = AlignedRegion::new(BITMAP_BYTES) else {
                continue;
            };
            // SAFETY: the fresh region is ours alone.
            let b = unsafe { buf.slice_mut(0, BITMAP_BYTES) };
            if dev.bdev.sync_io(BdevOp::Read, BITMAP_OFFSET, b).is_err() {
                continue;
            }
            if let Some(regions) = bitmap::decode(b, uuid, intent.region_rows(), intent.regions()) {
                union.get_or_insert_with(Default::default).extend(regions);
            }
        }
        union.map(|u| u.into_iter().collect())
    }

    fn redundant(&self) -> bool {
        self.layout.level.tolerance(self.layout.group_size) > 0
    }

    /// Add `dev` as a hot spare; a failed slot takes it at once.
    pub fn add_spare(&self, dev: Arc<dyn Bdev>) -> Result<(), VolumeError> {
        let refuse = |why: String| Err(VolumeError::Refused(why));
        if !self.redundant() {
            return refuse(format!(
                "a {:?} volume has no redundancy to rebuild",
                self.layout.level
            ));
        }
        if dev.block_size() != self.member_block_size {
            return Err(VolumeError::BlockSize {
                member: dev.name().into(),
                got: dev.block_size(),
                want: self.member_block_size,
            });
        }
        if dev.num_blocks() < self.layout.member_blocks + self.data_offset {
            let bs = dev.block_size() as u64;
            return Err(VolumeError::SpareTooSmall {
                spare: dev.name().into(),
                have: dev.num_blocks() * bs,
                need: (self.layout.member_blocks + self.data_offset) * bs,
            });
        }
        if self.health.uses_device(dev.name()) {
            return refuse(format!(
                "device '{}' already belongs to this volume",
                dev.name()
            ));
        }
        let id = super::assemble::spare_id(&self.volume_uuid, dev.name());
        self.health.add_spare(Device {
            bdev: dev,
            id,
            present: true,
        });
        Ok(())
    }

    /// Replace member `member` by spare `spare`: the member is failed and the spare rebuilt
    /// in its place. Redundancy drops while the rebuild runs.
    pub fn replace(&self, member: &str, spare: &str, force: bool) -> Result<(), VolumeError> {
        let slot = self.member_index(member).ok_or_else(|| {
            VolumeError::Refused(format!(
                "volume '{}' has no member '{member}'",
                self.info.name
            ))
        })?;
        if !force && !self.can_lose(slot) {
            return Err(VolumeError::Refused(format!(
                "replacing '{member}' would take volume '{}' offline while the spare rebuilds",
                self.info.name
            )));
        }
        self.health
            .replace(slot, spare)
            .map_err(VolumeError::Refused)
    }

    /// Detach a failed member so its device can be reused.
    pub fn remove_member(&self, member: &str) -> Result<(), VolumeError> {
        let slot = self.member_index(member).ok_or_else(|| {
            VolumeError::Refused(format!(
                "volume '{}' has no member '{member}'",
                self.info.name
            ))
        })?;
        self.health
            .remove_failed(
                slot,
                stand_in(&self.info.name, slot, self.member_block_size),
            )
            .map(|_| ())
            .map_err(VolumeError::Refused)
    }

    /// Put failed member `member` back, catching up only the write-intent regions written
    /// while it was out (md's re-add); without a bitmap, or if the device does not hold
    /// this volume's slot as it left it, refused or rebuilt in full. Returns the regions
    /// to copy (None: everything).
    pub fn readd(&self, member: &str) -> Result<Option<u64>, VolumeError> {
        let refuse = |why: String| Err(VolumeError::Refused(why));
        let Some(slot) = self.member_index(member) else {
            return refuse(format!(
                "volume '{}' has no member '{member}'",
                self.info.name
            ));
        };
        if !self.redundant() {
            return refuse(format!(
                "a {:?} volume has no redundancy to catch a member up from",
                self.layout.level
            ));
        }
        let dev = self.health.slot_device(slot);
        let sb = match read_superblock(dev.bdev.as_ref()) {
            Ok(Ok(Some(sb))) => sb,
            Ok(Ok(None)) => {
                return refuse(format!(
                    "'{member}' holds no superblock: add it as a spare instead"
                ))
            }
            Ok(Err(e)) => {
                return refuse(format!(
                    "'{member}': unreadable superblock ({e:?}): add it as a spare instead"
                ))
            }
            Err(e) => return refuse(format!("'{member}' cannot be read: {e}")),
        };
        if sb.volume_uuid != self.volume_uuid
            || sb.this_slot as usize != slot
            || sb.this_device != dev.id
        {
            return refuse(format!(
                "'{member}' does not hold slot {slot} of volume '{}': add it as a spare instead",
                self.info.name
            ));
        }
        // It left as an active member (not half rebuilt): only what was written since is stale.
        let was_active = sb
            .slots
            .get(slot)
            .is_some_and(|s| s.state == SlotState::Active);
        let intent = self.intent.clone().filter(|_| was_active);
        self.health
            .readd(slot, move || {
                intent.map(|i| (i.region_rows(), i.possibly_dirty()))
            })
            .map_err(VolumeError::Refused)?;
        Ok(self.health.rebuild_progress().catch_up_regions)
    }

    /// Take the spare named `name` off the volume.
    pub fn remove_spare(&self, name: &str) -> Result<(), VolumeError> {
        self.health.remove_spare(name).map(|_| ()).ok_or_else(|| {
            VolumeError::Refused(format!(
                "'{name}' is not a spare of volume '{}'",
                self.info.name
            ))
        })
    }
}

impl std::fmt::Debug for RaidBdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaidBdev")
            .field("name", &self.info.name)
            .field("level", &self.layout.level)
            .finish()
    }
}

impl Bdev for RaidBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    /// The volume ranges of the rows the start-up resync covers: what the write-intent
    /// bitmap found dirty (every row when it was torn or missing).
    fn crash_ranges(&self) -> Option<Vec<(u64, u64)>> {
        let r = &self.resync;
        if self.layout.level == Level::Concat || self.intent.is_none() {
            return None;
        }
        let bytes = |(start, end): (u64, u64)| {
            (
                start << self.member_block_size.trailing_zeros(),
                (end - start) << self.member_block_size.trailing_zeros(),
            )
        };
        if r.total.load(Ordering::Relaxed) == 0 {
            return Some(vec![]);
        }
        if r.regions.is_empty() {
            return Some(vec![bytes(self.layout.volume_blocks_of_rows(0, r.rows))]);
        }
        Some(
            r.regions
                .iter()
                .map(|&g| {
                    bytes(self.layout.volume_blocks_of_rows(
                        g as u64 * r.region_rows,
                        ((g as u64 + 1) * r.region_rows).min(r.rows),
                    ))
                })
                .collect(),
        )
    }

    fn open_channel(
        &self,
        files: &mut dyn FileRegistry,
        route: ChildRoute,
    ) -> std::io::Result<Box<dyn BdevChannel>> {
        // Device channels are private to this volume channel: their completions come back
        // as Child tokens of the volume and are routed here by the reactor; those of a
        // device's own ring operations (a remote device's sockets) carry the device's route.
        let devs: Vec<Box<dyn BdevChannel>> = (0..self.health.device_count())
            .map(|d| {
                self.health
                    .device(d)
                    .bdev
                    .open_channel(files, route.member(d))
            })
            .collect::<Result<_, _>>()?;
        let polled_devs = (0..devs.len())
            .filter(|&d| devs[d].needs_polling())
            .collect();
        let strip_bytes =
            (self.layout.strip_blocks as usize) << self.member_block_size.trailing_zeros();
        let parity = self.layout.level.parity_count() > 0;
        let redundant = self.redundant();
        Ok(Box::new(RaidChannel {
            route,
            polled_devs,
            member_done: Vec::with_capacity(4096),
            volume: self.info.name.clone(),
            layout: self.layout.clone(),
            devs,
            block_shift: self.member_block_size.trailing_zeros(),
            data_offset: self.data_offset,
            locks: self.locks.clone(),
            health: self.health.clone(),
            resync: self.resync.clone(),
            resync_inflight: false,
            resync_driver: false,
            rebuild: RebuildDriver::default(),
            parents: Slab::with_capacity(MAX_PARENTS),
            stripes: Slab::with_capacity(if redundant {
                MAX_PARENTS * STRIPE_WINDOW as usize
            } else {
                0
            }),
            children: Slab::with_capacity(MAX_CHILDREN),
            member_ops: (0..self.health.device_count())
                .map(|_| OpSet::default())
                .collect(),
            waiting: VecDeque::with_capacity(if redundant {
                MAX_PARENTS * STRIPE_WINDOW as usize
            } else {
                0
            }),
            gated: VecDeque::with_capacity(if redundant { MAX_PARENTS } else { 0 }),
            intent: self.intent.clone(),
            sync_done: VecDeque::with_capacity(1024),
            completed: Vec::with_capacity(MAX_PARENTS),
            held: Vec::with_capacity(MAX_PARENTS),
            submitting: None,
            submit_result: None,
            scratch: Scratch::new(
                if redundant { strip_bytes } else { 0 },
                self.layout.group_size,
                parity,
            )?,
            zeroes: AlignedRegion::new(if parity { strip_bytes } else { 0 })?,
            next_copy: 0,
            scrub: self.scrub.clone(),
            scrub_state: ScrubDriver::default(),
            latency: self.health.slow.register(),
            probe: 0,
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
    fn new(chunk: usize, group_size: usize, parity: bool) -> std::io::Result<Scratch> {
        if chunk == 0 {
            return Ok(Scratch {
                region: AlignedRegion::new(0)?,
                chunk: 0,
                free: Vec::new(),
            });
        }
        // Room for several whole-stripe operations whatever the strip size; mirrors only
        // need chunks for background copies.
        let bytes = if parity {
            SCRATCH_BYTES
        } else {
            SCRATCH_BYTES / 8
        };
        let count = (bytes / chunk).clamp(4 * (group_size + 2), u16::MAX as usize);
        Ok(Scratch {
            region: AlignedRegion::new(count * chunk)?,
            chunk,
            free: (0..count as u16).rev().collect(),
        })
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
    pub(super) job: Job,
    /// Mirror writes: stripe locks held, (first key, count).
    pub(super) locks: (u64, u32),
    /// Writes on redundant levels: the write-intent regions they are counted in.
    pub(super) regions: Option<(u32, u32)>,
}

/// Whose I/O a parent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Job {
    Host,
    /// A stripe of the parity resync after an unclean shutdown.
    Resync,
    /// A row of a rebuild onto spares: the rebuild's epoch and the op's sequence number.
    Rebuild {
        epoch: u64,
        seq: u64,
    },
    /// A row of a scrub.
    Scrub,
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
    /// Make a stripe consistent: parity from data, or mirror copies from the first (after
    /// an unclean shutdown).
    Resync,
    /// Write a row of the rebuilding members from the others.
    Rebuild,
    /// Check a row's parity or mirror copies (and repair it when asked).
    Scrub,
}

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
    /// Slots of the op's group without valid data at its row, as seen when the op
    /// started: one view for its reads and its computation (the rebuild frontier may
    /// pass the row meanwhile; a member is only ever counted missing when it is not).
    pub(super) missing: u64,
    /// Scratch chunk per data index (old data or row image), then P and Q.
    pub(super) chunks: [u16; MAX_DATA + 2],
}

pub(super) struct RaidChannel {
    route: ChildRoute,
    volume: String,
    pub(super) layout: Arc<Layout>,
    /// One channel per device of the volume (members, spares), by device index.
    devs: Vec<Box<dyn BdevChannel>>,
    /// Devices whose channels must be polled every turn (remote devices).
    polled_devs: Vec<usize>,
    /// Completions devices hand back from their own operations (remote devices).
    member_done: Completions,
    block_shift: u32,
    data_offset: u64,
    pub(super) locks: Arc<StripeLocks>,
    pub(super) health: Arc<Members>,
    pub(super) resync: Arc<Resync>,
    /// This channel drives the resync and has a stripe of it in flight.
    pub(super) resync_inflight: bool,
    pub(super) resync_driver: bool,
    pub(super) rebuild: RebuildDriver,
    pub(super) parents: Slab<Parent>,
    pub(super) stripes: Slab<StripeOp>,
    children: Slab<Child>,
    /// Latency and counters per device (by device index) and operation class.
    member_ops: Vec<OpSet>,
    /// Stripe ops waiting for their lock or scratch, oldest first.
    pub(super) waiting: VecDeque<u32>,
    /// Writes waiting for their write-intent bits or (mirrors) stripe locks, oldest first.
    gated: VecDeque<u32>,
    intent: Option<Arc<WriteIntent>>,
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
    pub(super) scrub: Arc<Scrub>,
    pub(super) scrub_state: ScrubDriver,
    /// Per-slot member latency for the slow-member watch (written only here).
    latency: Arc<LatencyCells>,
    /// Counts reads; every PROBE_EVERY-th goes to a slow member anyway.
    probe: u32,
}

/// A member I/O in flight.
#[derive(Debug, Clone, Copy)]
struct Child {
    owner: Owner,
    /// What success returns: the bytes to transfer, or 0.
    expect: i32,
    slot: u16,
    device: u16,
    class: OpClass,
    started: Stamp,
}

/// Opens device channels outside a reactor's setup: plain file descriptors.
struct NoFixedFiles;
impl FileRegistry for NoFixedFiles {
    fn register(&mut self, _: std::os::fd::RawFd) -> Option<u32> {
        None
    }
}

impl RaidChannel {
    pub(super) fn parity(&self) -> usize {
        self.layout.level.parity_count()
    }

    /// The parity code of this parity volume.
    pub(super) fn code(&self) -> crate::volume::level::ParityCode {
        self.layout.level.parity_code().expect("a parity volume")
    }

    pub(super) fn volume_name(&self) -> &str {
        &self.volume
    }

    pub(super) fn bytes(&self, blocks: u64) -> usize {
        (blocks << self.block_shift) as usize
    }

    /// Open channels to devices added since this channel opened (spares).
    fn open_new_devices(&mut self) {
        for d in self.devs.len()..self.health.device_count() {
            let bdev = self.health.device(d).bdev;
            let ch = bdev
                .open_channel(&mut NoFixedFiles, self.route.member(d))
                .unwrap_or_else(|e| {
                    warn!(device = bdev.name(), error = %e, "cannot open device");
                    Box::new(crate::bdev::FailingChannel)
                });
            if ch.needs_polling() {
                self.polled_devs.push(d);
            }
            self.devs.push(ch);
            self.member_ops.push(OpSet::default());
        }
    }

    /// Submit one I/O to the device in `slot`; its completion comes back through
    /// `sync_done` or the ring.
    pub(super) fn child(
        &mut self,
        owner: Owner,
        slot: usize,
        mut io: BdevIo,
        sq: &mut dyn SqeSink,
    ) {
        debug_assert!(!self.health.is_failed(slot), "I/O to a failed member");
        let dev = self.health.device_of(slot);
        if dev >= self.devs.len() {
            self.open_new_devices();
        }
        let expect = if matches!(io.op, BdevOp::Read | BdevOp::Write) {
            io.len as i32
        } else {
            0
        };
        let c = Child {
            owner,
            expect,
            slot: slot as u16,
            device: dev as u16,
            class: OpClass::of(io.op),
            started: Stamp::now(),
        };
        let tag = self
            .children
            .insert(c)
            .expect("member I/O table sized for the worst case");
        self.latency.begin(slot);
        match owner {
            Owner::Parent(p) => self.parents.get_mut(p).pending += 1,
            Owner::Stripe(s) => self.stripes.get_mut(s).pending += 1,
        }
        io.user_data = self.route.token(tag as u64);
        if let Submitted::Done(res) = self.devs[dev].submit(&io, sq) {
            self.sync_done.push_back((tag, res));
        }
    }

    pub(super) fn member_io(
        &self,
        op: BdevOp,
        loc: Location,
        blocks: u64,
        buf: *mut u8,
        buf_index: Option<u16>,
    ) -> BdevIo {
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
        if parent.locks.1 > 0 {
            self.locks.unlock_range(parent.locks.0, parent.locks.1);
        }
        if let (Some((r0, r1)), Some(intent)) = (parent.regions, &self.intent) {
            intent.end(r0, r1);
        }
        let result = if parent.retry {
            -libc::EIO
        } else {
            parent.result
        };
        match parent.job {
            Job::Host => {}
            Job::Resync => return self.resync_stripe_done(),
            Job::Rebuild { epoch, seq } => return self.rebuild_op_done(epoch, seq),
            Job::Scrub => return self.scrub_row_done(),
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
        let Child {
            owner,
            expect,
            slot,
            device: dev,
            class,
            started,
        } = self.children.remove(tag);
        let micros = started.elapsed_micros();
        self.latency.end(slot as usize, micros);
        if let Some(ops) = self.member_ops.get_mut(dev as usize) {
            ops.record(class, micros, res.max(0) as u64);
        }
        if res != expect {
            self.health.fail_device(
                slot as usize,
                dev as usize,
                if res < 0 {
                    "I/O error"
                } else {
                    "short transfer"
                },
            );
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

    /// A copy of `n` blocks at `lba` that holds valid data (one location for non-mirrored
    /// levels), in preference order starting from `first`; one on a member that is not
    /// slow when there is one and `avoid_slow`.
    fn valid_copy(&self, lba: u64, n: u64, first: usize, avoid_slow: bool) -> Option<Location> {
        let (base, copies) = (self.layout.locate(lba), self.layout.copy_count());
        let valid = |l: &Location| {
            !self
                .health
                .is_missing(l.member, (l.member_lba + n - 1) / self.layout.strip_blocks)
        };
        let mut candidates = (0..copies)
            .map(|c| base.copy((first + c) % copies))
            .filter(valid);
        let first_valid = candidates.next()?;
        if !avoid_slow || !self.health.slow.is_slow(first_valid.member) {
            return Some(first_valid);
        }
        candidates
            .find(|l| !self.health.slow.is_slow(l.member))
            .or(Some(first_valid))
    }

    /// Count a host read of `lba` against the slow members it concerns: kept off them
    /// (another copy, or reconstruction when `around`), or sent to one anyway.
    fn note_slow_read(&self, lba: u64, chosen: &Location, around: bool) {
        let base = self.layout.locate(lba);
        for c in 0..self.layout.copy_count() {
            let m = base.copy(c).member;
            if !self.health.slow.is_slow(m) {
                continue;
            }
            if around || m != chosen.member {
                self.latency.read_around(m);
            } else {
                self.latency.read_direct(m);
            }
        }
    }

    /// Whether this read should keep off slow members: all but every PROBE_EVERY-th, which
    /// keeps a slow member's latency measured.
    fn avoid_slow(&mut self) -> bool {
        self.probe = self.probe.wrapping_add(1);
        !self.probe.is_multiple_of(PROBE_EVERY)
    }

    /// A parity level's read of a strip on a slow member is served by reconstruction
    /// instead, while its group can do without the member.
    fn read_around(&self, loc: &Location, avoid_slow: bool) -> bool {
        avoid_slow
            && self.parity() > 0
            && self.health.slow.is_slow(loc.member)
            && self.health.can_lose(loc.member)
    }

    pub(super) fn fan_out(&mut self, p: u32, io: &BdevIo, sq: &mut dyn SqeSink) {
        let sub = |io: &BdevIo, off: usize| {
            if io.buf.is_null() {
                io.buf
            } else {
                io.buf.wrapping_add(off)
            }
        };
        match io.op {
            BdevOp::Flush => {
                for m in 0..self.health.slots() {
                    if !self.health.is_failed(m) {
                        self.child(
                            Owner::Parent(p),
                            m,
                            BdevIo {
                                user_data: 0,
                                ..*io
                            },
                            sq,
                        );
                    }
                }
            }
            BdevOp::Read => self.for_each_run(io, |ch, lba, n, off| {
                ch.next_copy = ch.next_copy.wrapping_add(1);
                // Slow members matter only while there are any: one load in the common case.
                let any_slow = ch.health.slow.any();
                let avoid_slow = any_slow && ch.avoid_slow();
                let copy = ch.valid_copy(lba, n, ch.next_copy, avoid_slow);
                let around = copy
                    .as_ref()
                    .is_some_and(|loc| ch.read_around(loc, avoid_slow));
                if let (true, Some(loc)) = (any_slow, &copy) {
                    ch.note_slow_read(lba, loc, around);
                }
                match copy {
                    Some(_) if around => {
                        let start = io.offset >> ch.block_shift;
                        let (w, _) = plan::next_stripe(&ch.layout, start, lba, lba + n);
                        ch.start_stripe_op(p, w, StripeKind::Read, sq);
                    }
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
            // Every copy not failed, rebuilding ones included.
            BdevOp::Write | BdevOp::WriteZeroes | BdevOp::Discard => {
                self.for_each_run(io, |ch, lba, n, off| {
                    let base = ch.layout.locate(lba);
                    for c in 0..ch.layout.copy_count() {
                        let loc = base.copy(c);
                        if !ch.health.is_failed(loc.member) {
                            let mio = ch.member_io(io.op, loc, n, sub(io, off), io.buf_index);
                            ch.child(Owner::Parent(p), loc.member, mio, sq);
                        }
                    }
                })
            }
        }
    }

    /// Mirror writes hold the stripe locks of the strips they touch, so a background copy
    /// of a strip (rebuild, resync) never interleaves with them.
    fn mirror_locks(&self, start: u64, end: u64) -> (u64, u32) {
        let first = start / self.layout.strip_blocks;
        let last = (end - 1) / self.layout.strip_blocks;
        (first, (last - first + 1) as u32)
    }

    /// Start a gated write once its write-intent bits are durable and (mirrors) its
    /// stripe locks are free. False: try again later.
    fn try_admit(&mut self, p: u32, sq: &mut dyn SqeSink) -> bool {
        let parent = *self.parents.get(p);
        if let (Some((r0, r1)), Some(intent)) = (parent.regions, &self.intent) {
            if !intent.ready(r0, r1) {
                return false;
            }
        }
        if parent.locks.1 > 0 && !self.locks.try_lock_range(parent.locks.0, parent.locks.1) {
            return false;
        }
        if parent.cursor < parent.end {
            self.pump(p, sq);
        } else {
            let io = parent.as_io(self.block_shift);
            self.fan_out(p, &io, sq);
        }
        self.finish_parent_if_done(p, sq);
        true
    }

    /// Write-intent regions of a write to volume blocks `start..end`.
    fn intent_regions(&self, start: u64, end: u64) -> Option<(u32, u32)> {
        let intent = self.intent.as_ref()?;
        Some(intent.regions_of(
            self.layout.member_row(start),
            self.layout.member_row(end - 1),
        ))
    }

    /// Admit every gated write that can start now, oldest first; the rest keep their order.
    /// (A write whose bits are durable need not wait behind one whose bits are not.)
    fn retry_gated(&mut self, sq: &mut dyn SqeSink) {
        for _ in 0..self.gated.len() {
            let p = self.gated.pop_front().expect("counted");
            if !self.try_admit(p, sq) {
                self.gated.push_back(p);
            }
        }
    }
}

impl BdevChannel for RaidChannel {
    fn submit(&mut self, io: &BdevIo, sq: &mut dyn SqeSink) -> Submitted {
        let ok = if matches!(io.op, BdevOp::Read | BdevOp::Write) {
            io.len as i32
        } else {
            0
        };
        let start = io.offset >> self.block_shift;
        let end = start + (io.len as u64 >> self.block_shift);
        let writes = matches!(io.op, BdevOp::Write | BdevOp::WriteZeroes | BdevOp::Discard);
        let parity_write =
            self.parity() > 0 && matches!(io.op, BdevOp::Write | BdevOp::WriteZeroes);
        let mirror_write = writes && self.layout.level.is_mirror() && end > start;
        if !self.health.online() {
            return Submitted::Done(-libc::ENXIO);
        }
        // Deallocation is advisory; on parity levels it would break parity, so it is
        // acknowledged without touching the members.
        let skip = self.parity() > 0 && io.op == BdevOp::Discard;
        let regions = if writes && !skip && end > start {
            self.intent_regions(start, end)
        } else {
            None
        };
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
            job: Job::Host,
            locks: if mirror_write {
                self.mirror_locks(start, end)
            } else {
                (0, 0)
            },
            regions,
        };
        let Some(p) = self.parents.insert(parent) else {
            return Submitted::Done(-libc::EBUSY);
        };
        self.submitting = Some(p);
        self.submit_result = None;
        if let (Some((r0, r1)), Some(intent)) = (regions, &self.intent) {
            if !intent.begin(r0, r1) {
                self.health.request_bitmap_flush();
            }
        }
        if regions.is_some() || mirror_write {
            if !self.try_admit(p, sq) {
                self.gated.push_back(p);
            }
        } else if parity_write {
            self.pump(p, sq);
            self.finish_parent_if_done(p, sq);
        } else if !skip {
            self.fan_out(p, io, sq);
            self.finish_parent_if_done(p, sq);
        } else {
            self.finish_parent_if_done(p, sq);
        }
        self.drain(sq);
        self.submitting = None;
        match self.submit_result.take() {
            Some(res) => Submitted::Done(res),
            None => Submitted::Queued,
        }
    }

    fn member_stats(&mut self, out: &mut Vec<MemberStats>, reset: bool) {
        for (d, ops) in self.member_ops.iter_mut().enumerate() {
            if !ops.is_empty() {
                let device = self.health.device(d).bdev.name().to_string();
                out.push(MemberStats {
                    volume: self.volume.clone(),
                    device,
                    ops: ops.clone(),
                });
            }
            if reset {
                ops.reset();
            }
        }
    }

    fn child_complete(&mut self, tag: u64, res: i32, sq: &mut dyn SqeSink, done: &mut Completions) {
        match self.route.member_of(tag) {
            Some((dev, dev_tag)) => {
                let mut out = std::mem::take(&mut self.member_done);
                self.devs[dev].child_complete(dev_tag, res, sq, &mut out);
                self.take_member_completions(&mut out);
                self.member_done = out;
            }
            None => self.on_child(tag as u32, res, sq),
        }
        self.drain(sq);
        done.append(&mut self.completed);
    }

    fn needs_polling(&self) -> bool {
        true
    }

    fn poll(&mut self, sq: &mut dyn SqeSink, done: &mut Completions) -> bool {
        let mut devs_waiting = false;
        if !self.polled_devs.is_empty() {
            let mut out = std::mem::take(&mut self.member_done);
            for i in 0..self.polled_devs.len() {
                devs_waiting |= self.devs[self.polled_devs[i]].poll(sq, &mut out);
            }
            self.take_member_completions(&mut out);
            self.member_done = out;
        }
        self.drive_resync(sq);
        self.drive_rebuild(sq);
        self.drive_scrub(sq);
        if !self.gated.is_empty() {
            self.retry_gated(sq);
        }
        if !self.waiting.is_empty() {
            self.retry_waiting(sq);
        }
        self.drain(sq);
        if !self.held.is_empty() && self.health.recorded() {
            done.append(&mut self.held);
        }
        done.append(&mut self.completed);
        devs_waiting || !self.waiting.is_empty() || !self.gated.is_empty() || !self.held.is_empty()
    }
}

impl RaidChannel {
    /// Member I/Os a device finished from its own completions or polling: they carry this
    /// volume's tokens and join the other member completions.
    fn take_member_completions(&mut self, out: &mut Completions) {
        for (user_data, res) in out.drain(..) {
            let t = Token::decode(user_data)
                .expect("a member completes only I/O this volume submitted");
            let tag = t.child_tag() - self.route.base;
            debug_assert!(t.kind == Kind::Child && tag < self.route.own_tags());
            self.sync_done.push_back((tag as u32, res));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::RamBdev;
    use crate::volume::members::SlotState;

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
        let m: Vec<Arc<dyn Bdev>> = (0..members)
            .map(|i| {
                Arc::new(RamBdev::new(&format!("m{i}"), 512, 4 << 20).unwrap()) as Arc<dyn Bdev>
            })
            .collect();
        let spec = VolumeSpec {
            name: "v".into(),
            level,
            members: m.clone(),
            absent: vec![],
            spares: vec![],
            group_size: group,
            strip_bytes: 16384,
            rebuild_rate: 0,
            member_order: vec![],
            slow_policy: SlowPolicy::default(),
        };
        (RaidBdev::new(spec).unwrap(), m)
    }

    /// Submit and wait: RAM members complete at once, but a write may first wait for its
    /// write-intent bit, which the metadata thread makes durable.
    fn rw(ch: &mut dyn BdevChannel, op: BdevOp, offset: u64, buf: &mut [u8]) -> Submitted {
        let io = BdevIo {
            op,
            offset,
            len: buf.len() as u32,
            buf: buf.as_mut_ptr(),
            buf_index: None,
            user_data: 1,
        };
        if let done @ Submitted::Done(_) = ch.submit(&io, &mut NoRing) {
            return done;
        }
        let t = std::time::Instant::now();
        loop {
            let mut done = Vec::new();
            ch.poll(&mut NoRing, &mut done);
            if let Some((_, res)) = done.iter().find(|(u, _)| *u == 1) {
                return Submitted::Done(*res);
            }
            assert!(t.elapsed().as_secs() < 10, "I/O did not complete");
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    fn read_member(m: &Arc<dyn Bdev>, lba: u64, blocks: usize) -> Vec<u8> {
        let mut ch = m.open_channel(&mut NoFiles, ChildRoute::top(0)).unwrap();
        let mut b = vec![0u8; blocks * 512];
        rw(&mut *ch, BdevOp::Read, lba * 512, &mut b);
        b
    }

    #[test]
    fn writes_read_back_and_land_where_the_layout_says() {
        for (level, n, g) in [
            (Level::Raid0, 3, 0),
            (Level::Raid1, 3, 0),
            (Level::Raid10, 4, 2),
            (Level::Concat, 2, 0),
            (Level::Raid5, 4, 0),
            (Level::Raid6, 5, 0),
            (Level::Raid50, 6, 3),
            (Level::Raid6Dp, 5, 0),
        ] {
            let (v, members) = volume(level, n, g);
            let mut ch = v.open_channel(&mut NoFiles, ChildRoute::top(0)).unwrap();
            let len = 200_192;
            let mut data: Vec<u8> = (0..len as u32).map(|i| (i * 7 + 3) as u8).collect();
            let offset = 512 * 37;
            assert_eq!(
                rw(&mut *ch, BdevOp::Write, offset, &mut data),
                Submitted::Done(len as i32),
                "{level:?}"
            );
            let mut back = vec![0u8; len];
            assert_eq!(
                rw(&mut *ch, BdevOp::Read, offset, &mut back),
                Submitted::Done(len as i32)
            );
            assert!(back == data, "{level:?}");
            // Every copy of block 37 + 40 holds the right bytes on its member.
            for loc in v.layout().copies(37 + 40) {
                let blk = read_member(&members[loc.member], v.data_offset + loc.member_lba, 1);
                assert_eq!(
                    blk,
                    data[40 * 512..41 * 512],
                    "{level:?} member {}",
                    loc.member
                );
            }
        }
    }

    /// After any mix of partial writes, every stripe's P (and Q) equals the parity of its
    /// data as computed from scratch.
    #[test]
    fn parity_stays_consistent_under_partial_writes() {
        for (level, n, g) in [
            (Level::Raid4, 4, 0),
            (Level::Raid5, 5, 0),
            (Level::Raid6, 6, 0),
            (Level::Raid60, 8, 4),
            (Level::Raid6Dp, 6, 0),
            (Level::Raid6Dp, 9, 0),
        ] {
            let (v, members) = volume(level, n, g);
            let mut ch = v.open_channel(&mut NoFiles, ChildRoute::top(0)).unwrap();
            let mut x = 12345u64;
            for _ in 0..200 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let nlb = 1 + (x >> 33) % 100;
                let lba = (x >> 13) % (v.num_blocks() - nlb);
                let mut data: Vec<u8> = (0..nlb * 512).map(|i| (i ^ x) as u8).collect();
                let op = if x.is_multiple_of(7) {
                    BdevOp::WriteZeroes
                } else {
                    BdevOp::Write
                };
                let res = rw(&mut *ch, op, lba * 512, &mut data);
                assert!(
                    matches!(res, Submitted::Done(r) if r >= 0),
                    "{level:?} {res:?}"
                );
            }
            let l = v.layout();
            let strip = l.strip_blocks as usize;
            for group in 0..l.groups() {
                for stripe in 0..l.stripes_per_group() {
                    let read = |slot: usize| {
                        read_member(
                            &members[l.member_of(group, slot)],
                            v.data_offset + stripe * l.strip_blocks,
                            strip,
                        )
                    };
                    let data: Vec<Vec<u8>> = (0..l.data_per_stripe())
                        .map(|i| read(l.data_slot(stripe, i)))
                        .collect();
                    let (p, q) = parity_of(level, &data);
                    assert!(
                        read(l.p_slot(stripe)) == p,
                        "{level:?} group {group} stripe {stripe}: P"
                    );
                    if let Some(qs) = l.q_slot(stripe) {
                        assert!(read(qs) == q, "{level:?} group {group} stripe {stripe}: Q");
                    }
                }
            }
        }
    }

    /// P and Q (or row and diagonal parity) of a stripe's data strips, by the level's code;
    /// Q is empty for single-parity levels.
    fn parity_of(level: Level, data: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
        let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        let code = level.parity_code().expect("a parity level");
        let mut p = vec![0u8; data[0].len()];
        let mut q = vec![0u8; if code.strips() == 2 { p.len() } else { 0 }];
        code.generate(&refs, &mut p, (code.strips() == 2).then_some(&mut q[..]));
        (p, q)
    }

    fn volume_with_spares(
        level: Level,
        members: usize,
        group: usize,
        spares: usize,
    ) -> (RaidBdev, Vec<u8>) {
        let dev = |i: usize| {
            Arc::new(RamBdev::new(&format!("m{i}"), 512, 4 << 20).unwrap()) as Arc<dyn Bdev>
        };
        let spec = VolumeSpec {
            name: "v".into(),
            level,
            members: (0..members).map(dev).collect(),
            absent: vec![],
            spares: (members..members + spares).map(dev).collect(),
            group_size: group,
            strip_bytes: 16384,
            rebuild_rate: 0,
            member_order: vec![],
            slow_policy: SlowPolicy::default(),
        };
        let v = RaidBdev::new(spec).unwrap();
        let model = vec![0u8; (v.num_blocks() * v.block_size() as u64) as usize];
        (v, model)
    }

    /// A write of 1 to 80 volume blocks of `bs` bytes somewhere, applied to the model too.
    fn random_write(ch: &mut dyn BdevChannel, model: &mut [u8], x: &mut u64, bs: u64) {
        *x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let blocks = model.len() as u64 / bs;
        let nlb = 1 + (*x >> 33) % 80;
        let lba = (*x >> 11) % (blocks - nlb);
        let mut data: Vec<u8> = (0..nlb * bs).map(|i| (i ^ *x) as u8).collect();
        assert!(matches!(rw(ch, BdevOp::Write, lba * bs, &mut data), Submitted::Done(r) if r > 0));
        model[(lba * bs) as usize..((lba + nlb) * bs) as usize].copy_from_slice(&data);
    }

    fn check_reads(ch: &mut dyn BdevChannel, model: &[u8], what: &str) {
        let chunk = 64 * 1024;
        for off in (0..model.len()).step_by(chunk) {
            let mut b = vec![0u8; chunk.min(model.len() - off)];
            assert!(
                matches!(rw(ch, BdevOp::Read, off as u64, &mut b), Submitted::Done(r) if r > 0),
                "{what}"
            );
            assert!(
                b == model[off..off + b.len()],
                "{what}: data differs at byte {off}"
            );
        }
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let t = std::time::Instant::now();
        while !f() {
            assert!(t.elapsed().as_secs() < 10, "timed out waiting for {what}");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// Every copy of every row is the same (mirrors); every stripe's parity matches its
    /// data (parity levels). Read from whatever device fills each slot now.
    fn check_redundancy(v: &RaidBdev) {
        let l = v.layout();
        let strip = l.strip_blocks as usize;
        let read = |group: usize, slot: usize, row: u64| {
            read_member(
                &v.health().slot_device(l.member_of(group, slot)).bdev,
                v.data_offset + row * l.strip_blocks,
                strip,
            )
        };
        for group in 0..l.groups() {
            for row in 0..l.stripes_per_group() {
                if l.level.parity_count() == 0 {
                    let first = read(group, 0, row);
                    for slot in 1..l.group_size {
                        assert!(
                            read(group, slot, row) == first,
                            "{:?} group {group} row {row}: copy {slot} differs",
                            l.level
                        );
                    }
                    continue;
                }
                let data: Vec<Vec<u8>> = (0..l.data_per_stripe())
                    .map(|i| read(group, l.data_slot(row, i), row))
                    .collect();
                let (p, q) = parity_of(l.level, &data);
                assert!(
                    read(group, l.p_slot(row), row) == p,
                    "{:?} group {group} row {row}: P",
                    l.level
                );
                if let Some(qs) = l.q_slot(row) {
                    assert!(
                        read(group, qs, row) == q,
                        "{:?} group {group} row {row}: Q",
                        l.level
                    );
                }
            }
        }
    }

    /// Members fail (up to the level's tolerance); spares take over and rebuild while
    /// writes and reads go on; every read matches the model, and at the end the spares
    /// are active members holding consistent data and parity.
    #[test]
    fn spares_rebuild_during_io() {
        for (level, n, g, fail) in [
            (Level::Raid5, 4, 0, vec![1]),
            (Level::Raid6, 6, 0, vec![0, 4]),
            (Level::Raid1, 3, 0, vec![2]),
            (Level::Raid10, 4, 2, vec![1, 2]),
            (Level::Raid50, 6, 3, vec![4]),
            (Level::Raid60, 8, 4, vec![1, 6]),
            (Level::Raid4, 4, 0, vec![3]),
            (Level::Raid3, 5, 0, vec![2]),
            (Level::Raid6Dp, 6, 0, vec![0, 5]),
            (Level::Raid6Dp, 7, 0, vec![1, 3]),
        ] {
            let (v, mut model) = volume_with_spares(level, n, g, fail.len());
            let bs = v.block_size() as u64;
            let mut ch = v.open_channel(&mut NoFiles, ChildRoute::top(0)).unwrap();
            let mut x = 99u64;
            for _ in 0..100 {
                random_write(&mut *ch, &mut model, &mut x, bs);
            }
            for &slot in &fail {
                v.health().fail(slot, "test");
            }
            wait_for("spares to take over", || {
                v.health().rebuilding() && v.health().spares().is_empty()
            });
            // Slow the rebuild so host I/O interleaves with it.
            v.health().rebuild.set_rate(64 << 10);
            let mut turns = 0;
            while v.health().rebuilding() {
                random_write(&mut *ch, &mut model, &mut x, bs);
                if turns % 16 == 0 {
                    check_reads(&mut *ch, &model, &format!("{level:?} during rebuild"));
                }
                let mut done = Vec::new();
                ch.poll(&mut NoRing, &mut done);
                turns += 1;
                if turns % 64 == 0 {
                    v.health().rebuild.set_rate(0);
                }
                assert!(turns < 100_000, "{level:?}: rebuild does not finish");
            }
            assert!(
                turns > 1,
                "{level:?}: the rebuild finished before any host I/O interleaved"
            );
            check_reads(&mut *ch, &model, &format!("{level:?} after rebuild"));
            check_redundancy(&v);
            for &slot in &fail {
                assert_eq!(v.health().state(slot), SlotState::Active, "{level:?}");
                assert!(v.health().slot_device(slot).bdev.name().starts_with('m'));
                assert_ne!(v.health().slot_device(slot).bdev.name(), format!("m{slot}"));
            }
            v.close();
        }
    }

    /// RAID-6 DP loses any two members: for every pair, reads after the failures and after
    /// degraded writes (read-modify-writes of a strip that lost a cell's partner included)
    /// match the model, with six members (p = 5, four data columns) and with eight (p = 17,
    /// padded with zero columns).
    #[test]
    fn raid6_dp_survives_every_pair_of_failures() {
        for n in [6usize, 8] {
            for a in 0..n {
                for b in a + 1..n {
                    let (v, mut model) = volume_with_spares(Level::Raid6Dp, n, 0, 0);
                    let bs = v.block_size() as u64;
                    let mut ch = v.open_channel(&mut NoFiles, ChildRoute::top(0)).unwrap();
                    let mut x = (a * 31 + b) as u64;
                    for _ in 0..40 {
                        random_write(&mut *ch, &mut model, &mut x, bs);
                    }
                    v.health().fail(a, "test");
                    check_reads(&mut *ch, &model, &format!("{n} members, {a} failed"));
                    v.health().fail(b, "test");
                    assert!(v.health().online(), "two failures are tolerated");
                    let what = format!("{n} members, {a} and {b} failed");
                    check_reads(&mut *ch, &model, &what);
                    for _ in 0..40 {
                        random_write(&mut *ch, &mut model, &mut x, bs);
                    }
                    check_reads(&mut *ch, &model, &format!("{what}, after writes"));
                    v.close();
                }
            }
        }
    }

    /// RAID 3: the volume's block is the data members' blocks together, and block b is
    /// spread over every data member at row b, parity on the last member; degraded reads
    /// and writes reconstruct around a failed data member.
    #[test]
    fn raid3_spreads_every_block_over_all_data_members() {
        let (v, members) = volume(Level::Raid3, 5, 0);
        assert_eq!((v.block_size(), v.member_block_size()), (2048, 512));
        assert_eq!(
            v.layout().strip_blocks,
            1,
            "the configured 16 KiB strip is ignored"
        );
        assert_eq!(v.num_blocks(), v.layout().capacity() / 4);
        let mut ch = v.open_channel(&mut NoFiles, ChildRoute::top(0)).unwrap();
        let mut model = vec![0u8; (v.num_blocks() * 2048) as usize];
        let mut data: Vec<u8> = (0..37 * 2048u32).map(|i| (i * 13 + 1) as u8).collect();
        assert_eq!(
            rw(&mut *ch, BdevOp::Write, 11 * 2048, &mut data),
            Submitted::Done(37 * 2048)
        );
        model[11 * 2048..48 * 2048].copy_from_slice(&data);
        for b in [11u64, 30, 47] {
            let block = &model[b as usize * 2048..(b as usize + 1) * 2048];
            let mut p = vec![0u8; 512];
            for (i, piece) in block.chunks(512).enumerate() {
                assert_eq!(
                    read_member(&members[i], v.data_offset + b, 1),
                    piece,
                    "block {b}, member {i}"
                );
                p.iter_mut().zip(piece).for_each(|(x, y)| *x ^= y);
            }
            assert_eq!(
                read_member(&members[4], v.data_offset + b, 1),
                p,
                "block {b}: parity on the last member"
            );
        }
        let mut x = 7u64;
        for _ in 0..60 {
            random_write(&mut *ch, &mut model, &mut x, 2048);
        }
        check_redundancy(&v);
        v.health().fail(1, "test");
        check_reads(&mut *ch, &model, "raid3 with a data member failed");
        for _ in 0..60 {
            random_write(&mut *ch, &mut model, &mut x, 2048);
        }
        check_reads(&mut *ch, &model, "raid3 after degraded writes");
        v.close();
    }

    /// A member fails during a scrub: the rows of its group that are left are counted as
    /// skipped (they cannot be checked), the scrub still ends, and it found nothing wrong.
    #[test]
    fn scrub_skips_rows_once_a_member_is_lost_and_still_ends() {
        let (v, _members) = volume(Level::Raid5, 4, 0);
        v.scrub().set_rate(0);
        let mut ch = v.open_channel(&mut NoFiles, ChildRoute::top(0)).unwrap();
        v.start_scrub(false).unwrap();
        assert!(v.start_scrub(false).is_err(), "one scrub at a time");
        let mut done = Vec::new();
        while v.scrub().report().rows_done < 20 {
            ch.poll(&mut NoRing, &mut done);
        }
        v.health().fail(2, "test");
        let t = std::time::Instant::now();
        while v.scrub().active() {
            assert!(
                t.elapsed().as_secs() < 10,
                "the scrub did not end: {:?}",
                v.scrub().report()
            );
            ch.poll(&mut NoRing, &mut done);
        }
        let r = v.scrub().report();
        assert_eq!(r.rows_done, r.rows);
        assert!(r.skipped > 0 && r.skipped < r.rows, "{r:?}");
        assert_eq!(r.mismatches, 0, "{r:?}");
        assert!(
            v.start_scrub(false).is_err(),
            "a degraded volume cannot be scrubbed"
        );
        v.close();
    }
}
