//! The `conn_state` target: one connection's state machine driven like a reactor drives it,
//! with the host's byte stream and the timing of completions taken from the input.
//!
//! Input layout:
//! - byte 0: configuration (see [`Config`]);
//! - byte 1: `n`, the length of the schedule;
//! - bytes 2..2+n: the schedule, one byte per loop turn, reused cyclically (no schedule:
//!   every turn delivers one PDU and completes everything);
//! - the rest: the bytes the host sends, delivered in chunks through `inject_recv`.
//!
//! Each schedule byte's low nibble sizes the chunk delivered in that turn (a fixed size, or
//! up to or just short of the end of the current PDU as the common headers announce it),
//! its high nibble
//! says how the turn's send and block-device completions go (full, partial, deferred,
//! failed, out of order) or injects a close or a dead association. Namespace 3 is backed
//! by an asynchronous device whose completions the schedule releases, so commands can be
//! in flight while the connection closes.
//!
//! Oracles (a violation panics):
//! - no panic and no debug assertion in the target;
//! - every byte the target sends decodes, with `from_host = false` and the digests the
//!   ICResp announced, as a sequence of valid controller-to-host PDUs: an ICResp first (or
//!   a C2HTermReq), never a second ICResp, good data digests, no data section beyond MDTS;
//! - nothing is sent after a C2HTermReq;
//! - every io_uring entry carries a token of this connection;
//! - after the input, the connection can be closed and drained with no kernel help, then
//!   `is_finished()`; after `release` every pool buffer is back and the target has exactly
//!   the controllers it had before the connection (the connection's own admin association
//!   is gone, an I/O queue it held is released).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::FromRawFd;
use std::rc::Rc;
use std::sync::{Arc, OnceLock, RwLock};

use nvmf_raid::bdev::{Bdev, BdevChannel, BdevIo, FileRegistry, NullBdev, RamBdev, SqeSink, Submitted};
use nvmf_raid::nvmf::conn::{Conn, Env, Phase};
use nvmf_raid::nvmf::pdu::{self, decode, DecodeParams, Decoded, Pdu};
use nvmf_raid::nvmf::subsystem::{Namespace, Port, Subsystem, SubsystemKind, Target};
use nvmf_raid::nvmf::TransportLimits;
use nvmf_raid::reactor::bufpool::{BufferPool, PoolConfig};
use nvmf_raid::reactor::token::{Kind, Token};

pub const SUBNQN: &str = "nqn.2024-01.io.fuzz:raid0";
pub const HOSTNQN: &str = "nqn.2024-01.io.fuzz:host1";
/// cntlid of the controller that exists before the connection (I/O queues attach to it):
/// the first one a new `Target` assigns.
pub const PRE_CNTLID: u16 = 2;
pub const CONN_INDEX: u16 = 7;
pub const CONN_GENERATION: u16 = 3;

/// Limits of configuration 0 (small queue, small data: many PDUs per transfer).
pub const SMALL: TransportLimits =
    TransportLimits { queue_depth: 8, admin_queue_depth: 8, inline_data: 4096, max_transfer: 64 * 1024, max_h2c_data: 8192 };
/// Limits of configuration 1 (deep queue: more than one sendmsg's worth of responses).
pub const DEEP: TransportLimits =
    TransportLimits { queue_depth: 128, admin_queue_depth: 32, inline_data: 8192, max_transfer: 128 * 1024, max_h2c_data: 32 * 1024 };

/// The configuration byte.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// bit 0: DEEP limits instead of SMALL.
    pub deep: bool,
    /// bit 1: a pool of one small and one large buffer (commands wait for buffers).
    pub tiny_pool: bool,
    /// bit 2: the target allows only one controller (admin Connect is refused as busy).
    pub one_controller: bool,
    /// bit 3: sends still armed when the connection is drained fail (EPIPE) instead of
    /// completing.
    pub drain_send_fails: bool,
    /// bit 4: the pool and the in-capsule region are "registered" with the ring (block
    /// I/O then carries fixed-buffer indices).
    pub registered: bool,
}

