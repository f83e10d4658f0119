//! One NVMe/TCP connection (one queue pair) on its reactor: the receive parser, the
//! per-command request slots and the transmit queue.
//!
//! A request slot moves Free -> (AwaitingBuffer) -> (AwaitingData) -> Executing ->
//! Transmitting -> Free; an Asynchronous Event Request parks in AsyncEvent. Slots, their
//! in-capsule buffers and the transmit queue are allocated once when the connection is
//! accepted, so steady-state I/O allocates nothing.
//!
//! Bytes arrive in the receive buffer and are decoded PDU by PDU. The exception is a large
//! H2CData payload that has not arrived yet when its header has: it is received straight
//! into its command's data buffer (`DirectRx`), so write data is not copied in user space.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{opcode, types};
use tracing::{debug, info};

use super::command::{self, Cqe, DataDir, Sqe};
use super::exec::{self, ExecEnv, Outcome, Request, Session};
use super::pdu::{self, DataHeader, DecodeParams, Decoded, Fes, IcResp, Pdu, PduError, R2t};
use super::sendsize;
use super::spec::{io, status};
use super::subsystem::Target;
use super::TransportLimits;
use crate::bdev::{BdevChannel, SqeSink};
use crate::reactor::bufpool::{BufferPool, PoolBuf};
use crate::reactor::token::{Kind, Token};
use crate::stats::{OpClass, ReactorRecorder};
use crate::util::aligned::AlignedRegion;
use crate::util::clock::Stamp;

/// Status: the transport corrupted data in flight (data digest error); the host retries.
const TRANSIENT_TRANSPORT_ERROR: u16 = 0x22;
/// Most iovecs in one sendmsg: room for a whole queue's worth of read responses (three
/// segments each, four with data digests) so one turn's completions leave in one send.
const MAX_IOV: usize = 256;
/// An H2CData payload with at least this much still to arrive is received straight into its
/// command's buffer instead of into the receive buffer and copied from there.
const DIRECT_MIN: usize = 16 * 1024;
/// While R2Ts are outstanding and nothing is buffered, a receive reads at most this much,
/// so that a large H2CData payload arrives after its header (and goes direct) rather than
/// into the receive buffer with it.
const AHEAD_RECV: usize = 4096;
/// A connection that has not bound a queue (ICReq, then Fabrics Connect) by then is
/// dropped, unless its reactor sets another deadline.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a terminating connection may take to accept its C2HTermReq.
const TERM_LINGER: Duration = Duration::from_secs(5);

/// What a connection needs from its reactor while it runs.
pub struct Env<'a> {
    pub sq: &'a mut dyn SqeSink,
    pub pool: &'a mut BufferPool,
    pub channels: &'a mut [Box<dyn BdevChannel>],
    pub target: &'a Target,
    pub limits: &'a TransportLimits,
    /// The reactor's latency histograms and counters.
    pub stats: &'a mut ReactorRecorder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    AwaitingIcReq,
    Ready,
    /// A TermReq is queued; nothing more is received.
    Terminating,
    /// The socket is shut down; waiting for in-flight operations to return.
    Closing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    AwaitingBuffer,
    AwaitingData,
    Executing,
    Transmitting,
    AsyncEvent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataBuf {
    None,
    Inline,
    Pool(PoolBuf),
}

const HDR_CAP: usize = pdu::DATA_HLEN + pdu::DIGEST_LEN;

