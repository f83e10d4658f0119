//! Reactors: one pinned thread per configured core, each owning an io_uring through which
//! all of its socket and block I/O flows, a registered buffer pool, an inbox with an
//! eventfd wake-up and a periodic tick for keep-alive. Nothing on the data path is shared.

pub mod bufpool;
pub mod token;

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use tracing::{debug, info, warn};

use crate::bdev::{Bdev, BdevChannel, Completions, FileRegistry, SqeSink};
use crate::nvmf::conn::{Conn, Env};
use crate::nvmf::subsystem::Target;
use crate::nvmf::TransportLimits;
use crate::stats::{ReactorRecorder, Snapshot};
use crate::util::clock::Stamp;
use bufpool::{BufferPool, PoolConfig};
use token::{Kind, Token};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PollMode {
    /// Never sleep: lowest latency, one whole core.
    Busy,
    /// Spin for a while after the last event, then sleep in io_uring_enter.
    Adaptive,
}

/// Adaptive polling: how long a reactor keeps polling after its last event before it
/// sleeps in the kernel. Time, not loop turns: a turn's cost changes with the code.
const ADAPTIVE_SPIN_NS: u64 = 200_000;
const TICK: Duration = Duration::from_millis(100);
const RING_ENTRIES: u32 = 4096;
/// Device submissions a turn may hold back (`Staging`) before queueing them directly.
const STAGED_ENTRIES: usize = 2 * RING_ENTRIES as usize;
const CQE_BATCH: usize = 256;
/// How long a stopping reactor waits for its connections' I/O to drain.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

pub enum Msg {
    /// Take over a freshly accepted connection.
    Adopt { sock: TcpStream, port_id: u16 },
    /// Send copies of the statistics (and reset them when asked).
    Stats {
        reset: bool,
        reply: Sender<Snapshot>,
    },
}

/// A reactor's mailbox: messages plus an eventfd that wakes it from io_uring_enter.
#[derive(Clone)]
pub struct Mailbox {
    tx: Sender<Msg>,
    eventfd: Arc<OwnedFd>,
}

impl Mailbox {
    pub fn send(&self, m: Msg) {
        if self.tx.send(m).is_ok() {
            self.wake();
        }
    }

    pub fn wake(&self) {
        crate::util::stopper::signal(&self.eventfd);
    }
}

pub fn mailbox() -> std::io::Result<(Mailbox, Receiver<Msg>)> {
    let eventfd = Arc::new(crate::util::stopper::eventfd()?);
    let (tx, rx) = crossbeam::channel::bounded(1024);
    Ok((Mailbox { tx, eventfd }, rx))
}

/// A reactor's resource use, published every tick for operators and leak checks.
#[derive(Debug, Default)]
pub struct ReactorStats {
    pub connections: AtomicUsize,
    pub buffers_in_use: AtomicUsize,
    /// Nanoseconds of loop turns that did work (events, submissions) and of turns that
    /// found nothing: the reactor's utilisation, whatever its polling mode. Published
    /// every tick.
    pub busy_ns: AtomicU64,
    pub idle_ns: AtomicU64,
}

/// What every reactor shares.
pub struct Shared {
    pub target: Arc<Target>,
    pub mailboxes: Vec<Mailbox>,
    pub stats: Vec<ReactorStats>,
    pub stop: AtomicBool,
    next_reactor: AtomicUsize,
}

impl Shared {
    pub fn new(target: Arc<Target>, mailboxes: Vec<Mailbox>) -> Self {
        let stats = mailboxes.iter().map(|_| ReactorStats::default()).collect();
        Shared {
            target,
            mailboxes,
            stats,
            stop: AtomicBool::new(false),
            next_reactor: AtomicUsize::new(0),
        }
    }

    /// Every reactor's statistics (each reset afterwards when `reset`). A reactor that does
    /// not answer within a second is left out.
    pub fn collect_stats(&self, reset: bool) -> Vec<Snapshot> {
        let replies: Vec<_> = self
            .mailboxes
            .iter()
            .map(|m| {
                let (tx, rx) = crossbeam::channel::bounded(1);
                m.send(Msg::Stats { reset, reply: tx });
                rx
            })
            .collect();
        replies
            .into_iter()
            .filter_map(|rx| rx.recv_timeout(Duration::from_secs(1)).ok())
            .collect()
    }

