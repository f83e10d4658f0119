//! Seed inputs built with the crate's own encoders, so the fuzzer starts from sessions a
//! real host would have: ICReq, Connect, admin commands, and I/O with in-capsule data, R2T
//! and H2CData transfers, reads, and malformed PDUs.

use nvmf_raid::nvmf::command::{connect_sqe, rw_sqe, Sqe, CATTR_DISABLE_SQFLOW, SGL_IN_CAPSULE, SGL_TRANSPORT};
use nvmf_raid::nvmf::pdu::{self, DataHeader, IcReq, IcResp, R2t};
use nvmf_raid::nvmf::spec::{admin, cns, connect_data, fabrics, feature, io, log, property};

use crate::conn::{HOSTNQN, PRE_CNTLID, SUBNQN};

/// Builds the byte stream a host sends.
pub struct HostStream {
    pub hdgst: bool,
    pub ddgst: bool,
    pub out: Vec<u8>,
    /// Connect attributes sent with every Connect (CATTR_DISABLE_SQFLOW or 0).
    pub cattr: u8,
    next_cid: u16,
    /// (offset in `out`, cccid) of every H2CData header, for [`fix_ttags`].
    pub h2c: Vec<(usize, u16)>,
}

impl HostStream {
    pub fn new(hdgst: bool, ddgst: bool) -> HostStream {
        HostStream { hdgst, ddgst, out: Vec::new(), cattr: 0, next_cid: 1, h2c: Vec::new() }
    }

    pub fn ic_req(&mut self) -> &mut Self {
        let mut b = [0u8; pdu::IC_LEN];
        let n = pdu::encode_ic_req(&mut b, &IcReq { pfv: 0, hpda: 0, hdgst: self.hdgst, ddgst: self.ddgst, maxr2t: 0 });
        self.out.extend_from_slice(&b[..n]);
        self
    }

    fn data(&mut self, d: &[u8]) {
        self.out.extend_from_slice(d);
        if self.ddgst && !d.is_empty() {
            self.out.extend_from_slice(&pdu::crc32c(d).to_le_bytes());
        }
    }

    /// A command capsule; `sqe.cid` is assigned here and returned.
    pub fn capsule(&mut self, mut sqe: Sqe, in_capsule: &[u8]) -> u16 {
        sqe.cid = self.next_cid;
        self.next_cid += 1;
        let mut b = [0u8; pdu::CAPSULE_CMD_HLEN + pdu::DIGEST_LEN];
        let n = pdu::encode_capsule_cmd(&mut b, &sqe.encode(), in_capsule.len(), self.hdgst, self.ddgst);
        self.out.extend_from_slice(&b[..n]);
        self.data(in_capsule);
        sqe.cid
    }

    pub fn h2c_data(&mut self, cccid: u16, ttag: u16, datao: u32, d: &[u8], last: bool) {
        let h = DataHeader { cccid, ttag, datao, datal: d.len() as u32, last, success: false };
        let mut b = [0u8; pdu::DATA_HLEN + pdu::DIGEST_LEN];
        let n = pdu::encode_data_header(&mut b, false, &h, self.hdgst, self.ddgst);
        self.h2c.push((self.out.len(), cccid));
        self.out.extend_from_slice(&b[..n]);
        self.data(d);
    }

    pub fn connect(&mut self, qid: u16, sqsize: u16, cntlid: u16, subnqn: &str, hostnqn: &str) -> u16 {
        let mut d = [0u8; fabrics::CONNECT_DATA_LEN];
        d[..16].copy_from_slice(&[0x11; 16]);
        d[connect_data::CNTLID..connect_data::CNTLID + 2].copy_from_slice(&cntlid.to_le_bytes());
        d[connect_data::SUBNQN..connect_data::SUBNQN + subnqn.len()].copy_from_slice(subnqn.as_bytes());
        d[connect_data::HOSTNQN..connect_data::HOSTNQN + hostnqn.len()].copy_from_slice(hostnqn.as_bytes());
        self.capsule(connect_sqe(0, qid, sqsize, self.cattr, if qid == 0 { 30_000 } else { 0 }), &d)
    }

