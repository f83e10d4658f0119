//! Slow members: a member that answers, but far more slowly than its peers (a dying disk
//! retrying its reads, a congested path). Left alone it sets the volume's latency, so the
//! volume notices it from the members' own latencies, reports it, serves reads around it
//! while redundancy allows, and fails it once it has stayed slow for the configured time
//! (what hardware RAID controllers and md's failfast do).
//!
//! Each reactor's channel counts, per slot, the member I/Os it completed, their summed
//! latency and the I/Os still in flight, in cells only that channel writes. Once a second
//! the metadata thread sums the cells and compares each slot's mean latency over the last
//! interval with the median of its peers: a slot is slow when it exceeds both `factor`
//! times that median and an absolute floor. A slot with I/O in flight and none completed
//! over a whole interval is slow too (a hung member). Verdicts need two intervals in a
//! row to set and three to clear, so one burst does not flap the state.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::members::{Members, SlotState};

/// When a member counts as slow and what happens to it.
#[derive(Debug, Clone, Copy)]
pub struct SlowPolicy {
    /// Slow when its mean latency exceeds this multiple of its peers' median...
    pub factor: f64,
    /// ...and this many microseconds.
    pub floor_us: u64,
    /// Fail it once slow for this long (if the volume can lose it); None: never.
    pub fail_after: Option<Duration>,
}

impl Default for SlowPolicy {
    fn default() -> Self {
        SlowPolicy {
            factor: 8.0,
            floor_us: 5_000,
            fail_after: Some(Duration::from_secs(30)),
        }
    }
}

/// Intervals in a row that set, and that clear, the slow state.
const SET_AFTER: u32 = 2;
const CLEAR_AFTER: u32 = 3;
/// One read in this many still goes to a slow member, so its latency stays measured and
/// its recovery is noticed.
pub const PROBE_EVERY: u32 = 32;

#[derive(Debug, Default)]
struct Cell {
    ios: AtomicU64,
    sum_us: AtomicU64,
    inflight: AtomicU64,
    /// Host reads served around the slot while it was slow, and sent to it anyway.
    around: AtomicU64,
    direct: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.store(c.load(Relaxed) + 1, Relaxed);
}

/// One channel's counters per slot. Only that channel writes them (plain load and store,
/// no read-modify-write on the I/O path); the metadata thread reads them.
#[derive(Debug)]
pub struct LatencyCells(Box<[Cell]>);

impl LatencyCells {
    #[inline]
    pub fn begin(&self, slot: usize) {
        let c = &self.0[slot];
        c.inflight.store(c.inflight.load(Relaxed) + 1, Relaxed);
    }

    /// A host read kept off slow `slot`.
    pub fn read_around(&self, slot: usize) {
        bump(&self.0[slot].around);
    }

    /// A host read that went to slow `slot` (a probe, or no redundancy to spare).
    pub fn read_direct(&self, slot: usize) {
        bump(&self.0[slot].direct);
    }

    #[inline]
    pub fn end(&self, slot: usize, micros: u64) {
        let c = &self.0[slot];
        c.inflight
            .store(c.inflight.load(Relaxed).saturating_sub(1), Relaxed);
        c.sum_us.store(c.sum_us.load(Relaxed) + micros, Relaxed);
        c.ios.store(c.ios.load(Relaxed) + 1, Relaxed);
    }
}

/// What status and metrics show of a slot.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SlotReport {
    pub slow: bool,
    /// Seconds it has been slow.
    pub slow_for_secs: f64,
    /// Mean member I/O latency over the last measured interval, microseconds.
    pub latency_us: u64,
    /// Host reads served around the member while it was slow, and sent to it anyway
    /// (probes), since the target started.
    pub reads_around: u64,
    pub reads_direct: u64,
}

/// The volume's slow-member state, shared by its channels (reads look at `is_slow`),
/// the metadata thread (which decides) and the management API.
#[derive(Debug)]
pub struct SlowWatch {
    pub policy: SlowPolicy,
    channels: Mutex<Vec<Arc<LatencyCells>>>,
    slow: Box<[AtomicBool]>,
    latency_us: Box<[AtomicU64]>,
    since: Mutex<Vec<Option<Instant>>>,
    slow_count: AtomicU64,
}

impl SlowWatch {
    pub fn new(slots: usize, policy: SlowPolicy) -> SlowWatch {
        SlowWatch {
            policy,
            channels: Mutex::new(Vec::new()),
            slow: (0..slots).map(|_| AtomicBool::new(false)).collect(),
            latency_us: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            since: Mutex::new(vec![None; slots]),
            slow_count: AtomicU64::new(0),
        }
    }

