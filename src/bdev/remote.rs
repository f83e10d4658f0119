//! A namespace on another NVMe/TCP target (another nvmf-raid, the Linux kernel target,
//! SPDK) as a block device: the peer site's copy of a stretched volume, or a RAID member.
//!
//! Two parts:
//! - The *link* (`supervise`, one thread per device) owns the controller association: the
//!   admin queue, bring-up, keep-alive (its round trip is the link's measured latency),
//!   reconnection with backoff, and the set-up of I/O queues. Nothing on it is on the data
//!   path, so it may block.
//! - Each reactor's *channel* drives one I/O queue through the reactor's io_uring, like the
//!   target's own connections: one `recv` and one `sendmsg` in flight, commands in slots
//!   allocated at open, write data sent from the caller's buffer. Its socket is handed
//!   over by the link once connected.
//!
//! Failures are fast and local: when the queue fails (socket error, malformed PDU, an I/O
//! older than `io_timeout`), every command on it completes with -EIO, the channel asks the
//! link to reset the association (so no older command can still land through it), and new
//! I/O fails at once until the link is back. A volume turns those errors into a member
//! failure, never a host error while redundancy remains.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use io_uring::{opcode, types};
use tracing::{info, warn};

use super::{
    Bdev, BdevChannel, BdevInfo, BdevIo, BdevOp, ChildRoute, Completions, FileRegistry, SqeSink,
    Submitted,
};
use crate::host::{Data, HostController, Queue, QueueOptions};
use crate::nvmf::command::{self, Cqe, Sqe};
use crate::nvmf::pdu::{self, DataHeader, DecodeParams, Decoded, Pdu};
use crate::nvmf::spec::io;

/// I/O queues asked of the remote controller: one per reactor plus the metadata queue.
const QUEUES_WANTED: u16 = 64;
/// The I/O queue the link keeps for metadata (superblock) I/O outside the reactors.
const META_QID: u16 = 1;
/// Largest single I/O: what one C2HData PDU in the receive buffer can hold.
pub const MAX_IO: usize = 1 << 20;
/// Header bytes kept free for the H2CData headers that answer R2Ts of commands already sent.
const TX_RESERVE: usize = 32 * 1024;
const TX_ARENA: usize = 256 * 1024;
const MAX_IOV: usize = 64;
/// Commands that may wait for a slot or for the queue to come up, per channel.
const MAX_WAITING: usize = 4096;
/// Tags of the channel's own ring operations.
const TAG_RECV: u64 = 0;
const TAG_SEND: u64 = 1;
/// First and longest wait between association attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);

/// Where the remote namespace is and how to treat it.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    pub addr: SocketAddr,
    pub subnqn: String,
    pub nsid: u32,
    pub hostnqn: String,
    /// Commands in flight per I/O queue.
    pub queue_depth: u16,
    /// A command outstanding this long fails the queue.
    pub io_timeout: Duration,
    /// The association's keep-alive timeout (KATO); the link sends a Keep Alive every
    /// third of it, at most once a second.
    pub keep_alive: Duration,
    /// TCP connect plus bring-up, and each admin command.
    pub connect_timeout: Duration,
    /// Longest wait between association attempts.
    pub reconnect_max: Duration,
}

impl RemoteConfig {
    fn queue_options(&self) -> QueueOptions {
        QueueOptions {
            hostnqn: self.hostnqn.clone(),
            kato_ms: self.keep_alive.as_millis() as u32,
            depth: self.queue_depth,
            timeout: self.connect_timeout,
            ..QueueOptions::default()
        }
    }
}

/// What the link reports (status output, metrics).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RemoteStatus {
    pub address: String,
    pub subnqn: String,
    pub connected: bool,
    pub cntlid: u16,
    /// Associations made since start (1 after the first connect).
    pub associations: u64,
    /// Queues failed by a command older than the I/O timeout.
    pub io_timeouts: u64,
    /// Queues failed for any reason (timeouts included).
    pub queue_failures: u64,
    /// Round trip of the last Keep Alive, in microseconds.
    pub keepalive_rtt_us: u64,
    pub last_error: String,
}

/// State the link thread and the channels share.
struct Link {
    cfg: RemoteConfig,
    name: String,
    block_shift: u32,
    num_blocks: u64,
    /// Changes with every association made or lost; a channel's queue belongs to one.
    generation: AtomicU32,
    connected: AtomicBool,
    requests: Sender<Request>,
    meta: Mutex<Option<Queue>>,
    status: Mutex<RemoteStatus>,
    io_timeouts: AtomicU64,
    queue_failures: AtomicU64,
}

impl Link {
    fn note_error(&self, e: &str) {
        self.status.lock().unwrap().last_error = e.to_string();
    }
}

