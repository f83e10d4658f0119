//! The NVMe/TCP host side (initiator): queues over non-blocking sockets, a controller
//! helper that performs the admin bring-up the Linux host does, and the `perf` load
//! generator. Used by integration tests and `nvmf-raid perf`.

pub mod perf;

use std::io::{self, ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::nvmf::command::{self, Cqe, Sqe};
use crate::nvmf::pdu::{self, DataHeader, DecodeParams, Decoded, IcReq, Pdu};
use crate::nvmf::spec::{admin, fabrics, io as io_op, property, DISCOVERY_NQN};
use crate::util::clock::Stamp;

/// Data a command moves. Raw pointers: the caller keeps the memory alive and untouched
/// until the command completes (the safe wrappers below do).
#[derive(Debug, Clone, Copy)]
pub enum Data {
    None,
    ToController(*const u8, usize),
    FromController(*mut u8, usize),
}

#[derive(Debug, Clone)]
pub struct QueueOptions {
    pub hdgst: bool,
    pub ddgst: bool,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub kato_ms: u32,
    /// Entries in the queue (the Connect sqsize is this minus one).
    pub depth: u16,
    pub timeout: Duration,
    /// Ask for no SQ flow control at connect (`nvme connect --disable-sqflow`); the
    /// controller may then complete reads with the C2HData SUCCESS flag.
    pub disable_sqflow: bool,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            hdgst: false,
            ddgst: false,
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001".into(),
            hostid: [0x11; 16],
            kato_ms: 30_000,
            depth: 128,
            timeout: Duration::from_secs(10),
            disable_sqflow: false,
        }
    }
}

#[derive(Clone, Copy)]
struct Pending {
    data: Data,
    received: usize,
    submitted: Stamp,
}

/// Payloads at least this large are sent from the caller's buffer rather than copied.
const EXTERNAL_MIN: usize = 4096;
/// A C2HData payload with at least this much still to arrive is received straight into
/// the command's buffer, not into `rx` and then copied (one copy of a large read, not two).
const DIRECT_MIN: usize = 16 * 1024;

/// A C2HData payload being received straight into its command's buffer.
#[derive(Debug, Clone, Copy)]
struct DirectC2h {
    p: pdu::DirectPayload,
    /// Where the payload starts in the command's buffer (range checked at the start).
    dst: *mut u8,
}

/// A run of bytes to send: a range of the queue's own buffer, or a caller's payload.
#[derive(Debug, Clone, Copy)]
enum TxSeg {
    Own(usize, usize),
    External(*const u8, usize),
}

/// Time since submission, from the cheap clock (read twice per I/O).
fn latency(submitted: Stamp) -> Duration {
    Duration::from_nanos(Stamp::now().nanos_since(submitted))
}

pub fn err(msg: impl Into<String>) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg.into())
}

/// One NVMe/TCP queue: a TCP connection that has completed ICReq/ICResp.
pub struct Queue {
    sock: TcpStream,
    hdgst: bool,
    ddgst: bool,
    pub maxh2cdata: u32,
    /// Largest write sent in-capsule (IOCCSZ * 16 - 64 of the controller).
    pub in_capsule_max: usize,
    pub qid: u16,
    /// SQ flow control was disabled at connect: C2HData may carry the completion.
    no_sq_flow: bool,
    /// Bytes to send, in order: headers and digests copied into `tx`, large payloads
    /// referenced where the caller keeps them (sent with writev, never copied here).
    tx: Vec<u8>,
    tx_segs: Vec<TxSeg>,
    /// Bytes queued in `tx_segs`, and how many of them are sent.
    tx_len: usize,
    tx_off: usize,
    rx: Vec<u8>,
    rx_head: usize,
    rx_tail: usize,
    pending: Vec<Option<Pending>>,
    free_cids: Vec<u16>,
    timeout: Duration,
    /// A C2HTermReq the controller sent: (fes, fei).
    pub terminated: Option<(u16, u32)>,
    /// Completions that arrived as a C2HData SUCCESS flag rather than a response capsule.
    pub completed_in_data: u64,
    /// Of those, how many came while SQ flow control was on, which the specification does
    /// not allow but SPDK's target does and the Linux host accepts: counted, not refused.
    pub success_with_sq_flow: u64,
    /// Fault injection: send the next data digest wrong.
    pub corrupt_next_data_digest: bool,
    direct: Option<DirectC2h>,
    /// C2HData payloads received straight into their command's buffer.
    pub direct_payloads: u64,
}

// SAFETY: the raw buffer pointers in `pending` are only dereferenced by whoever owns the
// queue; moving the queue to another thread moves that duty with it.
unsafe impl Send for Queue {}

