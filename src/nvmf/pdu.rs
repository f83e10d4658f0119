//! NVMe/TCP PDU codec: pure functions from bytes to typed PDUs and back.
//!
//! Decoding validates every header field the transport spec constrains and reports a
//! violation as a `PduError` carrying the fatal error status (FES) and the offset of the
//! offending field, which is what a C2HTermReq/H2CTermReq must carry.

use crate::util::le::{u16_at as le16, u32_at as le32};

pub const COMMON_HEADER_LEN: usize = 8;
pub const IC_LEN: usize = 128;
pub const CAPSULE_CMD_HLEN: usize = 72;
pub const CAPSULE_RESP_HLEN: usize = 24;
pub const DATA_HLEN: usize = 24;
pub const R2T_HLEN: usize = 24;
pub const TERM_HLEN: usize = 24;
pub const DIGEST_LEN: usize = 4;
/// A TermReq carries at most this many bytes of the offending PDU header.
pub const TERM_MAX_DATA: usize = 128;
/// Largest header any PDU has (ICReq/ICResp) plus its digest.
pub const MAX_HEADER_LEN: usize = IC_LEN + DIGEST_LEN;

pub mod pdu_type {
    pub const IC_REQ: u8 = 0x00;
    pub const IC_RESP: u8 = 0x01;
    pub const H2C_TERM_REQ: u8 = 0x02;
    pub const C2H_TERM_REQ: u8 = 0x03;
    pub const CAPSULE_CMD: u8 = 0x04;
    pub const CAPSULE_RESP: u8 = 0x05;
    pub const H2C_DATA: u8 = 0x06;
    pub const C2H_DATA: u8 = 0x07;
    pub const R2T: u8 = 0x09;
}

pub mod flags {
    pub const HDGST: u8 = 0x01;
    pub const DDGST: u8 = 0x02;
    pub const LAST_PDU: u8 = 0x04;
    pub const SUCCESS: u8 = 0x08;
}

/// Fatal error status values of a TermReq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Fes {
    InvalidHeaderField = 0x01,
    PduSequenceError = 0x02,
    HeaderDigestError = 0x03,
    DataOutOfRange = 0x04,
    DataLimitExceeded = 0x05,
    UnsupportedParameter = 0x06,
}

/// A framing violation: the connection must be terminated with a TermReq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PduError {
    pub fes: Fes,
    /// Byte offset of the offending field within the PDU header.
    pub fei: u32,
}

impl PduError {
    fn new(fes: Fes, fei: u32) -> Self {
        PduError { fes, fei }
    }
}

impl std::fmt::Display for PduError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} at header offset {}", self.fes, self.fei)
    }
}
impl std::error::Error for PduError {}

