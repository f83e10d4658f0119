//! The stretched volume: a local volume plus the peer site's copy, as one block device.
//!
//! Write ordering: while both sites are in sync, one site (the leader) orders every write.
//! Its channel takes the region locks of the write (64 KiB units, shared by all reactors)
//! and writes the local copy and the peer's replica together; the write is acknowledged
//! when both have it. The other site forwards each write to the leader's forward
//! namespace and acknowledges it when the leader does: the leader has then written this
//! site's replica too. Overlapping writes, wherever they arrive, are therefore applied in
//! the same order to both copies. Reads are served by the local copy.
//!
//! Failure: a peer write that fails leaves its region dirty and its host write waiting
//! for the controller's verdict: Solo acknowledges it (the local copy has it, the dirty
//! map records what the peer misses), Fenced refuses it. A forwarded write that fails is
//! written locally once Solo.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::dirty::REGION;
use super::{Mode, SiteShared, LOCK_UNIT};
use crate::bdev::{
    Bdev, BdevChannel, BdevInfo, BdevIo, BdevOp, ChildRoute, Completions, FileRegistry, SqeSink,
    Submitted,
};
use crate::reactor::token::{Kind, Token};
use crate::util::aligned::AlignedRegion;
use crate::util::bucket::TokenBucket;
use crate::util::slab::Slab;

/// Host I/Os a channel tracks at once (beyond them, submissions wait in the reactor).
const MAX_OPS: usize = 4096;
/// The errno of I/O refused because this site may not serve: the execution layer turns it
/// into ANA Inaccessible, so the host retries on the other site's path.
pub const REFUSED: i32 = -libc::ESTALE;

const LOCAL: usize = 0;
const REPLICA: usize = 1;
const FORWARD: usize = 2;

pub struct StretchBdev {
    info: BdevInfo,
    origin: Origin,
    local: Arc<dyn Bdev>,
    replica: Arc<dyn Bdev>,
    forward: Arc<dyn Bdev>,
    pub shared: Arc<SiteShared>,
}

impl std::fmt::Debug for StretchBdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StretchBdev({})", self.info.name)
    }
}

impl StretchBdev {
    /// `replica`: the peer's copy (its local volume); `forward`: the peer's stretched
    /// volume, where writes go when the peer orders them.
    pub fn new(
        name: &str,
        local: Arc<dyn Bdev>,
        replica: Arc<dyn Bdev>,
        forward: Arc<dyn Bdev>,
        shared: Arc<SiteShared>,
    ) -> std::io::Result<StretchBdev> {
        let bytes = local.num_blocks() * local.block_size() as u64;
        for (what, d) in [("replica", &replica), ("forward", &forward)] {
            if d.num_blocks() * d.block_size() as u64 != bytes
                || d.block_size() != local.block_size()
            {
                return Err(std::io::Error::other(format!(
                    "stretched volume {name}: the peer's {what} namespace has {} blocks of {} bytes, the local volume {} of {}",
                    d.num_blocks(),
                    d.block_size(),
                    local.num_blocks(),
                    local.block_size()
                )));
            }
        }
        let info = BdevInfo {
            name: name.to_string(),
            block_size: local.block_size(),
            num_blocks: local.num_blocks(),
        };
        Ok(StretchBdev {
            info,
            origin: Origin::Host,
            local,
            replica,
            forward,
            shared,
        })
    }