/// A queue the link set up for a channel: the socket after ICReq and Connect.
struct ReadyQueue {
    sock: TcpStream,
    generation: u32,
    maxh2cdata: u32,
    in_capsule_max: usize,
}

enum Request {
    Queue {
        generation: u32,
        reply: Sender<Result<ReadyQueue, String>>,
    },
    /// A site message on the admin queue; the answer's completion dwords 0 and 1.
    Message {
        data: Vec<u8>,
        reply: Sender<Result<(u32, u32), String>>,
    },
    /// A channel's queue failed: end the association so nothing sent on it can land later.
    Reset {
        generation: u32,
        why: &'static str,
    },
    Stop,
}

pub struct RemoteBdev {
    info: BdevInfo,
    link: Arc<Link>,
}

impl std::fmt::Debug for RemoteBdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RemoteBdev({} at {} {})",
            self.info.name, self.link.cfg.addr, self.link.cfg.subnqn
        )
    }
}

/// One association with the remote controller.
struct Association {
    ctrl: HostController,
    next_qid: u16,
    granted: u16,
    next_keepalive: Instant,
}

impl RemoteBdev {
    /// Connect to the remote namespace and learn its geometry. When it cannot be reached
    /// and `expected_bytes` is given, the device starts disconnected with that size and
    /// keeps trying; without it, an unreachable remote is an error.
    pub fn open(
        name: &str,
        cfg: RemoteConfig,
        block_size: u32,
        expected_bytes: Option<u64>,
    ) -> std::io::Result<RemoteBdev> {
        let first = associate(&cfg);
        let (block_shift, num_blocks) = match (&first, expected_bytes) {
            (Ok((_, geometry)), _) => *geometry,
            (Err(e), Some(bytes)) => {
                warn!(device = name, address = %cfg.addr, error = %e, "remote namespace unreachable: starting disconnected");
                (block_size.trailing_zeros(), bytes / block_size as u64)
            }
            (Err(e), None) => {
                return Err(std::io::Error::other(format!(
                    "device {name}: remote namespace {} at {}: {e}",
                    cfg.subnqn, cfg.addr
                )))
            }
        };
        if 1u32 << block_shift != block_size {
            return Err(std::io::Error::other(format!("device {name}: the remote namespace has {}-byte blocks, the configuration says {block_size}", 1u32 << block_shift)));
        }
        if let Some(bytes) = expected_bytes.filter(|&b| b != num_blocks << block_shift) {
            return Err(std::io::Error::other(format!(
                "device {name}: the remote namespace has {} bytes, the configuration says {bytes}",
                num_blocks << block_shift
            )));
        }
        let (tx, rx) = channel::unbounded();
        let status = RemoteStatus {
            address: cfg.addr.to_string(),
            subnqn: cfg.subnqn.clone(),
            ..RemoteStatus::default()
        };
        let link = Arc::new(Link {
            cfg,
            name: name.to_string(),
            block_shift,
            num_blocks,
            generation: AtomicU32::new(0),
            connected: AtomicBool::new(false),
            requests: tx,
            meta: Mutex::new(None),
            status: Mutex::new(status),
            io_timeouts: AtomicU64::new(0),
            queue_failures: AtomicU64::new(0),
        });
        let assoc = first.ok().map(|(a, _)| install(&link, a));
        let l = link.clone();
        std::thread::Builder::new()
            .name(format!("remote-{name}"))
            .spawn(move || supervise(l, rx, assoc))?;
        Ok(RemoteBdev {
            info: BdevInfo {
                name: name.to_string(),
                block_size,
                num_blocks,
            },
            link,
        })
    }

    pub fn status(&self) -> RemoteStatus {
        let mut s = self.link.status.lock().unwrap().clone();
        s.connected = self.link.connected.load(Ordering::Acquire);
        s.io_timeouts = self.link.io_timeouts.load(Ordering::Relaxed);
        s.queue_failures = self.link.queue_failures.load(Ordering::Relaxed);
        s
    }

    pub fn is_connected(&self) -> bool {
        self.link.connected.load(Ordering::Acquire)
    }

    /// Send a site message over the association's admin queue and wait at most `wait`
    /// for the answer.
    pub fn site_message(&self, data: &[u8], wait: Duration) -> Result<(u32, u32), String> {
        if !self.is_connected() {
            return Err("remote target not connected".into());
        }
        let (tx, rx) = channel::bounded(1);
        self.link
            .requests
            .send(Request::Message {
                data: data.to_vec(),
                reply: tx,
            })
            .map_err(|_| "link stopped".to_string())?;
        rx.recv_timeout(wait)
            .map_err(|_| "no answer in time".to_string())?
    }
}

impl Drop for RemoteBdev {
    fn drop(&mut self) {
        let _ = self.link.requests.send(Request::Stop);
    }
}

