//! Background work on rows of members: rebuilding spares, and the copies mirrors use for
//! it and for resync.
//!
//! One reactor's channel drives a volume's rebuild. It walks member strip rows from the
//! frontier up, keeping up to `REBUILD_WINDOW` row ops in flight within the rate limit.
//! A row op takes the row's stripe lock, so host writes to that row wait for it (and it
//! for them); it reads the members that hold valid data, computes what the rebuilding
//! members should hold (parity recovery, or a mirror copy) and writes only those. Host
//! writes reach rebuilding members at every row, so a row stays valid once rebuilt; the
//! frontier advances over rows whose ops have all finished.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use super::members::SlotState;
use super::raid::{Job, Owner, RaidChannel, StripeKind, StripeState, P_CHUNK, Q_CHUNK};
use crate::bdev::{BdevOp, SqeSink};
use crate::util::bucket::TokenBucket;
use crate::volume::layout::Location;

/// Row ops of a rebuild in flight at once.
const REBUILD_WINDOW: usize = 32;
/// Most rate-limit credit that accumulates while idle, in seconds of the rate.
const BURST_SECS: f64 = 0.05;

/// The driving channel's view of the rebuild.
#[derive(Debug, Default)]
pub(super) struct RebuildDriver {
    is_driver: bool,
    /// Epoch of the rebuild this driver works on (0: none yet).
    epoch: u64,
    next_row: u64,
    next_group: usize,
    /// Row ops issued and not yet retired, in issue order: (seq, row, finished).
    inflight: VecDeque<(u64, u64, bool)>,
    next_seq: u64,
    /// Rate limiting of the rebuilt bytes.
    bucket: TokenBucket,
}

impl RaidChannel {
    /// Keep the rebuild's window full, within the rate limit, if this channel drives it.
    pub(super) fn drive_rebuild(&mut self, sq: &mut dyn SqeSink) {
        if !self.health.rebuilding() || !self.health.online() {
            return;
        }
        if !self.rebuild.is_driver {
            self.rebuild.is_driver = self
                .health
                .rebuild
                .driver
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
            if !self.rebuild.is_driver {
                return;
            }
        }
        let Some(epoch) = self.health.rebuild.active_epoch() else {
            return;
        };
        if epoch != self.rebuild.epoch {
            // A new rebuild (or a restart): ops of the old one still finish, but no longer count.
            let d = &mut self.rebuild;
            d.epoch = epoch;
            d.next_row = self.health.rebuild.frontier();
            d.next_group = 0;
            d.inflight.clear();
        }
        let rows = self.health.rebuild.rows;
        while self.rebuild.inflight.len() < REBUILD_WINDOW && self.rebuild.next_row < rows {
            if self.rebuild.next_group == 0 {
                // A re-added member's catch-up skips the regions it did not miss.
                let next = self
                    .health
                    .rebuild
                    .catch_up
                    .next_to_copy(self.rebuild.next_row, rows);
                self.rebuild.next_row = next;
                if next >= rows {
                    break;
                }
            }
            let group = self.rebuild.next_group;
            let row = self.rebuild.next_row;
            self.rebuild.next_group += 1;
            if self.rebuild.next_group == self.layout.groups() {
                self.rebuild.next_group = 0;
                self.rebuild.next_row += 1;
            }
            if !self.group_rebuilding(group) {
                continue;
            }
            if !self.take_credit() {
                // Undo the step; try again on a later turn.
                self.rebuild.next_row = row;
                self.rebuild.next_group = group;
                break;
            }
            let seq = self.rebuild.next_seq;
            let w = self.whole_row(group, row);
            if !self.start_internal(Job::Rebuild { epoch, seq }, w, StripeKind::Rebuild, sq) {
                break;
            }
            self.rebuild.next_seq += 1;
            self.rebuild.inflight.push_back((seq, row, false));
            self.health
                .rebuild
                .rows_copied
                .fetch_add(1, Ordering::Relaxed);
        }
        self.retire_rebuild_ops();
    }

    fn group_rebuilding(&self, group: usize) -> bool {
        let g = group * self.layout.group_size;
        (g..g + self.layout.group_size).any(|s| self.health.state(s) == SlotState::Rebuilding)
    }

    /// One row op's worth of rate-limit credit, if there is that much.
    fn take_credit(&mut self) -> bool {
        let cost = self.bytes(self.layout.strip_blocks) as f64;
        self.rebuild
            .bucket
            .take(self.health.rebuild.rate() as f64, cost, BURST_SECS)
    }