    /// A command whose data the controller returns (transport SGL, no in-capsule data).
    pub fn to_host(&mut self, mut sqe: Sqe, len: u32) -> u16 {
        sqe.sgl_len = len;
        sqe.sgl_type = SGL_TRANSPORT;
        self.capsule(sqe, &[])
    }

    /// Write `d` through an R2T: the command, then H2CData PDUs of at most `chunk` bytes
    /// for transfer tag `ttag` (the request slot the target will pick).
    pub fn write_r2t(&mut self, nsid: u32, slba: u64, block: u32, d: &[u8], ttag: u16, chunk: usize) -> u16 {
        let sqe = rw_sqe(io::WRITE, 0, nsid, slba, d.len() as u32 / block, d.len() as u32, false);
        let cid = self.capsule(sqe, &[]);
        let mut off = 0;
        while off < d.len() {
            let n = chunk.min(d.len() - off);
            self.h2c_data(cid, ttag, off as u32, &d[off..off + n], off + n == d.len());
            off += n;
        }
        cid
    }
}

fn admin_sqe(opcode: u8, cdw10: u32, cdw11: u32) -> Sqe {
    let mut s = Sqe { opcode, ..Default::default() };
    s.cdw[0] = cdw10;
    s.cdw[1] = cdw11;
    s
}