/// Bring up an association: admin queue, queue count, namespace geometry, metadata queue.
fn associate(cfg: &RemoteConfig) -> std::io::Result<(Association, (u32, u64))> {
    let mut ctrl = HostController::connect(cfg.addr, &cfg.subnqn, &cfg.queue_options())?;
    let granted = ctrl.set_queue_count(QUEUES_WANTED)?;
    let geometry = ctrl.namespace_geometry(cfg.nsid)?;
    let a = Association {
        ctrl,
        next_qid: META_QID,
        granted,
        next_keepalive: Instant::now(),
    };
    Ok((a, geometry))
}

/// Make a fresh association the current one; returns it with its metadata queue opened.
fn install(link: &Link, mut a: Association) -> Association {
    match a.ctrl.io_queue(META_QID) {
        Ok(q) => *link.meta.lock().unwrap() = Some(q),
        Err(e) => warn!(device = link.name, error = %e, "remote metadata queue unavailable"),
    }
    a.next_qid = META_QID + 1;
    let associations = {
        let mut s = link.status.lock().unwrap();
        s.cntlid = a.ctrl.cntlid;
        s.associations += 1;
        s.associations
    };
    link.generation.fetch_add(1, Ordering::AcqRel);
    link.connected.store(true, Ordering::Release);
    info!(device = link.name, address = %link.cfg.addr, cntlid = a.ctrl.cntlid, associations, "remote namespace connected");
    a
}

/// Forget the association: every queue of it is dropped by the channels.
fn lose(link: &Link, why: &str) {
    link.connected.store(false, Ordering::Release);
    link.generation.fetch_add(1, Ordering::AcqRel);
    *link.meta.lock().unwrap() = None;
    link.note_error(why);
    warn!(device = link.name, address = %link.cfg.addr, why, "remote namespace disconnected");
}

/// The link thread: keeps one association alive and hands out I/O queues.
fn supervise(link: Arc<Link>, requests: Receiver<Request>, mut assoc: Option<Association>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let Some(a) = assoc.as_mut() else {
            match associate(&link.cfg) {
                Ok((a, geometry)) if geometry == (link.block_shift, link.num_blocks) => {
                    assoc = Some(install(&link, a));
                    backoff = BACKOFF_MIN;
                }
                Ok((_, (shift, blocks))) => {
                    let e = format!(
                        "remote namespace changed geometry: {blocks} blocks of {} bytes",
                        1u64 << shift
                    );
                    crate::warn_limited!(
                        device = link.name,
                        error = e,
                        "refusing the remote namespace"
                    );
                    link.note_error(&e);
                }
                Err(e) => {
                    crate::warn_limited!(device = link.name, address = %link.cfg.addr, error = %e, "cannot reach the remote namespace");
                    link.note_error(&e.to_string());
                }
            }
            if assoc.is_none() {
                if !answer_while_down(&requests, backoff) {
                    return;
                }
                backoff = (backoff * 2).min(link.cfg.reconnect_max.max(BACKOFF_MIN));
            }
            continue;
        };
        let wait = a.next_keepalive.saturating_duration_since(Instant::now());
        match requests.recv_timeout(wait) {
            Ok(Request::Queue { generation, reply }) => {
                let current = link.generation.load(Ordering::Acquire);
                let _ = reply.send(open_queue(a, generation, current));
            }
            Ok(Request::Message { data, reply }) => match site_message(&mut a.ctrl, &data) {
                Ok(answer) => {
                    let _ = reply.send(Ok(answer));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.to_string()));
                    if e.kind() != std::io::ErrorKind::Other {
                        assoc = None;
                        lose(&link, &format!("site message failed: {e}"));
                    }
                }
            },
            Ok(Request::Reset { generation, why }) => {
                if generation == link.generation.load(Ordering::Acquire) {
                    assoc = None;
                    lose(&link, why);
                }
            }
            Ok(Request::Stop) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(a) = assoc.take() {
                    let _ = a.ctrl.shutdown();
                }
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                let started = Instant::now();
                match a.ctrl.keep_alive() {
                    Ok(()) => {
                        link.status.lock().unwrap().keepalive_rtt_us =
                            started.elapsed().as_micros() as u64;
                        a.next_keepalive =
                            Instant::now() + (link.cfg.keep_alive / 3).min(Duration::from_secs(1));
                    }
                    Err(e) => {
                        assoc = None;
                        lose(&link, &format!("keep-alive failed: {e}"));
                    }
                }
            }
        }
    }
}

/// While there is no association: refuse queue requests for `wait`. False once stopped.
fn answer_while_down(requests: &Receiver<Request>, wait: Duration) -> bool {
    let until = Instant::now() + wait;
    loop {
        match requests.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(Request::Queue { reply, .. }) => {
                let _ = reply.send(Err("remote namespace not connected".into()));
            }
            Ok(Request::Message { reply, .. }) => {
                let _ = reply.send(Err("remote target not connected".into()));
            }
            Ok(Request::Reset { .. }) => {}
            Ok(Request::Stop) | Err(RecvTimeoutError::Disconnected) => return false,
            Err(RecvTimeoutError::Timeout) => return true,
        }
    }
}

