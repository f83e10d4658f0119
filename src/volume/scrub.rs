//! Online scrub: read every row while the volume serves, check that parity (P, and Q on
//! RAID 6/60) matches the data and that mirror copies agree, count the rows that do not
//! (md's check and mismatch_cnt), and on request repair them: parity recomputed from the
//! data, mirror copies made equal to the first (md's repair).
//!
//! One reactor's channel drives a scrub, one row at a time within a rate limit. A row op
//! holds the row's stripe lock, so host writes to the row wait for it and it sees the
//! row as a whole. Rows of groups that lack a member (failed, rebuilding) cannot be
//! checked and are counted as skipped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::members::{Members, SlotState};
use super::raid::{Job, Owner, RaidChannel, Resync, StripeKind, StripeState, P_CHUNK, Q_CHUNK};
use crate::bdev::{BdevOp, SqeSink};
use crate::util::aligned::AlignedRegion;
use crate::util::bucket::TokenBucket;
use crate::volume::layout::Location;

/// Rows listed in the status as examples of mismatches.
const MISMATCH_EXAMPLES: usize = 16;
/// Most rate-limit credit that accumulates while idle, in seconds of the rate.
const BURST_SECS: f64 = 0.05;

/// What status shows of the running or last scrub.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScrubReport {
    pub active: bool,
    pub repair: bool,
    pub rows_done: u64,
    pub rows: u64,
    /// Rows whose parity or copies disagreed.
    pub mismatches: u64,
    /// Of those, rows rewritten (repair).
    pub repaired: u64,
    /// Rows that could not be checked (a member of their group missing).
    pub skipped: u64,
    /// (group, row) of the first mismatches.
    pub examples: Vec<(usize, u64)>,
    pub elapsed_secs: f64,
    pub rate_limit: u64,
    /// Scrubs finished since the target started.
    pub completed: u64,
}

#[derive(Debug, Default)]
struct Run {
    started: Option<Instant>,
    finished_after: Option<Duration>,
    examples: Vec<(usize, u64)>,
}

/// A volume's scrub, shared by its channels and the management API.
#[derive(Debug)]
pub struct Scrub {
    rows: u64,
    groups: u64,
    next: AtomicU64,
    done: AtomicU64,
    total: AtomicU64,
    repair: AtomicBool,
    mismatches: AtomicU64,
    repaired: AtomicU64,
    skipped: AtomicU64,
    completed: AtomicU64,
    rate: AtomicU64,
    /// Only one channel drives scrubs: the first to claim this.
    driver: AtomicBool,
    run: Mutex<Run>,
}

impl Scrub {
    pub fn new(rows: u64, groups: usize, rate: u64) -> Scrub {
        Scrub {
            rows,
            groups: groups as u64,
            next: AtomicU64::new(0),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            repair: AtomicBool::new(false),
            mismatches: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            rate: AtomicU64::new(rate),
            driver: AtomicBool::new(false),
            run: Mutex::new(Run::default()),
        }
    }

    pub fn active(&self) -> bool {
        self.done.load(Relaxed) < self.total.load(Relaxed)
    }

    /// Start a scrub of every row; refused while one runs.
    pub fn start(&self, repair: bool) -> Result<(), String> {
        let mut run = self.run.lock().unwrap();
        if self.active() {
            return Err("a scrub is already running".into());
        }
        *run = Run {
            started: Some(Instant::now()),
            ..Run::default()
        };
        for c in [
            &self.next,
            &self.done,
            &self.mismatches,
            &self.repaired,
            &self.skipped,
        ] {
            c.store(0, Relaxed);
        }
        self.repair.store(repair, Relaxed);
        // Published last: channels start claiming once total is set.
        self.total.store(self.rows * self.groups, Relaxed);
        Ok(())
    }

    /// Stop claiming rows; rows in flight finish.
    pub fn stop(&self) {
        let _lock = self.run.lock().unwrap();
        let next = self.next.load(Relaxed);
        if self.active() {
            self.total.store(next.max(self.done.load(Relaxed)), Relaxed);
        }
    }

    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Relaxed);
    }

    pub fn report(&self) -> ScrubReport {
        let run = self.run.lock().unwrap();
        let elapsed = run
            .finished_after
            .or_else(|| run.started.map(|t| t.elapsed()))
            .unwrap_or_default();
        ScrubReport {
            active: self.active(),
            repair: self.repair.load(Relaxed),
            rows_done: self.done.load(Relaxed),
            rows: self.total.load(Relaxed),
            mismatches: self.mismatches.load(Relaxed),
            repaired: self.repaired.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            examples: run.examples.clone(),
            elapsed_secs: elapsed.as_secs_f64(),
            rate_limit: self.rate.load(Relaxed),
            completed: self.completed.load(Relaxed),
        }
    }

    /// When the last scrub started (None: never since the target started).
    pub fn last_started(&self) -> Option<Instant> {
        self.run.lock().unwrap().started
    }

    fn claim(&self) -> Option<(usize, u64)> {
        let i = self.next.load(Relaxed);
        (i < self.total.load(Relaxed)).then(|| {
            self.next.store(i + 1, Relaxed);
            ((i % self.groups) as usize, i / self.groups)
        })
    }

    fn row_done(&self, volume: &str) {
        let done = self.done.fetch_add(1, Relaxed) + 1;
        if done == self.total.load(Relaxed) {
            let mut run = self.run.lock().unwrap();
            run.finished_after = run.started.map(|t| t.elapsed());
            self.completed.fetch_add(1, Relaxed);
            let (m, r, s) = (
                self.mismatches.load(Relaxed),
                self.repaired.load(Relaxed),
                self.skipped.load(Relaxed),
            );
            info!(
                volume,
                rows = done,
                mismatches = m,
                repaired = r,
                skipped = s,
                "scrub finished"
            );
        }
    }

    fn mismatch(&self, volume: &str, group: usize, row: u64, what: &str) {
        self.mismatches.fetch_add(1, Relaxed);
        let mut run = self.run.lock().unwrap();
        if run.examples.len() < MISMATCH_EXAMPLES {
            run.examples.push((group, row));
        }
        drop(run);
        crate::warn_limited!(
            volume,
            group,
            row,
            what,
            repair = self.repair.load(Relaxed),
            "scrub: mismatch"
        );
    }
}

