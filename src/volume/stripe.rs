//! Stripe operations of parity levels: writes (read-modify-write, reconstruct-write, or
//! degraded) and reconstructing reads of strips on failed members.
//!
//! A stripe op takes the stripe's lock (shared by all reactors) and scratch chunks, reads
//! what its strategy needs, computes, then writes. A member failing while the op reads
//! sends it back to the queue to be planned again, degraded; one failing while it writes
//! only marks the member failed, since the op's parity already describes the new data.

use super::plan::{self, Rows, Strategy, StripeWrite, MAX_DATA};
use std::sync::atomic::Ordering;

use super::raid::{
    Job, Owner, Parent, RaidChannel, StripeKind, StripeOp, StripeState, NO_CHUNK, P_CHUNK, Q_CHUNK,
    STRIPE_WINDOW,
};
use crate::bdev::{BdevOp, SqeSink};
use crate::parity::{self, Update};
use crate::volume::layout::Location;

/// # Safety
/// `p` must point at `len` bytes that nothing writes while the slice lives.
unsafe fn slice<'a>(p: *const u8, len: usize) -> &'a [u8] {
    std::slice::from_raw_parts(p, len)
}

/// # Safety
/// `p` must point at `len` bytes that nothing else reads or writes while the slice lives.
unsafe fn slice_mut<'a>(p: *mut u8, len: usize) -> &'a mut [u8] {
    std::slice::from_raw_parts_mut(p, len)
}

impl RaidChannel {
    /// Start more stripe writes of host write `p`, up to its window.
    pub(super) fn pump(&mut self, p: u32, sq: &mut dyn SqeSink) {
        loop {
            let parent = *self.parents.get(p);
            if parent.cursor >= parent.end || parent.pending >= STRIPE_WINDOW {
                return;
            }
            let (w, next) =
                plan::next_stripe(&self.layout, parent.io_start, parent.cursor, parent.end);
            let parent = self.parents.get_mut(p);
            parent.cursor = next;
            self.start_stripe_op(p, w, StripeKind::Write, sq);
        }
    }

    /// Queue a stripe op for parent `p` and start it if it can run now.
    pub(super) fn start_stripe_op(
        &mut self,
        p: u32,
        w: StripeWrite,
        kind: StripeKind,
        sq: &mut dyn SqeSink,
    ) {
        let op = StripeOp {
            parent: p,
            kind,
            strategy: Strategy::Degraded,
            w,
            state: StripeState::Waiting,
            pending: 0,
            failed: false,
            missing: 0,
            chunks: [NO_CHUNK; MAX_DATA + 2],
        };
        let s = self
            .stripes
            .insert(op)
            .expect("stripe table sized for every parent's window");
        self.parents.get_mut(p).pending += 1;
        if !self.try_start(s, sq) {
            self.waiting.push_back(s);
        }
    }

    pub(super) fn lock_key(&self, w: &StripeWrite) -> usize {
        (w.stripe as usize)
            .wrapping_mul(self.layout.groups())
            .wrapping_add(w.group)
            % self.locks.buckets()
    }

    /// Member of the strip at `slot` of the op's group.
    fn member(&self, w: &StripeWrite, slot: usize) -> usize {
        self.layout.member_of(w.group, slot)
    }

    fn data_member(&self, w: &StripeWrite, i: usize) -> usize {
        self.member(w, self.layout.data_slot(w.stripe, i))
    }

    /// Members of the stripe's P and Q (Q only for RAID 6/60).
    fn parity_members(&self, w: &StripeWrite) -> (usize, Option<usize>) {
        (
            self.member(w, self.layout.p_slot(w.stripe)),
            self.layout.q_slot(w.stripe).map(|q| self.member(w, q)),
        )
    }

    /// Slots of the stripe's group that hold no valid data at its row, as a bit mask.
    fn missing_slots(&self, w: &StripeWrite) -> u64 {
        (0..self.layout.group_size)
            .filter(|&slot| self.health.is_missing(self.member(w, slot), w.stripe))
            .fold(0, |m, slot| m | 1 << slot)
    }