fn property_sqe(fctype: u8, offset: u32, eight: bool, value: u32) -> Sqe {
    let mut s = Sqe { opcode: admin::FABRICS, fctype, ..Default::default() };
    s.cdw[0] = eight as u32;
    s.cdw[1] = offset;
    s.cdw[2] = value;
    s
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// An admin queue session: Connect, properties, Identify, logs, features, AER, keep-alive.
pub fn admin_session(hdgst: bool, ddgst: bool) -> Vec<u8> {
    let mut h = HostStream::new(hdgst, ddgst);
    h.ic_req();
    h.connect(0, 7, 0xFFFF, SUBNQN, HOSTNQN);
    h.capsule(property_sqe(fabrics::PROPERTY_GET, property::CAP, true, 0), &[]);
    h.capsule(property_sqe(fabrics::PROPERTY_GET, property::VS, false, 0), &[]);
    h.capsule(property_sqe(fabrics::PROPERTY_SET, property::CC, false, 1 | (6 << 16) | (4 << 20)), &[]);
    h.capsule(property_sqe(fabrics::PROPERTY_GET, property::CSTS, false, 0), &[]);
    h.to_host(admin_sqe(admin::IDENTIFY, cns::CONTROLLER as u32, 0), 4096);
    h.to_host(Sqe { nsid: 1, ..admin_sqe(admin::IDENTIFY, cns::NAMESPACE as u32, 0) }, 4096);
    h.to_host(admin_sqe(admin::IDENTIFY, cns::ACTIVE_NS_LIST as u32, 0), 4096);
    h.to_host(Sqe { nsid: 3, ..admin_sqe(admin::IDENTIFY, cns::NS_DESCRIPTORS as u32, 0) }, 4096);
    h.capsule(admin_sqe(admin::SET_FEATURES, feature::NUMBER_OF_QUEUES as u32, 3 | 3 << 16), &[]);
    h.capsule(admin_sqe(admin::GET_FEATURES, feature::NUMBER_OF_QUEUES as u32, 0), &[]);
    h.capsule(admin_sqe(admin::SET_FEATURES, feature::KEEP_ALIVE_TIMER as u32, 10_000), &[]);
    h.to_host(admin_sqe(admin::GET_LOG_PAGE, log::SMART as u32 | (127 << 16), 0), 512);
    h.to_host(admin_sqe(admin::GET_LOG_PAGE, log::ANA as u32 | (1023 << 16), 0), 4096);
    h.to_host(admin_sqe(admin::GET_FEATURES, feature::HOST_IDENTIFIER as u32, 1), 16);
    h.capsule(admin_sqe(admin::ASYNC_EVENT_REQUEST, 0, 0), &[]);
    h.capsule(admin_sqe(admin::KEEP_ALIVE, 0, 0), &[]);
    h.capsule(admin_sqe(admin::ABORT, 0, 0), &[]);
    h.capsule(admin_sqe(0x55, 0, 0), &[]);
    h.capsule(property_sqe(fabrics::PROPERTY_SET, property::CC, false, 1 | (1 << 14)), &[]);
    h.out
}

/// An I/O queue session on the pre-created controller, one command at a time (H2CData
/// transfer tags assume request slot 0; [`fix_ttags`] corrects them for a schedule):
/// in-capsule write, read back, R2T write split into
/// H2CData PDUs, reads and writes on the null and the asynchronous namespace, flush,
/// write zeroes, deallocate, and a few commands that fail.
pub fn io_session(hdgst: bool, ddgst: bool, h2c_chunk: usize) -> HostStream {
    io_session_on(HostStream::new(hdgst, ddgst), h2c_chunk)
}

/// [`io_session`] on a stream with its own settings (digests, Connect attributes).
pub fn io_session_on(mut h: HostStream, h2c_chunk: usize) -> HostStream {
    h.ic_req();
    h.connect(1, 7, PRE_CNTLID, SUBNQN, HOSTNQN);
    let d4k = pattern(4096, 1);
    h.capsule(rw_sqe(io::WRITE, 0, 1, 0, 8, 4096, true), &d4k);
    h.to_host(rw_sqe(io::READ, 0, 1, 0, 8, 4096, false), 4096);
    let d16k = pattern(16384, 2);
    h.write_r2t(1, 64, 512, &d16k, 0, h2c_chunk);
    h.to_host(rw_sqe(io::READ, 0, 1, 64, 32, 16384, false), 16384);
    h.write_r2t(3, 2, 4096, &d16k, 0, h2c_chunk);
    h.to_host(rw_sqe(io::READ, 0, 3, 2, 4, 16384, false), 16384);
    h.capsule(rw_sqe(io::WRITE, 0, 3, 0, 1, 4096, true), &d4k);
    h.to_host(rw_sqe(io::READ, 0, 2, 100, 2, 8192, false), 8192);
    h.write_r2t(2, 7, 4096, &pattern(8192, 3), 0, h2c_chunk);
    h.capsule(Sqe { opcode: io::FLUSH, nsid: 1, ..Default::default() }, &[]);
    h.capsule(rw_sqe(io::WRITE_ZEROES, 0, 1, 8, 16, 0, false), &[]);
    h.capsule(rw_sqe(io::WRITE_ZEROES, 0, 3, 1, 2, 0, false), &[]);
    // Dataset Management, deallocate: two ranges (context attributes, nlb, slba).
    let mut ranges = vec![0u8; 32];
    ranges[4..8].copy_from_slice(&8u32.to_le_bytes());
    ranges[8..16].copy_from_slice(&16u64.to_le_bytes());
    ranges[20..24].copy_from_slice(&4u32.to_le_bytes());
    ranges[24..32].copy_from_slice(&100u64.to_le_bytes());
    let mut dsm = Sqe { opcode: io::DATASET_MANAGEMENT, nsid: 1, sgl_len: 32, sgl_type: SGL_IN_CAPSULE, ..Default::default() };
    dsm.cdw[0] = 1;
    dsm.cdw[1] = 1 << 2;
    h.capsule(dsm, &ranges);
    // Failures: LBA out of range, unknown namespace, length mismatch, unknown opcode.
    h.to_host(rw_sqe(io::READ, 0, 1, 510, 8, 4096, false), 4096);
    h.to_host(rw_sqe(io::READ, 0, 9, 0, 8, 4096, false), 4096);
    h.to_host(rw_sqe(io::READ, 0, 1, 0, 8, 2048, false), 2048);
    h.capsule(Sqe { opcode: 0x7E, nsid: 1, ..Default::default() }, &[]);
    h
}

/// A 64 KiB write in two 32 KiB H2CData PDUs, then read back: delivered in halves of what
/// is left of each PDU, most of each payload arrives after its header and is received
/// straight into the command's buffer.
fn direct_h2c_session(hdgst: bool, ddgst: bool) -> HostStream {
    let mut h = HostStream::new(hdgst, ddgst);
    h.ic_req();
    h.connect(1, 7, PRE_CNTLID, SUBNQN, HOSTNQN);
    h.write_r2t(1, 0, 512, &pattern(65536, 4), 0, 32768);
    h.to_host(rw_sqe(io::READ, 0, 1, 0, 128, 65536, false), 65536);
    h
}

/// Many commands back to back (one chunk): with 100 reads more responses queue than one
/// sendmsg carries (256 iovecs, three per read), reads and R2Ts wait for pool buffers, and
/// optionally a malformed PDU ends the stream.
pub fn pipelined_session(n_reads: usize, with_garbage: bool) -> Vec<u8> {
    let mut h = HostStream::new(false, false);
    h.ic_req();
    h.connect(1, 120, PRE_CNTLID, SUBNQN, HOSTNQN);
    // Larger than in-capsule buffers: each needs a pool buffer.
    h.to_host(rw_sqe(io::READ, 0, 2, 0, 4, 16384, false), 16384);
    h.to_host(rw_sqe(io::READ, 0, 2, 4, 4, 16384, false), 16384);
    h.capsule(rw_sqe(io::WRITE, 0, 2, 0, 8, 32768, false), &[]);
    for i in 0..n_reads {
        h.to_host(rw_sqe(io::READ, 0, 2, i as u64, 1, 4096, false), 4096);
    }
    if with_garbage {
        let mut bad = [0u8; 72];
        bad[0] = 0x04;
        bad[2] = 70; // wrong HLEN
        bad[4] = 72;
        h.out.extend_from_slice(&bad);
    }
    h.out
}

/// A write to the asynchronous namespace followed by a malformed PDU.
fn async_then_garbage() -> Vec<u8> {
    let mut h = HostStream::new(false, false);
    h.ic_req();
    h.connect(1, 7, PRE_CNTLID, SUBNQN, HOSTNQN);
    h.capsule(rw_sqe(io::WRITE, 0, 3, 0, 1, 4096, true), &pattern(4096, 9));
    let mut bad = [0u8; 72];
    bad[0] = 0x04;
    bad[2] = 70; // wrong HLEN
    bad[4] = 72;
    h.out.extend_from_slice(&bad);
    h.out
}

/// Sessions that end in a C2HTermReq or are refused.
pub fn error_sessions() -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    // Unsupported PFV.
    let mut b = [0u8; pdu::IC_LEN];
    pdu::encode_ic_req(&mut b, &IcReq { pfv: 1, hpda: 0, hdgst: false, ddgst: false, maxr2t: 0 });
    v.push(("bad_pfv", b.to_vec()));
    // A command before ICReq.
    let mut h = HostStream::new(false, false);
    h.capsule(admin_sqe(admin::KEEP_ALIVE, 0, 0), &[]);
    v.push(("capsule_first", h.out));
    // Admin Connect from a host that is not allowed, then to an unknown subsystem.
    let mut h = HostStream::new(false, false);
    h.ic_req();
    h.connect(0, 7, 0xFFFF, SUBNQN, "nqn.2024-01.io.fuzz:intruder");
    h.connect(0, 7, 0xFFFF, "nqn.2024-01.io.fuzz:nothing", HOSTNQN);
    h.connect(1, 7, 0x42, SUBNQN, HOSTNQN);
    h.connect(0, 7, 0xFFFF, nvmf_raid::nvmf::spec::DISCOVERY_NQN, HOSTNQN);
    h.to_host(admin_sqe(admin::GET_LOG_PAGE, log::DISCOVERY as u32 | (1023 << 16), 0), 4096);
    v.push(("refused_then_discovery", h.out));
    // H2CData for a transfer that was never requested, with digests.
    let mut h = HostStream::new(true, true);
    h.ic_req();
    h.connect(1, 7, PRE_CNTLID, SUBNQN, HOSTNQN);
    h.h2c_data(5, 0, 0, &[1; 512], true);
    v.push(("unsolicited_h2c", h.out));
    // Header digest mismatch.
    let mut h = HostStream::new(true, false);
    h.ic_req();
    h.connect(0, 7, 0xFFFF, SUBNQN, HOSTNQN);
    let at = h.out.len();
    h.capsule(admin_sqe(admin::KEEP_ALIVE, 0, 0), &[]);
    h.out[at + 20] ^= 0xFF;
    v.push(("bad_hdgst", h.out));
    v
}

