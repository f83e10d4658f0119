//! The `pdu_decode` target: arbitrary bytes and decode parameters into the PDU codec.
//!
//! Input layout: byte 0 = flags (bit 0 hdgst, bit 1 ddgst, bit 2 from_host), byte 1 selects
//! `max_data`, the rest is the byte stream handed to `decode`.
//!
//! Oracles:
//! - `decode` never panics;
//! - `Incomplete(n)` asks for more bytes than it was given;
//! - a `Frame` uses at least a common header and at most the input;
//! - decoding just the frame's own bytes gives the same frame (no look-ahead);
//! - every decoded PDU type that has an encoder is re-encoded with it (header, data and
//!   digests) and the result decodes to an equal PDU of the same length with a good digest.

use nvmf_raid::nvmf::pdu::{
    self, decode, DataHeader, DecodeParams, Decoded, Fes, Frame, IcReq, IcResp, Pdu, R2t, COMMON_HEADER_LEN,
};

pub fn params_from(flags: u8, sel: u8) -> DecodeParams {
    let max_data = match sel % 8 {
        0 => 0,
        1 => 1,
        2 => 512,
        3 => 4096,
        4 => 8192,
        5 => 128 * 1024,
        6 => u32::MAX,
        _ => (sel as u32) << 4,
    };
    DecodeParams { hdgst: flags & 1 != 0, ddgst: flags & 2 != 0, max_data, from_host: flags & 4 != 0 }
}

pub fn run(input: &[u8]) {
    if input.len() < 2 {
        return;
    }
    let p = params_from(input[0], input[1]);
    check(&input[2..], &p);
}

/// Decode `buf` under `p` and apply every oracle.
pub fn check(buf: &[u8], p: &DecodeParams) {
    match decode(buf, p) {
        Err(_) => {}
        Ok(Decoded::Incomplete(n)) => {
            assert!(n > buf.len(), "Incomplete({n}) but {} bytes were available", buf.len());
        }
        Ok(Decoded::Frame(f)) => {
            assert!(f.len >= COMMON_HEADER_LEN && f.len <= buf.len(), "frame len {} of input {}", f.len, buf.len());
            let again = decode(&buf[..f.len], p).expect("the frame's own bytes must decode again");
            assert_eq!(again, Decoded::Frame(Frame { pdu: clone_pdu(&f.pdu), len: f.len, ddgst_ok: f.ddgst_ok }));
            if let Some(bytes) = reencode(&f.pdu, p) {
                let back = match decode(&bytes, p) {
                    Ok(Decoded::Frame(b)) => b,
                    other => panic!("re-encoded {:?} decodes as {other:?}; bytes {bytes:02x?}", f.pdu),
                };
                assert_eq!(back.pdu, f.pdu, "re-encoding changed the PDU");
                assert_eq!(back.len, bytes.len());
                assert_eq!(back.len, f.len, "re-encoded PDU has another length");
                assert!(back.ddgst_ok, "digest computed by the encoder does not verify");
            }
        }
    }
}

fn clone_pdu<'a>(p: &Pdu<'a>) -> Pdu<'a> {
    match *p {
        Pdu::IcReq(r) => Pdu::IcReq(r),
        Pdu::IcResp(r) => Pdu::IcResp(r),
        Pdu::TermReq { from_host, fes, fei, data } => Pdu::TermReq { from_host, fes, fei, data },
        Pdu::CapsuleCmd { sqe, data } => Pdu::CapsuleCmd { sqe, data },
        Pdu::CapsuleResp { cqe } => Pdu::CapsuleResp { cqe },
        Pdu::H2CData { cccid, ttag, datao, last, data } => Pdu::H2CData { cccid, ttag, datao, last, data },
        Pdu::C2HData { cccid, datao, last, success, data } => Pdu::C2HData { cccid, datao, last, success, data },
        Pdu::R2T(r) => Pdu::R2T(r),
    }
}

fn fes_from(v: u16) -> Option<Fes> {
    Some(match v {
        0x01 => Fes::InvalidHeaderField,
        0x02 => Fes::PduSequenceError,
        0x03 => Fes::HeaderDigestError,
        0x04 => Fes::DataOutOfRange,
        0x05 => Fes::DataLimitExceeded,
        0x06 => Fes::UnsupportedParameter,
        _ => return None,
    })
}

/// Append a data section and its digest (when negotiated and non-empty).
fn push_data(out: &mut Vec<u8>, data: &[u8], ddgst: bool) {
    out.extend_from_slice(data);
    if ddgst && !data.is_empty() {
        out.extend_from_slice(&pdu::crc32c(data).to_le_bytes());
    }
}

/// Re-encode a decoded PDU with the crate's encoders; None for a TermReq whose FES has no
/// `Fes` value (the encoder cannot express it).
pub fn reencode(pdu: &Pdu, p: &DecodeParams) -> Option<Vec<u8>> {
    let mut hdr = [0u8; pdu::MAX_HEADER_LEN + pdu::TERM_MAX_DATA];
    let mut out = Vec::new();
    match *pdu {
        Pdu::IcReq(ref r) => {
            let r: IcReq = *r;
            let n = pdu::encode_ic_req(&mut hdr, &r);
            out.extend_from_slice(&hdr[..n]);
        }
        Pdu::IcResp(ref r) => {
            let r: IcResp = *r;
            let n = pdu::encode_ic_resp(&mut hdr, &r);
            out.extend_from_slice(&hdr[..n]);
        }
        Pdu::TermReq { from_host, fes, fei, data } => {
            let n = pdu::encode_term_req(&mut hdr, from_host, fes_from(fes)?, fei, data);
            out.extend_from_slice(&hdr[..n]);
        }
        Pdu::CapsuleCmd { sqe, data } => {
            let n = pdu::encode_capsule_cmd(&mut hdr, sqe, data.len(), p.hdgst, p.ddgst);
            out.extend_from_slice(&hdr[..n]);
            push_data(&mut out, data, p.ddgst);
        }
        Pdu::CapsuleResp { cqe } => {
            let n = pdu::encode_capsule_resp(&mut hdr, cqe, p.hdgst);
            out.extend_from_slice(&hdr[..n]);
        }
        Pdu::H2CData { cccid, ttag, datao, last, data } => {
            let h = DataHeader { cccid, ttag, datao, datal: data.len() as u32, last, success: false };
            let n = pdu::encode_data_header(&mut hdr, false, &h, p.hdgst, p.ddgst);
            out.extend_from_slice(&hdr[..n]);
            push_data(&mut out, data, p.ddgst);
        }
        Pdu::C2HData { cccid, datao, last, success, data } => {
            let h = DataHeader { cccid, ttag: 0, datao, datal: data.len() as u32, last, success };
            let n = pdu::encode_data_header(&mut hdr, true, &h, p.hdgst, p.ddgst);
            out.extend_from_slice(&hdr[..n]);
            push_data(&mut out, data, p.ddgst);
        }
        Pdu::R2T(ref r) => {
            let r: R2t = *r;
            let n = pdu::encode_r2t(&mut hdr, &r, p.hdgst);
            out.extend_from_slice(&hdr[..n]);
        }
    }
    Some(out)
}