    /// A reconstructing read also leaves out slow members, as far as parity allows.
    fn around_slow(&self, w: &StripeWrite, missing: u64) -> u64 {
        let slow = (0..self.layout.group_size)
            .filter(|&slot| self.health.slow.is_slow(self.member(w, slot)))
            .fold(0u64, |m, slot| m | 1 << slot);
        let both = missing | slow;
        if both.count_ones() as usize <= self.parity() {
            both
        } else {
            missing
        }
    }

    /// The member held no valid data at the op's row when the op started.
    fn missing(&self, op: &StripeOp, member: usize) -> bool {
        op.missing >> (member - self.member(&op.w, 0)) & 1 == 1
    }

    /// Data strips that need a scratch chunk under the op's strategy.
    fn needs_chunk(op: &StripeOp, i: usize) -> bool {
        let written = op.w.written[i];
        match op.strategy {
            Strategy::ReadModifyWrite => !written.is_empty(),
            Strategy::ReconstructWrite => written != op.w.rows,
            Strategy::Degraded => true,
        }
    }

    /// Take the stripe lock and scratch, then issue the reads. False: try again later.
    pub(super) fn try_start(&mut self, s: u32, sq: &mut dyn SqeSink) -> bool {
        if self.parity() == 0 {
            if self.stripes.get(s).kind == StripeKind::Scrub {
                return self.try_start_scrub_copy(s, sq);
            }
            return self.try_start_copy(s, sq);
        }
        let mut op = *self.stripes.get(s);
        op.missing = self.missing_slots(&op.w);
        if op.kind == StripeKind::Scrub && op.missing != 0 {
            // A row without all its members cannot be checked.
            self.scrub_skip();
            self.finish_stripe_released(s, sq);
            return true;
        }
        if op.kind == StripeKind::Read {
            op.missing = self.around_slow(&op.w, op.missing);
        }
        if self.code().whole_strips() {
            op.w.rows = Rows {
                start: 0,
                end: self.layout.strip_blocks,
            };
        }
        op.strategy = match op.kind {
            StripeKind::Write if op.missing == 0 => plan::choose(&op.w, self.parity()),
            // Parity from all of the data: read every strip, write P and Q.
            StripeKind::Resync if op.missing == 0 => Strategy::ReconstructWrite,
            _ => Strategy::Degraded,
        };
        let data_chunks = (0..op.w.k).filter(|&i| Self::needs_chunk(&op, i)).count();
        if self.scratch.free.len() < data_chunks + self.parity()
            || !self.locks.try_lock(self.lock_key(&op.w))
        {
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
        if self.stripes.get(s).pending == 0 {
            self.advance(s, sq);
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn stripe_io(
        &mut self,
        s: u32,
        op: BdevOp,
        member: usize,
        rows: Rows,
        buf: *mut u8,
        buf_index: Option<u16>,
        sq: &mut dyn SqeSink,
    ) {
        let w = self.stripes.get(s).w;
        let loc = Location {
            member,
            member_lba: w.stripe * self.layout.strip_blocks + rows.start,
        };
        let io = self.member_io(op, loc, rows.len(), buf, buf_index);
        self.child(Owner::Stripe(s), loc.member, io, sq);
    }

    /// Pointer to the chunk's bytes for `row` when the chunk starts at row `base`.
    fn chunk_at(&self, id: u16, base: u64, row: u64) -> *mut u8 {
        self.scratch.ptr(id).wrapping_add(self.bytes(row - base))
    }

    /// Read `rows` of a member into a chunk that starts at row `base`, unless it holds no
    /// valid data there.
    fn read_rows(
        &mut self,
        s: u32,
        member: usize,
        rows: Rows,
        chunk: u16,
        base: u64,
        sq: &mut dyn SqeSink,
    ) {
        if !rows.is_empty() && !self.missing(self.stripes.get(s), member) {
            let dst = self.chunk_at(chunk, base, rows.start);
            self.stripe_io(s, BdevOp::Read, member, rows, dst, None, sq);
        }
    }

    fn issue_reads(&mut self, s: u32, sq: &mut dyn SqeSink) {
        let op = *self.stripes.get(s);
        let (w, rows) = (op.w, op.w.rows);
        for i in (0..w.k).filter(|&i| op.chunks[i] != NO_CHUNK) {
            let member = self.data_member(&w, i);
            let written = w.written[i];
            match op.strategy {
                Strategy::ReadModifyWrite => {
                    self.read_rows(s, member, written, op.chunks[i], written.start, sq)
                }
                Strategy::ReconstructWrite if written.is_empty() => {
                    self.read_rows(s, member, rows, op.chunks[i], rows.start, sq)
                }
                Strategy::ReconstructWrite => {
                    // The rows this strip does not write: before and after its new data.
                    self.read_rows(
                        s,
                        member,
                        Rows {
                            start: rows.start,
                            end: written.start,
                        },
                        op.chunks[i],
                        rows.start,
                        sq,
                    );
                    self.read_rows(
                        s,
                        member,
                        Rows {
                            start: written.end,
                            end: rows.end,
                        },
                        op.chunks[i],
                        rows.start,
                        sq,
                    );
                }
                Strategy::Degraded => self.read_rows(s, member, rows, op.chunks[i], rows.start, sq),
            }
        }
        if matches!(op.strategy, Strategy::ReadModifyWrite | Strategy::Degraded) {
            let (p, q) = self.parity_members(&w);
            let (p_rows, q_rows) = self.parity_rows(&op);
            self.read_rows(s, p, p_rows, op.chunks[P_CHUNK], rows.start, sq);
            if let Some(q) = q {
                self.read_rows(s, q, q_rows, op.chunks[Q_CHUNK], rows.start, sq);
            }
        }
    }

    /// The rows of P and of Q the op reads (read-modify-write, degraded) and writes: its
    /// rows, except for a whole-strip code's read-modify-write, which changes the row
    /// parity at the written rows only and the diagonal parity over the hull of the cells
    /// they reach.
    fn parity_rows(&self, op: &StripeOp) -> (Rows, Rows) {
        if !(self.code().whole_strips() && op.strategy == Strategy::ReadModifyWrite) {
            return (op.w.rows, op.w.rows);
        }
        let prime = parity::rdp::prime_for(op.w.k);
        let strip = self.bytes(self.layout.strip_blocks);
        let block = self.bytes(1);
        let mut p = Rows {
            start: u64::MAX,
            end: 0,
        };
        let mut q = p;
        for i in (0..op.w.k).filter(|&i| !op.w.written[i].is_empty()) {
            let wr = op.w.written[i];
            p.start = p.start.min(wr.start);
            p.end = p.end.max(wr.end);
            let at = self.bytes(wr.start - op.w.rows.start);
            let d = parity::rdp::touched_diagonal_bytes(prime, strip, i, at, self.bytes(wr.len()));
            q.start = q.start.min(op.w.rows.start + (d.start / block) as u64);
            q.end = q.end.max(op.w.rows.start + d.end.div_ceil(block) as u64);
        }
        (p, q)
    }

    /// New data for `len` rows of data strip `i` from `row`: the host's buffer, or zeroes.
    fn new_data(&self, op: &StripeOp, i: usize, row: u64, len: u64) -> *mut u8 {
        let parent = self.parents.get(op.parent);
        if parent.op == BdevOp::WriteZeroes {
            debug_assert!(self.bytes(len) <= self.zeroes.len());
            return self.zeroes.as_ptr();
        }
        let block = op.w.host_block[i] + (row - op.w.written[i].start);
        parent.buf.wrapping_add(self.bytes(block))
    }

    /// P and Q chunks of the op over its rows.
    fn parity_slices<'a>(&self, op: &StripeOp) -> (&'a mut [u8], Option<&'a mut [u8]>) {
        let len = self.bytes(op.w.rows.len());
        // SAFETY: the P and Q chunks belong to this stripe op alone until it finishes.
        let p = unsafe { slice_mut(self.scratch.ptr(op.chunks[P_CHUNK]), len) };
        let q = (self.parity() == 2)
            .then(|| unsafe { slice_mut(self.scratch.ptr(op.chunks[Q_CHUNK]), len) });
        (p, q)
    }

    fn compute(&mut self, s: u32) {
        let op = *self.stripes.get(s);
        let whole = self.code().whole_strips();
        match op.strategy {
            Strategy::ReadModifyWrite => self.update_parity(&op),
            Strategy::ReconstructWrite if whole => self.reconstruct_whole_strip_parity(&op),
            Strategy::ReconstructWrite => self.reconstruct_parity(&op),
            Strategy::Degraded => {
                if whole {
                    self.rebuild_missing_whole_strips(&op);
                } else {
                    self.rebuild_missing_data(&op);
                }
                if op.kind != StripeKind::Read {
                    self.overlay_new_data(&op);
                    self.parity_from_chunks(&op);
                }
            }
        }
    }

    /// Read-modify-write: fold (old ^ new) of each written strip into P and Q (row-aligned
    /// codes), or into the parity cells it reaches wherever they sit in the parity strips
    /// (RAID-6 DP).
    fn update_parity(&self, op: &StripeOp) {
        let rows = op.w.rows;
        let (p, mut q) = self.parity_slices(op);
        let whole = self.code().whole_strips();
        for i in (0..op.w.k).filter(|&i| !op.w.written[i].is_empty()) {
            let wr = op.w.written[i];
            let len = self.bytes(wr.len());
            // SAFETY: old data sits in this op's chunk; new data in the host buffer, which
            // stays untouched until the host I/O completes.
            let (old, new) = unsafe {
                (
                    slice(self.scratch.ptr(op.chunks[i]), len),
                    slice(self.new_data(op, i, wr.start, wr.len()), len),
                )
            };
            let at = self.bytes(wr.start - rows.start);
            if whole {
                let d = q
                    .as_deref_mut()
                    .expect("RAID-6 DP has a diagonal parity strip");
                let prime = parity::rdp::prime_for(op.w.k);
                parity::Kernels::get().rdp_update(prime, op.w.k, i, at, old, new, p, d);
            } else {
                let u = [Update { index: i, old, new }];
                let q = q.as_deref_mut().map(|q| &mut q[at..at + len]);
                self.code().update(&u, &mut p[at..at + len], q);
            }
        }
    }

    /// Reconstruct-write of a whole-strip code: partly written strips get their new data in
    /// their chunks, fully written ones are read from the host buffer; then the parity of
    /// the whole stripe.
    fn reconstruct_whole_strip_parity(&self, op: &StripeOp) {
        self.overlay_new_data(op);
        let len = self.bytes(op.w.rows.len());
        let mut data: [&[u8]; MAX_DATA] = [&[]; MAX_DATA];
        for (i, d) in data.iter_mut().enumerate().take(op.w.k) {
            let ptr = if op.chunks[i] == NO_CHUNK {
                self.new_data(op, i, op.w.rows.start, op.w.rows.len())
            } else {
                self.scratch.ptr(op.chunks[i])
            };
            // SAFETY: op-owned chunks or the untouched host buffer.
            *d = unsafe { slice(ptr, len) };
        }
        let (p, q) = self.parity_slices(op);
        self.code().generate(&data[..op.w.k], p, q);
    }

    /// Degraded, whole-strip code: rebuild the lost data strips (with a lost parity strip
    /// when two are gone) from every survivor.
    fn rebuild_missing_whole_strips(&self, op: &StripeOp) {
        let k = op.w.k;
        let (p_member, q_member) = self.parity_members(&op.w);
        let q_member = q_member.expect("RAID-6 DP has a diagonal parity member");
        let lost_data = (0..k).filter(|&i| self.missing(op, self.data_member(&op.w, i)));
        let lost_parity = [(k, p_member), (k + 1, q_member)]
            .into_iter()
            .filter(|&(_, m)| self.missing(op, m))
            .map(|(i, _)| i);
        let mut lost = [0usize; 2];
        let mut n = 0;
        for i in lost_data.clone().chain(lost_parity) {
            assert!(
                n < 2,
                "more failed members than the level tolerates reached a stripe op"
            );
            lost[n] = i;
            n += 1;
        }
        if lost_data.count() == 0 {
            return;
        }
        let len = self.bytes(op.w.rows.len());
        let chunk = |i: usize| match i {
            _ if i < k => op.chunks[i],
            _ if i == k => op.chunks[P_CHUNK],
            _ => op.chunks[Q_CHUNK],
        };
        let mut strips: [&mut [u8]; parity::rdp::MAX_STRIPS] =
            std::array::from_fn(|_| <&mut [u8]>::default());
        for (i, st) in strips.iter_mut().enumerate().take(k + 2) {
            // SAFETY: each of the op's chunks is a distinct buffer owned by the op.
            *st = unsafe { slice_mut(self.scratch.ptr(chunk(i)), len) };
        }
        parity::rdp_recover(parity::rdp::prime_for(k), &mut strips[..k + 2], &lost[..n]);
    }

    /// Reconstruct-write: parity of the whole stripe over its rows, segment by segment;
    /// inside a segment each strip's bytes come from one source (new data or its chunk).
    fn reconstruct_parity(&self, op: &StripeOp) {
        let rows = op.w.rows;
        let (p, mut q) = self.parity_slices(op);
        let mut cuts = [0u64; 2 * MAX_DATA + 2];
        let mut n = 0;
        for r in std::iter::once(&rows)
            .chain(op.w.written[..op.w.k].iter())
            .filter(|r| !r.is_empty())
        {
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
                let ptr = if wr.start <= a && b <= wr.end {
                    self.new_data(op, i, a, b - a)
                } else {
                    self.chunk_at(op.chunks[i], rows.start, a)
                };
                // SAFETY: op-owned chunks or the untouched host buffer.
                *src = unsafe { slice(ptr, len) };
            }
            let at = self.bytes(a - rows.start);
            let q = q.as_deref_mut().map(|q| &mut q[at..at + len]);
            self.code()
                .generate(&srcs[..op.w.k], &mut p[at..at + len], q);
        }
    }

    /// Degraded: recompute the data strips of failed members (at most the level's
    /// tolerance) into their chunks from the survivors and P and/or Q.
    fn rebuild_missing_data(&self, op: &StripeOp) {
        let len = self.bytes(op.w.rows.len());
        let (p_member, _) = self.parity_members(&op.w);
        let mut missing = [0usize; 2];
        let mut n = 0;
        let mut data: [&[u8]; MAX_DATA] = [&[]; MAX_DATA];
        for (i, d) in data.iter_mut().enumerate().take(op.w.k) {
            if self.missing(op, self.data_member(&op.w, i)) {
                assert!(
                    n < 2,
                    "more failed members than the level tolerates reached a stripe op"
                );
                missing[n] = i;
                n += 1;
            } else {
                // SAFETY: survivors' chunks are filled and only read here.
                *d = unsafe { slice(self.scratch.ptr(op.chunks[i]), len) };
            }
        }
        let out = |i: usize| unsafe { slice_mut(self.scratch.ptr(op.chunks[i]), len) };
        // SAFETY (out, p, q): chunks of missing strips are written only here; P/Q read.
        let (p, q) = self.parity_slices(op);
        let p_ok = !self.missing(op, p_member);
        match n {
            0 => {}
            1 if p_ok => {
                parity::recover_data_from_p(&data[..op.w.k], missing[0], p, out(missing[0]), None)
            }
            1 => parity::recover_data_from_q(
                &data[..op.w.k],
                missing[0],
                q.expect("P failed: Q survives"),
                out(missing[0]),
                None,
            ),
            _ => parity::recover_two_data(
                &data[..op.w.k],
                missing[0],
                missing[1],
                p,
                q.expect("two data lost: RAID 6"),
                out(missing[0]),
                out(missing[1]),
            ),
        }
    }

    /// Copy the new data over each written strip's chunk rows (strips without a chunk are
    /// written whole and read from the host buffer).
    fn overlay_new_data(&self, op: &StripeOp) {
        for i in (0..op.w.k).filter(|&i| !op.w.written[i].is_empty() && op.chunks[i] != NO_CHUNK) {
            let wr = op.w.written[i];
            let len = self.bytes(wr.len());
            // SAFETY: the chunk is this op's; the host buffer is only read.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.new_data(op, i, wr.start, wr.len()),
                    self.chunk_at(op.chunks[i], op.w.rows.start, wr.start),
                    len,
                );
            }
        }
    }

    /// Degraded write: P and Q from the (complete) data chunks.
    fn parity_from_chunks(&self, op: &StripeOp) {
        let len = self.bytes(op.w.rows.len());
        let mut data: [&[u8]; MAX_DATA] = [&[]; MAX_DATA];
        for (i, d) in data.iter_mut().enumerate().take(op.w.k) {
            // SAFETY: data chunks are complete and only read here.
            *d = unsafe { slice(self.scratch.ptr(op.chunks[i]), len) };
        }
        let (p, q) = self.parity_slices(op);
        self.code().generate(&data[..op.w.k], p, q);
    }

    /// Write the new data and parity to every member involved that is not failed
    /// (rebuilding ones included).
    fn issue_writes(&mut self, s: u32, sq: &mut dyn SqeSink) {
        let op = *self.stripes.get(s);
        if op.kind == StripeKind::Rebuild {
            return self.issue_rebuild_writes(s, sq);
        }
        let parent = *self.parents.get(op.parent);
        let host_index = if parent.op == BdevOp::WriteZeroes {
            None
        } else {
            parent.buf_index
        };
        for i in (0..op.w.k).filter(|&i| !op.w.written[i].is_empty()) {
            let member = self.data_member(&op.w, i);
            if self.health.is_failed(member) {
                continue;
            }
            let wr = op.w.written[i];
            let src = self.new_data(&op, i, wr.start, wr.len());
            self.stripe_io(s, BdevOp::Write, member, wr, src, host_index, sq);
        }
        let (p, q) = self.parity_members(&op.w);
        let (p_rows, q_rows) = self.parity_rows(&op);
        for (member, chunk, rows) in [
            (Some(p), op.chunks[P_CHUNK], p_rows),
            (q, op.chunks[Q_CHUNK], q_rows),
        ] {
            if let Some(m) = member.filter(|m| !self.health.is_failed(*m)) {
                let src = self.chunk_at(chunk, op.w.rows.start, rows.start);
                self.stripe_io(s, BdevOp::Write, m, rows, src, None, sq);
            }
        }
    }

    /// Reconstructing read: copy the rebuilt rows of the target strip to the host.
    fn copy_out(&self, op: &StripeOp) {
        let i = (0..op.w.k)
            .find(|&i| !op.w.written[i].is_empty())
            .expect("a read op targets one strip");
        let wr = op.w.written[i];
        let parent = self.parents.get(op.parent);
        let dst = parent.buf.wrapping_add(self.bytes(op.w.host_block[i]));
        // SAFETY: the destination range belongs to the host I/O; the chunk is the op's.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.chunk_at(op.chunks[i], op.w.rows.start, wr.start),
                dst,
                self.bytes(wr.len()),
            )
        };
    }

    /// All of a stripe op's member I/Os for its current state have returned.
    pub(super) fn advance(&mut self, s: u32, sq: &mut dyn SqeSink) {
        if self.parity() == 0 {
            return self.advance_copy(s, sq);
        }
        let op = *self.stripes.get(s);
        match (op.state, op.kind) {
            (StripeState::Reading, _) if op.failed => self.replan(s, sq),
            (
                StripeState::Reading,
                StripeKind::Write | StripeKind::Resync | StripeKind::Rebuild,
            ) => {
                self.compute(s);
                self.stripes.get_mut(s).state = StripeState::Writing;
                self.issue_writes(s, sq);
                if self.stripes.get(s).pending == 0 {
                    self.finish_stripe(s, sq);
                }
            }
            (StripeState::Reading, StripeKind::Read) => {
                self.compute(s);
                self.copy_out(&op);
                self.finish_stripe(s, sq);
            }
            (StripeState::Reading, StripeKind::Scrub) => {
                if !self.scrub_check_parity(s, sq) {
                    self.finish_stripe(s, sq);
                }
            }
            (StripeState::Writing, _) => self.finish_stripe(s, sq),
            (StripeState::Waiting, _) => unreachable!("a waiting stripe op has no member I/O"),
        }
    }

    pub(super) fn release(&mut self, op: &StripeOp) {
        self.locks.unlock(self.lock_key(&op.w));
        for c in op.chunks.iter().filter(|c| **c != NO_CHUNK) {
            self.scratch.free.push(*c);
        }
    }

    /// A read failed: the member is marked failed; plan the op again, degraded, unless the
    /// volume has lost more than it tolerates.
    pub(super) fn replan(&mut self, s: u32, sq: &mut dyn SqeSink) {
        let mut op = *self.stripes.get(s);
        self.release(&op);
        if !self.health.online() {
            return self.finish_stripe_released(s, sq);
        }
        op.state = StripeState::Waiting;
        op.failed = false;
        op.chunks = [NO_CHUNK; MAX_DATA + 2];
        *self.stripes.get_mut(s) = op;
        self.waiting.push_front(s);
    }

    pub(super) fn finish_stripe(&mut self, s: u32, sq: &mut dyn SqeSink) {
        let op = *self.stripes.get(s);
        self.release(&op);
        self.finish_stripe_released(s, sq);
    }

    pub(super) fn finish_stripe_released(&mut self, s: u32, sq: &mut dyn SqeSink) {
        let op = self.stripes.remove(s);
        // Write failures only fail the host I/O when redundancy is gone.
        if op.failed && !self.health.online() {
            self.fail_parent(op.parent, -libc::EIO);
        }
        self.parents.get_mut(op.parent).pending -= 1;
        self.pump(op.parent, sq);
        self.finish_parent_if_done(op.parent, sq);
        self.retry_waiting(sq);
    }

    /// Keep one resync stripe in flight if this channel drives the resync.
    pub(super) fn drive_resync(&mut self, sq: &mut dyn SqeSink) {
        if self.resync_inflight || !self.resync.active() {
            return;
        }
        if !self.resync_driver {
            self.resync_driver = self
                .resync
                .driver
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        }
        if !self.resync_driver {
            return;
        }
        // Skip work items past the last row (the last dirty region may be partial).
        while let Some(item) = self.resync.claim() {
            if let Some((group, row)) = self.resync.locate(item) {
                let w = self.whole_row(group, row);
                if self.start_internal(Job::Resync, w, StripeKind::Resync, sq) {
                    self.resync_inflight = true;
                } else {
                    self.resync.next.store(item, Ordering::Relaxed);
                }
                return;
            }
            self.resync_stripe_done();
        }
    }

    /// Start a stripe op the volume runs for itself. False when the parent table is full.
    pub(super) fn start_internal(
        &mut self,
        job: Job,
        w: StripeWrite,
        kind: StripeKind,
        sq: &mut dyn SqeSink,
    ) -> bool {
        let parent = Parent {
            user_data: 0,
            op: BdevOp::Write,
            buf: std::ptr::null_mut(),
            buf_index: None,
            ok: 0,
            result: 0,
            pending: 0,
            io_start: 0,
            cursor: 0,
            end: 0,
            retry: false,
            job,
            locks: (0, 0),
            regions: None,
        };
        let Some(p) = self.parents.insert(parent) else {
            return false;
        };
        self.start_stripe_op(p, w, kind, sq);
        // A row op that had nothing to do (a scrub row it cannot check) finished its
        // parent already.
        if self.parents.contains(p) {
            self.finish_parent_if_done(p, sq);
        }
        true
    }

    /// A stripe op over every row of one stripe (or mirror strip row) of a group.
    pub(super) fn whole_row(&self, group: usize, row: u64) -> StripeWrite {
        StripeWrite {
            group,
            stripe: row,
            k: self.layout.data_per_stripe().min(MAX_DATA),
            written: [Rows::default(); MAX_DATA],
            host_block: [0; MAX_DATA],
            rows: Rows {
                start: 0,
                end: self.layout.strip_blocks,
            },
        }
    }

    pub(super) fn resync_stripe_done(&mut self) {
        self.resync_inflight = false;
        let done = self.resync.done.fetch_add(1, Ordering::AcqRel) + 1;
        if done == self.resync.total.load(Ordering::Relaxed) {
            tracing::info!(items = done, "resynchronisation finished");
        }
    }

    pub(super) fn retry_waiting(&mut self, sq: &mut dyn SqeSink) {
        for _ in 0..self.waiting.len() {
            let s = self.waiting.pop_front().unwrap();
            if !self.try_start(s, sq) {
                self.waiting.push_back(s);
            }
        }
    }
}