    /// Busy and idle polling seconds of every reactor, as of their last tick.
    pub fn utilisation(&self) -> Vec<(f64, f64)> {
        let secs = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e9;
        self.stats
            .iter()
            .map(|s| (secs(&s.busy_ns), secs(&s.idle_ns)))
            .collect()
    }

    /// (connections, pool buffers in use) summed over reactors, as of their last tick.
    pub fn resource_use(&self) -> (usize, usize) {
        self.stats.iter().fold((0, 0), |(c, b), s| {
            (
                c + s.connections.load(Ordering::Relaxed),
                b + s.buffers_in_use.load(Ordering::Relaxed),
            )
        })
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        for m in &self.mailboxes {
            m.wake();
        }
    }
}

/// Limits on connections that have not bound a queue yet, so that hosts that connect and
/// say nothing can neither hold their slots forever nor lock other hosts out.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    /// From accept to a bound queue (ICReq and Fabrics Connect).
    pub timeout: Duration,
    /// Connections in their handshake from one source address, per reactor; the oldest
    /// is closed when a newer one would exceed it.
    pub per_source: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            timeout: crate::nvmf::conn::HANDSHAKE_TIMEOUT,
            per_source: 32,
        }
    }
}

/// Accepted connections waiting for a slot freed by closing a connection in its handshake.
const MAX_WAITING_ADOPT: usize = 64;

pub struct ReactorConfig {
    pub index: usize,
    pub core: Option<usize>,
    pub mode: PollMode,
    pub limits: TransportLimits,
    pub pool: PoolConfig,
    pub max_connections: usize,
    pub handshake: HandshakeLimits,
    /// Listening sockets this reactor accepts on, with their port ids.
    pub listeners: Vec<(TcpListener, u16)>,
}

struct RingSq<'a>(&'a mut IoUring);

impl SqeSink for RingSq<'_> {
    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry references memory owned by a connection, the pool or
            // the reactor, all of which outlive the operation (see Conn::release).
            if unsafe { self.0.submission().push(&entry) }.is_ok() {
                return;
            }
            self.0.submit().expect("io_uring submit");
        }
    }
}

/// Device I/O started while a turn handles completions is held back and queued after the
/// turn's sends (`Reactor::end_of_turn`): members that finish inside the submission
/// (zram, cached files) then do their work after the responses already waiting have left
/// rather than before, which took a turn off every response's latency.
struct Staging {
    entries: Vec<squeue::Entry>,
    limit: usize,
    /// Held back while on; off during the end of a turn (sends go straight to the ring)
    /// and for the rest of a turn whose list filled up (what was held went first).
    on: bool,
}

impl Staging {
    fn new(limit: usize) -> Staging {
        Staging {
            entries: Vec::with_capacity(limit),
            limit,
            on: true,
        }
    }

    /// Queue what was held back on the ring, in order.
    fn release(&mut self, ring: &mut IoUring) {
        let mut sq = RingSq(ring);
        for e in self.entries.drain(..) {
            sq.push(e);
        }
    }
}

/// The ring as device I/O sees it during a turn: through `Staging` while it is on.
struct TurnSq<'a> {
    ring: &'a mut IoUring,
    staging: &'a mut Staging,
}

impl SqeSink for TurnSq<'_> {
    fn push(&mut self, entry: squeue::Entry) {
        if self.staging.on && self.staging.entries.len() == self.staging.limit {
            self.staging.release(self.ring);
            self.staging.on = false;
        }
        if self.staging.on {
            self.staging.entries.push(entry);
        } else {
            RingSq(self.ring).push(entry);
        }
    }
}

struct Files(Vec<RawFd>);

impl FileRegistry for Files {
    fn register(&mut self, fd: RawFd) -> Option<u32> {
        self.0.push(fd);
        Some(self.0.len() as u32 - 1)
    }
}