struct Slot {
    state: SlotState,
    sqe: Sqe,
    xfer_len: u32,
    received: u32,
    buf: DataBuf,
    /// Bytes of data returned to the host with the response.
    data_out: u32,
    status: u16,
    pending_ops: u16,
    transport_error: bool,
    r2t_hdr: [u8; HDR_CAP],
    r2t_len: u8,
    data_hdr: [u8; HDR_CAP],
    data_hdr_len: u8,
    ddgst: [u8; 4],
    resp_hdr: [u8; HDR_CAP],
    resp_len: u8,
    /// When the command arrived.
    started: Option<Stamp>,
    /// Namespace I/O: (statistics index, class, bytes) to record at completion.
    stat: Option<(u32, OpClass, u32)>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            state: SlotState::Free,
            sqe: Sqe::default(),
            xfer_len: 0,
            received: 0,
            buf: DataBuf::None,
            data_out: 0,
            status: 0,
            pending_ops: 0,
            transport_error: false,
            r2t_hdr: [0; HDR_CAP],
            r2t_len: 0,
            data_hdr: [0; HDR_CAP],
            data_hdr_len: 0,
            ddgst: [0; 4],
            resp_hdr: [0; HDR_CAP],
            resp_len: 0,
            started: None,
            stat: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxWhat {
    IcResp,
    TermReq,
    R2t(u16),
    Response(u16),
}

#[derive(Debug, Clone, Copy)]
struct TxItem {
    what: TxWhat,
    sent: usize,
    /// Its length on the wire, noted when a send first covers it (so completions need not
    /// rebuild its segments).
    len: usize,
}

impl TxItem {
    fn new(what: TxWhat) -> TxItem {
        TxItem {
            what,
            sent: 0,
            len: 0,
        }
    }
}

/// An H2CData PDU whose payload goes straight into slot `slot`'s buffer; `got` bytes of it
/// are there.
#[derive(Debug, Clone, Copy)]
struct DirectRx {
    slot: u16,
    p: pdu::DirectPayload,
}

pub struct Conn {
    sock: TcpStream,
    pub index: u16,
    pub generation: u16,
    phase: Phase,
    hdgst: bool,
    ddgst: bool,
    rx: Box<[u8]>,
    rx_head: usize,
    rx_tail: usize,
    recv_armed: bool,
    /// An H2CData payload being received into its command's buffer.
    direct: Option<DirectRx>,
    /// Slots that sent an R2T and wait for their data.
    awaiting_data: usize,
    /// The recvmsg of a direct receive: the rest of the payload, then the receive buffer.
    rx_iov: Box<[libc::iovec; 2]>,
    rx_msg: Box<libc::msghdr>,
    tx: VecDeque<TxItem>,
    send_armed: bool,
    send_bytes: usize,
    /// Bytes the kernel puts in one socket buffer, refreshed on each tick.
    send_goal: sendsize::SendGoal,
    iov: Box<[libc::iovec; MAX_IOV]>,
    msg: Box<libc::msghdr>,
    ic_resp: [u8; pdu::IC_LEN],
    term_req: [u8; pdu::TERM_HLEN + pdu::TERM_MAX_DATA],
    term_len: usize,
    /// What the commands of this queue mean: its controller binding, admin and I/O.
    session: Session,
    sqhd: u16,
    slots: Box<[Slot]>,
    free_slots: Vec<u16>,
    buffer_waiters: VecDeque<u16>,
    inline: AlignedRegion,
    inline_size: usize,
    /// The in-capsule region's entry in the ring's registered buffer table.
    inline_reg_index: Option<u16>,
    ops_in_flight: u32,
    /// A command arrived since the last tick (traffic-based keep-alive).
    active_since_tick: bool,
    created: Instant,
    /// When a connection that has not bound a queue by then is closed.
    handshake_deadline: Instant,
    terminated_at: Option<Instant>,
}

impl Conn {
    pub fn new(
        sock: TcpStream,
        index: u16,
        generation: u16,
        port_id: u16,
        lim: &TransportLimits,
    ) -> std::io::Result<Conn> {
        let depth = lim.queue_depth as usize;
        let rx_len = pdu::MAX_HEADER_LEN
            + lim.inline_data.max(lim.max_h2c_data as usize)
            + pdu::DIGEST_LEN
            + 64 * 1024;
        let _ = sock.set_nodelay(true);
        let send_goal = sendsize::SendGoal::of(&sock);
        // SAFETY: msghdr is plain data; zero is a valid empty header.
        let msg: libc::msghdr = unsafe { std::mem::zeroed() };
        Ok(Conn {
            sock,
            index,
            generation,
            phase: Phase::AwaitingIcReq,
            hdgst: false,
            ddgst: false,
            rx: vec![0u8; rx_len].into_boxed_slice(),
            rx_head: 0,
            rx_tail: 0,
            recv_armed: false,
            direct: None,
            awaiting_data: 0,
            rx_iov: Box::new(
                [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; 2],
            ),
            rx_msg: Box::new(msg),
            tx: VecDeque::with_capacity(2 * depth + 4),
            send_armed: false,
            send_bytes: 0,
            send_goal,
            iov: Box::new(
                [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; MAX_IOV],
            ),
            msg: Box::new(msg),
            ic_resp: [0; pdu::IC_LEN],
            term_req: [0; pdu::TERM_HLEN + pdu::TERM_MAX_DATA],
            term_len: 0,
            session: Session::new(port_id),
            sqhd: 0,
            slots: (0..depth).map(|_| Slot::new()).collect(),
            free_slots: (0..depth as u16).rev().collect(),
            buffer_waiters: VecDeque::with_capacity(depth),
            inline: AlignedRegion::new(depth * lim.inline_data)?,
            inline_size: lim.inline_data,
            inline_reg_index: None,
            ops_in_flight: 0,
            active_since_tick: false,
            created: Instant::now(),
            handshake_deadline: Instant::now() + HANDSHAKE_TIMEOUT,
            terminated_at: None,
        })
    }