/// What the decoder expects of the byte stream.
#[derive(Debug, Clone, Copy)]
pub struct DecodeParams {
    pub hdgst: bool,
    pub ddgst: bool,
    /// Largest data section accepted in one PDU.
    pub max_data: u32,
    /// true on the controller side (we decode PDUs sent by a host).
    pub from_host: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcReq {
    pub pfv: u16,
    pub hpda: u8,
    pub hdgst: bool,
    pub ddgst: bool,
    pub maxr2t: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcResp {
    pub pfv: u16,
    pub cpda: u8,
    pub hdgst: bool,
    pub ddgst: bool,
    pub maxh2cdata: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2t {
    pub cccid: u16,
    pub ttag: u16,
    pub r2to: u32,
    pub r2tl: u32,
}

/// A decoded PDU; data sections borrow from the input buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Pdu<'a> {
    IcReq(IcReq),
    IcResp(IcResp),
    TermReq {
        from_host: bool,
        fes: u16,
        fei: u32,
        data: &'a [u8],
    },
    CapsuleCmd {
        sqe: &'a [u8; 64],
        data: &'a [u8],
    },
    CapsuleResp {
        cqe: &'a [u8; 16],
    },
    H2CData {
        cccid: u16,
        ttag: u16,
        datao: u32,
        last: bool,
        data: &'a [u8],
    },
    C2HData {
        cccid: u16,
        datao: u32,
        last: bool,
        success: bool,
        data: &'a [u8],
    },
    R2T(R2t),
}

/// One decoded PDU and how many input bytes it used.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub pdu: Pdu<'a>,
    pub len: usize,
    /// false when a data digest was present and did not match.
    pub ddgst_ok: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// More bytes are needed; the value is the total PDU length when known.
    Incomplete(usize),
    Frame(Frame<'a>),
}

pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

fn expected_hlen(ty: u8) -> Option<usize> {
    use pdu_type::*;
    Some(match ty {
        IC_REQ | IC_RESP => IC_LEN,
        H2C_TERM_REQ | C2H_TERM_REQ => TERM_HLEN,
        CAPSULE_CMD => CAPSULE_CMD_HLEN,
        CAPSULE_RESP => CAPSULE_RESP_HLEN,
        H2C_DATA | C2H_DATA => DATA_HLEN,
        R2T => R2T_HLEN,
        _ => return None,
    })
}

fn direction_ok(ty: u8, from_host: bool) -> bool {
    use pdu_type::*;
    let host_types = [IC_REQ, H2C_TERM_REQ, CAPSULE_CMD, H2C_DATA];
    host_types.contains(&ty) == from_host
}

/// The common header's fields, checked against each other: (type, flags, hlen, plen, layout).
fn common_header(buf: &[u8], p: &DecodeParams) -> Result<(u8, u8, usize, usize, Layout), PduError> {
    let (ty, fl, hlen, pdo) = (buf[0], buf[1], buf[2] as usize, buf[3] as usize);
    let plen = le32(buf, 4) as usize;
    let want_hlen = expected_hlen(ty).ok_or(PduError::new(Fes::InvalidHeaderField, 0))?;
    if !direction_ok(ty, p.from_host) {
        return Err(PduError::new(Fes::InvalidHeaderField, 0));
    }
    if hlen != want_hlen {
        return Err(PduError::new(Fes::InvalidHeaderField, 2));
    }
    Ok((
        ty,
        fl,
        hlen,
        plen,
        frame_layout(ty, fl, hlen, pdo, plen, p)?,
    ))
}

/// A data PDU (H2CData or C2HData) whose header has arrived and whose payload has not
/// all arrived yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeaderAhead {
    pub cccid: u16,
    /// H2CData's transfer tag (reserved, zero, in C2HData).
    pub ttag: u16,
    pub datao: u32,
    /// LAST_PDU and SUCCESS, as sent.
    pub last: bool,
    pub success: bool,
    /// Offset of the payload in the PDU, and its length.
    pub data_off: usize,
    pub data_len: usize,
    /// A data digest follows the payload.
    pub ddgst: bool,
}

/// A data PDU whose payload is being received straight into its command's buffer (the
/// target's H2CData, the host's C2HData): the header, and how much of the payload is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectPayload {
    pub hdr: DataHeaderAhead,
    pub got: usize,
}

impl DirectPayload {
    pub fn payload_left(&self) -> usize {
        self.hdr.data_len - self.got
    }

    /// Account `n` received bytes, which fill the payload first; returns how many of them
    /// went past it (into the receive buffer).
    pub fn take(&mut self, n: usize) -> usize {
        let into_payload = n.min(self.payload_left());
        self.got += into_payload;
        n - into_payload
    }

    /// Bytes of data digest that follow the payload.
    pub fn digest_len(&self) -> usize {
        if self.hdr.ddgst {
            DIGEST_LEN
        } else {
            0
        }
    }

    /// The whole payload is in, and the digest after it (the front of `after`) too.
    pub fn complete(&self, after: &[u8]) -> bool {
        self.payload_left() == 0 && after.len() >= self.digest_len()
    }

    /// The data digest at the front of `after` matches `payload` (true without one).
    pub fn digest_ok(&self, payload: &[u8], after: &[u8]) -> bool {
        !self.hdr.ddgst || le32(after, 0) == crc32c(payload)
    }
}

/// The header of a data PDU of type `ty` (H2C_DATA or C2H_DATA) at the front of `buf`
/// whose payload is still arriving, checked as `decode` checks it (the payload can then be
/// received elsewhere). None when `buf` holds something else, less than the header, or
/// the whole PDU.
pub fn data_header_ahead(buf: &[u8], p: &DecodeParams, ty: u8) -> Option<DataHeaderAhead> {
    debug_assert!(ty == pdu_type::H2C_DATA || ty == pdu_type::C2H_DATA);
    if buf.len() < COMMON_HEADER_LEN || buf[0] != ty {
        return None;
    }
    let (_, _, hlen, plen, layout) = common_header(buf, p).ok()?;
    if buf.len() < layout.data_off || buf.len() >= plen || layout.data_len == 0 {
        return None;
    }
    if layout.hdgst && le32(buf, hlen) != crc32c(&buf[..hlen]) {
        return None;
    }
    if le32(buf, 16) as usize != layout.data_len {
        return None;
    }
    Some(DataHeaderAhead {
        cccid: le16(buf, 8),
        ttag: le16(buf, 10),
        datao: le32(buf, 12),
        last: buf[1] & flags::LAST_PDU != 0,
        success: buf[1] & flags::SUCCESS != 0,
        data_off: layout.data_off,
        data_len: layout.data_len,
        ddgst: layout.ddgst,
    })
}