/// Whether a scrub may start now: every member active and no resync running. Err says why
/// not.
pub fn ready(members: &Members, resync: &Resync) -> Result<(), String> {
    let inactive = (0..members.slots())
        .filter(|&s| members.state(s) != SlotState::Active)
        .count();
    match (inactive, resync.active()) {
        (0, false) => Ok(()),
        (0, true) => Err(format!(
            "volume '{}' is resynchronising: a scrub needs consistent rows to compare",
            members.volume_name()
        )),
        (n, _) => Err(format!(
            "volume '{}' has {n} member(s) failed or rebuilding: a scrub needs every member",
            members.volume_name()
        )),
    }
}

/// The driving channel's state.
#[derive(Debug, Default)]
pub(super) struct ScrubDriver {
    is_driver: bool,
    inflight: bool,
    /// Two strips for the parity computed from the data (allocated at the first scrub).
    scratch: Option<AlignedRegion>,
    bucket: TokenBucket,
}

impl RaidChannel {
    /// Keep one scrub row in flight, within the rate limit, if this channel drives scrubs.
    pub(super) fn drive_scrub(&mut self, sq: &mut dyn SqeSink) {
        if self.scrub_state.inflight || !self.scrub.active() {
            return;
        }
        if !self.scrub_state.is_driver {
            self.scrub_state.is_driver = self
                .scrub
                .driver
                .compare_exchange(false, true, std::sync::atomic::Ordering::AcqRel, Relaxed)
                .is_ok();
            if !self.scrub_state.is_driver {
                return;
            }
        }
        if self.scrub_state.scratch.is_none() {
            match AlignedRegion::new(2 * self.bytes(self.layout.strip_blocks)) {
                Ok(r) => self.scrub_state.scratch = Some(r),
                Err(e) => {
                    warn!(volume = self.volume_name(), error = %e, "scrub: no memory for its scratch: stopped");
                    return self.scrub.stop();
                }
            }
        }
        if !self.take_scrub_credit() {
            return;
        }
        let Some((group, row)) = self.scrub.claim() else {
            return;
        };
        if (0..self.layout.group_size)
            .any(|i| self.health.is_missing(self.layout.member_of(group, i), row))
        {
            // A row without all its members cannot be checked.
            self.scrub_skip();
            return self.scrub.row_done(self.volume_name());
        }
        let w = self.whole_row(group, row);
        // In flight before the start: a row that cannot be checked finishes inside it.
        self.scrub_state.inflight = true;
        if !self.start_internal(Job::Scrub, w, StripeKind::Scrub, sq) {
            self.scrub_state.inflight = false;
            self.scrub
                .next
                .store(self.scrub.next.load(Relaxed) - 1, Relaxed);
        }
    }

    /// Credit for one row's reads (every member of the group), if the rate allows.
    fn take_scrub_credit(&mut self) -> bool {
        let cost = (self.bytes(self.layout.strip_blocks) * self.layout.group_size) as f64;
        self.scrub_state
            .bucket
            .take(self.scrub.rate.load(Relaxed) as f64, cost, BURST_SECS)
    }

    pub(super) fn scrub_row_done(&mut self) {
        self.scrub_state.inflight = false;
        self.scrub.row_done(self.volume_name());
    }

    /// A row whose group lacks a member: counted, not checked.
    pub(super) fn scrub_skip(&self) {
        self.scrub.skipped.fetch_add(1, Relaxed);
    }

    // ------------------------------------------------------------ parity levels

