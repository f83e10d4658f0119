//! A volume's members: which device fills each slot, each slot's state, the hot spares,
//! the failure epochs and the rebuild frontier. Shared by every reactor's channel (plain
//! atomic loads on the I/O path), the metadata thread and the management API.
//!
//! Slot states: `Active` holds valid data; `Failed` is never read or written again;
//! `Rebuilding` (a spare taking over a failed slot) is written like an active member but
//! read only below the rebuild frontier, the rows already rebuilt.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crossbeam::channel::Sender;
use tracing::{info, warn};

use super::metadata::{Epochs, MetaMsg};
use super::slow::{SlowPolicy, SlowWatch};
pub use super::superblock::SlotState;
use crate::bdev::Bdev;

/// A device the volume has used: a member, a spare, or a stand-in for an absent device.
#[derive(Debug, Clone)]
pub struct Device {
    pub bdev: Arc<dyn Bdev>,
    pub id: [u8; 16],
    /// False for the stand-in of a device that was absent at assembly.
    pub present: bool,
}

/// Rebuild onto spares: one frontier for every rebuilding slot of the volume.
#[derive(Debug)]
pub struct RebuildState {
    /// The frontier (member rows below it are rebuilt on every rebuilding slot), the epoch
    /// (bumped whenever a rebuild restarts, so work of an older one no longer counts) and
    /// the hold bit (a spare is being put in: no progress), in one word so that they
    /// change together: [held:1][epoch:23][frontier:40].
    progress: AtomicU64,
    /// Only one reactor's channel drives the rebuild: the first to claim this.
    pub(super) driver: AtomicBool,
    /// Rebuild rate limit in bytes per second of rebuilt member data; 0 = unlimited.
    rate: AtomicU64,
    /// Member rows (strip rows) per member.
    pub(super) rows: u64,
    started: Mutex<Option<(Instant, u64)>>,
    pub(super) rows_copied: AtomicU64,
    pub catch_up: CatchUp,
}

/// What a re-added member misses (md's re-add): while `partial`, a rebuilding slot holds
/// valid data except in the write-intent regions marked here, the ones written while it
/// was out. Cleared when a spare starts a full rebuild or the rebuild ends.
#[derive(Debug)]
pub struct CatchUp {
    partial: AtomicBool,
    region_rows: AtomicU64,
    dirty: Box<[AtomicBool]>,
}

impl CatchUp {
    fn new() -> Self {
        CatchUp {
            partial: AtomicBool::new(false),
            region_rows: AtomicU64::new(1),
            dirty: (0..super::bitmap::MAX_REGIONS)
                .map(|_| AtomicBool::new(false))
                .collect(),
        }
    }

    /// Whether member row `row` of a rebuilding slot is already current.
    pub fn row_current(&self, row: u64) -> bool {
        if !self.partial.load(Ordering::Acquire) {
            return false;
        }
        let r = row / self.region_rows.load(Ordering::Relaxed);
        self.dirty
            .get(r as usize)
            .is_some_and(|d| !d.load(Ordering::Relaxed))
    }

    /// The first row at or after `row` that needs copying (`rows` if none).
    pub fn next_to_copy(&self, row: u64, rows: u64) -> u64 {
        if !self.partial.load(Ordering::Acquire) {
            return row;
        }
        let rr = self.region_rows.load(Ordering::Relaxed);
        let mut r = row / rr;
        while r * rr < rows && self.row_current(r * rr) {
            r += 1;
        }
        (r * rr).max(row).min(rows)
    }

    fn set(&self, region_rows: u64, dirty: &[bool]) {
        self.region_rows
            .store(region_rows.max(1), Ordering::Relaxed);
        // Regions past the bitmap's hold no rows.
        for (i, d) in self.dirty.iter().enumerate() {
            d.store(dirty.get(i).copied().unwrap_or(false), Ordering::Relaxed);
        }
        self.partial.store(true, Ordering::Release);
    }

    fn clear(&self) {
        self.partial.store(false, Ordering::Release);
    }

    fn regions(&self) -> Option<u64> {
        let count = || {
            self.dirty
                .iter()
                .filter(|d| d.load(Ordering::Relaxed))
                .count() as u64
        };
        self.partial.load(Ordering::Acquire).then(count)
    }
}

const FRONTIER_BITS: u32 = 40;
const FRONTIER_MASK: u64 = (1 << FRONTIER_BITS) - 1;
const EPOCH_MASK: u64 = (1 << 23) - 1;
const HELD: u64 = 1 << 63;