/// A conn_state input: configuration byte, schedule, stream.
pub fn conn_input(cfg: u8, schedule: &[u8], stream: &[u8]) -> Vec<u8> {
    conn_header(cfg, schedule, stream)
}

/// An input whose H2CData PDUs carry the transfer tags the target's R2Ts assign under this
/// configuration and schedule (found by running the harness until they agree).
pub fn fix_ttags(cfg: u8, schedule: &[u8], mut h: HostStream) -> Vec<u8> {
    let hdr = 2 + schedule.len();
    let mut input = conn_header(cfg, schedule, &h.out);
    for _ in 0..8 {
        let o = crate::conn::run(&input);
        let mut changed = false;
        for &(off, cccid) in &h.h2c {
            if let Some(&(_, ttag)) = o.r2ts.iter().find(|r| r.0 == cccid) {
                let at = hdr + off + 10;
                if input[at..at + 2] != ttag.to_le_bytes() {
                    input[at..at + 2].copy_from_slice(&ttag.to_le_bytes());
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
        // The header digest covers the ttag.
        if h.hdgst {
            for &(off, _) in &h.h2c {
                let at = hdr + off;
                let d = pdu::crc32c(&input[at..at + pdu::DATA_HLEN]);
                input[at + pdu::DATA_HLEN..at + pdu::DATA_HLEN + 4].copy_from_slice(&d.to_le_bytes());
            }
        }
    }
    h.out.clear();
    input
}

fn conn_header(cfg: u8, schedule: &[u8], stream: &[u8]) -> Vec<u8> {
    assert!(schedule.len() < 256);
    let mut v = vec![cfg, schedule.len() as u8];
    v.extend_from_slice(schedule);
    v.extend_from_slice(stream);
    v
}

/// Every conn_state seed, by file name.
pub fn conn_state_seeds() -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for (hd, dd) in [(false, false), (true, true), (true, false)] {
        let tag = format!("{}{}", if hd { "h" } else { "" }, if dd { "d" } else { "" });
        v.push((format!("admin{tag}"), conn_input(0, &[], &admin_session(hd, dd))));
        v.push((format!("io{tag}_small"), fix_ttags(0, &[], io_session(hd, dd, 4096))));
        v.push((format!("io{tag}_deep"), fix_ttags(1, &[], io_session(hd, dd, 32768))));
    }
    // Without SQ flow control: clean reads end with the C2HData SUCCESS flag.
    for (hd, dd) in [(false, false), (true, true)] {
        let mut h = HostStream::new(hd, dd);
        h.cattr = CATTR_DISABLE_SQFLOW;
        v.push((format!("io_no_sqflow{}", if hd { "_hd" } else { "" }), fix_ttags(0, &[], io_session_on(h, 4096))));
    }
    for (hd, dd) in [(false, false), (true, true)] {
        v.push((format!("io_direct_h2c{}", if hd { "_hd" } else { "" }), fix_ttags(1, &[0x0b], direct_h2c_session(hd, dd))));
    }
    // Split delivery and ragged completions over the same sessions.
    v.push(("admin_bytewise".into(), conn_input(0, &[0x0c, 0x01, 0x0b, 0x0b, 0x00, 0x03, 0x00], &admin_session(false, false))));
    v.push(("io_ragged".into(), fix_ttags(0, &[0x02, 0x0b, 0x05, 0x0c, 0x01, 0x00, 0x09, 0x0d], io_session(false, true, 4096))));
    v.push(("io_partial_sends".into(), fix_ttags(0, &[0x00, 0x60, 0x00, 0x70, 0x00, 0x00], io_session(true, false, 4096))));
    v.push(("io_deferred".into(), fix_ttags(2, &[0x00, 0x80, 0xa0, 0x09, 0x6b, 0x00], io_session(false, false, 4096))));
    v.push(("io_async_close".into(), fix_ttags(0, &[0x00, 0x00, 0xa0, 0xa0, 0xd0], io_session(false, false, 4096))));
    v.push(("io_kill".into(), fix_ttags(8, &[0x00, 0x00, 0x00, 0xe0], io_session(false, false, 4096))));
    v.push(("io_bdev_error".into(), fix_ttags(0, &[0x00, 0xa0, 0xb0, 0x00, 0xc0], io_session(false, false, 4096))));
    v.push(("pipelined".into(), conn_input(1, &[0x00, 0x00, 0x8e, 0x00], &pipelined_session(100, false))));
    v.push(("pipelined_tiny_pool".into(), conn_input(3, &[0x00, 0x00, 0x8e, 0x00], &pipelined_session(100, false))));
    v.push(("io_registered_tiny_pool".into(), fix_ttags(16 | 2, &[], io_session(false, false, 4096))));
    v.push(("admin_one_ctrl".into(), conn_input(4, &[], &admin_session(false, false))));
    for (name, s) in error_sessions() {
        v.push((format!("err_{name}"), conn_input(0, &[], &s)));
    }
    v
}

/// Inputs that exposed a bug in the target (see fuzz/README.md, "Seeds and regressions").
pub fn conn_state_regressions() -> Vec<(String, Vec<u8>)> {
    vec![
        // 100 queued responses need more than one sendmsg (256 iovecs); a malformed PDU then
        // queues the C2HTermReq; when the first send completes it frees a pool buffer, the
        // read waiting for one executes, and its response is queued behind the TermReq.
        ("conn_state-send-after-termreq".into(), conn_input(3, &[0x00, 0x00, 0x8e, 0x00], &pipelined_session(100, true))),
        // A write to the asynchronous namespace is in flight when a malformed PDU queues the
        // C2HTermReq; its completion then queues the response behind the TermReq.
        ("conn_state-send-after-termreq-async".into(), conn_input(0, &[0x00, 0x00, 0xa0, 0x40], &async_then_garbage())),
    ]
}

/// Every pdu_decode seed: flags byte, max_data selector, PDU bytes.
pub fn pdu_decode_seeds() -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    let with = |flags: u8, sel: u8, b: &[u8]| {
        let mut x = vec![flags, sel];
        x.extend_from_slice(b);
        x
    };
    for (hd, dd) in [(false, false), (true, true)] {
        let flags = hd as u8 | (dd as u8) << 1;
        let tag = if hd { "dg" } else { "plain" };
        let mut h = HostStream::new(hd, dd);
        h.ic_req();
        v.push((format!("icreq_{tag}"), with(flags | 4, 5, &h.out)));
        let mut h = HostStream::new(hd, dd);
        h.connect(0, 31, 0xFFFF, SUBNQN, HOSTNQN);
        v.push((format!("connect_{tag}"), with(flags | 4, 4, &h.out)));
        let mut h = HostStream::new(hd, dd);
        h.h2c_data(3, 9, 4096, &pattern(300, 4), true);
        v.push((format!("h2c_{tag}"), with(flags | 4, 3, &h.out)));
        let mut h = HostStream::new(hd, dd);
        h.capsule(admin_sqe(admin::KEEP_ALIVE, 0, 0), &[]);
        v.push((format!("capsule_nodata_{tag}"), with(flags | 4, 2, &h.out)));

        let mut b = vec![0u8; 256];
        let n = pdu::encode_ic_resp(&mut b, &IcResp { pfv: 0, cpda: 0, hdgst: hd, ddgst: dd, maxh2cdata: 131072 });
        v.push((format!("icresp_{tag}"), with(flags, 5, &b[..n])));
        let n = pdu::encode_r2t(&mut b, &R2t { cccid: 5, ttag: 6, r2to: 0, r2tl: 65536 }, hd);
        v.push((format!("r2t_{tag}"), with(flags, 5, &b[..n])));
        let n = pdu::encode_capsule_resp(&mut b, &[7u8; 16], hd);
        v.push((format!("resp_{tag}"), with(flags, 5, &b[..n])));
        let data = pattern(200, 5);
        let dh = DataHeader { cccid: 2, ttag: 0, datao: 0, datal: 200, last: true, success: true };
        let n = pdu::encode_data_header(&mut b, true, &dh, hd, dd);
        let mut c2h = b[..n].to_vec();
        c2h.extend_from_slice(&data);
        if dd {
            c2h.extend_from_slice(&pdu::crc32c(&data).to_le_bytes());
        }
        v.push((format!("c2h_{tag}"), with(flags, 3, &c2h)));
    }
    let mut b = vec![0u8; 256];
    let n = pdu::encode_term_req(&mut b, false, pdu::Fes::InvalidHeaderField, 2, &[0xAB; 72]);
    v.push(("c2h_term".into(), with(0, 5, &b[..n])));
    let n = pdu::encode_term_req(&mut b, true, pdu::Fes::HeaderDigestError, 0, &[]);
    v.push(("h2c_term".into(), with(4, 5, &b[..n])));
    v
}
