//! The on-disk superblock every member carries in the first 4 KiB of its reserved area:
//! which volume it belongs to, the geometry, its own slot, every slot's state, a
//! generation counter bumped on each update, clean/dirty, and the rebuild checkpoint.
//! Little-endian, versioned, CRC32C-checked. Pure encode/decode.
//!
//! ```text
//!   0 magic "NVMFRAID"      8 version u32        12 crc32c u32 (of all 4096 bytes, crc = 0)
//!  16 volume uuid [16]     32 volume name [64], NUL padded
//!  96 level u8             97 clean u8          98 group size u16
//! 100 strip blocks u32    104 block size u32   108 member count u16   110 this slot u16
//! 112 member blocks u64   120 data offset u64  128 generation u64     136 rebuild checkpoint u64
//! 144 created (unix s) u64                     152 this device uuid [16]
//! 256 slot table: member count x 32 bytes: state u8, 15 reserved, device uuid [16]
//! ```

use super::layout::Level;
use crate::util::le::{u16_at, u32_at, u64_at};

pub const SB_BYTES: usize = 4096;
pub const MAGIC: [u8; 8] = *b"NVMFRAID";
pub const VERSION: u32 = 1;
pub const MAX_MEMBERS: usize = 64;
/// `this_slot` of a hot spare.
pub const SPARE_SLOT: u16 = u16::MAX;
/// `rebuild_checkpoint` when no rebuild is in progress.
pub const NO_REBUILD: u64 = u64::MAX;
const SLOT_TABLE: usize = 256;
const SLOT_BYTES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SlotState {
    Active = 1,
    Failed = 2,
    /// Being rebuilt; blocks below the checkpoint are valid.
    Rebuilding = 3,
    /// Failed because its device was absent when the volume assembled; the device is
    /// rebuilt if it comes back.
    Missing = 4,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub state: SlotState,
    pub device: [u8; 16],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub volume_uuid: [u8; 16],
    pub volume_name: String,
    pub level: Level,
    pub group_size: u16,
    pub strip_blocks: u32,
    pub block_size: u32,
    pub member_blocks: u64,
    pub data_offset: u64,
    pub generation: u64,
    pub clean: bool,
    pub rebuild_checkpoint: u64,
    pub created: u64,
    /// This device's slot, or SPARE_SLOT.
    pub this_slot: u16,
    pub this_device: [u8; 16],
    pub slots: Vec<Slot>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SbError {
    #[error("superblock checksum mismatch")]
    Checksum,
    #[error("superblock version {0} is not supported (this build reads version {VERSION})")]
    Version(u32),
    #[error("superblock field {0} is invalid")]
    Field(&'static str),
}

fn level_code(l: Level) -> u8 {
    l.spec().code
}

impl Superblock {
    pub fn encode(&self) -> Box<[u8; SB_BYTES]> {
        assert!(self.slots.len() <= MAX_MEMBERS && self.volume_name.len() < 64);
        let mut b = Box::new([0u8; SB_BYTES]);
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..32].copy_from_slice(&self.volume_uuid);
        b[32..32 + self.volume_name.len()].copy_from_slice(self.volume_name.as_bytes());
        b[96] = level_code(self.level);
        b[97] = self.clean as u8;
        b[98..100].copy_from_slice(&self.group_size.to_le_bytes());
        b[100..104].copy_from_slice(&self.strip_blocks.to_le_bytes());
        b[104..108].copy_from_slice(&self.block_size.to_le_bytes());
        b[108..110].copy_from_slice(&(self.slots.len() as u16).to_le_bytes());
        b[110..112].copy_from_slice(&self.this_slot.to_le_bytes());
        for (at, v) in [
            (112, self.member_blocks),
            (120, self.data_offset),
            (128, self.generation),
            (136, self.rebuild_checkpoint),
            (144, self.created),
        ] {
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        b[152..168].copy_from_slice(&self.this_device);
        for (i, s) in self.slots.iter().enumerate() {
            let at = SLOT_TABLE + i * SLOT_BYTES;
            b[at] = s.state as u8;
            b[at + 16..at + 32].copy_from_slice(&s.device);
        }
        let crc = crc32c::crc32c(&b[..]);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Ok(None) for a device without a superblock (no magic).
    pub fn decode(b: &[u8]) -> Result<Option<Superblock>, SbError> {
        if b.len() < SB_BYTES || b[0..8] != MAGIC {
            return Ok(None);
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(SbError::Version(version));
        }
        let mut copy = [0u8; SB_BYTES];
        copy.copy_from_slice(&b[..SB_BYTES]);
        copy[12..16].fill(0);
        if crc32c::crc32c(&copy) != u32_at(b, 12) {
            return Err(SbError::Checksum);
        }
        let name_end = b[32..96].iter().position(|c| *c == 0).unwrap_or(64);
        let volume_name = std::str::from_utf8(&b[32..32 + name_end])
            .map_err(|_| SbError::Field("volume name"))?
            .to_string();
        let level = Level::from_code(b[96]).ok_or(SbError::Field("level"))?;
        let count = u16_at(b, 108) as usize;
        if count == 0 || count > MAX_MEMBERS {
            return Err(SbError::Field("member count"));
        }
        let this_slot = u16_at(b, 110);
        if this_slot != SPARE_SLOT && this_slot as usize >= count {
            return Err(SbError::Field("this slot"));
        }
        let mut slots = Vec::with_capacity(count);
        for i in 0..count {
            let at = SLOT_TABLE + i * SLOT_BYTES;
            let state = match b[at] {
                1 => SlotState::Active,
                2 => SlotState::Failed,
                3 => SlotState::Rebuilding,
                4 => SlotState::Missing,
                _ => return Err(SbError::Field("slot state")),
            };
            slots.push(Slot {
                state,
                device: b[at + 16..at + 32].try_into().unwrap(),
            });
        }
        Ok(Some(Superblock {
            volume_uuid: b[16..32].try_into().unwrap(),
            volume_name,
            level,
            clean: b[97] != 0,
            group_size: u16_at(b, 98),
            strip_blocks: u32_at(b, 100),
            block_size: u32_at(b, 104),
            member_blocks: u64_at(b, 112),
            data_offset: u64_at(b, 120),
            generation: u64_at(b, 128),
            rebuild_checkpoint: u64_at(b, 136),
            created: u64_at(b, 144),
            this_slot,
            this_device: b[152..168].try_into().unwrap(),
            slots,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Superblock {
        Superblock {
            volume_uuid: [7; 16],
            volume_name: "vol0".into(),
            level: Level::Raid6,
            group_size: 6,
            strip_blocks: 128,
            block_size: 512,
            member_blocks: 1 << 20,
            data_offset: 2048,
            generation: 42,
            clean: true,
            rebuild_checkpoint: NO_REBUILD,
            created: 1_800_000_000,
            this_slot: 3,
            this_device: [3; 16],
            slots: (0..6)
                .map(|i| Slot {
                    state: if i == 4 {
                        SlotState::Failed
                    } else {
                        SlotState::Active
                    },
                    device: [i as u8; 16],
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip() {
        let s = sample();
        assert_eq!(Superblock::decode(&s.encode()[..]).unwrap(), Some(s));
    }

    #[test]
    fn blank_device_has_no_superblock() {
        assert_eq!(Superblock::decode(&[0u8; SB_BYTES]).unwrap(), None);
    }

    #[test]
    fn corruption_and_versions_are_detected() {
        let mut b = sample().encode();
        b[200] ^= 1;
        assert_eq!(Superblock::decode(&b[..]), Err(SbError::Checksum));
        let mut b = sample().encode();
        b[8] = 9;
        assert_eq!(Superblock::decode(&b[..]), Err(SbError::Version(9)));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), SB_BYTES..SB_BYTES + 1), magic: bool) {
            let mut b = bytes;
            if magic {
                b[0..8].copy_from_slice(&MAGIC);
                b[8..12].copy_from_slice(&VERSION.to_le_bytes());
            }
            let _ = Superblock::decode(&b);
        }
    }
}
