//! Submission and completion queue entries as they travel inside capsules.

use super::spec::{admin, fabrics, io};
use crate::util::le::{u16_at as le16, u32_at as le32, u64_at as le64};

/// SGL descriptor types the NVMe/TCP host uses.
pub const SGL_IN_CAPSULE: u8 = 0x01; // data block descriptor, offset subtype
pub const SGL_TRANSPORT: u8 = 0x5A; // transport data block, transport-specific subtype

/// A parsed 64-byte submission queue entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sqe {
    pub opcode: u8,
    pub cid: u16,
    pub nsid: u32,
    pub sgl_addr: u64,
    pub sgl_len: u32,
    pub sgl_type: u8,
    /// cdw10..cdw15
    pub cdw: [u32; 6],
    /// Fabrics command type (byte 4) when opcode is 0x7F.
    pub fctype: u8,
}

impl Sqe {
    pub fn parse(b: &[u8; 64]) -> Sqe {
        let mut cdw = [0u32; 6];
        for (i, d) in cdw.iter_mut().enumerate() {
            *d = le32(b, 40 + 4 * i);
        }
        Sqe {
            opcode: b[0],
            cid: le16(b, 2),
            nsid: le32(b, 4),
            sgl_addr: le64(b, 24),
            sgl_len: le32(b, 32),
            sgl_type: b[39],
            cdw,
            fctype: if b[0] == admin::FABRICS { b[4] } else { 0 },
        }
    }

    pub fn encode(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0] = self.opcode;
        b[1] = 0x40; // PSDT: SGL for data transfer
        b[2..4].copy_from_slice(&self.cid.to_le_bytes());
        if self.opcode == admin::FABRICS {
            b[4] = self.fctype;
        } else {
            b[4..8].copy_from_slice(&self.nsid.to_le_bytes());
        }
        b[24..32].copy_from_slice(&self.sgl_addr.to_le_bytes());
        b[32..36].copy_from_slice(&self.sgl_len.to_le_bytes());
        b[39] = self.sgl_type;
        for (i, d) in self.cdw.iter().enumerate() {
            b[40 + 4 * i..44 + 4 * i].copy_from_slice(&d.to_le_bytes());
        }
        b
    }

    pub fn is_fabrics(&self) -> bool {
        self.opcode == admin::FABRICS
    }

    pub fn cdw10(&self) -> u32 {
        self.cdw[0]
    }
    pub fn cdw11(&self) -> u32 {
        self.cdw[1]
    }
    pub fn cdw12(&self) -> u32 {
        self.cdw[2]
    }
    pub fn cdw13(&self) -> u32 {
        self.cdw[3]
    }

    /// Starting LBA of a read/write/write-zeroes command.
    pub fn slba(&self) -> u64 {
        self.cdw[0] as u64 | (self.cdw[1] as u64) << 32
    }
    /// Number of logical blocks (0's based in the command, returned 1-based).
    pub fn nlb(&self) -> u32 {
        (self.cdw[2] & 0xFFFF) + 1
    }
}

/// Direction of the data a command moves, as its opcode encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDir {
    None,
    HostToController,
    ControllerToHost,
}

pub fn data_direction(sqe: &Sqe) -> DataDir {
    if sqe.is_fabrics() {
        // Fabrics commands encode direction in fctype's low bits.
        return match sqe.fctype & 0x3 {
            1 => DataDir::HostToController,
            2 => DataDir::ControllerToHost,
            _ => DataDir::None,
        };
    }
    if sqe.sgl_len == 0 {
        return DataDir::None;
    }
    match sqe.opcode & 0x3 {
        1 => DataDir::HostToController,
        2 => DataDir::ControllerToHost,
        _ => DataDir::None,
    }
}

/// Connect command fields (cdw10..cdw12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectCmd {
    pub recfmt: u16,
    pub qid: u16,
    /// 0's based submission queue size.
    pub sqsize: u16,
    /// Connect attributes (byte 46): priority class and `CATTR_DISABLE_SQFLOW`.
    pub cattr: u8,
    pub kato_ms: u32,
}

/// The host asks for no SQ flow control: completions need no SQ head, and a successful
/// read may end with the C2HData SUCCESS flag instead of a response capsule.
pub const CATTR_DISABLE_SQFLOW: u8 = 1 << 2;