/// Decode one PDU from the front of `buf`.
pub fn decode<'a>(buf: &'a [u8], p: &DecodeParams) -> Result<Decoded<'a>, PduError> {
    if buf.len() < COMMON_HEADER_LEN {
        return Ok(Decoded::Incomplete(COMMON_HEADER_LEN));
    }
    let (ty, fl, hlen, plen, layout) = common_header(buf, p)?;
    if buf.len() < plen {
        return Ok(Decoded::Incomplete(plen));
    }
    let pdu_bytes = &buf[..plen];
    if layout.hdgst && le32(pdu_bytes, hlen) != crc32c(&pdu_bytes[..hlen]) {
        return Err(PduError::new(Fes::HeaderDigestError, 0));
    }
    let data = &pdu_bytes[layout.data_off..layout.data_off + layout.data_len];
    let ddgst_ok =
        !layout.ddgst || le32(pdu_bytes, layout.data_off + layout.data_len) == crc32c(data);
    let pdu = parse_body(ty, fl, pdu_bytes, data)?;
    Ok(Decoded::Frame(Frame {
        pdu,
        len: plen,
        ddgst_ok,
    }))
}

struct Layout {
    hdgst: bool,
    ddgst: bool,
    data_off: usize,
    data_len: usize,
}

/// Check flags, PDO and PLEN against each other and the negotiated digests.
fn frame_layout(
    ty: u8,
    fl: u8,
    hlen: usize,
    pdo: usize,
    plen: usize,
    p: &DecodeParams,
) -> Result<Layout, PduError> {
    use pdu_type::*;
    if ty == IC_REQ || ty == IC_RESP {
        if plen != IC_LEN {
            return Err(PduError::new(Fes::InvalidHeaderField, 4));
        }
        if pdo != 0 {
            return Err(PduError::new(Fes::InvalidHeaderField, 3));
        }
        return Ok(Layout {
            hdgst: false,
            ddgst: false,
            data_off: IC_LEN,
            data_len: 0,
        });
    }
    if ty == H2C_TERM_REQ || ty == C2H_TERM_REQ {
        // TermReqs never carry digests; their data is the offending header.
        if !(TERM_HLEN..=TERM_HLEN + TERM_MAX_DATA).contains(&plen) {
            return Err(PduError::new(Fes::InvalidHeaderField, 4));
        }
        return Ok(Layout {
            hdgst: false,
            ddgst: false,
            data_off: TERM_HLEN,
            data_len: plen - TERM_HLEN,
        });
    }
    let hdgst = fl & flags::HDGST != 0;
    if hdgst != p.hdgst {
        return Err(PduError::new(Fes::InvalidHeaderField, 1));
    }
    let hdr_end = hlen + if hdgst { DIGEST_LEN } else { 0 };
    if plen < hdr_end {
        return Err(PduError::new(Fes::InvalidHeaderField, 4));
    }
    let carries_data = matches!(ty, CAPSULE_CMD | H2C_DATA | C2H_DATA);
    if !carries_data || plen == hdr_end {
        if plen != hdr_end || (pdo != 0 && pdo != hdr_end) {
            return Err(PduError::new(
                Fes::InvalidHeaderField,
                if plen != hdr_end { 4 } else { 3 },
            ));
        }
        if fl & flags::DDGST != 0 && !carries_data {
            return Err(PduError::new(Fes::InvalidHeaderField, 1));
        }
        return Ok(Layout {
            hdgst,
            ddgst: false,
            data_off: hdr_end,
            data_len: 0,
        });
    }
    let ddgst = fl & flags::DDGST != 0;
    if ddgst != p.ddgst {
        return Err(PduError::new(Fes::InvalidHeaderField, 1));
    }
    // We advertise CPDA 0 and the host HPDA 0: data follows the header directly.
    if pdo != hdr_end {
        return Err(PduError::new(Fes::InvalidHeaderField, 3));
    }
    let tail = if ddgst { DIGEST_LEN } else { 0 };
    if plen < pdo + tail + 1 {
        return Err(PduError::new(Fes::InvalidHeaderField, 4));
    }
    let data_len = plen - pdo - tail;
    if data_len > p.max_data as usize {
        return Err(PduError::new(Fes::DataLimitExceeded, 4));
    }
    Ok(Layout {
        hdgst,
        ddgst,
        data_off: pdo,
        data_len,
    })
}