struct Reactor {
    index: usize,
    ring: IoUring,
    mode: PollMode,
    turns: TurnClock,
    pool: BufferPool,
    channels: Vec<Box<dyn BdevChannel>>,
    /// Indices of the channels that want `poll` on every turn (composite devices).
    polled: Vec<usize>,
    conns: Vec<Option<Box<Conn>>>,
    /// Source address of each connection slot's connection.
    peers: Vec<Option<std::net::IpAddr>>,
    generations: Vec<u16>,
    free_ids: Vec<u16>,
    active: Vec<u16>,
    listeners: Vec<(TcpListener, u16)>,
    handshake: HandshakeLimits,
    /// Accepted while every slot was taken, after closing one in its handshake.
    waiting_adopt: std::collections::VecDeque<(TcpStream, u16)>,
    inbox: Receiver<Msg>,
    eventfd: Arc<OwnedFd>,
    wake_buf: Box<[u8; 8]>,
    tick_ts: Box<types::Timespec>,
    shared: Arc<Shared>,
    limits: TransportLimits,
    /// Parent completions returned by composite devices, dispatched as a stack.
    child_done: Completions,
    staging: Staging,
    stats: ReactorRecorder,
}

thread_local! {
    static ON_REACTOR: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is a reactor (for allocation accounting in tests; reading it
/// never allocates).
pub fn on_reactor_thread() -> bool {
    ON_REACTOR.with(|r| r.get())
}

/// Run a reactor on the current thread until the target stops; `ready` hears once the
/// reactor is set up (errors are returned instead).
pub fn run(
    cfg: ReactorConfig,
    shared: Arc<Shared>,
    devices: &[Arc<dyn Bdev>],
    inbox: Receiver<Msg>,
    ready: Sender<Result<(), String>>,
) -> std::io::Result<()> {
    ON_REACTOR.with(|r| r.set(true));
    if let Some(core) = cfg.core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            warn!(reactor = cfg.index, core, "could not pin reactor to core");
        }
    }
    let mut r = Reactor::new(cfg, shared, devices, inbox)?;
    let _ = ready.send(Ok(()));
    r.event_loop();
    Ok(())
}

/// The reactor's ring. Completion work for sockets and files is deferred to this thread
/// (DEFER_TASKRUN) and flagged in the shared ring (TASKRUN_FLAG): no inter-processor
/// interrupt per completion, and a polling reactor enters the kernel only when the flag
/// says there is work. Measured: 4 KiB random reads on the null namespace went from about
/// 300K to 450K IOPS at QD32 and from 27K to 45K at QD1. Kernels before 6.1 lack it.
fn build_ring() -> std::io::Result<IoUring> {
    let deferred = IoUring::builder()
        .setup_clamp()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .build(RING_ENTRIES);
    deferred.or_else(|e| {
        warn!(error = %e, "io_uring without deferred task work (kernel older than 6.1?): completions cost an interrupt each");
        IoUring::builder().setup_clamp().build(RING_ENTRIES)
    })
}

impl Reactor {
    fn new(
        cfg: ReactorConfig,
        shared: Arc<Shared>,
        devices: &[Arc<dyn Bdev>],
        inbox: Receiver<Msg>,
    ) -> std::io::Result<Reactor> {
        let ring = build_ring()?;
        let mut pool = BufferPool::new(&cfg.pool)?;
        let max = cfg.max_connections.min(u16::MAX as usize - pool.capacity());
        // Table layout: the pool's buffers, then one entry per connection slot for that
        // connection's in-capsule buffers (filled in when a connection is adopted).
        let table = (pool.capacity() + max) as u32;
        let registered = ring
            .submitter()
            .register_buffers_sparse(table)
            .and_then(|()| {
                // SAFETY: the pool's regions live as long as the ring (both are reactor fields).
                unsafe {
                    ring.submitter()
                        .register_buffers_update(0, &pool.iovecs(), None)
                }
            });
        match registered {
            Ok(()) => pool.set_registered(true),
            Err(e) => {
                warn!(reactor = cfg.index, error = %e, "buffer registration failed; using unregistered buffers")
            }
        }
        let mut files = Files(Vec::new());
        let mut channels = Vec::with_capacity(devices.len());
        for (i, d) in devices.iter().enumerate() {
            // A device that cannot be opened any more (a volume left it out) fails its I/O.
            channels.push(
                d.open_channel(&mut files, crate::bdev::ChildRoute::top(i as u16))
                    .unwrap_or_else(|e| {
                        warn!(device = d.name(), error = %e, "cannot open device");
                        Box::new(crate::bdev::FailingChannel)
                    }),
            );
        }
        if !files.0.is_empty() {
            ring.submitter().register_files(&files.0)?;
        }
        let polled = (0..channels.len())
            .filter(|&d| channels[d].needs_polling())
            .collect();
        let eventfd = shared.mailboxes[cfg.index].eventfd.clone();
        let namespaces = shared
            .target
            .subsystems
            .iter()
            .map(|s| s.namespaces.len())
            .sum();
        Ok(Reactor {
            index: cfg.index,
            ring,
            mode: cfg.mode,
            turns: TurnClock::new(),
            pool,
            channels,
            polled,
            conns: (0..max).map(|_| None).collect(),
            peers: vec![None; max],
            generations: vec![0; max],
            free_ids: (0..max as u16).rev().collect(),
            active: Vec::with_capacity(max),
            listeners: cfg.listeners,
            handshake: cfg.handshake,
            waiting_adopt: std::collections::VecDeque::with_capacity(MAX_WAITING_ADOPT),
            inbox,
            eventfd,
            wake_buf: Box::new([0; 8]),
            tick_ts: Box::new(types::Timespec::from(TICK)),
            shared,
            limits: cfg.limits,
            child_done: Vec::with_capacity(4096),
            staging: Staging::new(STAGED_ENTRIES),
            stats: ReactorRecorder::new(namespaces),
        })
    }