impl Config {
    pub fn from_byte(b: u8) -> Config {
        Config { deep: b & 1 != 0, tiny_pool: b & 2 != 0, one_controller: b & 4 != 0, drain_send_fails: b & 8 != 0, registered: b & 16 != 0 }
    }
    pub fn limits(&self) -> TransportLimits {
        if self.deep {
            DEEP
        } else {
            SMALL
        }
    }
}

// ------------------------------------------------------------------------- environment

/// Counts submissions and checks their tokens; nothing reaches a kernel.
struct Sink {
    pushed: usize,
}

impl SqeSink for Sink {
    fn push(&mut self, e: io_uring::squeue::Entry) {
        let t = Token::decode(e.get_user_data()).expect("submission with an undecodable token");
        assert_eq!((t.conn, t.generation), (CONN_INDEX, CONN_GENERATION), "submission with a foreign token: {t:?}");
        assert!(matches!(t.kind, Kind::Recv | Kind::Send | Kind::Bdev), "unexpected submission kind {t:?}");
        self.pushed += 1;
    }
}

struct NoFiles;
impl FileRegistry for NoFiles {
    fn register(&mut self, _: std::os::fd::RawFd) -> Option<u32> {
        None
    }
}

/// Block I/O that does its work at submission but completes only when the schedule says.
type Pending = Rc<RefCell<VecDeque<(u64, i32)>>>;

struct AsyncChannel {
    inner: Box<dyn BdevChannel>,
    pending: Pending,
}

impl BdevChannel for AsyncChannel {
    fn submit(&mut self, io: &BdevIo, sq: &mut dyn SqeSink) -> Submitted {
        let res = match self.inner.submit(io, sq) {
            Submitted::Done(r) => r,
            Submitted::Queued => panic!("RAM channel queued"),
        };
        self.pending.borrow_mut().push_back((io.user_data, res));
        Submitted::Queued
    }
}

struct Devices {
    ram512: RamBdev,
    null4k: NullBdev,
    ram4k: RamBdev,
}

fn devices() -> &'static Devices {
    static D: OnceLock<Devices> = OnceLock::new();
    D.get_or_init(|| Devices {
        ram512: RamBdev::new("ram512", 512, 256 * 1024).unwrap(),
        null4k: NullBdev::new("null4k", 4096, 1 << 30),
        ram4k: RamBdev::new("ram4k", 4096, 256 * 1024).unwrap(),
    })
}

fn namespace(nsid: u32, device: usize, dev: &dyn Bdev) -> Namespace {
    Namespace::new(SUBNQN, nsid, device, dev.block_size(), dev.num_blocks())
}

/// The target: one NVM subsystem with three namespaces (RAM 512 B blocks, null 4 KiB
/// blocks, asynchronous RAM 4 KiB blocks), the discovery subsystem, one port.
pub fn make_target(cfg: &Config) -> Target {
    let d = devices();
    let s = Subsystem {
        nqn: SUBNQN.into(),
        kind: SubsystemKind::Nvm,
        serial: "FUZZ0001".into(),
        model: "nvmf-raid fuzz".into(),
        allow_any_host: false,
        hosts: RwLock::new(vec![HOSTNQN.into()]),
        namespaces: vec![namespace(1, 0, &d.ram512), namespace(2, 1, &d.null4k), namespace(3, 2, &d.ram4k)],
        cntlid_min: nvmf_raid::nvmf::subsystem::CNTLID_MIN,
        cntlid_max: nvmf_raid::nvmf::subsystem::CNTLID_MAX,
    };
    let port = Port { id: 1, addr: "127.0.0.1:4420".parse().unwrap() };
    Target::new(vec![Arc::new(s)], vec![port], 4, if cfg.one_controller { 1 } else { 2 })
}

/// A connected stream socket that is not a network connection: `Conn` only shuts it down.
fn socket() -> std::net::TcpStream {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors socketpair returns.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: we own fds[1] and close it here; fds[0] becomes the stream's.
    unsafe {
        libc::close(fds[1]);
        std::net::TcpStream::from_raw_fd(fds[0])
    }
}