fn parse_body<'a>(ty: u8, fl: u8, b: &'a [u8], data: &'a [u8]) -> Result<Pdu<'a>, PduError> {
    use pdu_type::*;
    Ok(match ty {
        IC_REQ => {
            let dgst = b[11];
            Pdu::IcReq(IcReq {
                pfv: le16(b, 8),
                hpda: b[10],
                hdgst: dgst & 1 != 0,
                ddgst: dgst & 2 != 0,
                maxr2t: le32(b, 12),
            })
        }
        IC_RESP => {
            let dgst = b[11];
            Pdu::IcResp(IcResp {
                pfv: le16(b, 8),
                cpda: b[10],
                hdgst: dgst & 1 != 0,
                ddgst: dgst & 2 != 0,
                maxh2cdata: le32(b, 12),
            })
        }
        H2C_TERM_REQ | C2H_TERM_REQ => Pdu::TermReq {
            from_host: ty == H2C_TERM_REQ,
            fes: le16(b, 8),
            fei: le32(b, 10),
            data,
        },
        CAPSULE_CMD => Pdu::CapsuleCmd {
            sqe: b[8..72].try_into().unwrap(),
            data,
        },
        CAPSULE_RESP => Pdu::CapsuleResp {
            cqe: b[8..24].try_into().unwrap(),
        },
        H2C_DATA => {
            let datal = le32(b, 16);
            if datal as usize != data.len() {
                return Err(PduError::new(Fes::InvalidHeaderField, 16));
            }
            Pdu::H2CData {
                cccid: le16(b, 8),
                ttag: le16(b, 10),
                datao: le32(b, 12),
                last: fl & flags::LAST_PDU != 0,
                data,
            }
        }
        C2H_DATA => {
            let datal = le32(b, 16);
            if datal as usize != data.len() {
                return Err(PduError::new(Fes::InvalidHeaderField, 16));
            }
            Pdu::C2HData {
                cccid: le16(b, 8),
                datao: le32(b, 12),
                last: fl & flags::LAST_PDU != 0,
                success: fl & flags::SUCCESS != 0,
                data,
            }
        }
        R2T => Pdu::R2T(R2t {
            cccid: le16(b, 8),
            ttag: le16(b, 10),
            r2to: le32(b, 12),
            r2tl: le32(b, 16),
        }),
        _ => return Err(PduError::new(Fes::InvalidHeaderField, 0)),
    })
}

// ---------------------------------------------------------------------------------------
// Encoding. Each encoder writes the header (and header digest when enabled) into `out`
// and returns the number of bytes written; data and its digest are sent by the caller.

fn put_common(out: &mut [u8], ty: u8, fl: u8, hlen: usize, pdo: usize, plen: usize) {
    out[0] = ty;
    out[1] = fl;
    out[2] = hlen as u8;
    out[3] = pdo as u8;
    out[4..8].copy_from_slice(&(plen as u32).to_le_bytes());
}

fn finish_header(out: &mut [u8], hlen: usize, hdgst: bool) -> usize {
    if hdgst {
        let d = crc32c(&out[..hlen]);
        out[hlen..hlen + 4].copy_from_slice(&d.to_le_bytes());
        hlen + 4
    } else {
        hlen
    }
}

/// Header and PDU lengths for a PDU with `data_len` bytes of data.
fn data_pdu_lengths(hlen: usize, data_len: usize, hdgst: bool, ddgst: bool) -> (usize, usize) {
    let hdr_end = hlen + if hdgst { DIGEST_LEN } else { 0 };
    if data_len == 0 {
        return (0, hdr_end);
    }
    (
        hdr_end,
        hdr_end + data_len + if ddgst { DIGEST_LEN } else { 0 },
    )
}

fn digest_flags(hdgst: bool, ddgst: bool, has_data: bool) -> u8 {
    (if hdgst { flags::HDGST } else { 0 }) | (if ddgst && has_data { flags::DDGST } else { 0 })
}

pub fn encode_ic_req(out: &mut [u8], r: &IcReq) -> usize {
    out[..IC_LEN].fill(0);
    put_common(out, pdu_type::IC_REQ, 0, IC_LEN, 0, IC_LEN);
    out[8..10].copy_from_slice(&r.pfv.to_le_bytes());
    out[10] = r.hpda;
    out[11] = (r.hdgst as u8) | ((r.ddgst as u8) << 1);
    out[12..16].copy_from_slice(&r.maxr2t.to_le_bytes());
    IC_LEN
}