fn pack(epoch: u64, frontier: u64, held: bool) -> u64 {
    debug_assert!(frontier <= FRONTIER_MASK);
    ((epoch & EPOCH_MASK) << FRONTIER_BITS) | frontier | if held { HELD } else { 0 }
}

fn epoch_of(v: u64) -> u64 {
    (v >> FRONTIER_BITS) & EPOCH_MASK
}

/// What `volume status` shows of a rebuild.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RebuildProgress {
    pub active: bool,
    /// A re-added member's catch-up: only the regions written while it was out are
    /// copied (their count), the rest of it is current.
    pub catch_up_regions: Option<u64>,
    /// Row ops the rebuilds so far issued (one per group and member row).
    pub rows_copied: u64,
    pub rows_done: u64,
    pub rows: u64,
    pub percent: f64,
    pub bytes_per_sec: f64,
    pub eta_secs: Option<f64>,
    pub rate_limit: u64,
}

impl RebuildState {
    fn new(rows: u64, rate: u64) -> Self {
        RebuildState {
            progress: AtomicU64::new(0),
            driver: AtomicBool::new(false),
            rate: AtomicU64::new(rate),
            rows,
            started: Mutex::new(None),
            rows_copied: AtomicU64::new(0),
            catch_up: CatchUp::new(),
        }
    }

    pub fn frontier(&self) -> u64 {
        self.progress.load(Ordering::Acquire) & FRONTIER_MASK
    }

    /// The running rebuild's epoch; None while a spare is being put in (no row ops may
    /// start then).
    pub fn active_epoch(&self) -> Option<u64> {
        let v = self.progress.load(Ordering::Acquire);
        (v & HELD == 0).then(|| epoch_of(v))
    }

    /// Move the frontier up to `frontier` for the rebuild of `epoch`, unless that rebuild
    /// was restarted or held meanwhile.
    pub(super) fn advance(&self, epoch: u64, frontier: u64) {
        let _ = self
            .progress
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v & HELD == 0 && epoch_of(v) == epoch && frontier > v & FRONTIER_MASK)
                    .then(|| pack(epoch, frontier, false))
            });
    }

    /// Stop all progress and treat every row as not rebuilt, before a slot turns
    /// rebuilding: ops already in flight belong to an older epoch and no longer count.
    fn hold(&self) {
        let _ = self
            .progress
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(pack(epoch_of(v) + 1, 0, true))
            });
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Start (or restart) from row `from`.
    fn restart(&self, from: u64) {
        *self.started.lock().unwrap() = Some((Instant::now(), from));
        let _ = self
            .progress
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(pack(epoch_of(v) + 1, from, false))
            });
    }

    /// Progress, given whether any slot is rebuilding and the bytes one row rebuilds.
    fn progress(&self, active: bool, row_bytes: u64) -> RebuildProgress {
        let done = if active { self.frontier() } else { self.rows };
        let (mut bytes_per_sec, mut eta_secs) = (0.0, None);
        if let (true, Some((at, from))) = (active, *self.started.lock().unwrap()) {
            let secs = at.elapsed().as_secs_f64().max(1e-3);
            bytes_per_sec = done.saturating_sub(from) as f64 * row_bytes as f64 / secs;
            if bytes_per_sec > 0.0 {
                eta_secs = Some((self.rows - done) as f64 * row_bytes as f64 / bytes_per_sec);
            }
        }
        RebuildProgress {
            active,
            catch_up_regions: if active {
                self.catch_up.regions()
            } else {
                None
            },
            rows_copied: self.rows_copied.load(Ordering::Relaxed),
            rows_done: done,
            rows: self.rows,
            percent: if self.rows == 0 {
                100.0
            } else {
                done as f64 * 100.0 / self.rows as f64
            },
            bytes_per_sec,
            eta_secs,
            rate_limit: self.rate(),
        }
    }
}

/// Every device the volume has used (the table only grows) and the spares among them.
#[derive(Debug, Default)]
struct Registry {
    devices: Vec<Device>,
    spares: Vec<usize>,
}

#[derive(Debug)]
pub struct Members {
    volume: String,
    registry: Mutex<Registry>,
    device_count: AtomicUsize,
    slot_device: Box<[AtomicUsize]>,
    slot_state: Box<[AtomicU8]>,
    /// How many slots are not active: zero in the common case, which lets the per-I/O
    /// health checks skip their walk over the slots.
    not_active: AtomicUsize,
    group_size: usize,
    tolerance: usize,
    epochs: Epochs,
    notify: OnceLock<Sender<MetaMsg>>,
    /// Member states changed and are not yet recorded.
    update_requested: AtomicBool,
    pub rebuild: RebuildState,
    /// Bytes of one member strip row.
    row_bytes: u64,
    /// Members far slower than their peers.
    pub slow: SlowWatch,
}