    /// The in-capsule buffer region, for registration with the ring.
    pub fn inline_iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.inline.as_ptr() as *mut libc::c_void,
            iov_len: self.inline.len(),
        }
    }

    pub fn set_inline_reg_index(&mut self, index: u16) {
        self.inline_reg_index = Some(index);
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Close the connection if it has not bound a queue within `timeout` of its creation.
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.handshake_deadline = self.created + timeout;
    }

    /// Still before its Fabrics Connect (or its ICReq), and not closing: what a host that
    /// connects and says nothing holds.
    pub fn in_handshake(&self) -> bool {
        !self.session.is_bound() && matches!(self.phase, Phase::AwaitingIcReq | Phase::Ready)
    }

    pub fn created(&self) -> Instant {
        self.created
    }

    /// True once closed and every submitted operation has come back.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Closing && self.ops_in_flight == 0
    }

    fn token(&self, kind: Kind, aux: u32) -> u64 {
        Token::new(kind, self.index, self.generation, aux).encode()
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.sock.as_raw_fd())
    }

    // ----------------------------------------------------------------- life cycle

    /// Start receiving; called once after the connection is placed on its reactor.
    pub fn start(&mut self, env: &mut Env) {
        self.arm_recv(env);
    }

    pub fn close(&mut self, why: &str) {
        if self.phase == Phase::Closing {
            return;
        }
        debug!(conn = self.index, why, "closing connection");
        self.log_in_flight(why);
        self.phase = Phase::Closing;
        // Wakes the outstanding recv/send so their completions come back.
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }

    /// Commands other than the parked async-event requests still held when a connection
    /// closes: the host is waiting for them (or has given up on them).
    fn log_in_flight(&self, why: &str) {
        let busy = |s: &&Slot| !matches!(s.state, SlotState::Free | SlotState::AsyncEvent);
        let n = self.slots.iter().filter(busy).count();
        if n == 0 {
            return;
        }
        let first: Vec<String> = self
            .slots
            .iter()
            .filter(busy)
            .take(4)
            .map(|s| {
                format!(
                    "cid {} opcode {:#04x} {:?}",
                    s.sqe.cid, s.sqe.opcode, s.state
                )
            })
            .collect();
        let qid = self.session.binding().map(|b| b.qid);
        info!(conn = self.index, qid, why, in_flight = n, first = ?first, "connection closing with commands in flight");
    }

    /// Give back everything the connection holds. Only once `is_finished()`.
    pub fn release(&mut self, env: &mut Env) {
        assert!(self.is_finished());
        for i in 0..self.slots.len() {
            if self.slots[i].state != SlotState::Free {
                self.free_slot(i as u16, env);
            }
        }
        self.session.release(env.target);
    }

    /// Periodic check: keep-alive expiry, a dead association, a silent new connection,
    /// and asynchronous events for the parked event requests.
    pub fn tick(&mut self, env: &mut Env) {
        if self.in_handshake() && Instant::now() > self.handshake_deadline {
            let why = if self.phase == Phase::AwaitingIcReq {
                "no ICReq in time"
            } else {
                "no Fabrics Connect in time"
            };
            crate::warn_limited!(
                conn = self.index,
                why,
                "handshake deadline passed: closing connection"
            );
            self.close(why);
        }
        if self.phase == Phase::Terminating
            && self
                .terminated_at
                .is_some_and(|t| t.elapsed() > TERM_LINGER)
        {
            self.close("C2HTermReq not accepted in time");
        }
        if let Some(why) = self
            .session
            .tick(std::mem::take(&mut self.active_since_tick))
        {
            self.close(why);
        }
        if self.phase == Phase::Ready {
            self.deliver_async_event(env);
        }
        self.send_goal.refresh(&self.sock);
    }

    /// Complete one parked Asynchronous Event Request with the event the session has.
    fn deliver_async_event(&mut self, env: &mut Env) {
        let Some(parked) = self
            .slots
            .iter()
            .position(|s| s.state == SlotState::AsyncEvent)
        else {
            return;
        };
        let Some(dw0) = self.session.take_event() else {
            return;
        };
        self.session.aer_released();
        self.slots[parked].state = SlotState::Executing;
        self.complete(parked as u16, status::SUCCESS, dw0 as u64, env);
    }

    /// End-of-turn work: start a send if output is queued, retry buffer waiters.
    pub fn flush(&mut self, env: &mut Env) {
        while let Some(&s) = self.buffer_waiters.front() {
            if self.phase != Phase::Ready || !self.try_acquire_buffer(s, env) {
                break;
            }
            self.buffer_waiters.pop_front();
            self.data_buffer_ready(s, env);
        }
        if !self.send_armed && !self.tx.is_empty() && self.phase != Phase::Closing {
            self.arm_send(env);
        }
        // The receive is queued behind the send: when data is already waiting, the ring
        // runs them in that order, and the responses carry the acknowledgement of the
        // commands just read instead of the receive sending a bare ACK of its own.
        self.arm_recv(env);
    }

    // ----------------------------------------------------------------- receive

    fn arm_recv(&mut self, env: &mut Env) {
        if self.recv_armed || matches!(self.phase, Phase::Closing | Phase::Terminating) {
            return;
        }
        let direct = self.direct.filter(|d| d.p.payload_left() > 0);
        // SAFETY: the receive target stays inside `rx`, which lives as long as the conn.
        let ptr = unsafe { self.rx.as_mut_ptr().add(self.rx_tail) };
        let rx_len = self.rx_room(direct.is_some());
        let e = match direct {
            Some(d) => {
                let payload = self.direct_target(d, env);
                self.rx_iov[0] = libc::iovec {
                    iov_base: payload as *mut libc::c_void,
                    iov_len: d.p.payload_left(),
                };
                self.rx_iov[1] = libc::iovec {
                    iov_base: ptr as *mut libc::c_void,
                    iov_len: rx_len,
                };
                self.rx_msg.msg_iov = self.rx_iov.as_mut_ptr();
                self.rx_msg.msg_iovlen = 2;
                opcode::RecvMsg::new(self.fd(), &mut *self.rx_msg).build()
            }
            None => opcode::Recv::new(self.fd(), ptr, rx_len as u32).build(),
        };
        env.sq.push(e.user_data(self.token(Kind::Recv, 0)));
        self.recv_armed = true;
        self.ops_in_flight += 1;
    }

    pub fn on_recv(&mut self, res: i32, env: &mut Env) {
        self.recv_armed = false;
        self.ops_in_flight -= 1;
        if res <= 0 {
            self.close(if res == 0 {
                "peer closed"
            } else {
                "recv error"
            });
            return;
        }
        if self.phase == Phase::Closing || self.phase == Phase::Terminating {
            return;
        }
        let mut n = res as usize;
        if let Some(d) = self.direct.as_mut() {
            n = d.p.take(n);
        }
        self.rx_tail += n;
        self.parse_rx(env);
    }

    /// How much the next receive may put into `rx`. While write data is expected beyond a
    /// direct payload in progress, and nothing is buffered, only a little: the next
    /// H2CData header then arrives ahead of its payload, which can go direct.
    fn rx_room(&self, directing: bool) -> usize {
        let space = self.rx.len() - self.rx_tail;
        debug_assert!(space > 0);
        let expected = self.awaiting_data - directing as usize;
        if expected > 0 && self.rx_head == self.rx_tail {
            space.min(AHEAD_RECV)
        } else {
            space
        }
    }

    /// Where the rest of a direct payload lands: its command's buffer at the next offset.
    fn direct_target(&self, d: DirectRx, env: &Env) -> *mut u8 {
        // SAFETY: datao + data_len <= xfer_len was checked when the direct receive began.
        unsafe {
            self.data_ptr(d.slot, env)
                .add(d.p.hdr.datao as usize + d.p.got)
        }
    }

    /// Deliver bytes as if the armed recv had returned them (fuzzing and unit tests drive
    /// the state machine without a kernel socket). Returns how many bytes were taken.
    #[doc(hidden)]
    pub fn inject_recv(&mut self, data: &[u8], env: &mut Env) -> usize {
        if !self.recv_armed {
            return 0;
        }
        // As the kernel fills the armed iovecs: the direct payload first, then `rx`.
        let mut taken = 0;
        if let Some(d) = self.direct.filter(|d| d.p.payload_left() > 0) {
            taken = data.len().min(d.p.payload_left());
            // SAFETY: the target holds payload_left() bytes of the slot's buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), self.direct_target(d, env), taken)
            };
        }
        let n = (data.len() - taken).min(self.rx.len() - self.rx_tail);
        self.rx[self.rx_tail..self.rx_tail + n].copy_from_slice(&data[taken..taken + n]);
        self.on_recv((taken + n) as i32, env);
        taken + n
    }

    /// The bytes of the outstanding send, gathered from its iovecs (for test oracles).
    #[doc(hidden)]
    pub fn armed_send_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.send_armed {
            for v in &self.iov[..self.msg.msg_iovlen] {
                // SAFETY: the iovecs point at live slot/connection memory until on_send.
                out.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
                });
            }
        }
        out
    }

    /// Complete the outstanding send as fully written; returns the bytes "sent".
    #[doc(hidden)]
    pub fn inject_send_complete(&mut self, env: &mut Env) -> usize {
        if !self.send_armed {
            return 0;
        }
        let n = self.send_bytes;
        self.on_send(n as i32, env);
        n
    }

    fn decode_params(&self, env: &Env) -> DecodeParams {
        let max_data = env.limits.inline_data.max(env.limits.max_h2c_data as usize) as u32;
        DecodeParams {
            hdgst: self.hdgst,
            ddgst: self.ddgst,
            max_data,
            from_host: true,
        }
    }

    fn parse_rx(&mut self, env: &mut Env) {
        if !self.finish_direct(env) {
            return;
        }
        let rx = std::mem::take(&mut self.rx);
        let mut need = 0;
        while self.phase == Phase::AwaitingIcReq || self.phase == Phase::Ready {
            let p = self.decode_params(env);
            match pdu::decode(&rx[self.rx_head..self.rx_tail], &p) {
                Ok(Decoded::Incomplete(n)) => {
                    need = n;
                    break;
                }
                Ok(Decoded::Frame(f)) => {
                    let len = f.len;
                    if let Err(e) = self.on_pdu(f, env) {
                        self.terminate(e, &rx[self.rx_head..self.rx_tail]);
                    }
                    self.rx_head += len;
                }
                Err(e) => self.terminate(e, &rx[self.rx_head..self.rx_tail]),
            }
        }
        self.rx = rx;
        if need > 0 && self.start_direct(env) {
            need = 0;
        }
        self.compact_rx(need);
    }

    /// The PDU at the head of `rx` is an H2CData whose payload mostly has yet to arrive:
    /// take what is here into the command's buffer and receive the rest there directly.
    /// Returns false (leaving `rx` alone) when that does not apply or the header would be
    /// refused; the PDU is then decoded whole and refused as usual.
    fn start_direct(&mut self, env: &mut Env) -> bool {
        if self.phase != Phase::Ready {
            return false;
        }
        let avail = &self.rx[self.rx_head..self.rx_tail];
        let Some(hdr) =
            pdu::data_header_ahead(avail, &self.decode_params(env), pdu::pdu_type::H2C_DATA)
        else {
            return false;
        };
        let here = (avail.len() - hdr.data_off).min(hdr.data_len);
        if hdr.data_len - here < DIRECT_MIN
            || self
                .check_h2c(hdr.cccid, hdr.ttag, hdr.datao, hdr.data_len)
                .is_err()
        {
            return false;
        }
        let at = hdr.datao as usize;
        let head = self.rx_head + hdr.data_off;
        let rx = std::mem::take(&mut self.rx);
        self.data_mut(hdr.ttag, env)[at..at + here].copy_from_slice(&rx[head..head + here]);
        self.rx = rx;
        self.direct = Some(DirectRx {
            slot: hdr.ttag,
            p: pdu::DirectPayload { hdr, got: here },
        });
        self.rx_head += hdr.data_off + here;
        true
    }

    /// Complete a direct receive once its payload and data digest are in; false while
    /// they are still arriving.
    fn finish_direct(&mut self, env: &mut Env) -> bool {
        let Some(DirectRx { slot, p }) = self.direct else {
            return true;
        };
        if !p.complete(&self.rx[self.rx_head..self.rx_tail]) {
            return false;
        }
        let at = p.hdr.datao as usize;
        let rx = std::mem::take(&mut self.rx);
        let after = &rx[self.rx_head..self.rx_tail];
        let ddgst_ok = p.digest_ok(&self.data_mut(slot, env)[at..at + p.hdr.data_len], after);
        self.rx = rx;
        self.rx_head += p.digest_len();
        self.direct = None;
        self.accept_h2c(slot, p.hdr.data_len, ddgst_ok, env);
        true
    }

    /// Keep room for the PDU being assembled; moves bytes only when the tail runs short.
    fn compact_rx(&mut self, need: usize) {
        if self.rx_head == self.rx_tail {
            self.rx_head = 0;
            self.rx_tail = 0;
        } else if self.rx.len() - self.rx_head < need.max(pdu::MAX_HEADER_LEN)
            || self.rx.len() - self.rx_tail < 16 * 1024
        {
            self.rx.copy_within(self.rx_head..self.rx_tail, 0);
            self.rx_tail -= self.rx_head;
            self.rx_head = 0;
        }
    }

    fn on_pdu(&mut self, f: pdu::Frame, env: &mut Env) -> Result<(), PduError> {
        match (self.phase, f.pdu) {
            (Phase::AwaitingIcReq, Pdu::IcReq(r)) => self.on_ic_req(&r, env),
            (Phase::AwaitingIcReq, _) | (Phase::Ready, Pdu::IcReq(_)) => Err(PduError {
                fes: Fes::PduSequenceError,
                fei: 0,
            }),
            (_, Pdu::CapsuleCmd { sqe, data }) => self.on_command(sqe, data, f.ddgst_ok, env),
            (
                _,
                Pdu::H2CData {
                    cccid,
                    ttag,
                    datao,
                    last: _,
                    data,
                },
            ) => self.on_h2c_data(cccid, ttag, datao, data, f.ddgst_ok, env),
            (_, Pdu::TermReq { fes, .. }) => {
                info!(conn = self.index, fes, "host terminated the connection");
                self.close("H2CTermReq");
                Ok(())
            }
            // The decoder accepts only host-to-controller PDU types.
            _ => Err(PduError {
                fes: Fes::InvalidHeaderField,
                fei: 0,
            }),
        }
    }

    fn on_ic_req(&mut self, r: &pdu::IcReq, env: &mut Env) -> Result<(), PduError> {
        if r.pfv != 0 {
            return Err(PduError {
                fes: Fes::UnsupportedParameter,
                fei: 8,
            });
        }
        if r.hpda != 0 {
            return Err(PduError {
                fes: Fes::UnsupportedParameter,
                fei: 10,
            });
        }
        self.hdgst = r.hdgst;
        self.ddgst = r.ddgst;
        let resp = IcResp {
            pfv: 0,
            cpda: 0,
            hdgst: r.hdgst,
            ddgst: r.ddgst,
            maxh2cdata: env.limits.max_h2c_data,
        };
        pdu::encode_ic_resp(&mut self.ic_resp, &resp);
        self.tx.push_back(TxItem::new(TxWhat::IcResp));
        self.phase = Phase::Ready;
        Ok(())
    }

    /// A framing error: queue a C2HTermReq and stop receiving; the connection closes once
    /// it is sent. Other connections are unaffected.
    fn terminate(&mut self, e: PduError, offending: &[u8]) {
        crate::warn_limited!(conn = self.index, error = %e, "malformed PDU: terminating connection");
        let hdr_len = offending.len().min(pdu::TERM_MAX_DATA);
        self.term_len = pdu::encode_term_req(
            &mut self.term_req,
            false,
            e.fes,
            e.fei,
            &offending[..hdr_len],
        );
        // Responses already queued still go out first; nothing new is accepted.
        self.tx.push_back(TxItem::new(TxWhat::TermReq));
        self.phase = Phase::Terminating;
        self.terminated_at = Some(Instant::now());
    }

    // ----------------------------------------------------------------- commands

    fn depth(&self) -> usize {
        self.session
            .binding()
            .map_or(self.slots.len(), |b| b.depth as usize)
    }

    fn on_command(
        &mut self,
        sqe_bytes: &[u8; 64],
        data: &[u8],
        ddgst_ok: bool,
        env: &mut Env,
    ) -> Result<(), PduError> {
        let sqe = Sqe::parse(sqe_bytes);
        self.active_since_tick = true;
        let in_use = self.slots.len() - self.free_slots.len();
        if in_use >= self.depth() {
            // More commands outstanding than the queue holds.
            return Err(PduError {
                fes: Fes::PduSequenceError,
                fei: 0,
            });
        }
        let s = self.free_slots.pop().expect("slot accounting");
        self.advance_sqhd();
        let slot = &mut self.slots[s as usize];
        debug_assert_eq!(slot.state, SlotState::Free);
        *slot = Slot {
            state: SlotState::Executing,
            sqe,
            xfer_len: sqe.sgl_len,
            started: Some(Stamp::now()),
            ..Slot::new()
        };
        let dir = command::data_direction(&sqe);
        if let Some(sc) = self.check_data_descriptor(&sqe, dir, data.len(), ddgst_ok, env) {
            self.complete(s, sc | status::DNR, 0, env);
            return Ok(());
        }
        if !data.is_empty() {
            self.slots[s as usize].buf = DataBuf::Inline;
            self.slots[s as usize].received = data.len() as u32;
            self.data_mut(s, env)[..data.len()].copy_from_slice(data);
            self.execute(s, env);
        } else if dir == DataDir::None || sqe.sgl_len == 0 {
            self.execute(s, env);
        } else if self.try_acquire_buffer(s, env) {
            self.data_buffer_ready(s, env);
        } else {
            self.slots[s as usize].state = SlotState::AwaitingBuffer;
            self.buffer_waiters.push_back(s);
        }
        Ok(())
    }

    /// Validate the data descriptor against the PDU; Some(status) rejects the command.
    fn check_data_descriptor(
        &self,
        sqe: &Sqe,
        dir: DataDir,
        in_capsule: usize,
        ddgst_ok: bool,
        env: &Env,
    ) -> Option<u16> {
        let len = sqe.sgl_len as usize;
        if !ddgst_ok {
            return Some(TRANSIENT_TRANSPORT_ERROR);
        }
        if in_capsule > 0 {
            let ok = dir == DataDir::HostToController
                && sqe.sgl_type == command::SGL_IN_CAPSULE
                && in_capsule == len
                && len <= self.inline_size;
            return (!ok).then_some(status::SGL_DATA_LENGTH_INVALID);
        }
        if dir == DataDir::None || len == 0 {
            return None;
        }
        if sqe.sgl_type != command::SGL_TRANSPORT {
            return Some(status::SGL_DESCRIPTOR_TYPE_INVALID);
        }
        (len > env.limits.max_transfer).then_some(status::SGL_DATA_LENGTH_INVALID)
    }

    fn advance_sqhd(&mut self) {
        let size = self.depth() as u16;
        self.sqhd = (self.sqhd + 1) % size.max(1);
    }

    fn try_acquire_buffer(&mut self, s: u16, env: &mut Env) -> bool {
        let len = self.slots[s as usize].xfer_len as usize;
        let buf = if len <= self.inline_size {
            DataBuf::Inline
        } else {
            match env.pool.get(len) {
                Some(b) => DataBuf::Pool(b),
                None => return false,
            }
        };
        self.slots[s as usize].buf = buf;
        true
    }

    /// The data buffer is in place: fetch write data with an R2T, or execute.
    fn data_buffer_ready(&mut self, s: u16, env: &mut Env) {
        let slot = &mut self.slots[s as usize];
        if command::data_direction(&slot.sqe) == DataDir::HostToController {
            let r = R2t {
                cccid: slot.sqe.cid,
                ttag: s,
                r2to: 0,
                r2tl: slot.xfer_len,
            };
            slot.r2t_len = pdu::encode_r2t(&mut slot.r2t_hdr, &r, self.hdgst) as u8;
            slot.state = SlotState::AwaitingData;
            self.awaiting_data += 1;
            self.tx.push_back(TxItem::new(TxWhat::R2t(s)));
        } else {
            slot.state = SlotState::Executing;
            self.execute(s, env);
        }
    }

    fn on_h2c_data(
        &mut self,
        cccid: u16,
        ttag: u16,
        datao: u32,
        data: &[u8],
        ddgst_ok: bool,
        env: &mut Env,
    ) -> Result<(), PduError> {
        self.check_h2c(cccid, ttag, datao, data.len())?;
        self.data_mut(ttag, env)[datao as usize..datao as usize + data.len()].copy_from_slice(data);
        self.accept_h2c(ttag, data.len(), ddgst_ok, env);
        Ok(())
    }

    /// Whether H2CData for (cccid, ttag) at `datao` with `len` bytes fits the transfer.
    fn check_h2c(&self, cccid: u16, ttag: u16, datao: u32, len: usize) -> Result<(), PduError> {
        let Some(slot) = self.slots.get(ttag as usize) else {
            return Err(PduError {
                fes: Fes::InvalidHeaderField,
                fei: 10,
            });
        };
        if slot.state != SlotState::AwaitingData || slot.sqe.cid != cccid {
            return Err(PduError {
                fes: Fes::InvalidHeaderField,
                fei: if slot.sqe.cid != cccid { 8 } else { 10 },
            });
        }
        if datao != slot.received {
            return Err(PduError {
                fes: Fes::DataOutOfRange,
                fei: 12,
            });
        }
        if datao as usize + len > slot.xfer_len as usize {
            return Err(PduError {
                fes: Fes::DataOutOfRange,
                fei: 16,
            });
        }
        Ok(())
    }

    /// `len` more bytes of slot `ttag`'s data are in its buffer; execute once all are.
    fn accept_h2c(&mut self, ttag: u16, len: usize, ddgst_ok: bool, env: &mut Env) {
        let slot = &mut self.slots[ttag as usize];
        slot.received += len as u32;
        slot.transport_error |= !ddgst_ok;
        if slot.received == slot.xfer_len {
            self.awaiting_data -= 1;
            if slot.transport_error {
                self.complete(ttag, TRANSIENT_TRANSPORT_ERROR, 0, env);
            } else {
                self.slots[ttag as usize].state = SlotState::Executing;
                self.execute(ttag, env);
            }
        }
    }

    fn data_ptr(&self, s: u16, env: &Env) -> *mut u8 {
        match self.slots[s as usize].buf {
            // SAFETY: slot s owns bytes [s * inline_size, (s + 1) * inline_size).
            DataBuf::Inline => unsafe { self.inline.as_ptr().add(s as usize * self.inline_size) },
            DataBuf::Pool(b) => env.pool.ptr(b),
            DataBuf::None => std::ptr::null_mut(),
        }
    }

    /// Slot s's data buffer; the slot owns it until the slot is freed.
    fn data_mut(&mut self, s: u16, env: &Env) -> &mut [u8] {
        let len = self.slots[s as usize].xfer_len as usize;
        let p = self.data_ptr(s, env);
        if p.is_null() {
            return &mut [];
        }
        // SAFETY: the buffer belongs to slot s alone and holds at least xfer_len bytes.
        unsafe { std::slice::from_raw_parts_mut(p, len) }
    }

    /// Hand a command whose data is in to the execution layer and act on its outcome.
    fn execute(&mut self, s: u16, env: &mut Env) {
        let buf_index = match self.slots[s as usize].buf {
            DataBuf::Pool(b) => env.pool.reg_index(b),
            DataBuf::Inline => self.inline_reg_index,
            DataBuf::None => None,
        };
        let user_data = self.token(Kind::Bdev, s as u32);
        let sqe = self.slots[s as usize].sqe;
        let data = self.data_mut(s, env);
        // SAFETY: the slot owns its data buffer until it is freed, which cannot happen
        // while the execution layer runs; the borrow only spans that call.
        let data = unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr(), data.len()) };
        let mut x = ExecEnv {
            sq: &mut *env.sq,
            channels: &mut *env.channels,
            target: env.target,
            limits: env.limits,
        };
        let outcome = self.session.execute(
            Request {
                sqe,
                data,
                buf_index,
                user_data,
            },
            &mut x,
        );
        match outcome {
            Outcome::Done {
                status,
                result,
                data_out,
            } => {
                self.slots[s as usize].data_out = data_out;
                self.complete(s, status, result, env);
            }
            Outcome::Io {
                pending,
                status,
                stat,
            } => {
                let slot = &mut self.slots[s as usize];
                slot.pending_ops += pending;
                slot.status = status;
                slot.stat = stat;
                self.ops_in_flight += pending as u32;
                self.finish_if_done(s, env);
            }
            Outcome::Parked => self.slots[s as usize].state = SlotState::AsyncEvent,
        }
    }

    pub fn on_bdev_complete(&mut self, s: u16, res: i32, env: &mut Env) {
        self.ops_in_flight -= 1;
        let slot = &mut self.slots[s as usize];
        debug_assert!(slot.pending_ops > 0);
        slot.pending_ops -= 1;
        let slot = &mut self.slots[s as usize];
        slot.status = exec::io_status(slot.sqe.opcode, slot.xfer_len, res, slot.status);
        self.finish_if_done(s, env);
    }

    fn finish_if_done(&mut self, s: u16, env: &mut Env) {
        let slot = &self.slots[s as usize];
        if slot.pending_ops > 0 || slot.state != SlotState::Executing {
            return;
        }
        let status = slot.status;
        if status == status::SUCCESS && slot.sqe.opcode == io::READ {
            self.slots[s as usize].data_out = slot.xfer_len;
        }
        self.complete(s, status, 0, env);
    }

    /// Queue the response (with C2HData first for data to the host).
    fn complete(&mut self, s: u16, sc: u16, result: u64, env: &mut Env) {
        // Nothing may follow a C2HTermReq on the wire.
        if matches!(self.phase, Phase::Closing | Phase::Terminating) {
            return self.free_slot(s, env);
        }
        let (qid, no_sq_flow) = self
            .session
            .binding()
            .map_or((0, false), |b| (b.qid, b.no_sq_flow));
        let (hdgst, ddgst) = (self.hdgst, self.ddgst);
        let sqhd = self.sqhd;
        let data_out = if sc & 0x7FF == 0 {
            self.slots[s as usize].data_out
        } else {
            0
        };
        // Without SQ flow control the host needs no SQ head, so a clean read's last data
        // PDU can carry the completion itself (as the Linux target does).
        let whole = data_out == self.slots[s as usize].xfer_len;
        let success_in_data =
            no_sq_flow && data_out > 0 && whole && sc == status::SUCCESS && result == 0;
        if data_out > 0 {
            let d = &self.data_mut(s, env)[..data_out as usize];
            let digest = if ddgst { pdu::crc32c(d) } else { 0 };
            let slot = &mut self.slots[s as usize];
            let h = DataHeader {
                cccid: slot.sqe.cid,
                ttag: 0,
                datao: 0,
                datal: data_out,
                last: true,
                success: success_in_data,
            };
            slot.data_hdr_len =
                pdu::encode_data_header(&mut slot.data_hdr, true, &h, hdgst, ddgst) as u8;
            slot.ddgst = digest.to_le_bytes();
        }
        let slot = &mut self.slots[s as usize];
        slot.data_out = data_out;
        if let (Some(t), Some((ns, class, bytes))) = (slot.started, slot.stat) {
            let bytes = if sc & 0x7FF == 0 { bytes as u64 } else { 0 };
            env.stats
                .record(ns as usize, class, t.elapsed_micros(), bytes);
        }
        slot.resp_len = if success_in_data {
            0
        } else {
            let cqe = Cqe {
                dw0: result as u32,
                dw1: (result >> 32) as u32,
                sqhd,
                sqid: qid,
                cid: slot.sqe.cid,
                status: sc,
            };
            pdu::encode_capsule_resp(&mut slot.resp_hdr, &cqe.encode(), hdgst) as u8
        };
        slot.state = SlotState::Transmitting;
        self.tx.push_back(TxItem::new(TxWhat::Response(s)));
    }

    fn free_slot(&mut self, s: u16, env: &mut Env) {
        let slot = &mut self.slots[s as usize];
        if slot.state == SlotState::AsyncEvent {
            self.session.aer_released();
        }
        if let DataBuf::Pool(b) = slot.buf {
            env.pool.put(b);
        }
        slot.buf = DataBuf::None;
        slot.state = SlotState::Free;
        self.free_slots.push(s);
    }

    // ----------------------------------------------------------------- transmit

    /// The byte segments of one queued item, in wire order.
    fn segments(&self, what: TxWhat, env: &Env) -> ([(*const u8, usize); 4], usize) {
        let mut seg = [(std::ptr::null(), 0usize); 4];
        let n = match what {
            TxWhat::IcResp => {
                seg[0] = (self.ic_resp.as_ptr(), pdu::IC_LEN);
                1
            }
            TxWhat::TermReq => {
                seg[0] = (self.term_req.as_ptr(), self.term_len);
                1
            }
            TxWhat::R2t(s) => {
                let slot = &self.slots[s as usize];
                seg[0] = (slot.r2t_hdr.as_ptr(), slot.r2t_len as usize);
                1
            }
            TxWhat::Response(s) => {
                let slot = &self.slots[s as usize];
                let mut n = 0;
                if slot.data_out > 0 {
                    seg[0] = (slot.data_hdr.as_ptr(), slot.data_hdr_len as usize);
                    seg[1] = (self.data_ptr(s, env) as *const u8, slot.data_out as usize);
                    n = 2;
                    if self.ddgst {
                        seg[2] = (slot.ddgst.as_ptr(), 4);
                        n = 3;
                    }
                }
                if slot.resp_len > 0 {
                    seg[n] = (slot.resp_hdr.as_ptr(), slot.resp_len as usize);
                    n += 1;
                }
                n
            }
        };
        (seg, n)
    }

    fn arm_send(&mut self, env: &mut Env) {
        let mut n_iov = 0;
        let mut bytes = 0;
        'items: for i in 0..self.tx.len() {
            let item = self.tx[i];
            let (seg, n) = self.segments(item.what, env);
            self.tx[i].len = seg[..n].iter().map(|s| s.1).sum();
            let mut skip = item.sent;
            for &(p, len) in &seg[..n] {
                if skip >= len {
                    skip -= len;
                    continue;
                }
                if n_iov == MAX_IOV {
                    break 'items;
                }
                // SAFETY: skip < len, so the pointer stays inside the segment.
                self.iov[n_iov] = libc::iovec {
                    iov_base: unsafe { p.add(skip) } as *mut libc::c_void,
                    iov_len: len - skip,
                };
                bytes += len - skip;
                skip = 0;
                n_iov += 1;
            }
        }
        debug_assert!(bytes > 0);
        let n_iov = self.trim_to_whole_buffers(n_iov, &mut bytes);
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = n_iov;
        let e = opcode::SendMsg::new(self.fd(), &*self.msg as *const libc::msghdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(self.token(Kind::Send, 0));
        env.sq.push(e);
        self.send_armed = true;
        self.send_bytes = bytes;
        self.ops_in_flight += 1;
    }

    /// Shorten the gathered iovecs to whole socket buffers (`sendsize`); returns how many
    /// remain. The bytes left out stay queued for the next send.
    fn trim_to_whole_buffers(&mut self, mut n_iov: usize, bytes: &mut usize) -> usize {
        let keep = sendsize::whole_buffers(*bytes, self.send_goal.bytes());
        let mut excess = *bytes - keep;
        *bytes = keep;
        while excess > 0 {
            let last = &mut self.iov[n_iov - 1];
            if last.iov_len > excess {
                last.iov_len -= excess;
                break;
            }
            excess -= last.iov_len;
            n_iov -= 1;
        }
        n_iov
    }

    pub fn on_send(&mut self, res: i32, env: &mut Env) {
        self.send_armed = false;
        self.ops_in_flight -= 1;
        if res < 0 {
            self.close("send error");
            return;
        }
        let mut left = res as usize;
        debug_assert!(left <= self.send_bytes);
        while left > 0 {
            let item = *self.tx.front().expect("sent bytes belong to queued items");
            debug_assert!(
                item.len > item.sent,
                "a sent item was measured when its send was armed"
            );
            let remaining = item.len - item.sent;
            if left < remaining {
                self.tx.front_mut().unwrap().sent += left;
                break;
            }
            left -= remaining;
            self.tx.pop_front();
            self.item_sent(item.what, env);
        }
    }

    fn item_sent(&mut self, what: TxWhat, env: &mut Env) {
        match what {
            TxWhat::TermReq => self.close("terminated after C2HTermReq"),
            TxWhat::IcResp | TxWhat::R2t(_) => {}
            TxWhat::Response(s) => self.free_slot(s, env),
        }
    }
}
