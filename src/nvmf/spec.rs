//! NVMe and NVMe/TCP constants: opcodes, status codes, feature and log identifiers.

pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Submission queue entry size and completion queue entry size in bytes.
pub const SQE_SIZE: usize = 64;
pub const CQE_SIZE: usize = 16;

pub mod admin {
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0A;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0C;
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Vendor specific: a message between the two sites of a stretched volume (data to
    /// the controller; the answer in the completion's dwords 0 and 1).
    pub const SITE_MESSAGE: u8 = 0xC1;
    pub const FABRICS: u8 = 0x7F;
}

pub mod io {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

pub mod fabrics {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    /// Size of the Connect command's data (hostid, cntlid, subnqn, hostnqn).
    pub const CONNECT_DATA_LEN: usize = 1024;
}

pub mod property {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1C;
}

pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    pub const NS_DESCRIPTORS: u8 = 0x03;
    pub const CSI_NAMESPACE: u8 = 0x05;
    pub const CSI_CONTROLLER: u8 = 0x06;
    pub const CSI_ACTIVE_NS_LIST: u8 = 0x07;
    pub const NS_CS_INDEPENDENT: u8 = 0x08;
}

pub mod log {
    pub const ERROR: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NS: u8 = 0x04;
    pub const COMMAND_EFFECTS: u8 = 0x05;
    pub const ANA: u8 = 0x0C;
    pub const DISCOVERY: u8 = 0x70;
}

pub mod feature {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0B;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
    pub const HOST_IDENTIFIER: u8 = 0x81;
}

/// Completion status: (status code type << 8) | status code, as placed in CQE bits 15:1.
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    pub const INVALID_OPCODE: u16 = 0x0001;
    pub const INVALID_FIELD: u16 = 0x0002;
    pub const DATA_TRANSFER_ERROR: u16 = 0x0004;
    pub const ABORTED_POWER_LOSS: u16 = 0x0005;
    pub const INTERNAL_ERROR: u16 = 0x0006;
    pub const ABORTED_SQ_DELETION: u16 = 0x0008;
    pub const INVALID_NAMESPACE: u16 = 0x000B;
    pub const COMMAND_SEQUENCE_ERROR: u16 = 0x000C;
    pub const SGL_DATA_LENGTH_INVALID: u16 = 0x000F;
    pub const SGL_DESCRIPTOR_TYPE_INVALID: u16 = 0x0011;
    pub const NAMESPACE_NOT_READY: u16 = 0x0082;
    pub const LBA_OUT_OF_RANGE: u16 = 0x0080;
    pub const CAPACITY_EXCEEDED: u16 = 0x0081;
    // Command specific (SCT 1).
    pub const INVALID_LOG_PAGE: u16 = 0x0109;
    pub const FEATURE_NOT_SAVEABLE: u16 = 0x010D;
    pub const ASYNC_EVENT_LIMIT_EXCEEDED: u16 = 0x0105;
    pub const CONNECT_INCOMPATIBLE_FORMAT: u16 = 0x0180;
    pub const CONNECT_CONTROLLER_BUSY: u16 = 0x0181;
    pub const CONNECT_INVALID_PARAMETERS: u16 = 0x0182;
    pub const CONNECT_INVALID_HOST: u16 = 0x0184;
    // Media and data integrity errors (SCT 2).
    pub const WRITE_FAULT: u16 = 0x0280;
    pub const UNRECOVERED_READ_ERROR: u16 = 0x0281;
    // Path related (SCT 3): the host retries these on another path.
    pub const ANA_PERSISTENT_LOSS: u16 = 0x0301;
    pub const ANA_INACCESSIBLE: u16 = 0x0302;
    pub const ANA_TRANSITION: u16 = 0x0303;
    /// Do Not Retry, as it sits in the 15-bit status field.
    pub const DNR: u16 = 0x4000;
}

/// Connect "invalid parameter" result: attribute 1 (data) and the byte offset.
pub fn connect_invalid_data_field(offset: u16) -> u32 {
    (1 << 16) | offset as u32
}
/// Connect "invalid parameter" result pointing into the command (attribute 0).
pub fn connect_invalid_cmd_field(offset: u16) -> u32 {
    offset as u32
}

/// Offsets inside the Connect data.
pub mod connect_data {
    pub const HOSTID: usize = 0;
    pub const CNTLID: usize = 16;
    pub const SUBNQN: usize = 256;
    pub const HOSTNQN: usize = 512;
    pub const NQN_LEN: usize = 256;
}