/// One SITE_MESSAGE admin command; a refusal by the remote is `ErrorKind::Other`, a
/// transport failure anything else.
fn site_message(ctrl: &mut HostController, data: &[u8]) -> std::io::Result<(u32, u32)> {
    let sqe = Sqe {
        opcode: crate::nvmf::spec::admin::SITE_MESSAGE,
        ..Sqe::default()
    };
    let cqe = ctrl.admin_command(sqe, Data::ToController(data.as_ptr(), data.len()))?;
    if !cqe.is_success() {
        return Err(std::io::Error::other(format!(
            "the peer refused the site message: status {:#x}",
            cqe.status
        )));
    }
    Ok((cqe.dw0, cqe.dw1))
}

fn open_queue(a: &mut Association, generation: u32, current: u32) -> Result<ReadyQueue, String> {
    if generation != current {
        return Err("association changed".into());
    }
    if a.next_qid > a.granted {
        return Err(format!(
            "the remote controller granted {} I/O queues, all in use",
            a.granted
        ));
    }
    let qid = a.next_qid;
    a.next_qid += 1;
    let q = a
        .ctrl
        .io_queue(qid)
        .map_err(|e| format!("I/O queue {qid}: {e}"))?;
    let (sock, maxh2cdata, in_capsule_max) = q.into_stream().map_err(|e| e.to_string())?;
    Ok(ReadyQueue {
        sock,
        generation,
        maxh2cdata,
        in_capsule_max,
    })
}

impl Bdev for RemoteBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn remote(&self) -> Option<&RemoteBdev> {
        Some(self)
    }

    /// Metadata I/O through the link's own queue.
    fn sync_io(&self, op: BdevOp, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let mut meta = self.link.meta.lock().unwrap();
        let q = meta.as_mut().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("{}: remote namespace not connected", self.info.name),
            )
        })?;
        let (nsid, shift) = (self.link.cfg.nsid, self.link.block_shift);
        let slba = offset >> shift;
        let cqe = match op {
            BdevOp::Read => q.read(nsid, slba, shift, buf),
            BdevOp::Write => q.write(nsid, slba, shift, buf).and_then(|c| {
                if c.is_success() {
                    q.execute(flush_sqe(nsid), Data::None)
                } else {
                    Ok(c)
                }
            }),
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "metadata I/O reads and writes only",
                ))
            }
        };
        match cqe {
            Ok(c) if c.is_success() => Ok(()),
            Ok(c) => Err(std::io::Error::other(format!(
                "{}: remote {op:?} failed with status {:#x}",
                self.info.name, c.status
            ))),
            Err(e) => {
                *meta = None;
                let _ = self.link.requests.send(Request::Reset {
                    generation: self.link.generation.load(Ordering::Acquire),
                    why: "metadata I/O failed",
                });
                Err(e)
            }
        }
    }

    fn sync(&self) -> std::io::Result<()> {
        let mut meta = self.link.meta.lock().unwrap();
        match meta.as_mut() {
            Some(q) => q
                .execute(flush_sqe(self.link.cfg.nsid), Data::None)
                .map(|_| ()),
            None => Ok(()),
        }
    }

    fn open_channel(
        &self,
        _: &mut dyn FileRegistry,
        route: ChildRoute,
    ) -> std::io::Result<Box<dyn BdevChannel>> {
        Ok(Box::new(RemoteChannel::new(self.link.clone(), route)?))
    }
}

fn flush_sqe(nsid: u32) -> Sqe {
    Sqe {
        opcode: io::FLUSH,
        nsid,
        ..Sqe::default()
    }
}

// --------------------------------------------------------------------- the channel

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No queue: asks the link for one when it is connected.
    Down,
    /// Waiting for the link to set a queue up.
    Asking,
    Up,
    /// The queue failed; waiting for its receive and send to come back.
    Draining,
}

#[derive(Clone, Copy)]
struct Slot {
    busy: bool,
    parent: u64,
    op: BdevOp,
    buf: *mut u8,
    len: u32,
    received: u32,
    started: Instant,
    /// A Dataset Management range (the data of a Discard).
    range: [u8; 16],
}

/// A run of bytes to send (a header in the arena, or a caller's data).
#[derive(Clone, Copy)]
struct Seg {
    ptr: *const u8,
    len: usize,
}