    /// Cells for a new channel (when it opens, off the I/O path).
    pub fn register(&self) -> Arc<LatencyCells> {
        let cells = Arc::new(LatencyCells(
            (0..self.slow.len()).map(|_| Cell::default()).collect(),
        ));
        self.channels.lock().unwrap().push(cells.clone());
        cells
    }

    #[inline]
    pub fn is_slow(&self, slot: usize) -> bool {
        self.slow[slot].load(Relaxed)
    }

    /// Whether any slot is slow (one load on the read path in the common case).
    #[inline]
    pub fn any(&self) -> bool {
        self.slow_count.load(Relaxed) > 0
    }

    pub fn report(&self, slot: usize) -> SlotReport {
        let since = self.since.lock().unwrap()[slot];
        let sum = |f: fn(&Cell) -> &AtomicU64| {
            self.channels
                .lock()
                .unwrap()
                .iter()
                .map(|ch| f(&ch.0[slot]).load(Relaxed))
                .sum()
        };
        SlotReport {
            slow: self.is_slow(slot),
            slow_for_secs: since.map_or(0.0, |t| t.elapsed().as_secs_f64()),
            latency_us: self.latency_us[slot].load(Relaxed),
            reads_around: sum(|c| &c.around),
            reads_direct: sum(|c| &c.direct),
        }
    }

    /// (I/Os completed, summed latency, in flight) per slot, over every channel.
    fn totals(&self) -> Vec<(u64, u64, u64)> {
        let mut t = vec![(0, 0, 0); self.slow.len()];
        for ch in self.channels.lock().unwrap().iter() {
            for (slot, c) in ch.0.iter().enumerate() {
                t[slot].0 += c.ios.load(Relaxed);
                t[slot].1 += c.sum_us.load(Relaxed);
                t[slot].2 += c.inflight.load(Relaxed);
            }
        }
        t
    }

    fn set(&self, slot: usize, slow: bool) {
        if self.slow[slot].swap(slow, Relaxed) != slow {
            if slow {
                self.slow_count.fetch_add(1, Relaxed);
            } else {
                self.slow_count.fetch_sub(1, Relaxed);
            }
        }
        self.since.lock().unwrap()[slot] = slow.then(Instant::now);
    }
}

/// A slot's mean latency over one interval, if it can be judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    /// No I/O reached it, or it is not an active member.
    Idle,
    Mean(u64),
    /// I/O in flight and none completed over the whole interval.
    Stuck,
}

/// The median mean latency of the other slots that completed I/O in the interval.
fn peers_median(samples: &[Sample], slot: usize) -> Option<u64> {
    let mut peers: Vec<u64> = samples
        .iter()
        .enumerate()
        .filter(|&(s, _)| s != slot)
        .filter_map(|(_, x)| {
            if let Sample::Mean(m) = x {
                Some(*m)
            } else {
                None
            }
        })
        .collect();
    peers.sort_unstable();
    peers.get(peers.len() / 2).copied()
}

/// Per slot: Some(slow?) where a verdict is possible. Pure, for tests.
pub fn judge(samples: &[Sample], policy: &SlowPolicy) -> Vec<Option<bool>> {
    (0..samples.len())
        .map(|slot| {
            let median = peers_median(samples, slot)? as f64;
            let threshold = (median * policy.factor).max(policy.floor_us as f64);
            match samples[slot] {
                Sample::Idle => None,
                Sample::Stuck => Some(true),
                Sample::Mean(m) => Some(m as f64 > threshold),
            }
        })
        .collect()
}

/// The metadata thread's side: turns the counters into verdicts once per interval.
#[derive(Debug)]
pub struct SlowDetector {
    last: Vec<(u64, u64)>,
    last_at: Instant,
    /// Consecutive slow / fine verdicts.
    streak: Vec<(u32, u32)>,
    /// The device each slot had at the last interval: a new one starts afresh.
    device: Vec<usize>,
}

impl SlowDetector {
    pub fn new(slots: usize) -> SlowDetector {
        SlowDetector {
            last: vec![(0, 0); slots],
            last_at: Instant::now(),
            streak: vec![(0, 0); slots],
            device: vec![usize::MAX; slots],
        }
    }