impl Queue {
    /// TCP connect and exchange ICReq/ICResp.
    pub fn open(addr: SocketAddr, opts: &QueueOptions) -> io::Result<Queue> {
        let sock = TcpStream::connect_timeout(&addr, opts.timeout)?;
        sock.set_nodelay(true)?;
        sock.set_nonblocking(true)?;
        let depth = opts.depth.max(1) as usize;
        let mut q = Queue {
            sock,
            hdgst: false,
            ddgst: false,
            maxh2cdata: 0,
            in_capsule_max: 0,
            qid: 0,
            no_sq_flow: false,
            tx: Vec::with_capacity(256 * 1024),
            tx_segs: Vec::with_capacity(256),
            tx_len: 0,
            tx_off: 0,
            rx: vec![0; 2 << 20],
            rx_head: 0,
            rx_tail: 0,
            pending: vec![None; depth],
            free_cids: (0..depth as u16).rev().collect(),
            timeout: opts.timeout,
            terminated: None,
            completed_in_data: 0,
            success_with_sq_flow: 0,
            corrupt_next_data_digest: false,
            direct: None,
            direct_payloads: 0,
        };
        let mut b = [0u8; pdu::IC_LEN];
        pdu::encode_ic_req(
            &mut b,
            &IcReq {
                pfv: 0,
                hpda: 0,
                hdgst: opts.hdgst,
                ddgst: opts.ddgst,
                maxr2t: 0,
            },
        );
        q.queue_own(&b);
        let deadline = Instant::now() + opts.timeout;
        loop {
            q.flush_tx()?;
            let n = q.fill_rx()?;
            let p = DecodeParams {
                hdgst: false,
                ddgst: false,
                max_data: 0,
                from_host: false,
            };
            match pdu::decode(&q.rx[q.rx_head..q.rx_tail], &p)
                .map_err(|e| err(format!("bad ICResp: {e}")))?
            {
                Decoded::Frame(f) => {
                    let Pdu::IcResp(r) = f.pdu else {
                        return Err(err(format!("expected ICResp, got {:?}", f.pdu)));
                    };
                    if r.hdgst != opts.hdgst
                        || r.ddgst != opts.ddgst
                        || r.cpda != 0
                        || r.maxh2cdata < 4096
                        || r.maxh2cdata % 4 != 0
                    {
                        return Err(err(format!("unacceptable ICResp {r:?}")));
                    }
                    q.rx_head += f.len;
                    q.hdgst = r.hdgst;
                    q.ddgst = r.ddgst;
                    q.maxh2cdata = r.maxh2cdata;
                    return Ok(q);
                }
                Decoded::Incomplete(_) if n == 0 => q.wait(deadline, true)?,
                Decoded::Incomplete(_) => {}
            }
        }
    }

    /// Fabrics Connect on this queue; returns the controller id.
    pub fn connect(
        &mut self,
        qid: u16,
        cntlid: u16,
        subnqn: &str,
        opts: &QueueOptions,
    ) -> io::Result<u16> {
        let mut data = [0u8; fabrics::CONNECT_DATA_LEN];
        data[..16].copy_from_slice(&opts.hostid);
        data[16..18].copy_from_slice(&cntlid.to_le_bytes());
        data[256..256 + subnqn.len().min(255)]
            .copy_from_slice(&subnqn.as_bytes()[..subnqn.len().min(255)]);
        data[512..512 + opts.hostnqn.len().min(255)]
            .copy_from_slice(&opts.hostnqn.as_bytes()[..opts.hostnqn.len().min(255)]);
        let sqsize = self.pending.len() as u16 - 1;
        let kato = if qid == 0 { opts.kato_ms } else { 0 };
        let cattr = if opts.disable_sqflow {
            command::CATTR_DISABLE_SQFLOW
        } else {
            0
        };
        let sqe = command::connect_sqe(0, qid, sqsize, cattr, kato);
        // The Connect data always travels in-capsule.
        let saved = self.in_capsule_max;
        self.in_capsule_max = fabrics::CONNECT_DATA_LEN;
        let r = self.execute(sqe, Data::ToController(data.as_ptr(), data.len()));
        self.in_capsule_max = saved;
        let cqe = r?;
        if !cqe.is_success() {
            return Err(status_error("connect", &cqe));
        }
        self.qid = qid;
        self.no_sq_flow = opts.disable_sqflow;
        Ok(cqe.dw0 as u16)
    }

    /// The CID the next `submit` will use.
    pub fn peek_cid(&self) -> Option<u16> {
        self.free_cids.last().copied()
    }

    pub fn outstanding(&self) -> usize {
        self.pending.len() - self.free_cids.len()
    }

    pub fn depth(&self) -> usize {
        self.pending.len()
    }