    fn push(&mut self, e: squeue::Entry) {
        RingSq(&mut self.ring).push(e);
    }

    fn arm_accept(&mut self, listener: usize) {
        let fd = self.listeners[listener].0.as_raw_fd();
        let t = Token::new(Kind::Accept, 0, 0, listener as u32).encode();
        self.push(opcode::AcceptMulti::new(types::Fd(fd)).build().user_data(t));
    }

    /// Stop accepting: cancel the multishot accepts and close the listening sockets, so a
    /// host that tries to connect while the target drains is refused instead of being
    /// given a controller that the stop would cut off.
    fn stop_listening(&mut self) {
        for i in 0..self.listeners.len() {
            let t = Token::new(Kind::Accept, 0, 0, i as u32).encode();
            self.push(
                opcode::AsyncCancel::new(t)
                    .build()
                    .user_data(Token::new(Kind::Ignore, 0, 0, 0).encode()),
            );
        }
        if !self.listeners.is_empty() {
            let _ = self.ring.submit();
            info!(
                reactor = self.index,
                listeners = self.listeners.len(),
                "listeners closed: no new connections"
            );
        }
        // The ring keeps its own reference to a socket until the cancelled accept returns;
        // closing ours lets the kernel release the port once it has.
        self.listeners.clear();
    }

    fn arm_wakeup(&mut self) {
        let t = Token::new(Kind::Wakeup, 0, 0, 0).encode();
        let e = opcode::Read::new(
            types::Fd(self.eventfd.as_raw_fd()),
            self.wake_buf.as_mut_ptr(),
            8,
        )
        .build()
        .user_data(t);
        self.push(e);
    }

    fn arm_tick(&mut self) {
        let t = Token::new(Kind::Tick, 0, 0, 0).encode();
        let ts: *const types::Timespec = &*self.tick_ts;
        self.push(opcode::Timeout::new(ts).build().user_data(t));
    }