    /// A rebuild row op finished (its writes to the rebuilding members are done).
    pub(super) fn rebuild_op_done(&mut self, epoch: u64, seq: u64) {
        if epoch != self.rebuild.epoch {
            return;
        }
        if let Some(e) = self.rebuild.inflight.iter_mut().find(|e| e.0 == seq) {
            e.2 = true;
        }
        self.retire_rebuild_ops();
    }

    /// Move the frontier over finished rows; finish the rebuild after the last.
    fn retire_rebuild_ops(&mut self) {
        let d = &mut self.rebuild;
        while d.inflight.front().is_some_and(|e| e.2) {
            d.inflight.pop_front();
        }
        let frontier = d.inflight.front().map_or(d.next_row, |e| e.1);
        let shared = &self.health.rebuild;
        shared.advance(d.epoch, frontier);
        if d.inflight.is_empty() && d.next_row >= shared.rows && d.epoch != 0 {
            self.health.finish_rebuild(d.epoch);
        }
    }

    /// Parity levels: write the rebuilt strips of the rebuilding members of the row.
    pub(super) fn issue_rebuild_writes(&mut self, s: u32, sq: &mut dyn SqeSink) {
        let op = *self.stripes.get(s);
        let (w, l) = (op.w, self.layout.clone());
        for slot in 0..l.group_size {
            let member = l.member_of(w.group, slot);
            if self.health.state(member) != SlotState::Rebuilding {
                continue;
            }
            let chunk = if slot == l.p_slot(w.stripe) {
                op.chunks[P_CHUNK]
            } else if Some(slot) == l.q_slot(w.stripe) {
                op.chunks[Q_CHUNK]
            } else {
                op.chunks[(0..w.k)
                    .find(|&i| l.data_slot(w.stripe, i) == slot)
                    .expect("every slot is data, P or Q")]
            };
            self.stripe_io(
                s,
                BdevOp::Write,
                member,
                w.rows,
                self.scratch.ptr(chunk),
                None,
                sq,
            );
        }
    }

    // ------------------------------------------------------------ mirror row copies

    /// Mirrors: take the row's lock and a chunk, then read a valid copy.
    pub(super) fn try_start_copy(&mut self, s: u32, sq: &mut dyn SqeSink) -> bool {
        let mut op = *self.stripes.get(s);
        debug_assert!(
            matches!(op.kind, StripeKind::Rebuild | StripeKind::Resync),
            "mirrors copy rows only in the background"
        );
        if self.scratch.free.is_empty() || !self.locks.try_lock(self.lock_key(&op.w)) {
            return false;
        }
        op.chunks[0] = self.scratch.free.pop().unwrap();
        op.state = StripeState::Reading;
        *self.stripes.get_mut(s) = op;
        match self.copy_source(&op.w) {
            Some(member) => {
                let loc = Location {
                    member,
                    member_lba: op.w.stripe * self.layout.strip_blocks,
                };
                let io = self.member_io(
                    BdevOp::Read,
                    loc,
                    self.layout.strip_blocks,
                    self.scratch.ptr(op.chunks[0]),
                    None,
                );
                self.child(Owner::Stripe(s), member, io, sq);
            }
            None => self.finish_stripe(s, sq),
        }
        true
    }

    /// The first member of the op's mirror group that holds valid data at its row.
    fn copy_source(&self, w: &super::plan::StripeWrite) -> Option<usize> {
        (0..self.layout.group_size)
            .map(|i| self.layout.member_of(w.group, i))
            .find(|&m| !self.health.is_missing(m, w.stripe))
    }

    /// Mirrors: the copy is read; write it to the rebuilding members (rebuild) or to every
    /// other member (resync).
    pub(super) fn advance_copy(&mut self, s: u32, sq: &mut dyn SqeSink) {
        let op = *self.stripes.get(s);
        match op.state {
            StripeState::Reading if op.failed => self.replan(s, sq),
            StripeState::Reading if op.kind == StripeKind::Scrub => {
                if !self.scrub_check_copies(s, sq) {
                    self.finish_stripe(s, sq);
                }
            }
            StripeState::Reading => {
                self.stripes.get_mut(s).state = StripeState::Writing;
                let source = self.copy_source(&op.w);
                for i in 0..self.layout.group_size {
                    let m = self.layout.member_of(op.w.group, i);
                    let target = match op.kind {
                        StripeKind::Rebuild => self.health.state(m) == SlotState::Rebuilding,
                        _ => !self.health.is_failed(m) && Some(m) != source,
                    };
                    if target {
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
                }
                if self.stripes.get(s).pending == 0 {
                    self.finish_stripe(s, sq);
                }
            }
            StripeState::Writing => self.finish_stripe(s, sq),
            StripeState::Waiting => unreachable!("a waiting op has no member I/O"),
        }
    }
}