pub struct RemoteChannel {
    link: Arc<Link>,
    route: ChildRoute,
    phase: Phase,
    generation: u32,
    reply: Option<Receiver<Result<ReadyQueue, String>>>,
    sock: Option<TcpStream>,
    maxh2cdata: u32,
    in_capsule_max: usize,
    slots: Box<[Slot]>,
    free: Vec<u16>,
    waiting: VecDeque<(BdevIo, Instant)>,
    /// Headers to send; reset once everything queued is sent.
    arena: Box<[u8]>,
    arena_used: usize,
    segs: VecDeque<Seg>,
    send_armed: bool,
    send_bytes: usize,
    iov: Box<[libc::iovec; MAX_IOV]>,
    msg: Box<libc::msghdr>,
    rx: Box<[u8]>,
    rx_head: usize,
    rx_tail: usize,
    recv_armed: bool,
}

impl RemoteChannel {
    fn new(link: Arc<Link>, route: ChildRoute) -> std::io::Result<RemoteChannel> {
        let depth = link.cfg.queue_depth as usize;
        let idle = Slot {
            busy: false,
            parent: 0,
            op: BdevOp::Read,
            buf: std::ptr::null_mut(),
            len: 0,
            received: 0,
            started: Instant::now(),
            range: [0; 16],
        };
        // SAFETY: msghdr is plain data; zero is a valid empty header.
        let msg: libc::msghdr = unsafe { std::mem::zeroed() };
        Ok(RemoteChannel {
            link,
            route,
            phase: Phase::Down,
            generation: 0,
            reply: None,
            sock: None,
            maxh2cdata: 0,
            in_capsule_max: 0,
            slots: vec![idle; depth].into_boxed_slice(),
            free: (0..depth as u16).rev().collect(),
            waiting: VecDeque::with_capacity(MAX_WAITING),
            arena: vec![0u8; TX_ARENA].into_boxed_slice(),
            arena_used: 0,
            segs: VecDeque::with_capacity(4 * depth + 16),
            send_armed: false,
            send_bytes: 0,
            iov: Box::new(
                [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; MAX_IOV],
            ),
            msg: Box::new(msg),
            rx: vec![0u8; MAX_IO + 64 * 1024 + pdu::MAX_HEADER_LEN].into_boxed_slice(),
            rx_head: 0,
            rx_tail: 0,
            recv_armed: false,
        })
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.sock.as_ref().expect("a queue is up").as_raw_fd())
    }

    fn ops_in_flight(&self) -> bool {
        self.recv_armed || self.send_armed
    }

    // ----------------------------------------------------------------- queue life cycle

    fn ask_for_queue(&mut self) {
        let (tx, rx) = channel::bounded(1);
        let generation = self.link.generation.load(Ordering::Acquire);
        if self
            .link
            .requests
            .send(Request::Queue {
                generation,
                reply: tx,
            })
            .is_ok()
        {
            self.reply = Some(rx);
            self.phase = Phase::Asking;
        }
    }

    fn take_queue(&mut self, sq: &mut dyn SqeSink) {
        let Some(rx) = &self.reply else { return };
        match rx.try_recv() {
            Ok(Ok(q)) if q.generation == self.link.generation.load(Ordering::Acquire) => {
                self.sock = Some(q.sock);
                self.generation = q.generation;
                self.maxh2cdata = q.maxh2cdata;
                self.in_capsule_max = q.in_capsule_max;
                self.rx_head = 0;
                self.rx_tail = 0;
                self.phase = Phase::Up;
                self.reply = None;
                self.arm_recv(sq);
            }
            Ok(_) | Err(TryRecvError::Disconnected) => {
                self.reply = None;
                self.phase = Phase::Down;
            }
            Err(TryRecvError::Empty) => {}
        }
    }

    /// The queue is unusable: fail what it holds, shut it down, have the association reset.
    fn fail_queue(&mut self, why: &'static str, done: &mut Completions) {
        if self.phase != Phase::Up {
            return;
        }
        crate::warn_limited!(
            device = self.link.name,
            why,
            in_flight = self.slots.len() - self.free.len(),
            "remote I/O queue failed"
        );
        self.link.queue_failures.fetch_add(1, Ordering::Relaxed);
        self.link.note_error(why);
        for s in 0..self.slots.len() {
            if self.slots[s].busy {
                self.finish(s as u16, -libc::EIO, done);
            }
        }
        self.fail_waiting(|_| true, done);
        let _ = self.link.requests.send(Request::Reset {
            generation: self.generation,
            why,
        });
        if let Some(sock) = &self.sock {
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
        self.segs.clear();
        self.arena_used = 0;
        self.phase = Phase::Draining;
    }

    fn fail_waiting(&mut self, which: impl Fn(&Instant) -> bool, done: &mut Completions) {
        while let Some((io, at)) = self.waiting.front() {
            if !which(at) {
                break;
            }
            done.push((io.user_data, -libc::EIO));
            self.waiting.pop_front();
        }
    }

    // ----------------------------------------------------------------- commands

    /// Whether a new command can go out now: a free slot and header room beyond the
    /// reserve kept for R2T answers.
    fn can_start(&self) -> bool {
        self.phase == Phase::Up
            && !self.free.is_empty()
            && TX_ARENA - self.arena_used >= TX_RESERVE + pdu::CAPSULE_CMD_HLEN
    }

    fn start(&mut self, io: &BdevIo, sq: &mut dyn SqeSink) {
        let cid = self.free.pop().expect("can_start checked a free slot");
        let nsid = self.link.cfg.nsid;
        let shift = self.link.block_shift;
        let (slba, nlb) = (io.offset >> shift, (io.len as u64 >> shift) as u32);
        let slot = &mut self.slots[cid as usize];
        *slot = Slot {
            busy: true,
            parent: io.user_data,
            op: io.op,
            buf: io.buf,
            len: io.len,
            received: 0,
            started: Instant::now(),
            range: [0; 16],
        };
        let (sqe, data): (Sqe, Option<Seg>) = match io.op {
            BdevOp::Read => (
                command::rw_sqe(io::READ, cid, nsid, slba, nlb, io.len, false),
                None,
            ),
            BdevOp::Write => {
                let in_capsule = io.len as usize <= self.in_capsule_max;
                let data = in_capsule.then_some(Seg {
                    ptr: io.buf,
                    len: io.len as usize,
                });
                (
                    command::rw_sqe(io::WRITE, cid, nsid, slba, nlb, io.len, in_capsule),
                    data,
                )
            }
            BdevOp::WriteZeroes => (
                command::rw_sqe(io::WRITE_ZEROES, cid, nsid, slba, nlb, 0, false),
                None,
            ),
            BdevOp::Flush => (
                Sqe {
                    opcode: io::FLUSH,
                    cid,
                    nsid,
                    ..Sqe::default()
                },
                None,
            ),
            BdevOp::Discard => {
                slot.range[4..8].copy_from_slice(&nlb.to_le_bytes());
                slot.range[8..16].copy_from_slice(&slba.to_le_bytes());
                let mut sqe = Sqe {
                    opcode: io::DATASET_MANAGEMENT,
                    cid,
                    nsid,
                    sgl_len: 16,
                    sgl_type: command::SGL_IN_CAPSULE,
                    ..Sqe::default()
                };
                sqe.cdw[1] = 1 << 2; // deallocate
                (
                    sqe,
                    Some(Seg {
                        ptr: slot.range.as_ptr(),
                        len: 16,
                    }),
                )
            }
        };
        let data_len = data.map_or(0, |d| d.len);
        let mut hdr = [0u8; pdu::CAPSULE_CMD_HLEN + pdu::DIGEST_LEN];
        let n = pdu::encode_capsule_cmd(&mut hdr, &sqe.encode(), data_len, false, false);
        self.push_own(&hdr[..n]);
        if let Some(d) = data {
            self.segs.push_back(d);
        }
        self.arm_send(sq);
    }

    /// Queue a copy of header bytes; false when the arena is full (the queue then fails).
    fn push_own(&mut self, b: &[u8]) -> bool {
        if TX_ARENA - self.arena_used < b.len() {
            return false;
        }
        let at = self.arena_used;
        self.arena[at..at + b.len()].copy_from_slice(b);
        self.arena_used += b.len();
        self.segs.push_back(Seg {
            ptr: self.arena[at..].as_ptr(),
            len: b.len(),
        });
        true
    }

    fn finish(&mut self, cid: u16, res: i32, done: &mut Completions) {
        let slot = &mut self.slots[cid as usize];
        debug_assert!(slot.busy);
        slot.busy = false;
        done.push((slot.parent, res));
        self.free.push(cid);
    }

    fn start_waiting(&mut self, sq: &mut dyn SqeSink) {
        while self.can_start() {
            let Some((io, _)) = self.waiting.pop_front() else {
                break;
            };
            self.start(&io, sq);
        }
    }

    // ----------------------------------------------------------------- receive

    fn arm_recv(&mut self, sq: &mut dyn SqeSink) {
        if self.recv_armed || self.phase != Phase::Up {
            return;
        }
        if self.rx_head == self.rx_tail {
            self.rx_head = 0;
            self.rx_tail = 0;
        } else if self.rx.len() - self.rx_tail < 64 * 1024 {
            self.rx.copy_within(self.rx_head..self.rx_tail, 0);
            self.rx_tail -= self.rx_head;
            self.rx_head = 0;
        }
        let room = self.rx.len() - self.rx_tail;
        // SAFETY: the target stays inside `rx`, which outlives the operation (the channel
        // waits for it to return before dropping the queue).
        let ptr = unsafe { self.rx.as_mut_ptr().add(self.rx_tail) };
        sq.push(
            opcode::Recv::new(self.fd(), ptr, room as u32)
                .build()
                .user_data(self.route.token(TAG_RECV)),
        );
        self.recv_armed = true;
    }

    fn on_recv(&mut self, res: i32, sq: &mut dyn SqeSink, done: &mut Completions) {
        self.recv_armed = false;
        if res <= 0 {
            return self.fail_queue(
                if res == 0 {
                    "remote closed the connection"
                } else {
                    "receive error"
                },
                done,
            );
        }
        if self.phase != Phase::Up {
            return;
        }
        self.rx_tail += res as usize;
        let p = DecodeParams {
            hdgst: false,
            ddgst: false,
            max_data: MAX_IO as u32,
            from_host: false,
        };
        let rx = std::mem::take(&mut self.rx);
        let mut failed = None;
        while self.phase == Phase::Up {
            match pdu::decode(&rx[self.rx_head..self.rx_tail], &p) {
                Ok(Decoded::Incomplete(_)) => break,
                Ok(Decoded::Frame(f)) => {
                    self.rx_head += f.len;
                    if let Err(why) = self.on_pdu(f.pdu, done) {
                        failed = Some(why);
                        break;
                    }
                }
                Err(_) => {
                    failed = Some("malformed PDU from the remote");
                    break;
                }
            }
        }
        self.rx = rx;
        match failed {
            Some(why) => self.fail_queue(why, done),
            None => {
                self.arm_recv(sq);
                self.start_waiting(sq);
                self.arm_send(sq);
            }
        }
    }

    fn on_pdu(&mut self, p: Pdu, done: &mut Completions) -> Result<(), &'static str> {
        match p {
            Pdu::CapsuleResp { cqe } => self.on_response(Cqe::parse(cqe), done),
            Pdu::C2HData {
                cccid,
                datao,
                last,
                success,
                data,
            } => {
                let slot = self
                    .busy_slot(cccid)
                    .ok_or("C2HData for a command not in flight")?;
                if slot.op != BdevOp::Read
                    || datao != slot.received
                    || datao as usize + data.len() > slot.len as usize
                {
                    return Err("C2HData out of order or out of range");
                }
                // SAFETY: bounds checked; the submitter keeps `buf` alive until completion.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        data.as_ptr(),
                        slot.buf.add(datao as usize),
                        data.len(),
                    )
                };
                slot.received += data.len() as u32;
                if success {
                    if !last || slot.received != slot.len {
                        return Err("C2HData SUCCESS before all data");
                    }
                    let len = slot.len as i32;
                    self.finish(cccid, len, done);
                }
                Ok(())
            }
            Pdu::R2T(r) => self.on_r2t(r),
            Pdu::TermReq { .. } => Err("remote terminated the connection"),
            _ => Err("unexpected PDU from the remote"),
        }
    }

    fn busy_slot(&mut self, cid: u16) -> Option<&mut Slot> {
        self.slots.get_mut(cid as usize).filter(|s| s.busy)
    }

    fn on_response(&mut self, cqe: Cqe, done: &mut Completions) -> Result<(), &'static str> {
        let slot = *self
            .busy_slot(cqe.cid)
            .ok_or("response for a command not in flight")?;
        let res = if !cqe.is_success() {
            crate::warn_limited!(device = self.link.name, op = ?slot.op, status = format_args!("{:#x}", cqe.status), "remote command failed");
            -libc::EIO
        } else {
            match slot.op {
                BdevOp::Read if slot.received != slot.len => {
                    return Err("read completed without all its data")
                }
                BdevOp::Read | BdevOp::Write => slot.len as i32,
                _ => 0,
            }
        };
        self.finish(cqe.cid, res, done);
        Ok(())
    }

    /// Send the data an R2T asks for, in H2CData PDUs of at most MAXH2CDATA.
    fn on_r2t(&mut self, r: pdu::R2t) -> Result<(), &'static str> {
        let maxh2c = self.maxh2cdata as usize;
        let slot = *self
            .busy_slot(r.cccid)
            .ok_or("R2T for a command not in flight")?;
        let (start, end) = (r.r2to as usize, r.r2to as usize + r.r2tl as usize);
        if slot.op != BdevOp::Write || r.r2tl == 0 || end > slot.len as usize {
            return Err("R2T out of range");
        }
        let mut off = start;
        while off < end {
            let chunk = (end - off).min(maxh2c);
            let h = DataHeader {
                cccid: r.cccid,
                ttag: r.ttag,
                datao: off as u32,
                datal: chunk as u32,
                last: off + chunk == end,
                success: false,
            };
            let mut hdr = [0u8; pdu::DATA_HLEN + pdu::DIGEST_LEN];
            let n = pdu::encode_data_header(&mut hdr, false, &h, false, false);
            if !self.push_own(&hdr[..n]) {
                return Err("transmit headers exhausted");
            }
            // SAFETY: off + chunk <= len, inside the submitter's buffer.
            self.segs.push_back(Seg {
                ptr: unsafe { slot.buf.add(off) },
                len: chunk,
            });
            off += chunk;
        }
        Ok(())
    }

    // ----------------------------------------------------------------- transmit

    fn arm_send(&mut self, sq: &mut dyn SqeSink) {
        if self.send_armed || self.segs.is_empty() || self.phase != Phase::Up {
            return;
        }
        let mut n = 0;
        let mut bytes = 0;
        for s in self.segs.iter().take(MAX_IOV) {
            self.iov[n] = libc::iovec {
                iov_base: s.ptr as *mut libc::c_void,
                iov_len: s.len,
            };
            bytes += s.len;
            n += 1;
        }
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = n;
        let e = opcode::SendMsg::new(self.fd(), &*self.msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build();
        sq.push(e.user_data(self.route.token(TAG_SEND)));
        self.send_armed = true;
        self.send_bytes = bytes;
    }

    fn on_send(&mut self, res: i32, sq: &mut dyn SqeSink, done: &mut Completions) {
        self.send_armed = false;
        if res < 0 {
            return self.fail_queue("send error", done);
        }
        if self.phase != Phase::Up {
            return;
        }
        let mut left = res as usize;
        debug_assert!(left <= self.send_bytes);
        while left > 0 {
            let front = self
                .segs
                .front_mut()
                .expect("sent bytes belong to queued segments");
            if left < front.len {
                // SAFETY: left < len keeps the pointer inside the segment.
                front.ptr = unsafe { front.ptr.add(left) };
                front.len -= left;
                break;
            }
            left -= front.len;
            self.segs.pop_front();
        }
        if self.segs.is_empty() {
            self.arena_used = 0;
        }
        self.start_waiting(sq);
        self.arm_send(sq);
    }
}