const ACTIVE: u8 = SlotState::Active as u8;
const FAILED: u8 = SlotState::Failed as u8;
const REBUILDING: u8 = SlotState::Rebuilding as u8;

fn state_of(v: u8) -> SlotState {
    match v {
        ACTIVE => SlotState::Active,
        REBUILDING => SlotState::Rebuilding,
        _ => SlotState::Failed,
    }
}

/// How a volume's members are set up at assembly.
pub struct MembersInit {
    pub volume: String,
    /// One device per slot, in slot order.
    pub slots: Vec<(Device, SlotState)>,
    pub spares: Vec<Device>,
    pub group_size: usize,
    pub tolerance: usize,
    pub rows: u64,
    pub row_bytes: u64,
    pub rebuild_rate: u64,
    /// Frontier of a rebuild interrupted by a restart.
    pub rebuild_from: u64,
    pub slow_policy: SlowPolicy,
}

impl Members {
    pub fn new(init: MembersInit) -> Self {
        let mut devices: Vec<Device> = init.slots.iter().map(|(d, _)| d.clone()).collect();
        let spares = (devices.len()..devices.len() + init.spares.len()).collect();
        devices.extend(init.spares);
        let m = Members {
            volume: init.volume,
            device_count: AtomicUsize::new(devices.len()),
            slot_device: (0..init.slots.len()).map(AtomicUsize::new).collect(),
            slot_state: init
                .slots
                .iter()
                .map(|(_, s)| {
                    AtomicU8::new(if *s == SlotState::Missing {
                        FAILED
                    } else {
                        *s as u8
                    })
                })
                .collect(),
            not_active: AtomicUsize::new(
                init.slots
                    .iter()
                    .filter(|(_, s)| *s != SlotState::Active)
                    .count(),
            ),
            registry: Mutex::new(Registry { devices, spares }),
            group_size: init.group_size,
            tolerance: init.tolerance,
            epochs: Epochs::default(),
            notify: OnceLock::new(),
            update_requested: AtomicBool::new(false),
            rebuild: RebuildState::new(init.rows, init.rebuild_rate),
            row_bytes: init.row_bytes,
            slow: SlowWatch::new(init.slots.len(), init.slow_policy),
        };
        if m.rebuilding() {
            m.rebuild.restart(init.rebuild_from);
        }
        m
    }

    pub fn volume_name(&self) -> &str {
        &self.volume
    }

    pub(super) fn set_notifier(&self, tx: Sender<MetaMsg>) {
        let _ = self.notify.set(tx);
    }

    /// Wake the metadata thread. Reactors call this, so it never blocks: a full queue
    /// means wake-ups are already pending, and the thread looks at what is requested
    /// after taking them (and once a second in any case).
    fn wake(&self) {
        if let Some(tx) = self.notify.get() {
            let _ = tx.try_send(MetaMsg::Wake);
        }
    }

    /// Ask the metadata thread to record the member states in the superblocks.
    pub(super) fn request_update(&self) {
        self.update_requested.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Whether a state record was asked for since the last call.
    pub(super) fn take_update_request(&self) -> bool {
        self.update_requested.swap(false, Ordering::SeqCst)
    }

    /// Ask the metadata thread to make requested write-intent bits durable.
    pub(super) fn request_bitmap_flush(&self) {
        self.wake();
    }

    pub fn slots(&self) -> usize {
        self.slot_state.len()
    }

    pub fn state(&self, slot: usize) -> SlotState {
        state_of(self.slot_state[slot].load(Ordering::Acquire))
    }

    /// active, rebuilding, failed, or missing (failed for want of its device).
    pub fn state_name(&self, slot: usize) -> &'static str {
        match self.state(slot) {
            SlotState::Active => "active",
            SlotState::Rebuilding => "rebuilding",
            _ if !self.slot_device(slot).present => "missing",
            _ => "failed",
        }
    }

    /// Never read or written again.
    pub fn is_failed(&self, slot: usize) -> bool {
        self.slot_state[slot].load(Ordering::Relaxed) == FAILED
    }