    fn event_loop(&mut self) {
        for i in 0..self.listeners.len() {
            self.arm_accept(i);
        }
        self.arm_wakeup();
        self.arm_tick();
        info!(reactor = self.index, mode = ?self.mode, "reactor running");
        let mut last_event = Stamp::now();
        let mut stopping: Option<Instant> = None;
        loop {
            let now = self.turns.start();
            let events = self.reap() + self.poll_channels();
            self.end_of_turn();
            if self.shared.stop.load(Ordering::Acquire) {
                let since = *stopping.get_or_insert_with(|| {
                    self.stop_listening();
                    self.close_all("target stopping");
                    Instant::now()
                });
                if self.active.is_empty() || since.elapsed() > DRAIN_LIMIT {
                    break;
                }
            }
            if events != 0 {
                last_event = now;
            }
            let sleep = self.mode == PollMode::Adaptive
                && events == 0
                && now.nanos_since(last_event) > ADAPTIVE_SPIN_NS;
            debug_assert!(
                self.staging.entries.is_empty(),
                "held-back I/O left unqueued"
            );
            let submit = !sleep && self.must_enter_kernel();
            self.turns.end(events != 0 || submit, sleep);
            let r = if sleep {
                self.ring.submit_and_wait(1)
            } else if submit {
                self.ring.submit()
            } else {
                Ok(0)
            };
            if let Err(e) = r {
                if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EBUSY) {
                    panic!("io_uring_enter failed: {e}");
                }
            }
        }
        info!(reactor = self.index, "reactor stopped");
    }

    /// While polling, enter the kernel only to submit or to flush an overflowed CQ:
    /// completions are read from the shared ring without a system call.
    fn must_enter_kernel(&mut self) -> bool {
        let mut sq = self.ring.submission();
        sq.sync();
        !sq.is_empty() || sq.cq_overflow() || sq.taskrun()
    }

    fn reap(&mut self) -> usize {
        // Copied out first (dispatch needs the ring); left uninitialised because zeroing
        // 4 KiB on every polling turn showed up as the top entry of the profile.
        let mut batch = [std::mem::MaybeUninit::<(u64, i32, u32)>::uninit(); CQE_BATCH];
        let mut n = 0;
        for cqe in self.ring.completion() {
            batch[n].write((cqe.user_data(), cqe.result(), cqe.flags()));
            n += 1;
            if n == CQE_BATCH {
                break;
            }
        }
        for slot in &batch[..n] {
            // SAFETY: the first n entries were written above.
            let (ud, res, flags) = unsafe { slot.assume_init() };
            self.dispatch(ud, res, flags);
        }
        n
    }

    fn dispatch(&mut self, user_data: u64, res: i32, flags: u32) {
        let Some(t) = Token::decode(user_data) else {
            warn!(user_data, "completion with unknown token");
            return;
        };
        match t.kind {
            Kind::Accept => self.on_accept(t.aux as usize, res, flags),
            Kind::Wakeup => {
                // Every message comes with a wakeup, so the inbox is read only then.
                self.drain_inbox();
                self.arm_wakeup();
            }
            Kind::Tick => {
                for i in 0..self.active.len() {
                    let id = self.active[i];
                    self.with_conn(id, None, |c, env| c.tick(env));
                }
                let st = &self.shared.stats[self.index];
                st.connections.store(self.active.len(), Ordering::Relaxed);
                st.buffers_in_use.store(
                    self.pool.capacity() - self.pool.free_count(),
                    Ordering::Relaxed,
                );
                self.turns.publish(st);
                self.drain_inbox();
                self.arm_tick();
            }
            Kind::Recv => self.conn_event(t, |c, env| c.on_recv(res, env)),
            Kind::Send => self.conn_event(t, |c, env| c.on_send(res, env)),
            Kind::Bdev => self.conn_event(t, |c, env| c.on_bdev_complete(t.aux as u16, res, env)),
            Kind::Child => self.on_child(t.conn as usize, t.child_tag(), res),
            Kind::Ignore => {}
        }
    }

    /// Let composite devices retry waiting work; returns how many are still waiting.
    fn poll_channels(&mut self) -> usize {
        let mut waiting = 0;
        for i in 0..self.polled.len() {
            let d = self.polled[i];
            let base = self.child_done.len();
            let Reactor {
                ring,
                channels,
                child_done,
                staging,
                ..
            } = self;
            waiting += channels[d].poll(&mut TurnSq { ring, staging }, child_done) as usize;
            while self.child_done.len() > base {
                let (user_data, r) = self.child_done.pop().unwrap();
                self.dispatch(user_data, r, 0);
            }
        }
        waiting
    }

    /// A composite device's member I/O finished; dispatch the parents it completes. The
    /// shared stack handles nested composites without allocating.
    fn on_child(&mut self, device: usize, tag: u64, res: i32) {
        let base = self.child_done.len();
        let Reactor {
            ring,
            channels,
            child_done,
            staging,
            ..
        } = self;
        channels[device].child_complete(tag, res, &mut TurnSq { ring, staging }, child_done);
        while self.child_done.len() > base {
            let (user_data, r) = self.child_done.pop().unwrap();
            self.dispatch(user_data, r, 0);
        }
    }

    fn conn_event(&mut self, t: Token, f: impl FnOnce(&mut Conn, &mut Env)) {
        if self.with_conn(t.conn, Some(t.generation), f).is_none() {
            crate::warn_limited!(
                conn = t.conn,
                "completion for a connection that no longer exists"
            );
        }
    }

    /// Run `f` on a live connection with the reactor's environment.
    fn with_conn<R>(
        &mut self,
        id: u16,
        generation: Option<u16>,
        f: impl FnOnce(&mut Conn, &mut Env) -> R,
    ) -> Option<R> {
        let Reactor {
            ring,
            pool,
            channels,
            conns,
            shared,
            limits,
            stats,
            staging,
            ..
        } = self;
        let conn = conns.get_mut(id as usize)?.as_mut()?;
        if generation.is_some_and(|g| g != conn.generation) {
            return None;
        }
        let mut sq = TurnSq { ring, staging };
        let mut env = Env {
            sq: &mut sq,
            pool,
            channels,
            target: &shared.target,
            limits,
            stats,
        };
        Some(f(conn, &mut env))
    }

    fn on_accept(&mut self, listener: usize, res: i32, flags: u32) {
        if self.stopping() {
            if res >= 0 {
                // SAFETY: a successful accept returns a new descriptor that we now own.
                drop(unsafe { OwnedFd::from_raw_fd(res) });
            }
            return;
        }
        if !cqueue::more(flags) {
            self.arm_accept(listener);
        }
        if res < 0 {
            crate::warn_limited!(error = %std::io::Error::from_raw_os_error(-res), "accept failed");
            return;
        }
        // SAFETY: a successful accept returns a new descriptor that we now own.
        let sock = unsafe { TcpStream::from_raw_fd(res) };
        let port_id = self.listeners[listener].1;
        let n = self.shared.mailboxes.len();
        let dest = self.shared.next_reactor.fetch_add(1, Ordering::Relaxed) % n;
        if dest == self.index {
            self.adopt(sock, port_id);
        } else {
            self.shared.mailboxes[dest].send(Msg::Adopt { sock, port_id });
        }
    }

    fn drain_inbox(&mut self) {
        while let Ok(m) = self.inbox.try_recv() {
            match m {
                Msg::Adopt { sock, port_id } => self.adopt(sock, port_id),
                Msg::Stats { reset, reply } => {
                    let _ = reply.send(self.snapshot(reset));
                }
            }
        }
    }

    /// Copies of this reactor's statistics (allocates: on request only), then reset them
    /// if asked.
    fn snapshot(&mut self, reset: bool) -> Snapshot {
        let mut members = Vec::new();
        for ch in self.channels.iter_mut() {
            ch.member_stats(&mut members, reset);
        }
        let snap = Snapshot {
            namespaces: self.stats.namespaces.clone(),
            members,
            reactor: self.stats.reactor_total(),
        };
        if reset {
            self.stats.reset();
        }
        snap
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire)
    }

    fn adopt(&mut self, sock: TcpStream, port_id: u16) {
        if self.stopping() {
            return;
        }
        let peer = sock.peer_addr().ok().map(|a| a.ip());
        self.limit_handshakes_from(peer);
        if !self.free_ids.is_empty() {
            return self.place(sock, port_id, peer);
        }
        // Full: a connection still in its handshake gives way, so hosts that connect and
        // say nothing can never lock a real host out.
        if self.waiting_adopt.len() < MAX_WAITING_ADOPT && self.evict_a_handshake() {
            self.waiting_adopt.push_back((sock, port_id));
        } else {
            crate::warn_limited!(
                reactor = self.index,
                ?peer,
                "connection limit reached: refusing connection"
            );
        }
    }

    /// Connections of this reactor in their handshake, from `peer` (every source: None).
    fn handshakes(&self, peer: Option<Option<std::net::IpAddr>>) -> impl Iterator<Item = u16> + '_ {
        self.active.iter().copied().filter(move |&id| {
            let c = self.conns[id as usize]
                .as_ref()
                .expect("active connections exist");
            c.in_handshake() && peer.is_none_or(|p| self.peers[id as usize] == p)
        })
    }

    fn oldest(&self, ids: impl Iterator<Item = u16>) -> Option<u16> {
        ids.min_by_key(|&id| {
            self.conns[id as usize]
                .as_ref()
                .expect("active connections exist")
                .created()
        })
    }

    /// A new connection from `peer`: if that source already holds its share of handshakes,
    /// its oldest one is closed.
    fn limit_handshakes_from(&mut self, peer: Option<std::net::IpAddr>) {
        if self.handshakes(Some(peer)).count() < self.handshake.per_source {
            return;
        }
        if let Some(id) = self.oldest(self.handshakes(Some(peer))) {
            crate::warn_limited!(
                reactor = self.index,
                ?peer,
                limit = self.handshake.per_source,
                "too many connections in their handshake from one source: closing the oldest"
            );
            self.with_conn(id, None, |c, _| {
                c.close("too many handshakes from its source")
            });
        }
    }

    /// Close the oldest handshake of the source holding the most; false if none is.
    fn evict_a_handshake(&mut self) -> bool {
        let mut per_source: Vec<(Option<std::net::IpAddr>, usize)> = Vec::new();
        for id in self.handshakes(None) {
            let p = self.peers[id as usize];
            match per_source.iter_mut().find(|(q, _)| *q == p) {
                Some((_, n)) => *n += 1,
                None => per_source.push((p, 1)),
            }
        }
        let Some(&(hog, _)) = per_source.iter().max_by_key(|(_, n)| *n) else {
            return false;
        };
        let Some(id) = self.oldest(self.handshakes(Some(hog))) else {
            return false;
        };
        crate::warn_limited!(reactor = self.index, peer = ?hog, "connection limit reached: closing the oldest connection in its handshake to make room");
        self.with_conn(id, None, |c, _| {
            c.close("evicted: connection limit reached during its handshake")
        });
        true
    }

    fn place(&mut self, sock: TcpStream, port_id: u16, peer: Option<std::net::IpAddr>) {
        let id = self.free_ids.pop().expect("caller checked for a free slot");
        let generation = self.generations[id as usize].wrapping_add(1);
        self.generations[id as usize] = generation;
        match Conn::new(sock, id, generation, port_id, &self.limits) {
            Ok(mut c) => {
                debug!(
                    reactor = self.index,
                    conn = id,
                    ?peer,
                    "connection accepted"
                );
                c.set_handshake_timeout(self.handshake.timeout);
                self.register_inline(&mut c);
                self.conns[id as usize] = Some(Box::new(c));
                self.peers[id as usize] = peer;
                self.active.push(id);
                self.with_conn(id, None, |c, env| c.start(env));
            }
            Err(e) => {
                warn!(error = %e, "could not set up connection");
                self.free_ids.push(id);
            }
        }
    }

    /// Give slots freed this turn to connections waiting for one.
    fn place_waiting(&mut self) {
        while !self.free_ids.is_empty() {
            let Some((sock, port_id)) = self.waiting_adopt.pop_front() else {
                return;
            };
            if self.stopping() {
                continue;
            }
            let peer = sock.peer_addr().ok().map(|a| a.ip());
            self.place(sock, port_id, peer);
        }
    }

    /// Flush every connection's output, then retire the ones that have finished.
    fn end_of_turn(&mut self) {
        // Sends and receives go on the ring ahead of the device I/O the turn held back.
        self.staging.on = false;
        let mut i = 0;
        while i < self.active.len() {
            let id = self.active[i];
            let finished = self.with_conn(id, None, |c, env| {
                c.flush(env);
                if c.is_finished() {
                    c.release(env);
                    true
                } else {
                    false
                }
            });
            if finished == Some(true) {
                self.unregister_inline(id);
                self.conns[id as usize] = None;
                self.active.swap_remove(i);
                self.free_ids.push(id);
            } else {
                i += 1;
            }
        }
        if !self.waiting_adopt.is_empty() {
            self.place_waiting();
        }
        self.staging.release(&mut self.ring);
        self.staging.on = true;
    }

    fn inline_table_index(&self, id: u16) -> u32 {
        (self.pool.capacity() + id as usize) as u32
    }

    /// Register a connection's in-capsule buffers so small I/O uses fixed-buffer ops too.
    fn register_inline(&mut self, c: &mut Conn) {
        if !self.pool.is_registered() {
            return;
        }
        let index = self.inline_table_index(c.index);
        let iov = c.inline_iovec();
        // SAFETY: the connection (and its inline region) outlives the registration: the
        // entry is cleared in unregister_inline before the connection is dropped.
        match unsafe {
            self.ring
                .submitter()
                .register_buffers_update(index, &[iov], None)
        } {
            Ok(()) => c.set_inline_reg_index(index as u16),
            Err(e) => debug!(error = %e, "in-capsule buffer registration failed"),
        }
    }

    fn unregister_inline(&mut self, id: u16) {
        if self.pool.is_registered() {
            let empty = libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            };
            // SAFETY: clearing a table entry references no memory.
            let _ = unsafe {
                self.ring.submitter().register_buffers_update(
                    self.inline_table_index(id),
                    &[empty],
                    None,
                )
            };
        }
    }

    fn close_all(&mut self, why: &str) {
        for i in 0..self.active.len() {
            let id = self.active[i];
            self.with_conn(id, None, |c, _| c.close(why));
        }
    }
}