impl BdevChannel for RemoteChannel {
    fn submit(&mut self, io: &BdevIo, sq: &mut dyn SqeSink) -> Submitted {
        let nlb = io.len as u64 >> self.link.block_shift;
        if io.len as usize > MAX_IO || (io.op == BdevOp::WriteZeroes && nlb > 1 << 16) {
            return Submitted::Done(-libc::EINVAL);
        }
        let connected = self.link.connected.load(Ordering::Acquire);
        match self.phase {
            Phase::Up if self.waiting.is_empty() && self.can_start() => {
                self.start(io, sq);
                Submitted::Queued
            }
            Phase::Up | Phase::Asking | Phase::Down
                if connected && self.waiting.len() < MAX_WAITING =>
            {
                self.waiting.push_back((*io, Instant::now()));
                Submitted::Queued
            }
            _ => Submitted::Done(-libc::EIO),
        }
    }

    fn child_complete(&mut self, tag: u64, res: i32, sq: &mut dyn SqeSink, done: &mut Completions) {
        match tag {
            TAG_RECV => self.on_recv(res, sq, done),
            TAG_SEND => self.on_send(res, sq, done),
            _ => unreachable!("remote channel tag {tag}"),
        }
        if self.phase == Phase::Draining && !self.ops_in_flight() {
            self.sock = None;
            self.phase = Phase::Down;
        }
    }