    /// Every data strip, P and Q are read: compute parity from the data and compare.
    /// Returns whether a repair write was issued.
    pub(super) fn scrub_check_parity(&mut self, s: u32, sq: &mut dyn SqeSink) -> bool {
        let op = *self.stripes.get(s);
        let len = self.bytes(op.w.rows.len());
        let base = self
            .scrub_state
            .scratch
            .as_ref()
            .expect("allocated before the first scrub row")
            .as_ptr();
        // SAFETY: the scratch (two strips) belongs to the one scrub row in flight, and stays
        // untouched until its repair writes complete; chunks are the op's.
        let (p_new, q_new) = unsafe {
            (
                std::slice::from_raw_parts_mut(base, len),
                std::slice::from_raw_parts_mut(base.add(len), len),
            )
        };
        let mut data: [&[u8]; super::plan::MAX_DATA] = [&[]; super::plan::MAX_DATA];
        for (i, d) in data.iter_mut().enumerate().take(op.w.k) {
            *d = unsafe { std::slice::from_raw_parts(self.scratch.ptr(op.chunks[i]), len) };
        }
        let q_chunk = (self.parity() == 2).then_some(op.chunks[Q_CHUNK]);
        self.code()
            .generate(&data[..op.w.k], p_new, q_chunk.map(|_| &mut *q_new));
        let on_disk = |c: u16| unsafe { std::slice::from_raw_parts(self.scratch.ptr(c), len) };
        let p_bad = on_disk(op.chunks[P_CHUNK]) != &p_new[..];
        let q_bad = q_chunk.is_some_and(|c| on_disk(c) != &q_new[..]);
        if !p_bad && !q_bad {
            return false;
        }
        let what = match (p_bad, q_bad) {
            (true, true) => "P and Q differ from the data",
            (true, false) => "P differs from the data",
            _ => "Q differs from the data",
        };
        self.scrub
            .mismatch(self.volume_name(), op.w.group, op.w.stripe, what);
        if !self.scrub.repair.load(Relaxed) {
            return false;
        }
        let (p_member, q_member) = (
            self.layout
                .member_of(op.w.group, self.layout.p_slot(op.w.stripe)),
            self.layout
                .q_slot(op.w.stripe)
                .map(|q| self.layout.member_of(op.w.group, q)),
        );
        self.stripes.get_mut(s).state = StripeState::Writing;
        self.scrub.repaired.fetch_add(1, Relaxed);
        if p_bad {
            self.stripe_io(
                s,
                BdevOp::Write,
                p_member,
                op.w.rows,
                p_new.as_mut_ptr(),
                None,
                sq,
            );
        }
        if let (true, Some(q)) = (q_bad, q_member) {
            self.stripe_io(s, BdevOp::Write, q, op.w.rows, q_new.as_mut_ptr(), None, sq);
        }
        true
    }

    // ------------------------------------------------------------ mirrors

    /// Mirrors: take the row's lock and a chunk per copy, then read every copy.
    pub(super) fn try_start_scrub_copy(&mut self, s: u32, sq: &mut dyn SqeSink) -> bool {
        let mut op = *self.stripes.get(s);
        let copies = self.layout.group_size;
        if self.scratch.free.len() < copies || !self.locks.try_lock(self.lock_key(&op.w)) {
            return false;
        }
        let members: Vec<usize> = (0..copies)
            .map(|i| self.layout.member_of(op.w.group, i))
            .collect();
        if members
            .iter()
            .any(|&m| self.health.is_missing(m, op.w.stripe))
        {
            self.locks.unlock(self.lock_key(&op.w));
            self.scrub_skip();
            self.finish_stripe_released(s, sq);
            return true;
        }
        for c in op.chunks.iter_mut().take(copies) {
            *c = self.scratch.free.pop().unwrap();
        }
        op.state = StripeState::Reading;
        *self.stripes.get_mut(s) = op;
        for (i, &m) in members.iter().enumerate() {
            let loc = Location {
                member: m,
                member_lba: op.w.stripe * self.layout.strip_blocks,
            };
            let io = self.member_io(
                BdevOp::Read,
                loc,
                self.layout.strip_blocks,
                self.scratch.ptr(op.chunks[i]),
                None,
            );
            self.child(Owner::Stripe(s), m, io, sq);
        }
        true
    }

    /// Mirrors: compare every copy with the first; repair writes the first over the others.
    /// Returns whether a repair write was issued.
    pub(super) fn scrub_check_copies(&mut self, s: u32, sq: &mut dyn SqeSink) -> bool {
        let op = *self.stripes.get(s);
        let len = self.bytes(self.layout.strip_blocks);
        let copy =
            |i: usize| unsafe { std::slice::from_raw_parts(self.scratch.ptr(op.chunks[i]), len) };
        let differing: Vec<usize> = (1..self.layout.group_size)
            .filter(|&i| copy(i) != copy(0))
            .collect();
        if differing.is_empty() {
            return false;
        }
        self.scrub.mismatch(
            self.volume_name(),
            op.w.group,
            op.w.stripe,
            "mirror copies differ",
        );
        if !self.scrub.repair.load(Relaxed) {
            return false;
        }
        self.stripes.get_mut(s).state = StripeState::Writing;
        self.scrub.repaired.fetch_add(1, Relaxed);
        for i in differing {
            let m = self.layout.member_of(op.w.group, i);
            self.stripe_io(
                s,
                BdevOp::Write,
                m,
                op.w.rows,
                self.scratch.ptr(op.chunks[0]),
                None,
                sq,
            );
        }
        true
    }
}