/// Busy and idle time of the event loop, classified per turn with one clock read per turn.
/// A turn's time runs from its start to the next turn's start, so it includes its kernel
/// entry; a turn that sleeps in the kernel counts only up to the sleep.
struct TurnClock {
    last: Stamp,
    busy: bool,
    slept: bool,
    busy_ns: u64,
    idle_ns: u64,
}

impl TurnClock {
    fn new() -> TurnClock {
        TurnClock {
            last: Stamp::now(),
            busy: false,
            slept: true,
            busy_ns: 0,
            idle_ns: 0,
        }
    }

    /// Start a turn: account the previous one. Returns the time now.
    fn start(&mut self) -> Stamp {
        let now = Stamp::now();
        if !self.slept {
            self.add(self.busy, now.nanos_since(self.last));
        }
        self.last = now;
        now
    }

    /// End a turn: whether it did work, and whether it is about to sleep (then its time
    /// is taken now, before the sleep).
    fn end(&mut self, busy: bool, sleep: bool) {
        self.busy = busy;
        self.slept = sleep;
        if sleep {
            self.add(busy, Stamp::now().nanos_since(self.last));
        }
    }

    fn add(&mut self, busy: bool, ns: u64) {
        if busy {
            self.busy_ns += ns;
        } else {
            self.idle_ns += ns;
        }
    }