// ------------------------------------------------------------------------- host view

/// What the host has received so far, checked PDU by PDU.
pub struct HostView {
    pub bytes: Vec<u8>,
    pos: usize,
    params: DecodeParams,
    pub ic_resp: bool,
    pub term: bool,
    pub pdus: usize,
    /// (cccid, ttag) of every R2T received.
    pub r2ts: Vec<(u16, u16)>,
    trace: bool,
}

impl HostView {
    pub fn new(lim: &TransportLimits, trace: bool) -> HostView {
        HostView {
            bytes: Vec::new(),
            pos: 0,
            params: DecodeParams { hdgst: false, ddgst: false, max_data: lim.max_transfer as u32, from_host: false },
            ic_resp: false,
            term: false,
            pdus: 0,
            r2ts: Vec::new(),
            trace,
        }
    }

    /// Bytes the target's send just delivered.
    pub fn receive(&mut self, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        assert!(!self.term || known_bug("send-after-term"), "target sent {} more bytes after its C2HTermReq: {:02x?}", b.len(), &b[..b.len().min(64)]);
        self.bytes.extend_from_slice(b);
        loop {
            let rest = &self.bytes[self.pos..];
            let f = match decode(rest, &self.params) {
                Ok(Decoded::Incomplete(_)) => break,
                Ok(Decoded::Frame(f)) => f,
                Err(e) => panic!(
                    "target sent an invalid PDU ({e}) at stream offset {} (params {:?}): {:02x?}",
                    self.pos,
                    self.params,
                    &rest[..rest.len().min(96)]
                ),
            };
            if self.trace {
                eprintln!("  target -> host: {}", describe(&f.pdu));
            }
            assert!(f.ddgst_ok, "target sent a PDU with a bad data digest: {:?}", f.pdu);
            match f.pdu {
                Pdu::IcResp(r) => {
                    assert!(!self.ic_resp, "second ICResp");
                    assert_eq!(self.pdus, 0, "ICResp after other PDUs");
                    self.ic_resp = true;
                    self.params.hdgst = r.hdgst;
                    self.params.ddgst = r.ddgst;
                }
                Pdu::TermReq { from_host, .. } => {
                    assert!(!from_host);
                    self.term = true;
                }
                Pdu::R2T(r) => {
                    assert!(self.ic_resp, "R2T before ICResp");
                    self.r2ts.push((r.cccid, r.ttag));
                }
                ref p => assert!(self.ic_resp, "target sent {p:?} before its ICResp"),
            }
            self.pos += f.len;
            self.pdus += 1;
            if self.term && !known_bug("send-after-term") {
                assert_eq!(self.pos, self.bytes.len(), "bytes follow the C2HTermReq in the same send");
            }
        }
    }

    /// True when every received byte belongs to a complete PDU.
    pub fn at_boundary(&self) -> bool {
        self.pos == self.bytes.len()
    }
}

pub fn describe(p: &Pdu) -> String {
    match p {
        Pdu::CapsuleResp { cqe } => {
            let c = nvmf_raid::nvmf::command::Cqe::parse(cqe);
            format!("CapsuleResp cid {} status {:#x} dw0 {:#x} sqhd {}", c.cid, c.status, c.dw0, c.sqhd)
        }
        Pdu::C2HData { cccid, datao, data, last, .. } => format!("C2HData cid {cccid} datao {datao} len {} last {last}", data.len()),
        Pdu::TermReq { fes, fei, data, .. } => format!("C2HTermReq fes {fes} fei {fei} ({} header bytes)", data.len()),
        other => format!("{other:?}"),
    }
}

// ------------------------------------------------------------------------- the driver

/// How the sends and block-device completions of one turn go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Normal,
    /// As Normal, but the received bytes and the block I/O completions are handled in
    /// the same reactor turn (one CQE batch) with no flush between them.
    Batched,
    SendHalf,
    SendOneByte,
    DeferSend,
    SendError,
    DeferBdev,
    BdevErrorOne,
    BdevReverse,
    Close,
    KillAssociation,
}