    /// The same volume as the peer sees it through the link (namespace 2): it takes the
    /// writes the peer forwards for this site to order, and nothing else.
    pub fn peer_view(&self) -> StretchBdev {
        let info = BdevInfo {
            name: format!("{}:forward", self.info.name),
            ..self.info.clone()
        };
        StretchBdev {
            info,
            origin: Origin::Peer,
            local: self.local.clone(),
            replica: self.replica.clone(),
            forward: self.forward.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl Bdev for StretchBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(
        &self,
        files: &mut dyn FileRegistry,
        route: ChildRoute,
    ) -> std::io::Result<Box<dyn BdevChannel>> {
        let legs = [&self.local, &self.replica, &self.forward];
        let legs: Vec<Box<dyn BdevChannel>> = legs
            .iter()
            .enumerate()
            .map(|(i, d)| d.open_channel(files, route.member(i)))
            .collect::<Result<_, _>>()?;
        Ok(Box::new(StretchChannel {
            origin: self.origin,
            route,
            bytes: self.info.num_blocks * self.info.block_size as u64,
            shared: self.shared.clone(),
            legs,
            ops: Slab::with_capacity(MAX_OPS),
            held: VecDeque::with_capacity(MAX_OPS),
            leg_done: VecDeque::with_capacity(MAX_OPS),
            scratch: Vec::with_capacity(MAX_OPS),
            parked: Vec::with_capacity(MAX_OPS),
            copy: CopyDriver::new()?,
        }))
    }
}

/// How an I/O is carried out at this site now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Local copy only, nothing to track (reads).
    Local,
    /// Region locks, then the local copy and the peer's replica.
    Ordered,
    /// To the peer, which orders it.
    Forward,
    /// Local copy, region marked dirty.
    Solo,
    Hold,
    Refuse,
}

/// Who sent an I/O to the stretched volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A host, through this site's subsystem.
    Host,
    /// The peer site forwarding a write for this site to order (link namespace 2).
    Peer,
}