impl ConnectCmd {
    pub fn from_sqe(s: &Sqe) -> ConnectCmd {
        ConnectCmd {
            recfmt: (s.cdw[0] & 0xFFFF) as u16,
            qid: (s.cdw[0] >> 16) as u16,
            sqsize: (s.cdw[1] & 0xFFFF) as u16,
            cattr: (s.cdw[1] >> 16) as u8,
            kato_ms: s.cdw[2],
        }
    }

    pub fn sq_flow_control_disabled(&self) -> bool {
        self.cattr & CATTR_DISABLE_SQFLOW != 0
    }
}

/// Build a Connect SQE (used by the in-tree host).
pub fn connect_sqe(cid: u16, qid: u16, sqsize: u16, cattr: u8, kato_ms: u32) -> Sqe {
    let mut s = Sqe {
        opcode: admin::FABRICS,
        fctype: fabrics::CONNECT,
        cid,
        ..Default::default()
    };
    s.cdw[0] = (qid as u32) << 16;
    s.cdw[1] = sqsize as u32 | (cattr as u32) << 16;
    s.cdw[2] = kato_ms;
    s.sgl_type = SGL_IN_CAPSULE;
    s.sgl_len = fabrics::CONNECT_DATA_LEN as u32;
    s
}

pub fn rw_sqe(
    opcode: u8,
    cid: u16,
    nsid: u32,
    slba: u64,
    nlb: u32,
    len: u32,
    in_capsule: bool,
) -> Sqe {
    debug_assert!(matches!(opcode, io::READ | io::WRITE | io::WRITE_ZEROES));
    let mut s = Sqe {
        opcode,
        cid,
        nsid,
        ..Default::default()
    };
    s.cdw[0] = slba as u32;
    s.cdw[1] = (slba >> 32) as u32;
    s.cdw[2] = nlb - 1;
    if opcode != io::WRITE_ZEROES {
        s.sgl_len = len;
        s.sgl_type = if in_capsule {
            SGL_IN_CAPSULE
        } else {
            SGL_TRANSPORT
        };
    }
    s
}

/// A completion queue entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cqe {
    pub dw0: u32,
    pub dw1: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    /// (SCT << 8 | SC) with DNR/More in bits 14/13, i.e. CQE status >> 1.
    pub status: u16,
}

impl Cqe {
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.dw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.dw1.to_le_bytes());
        b[8..10].copy_from_slice(&self.sqhd.to_le_bytes());
        b[10..12].copy_from_slice(&self.sqid.to_le_bytes());
        b[12..14].copy_from_slice(&self.cid.to_le_bytes());
        b[14..16].copy_from_slice(&(self.status << 1).to_le_bytes());
        b
    }

    pub fn parse(b: &[u8; 16]) -> Cqe {
        Cqe {
            dw0: le32(b, 0),
            dw1: le32(b, 4),
            sqhd: le16(b, 8),
            sqid: le16(b, 10),
            cid: le16(b, 12),
            status: le16(b, 14) >> 1,
        }
    }

    /// Status code type and code without DNR/More bits.
    pub fn status_code(&self) -> u16 {
        self.status & 0x7FF
    }
    pub fn is_success(&self) -> bool {
        self.status_code() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqe_round_trip() {
        let s = rw_sqe(io::WRITE, 77, 1, 0x1_0000_0002, 8, 4096, true);
        let p = Sqe::parse(&s.encode());
        assert_eq!(p, s);
        assert_eq!(p.slba(), 0x1_0000_0002);
        assert_eq!(p.nlb(), 8);
        assert_eq!(data_direction(&p), DataDir::HostToController);
    }

    #[test]
    fn connect_fields() {
        let s = Sqe::parse(&connect_sqe(1, 3, 127, CATTR_DISABLE_SQFLOW, 5000).encode());
        let c = ConnectCmd::from_sqe(&s);
        assert_eq!((c.qid, c.sqsize, c.kato_ms), (3, 127, 5000));
        assert!(c.sq_flow_control_disabled());
        assert!(!ConnectCmd::from_sqe(&connect_sqe(1, 3, 127, 0, 0)).sq_flow_control_disabled());
        assert_eq!(data_direction(&s), DataDir::HostToController);
    }

    #[test]
    fn cqe_round_trip_keeps_status_and_phase_bit_clear() {
        let c = Cqe {
            dw0: 1,
            dw1: 2,
            sqhd: 3,
            sqid: 4,
            cid: 5,
            status: 0x4182,
        };
        let b = c.encode();
        assert_eq!(b[14] & 1, 0);
        assert_eq!(Cqe::parse(&b), c);
        assert_eq!(c.status_code(), 0x182);
    }
}