fn action(s: u8) -> Action {
    match s >> 4 {
        0..=3 => Action::Normal,
        4..=5 => Action::Batched,
        6 => Action::SendHalf,
        7 => Action::SendOneByte,
        8 => Action::DeferSend,
        9 => Action::SendError,
        10 => Action::DeferBdev,
        11 => Action::BdevErrorOne,
        12 => Action::BdevReverse,
        13 => Action::Close,
        14 => Action::KillAssociation,
        _ => Action::Normal,
    }
}

/// PDU length announced by the common header at the front of `s` (for chunking only).
fn next_pdu_len(s: &[u8]) -> usize {
    if s.len() < pdu::COMMON_HEADER_LEN {
        return s.len();
    }
    let plen = u32::from_le_bytes([s[4], s[5], s[6], s[7]]) as usize;
    plen.clamp(pdu::COMMON_HEADER_LEN, s.len())
}

/// Splits the host stream into chunks. It follows PDU boundaries as the common headers
/// announce them, so a chunk can end exactly at (or just before) the end of a PDU even
/// after chunks that cut PDUs apart.
struct Chunker {
    /// End of the PDU that contains the current position (walked from PDU to PDU).
    boundary: usize,
}

impl Chunker {
    /// Length of the chunk at `pos` for schedule byte `s`.
    fn next(&mut self, s: u8, stream: &[u8], pos: usize) -> usize {
        while self.boundary <= pos && self.boundary < stream.len() {
            self.boundary += next_pdu_len(&stream[self.boundary..]);
        }
        let to_boundary = self.boundary - pos;
        let pdus_after = |k: usize| {
            let mut end = self.boundary;
            for _ in 0..k {
                end += next_pdu_len(&stream[end..]);
            }
            end - pos
        };
        let n = match s & 0xF {
            0 => to_boundary,
            1 => 1,
            2 => 7,
            3 => 8,
            4 => 24,
            5 => 72,
            6 => 100,
            7 => 512,
            8 => 4096,
            9 => pdus_after(1),
            10 => pdus_after(3),
            11 => (to_boundary / 2).max(1),
            12 => to_boundary.saturating_sub(1).max(1),
            13 => 1000,
            14 => 16384,
            _ => stream.len() - pos,
        };
        n.min(stream.len() - pos)
    }
}

struct Driver<'e, 'a> {
    conn: Conn,
    env: &'e mut Env<'a>,
    host: HostView,
    bdev: Pending,
    chunker: Chunker,
    trace: bool,
}

impl Driver<'_, '_> {
    fn send_armed(&self) -> bool {
        !self.conn.armed_send_bytes().is_empty()
    }

    /// Complete the armed send with `n` bytes written (n = all when None).
    fn complete_send(&mut self, n: Option<usize>) {
        let bytes = self.conn.armed_send_bytes();
        if bytes.is_empty() {
            return;
        }
        let n = n.unwrap_or(bytes.len()).clamp(1, bytes.len());
        self.host.receive(&bytes[..n]);
        if n == bytes.len() {
            let sent = self.conn.inject_send_complete(self.env);
            assert_eq!(sent, n);
        } else {
            self.conn.on_send(n as i32, self.env);
        }
    }

    fn fail_send(&mut self) {
        if self.send_armed() {
            self.conn.on_send(-libc::EPIPE, self.env);
        }
    }

    fn complete_bdev(&mut self, how: Action) {
        loop {
            let next = match how {
                Action::BdevReverse => self.bdev.borrow_mut().pop_back(),
                _ => self.bdev.borrow_mut().pop_front(),
            };
            let Some((ud, mut res)) = next else { break };
            let t = Token::decode(ud).expect("bdev token");
            assert_eq!(t.kind, Kind::Bdev);
            if how == Action::BdevErrorOne {
                res = -libc::EIO;
            }
            self.conn.on_bdev_complete(t.aux as u16, res, self.env);
            if how == Action::BdevErrorOne {
                break;
            }
        }
    }