    fn needs_polling(&self) -> bool {
        true
    }

    /// Timeouts, a changed association, and the hand-over of a new queue.
    fn poll(&mut self, sq: &mut dyn SqeSink, done: &mut Completions) -> bool {
        let connected = self.link.connected.load(Ordering::Acquire);
        let timeout = self.link.cfg.io_timeout;
        match self.phase {
            Phase::Up if self.generation != self.link.generation.load(Ordering::Acquire) => {
                self.fail_queue("association reset", done)
            }
            Phase::Up => {
                let now = Instant::now();
                if self
                    .slots
                    .iter()
                    .any(|s| s.busy && now.duration_since(s.started) > timeout)
                {
                    self.link.io_timeouts.fetch_add(1, Ordering::Relaxed);
                    self.fail_queue("I/O timeout", done);
                } else {
                    self.start_waiting(sq);
                    self.arm_send(sq);
                }
            }
            Phase::Down if connected => self.ask_for_queue(),
            Phase::Asking => self.take_queue(sq),
            Phase::Down | Phase::Draining => {}
        }
        if !connected && self.phase != Phase::Up {
            self.fail_waiting(|_| true, done);
        }
        let now = Instant::now();
        self.fail_waiting(|at| now.duration_since(*at) > timeout, done);
        if self.phase == Phase::Up {
            self.start_waiting(sq);
            self.arm_send(sq);
        }
        if self.phase == Phase::Draining && !self.ops_in_flight() {
            self.sock = None;
            self.phase = Phase::Down;
        }
        false
    }
}