pub fn encode_ic_resp(out: &mut [u8], r: &IcResp) -> usize {
    out[..IC_LEN].fill(0);
    put_common(out, pdu_type::IC_RESP, 0, IC_LEN, 0, IC_LEN);
    out[8..10].copy_from_slice(&r.pfv.to_le_bytes());
    out[10] = r.cpda;
    out[11] = (r.hdgst as u8) | ((r.ddgst as u8) << 1);
    out[12..16].copy_from_slice(&r.maxh2cdata.to_le_bytes());
    IC_LEN
}

/// TermReq header plus up to 128 bytes of the offending header; returns total length.
pub fn encode_term_req(
    out: &mut [u8],
    from_host: bool,
    fes: Fes,
    fei: u32,
    offending: &[u8],
) -> usize {
    let n = offending.len().min(TERM_MAX_DATA);
    let ty = if from_host {
        pdu_type::H2C_TERM_REQ
    } else {
        pdu_type::C2H_TERM_REQ
    };
    out[..TERM_HLEN].fill(0);
    put_common(
        out,
        ty,
        0,
        TERM_HLEN,
        if n > 0 { TERM_HLEN } else { 0 },
        TERM_HLEN + n,
    );
    out[8..10].copy_from_slice(&(fes as u16).to_le_bytes());
    out[10..14].copy_from_slice(&fei.to_le_bytes());
    out[TERM_HLEN..TERM_HLEN + n].copy_from_slice(&offending[..n]);
    TERM_HLEN + n
}

/// CapsuleCmd header; `data_len` bytes of in-capsule data follow.
pub fn encode_capsule_cmd(
    out: &mut [u8],
    sqe: &[u8; 64],
    data_len: usize,
    hdgst: bool,
    ddgst: bool,
) -> usize {
    let (pdo, plen) = data_pdu_lengths(CAPSULE_CMD_HLEN, data_len, hdgst, ddgst);
    put_common(
        out,
        pdu_type::CAPSULE_CMD,
        digest_flags(hdgst, ddgst, data_len > 0),
        CAPSULE_CMD_HLEN,
        pdo,
        plen,
    );
    out[8..72].copy_from_slice(sqe);
    finish_header(out, CAPSULE_CMD_HLEN, hdgst)
}

pub fn encode_capsule_resp(out: &mut [u8], cqe: &[u8; 16], hdgst: bool) -> usize {
    let plen = CAPSULE_RESP_HLEN + if hdgst { DIGEST_LEN } else { 0 };
    put_common(
        out,
        pdu_type::CAPSULE_RESP,
        digest_flags(hdgst, false, false),
        CAPSULE_RESP_HLEN,
        0,
        plen,
    );
    out[8..24].copy_from_slice(cqe);
    finish_header(out, CAPSULE_RESP_HLEN, hdgst)
}

/// Fields of a C2HData or H2CData header.
#[derive(Debug, Clone, Copy)]
pub struct DataHeader {
    pub cccid: u16,
    /// Transfer tag (H2CData only).
    pub ttag: u16,
    pub datao: u32,
    pub datal: u32,
    pub last: bool,
    pub success: bool,
}

pub fn encode_data_header(
    out: &mut [u8],
    to_host: bool,
    h: &DataHeader,
    hdgst: bool,
    ddgst: bool,
) -> usize {
    let (pdo, plen) = data_pdu_lengths(DATA_HLEN, h.datal as usize, hdgst, ddgst);
    let mut fl = digest_flags(hdgst, ddgst, h.datal > 0);
    if h.last {
        fl |= flags::LAST_PDU;
    }
    if h.success {
        fl |= flags::SUCCESS;
    }
    let ty = if to_host {
        pdu_type::C2H_DATA
    } else {
        pdu_type::H2C_DATA
    };
    out[..DATA_HLEN].fill(0);
    put_common(out, ty, fl, DATA_HLEN, pdo, plen);
    out[8..10].copy_from_slice(&h.cccid.to_le_bytes());
    if !to_host {
        out[10..12].copy_from_slice(&h.ttag.to_le_bytes());
    }
    out[12..16].copy_from_slice(&h.datao.to_le_bytes());
    out[16..20].copy_from_slice(&h.datal.to_le_bytes());
    finish_header(out, DATA_HLEN, hdgst)
}