    fn kill_association(&mut self) {
        for c in self.env.target.controllers() {
            c.kill();
        }
        self.conn.tick(self.env);
    }

    /// One turn: deliver a chunk, then completions as the schedule byte says, flushing
    /// where the reactor's end of turn would. Returns bytes delivered.
    fn turn(&mut self, s: u8, stream: &[u8], pos: usize) -> usize {
        let mut delivered = 0;
        if pos < stream.len() {
            let n = self.chunker.next(s, stream, pos);
            delivered = self.conn.inject_recv(&stream[pos..pos + n], self.env);
        }
        let a = action(s);
        if a != Action::Batched {
            self.conn.flush(self.env);
        }
        match a {
            Action::DeferBdev => {}
            Action::BdevErrorOne | Action::BdevReverse => self.complete_bdev(a),
            _ => self.complete_bdev(Action::Normal),
        }
        self.conn.flush(self.env);
        match a {
            Action::SendHalf => {
                let len = self.conn.armed_send_bytes().len();
                self.complete_send(Some(len / 2));
            }
            Action::SendOneByte => self.complete_send(Some(1)),
            Action::DeferSend => {}
            Action::SendError => self.fail_send(),
            _ => self.complete_send(None),
        }
        match a {
            Action::Close => self.conn.close("fuzz: close"),
            Action::KillAssociation => self.kill_association(),
            _ => {}
        }
        self.conn.flush(self.env);
        delivered
    }

    fn idle(&self) -> bool {
        !self.send_armed() && self.bdev.borrow().is_empty()
    }

    /// Let everything in flight complete normally, as long as that makes progress.
    fn quiesce(&mut self) {
        for _ in 0..1024 {
            if self.conn.is_finished() || self.idle() {
                break;
            }
            self.complete_bdev(Action::Normal);
            self.conn.flush(self.env);
            self.complete_send(None);
            self.conn.flush(self.env);
        }
    }

    /// Close and drain with no kernel: the armed recv returns 0, sends and block I/O
    /// complete. The connection must then be finished.
    fn drain(&mut self, send_fails: bool) {
        self.conn.close("fuzz: end of input");
        self.conn.inject_recv(&[], self.env);
        for _ in 0..1024 {
            if self.conn.is_finished() {
                break;
            }
            self.complete_bdev(Action::Normal);
            if send_fails {
                self.fail_send();
            } else {
                self.complete_send(None);
            }
            self.conn.flush(self.env);
            if self.idle() {
                break;
            }
        }
        assert!(
            self.conn.is_finished(),
            "closed connection cannot finish: phase {:?}, send armed {}, bdev pending {}",
            self.conn.phase(),
            self.send_armed(),
            self.bdev.borrow().len()
        );
    }
}

/// Oracles relaxed for bugs already reported, so a run can look for others:
/// NVMF_FUZZ_KNOWN_BUGS=send-after-term (comma separated). Unset in CI.
fn known_bug(name: &str) -> bool {
    static K: OnceLock<Vec<String>> = OnceLock::new();
    K.get_or_init(|| {
        std::env::var("NVMF_FUZZ_KNOWN_BUGS").map(|v| v.split(',').map(|s| s.trim().to_string()).collect()).unwrap_or_default()
    })
    .iter()
    .any(|k| k == name)
}

fn trace_enabled() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

/// Summary of one run (for the seed generator's self-check and for tracing).
#[derive(Debug, Default)]
pub struct Outcome {
    pub delivered: usize,
    pub stream_len: usize,
    pub pdus_sent: usize,
    pub terminated: bool,
    pub submissions: usize,
    /// (cccid, ttag) of every R2T the target sent.
    pub r2ts: Vec<(u16, u16)>,
}