    /// The slot holds no valid data at member strip row `row`: failed, or rebuilding and
    /// not yet rebuilt there.
    pub fn is_missing(&self, slot: usize, row: u64) -> bool {
        match self.slot_state[slot].load(Ordering::Acquire) {
            ACTIVE => false,
            REBUILDING => row >= self.rebuild.frontier() && !self.rebuild.catch_up.row_current(row),
            _ => true,
        }
    }

    /// Device index currently filling `slot`.
    pub fn device_of(&self, slot: usize) -> usize {
        self.slot_device[slot].load(Ordering::Acquire)
    }

    /// Devices known to the volume (the table only grows).
    pub fn device_count(&self) -> usize {
        self.device_count.load(Ordering::Acquire)
    }

    pub fn device(&self, index: usize) -> Device {
        self.registry.lock().unwrap().devices[index].clone()
    }

    pub fn slot_device(&self, slot: usize) -> Device {
        self.device(self.device_of(slot))
    }

    pub fn spares(&self) -> Vec<Device> {
        let r = self.registry.lock().unwrap();
        r.spares.iter().map(|&d| r.devices[d].clone()).collect()
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

    /// Fail `slot` if device `device` still fills it (a late error from a device that was
    /// already replaced fails nothing).
    pub fn fail_device(&self, slot: usize, device: usize, why: &str) {
        if self.device_of(slot) == device {
            self.fail(slot, why);
        }
    }

    /// Mark a slot failed (once; later calls do nothing).
    pub fn fail(&self, slot: usize, why: &str) {
        let name = self.slot_device(slot).bdev.name().to_string();
        self.fail_named(slot, &name, why);
    }

    fn fail_named(&self, slot: usize, name: &str, why: &str) {
        let old = self.slot_state[slot].swap(FAILED, Ordering::AcqRel);
        if old == ACTIVE {
            self.not_active.fetch_add(1, Ordering::AcqRel);
        }
        if old != FAILED {
            self.epochs.changed.fetch_add(1, Ordering::AcqRel);
            warn!(
                volume = self.volume,
                member = name,
                why,
                online = self.online(),
                "member failed"
            );
            self.request_update();
        }
    }

    /// Slots of a group that lack valid data somewhere (failed or rebuilding).
    pub fn degraded_in_group(&self, group: usize) -> usize {
        let g = group * self.group_size;
        (g..g + self.group_size)
            .filter(|&s| self.state(s) != SlotState::Active)
            .count()
    }

    /// The volume can serve every block: no group lacks more than it tolerates.
    pub fn online(&self) -> bool {
        self.all_active()
            || (0..self.slots() / self.group_size)
                .all(|g| self.degraded_in_group(g) <= self.tolerance)
    }

    /// Whether `slot` can fail without taking the volume offline.
    pub fn can_lose(&self, slot: usize) -> bool {
        self.is_failed(slot) || self.degraded_in_group(slot / self.group_size) < self.tolerance
    }

    /// Every slot holds valid data everywhere.
    pub fn all_active(&self) -> bool {
        self.not_active.load(Ordering::Acquire) == 0
    }

    pub fn rebuilding(&self) -> bool {
        !self.all_active() && (0..self.slots()).any(|s| self.state(s) == SlotState::Rebuilding)
    }

    pub fn failed_members(&self) -> Vec<String> {
        (0..self.slots())
            .filter(|&s| self.is_failed(s))
            .map(|s| self.slot_device(s).bdev.name().to_string())
            .collect()
    }

    pub fn rebuild_progress(&self) -> RebuildProgress {
        self.rebuild.progress(self.rebuilding(), self.row_bytes)
    }

    /// Slot filled by the device named `name`.
    pub fn slot_named(&self, name: &str) -> Option<usize> {
        (0..self.slots()).find(|&s| self.slot_device(s).bdev.name() == name)
    }

    /// Put a spare into every failed slot there is a spare for (the metadata thread calls
    /// this). Returns whether a rebuild (re)started.
    pub(super) fn take_spares(&self, redundant: bool) -> bool {
        if !redundant || !self.online() {
            return false;
        }
        let mut r = self.registry.lock().unwrap();
        let mut started = false;
        for slot in (0..self.slots()).filter(|&s| self.is_failed(s)) {
            if r.spares.is_empty() {
                break;
            }
            if !started {
                self.rebuild.hold();
                // A spare is rebuilt in full, and so is a re-added member along with it.
                self.rebuild.catch_up.clear();
            }
            let spare = r.spares.remove(0);
            self.install(&r, slot, spare);
            started = true;
        }
        if started {
            self.rebuild.restart(0);
        }
        started
    }

    /// Put device `device` into failed `slot` as a rebuilding member.
    fn install(&self, r: &Registry, slot: usize, device: usize) {
        let old = r.devices[self.device_of(slot)].bdev.name().to_string();
        self.slot_device[slot].store(device, Ordering::Release);
        if self.slot_state[slot].swap(REBUILDING, Ordering::AcqRel) == ACTIVE {
            self.not_active.fetch_add(1, Ordering::AcqRel);
        }
        info!(
            volume = self.volume,
            slot,
            replaces = old,
            spare = r.devices[device].bdev.name(),
            "spare takes over: rebuild starts"
        );
    }

    /// Add a device as a hot spare.
    pub fn add_spare(&self, dev: Device) {
        let mut r = self.registry.lock().unwrap();
        r.devices.push(dev);
        let index = r.devices.len() - 1;
        r.spares.push(index);
        self.device_count.store(r.devices.len(), Ordering::Release);
        drop(r);
        self.request_update();
    }

    /// Remove the spare named `name` from the spare list.
    pub fn remove_spare(&self, name: &str) -> Option<Device> {
        let mut r = self.registry.lock().unwrap();
        let at = r
            .spares
            .iter()
            .position(|&d| r.devices[d].bdev.name() == name)?;
        let d = r.spares.remove(at);
        let dev = r.devices[d].clone();
        drop(r);
        self.request_update();
        Some(dev)
    }

    /// Replace the member in `slot` by the spare named `spare`: the member is failed (if
    /// it was not) and the spare rebuilds in its place.
    pub fn replace(&self, slot: usize, spare: &str) -> Result<(), String> {
        let mut r = self.registry.lock().unwrap();
        let at = r
            .spares
            .iter()
            .position(|&d| r.devices[d].bdev.name() == spare)
            .ok_or_else(|| format!("'{spare}' is not a spare of this volume"))?;
        let device = r.spares.remove(at);
        let name = r.devices[self.device_of(slot)].bdev.name().to_string();
        self.fail_named(slot, &name, "replaced by the operator");
        self.rebuild.hold();
        self.rebuild.catch_up.clear();
        self.install(&r, slot, device);
        self.rebuild.restart(0);
        drop(r);
        self.request_update();
        Ok(())
    }

    /// Rebuild of `epoch` finished: every rebuilding slot becomes active.
    pub(super) fn finish_rebuild(&self, epoch: u64) {
        // Under the registry lock, which spares are installed under: a spare that turns
        // rebuilding after this check belongs to a newer epoch and is not made active.
        let r = self.registry.lock().unwrap();
        if self.rebuild.active_epoch() != Some(epoch) {
            return;
        }
        for slot in 0..self.slots() {
            if self.slot_state[slot]
                .compare_exchange(REBUILDING, ACTIVE, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.not_active.fetch_sub(1, Ordering::AcqRel);
                info!(
                    volume = self.volume,
                    slot,
                    member = r.devices[self.device_of(slot)].bdev.name(),
                    "rebuild finished: member active"
                );
            }
        }
        self.rebuild.catch_up.clear();
        drop(r);
        self.request_update();
    }

    /// Put the failed member of `slot` back (md's re-add): its device returns as a
    /// rebuilding member. `missed` is asked once the slot is written again and returns
    /// the write-intent regions it may have missed (region rows, one flag per region);
    /// None rebuilds it in full. Refused while a rebuild runs.
    pub fn readd(
        &self,
        slot: usize,
        missed: impl FnOnce() -> Option<(u64, Vec<bool>)>,
    ) -> Result<(), String> {
        let r = self.registry.lock().unwrap();
        if !self.is_failed(slot) || !r.devices[self.device_of(slot)].present {
            return Err("only a failed member whose device is present can be re-added".into());
        }
        if self.rebuilding() {
            return Err("a rebuild is running: re-add the member once it has finished".into());
        }
        // Rebuild from row 0 with every row missing, until the regions it missed are known:
        // writes planned from now on reach the member, so no later write can be missed.
        self.rebuild.hold();
        self.rebuild.catch_up.clear();
        self.slot_state[slot].store(REBUILDING, Ordering::SeqCst);
        match missed() {
            Some((region_rows, dirty)) => self.rebuild.catch_up.set(region_rows, &dirty),
            None => self.rebuild.catch_up.clear(),
        }
        info!(volume = self.volume, slot, member = r.devices[self.device_of(slot)].bdev.name(), regions = ?self.rebuild.catch_up.regions(), "member re-added: catching up");
        self.rebuild.restart(0);
        drop(r);
        self.request_update();
        Ok(())
    }

    /// Detach the failed member in `slot`: a stand-in takes its place, so the device can
    /// be reused.
    pub fn remove_failed(&self, slot: usize, stand_in: Arc<dyn Bdev>) -> Result<Device, String> {
        if !self.is_failed(slot) {
            return Err("only a failed member can be removed: fail it first".into());
        }
        let mut r = self.registry.lock().unwrap();
        let old = r.devices[self.device_of(slot)].clone();
        if !old.present {
            return Err(format!("slot {slot} has no device"));
        }
        r.devices.push(Device {
            bdev: stand_in,
            id: old.id,
            present: false,
        });
        self.slot_device[slot].store(r.devices.len() - 1, Ordering::Release);
        self.device_count.store(r.devices.len(), Ordering::Release);
        drop(r);
        self.request_update();
        Ok(old)
    }

    /// Any device, member or spare, named `name`.
    pub fn uses_device(&self, name: &str) -> bool {
        self.slot_named(name).is_some() || self.spares().iter().any(|d| d.bdev.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catch_up_copies_only_the_marked_regions() {
        let c = CatchUp::new();
        assert!(
            !c.row_current(5),
            "no catch-up: every row of a rebuilding slot is missing"
        );
        assert_eq!(c.next_to_copy(5, 100), 5);
        // Regions of 10 rows: 1 and 3 were written while the member was out.
        c.set(10, &[false, true, false, true, false]);
        assert_eq!(c.regions(), Some(2));
        assert!(c.row_current(0) && !c.row_current(10) && !c.row_current(19) && c.row_current(20));
        assert_eq!(c.next_to_copy(0, 50), 10);
        assert_eq!(c.next_to_copy(13, 50), 13, "inside a region to copy");
        assert_eq!(c.next_to_copy(20, 50), 30);
        assert_eq!(c.next_to_copy(40, 50), 50, "nothing left");
        c.clear();
        assert!(!c.row_current(0) && c.regions().is_none());
    }

    /// Reactors ask for metadata writes faster than one thread writes them: the asks must
    /// never block a reactor, and none may be lost while wake-ups are dropped.
    #[test]
    fn metadata_requests_never_block_and_coalesce() {
        let dev = |n: &str| Device {
            bdev: Arc::new(crate::bdev::NullBdev::new(n, 512, 1 << 20)),
            id: [0; 16],
            present: true,
        };
        let m = Members::new(MembersInit {
            volume: "v".into(),
            slots: vec![(dev("a"), SlotState::Active), (dev("b"), SlotState::Active)],
            spares: vec![],
            group_size: 2,
            tolerance: 1,
            rows: 16,
            row_bytes: 4096,
            rebuild_rate: 0,
            rebuild_from: 0,
            slow_policy: Default::default(),
        });
        let (tx, rx) = crossbeam::channel::bounded(1);
        m.set_notifier(tx);
        for _ in 0..1000 {
            m.request_update();
            m.request_bitmap_flush();
        }
        assert_eq!(
            rx.try_iter().count(),
            1,
            "one queued wake-up stands for all the others"
        );
        assert!(
            m.take_update_request(),
            "the asked-for state record is still owed"
        );
        assert!(!m.take_update_request(), "and owed once");
    }

    /// The driver's progress never survives a restart or a hold: the race that let an
    /// older rebuild's frontier count for a spare put in after it.
    #[test]
    fn rebuild_progress_of_an_older_epoch_is_dropped() {
        let r = RebuildState::new(1000, 0);
        r.restart(0);
        let first = r.active_epoch().unwrap();
        r.advance(first, 500);
        assert_eq!(r.frontier(), 500);
        r.advance(first, 400);
        assert_eq!(r.frontier(), 500, "the frontier only moves up");
        r.hold();
        assert_eq!(r.active_epoch(), None);
        assert_eq!(r.frontier(), 0, "a hold treats every row as not rebuilt");
        r.advance(first, 800);
        r.advance(first + 1, 800);
        assert_eq!(r.frontier(), 0, "no progress while held, from any epoch");
        r.restart(0);
        let second = r.active_epoch().expect("a restart ends the hold");
        assert_ne!(second, first);
        r.advance(first, 900);
        assert_eq!(r.frontier(), 0, "an older epoch's progress does not count");
        r.advance(second, 10);
        assert_eq!(r.frontier(), 10);
    }
}