    /// Queue a command; its CID is chosen here. Sends happen in `poll`.
    pub fn submit(&mut self, mut sqe: Sqe, data: Data) -> io::Result<u16> {
        let cid = self.free_cids.pop().ok_or_else(|| err("queue full"))?;
        sqe.cid = cid;
        let in_capsule = match data {
            Data::ToController(_, len) => {
                sqe.sgl_len = len as u32;
                len <= self.in_capsule_max
            }
            Data::FromController(_, len) => {
                sqe.sgl_len = len as u32;
                false
            }
            Data::None => false,
        };
        if sqe.sgl_len > 0 {
            sqe.sgl_type = if in_capsule {
                command::SGL_IN_CAPSULE
            } else {
                command::SGL_TRANSPORT
            };
        }
        let capsule_data: &[u8] = match data {
            // SAFETY: the caller guarantees the buffer for the command's lifetime.
            Data::ToController(p, len) if in_capsule => unsafe {
                std::slice::from_raw_parts(p, len)
            },
            _ => &[],
        };
        let mut hdr = [0u8; 80];
        let n = pdu::encode_capsule_cmd(
            &mut hdr,
            &sqe.encode(),
            capsule_data.len(),
            self.hdgst,
            self.ddgst,
        );
        self.queue_own(&hdr[..n]);
        self.push_data(capsule_data);
        self.pending[cid as usize] = Some(Pending {
            data,
            received: 0,
            submitted: Stamp::now(),
        });
        Ok(cid)
    }

    fn push_data(&mut self, d: &[u8]) {
        if d.is_empty() {
            return;
        }
        if d.len() >= EXTERNAL_MIN {
            self.tx_segs.push(TxSeg::External(d.as_ptr(), d.len()));
            self.tx_len += d.len();
        } else {
            self.queue_own(d);
        }
        if self.ddgst {
            let flip = std::mem::take(&mut self.corrupt_next_data_digest) as u32;
            self.queue_own(&(pdu::crc32c(d) ^ flip).to_le_bytes());
        }
    }

    /// Queue a copy of `b` (headers, digests, small payloads).
    fn queue_own(&mut self, b: &[u8]) {
        let start = self.tx.len();
        self.tx.extend_from_slice(b);
        match self.tx_segs.last_mut() {
            Some(TxSeg::Own(_, end)) if *end == start => *end = self.tx.len(),
            _ => self.tx_segs.push(TxSeg::Own(start, self.tx.len())),
        }
        self.tx_len += b.len();
    }