pub fn run(input: &[u8]) -> Outcome {
    if input.len() < 2 {
        return Outcome::default();
    }
    let cfg = Config::from_byte(input[0]);
    let n = (input[1] as usize).min(input.len() - 2);
    let schedule = &input[2..2 + n];
    let stream = &input[2 + n..];
    let trace = trace_enabled();
    let lim = cfg.limits();

    let target = make_target(&cfg);
    // The controller I/O queue connects attach to.
    // Controller IDs start at the subsystem's cntlid_min (1); the seeds name controller 2,
    // so the first ID goes to a controller that is removed at once.
    let first = target.create_controller(SUBNQN, HOSTNQN, [0x11; 16], 1, 0).expect("first controller");
    target.remove_controller(first.cntlid);
    let pre = target.create_controller(SUBNQN, HOSTNQN, [0x11; 16], 1, 0).expect("pre-created controller");
    assert_eq!(pre.cntlid, PRE_CNTLID);
    let controllers_before = target.controller_count();

    let pool_cfg = if cfg.tiny_pool {
        PoolConfig { small_size: 8192, small_count: 1, large_size: lim.max_transfer, large_count: 1 }
    } else {
        PoolConfig { small_size: 16384, small_count: 4, large_size: lim.max_transfer, large_count: 2 }
    };
    let mut pool = BufferPool::new(&pool_cfg).expect("pool");
    pool.set_registered(cfg.registered);
    let bdev: Pending = Rc::default();
    let d = devices();
    let mut channels: Vec<Box<dyn BdevChannel>> = vec![
        d.ram512.open_channel(&mut NoFiles, nvmf_raid::bdev::ChildRoute::top(0)).unwrap(),
        d.null4k.open_channel(&mut NoFiles, nvmf_raid::bdev::ChildRoute::top(1)).unwrap(),
        Box::new(AsyncChannel { inner: d.ram4k.open_channel(&mut NoFiles, nvmf_raid::bdev::ChildRoute::top(2)).unwrap(), pending: bdev.clone() }),
    ];
    let mut sink = Sink { pushed: 0 };
    let mut conn = Conn::new(socket(), CONN_INDEX, CONN_GENERATION, 1, &lim).expect("conn");
    if cfg.registered {
        conn.set_inline_reg_index(pool.capacity() as u16);
    }
    let mut out = Outcome { stream_len: stream.len(), ..Default::default() };
    {
        // No namespace tables: a histogram set per run would dominate the fuzzer's time.
        let mut stats = nvmf_raid::stats::ReactorRecorder::new(0);
        let mut env = Env { sq: &mut sink, pool: &mut pool, channels: &mut channels, target: &target, limits: &lim, stats: &mut stats };
        let mut dr = Driver { conn, env: &mut env, host: HostView::new(&lim, trace), bdev, chunker: Chunker { boundary: 0 }, trace };
        dr.conn.start(dr.env);
        let mut pos = 0;
        let mut released = false;
        for t in 0..4096usize {
            if dr.conn.is_finished() {
                dr.conn.release(dr.env);
                released = true;
                break;
            }
            let s = if schedule.is_empty() { 0 } else { schedule[t % schedule.len()] };
            let got = dr.turn(s, stream, pos);
            if dr.trace && got > 0 {
                eprintln!("host -> target: {got} bytes (schedule {s:#04x}), phase {:?}", dr.conn.phase());
            }
            pos += got;
            if (pos == stream.len() || got == 0) && dr.idle() {
                break;
            }
        }
        out.delivered = pos;
        if !released {
            dr.quiesce();
            if !dr.conn.is_finished() {
                dr.drain(cfg.drain_send_fails);
            }
            dr.conn.release(dr.env);
        }
        assert_eq!(dr.conn.phase(), Phase::Closing);
        out.pdus_sent = dr.host.pdus;
        out.terminated = dr.host.term;
        out.r2ts = std::mem::take(&mut dr.host.r2ts);
    }
    out.submissions = sink.pushed;
    assert_eq!(pool.free_count(), pool.capacity(), "pool buffers leaked");
    assert_eq!(target.controller_count(), controllers_before, "controller count after release");
    assert_eq!(pre.connected_io_queues(), 0, "an I/O queue of the pre-created controller is still claimed");
    out
}
