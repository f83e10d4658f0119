//! Keeping the members' superblocks current. A volume's metadata thread rewrites the
//! superblocks of every surviving member whenever a member fails, bumping the generation;
//! until that write is durable, write completions on the volume are held back (see
//! `RaidChannel`), so no host write is acknowledged that a restart could forget was
//! written around a failed member.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};
use tracing::{info, warn};

use super::bitmap::{WriteIntent, BITMAP_OFFSET};
use super::layout::Layout;
use super::members::{Device, Members, SlotState};
use super::raid::Resync;
use super::scrub::{self, Scrub};
use super::slow::SlowDetector;
use super::superblock::{Slot, Superblock, NO_REBUILD, SB_BYTES, SPARE_SLOT};
use crate::bdev::{Bdev, BdevOp};
use crate::util::aligned::AlignedRegion;

/// How often a running rebuild's checkpoint is written to the superblocks.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// Write-intent regions idle for a whole interval are cleared.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What every superblock of the volume shares.
#[derive(Debug)]
pub struct VolumeIdentity {
    pub uuid: [u8; 16],
    pub name: String,
    pub data_offset: u64,
    pub created: u64,
}

pub enum MetaMsg {
    /// Look at what is requested: member states to record (`Members::request_update`),
    /// write-intent bits to make durable (writers wait for them).
    Wake,
    /// Write the final superblocks (clean when nothing is left to resynchronise) and stop;
    /// the sender waits on the reply.
    Close { reply: Sender<()>, clean: bool },
}

pub struct Metadata {
    identity: VolumeIdentity,
    layout: Arc<Layout>,
    block_size: u32,
    members: Arc<Members>,
    generation: Mutex<u64>,
    /// Rebuild frontier last written to the superblocks.
    checkpointed: AtomicU64,
    intent: Option<Arc<WriteIntent>>,
    /// Whether regions may be cleared (not while a resync still needs them).
    may_sweep: Box<dyn Fn() -> bool + Send + Sync>,
    schedule: Option<ScrubSchedule>,
    started: std::time::Instant,
}

/// Scheduled scrubs: every `every` seconds (0: none), when the volume is ready for one.
struct ScrubSchedule {
    scrub: Arc<Scrub>,
    every: Arc<AtomicU64>,
    resync: Arc<Resync>,
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Read the superblock area of a device: Ok(None) when it holds none.
pub fn read_superblock(
    dev: &dyn Bdev,
) -> std::io::Result<Result<Option<Superblock>, super::superblock::SbError>> {
    let buf = AlignedRegion::new(SB_BYTES)?;
    // SAFETY: the fresh region is ours alone.
    let b = unsafe { buf.slice_mut(0, SB_BYTES) };
    dev.sync_io(BdevOp::Read, 0, b)?;
    Ok(Superblock::decode(b))
}

/// Write a 4 KiB-aligned metadata block to a device, durably.
pub fn write_block(dev: &dyn Bdev, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    let buf = AlignedRegion::new(bytes.len())?;
    // SAFETY: the fresh region is ours alone.
    let b = unsafe { buf.slice_mut(0, bytes.len()) };
    b.copy_from_slice(bytes);
    dev.sync_io(BdevOp::Write, offset, b)
}

impl Metadata {
    pub fn new(
        identity: VolumeIdentity,
        layout: Arc<Layout>,
        block_size: u32,
        members: Arc<Members>,
        generation: u64,
    ) -> Self {
        Metadata {
            identity,
            layout,
            block_size,
            members,
            generation: Mutex::new(generation),
            checkpointed: AtomicU64::new(NO_REBUILD),
            intent: None,
            may_sweep: Box::new(|| true),
            schedule: None,
            started: std::time::Instant::now(),
        }
    }