    /// One interval: sample, judge, update the shared state, log, and fail a member that
    /// stayed slow too long.
    pub fn tick(&mut self, watch: &SlowWatch, members: &Members) {
        let totals = watch.totals();
        let elapsed_us = self.last_at.elapsed().as_micros() as u64;
        self.last_at = Instant::now();
        let mut samples = Vec::with_capacity(totals.len());
        for (slot, &(ios, sum, inflight)) in totals.iter().enumerate() {
            let (ios0, sum0) = std::mem::replace(&mut self.last[slot], (ios, sum));
            let device = members.device_of(slot);
            if std::mem::replace(&mut self.device[slot], device) != device {
                self.streak[slot] = (0, 0);
                if watch.is_slow(slot) {
                    watch.set(slot, false);
                }
            }
            let sample = match (members.state(slot), ios - ios0) {
                (SlotState::Failed | SlotState::Missing, _) => Sample::Idle,
                (_, 0) if inflight > 0 => Sample::Stuck,
                (_, 0) => Sample::Idle,
                (_, n) => Sample::Mean((sum - sum0) / n),
            };
            if let Sample::Mean(m) = sample {
                watch.latency_us[slot].store(m, Relaxed);
            } else if sample == Sample::Stuck {
                watch.latency_us[slot].store(elapsed_us, Relaxed);
            }
            samples.push(sample);
        }
        let verdicts = judge(&samples, &watch.policy);
        for (slot, v) in verdicts.into_iter().enumerate() {
            self.apply(
                slot,
                v,
                watch,
                members,
                peers_median(&samples, slot).unwrap_or(0),
            );
        }
    }

    fn apply(
        &mut self,
        slot: usize,
        verdict: Option<bool>,
        watch: &SlowWatch,
        members: &Members,
        peers_us: u64,
    ) {
        let name = members.slot_device(slot).bdev.name().to_string();
        let latency_us = watch.latency_us[slot].load(Relaxed);
        let streak = &mut self.streak[slot];
        match verdict {
            Some(true) => *streak = (streak.0 + 1, 0),
            Some(false) => *streak = (0, streak.1 + 1),
            None => {}
        }
        let was = watch.is_slow(slot);
        if was && members.is_failed(slot) {
            // Failed (for being slow or otherwise): no longer a member to steer around.
            *streak = (0, 0);
            return watch.set(slot, false);
        }
        if !was && streak.0 >= SET_AFTER {
            warn!(
                volume = members.volume_name(),
                member = name,
                latency_ms = latency_us as f64 / 1e3,
                peers_ms = peers_us as f64 / 1e3,
                "member slow: reads are served around it while redundancy allows"
            );
            watch.set(slot, true);
        } else if was && streak.1 >= CLEAR_AFTER {
            info!(
                volume = members.volume_name(),
                member = name,
                latency_ms = latency_us as f64 / 1e3,
                "member no longer slow"
            );
            watch.set(slot, false);
        }
        self.maybe_fail(slot, &name, watch, members, latency_us, peers_us);
    }

    fn maybe_fail(
        &self,
        slot: usize,
        name: &str,
        watch: &SlowWatch,
        members: &Members,
        latency_us: u64,
        peers_us: u64,
    ) {
        let Some(limit) = watch.policy.fail_after else {
            return;
        };
        if !watch.is_slow(slot)
            || watch.report(slot).slow_for_secs < limit.as_secs_f64()
            || members.is_failed(slot)
        {
            return;
        }
        if members.can_lose(slot) {
            let why = format!(
                "slow for {} s: {:.1} ms against its peers' {:.1} ms",
                limit.as_secs(),
                latency_us as f64 / 1e3,
                peers_us as f64 / 1e3
            );
            members.fail(slot, &why);
        } else {
            crate::warn_limited!(
                volume = members.volume_name(),
                member = name,
                "slow member kept: the volume cannot lose it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_far_slower_than_its_peers_is_slow() {
        let p = SlowPolicy::default();
        let v = judge(
            &[
                Sample::Mean(100),
                Sample::Mean(30_000),
                Sample::Mean(120),
                Sample::Mean(90),
            ],
            &p,
        );
        assert_eq!(v, vec![Some(false), Some(true), Some(false), Some(false)]);
    }

    #[test]
    fn the_floor_keeps_fast_members_from_being_called_slow() {
        let p = SlowPolicy::default();
        // 20x its peers, but 2 ms is under the 5 ms floor.
        assert_eq!(
            judge(
                &[Sample::Mean(100), Sample::Mean(2_000), Sample::Mean(100)],
                &p
            )[1],
            Some(false)
        );
    }

    #[test]
    fn stuck_is_slow_idle_is_no_verdict_and_no_peers_no_verdict() {
        let p = SlowPolicy::default();
        let v = judge(&[Sample::Stuck, Sample::Idle, Sample::Mean(80)], &p);
        assert_eq!(
            v,
            vec![Some(true), None, None],
            "a slot with no measured peer gets no verdict"
        );
        assert_eq!(
            judge(&[Sample::Mean(50_000), Sample::Idle], &p),
            vec![None, None]
        );
    }
}