fn route_of(op: BdevOp, mode: Mode, leader: bool, quiesced: bool, origin: Origin) -> Route {
    let writes = op != BdevOp::Read;
    if origin == Origin::Peer {
        // Only a site that orders takes the peer's writes; a late one from an association
        // that was given up (after a cut) finds this site alone or fenced and is refused.
        return match mode {
            Mode::Suspended => Route::Hold,
            _ if !writes => Route::Refuse,
            _ if quiesced => Route::Hold,
            Mode::Mirrored if leader => Route::Ordered,
            Mode::Source => Route::Ordered,
            _ => Route::Refuse,
        };
    }
    match mode {
        Mode::Suspended => Route::Hold,
        Mode::Starting | Mode::Fenced | Mode::Target => Route::Refuse,
        _ if !writes => Route::Local,
        _ if quiesced => Route::Hold,
        Mode::Mirrored if leader => Route::Ordered,
        Mode::Mirrored => Route::Forward,
        Mode::Source => Route::Ordered,
        Mode::Solo => Route::Solo,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting to be routed (mode undecided, quiesced, or its region locks busy).
    Waiting,
    Running,
    /// The peer leg failed: waiting for the controller's verdict.
    Verdict,
}

struct Op {
    io: BdevIo,
    route: Route,
    stage: Stage,
    pending: u8,
    local_res: i32,
    peer_res: i32,
    locked: Option<(u64, u32)>,
    started: Instant,
}

/// The background copy of dirty regions to the peer (one region in flight).
struct CopyDriver {
    is_driver: bool,
    buf: AlignedRegion,
    /// The region being copied and its lock range.
    region: Option<(u64, (u64, u32))>,
    cursor: u64,
    bucket: TokenBucket,
}

impl CopyDriver {
    fn new() -> std::io::Result<CopyDriver> {
        Ok(CopyDriver {
            is_driver: false,
            buf: AlignedRegion::new(0)?,
            region: None,
            cursor: 0,
            bucket: TokenBucket::default(),
        })
    }
}

/// Tags of the channel's own leg I/Os: op id, leg; the copy uses COPY_TAG.
const COPY_TAG: u64 = u32::MAX as u64;

fn leg_tag(op: u32, leg: usize) -> u64 {
    (op as u64) << 2 | leg as u64
}

pub struct StretchChannel {
    origin: Origin,
    route: ChildRoute,
    bytes: u64,
    shared: Arc<SiteShared>,
    /// Local volume, peer replica, peer forward.
    legs: Vec<Box<dyn BdevChannel>>,
    ops: Slab<Op>,
    held: VecDeque<u32>,
    /// Leg completions not yet processed: (tag, result).
    leg_done: VecDeque<(u64, i32)>,
    /// Completions the legs hand back, sorted into ours and pass-through.
    scratch: Completions,
    /// Host I/Os that finished while another was being submitted: handed back next poll.
    parked: Completions,
    copy: CopyDriver,
}

impl StretchChannel {
    fn lock_range(io: &BdevIo) -> (u64, u32) {
        let first = io.offset / LOCK_UNIT;
        let last = (io.offset + (io.len as u64).max(1) - 1) / LOCK_UNIT;
        (first, (last - first + 1) as u32)
    }

    fn expect(op: BdevOp, len: u32) -> i32 {
        if matches!(op, BdevOp::Read | BdevOp::Write) {
            len as i32
        } else {
            0
        }
    }

    fn leg_io(&self, io: &BdevIo, tag: u64) -> BdevIo {
        BdevIo {
            user_data: self.route.token(tag),
            ..*io
        }
    }

    fn submit_leg(&mut self, leg: usize, io: BdevIo, tag: u64, sq: &mut dyn SqeSink) {
        let io = self.leg_io(&io, tag);
        if let Submitted::Done(res) = self.legs[leg].submit(&io, sq) {
            self.leg_done.push_back((tag, res));
        }
    }

    /// Try to start op `id` by the current mode; false if it must keep waiting.
    fn start(&mut self, id: u32, sq: &mut dyn SqeSink) -> bool {
        let sh = &self.shared;
        let op = self.ops.get_mut(id);
        let route = route_of(
            op.io.op,
            sh.mode(),
            sh.is_leader(),
            sh.quiesced(),
            self.origin,
        );
        match route {
            Route::Hold => return false,
            Route::Refuse => {
                sh.refused.fetch_add(1, Ordering::Relaxed);
                self.leg_done.push_back((leg_tag(id, LOCAL), REFUSED));
                op.pending = 1;
            }
            Route::Local => {
                op.pending = 1;
                let io = op.io;
                self.submit_leg(LOCAL, io, leg_tag(id, LOCAL), sq);
            }
            Route::Ordered => {
                let (first, count) = if op.io.op == BdevOp::Flush {
                    (0, 0)
                } else {
                    Self::lock_range(&op.io)
                };
                if count > 0 && !sh.locks.try_lock_range(first, count) {
                    return false;
                }
                op.locked = (count > 0).then_some((first, count));
                op.pending = 2;
                sh.peer_writes_in_flight.fetch_add(1, Ordering::AcqRel);
                let io = op.io;
                self.submit_leg(LOCAL, io, leg_tag(id, LOCAL), sq);
                self.submit_leg(REPLICA, io, leg_tag(id, REPLICA), sq);
            }
            Route::Forward => {
                op.pending = 1;
                sh.peer_writes_in_flight.fetch_add(1, Ordering::AcqRel);
                let io = op.io;
                self.submit_leg(FORWARD, io, leg_tag(id, FORWARD), sq);
            }
            Route::Solo => {
                if op.io.op != BdevOp::Flush {
                    sh.dirty.mark(op.io.offset, op.io.len as u64);
                }
                sh.solo_writes.fetch_add(1, Ordering::Relaxed);
                op.pending = 1;
                let io = op.io;
                self.submit_leg(LOCAL, io, leg_tag(id, LOCAL), sq);
            }
        }
        let op = self.ops.get_mut(id);
        op.route = route;
        op.stage = Stage::Running;
        true
    }

    fn on_leg(&mut self, tag: u64, res: i32, done: &mut Completions, sq: &mut dyn SqeSink) {
        if tag == COPY_TAG || tag == COPY_TAG + 1 {
            return self.on_copy(tag == COPY_TAG, res, sq);
        }
        let (id, leg) = ((tag >> 2) as u32, (tag & 3) as usize);
        let op = self.ops.get_mut(id);
        match leg {
            LOCAL => op.local_res = res,
            _ => op.peer_res = res,
        }
        op.pending -= 1;
        if op.pending > 0 {
            return;
        }
        self.leg_ops_done(id, done);
    }

    /// Every leg of op `id` has come back.
    fn leg_ops_done(&mut self, id: u32, done: &mut Completions) {
        let sh = self.shared.clone();
        let op = self.ops.get_mut(id);
        if let Some((first, count)) = op.locked.take() {
            sh.locks.unlock_range(first, count);
        }
        let expect = Self::expect(op.io.op, op.io.len);
        let peer_ok = op.peer_res == expect;
        match op.route {
            Route::Ordered | Route::Forward => {
                sh.peer_writes_in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
        match op.route {
            Route::Ordered if op.local_res != expect => self.finish(id, -libc::EIO, done),
            Route::Ordered if peer_ok => {
                sh.mirrored_writes
                    .record(op.started.elapsed().as_micros() as u64);
                self.finish(id, expect, done)
            }
            Route::Forward if peer_ok => {
                sh.mirrored_writes
                    .record(op.started.elapsed().as_micros() as u64);
                self.finish(id, expect, done)
            }
            Route::Ordered | Route::Forward => {
                // The peer missed it (or may have): the local copy is what counts now.
                crate::warn_limited!(
                    volume = sh.name,
                    res = op.peer_res,
                    "write to the peer site failed"
                );
                if op.io.op != BdevOp::Flush {
                    sh.dirty.mark(op.io.offset, op.io.len as u64);
                }
                sh.peer_failed.store(true, Ordering::Release);
                op.stage = Stage::Verdict;
                self.held.push_back(id);
            }
            Route::Refuse => self.finish(id, REFUSED, done),
            Route::Local | Route::Solo => {
                let res = if op.local_res == expect {
                    expect
                } else if op.local_res == REFUSED {
                    REFUSED
                } else {
                    op.local_res.min(-1)
                };
                self.finish(id, res, done)
            }
            Route::Hold => unreachable!("held ops are not running"),
        }
    }

    /// A peer leg failed: once the controller decided, acknowledge (Solo: the write is in
    /// the local copy, or is written there now for a forwarded one) or refuse (Fenced).
    fn verdict(&mut self, id: u32, done: &mut Completions, sq: &mut dyn SqeSink) -> bool {
        let op = self.ops.get_mut(id);
        let expect = Self::expect(op.io.op, op.io.len);
        match self.shared.mode() {
            Mode::Solo | Mode::Source if op.route == Route::Forward => {
                // The write never reached a copy this site can vouch for: write it here.
                op.stage = Stage::Waiting;
                self.start(id, sq)
            }
            Mode::Solo | Mode::Source => {
                self.finish(id, expect, done);
                true
            }
            Mode::Fenced | Mode::Target | Mode::Starting => {
                self.shared.refused.fetch_add(1, Ordering::Relaxed);
                self.finish(id, REFUSED, done);
                true
            }
            Mode::Mirrored | Mode::Suspended => false,
        }
    }

    fn finish(&mut self, id: u32, res: i32, done: &mut Completions) {
        let op = self.ops.remove(id);
        done.push((op.io.user_data, res));
    }

    /// Retry held ops in order: routing (mode, quiesce, locks) and verdicts.
    fn retry_held(&mut self, done: &mut Completions, sq: &mut dyn SqeSink) {
        for _ in 0..self.held.len() {
            let id = self.held.pop_front().unwrap();
            let ready = match self.ops.get(id).stage {
                Stage::Waiting => self.start(id, sq),
                Stage::Verdict => self.verdict(id, done, sq),
                Stage::Running => true,
            };
            if !ready && self.ops.contains(id) {
                self.held.push_back(id);
            }
        }
    }

    /// Sort what the legs handed back: our own leg I/Os, or pass-through completions.
    fn take_leg_completions(&mut self, out: &mut Completions, done: &mut Completions) {
        for (user_data, res) in out.drain(..) {
            match Token::decode(user_data) {
                Some(t)
                    if t.kind == Kind::Child
                        && t.conn == self.route.index
                        && t.child_tag() >= self.route.base
                        && t.child_tag() - self.route.base < self.route.own_tags() =>
                {
                    self.leg_done
                        .push_back((t.child_tag() - self.route.base, res));
                }
                _ => done.push((user_data, res)),
            }
        }
    }

    fn drain(&mut self, done: &mut Completions, sq: &mut dyn SqeSink) {
        while let Some((tag, res)) = self.leg_done.pop_front() {
            self.on_leg(tag, res, done, sq);
        }
    }

    // ----------------------------------------------------------------- resync copy

    /// While this site is the resync source: copy the next dirty region to the peer.
    fn drive_copy(&mut self, sq: &mut dyn SqeSink) {
        // Checked every loop turn: nothing to do unless this site is the resync source.
        if self.shared.mode() != Mode::Source
            || self.shared.quiesced()
            || self.copy.region.is_some()
        {
            return;
        }
        let sh = self.shared.clone();
        if !self.copy.is_driver {
            self.copy.is_driver = sh
                .copy_driver
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
            if !self.copy.is_driver {
                return;
            }
            match AlignedRegion::new(REGION as usize) {
                Ok(b) => self.copy.buf = b,
                Err(_) => return,
            }
        }
        if !self.copy.bucket.take(
            sh.resync_rate.load(Ordering::Relaxed) as f64,
            REGION as f64,
            0.05,
        ) {
            return;
        }
        let Some(region) = sh.dirty.take_next(self.copy.cursor) else {
            return;
        };
        let offset = region * REGION;
        let len = REGION.min(self.bytes - offset);
        let io = BdevIo {
            op: BdevOp::Read,
            offset,
            len: len as u32,
            buf: self.copy.buf.as_ptr(),
            buf_index: None,
            user_data: 0,
        };
        let range = Self::lock_range(&io);
        if !sh.locks.try_lock_range(range.0, range.1) {
            sh.dirty.set(region);
            return;
        }
        sh.copying.store(true, Ordering::Release);
        self.copy.region = Some((region, range));
        self.copy.cursor = region + 1;
        self.submit_leg(LOCAL, io, COPY_TAG, sq);
    }

    fn on_copy(&mut self, read_done: bool, res: i32, sq: &mut dyn SqeSink) {
        let (region, range) = self.copy.region.expect("a copy is in flight");
        let offset = region * REGION;
        let len = REGION.min(self.bytes - offset);
        if res != len as i32 {
            // Not copied: the region stays dirty; a failed peer write means the peer is lost.
            self.shared.dirty.set(region);
            if !read_done {
                self.shared.peer_failed.store(true, Ordering::Release);
            }
            self.shared.locks.unlock_range(range.0, range.1);
            self.copy.region = None;
            self.shared.copying.store(false, Ordering::Release);
            return;
        }
        if read_done {
            let io = BdevIo {
                op: BdevOp::Write,
                offset,
                len: len as u32,
                buf: self.copy.buf.as_ptr(),
                buf_index: None,
                user_data: 0,
            };
            return self.submit_leg(REPLICA, io, COPY_TAG + 1, sq);
        }
        self.shared.resync_bytes.fetch_add(len, Ordering::Relaxed);
        self.shared.locks.unlock_range(range.0, range.1);
        self.copy.region = None;
        self.shared.copying.store(false, Ordering::Release);
    }
}

impl BdevChannel for StretchChannel {
    fn submit(&mut self, io: &BdevIo, sq: &mut dyn SqeSink) -> Submitted {
        let op = Op {
            io: *io,
            route: Route::Hold,
            stage: Stage::Waiting,
            pending: 0,
            local_res: 0,
            peer_res: 0,
            locked: None,
            started: Instant::now(),
        };
        let Some(id) = self.ops.insert(op) else {
            return Submitted::Done(-libc::EBUSY);
        };
        // Later ops wait behind held ones, so overlapping writes keep their order.
        if !self.held.is_empty() || !self.start(id, sq) {
            self.held.push_back(id);
        }
        let mut parked = std::mem::take(&mut self.parked);
        self.drain(&mut parked, sq);
        let own = parked
            .iter()
            .rposition(|&(ud, _)| ud == io.user_data)
            .map(|i| parked.swap_remove(i).1);
        self.parked = parked;
        match own {
            Some(res) => Submitted::Done(res),
            None => Submitted::Queued,
        }
    }

    fn child_complete(&mut self, tag: u64, res: i32, sq: &mut dyn SqeSink, done: &mut Completions) {
        match self.route.member_of(tag) {
            Some((leg, leg_tag)) => {
                let mut out = std::mem::take(&mut self.scratch);
                self.legs[leg].child_complete(leg_tag, res, sq, &mut out);
                self.take_leg_completions(&mut out, done);
                self.scratch = out;
            }
            None => self.leg_done.push_back((tag, res)),
        }
        self.drain(done, sq);
    }

    fn needs_polling(&self) -> bool {
        true
    }

    fn poll(&mut self, sq: &mut dyn SqeSink, done: &mut Completions) -> bool {
        let mut waiting = false;
        let mut out = std::mem::take(&mut self.scratch);
        for leg in 0..self.legs.len() {
            waiting |= self.legs[leg].poll(sq, &mut out);
        }
        self.take_leg_completions(&mut out, done);
        self.scratch = out;
        done.append(&mut self.parked);
        self.retry_held(done, sq);
        self.drive_copy(sq);
        self.drain(done, sq);
        let mode = self.shared.mode();
        let lock_wait = mode != Mode::Suspended
            && !self.shared.quiesced()
            && self
                .held
                .iter()
                .any(|&id| self.ops.get(id).stage == Stage::Waiting);
        let copying = self.copy.is_driver && mode == Mode::Source && self.shared.dirty.count() > 0;
        waiting || lock_wait || copying || !self.parked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::site::dirty::DirtyMap;

    #[test]
    fn routes_follow_the_mode() {
        use BdevOp::*;
        assert_eq!(
            route_of(Read, Mode::Mirrored, false, false, Origin::Host),
            Route::Local
        );
        assert_eq!(
            route_of(Write, Mode::Mirrored, true, false, Origin::Host),
            Route::Ordered
        );
        assert_eq!(
            route_of(Write, Mode::Mirrored, false, false, Origin::Host),
            Route::Forward
        );
        assert_eq!(
            route_of(Write, Mode::Mirrored, true, true, Origin::Host),
            Route::Hold,
            "a hand-over holds writes"
        );
        assert_eq!(
            route_of(Read, Mode::Mirrored, true, true, Origin::Host),
            Route::Local,
            "but not reads"
        );
        assert_eq!(
            route_of(Write, Mode::Source, false, false, Origin::Host),
            Route::Ordered,
            "the resync source orders"
        );
        assert_eq!(
            route_of(Discard, Mode::Solo, false, false, Origin::Host),
            Route::Solo
        );
        for m in [Mode::Starting, Mode::Fenced, Mode::Target] {
            assert_eq!(
                route_of(Read, m, true, false, Origin::Host),
                Route::Refuse,
                "{m:?}"
            );
            assert_eq!(
                route_of(Write, m, true, false, Origin::Host),
                Route::Refuse,
                "{m:?}"
            );
        }
        assert_eq!(
            route_of(Read, Mode::Suspended, true, false, Origin::Host),
            Route::Hold,
            "no stale reads while the witness decides"
        );
        assert_eq!(
            route_of(Write, Mode::Mirrored, true, false, Origin::Peer),
            Route::Ordered,
            "the leader orders forwarded writes"
        );
        assert_eq!(
            route_of(Write, Mode::Mirrored, false, false, Origin::Peer),
            Route::Refuse,
            "a follower never forwards again"
        );
        assert_eq!(
            route_of(Write, Mode::Solo, false, false, Origin::Peer),
            Route::Refuse,
            "a late forwarded write after a cut is refused"
        );
        assert_eq!(
            route_of(Read, Mode::Mirrored, true, false, Origin::Peer),
            Route::Refuse
        );
    }

    #[test]
    fn lock_ranges_cover_the_units_touched() {
        let io = |offset: u64, len: u32| BdevIo {
            op: BdevOp::Write,
            offset,
            len,
            buf: std::ptr::null_mut(),
            buf_index: None,
            user_data: 0,
        };
        assert_eq!(StretchChannel::lock_range(&io(0, 4096)), (0, 1));
        assert_eq!(
            StretchChannel::lock_range(&io(LOCK_UNIT - 512, 1024)),
            (0, 2)
        );
        assert_eq!(
            StretchChannel::lock_range(&io(3 * LOCK_UNIT, LOCK_UNIT as u32)),
            (3, 1)
        );
        assert_eq!(DirtyMap::span(0, REGION), 0..1);
    }
}

/// This site's copy as the peer writes it (link namespace 1): reads always, writes only
/// while the peer orders this site's writes (mirrored follower) or resyncs it (target).
/// A write that a given-up association delivers late (after a cut, with this site alone)
/// is refused, so it cannot overwrite newer data.
pub struct ReplicaView {
    info: BdevInfo,
    local: Arc<dyn Bdev>,
    shared: Arc<SiteShared>,
}

impl std::fmt::Debug for ReplicaView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplicaView({})", self.info.name)
    }
}

impl ReplicaView {
    pub fn new(stretch: &StretchBdev) -> ReplicaView {
        let info = BdevInfo {
            name: format!("{}:replica", stretch.info.name),
            ..stretch.info.clone()
        };
        ReplicaView {
            info,
            local: stretch.local.clone(),
            shared: stretch.shared.clone(),
        }
    }
}

/// Whether the peer may write this site's copy now. A follower that has just finished
/// resyncing the leader holds its own writes (quiesced) while the leader starts ordering
/// again: the leader's writes are already the only ones then.
fn replica_writable(mode: Mode, leader: bool, quiesced: bool) -> bool {
    match mode {
        Mode::Target => true,
        Mode::Mirrored => !leader,
        Mode::Source => !leader && quiesced,
        _ => false,
    }
}

impl Bdev for ReplicaView {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(
        &self,
        files: &mut dyn FileRegistry,
        route: ChildRoute,
    ) -> std::io::Result<Box<dyn BdevChannel>> {
        Ok(Box::new(ReplicaChannel {
            inner: self.local.open_channel(files, route)?,
            shared: self.shared.clone(),
        }))
    }
}

struct ReplicaChannel {
    inner: Box<dyn BdevChannel>,
    shared: Arc<SiteShared>,
}

impl BdevChannel for ReplicaChannel {
    fn submit(&mut self, io: &BdevIo, sq: &mut dyn SqeSink) -> Submitted {
        if io.op != BdevOp::Read {
            if !replica_writable(
                self.shared.mode(),
                self.shared.is_leader(),
                self.shared.quiesced(),
            ) {
                self.shared.refused.fetch_add(1, Ordering::Relaxed);
                return Submitted::Done(REFUSED);
            }
            self.shared.recent.note(io.offset, io.len as u64);
        }
        self.inner.submit(io, sq)
    }

    fn child_complete(&mut self, tag: u64, res: i32, sq: &mut dyn SqeSink, done: &mut Completions) {
        self.inner.child_complete(tag, res, sq, done)
    }

    fn needs_polling(&self) -> bool {
        self.inner.needs_polling()
    }

    fn poll(&mut self, sq: &mut dyn SqeSink, done: &mut Completions) -> bool {
        self.inner.poll(sq, done)
    }

    fn member_stats(&mut self, out: &mut Vec<crate::stats::MemberStats>, reset: bool) {
        self.inner.member_stats(out, reset)
    }
}

#[cfg(test)]
mod replica_tests {
    use super::*;

    #[test]
    fn the_peer_writes_this_copy_only_while_it_orders_or_resyncs_it() {
        assert!(replica_writable(Mode::Mirrored, false, false));
        assert!(replica_writable(Mode::Target, true, false));
        for m in [
            Mode::Starting,
            Mode::Suspended,
            Mode::Solo,
            Mode::Fenced,
            Mode::Source,
        ] {
            assert!(!replica_writable(m, false, false), "{m:?}");
        }
        assert!(
            !replica_writable(Mode::Mirrored, true, false),
            "the leader's copy is written by the leader only"
        );
        assert!(
            replica_writable(Mode::Source, false, true),
            "a follower handing the order back to the leader"
        );
        assert!(!replica_writable(Mode::Source, true, true));
    }
}