    /// Start scrubs on a schedule (see `RaidBdev::set_scrub_schedule`).
    pub fn with_scrub_schedule(
        mut self,
        scrub: Arc<Scrub>,
        every: Arc<AtomicU64>,
        resync: Arc<Resync>,
    ) -> Self {
        self.schedule = Some(ScrubSchedule {
            scrub,
            every,
            resync,
        });
        self
    }

    /// Start a scheduled scrub when one is due and the volume has every member.
    fn maybe_scrub(&self) {
        let Some(s) = &self.schedule else { return };
        let every = s.every.load(Ordering::Relaxed);
        let since = s.scrub.last_started().unwrap_or(self.started);
        if every == 0 || since.elapsed().as_secs() < every || s.scrub.active() {
            return;
        }
        if scrub::ready(&self.members, &s.resync).is_ok() && s.scrub.start(false).is_ok() {
            info!(
                volume = self.identity.name,
                every_secs = every,
                "scheduled scrub started"
            );
        }
    }

    /// Keep `intent` on the members; sweep it only while `may_sweep` says so.
    pub fn with_intent(
        mut self,
        intent: Arc<WriteIntent>,
        may_sweep: Box<dyn Fn() -> bool + Send + Sync>,
    ) -> Self {
        self.intent = Some(intent);
        self.may_sweep = may_sweep;
        self
    }

    /// Write the bitmap block to every member not failed; members that cannot take it
    /// fail. Bits requested before the write are durable after it.
    pub fn write_bitmap(&self) {
        let Some(intent) = &self.intent else { return };
        let (block, pending) = intent.encode(&self.identity.uuid);
        for slot in (0..self.members.slots()).filter(|&s| !self.members.is_failed(s)) {
            let dev = self.members.slot_device(slot);
            if let Err(e) = write_block(dev.bdev.as_ref(), BITMAP_OFFSET, &block[..]) {
                warn!(volume = self.identity.name, device = dev.bdev.name(), error = %e, "write-intent bitmap write failed");
                self.members.fail(slot, "bitmap write failed");
            }
        }
        intent.flushed(&pending);
    }

    /// Periodic work: checkpoint a running rebuild, clear idle write-intent regions.
    fn tick(&self, last_sweep: &mut std::time::Instant) {
        if self.members.rebuilding()
            && self.members.rebuild.frontier() != self.checkpointed.load(Ordering::Relaxed)
        {
            self.write_all(false);
        }
        if let Some(intent) = &self.intent {
            if last_sweep.elapsed() >= SWEEP_INTERVAL && (self.may_sweep)() {
                *last_sweep = std::time::Instant::now();
                if intent.sweep(&|| self.members.all_active()) {
                    self.write_bitmap();
                }
            }
        }
    }

    fn slot_table(&self) -> Vec<Slot> {
        (0..self.members.slots())
            .map(|s| {
                let dev = self.members.slot_device(s);
                let state = match self.members.state(s) {
                    SlotState::Failed if !dev.present => SlotState::Missing,
                    st => st,
                };
                Slot {
                    state,
                    device: dev.id,
                }
            })
            .collect()
    }

    fn superblock(
        &self,
        this_slot: u16,
        this_device: [u8; 16],
        slots: &[Slot],
        generation: u64,
        clean: bool,
        checkpoint: u64,
    ) -> Superblock {
        Superblock {
            volume_uuid: self.identity.uuid,
            volume_name: self.identity.name.clone(),
            level: self.layout.level,
            group_size: self.layout.group_size as u16,
            strip_blocks: self.layout.strip_blocks as u32,
            block_size: self.block_size,
            member_blocks: self.layout.member_blocks,
            data_offset: self.identity.data_offset,
            generation,
            clean,
            rebuild_checkpoint: checkpoint,
            created: self.identity.created,
            this_slot,
            this_device,
            slots: slots.to_vec(),
        }
    }