pub fn encode_r2t(out: &mut [u8], r: &R2t, hdgst: bool) -> usize {
    let plen = R2T_HLEN + if hdgst { DIGEST_LEN } else { 0 };
    out[..R2T_HLEN].fill(0);
    put_common(
        out,
        pdu_type::R2T,
        digest_flags(hdgst, false, false),
        R2T_HLEN,
        0,
        plen,
    );
    out[8..10].copy_from_slice(&r.cccid.to_le_bytes());
    out[10..12].copy_from_slice(&r.ttag.to_le_bytes());
    out[12..16].copy_from_slice(&r.r2to.to_le_bytes());
    out[16..20].copy_from_slice(&r.r2tl.to_le_bytes());
    finish_header(out, R2T_HLEN, hdgst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_params(hdgst: bool, ddgst: bool) -> DecodeParams {
        DecodeParams {
            hdgst,
            ddgst,
            max_data: 1 << 20,
            from_host: true,
        }
    }
    fn ctrl_params(hdgst: bool, ddgst: bool) -> DecodeParams {
        DecodeParams {
            hdgst,
            ddgst,
            max_data: 1 << 20,
            from_host: false,
        }
    }

    fn frame<'a>(d: Decoded<'a>) -> Frame<'a> {
        match d {
            Decoded::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn data_header_ahead_only_for_a_valid_header_with_payload_still_to_come() {
        for (hd, dd) in [(false, false), (true, true)] {
            let h = DataHeader {
                cccid: 5,
                ttag: 2,
                datao: 4096,
                datal: 8192,
                last: true,
                success: false,
            };
            let mut b = vec![0u8; 128];
            let n = encode_data_header(&mut b, false, &h, hd, dd);
            b.truncate(n);
            b.extend(std::iter::repeat_n(7u8, 8192 + if dd { 4 } else { 0 }));
            let p = host_params(hd, dd);
            let ahead = data_header_ahead(&b[..n + 100], &p, pdu_type::H2C_DATA)
                .expect("header with partial payload");
            assert_eq!((ahead.cccid, ahead.ttag, ahead.datao), (5, 2, 4096));
            assert_eq!((ahead.data_off, ahead.data_len, ahead.ddgst), (n, 8192, dd));
            assert_eq!(
                data_header_ahead(&b[..n - 1], &p, pdu_type::H2C_DATA),
                None,
                "header incomplete"
            );
            assert_eq!(
                data_header_ahead(&b, &p, pdu_type::H2C_DATA),
                None,
                "whole PDU: decoded as usual"
            );
            if hd {
                let mut bad = b.clone();
                bad[n - 1] ^= 1;
                assert_eq!(
                    data_header_ahead(&bad[..n + 100], &p, pdu_type::H2C_DATA),
                    None,
                    "bad header digest"
                );
            }
            assert_eq!(
                data_header_ahead(&b[..n + 100], &host_params(!hd, dd), pdu_type::H2C_DATA),
                None,
                "digest mismatch"
            );
        }
        let mut cmd = [0u8; 72];
        encode_capsule_cmd(&mut cmd, &[0u8; 64], 0, false, false);
        assert_eq!(
            data_header_ahead(&cmd, &host_params(false, false), pdu_type::H2C_DATA),
            None,
            "not H2CData"
        );
    }

    #[test]
    fn c2h_header_ahead_carries_the_flags() {
        for success in [false, true] {
            let h = DataHeader {
                cccid: 9,
                ttag: 0,
                datao: 0,
                datal: 65536,
                last: true,
                success,
            };
            let mut b = vec![0u8; 128];
            let n = encode_data_header(&mut b, true, &h, true, false);
            b.truncate(n);
            b.extend(std::iter::repeat_n(3u8, 1000));
            let p = ctrl_params(true, false);
            let ahead = data_header_ahead(&b, &p, pdu_type::C2H_DATA).expect("C2HData header");
            assert_eq!((ahead.cccid, ahead.datao, ahead.data_len), (9, 0, 65536));
            assert_eq!((ahead.last, ahead.success), (true, success));
            assert_eq!(
                data_header_ahead(&b, &p, pdu_type::H2C_DATA),
                None,
                "other type"
            );
        }
    }

    #[test]
    fn ic_req_round_trip() {
        let r = IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: true,
            ddgst: false,
            maxr2t: 0,
        };
        let mut b = [0u8; 128];
        assert_eq!(encode_ic_req(&mut b, &r), 128);
        let f = frame(decode(&b, &host_params(false, false)).unwrap());
        assert_eq!(f.len, 128);
        assert_eq!(f.pdu, Pdu::IcReq(r));
    }

    #[test]
    fn ic_resp_round_trip() {
        let r = IcResp {
            pfv: 0,
            cpda: 0,
            hdgst: true,
            ddgst: true,
            maxh2cdata: 131072,
        };
        let mut b = [0u8; 128];
        encode_ic_resp(&mut b, &r);
        assert_eq!(
            frame(decode(&b, &ctrl_params(false, false)).unwrap()).pdu,
            Pdu::IcResp(r)
        );
    }

    fn capsule(sqe: &[u8; 64], data: &[u8], hd: bool, dd: bool) -> Vec<u8> {
        let mut b = vec![0u8; 80];
        let n = encode_capsule_cmd(&mut b, sqe, data.len(), hd, dd);
        b.truncate(n);
        b.extend_from_slice(data);
        if dd && !data.is_empty() {
            b.extend_from_slice(&crc32c(data).to_le_bytes());
        }
        b
    }

    #[test]
    fn capsule_with_and_without_digests() {
        let mut sqe = [0u8; 64];
        sqe[0] = 0x01;
        sqe[2] = 7;
        for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
            for data in [&b""[..], &b"hello world, in capsule"[..]] {
                let b = capsule(&sqe, data, hd, dd);
                let f = frame(decode(&b, &host_params(hd, dd)).unwrap());
                assert_eq!(f.len, b.len());
                assert!(f.ddgst_ok);
                assert_eq!(f.pdu, Pdu::CapsuleCmd { sqe: &sqe, data });
            }
        }
    }

    #[test]
    fn incomplete_reports_needed_length() {
        let sqe = [0u8; 64];
        let b = capsule(&sqe, &[1, 2, 3, 4], false, false);
        assert_eq!(
            decode(&b[..5], &host_params(false, false)).unwrap(),
            Decoded::Incomplete(8)
        );
        assert_eq!(
            decode(&b[..20], &host_params(false, false)).unwrap(),
            Decoded::Incomplete(b.len())
        );
    }

    #[test]
    fn header_digest_mismatch_is_fatal() {
        let sqe = [0u8; 64];
        let mut b = capsule(&sqe, &[], true, false);
        b[20] ^= 0xFF;
        assert_eq!(
            decode(&b, &host_params(true, false)).unwrap_err(),
            PduError {
                fes: Fes::HeaderDigestError,
                fei: 0
            }
        );
    }

    #[test]
    fn data_digest_mismatch_is_reported_not_fatal() {
        let sqe = [0u8; 64];
        let mut b = capsule(&sqe, &[9; 32], false, true);
        let n = b.len();
        b[n - 1] ^= 1;
        assert!(!frame(decode(&b, &host_params(false, true)).unwrap()).ddgst_ok);
    }

    #[test]
    fn digest_flag_must_match_negotiation() {
        let sqe = [0u8; 64];
        let b = capsule(&sqe, &[], true, false);
        assert_eq!(decode(&b, &host_params(false, false)).unwrap_err().fei, 1);
    }

    #[test]
    fn rejects_unknown_type_bad_hlen_bad_pdo_and_wrong_direction() {
        let mut b = capsule(&[0; 64], &[1; 8], false, false);
        b[0] = 0x0F;
        assert_eq!(
            decode(&b, &host_params(false, false)).unwrap_err(),
            PduError {
                fes: Fes::InvalidHeaderField,
                fei: 0
            }
        );
        let mut b = capsule(&[0; 64], &[1; 8], false, false);
        b[2] = 70;
        assert_eq!(decode(&b, &host_params(false, false)).unwrap_err().fei, 2);
        let mut b = capsule(&[0; 64], &[1; 8], false, false);
        b[3] = 80;
        assert_eq!(decode(&b, &host_params(false, false)).unwrap_err().fei, 3);
        let b = capsule(&[0; 64], &[], false, false);
        assert!(decode(&b, &ctrl_params(false, false)).is_err());
    }

    #[test]
    fn rejects_oversized_data() {
        let b = capsule(&[0; 64], &[0; 4096], false, false);
        let p = DecodeParams {
            max_data: 1024,
            ..host_params(false, false)
        };
        assert_eq!(decode(&b, &p).unwrap_err().fes, Fes::DataLimitExceeded);
    }

    #[test]
    fn plen_shorter_than_header_is_rejected() {
        let mut b = capsule(&[0; 64], &[], false, false);
        b[4..8].copy_from_slice(&10u32.to_le_bytes());
        assert_eq!(decode(&b, &host_params(false, false)).unwrap_err().fei, 4);
    }

    #[test]
    fn data_pdus_round_trip() {
        let payload = [0xA5u8; 300];
        for (hd, dd) in [(false, false), (true, true)] {
            let h = DataHeader {
                cccid: 3,
                ttag: 9,
                datao: 4096,
                datal: 300,
                last: true,
                success: false,
            };
            let mut b = vec![0u8; 28];
            let n = encode_data_header(&mut b, false, &h, hd, dd);
            b.truncate(n);
            b.extend_from_slice(&payload);
            if dd {
                b.extend_from_slice(&crc32c(&payload).to_le_bytes());
            }
            let f = frame(decode(&b, &host_params(hd, dd)).unwrap());
            assert_eq!(
                f.pdu,
                Pdu::H2CData {
                    cccid: 3,
                    ttag: 9,
                    datao: 4096,
                    last: true,
                    data: &payload
                }
            );

            let mut b = vec![0u8; 28];
            let n = encode_data_header(&mut b, true, &h, hd, dd);
            b.truncate(n);
            b.extend_from_slice(&payload);
            if dd {
                b.extend_from_slice(&crc32c(&payload).to_le_bytes());
            }
            let f = frame(decode(&b, &ctrl_params(hd, dd)).unwrap());
            assert_eq!(
                f.pdu,
                Pdu::C2HData {
                    cccid: 3,
                    datao: 4096,
                    last: true,
                    success: false,
                    data: &payload
                }
            );
        }
    }

    #[test]
    fn datal_must_match_pdu_length() {
        let h = DataHeader {
            cccid: 1,
            ttag: 1,
            datao: 0,
            datal: 16,
            last: true,
            success: false,
        };
        let mut b = vec![0u8; 24];
        encode_data_header(&mut b, false, &h, false, false);
        b.extend_from_slice(&[0u8; 16]);
        b[16] = 15;
        assert_eq!(decode(&b, &host_params(false, false)).unwrap_err().fei, 16);
    }

    #[test]
    fn r2t_resp_and_term_round_trip() {
        let r = R2t {
            cccid: 5,
            ttag: 6,
            r2to: 0,
            r2tl: 65536,
        };
        let mut b = [0u8; 28];
        let n = encode_r2t(&mut b, &r, true);
        assert_eq!(n, 28);
        assert_eq!(
            frame(decode(&b, &ctrl_params(true, false)).unwrap()).pdu,
            Pdu::R2T(r)
        );

        let cqe = [7u8; 16];
        let n = encode_capsule_resp(&mut b, &cqe, false);
        assert_eq!(
            frame(decode(&b[..n], &ctrl_params(false, false)).unwrap()).pdu,
            Pdu::CapsuleResp { cqe: &cqe }
        );

        let mut t = [0u8; 152];
        let n = encode_term_req(&mut t, false, Fes::HeaderDigestError, 0, &[0xEE; 200]);
        assert_eq!(n, 152);
        let f = frame(decode(&t[..n], &ctrl_params(true, true)).unwrap());
        assert_eq!(
            f.pdu,
            Pdu::TermReq {
                from_host: false,
                fes: 3,
                fei: 0,
                data: &[0xEE; 128]
            }
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Arbitrary bytes never panic the decoder, and a frame never claims more
            /// bytes than it was given.
            #[test]
            fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                   hd: bool, dd: bool, from_host: bool) {
                let p = DecodeParams { hdgst: hd, ddgst: dd, max_data: 512, from_host };
                if let Ok(Decoded::Frame(f)) = decode(&bytes, &p) {
                    prop_assert!(f.len <= bytes.len());
                }
            }

            #[test]
            fn capsule_round_trips(sqe in proptest::array::uniform32(any::<u8>()),
                                   data in proptest::collection::vec(any::<u8>(), 0..300),
                                   hd: bool, dd: bool) {
                let mut full = [0u8; 64];
                full[..32].copy_from_slice(&sqe);
                let b = capsule(&full, &data, hd, dd);
                let f = frame(decode(&b, &host_params(hd, dd)).unwrap());
                prop_assert_eq!(f.len, b.len());
                prop_assert_eq!(f.pdu, Pdu::CapsuleCmd { sqe: &full, data: &data });
            }

            #[test]
            fn split_input_is_incomplete_until_whole(cut in 0usize..100) {
                let b = capsule(&[3; 64], &[1; 20], true, true);
                let cut = cut.min(b.len() - 1);
                let is_incomplete = matches!(decode(&b[..cut], &host_params(true, true)), Ok(Decoded::Incomplete(_)));
                prop_assert!(is_incomplete);
            }
        }
    }
}