    fn publish(&self, st: &ReactorStats) {
        st.busy_ns.store(self.busy_ns, Ordering::Relaxed);
        st.idle_ns.store(self.idle_ns, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod staging_tests {
    use super::*;

    fn nop(tag: u64) -> squeue::Entry {
        opcode::Nop::new().build().user_data(tag)
    }

    /// The order in which the ring ran what was queued (NOPs complete as submitted).
    fn ran(ring: &mut IoUring, n: usize) -> Vec<u64> {
        ring.submit_and_wait(n).unwrap();
        ring.completion().map(|c| c.user_data()).collect()
    }

    #[test]
    fn device_io_of_a_turn_runs_after_its_sends() {
        let mut ring = IoUring::new(64).unwrap();
        let mut staging = Staging::new(16);
        for tag in [1, 2] {
            TurnSq {
                ring: &mut ring,
                staging: &mut staging,
            }
            .push(nop(tag));
        }
        staging.on = false; // end of turn: sends go straight to the ring
        TurnSq {
            ring: &mut ring,
            staging: &mut staging,
        }
        .push(nop(100));
        staging.release(&mut ring);
        assert!(staging.entries.is_empty());
        assert_eq!(ran(&mut ring, 3), [100, 1, 2]);
    }

    #[test]
    fn a_full_staging_list_is_released_in_order() {
        let mut ring = IoUring::new(64).unwrap();
        let mut staging = Staging::new(4);
        for tag in 1..=5 {
            TurnSq {
                ring: &mut ring,
                staging: &mut staging,
            }
            .push(nop(tag));
        }
        assert!(
            !staging.on,
            "what comes after a full list goes straight to the ring"
        );
        TurnSq {
            ring: &mut ring,
            staging: &mut staging,
        }
        .push(nop(100));
        staging.release(&mut ring);
        assert_eq!(ran(&mut ring, 6), [1, 2, 3, 4, 5, 100]);
    }
}