    /// Every device that takes superblocks: members not failed, then spares.
    fn targets(&self) -> Vec<(Option<usize>, Device)> {
        let members = (0..self.members.slots())
            .filter(|&s| !self.members.is_failed(s))
            .map(|s| (Some(s), self.members.slot_device(s)));
        members
            .chain(self.members.spares().into_iter().map(|d| (None, d)))
            .collect()
    }

    /// Write a new generation of superblocks to every surviving member and spare. A member
    /// that cannot take it is failed, and the survivors are written again.
    pub fn write_all(&self, clean: bool) {
        let mut generation = self.generation.lock().unwrap();
        loop {
            *generation += 1;
            let epoch = self.members.epoch();
            let checkpoint = if self.members.rebuilding() {
                self.members.rebuild.frontier()
            } else {
                NO_REBUILD
            };
            let slots = self.slot_table();
            let mut all_written = true;
            for (slot, dev) in self.targets() {
                // A member failed since the pass began is not written (the next pass records it).
                if slot.is_some_and(|s| self.members.is_failed(s)) {
                    all_written = false;
                    continue;
                }
                let sb = self.superblock(
                    slot.map_or(SPARE_SLOT, |s| s as u16),
                    dev.id,
                    &slots,
                    *generation,
                    clean,
                    checkpoint,
                );
                if let Err(e) = write_block(dev.bdev.as_ref(), 0, &sb.encode()[..]) {
                    // Like any failed member I/O: the member fails and the volume goes on.
                    warn!(volume = self.identity.name, device = dev.bdev.name(), error = %e, "superblock write failed");
                    if let Some(s) = slot {
                        self.members.fail(s, "superblock write failed");
                        all_written = false;
                    }
                }
            }
            if all_written && epoch == self.members.epoch() {
                self.members.set_recorded(epoch);
                self.checkpointed.store(checkpoint, Ordering::Relaxed);
                return;
            }
        }
    }

    fn update(&self) {
        self.members
            .take_spares(self.layout.level.tolerance(self.layout.group_size) > 0);
        self.write_all(false);
        info!(volume = self.identity.name, failed = ?self.members.failed_members(), rebuilding = self.members.rebuilding(), "member states recorded in the superblocks");
    }

    /// Serve update requests until the volume closes; checkpoint a running rebuild.
    pub fn run(self: Arc<Self>, rx: Receiver<MetaMsg>) {
        let mut last_sweep = std::time::Instant::now();
        let mut last_tick = std::time::Instant::now();
        let mut slow = SlowDetector::new(self.members.slots());
        loop {
            // Coalesce a burst of wake-ups into one write of each kind; a close runs last.
            let mut close = None;
            match rx.recv_timeout(CHECKPOINT_INTERVAL) {
                Ok(first) => {
                    for msg in
                        std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok()))
                    {
                        if let MetaMsg::Close { reply, clean } = msg {
                            close = Some((reply, clean));
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.serve_requests();
            if let Some((reply, clean)) = close {
                return self.close(reply, clean);
            }
            if last_tick.elapsed() >= CHECKPOINT_INTERVAL {
                self.tick(&mut last_sweep);
                slow.tick(&self.members.slow, &self.members);
                self.maybe_scrub();
                last_tick = std::time::Instant::now();
            }
        }
    }

    /// Write what was asked for: requested write-intent bits, then member states.
    fn serve_requests(&self) {
        if self.intent.as_ref().is_some_and(|i| i.needs_flush()) {
            self.write_bitmap();
        }
        if self.members.take_update_request() {
            self.update();
        }
    }

    fn close(&self, reply: Sender<()>, clean: bool) {
        self.write_all(clean);
        let _ = reply.send(());
    }
}

/// Failure epochs: bumped on each failure, recorded once the superblocks say so.
#[derive(Debug, Default)]
pub struct Epochs {
    pub changed: AtomicU64,
    pub recorded: AtomicU64,
}

impl Epochs {
    pub fn up_to_date(&self) -> bool {
        self.changed.load(Ordering::Acquire) == self.recorded.load(Ordering::Acquire)
    }
}