    /// Queue raw bytes (for tests that send malformed PDUs).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.queue_own(bytes);
        self.flush_tx()
    }

    fn flush_tx(&mut self) -> io::Result<()> {
        while self.tx_off < self.tx_len {
            let (iov, n) = self.unsent_iovecs();
            // SAFETY: n valid iovecs over `tx` and over payloads the callers keep alive.
            let r = unsafe { libc::writev(self.sock.as_raw_fd(), iov.as_ptr(), n as i32) };
            match r {
                0 => return Err(io::Error::from(ErrorKind::WriteZero)),
                n if n > 0 => self.tx_off += n as usize,
                _ => match io::Error::last_os_error() {
                    e if e.kind() == ErrorKind::WouldBlock => break,
                    e if e.kind() == ErrorKind::Interrupted => continue,
                    e => return Err(e),
                },
            }
        }
        if self.tx_off == self.tx_len {
            self.tx.clear();
            self.tx_segs.clear();
            self.tx_len = 0;
            self.tx_off = 0;
        }
        Ok(())
    }

    /// The unsent bytes as up to 64 iovecs.
    fn unsent_iovecs(&self) -> ([libc::iovec; 64], usize) {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 64];
        let (mut n, mut skip) = (0, self.tx_off);
        for seg in &self.tx_segs {
            let (p, len) = match *seg {
                TxSeg::Own(a, b) => (self.tx[a..b].as_ptr(), b - a),
                TxSeg::External(p, len) => (p, len),
            };
            if skip >= len {
                skip -= len;
                continue;
            }
            // SAFETY: skip < len keeps the pointer inside the segment.
            iov[n] = libc::iovec {
                iov_base: unsafe { p.add(skip) } as *mut libc::c_void,
                iov_len: len - skip,
            };
            skip = 0;
            n += 1;
            if n == iov.len() {
                break;
            }
        }
        (iov, n)
    }

    /// Read what the socket has; Ok(0) when nothing is available. While a direct C2HData
    /// receive is under way, the rest of its payload lands in the command's buffer first.
    fn fill_rx(&mut self) -> io::Result<usize> {
        if self.rx_head == self.rx_tail {
            self.rx_head = 0;
            self.rx_tail = 0;
        } else if self.rx.len() - self.rx_tail < 256 * 1024 {
            self.rx.copy_within(self.rx_head..self.rx_tail, 0);
            self.rx_tail -= self.rx_head;
            self.rx_head = 0;
        }
        let got = match self.direct.filter(|d| d.p.payload_left() > 0) {
            Some(d) => self.read_direct(d),
            None => self.sock.read(&mut self.rx[self.rx_tail..]).inspect(|&n| {
                self.rx_tail += n;
            }),
        };
        match got {
            Ok(0) => Err(io::Error::new(
                ErrorKind::ConnectionAborted,
                "controller closed the connection",
            )),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// One readv: the rest of the direct payload, then `rx`. Accounts what landed where.
    fn read_direct(&mut self, mut d: DirectC2h) -> io::Result<usize> {
        let iov = [
            libc::iovec {
                // SAFETY: start_direct checked the whole payload against the buffer.
                iov_base: unsafe { d.dst.add(d.p.got) } as *mut libc::c_void,
                iov_len: d.p.payload_left(),
            },
            libc::iovec {
                iov_base: self.rx[self.rx_tail..].as_mut_ptr() as *mut libc::c_void,
                iov_len: self.rx.len() - self.rx_tail,
            },
        ];
        // SAFETY: two valid iovecs over memory this queue may write.
        let n = unsafe { libc::readv(self.sock.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.rx_tail += d.p.take(n as usize);
        self.direct = Some(d);
        Ok(n as usize)
    }

    fn wait(&self, deadline: Instant, read: bool) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                "timed out waiting for the controller",
            ));
        }
        let mut events = if read { libc::POLLIN } else { 0 };
        if self.tx_off < self.tx_len {
            events |= libc::POLLOUT;
        }
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32 + 1) };
        Ok(())
    }

    /// Send what is queued, receive and process what arrived; `done(cid, cqe, latency)` runs
    /// for each completion. Returns the number of completions. Never blocks.
    pub fn poll(&mut self, done: &mut dyn FnMut(u16, Cqe, Duration)) -> io::Result<usize> {
        self.flush_tx()?;
        let mut completions = 0;
        loop {
            let got = self.fill_rx()?;
            completions += self.finish_direct(done)?;
            completions += self.process_rx(done)?;
            self.flush_tx()?;
            if got == 0 {
                return Ok(completions);
            }
        }
    }

    fn process_rx(&mut self, done: &mut dyn FnMut(u16, Cqe, Duration)) -> io::Result<usize> {
        let p = DecodeParams {
            hdgst: self.hdgst,
            ddgst: self.ddgst,
            max_data: 16 << 20,
            from_host: false,
        };
        if self.direct.is_some() {
            return Ok(0);
        }
        let rx = std::mem::take(&mut self.rx);
        let mut n = 0;
        let result = loop {
            let f = match pdu::decode(&rx[self.rx_head..self.rx_tail], &p) {
                Ok(Decoded::Incomplete(_)) => {
                    self.rx = rx;
                    return self.start_direct(&p).map(|_| n);
                }
                Ok(Decoded::Frame(f)) => f,
                Err(e) => break Err(err(format!("controller sent a malformed PDU: {e}"))),
            };
            self.rx_head += f.len;
            if !f.ddgst_ok {
                break Err(err("data digest mismatch"));
            }
            match self.on_pdu(f.pdu, done) {
                Ok(c) => n += c,
                Err(e) => break Err(e),
            }
        };
        self.rx = rx;
        result
    }

    fn on_pdu(&mut self, p: Pdu, done: &mut dyn FnMut(u16, Cqe, Duration)) -> io::Result<usize> {
        match p {
            Pdu::CapsuleResp { cqe } => self.finish(Cqe::parse(cqe), done),
            Pdu::C2HData {
                cccid,
                datao,
                last,
                success,
                data,
            } => {
                let dst = self.c2h_target(cccid, datao, data.len())?;
                // SAFETY: c2h_target checked the range; the caller keeps the buffer alive
                // until completion.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
                self.c2h_landed(cccid, data.len(), last, success, done)
            }
            Pdu::R2T(r) => {
                self.on_r2t(r)?;
                Ok(0)
            }
            Pdu::TermReq { fes, fei, .. } => {
                self.terminated = Some((fes, fei));
                Err(io::Error::new(
                    ErrorKind::ConnectionAborted,
                    format!("controller terminated the connection: fes {fes:#x} fei {fei}"),
                ))
            }
            other => Err(err(format!("unexpected PDU {other:?}"))),
        }
    }

    /// Where `len` payload bytes at `datao` of command `cccid` go; they must continue
    /// what has arrived and fit the command's read buffer.
    fn c2h_target(&self, cccid: u16, datao: u32, len: usize) -> io::Result<*mut u8> {
        let (buf, buf_len, received) = match self.pending.get(cccid as usize) {
            Some(Some(Pending {
                data: Data::FromController(buf, buf_len),
                received,
                ..
            })) => (*buf, *buf_len, *received),
            Some(Some(_)) => return Err(err("C2HData for a command without read data")),
            _ => return Err(err("C2HData for unknown cid")),
        };
        if datao as usize != received || datao as usize + len > buf_len {
            return Err(err("C2HData out of order or out of range"));
        }
        // SAFETY: datao + len <= buf_len, inside the caller's buffer.
        Ok(unsafe { buf.add(datao as usize) })
    }

    /// `len` payload bytes of command `cccid` are in its buffer; a SUCCESS flag completes it.
    fn c2h_landed(
        &mut self,
        cccid: u16,
        len: usize,
        last: bool,
        success: bool,
        done: &mut dyn FnMut(u16, Cqe, Duration),
    ) -> io::Result<usize> {
        let pend = self.pending[cccid as usize].as_mut().expect("checked");
        pend.received += len;
        if !success {
            return Ok(0);
        }
        if !last {
            return Err(err("C2HData SUCCESS without LAST_PDU"));
        }
        self.completed_in_data += 1;
        self.success_with_sq_flow += !self.no_sq_flow as u64;
        self.finish(
            Cqe {
                dw0: 0,
                dw1: 0,
                sqhd: 0,
                sqid: self.qid,
                cid: cccid,
                status: 0,
            },
            done,
        )
    }

    /// The PDU at the head of `rx` is a C2HData whose payload is mostly still to come:
    /// take what is here into the command's buffer and receive the rest there directly.
    /// Anything else (or a header `decode` would refuse) is left to be decoded whole.
    fn start_direct(&mut self, p: &DecodeParams) -> io::Result<()> {
        let avail = &self.rx[self.rx_head..self.rx_tail];
        let Some(hdr) = pdu::data_header_ahead(avail, p, pdu::pdu_type::C2H_DATA) else {
            return Ok(());
        };
        let here = (avail.len() - hdr.data_off).min(hdr.data_len);
        if hdr.data_len - here < DIRECT_MIN {
            return Ok(());
        }
        let dst = self.c2h_target(hdr.cccid, hdr.datao, hdr.data_len)?;
        let from = self.rx_head + hdr.data_off;
        // SAFETY: c2h_target checked the whole payload's range.
        unsafe { std::ptr::copy_nonoverlapping(self.rx[from..].as_ptr(), dst, here) };
        self.rx_head = from + here;
        self.direct = Some(DirectC2h {
            p: pdu::DirectPayload { hdr, got: here },
            dst,
        });
        self.direct_payloads += 1;
        Ok(())
    }

    /// Complete a direct receive once its payload and data digest are in.
    fn finish_direct(&mut self, done: &mut dyn FnMut(u16, Cqe, Duration)) -> io::Result<usize> {
        let Some(DirectC2h { p, dst }) = self.direct else {
            return Ok(0);
        };
        let after = &self.rx[self.rx_head..self.rx_tail];
        if !p.complete(after) {
            return Ok(0);
        }
        // SAFETY: the payload landed at `dst`, whose range start_direct checked.
        let payload = unsafe { std::slice::from_raw_parts(dst, p.hdr.data_len) };
        if !p.digest_ok(payload, after) {
            return Err(err("data digest mismatch"));
        }
        self.rx_head += p.digest_len();
        self.direct = None;
        self.c2h_landed(p.hdr.cccid, p.hdr.data_len, p.hdr.last, p.hdr.success, done)
    }

    /// Complete command `cqe.cid`: from a response capsule, or from the SUCCESS flag.
    fn finish(&mut self, cqe: Cqe, done: &mut dyn FnMut(u16, Cqe, Duration)) -> io::Result<usize> {
        let pend = self
            .pending
            .get_mut(cqe.cid as usize)
            .and_then(|p| p.take())
            .ok_or_else(|| err(format!("response for unknown cid {}", cqe.cid)))?;
        if let Data::FromController(_, len) = pend.data {
            if cqe.is_success() && pend.received != len {
                return Err(err(format!(
                    "read completed with {} of {len} bytes",
                    pend.received
                )));
            }
        }
        self.free_cids.push(cqe.cid);
        done(cqe.cid, cqe, latency(pend.submitted));
        Ok(1)
    }

    fn on_r2t(&mut self, r: pdu::R2t) -> io::Result<()> {
        let pend = self
            .pending
            .get(r.cccid as usize)
            .and_then(|p| *p)
            .ok_or_else(|| err("R2T for unknown cid"))?;
        let Data::ToController(buf, len) = pend.data else {
            return Err(err("R2T for a command without write data"));
        };
        let (start, end) = (r.r2to as usize, r.r2to as usize + r.r2tl as usize);
        if r.r2tl == 0 || end > len {
            return Err(err("R2T out of range"));
        }
        let mut off = start;
        while off < end {
            let chunk = (end - off).min(self.maxh2cdata as usize);
            let h = DataHeader {
                cccid: r.cccid,
                ttag: r.ttag,
                datao: off as u32,
                datal: chunk as u32,
                last: off + chunk == end,
                success: false,
            };
            let mut hdr = [0u8; 28];
            let n = pdu::encode_data_header(&mut hdr, false, &h, self.hdgst, self.ddgst);
            self.queue_own(&hdr[..n]);
            // SAFETY: off + chunk <= len, and the caller keeps `buf` alive.
            let d = unsafe { std::slice::from_raw_parts(buf.add(off), chunk) };
            self.push_data(d);
            off += chunk;
        }
        Ok(())
    }

    /// Submit one command and wait for it.
    pub fn execute(&mut self, sqe: Sqe, data: Data) -> io::Result<Cqe> {
        let cid = self.submit(sqe, data)?;
        let deadline = Instant::now() + self.timeout;
        let mut result = None;
        while result.is_none() {
            let n = self.poll(&mut |c, cqe, _| {
                if c == cid {
                    result = Some(cqe);
                }
            })?;
            if n == 0 && result.is_none() {
                self.wait(deadline, true)?;
            }
        }
        Ok(result.unwrap())
    }

    /// Wait until the controller ends the connection; returns its TermReq (fes, fei) if
    /// it sent one.
    pub fn wait_for_termination(&mut self, limit: Duration) -> io::Result<Option<(u16, u32)>> {
        let deadline = Instant::now() + limit;
        loop {
            match self.poll(&mut |_, _, _| {}) {
                Err(e)
                    if e.kind() == ErrorKind::ConnectionAborted
                        || e.kind() == ErrorKind::ConnectionReset =>
                {
                    return Ok(self.terminated)
                }
                Err(e) => return Err(e),
                Ok(_) => self.wait(deadline, true)?,
            }
        }
    }

    pub fn read(
        &mut self,
        nsid: u32,
        slba: u64,
        block_shift: u32,
        buf: &mut [u8],
    ) -> io::Result<Cqe> {
        let nlb = (buf.len() >> block_shift) as u32;
        let sqe = command::rw_sqe(io_op::READ, 0, nsid, slba, nlb, buf.len() as u32, false);
        self.execute(sqe, Data::FromController(buf.as_mut_ptr(), buf.len()))
    }

    pub fn write(&mut self, nsid: u32, slba: u64, block_shift: u32, buf: &[u8]) -> io::Result<Cqe> {
        let nlb = (buf.len() >> block_shift) as u32;
        let sqe = command::rw_sqe(io_op::WRITE, 0, nsid, slba, nlb, buf.len() as u32, false);
        self.execute(sqe, Data::ToController(buf.as_ptr(), buf.len()))
    }

    /// Give the connected socket to a caller that drives it itself (a remote device on a
    /// reactor's ring): (socket, MAXH2CDATA, largest in-capsule write). Only between
    /// commands: refused while a command is outstanding or bytes are buffered.
    pub fn into_stream(self) -> io::Result<(TcpStream, u32, usize)> {
        if self.outstanding() > 0 || self.rx_head != self.rx_tail || self.tx_off != self.tx_len {
            return Err(err("queue handed over with I/O in progress"));
        }
        Ok((self.sock, self.maxh2cdata, self.in_capsule_max))
    }

    pub fn raw_fd(&self) -> i32 {
        self.sock.as_raw_fd()
    }

    /// Drop the TCP connection without any goodbye (as a crashed host would).
    pub fn abort(self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

pub fn status_error(what: &str, cqe: &Cqe) -> io::Error {
    io::Error::other(format!("{what} failed with status {:#x}", cqe.status))
}

/// A controller as seen from the host: the admin queue after bring-up.
pub struct HostController {
    pub addr: SocketAddr,
    pub subnqn: String,
    pub opts: QueueOptions,
    pub admin: Queue,
    pub cntlid: u16,
    pub identify: Vec<u8>,
    pub io_queues_granted: u16,
}

impl HostController {
    /// Connect the admin queue and bring the controller up as the Linux host does.
    pub fn connect(
        addr: SocketAddr,
        subnqn: &str,
        opts: &QueueOptions,
    ) -> io::Result<HostController> {
        let mut aopts = opts.clone();
        aopts.depth = 32;
        let mut admin = Queue::open(addr, &aopts)?;
        let cntlid = admin.connect(0, 0xFFFF, subnqn, &aopts)?;
        let cap = property_get(&mut admin, property::CAP, true)?;
        if (cap & 0xFFFF) + 1 < opts.depth as u64 && subnqn != DISCOVERY_NQN {
            return Err(err(format!(
                "controller MQES {} below requested depth {}",
                cap & 0xFFFF,
                opts.depth
            )));
        }
        property_set(&mut admin, property::CC, 1 | (6 << 16) | (4 << 20))?;
        let deadline = Instant::now() + opts.timeout;
        while property_get(&mut admin, property::CSTS, false)? & 1 == 0 {
            if Instant::now() > deadline {
                return Err(err("controller never became ready"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut c = HostController {
            addr,
            subnqn: subnqn.into(),
            opts: opts.clone(),
            admin,
            cntlid,
            identify: vec![],
            io_queues_granted: 0,
        };
        c.identify = c.identify_raw(1, 0)?;
        let ioccsz = u32::from_le_bytes(c.identify[1792..1796].try_into().unwrap()) as usize;
        c.admin.in_capsule_max = (ioccsz * 16).saturating_sub(64);
        Ok(c)
    }

    pub fn admin_command(&mut self, sqe: Sqe, data: Data) -> io::Result<Cqe> {
        self.admin.execute(sqe, data)
    }

    pub fn identify_raw(&mut self, cns: u8, nsid: u32) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 4096];
        let mut sqe = Sqe {
            opcode: admin::IDENTIFY,
            nsid,
            ..Default::default()
        };
        sqe.cdw[0] = cns as u32;
        let cqe = self
            .admin
            .execute(sqe, Data::FromController(buf.as_mut_ptr(), buf.len()))?;
        if !cqe.is_success() {
            return Err(status_error("identify", &cqe));
        }
        Ok(buf)
    }

    pub fn get_log_page(&mut self, lid: u8, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let numd = (len / 4 - 1) as u32;
        let mut sqe = Sqe {
            opcode: admin::GET_LOG_PAGE,
            nsid: u32::MAX,
            ..Default::default()
        };
        sqe.cdw[0] = lid as u32 | (numd & 0xFFFF) << 16;
        sqe.cdw[1] = numd >> 16;
        let cqe = self
            .admin
            .execute(sqe, Data::FromController(buf.as_mut_ptr(), len))?;
        if !cqe.is_success() {
            return Err(status_error("get log page", &cqe));
        }
        Ok(buf)
    }

    /// Set Features Number of Queues; returns how many I/O queues were granted.
    pub fn set_queue_count(&mut self, n: u16) -> io::Result<u16> {
        let mut sqe = Sqe {
            opcode: admin::SET_FEATURES,
            ..Default::default()
        };
        sqe.cdw[0] = crate::nvmf::spec::feature::NUMBER_OF_QUEUES as u32;
        sqe.cdw[1] = (n as u32 - 1) | (n as u32 - 1) << 16;
        let cqe = self.admin.execute(sqe, Data::None)?;
        if !cqe.is_success() {
            return Err(status_error("set features (queues)", &cqe));
        }
        self.io_queues_granted = (cqe.dw0 & 0xFFFF) as u16 + 1;
        Ok(self.io_queues_granted)
    }

    pub fn keep_alive(&mut self) -> io::Result<()> {
        let cqe = self.admin.execute(
            Sqe {
                opcode: admin::KEEP_ALIVE,
                ..Default::default()
            },
            Data::None,
        )?;
        if cqe.is_success() {
            Ok(())
        } else {
            Err(status_error("keep alive", &cqe))
        }
    }

    /// Open I/O queue `qid` of this controller.
    pub fn io_queue(&self, qid: u16) -> io::Result<Queue> {
        let mut q = Queue::open(self.addr, &self.opts)?;
        q.in_capsule_max = self.admin.in_capsule_max;
        q.connect(qid, self.cntlid, &self.subnqn, &self.opts)?;
        Ok(q)
    }

    /// (block size shift, block count) of namespace `nsid`.
    pub fn namespace_geometry(&mut self, nsid: u32) -> io::Result<(u32, u64)> {
        let id = self.identify_raw(0, nsid)?;
        let nsze = u64::from_le_bytes(id[0..8].try_into().unwrap());
        let flbas = (id[26] & 0xF) as usize;
        let lbads = id[128 + flbas * 4 + 2] as u32;
        if nsze == 0 || lbads < 9 {
            return Err(err(format!("namespace {nsid} is not active")));
        }
        Ok((lbads, nsze))
    }

    /// Clean shutdown: CC.SHN, as `nvme disconnect` does.
    pub fn shutdown(mut self) -> io::Result<()> {
        property_set(
            &mut self.admin,
            property::CC,
            1 | (1 << 14) | (6 << 16) | (4 << 20),
        )?;
        Ok(())
    }
}

fn property_get(q: &mut Queue, offset: u32, eight: bool) -> io::Result<u64> {
    let mut sqe = Sqe {
        opcode: admin::FABRICS,
        fctype: fabrics::PROPERTY_GET,
        ..Default::default()
    };
    sqe.cdw[0] = eight as u32;
    sqe.cdw[1] = offset;
    let cqe = q.execute(sqe, Data::None)?;
    if !cqe.is_success() {
        return Err(status_error("property get", &cqe));
    }
    Ok(cqe.dw0 as u64 | (cqe.dw1 as u64) << 32)
}

fn property_set(q: &mut Queue, offset: u32, value: u32) -> io::Result<()> {
    let mut sqe = Sqe {
        opcode: admin::FABRICS,
        fctype: fabrics::PROPERTY_SET,
        ..Default::default()
    };
    sqe.cdw[1] = offset;
    sqe.cdw[2] = value;
    let cqe = q.execute(sqe, Data::None)?;
    if !cqe.is_success() {
        return Err(status_error("property set", &cqe));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// How the scripted controller delivers its one C2HData.
    #[derive(Clone, Copy)]
    struct Delivery {
        ddgst: bool,
        corrupt_digest: bool,
        /// Send the payload in pieces with pauses, so the header arrives ahead of it.
        trickle: bool,
    }

    const AT_ONCE: Delivery = Delivery {
        ddgst: false,
        corrupt_digest: false,
        trickle: false,
    };

    /// A scripted controller that answers one read the way SPDK's target does: C2HData with
    /// LAST_PDU and SUCCESS although SQ flow control is on, and no response capsule.
    fn spdk_like_controller(
        listener: std::net::TcpListener,
        payload: Vec<u8>,
        how: Delivery,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut icreq = [0u8; pdu::IC_LEN];
            s.read_exact(&mut icreq).unwrap();
            let mut icresp = [0u8; pdu::IC_LEN];
            pdu::encode_ic_resp(
                &mut icresp,
                &pdu::IcResp {
                    pfv: 0,
                    cpda: 0,
                    hdgst: false,
                    ddgst: how.ddgst,
                    maxh2cdata: 128 * 1024,
                },
            );
            s.write_all(&icresp).unwrap();
            let mut capsule = [0u8; pdu::CAPSULE_CMD_HLEN];
            s.read_exact(&mut capsule).unwrap();
            let cid = u16::from_le_bytes([capsule[8 + 2], capsule[8 + 3]]);
            let h = pdu::DataHeader {
                cccid: cid,
                ttag: 0,
                datao: 0,
                datal: payload.len() as u32,
                last: true,
                success: true,
            };
            let mut hdr = [0u8; 32];
            let n = pdu::encode_data_header(&mut hdr, true, &h, false, how.ddgst);
            s.write_all(&hdr[..n]).unwrap();
            let piece = if how.trickle {
                payload.len() / 5 + 1
            } else {
                payload.len()
            };
            for chunk in payload.chunks(piece) {
                s.write_all(chunk).unwrap();
                if how.trickle {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            if how.ddgst {
                let digest = pdu::crc32c(&payload) ^ how.corrupt_digest as u32;
                s.write_all(&digest.to_le_bytes()).unwrap();
            }
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        })
    }

    #[test]
    fn success_flag_with_sq_flow_control_on_completes_the_read_and_is_counted() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let payload: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let controller = spdk_like_controller(listener, payload.clone(), AT_ONCE);
        let mut q = Queue::open(addr, &QueueOptions::default()).unwrap();
        let mut buf = vec![0u8; 4096];
        let sqe = command::rw_sqe(io_op::READ, 0, 1, 0, 8, 4096, false);
        q.submit(sqe, Data::FromController(buf.as_mut_ptr(), buf.len()))
            .unwrap();
        let mut completed = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while completed.is_empty() {
            assert!(Instant::now() < deadline, "the read never completed");
            q.poll(&mut |cid, cqe, _| completed.push((cid, cqe)))
                .unwrap();
        }
        assert!(completed[0].1.is_success());
        assert_eq!(buf, payload);
        assert_eq!((q.completed_in_data, q.success_with_sq_flow), (1, 1));
        drop(q);
        controller.join().unwrap();
    }

    /// Read `len` bytes from a scripted controller; the poll result of the last poll.
    fn read_from(how: Delivery, len: usize) -> (io::Result<usize>, Vec<u8>, Vec<u8>, Queue) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let payload: Vec<u8> = (0..len as u32).map(|i| (i * 13 + 1) as u8).collect();
        let controller = spdk_like_controller(listener, payload.clone(), how);
        let opts = QueueOptions {
            ddgst: how.ddgst,
            ..QueueOptions::default()
        };
        let mut q = Queue::open(addr, &opts).unwrap();
        let mut buf = vec![0u8; len];
        let sqe = command::rw_sqe(io_op::READ, 0, 1, 0, (len / 512) as u32, len as u32, false);
        q.submit(sqe, Data::FromController(buf.as_mut_ptr(), len))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let result = loop {
            assert!(Instant::now() < deadline, "the read never completed");
            match q.poll(&mut |_, cqe, _| assert!(cqe.is_success())) {
                Ok(0) => std::thread::sleep(Duration::from_millis(1)),
                other => break other,
            }
        };
        q.sock.shutdown(std::net::Shutdown::Both).unwrap();
        controller.join().unwrap();
        (result, buf, payload, q)
    }

    #[test]
    fn a_large_payload_arriving_behind_its_header_lands_directly_and_intact() {
        for ddgst in [false, true] {
            let how = Delivery {
                ddgst,
                corrupt_digest: false,
                trickle: true,
            };
            let (result, buf, payload, q) = read_from(how, 256 * 1024);
            assert_eq!(result.unwrap(), 1, "one completion (ddgst {ddgst})");
            assert!(buf == payload, "payload differs (ddgst {ddgst})");
            assert_eq!(
                q.direct_payloads, 1,
                "the payload went direct (ddgst {ddgst})"
            );
        }
    }

    #[test]
    fn a_direct_payload_with_a_bad_data_digest_is_refused() {
        let how = Delivery {
            ddgst: true,
            corrupt_digest: true,
            trickle: true,
        };
        let (result, _, _, q) = read_from(how, 128 * 1024);
        let e = result.expect_err("a bad digest must fail the queue");
        assert!(e.to_string().contains("data digest"), "{e}");
        assert_eq!(q.direct_payloads, 1);
    }
}
