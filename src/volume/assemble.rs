//! Assembling a volume from its devices' superblocks: which device sits in which slot (as
//! the superblocks say, not the configuration's order), which slots are failed or stale,
//! and which devices are refused. Pure: the caller reads the superblocks.

use super::layout::Level;
use super::superblock::{SlotState, Superblock, SPARE_SLOT};

/// A device offered to the volume, with what its superblock area holds.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub sb: Option<Superblock>,
}

/// The geometry the configuration asks for.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub name: String,
    pub level: Level,
    pub group_size: u16,
    pub strip_blocks: u32,
    pub block_size: u32,
    pub members: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembly {
    pub volume_uuid: [u8; 16],
    /// No member had a superblock: the volume is created now.
    pub created: bool,
    /// Per slot: index into the member candidates, None when the device is absent.
    pub slots: Vec<Option<usize>>,
    /// Per slot: failed (absent, failed before, or stale).
    pub failed: Vec<bool>,
    /// Per slot: the device identity recorded for it.
    pub device_ids: Vec<[u8; 16]>,
    /// Highest generation seen; the next superblock write uses generation + 1.
    pub generation: u64,
    /// The last shutdown was not clean.
    pub unclean: bool,
    /// What assembly decided beyond the obvious, for the log.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssemblyError {
    #[error("device '{device}' belongs to another volume ('{other}')")]
    Foreign { device: String, other: String },
    #[error("device '{0}' has no superblock but the other members do: add it as a spare to rebuild onto it")]
    Blank(String),
    #[error("device '{0}' is a hot spare of this volume, not a member")]
    SpareListedAsMember(String),
    #[error("devices '{0}' and '{1}' both claim slot {2}")]
    SlotTwice(String, String, u16),
    #[error("the configuration says {field} = {config} but the superblocks say {disk}")]
    Mismatch { field: &'static str, config: String, disk: String },
}

/// Derive a device identity from the volume and the slot it first filled.
pub fn device_id(volume_uuid: &[u8; 16], slot: usize) -> [u8; 16] {
    let mut name = volume_uuid.to_vec();
    name.extend_from_slice(&(slot as u64).to_le_bytes());
    *uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &name).as_bytes()
}

pub fn assemble(w: &Wanted, members: &[Candidate], new_uuid: [u8; 16]) -> Result<Assembly, AssemblyError> {
    // The newest superblock of this volume (by name) is authoritative.
    let ours = members.iter().filter_map(|c| c.sb.as_ref()).filter(|sb| sb.volume_name == w.name).max_by_key(|sb| sb.generation);
    if let (None, Some(c)) = (ours, members.iter().find(|c| c.sb.is_some())) {
        let other = c.sb.as_ref().unwrap().volume_name.clone();
        return Err(AssemblyError::Foreign { device: c.name.clone(), other });
    }
    let Some(auth) = ours else {
        return Ok(Assembly {
            volume_uuid: new_uuid,
            created: true,
            slots: (0..members.len()).map(Some).collect(),
            failed: vec![false; members.len()],
            device_ids: (0..members.len()).map(|i| device_id(&new_uuid, i)).collect(),
            generation: 0,
            unclean: false,
            notes: vec![],
        });
    };
    check_geometry(w, auth)?;
    let mut slots: Vec<Option<usize>> = vec![None; auth.slots.len()];
    let mut failed: Vec<bool> = auth.slots.iter().map(|s| s.state != SlotState::Active).collect();
    let mut notes = Vec::new();
    for (ci, c) in members.iter().enumerate() {
        let sb = c.sb.as_ref().ok_or_else(|| AssemblyError::Blank(c.name.clone()))?;
        if sb.volume_uuid != auth.volume_uuid {
            return Err(AssemblyError::Foreign { device: c.name.clone(), other: sb.volume_name.clone() });
        }
        if sb.this_slot == SPARE_SLOT {
            return Err(AssemblyError::SpareListedAsMember(c.name.clone()));
        }
        let slot = sb.this_slot as usize;
        if let Some(prev) = slots[slot] {
            return Err(AssemblyError::SlotTwice(members[prev].name.clone(), c.name.clone(), sb.this_slot));
        }
        slots[slot] = Some(ci);
        if sb.this_device != auth.slots[slot].device {
            failed[slot] = true;
            notes.push(format!("device '{}' is not the device recorded in slot {slot}: treated as failed", c.name));
        } else if sb.generation < auth.generation && !failed[slot] {
            failed[slot] = true;
            notes.push(format!("device '{}' is stale (generation {} < {}): treated as failed", c.name, sb.generation, auth.generation));
        }
    }
    for (slot, dev) in slots.iter().enumerate() {
        if dev.is_none() && !failed[slot] {
            failed[slot] = true;
            notes.push(format!("slot {slot} has no device: treated as failed"));
        }
    }
    Ok(Assembly {
        volume_uuid: auth.volume_uuid,
        created: false,
        slots,
        failed,
        device_ids: auth.slots.iter().map(|s| s.device).collect(),
        generation: auth.generation,
        unclean: !auth.clean,
        notes,
    })
}

fn check_geometry(w: &Wanted, sb: &Superblock) -> Result<(), AssemblyError> {
    let mismatch = |field, config: String, disk: String| Err(AssemblyError::Mismatch { field, config, disk });
    if sb.level != w.level {
        return mismatch("level", format!("{:?}", w.level), format!("{:?}", sb.level));
    }
    if sb.slots.len() != w.members {
        return mismatch("members (count)", w.members.to_string(), sb.slots.len().to_string());
    }
    if sb.strip_blocks != w.strip_blocks || sb.block_size != w.block_size {
        return mismatch("strip_size", format!("{}", w.strip_blocks as u64 * w.block_size as u64), format!("{}", sb.strip_blocks as u64 * sb.block_size as u64));
    }
    if sb.group_size != w.group_size {
        return mismatch("group_size", w.group_size.to_string(), sb.group_size.to_string());
    }
    if sb.volume_name != w.name {
        return mismatch("name", w.name.clone(), sb.volume_name.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::superblock::{Slot, NO_REBUILD};

    fn wanted() -> Wanted {
        Wanted { name: "v".into(), level: Level::Raid5, group_size: 4, strip_blocks: 128, block_size: 512, members: 4 }
    }

    fn sb(slot: u16, generation: u64, failed: &[usize]) -> Superblock {
        let uuid = [9; 16];
        Superblock {
            volume_uuid: uuid,
            volume_name: "v".into(),
            level: Level::Raid5,
            group_size: 4,
            strip_blocks: 128,
            block_size: 512,
            member_blocks: 1000,
            data_offset: 2048,
            generation,
            clean: true,
            rebuild_checkpoint: NO_REBUILD,
            created: 0,
            this_slot: slot,
            this_device: device_id(&uuid, slot as usize),
            slots: (0..4).map(|i| Slot { state: if failed.contains(&i) { SlotState::Failed } else { SlotState::Active }, device: device_id(&uuid, i) }).collect(),
        }
    }

    fn cands(sbs: Vec<Option<Superblock>>) -> Vec<Candidate> {
        sbs.into_iter().enumerate().map(|(i, sb)| Candidate { name: format!("d{i}"), sb }).collect()
    }

    #[test]
    fn blank_devices_create_a_volume_in_config_order() {
        let a = assemble(&wanted(), &cands(vec![None, None, None, None]), [1; 16]).unwrap();
        assert!(a.created);
        assert_eq!(a.slots, vec![Some(0), Some(1), Some(2), Some(3)]);
    }

    #[test]
    fn superblock_order_wins_over_config_order() {
        let c = cands(vec![Some(sb(2, 5, &[])), Some(sb(0, 5, &[])), Some(sb(3, 5, &[])), Some(sb(1, 5, &[]))]);
        let a = assemble(&wanted(), &c, [1; 16]).unwrap();
        assert_eq!(a.slots, vec![Some(1), Some(3), Some(0), Some(2)]);
        assert_eq!(a.failed, vec![false; 4]);
        assert_eq!(a.generation, 5);
    }

    #[test]
    fn stale_member_is_failed() {
        let c = cands(vec![Some(sb(0, 7, &[])), Some(sb(1, 7, &[])), Some(sb(2, 6, &[])), Some(sb(3, 7, &[]))]);
        let a = assemble(&wanted(), &c, [1; 16]).unwrap();
        assert_eq!(a.failed, vec![false, false, true, false]);
        assert!(a.notes[0].contains("stale"));
    }

    #[test]
    fn recorded_failure_and_missing_device_stay_failed() {
        let c = cands(vec![Some(sb(0, 8, &[1])), Some(sb(1, 7, &[])), Some(sb(2, 8, &[1]))]);
        let a = assemble(&Wanted { members: 4, ..wanted() }, &c, [1; 16]).unwrap();
        assert_eq!(a.failed, vec![false, true, false, true]);
    }

    #[test]
    fn refuses_foreign_blank_and_mismatched_devices() {
        let mut foreign = sb(1, 5, &[]);
        foreign.volume_uuid = [3; 16];
        foreign.volume_name = "other".into();
        let e = assemble(&wanted(), &cands(vec![Some(sb(0, 5, &[])), Some(foreign)]), [1; 16]).unwrap_err();
        assert!(matches!(e, AssemblyError::Foreign { .. }), "{e}");
        let e = assemble(&wanted(), &cands(vec![Some(sb(0, 5, &[])), None]), [1; 16]).unwrap_err();
        assert_eq!(e, AssemblyError::Blank("d1".into()));
        let e = assemble(&Wanted { level: Level::Raid6, ..wanted() }, &cands(vec![Some(sb(0, 5, &[]))]), [1; 16]).unwrap_err();
        assert!(e.to_string().contains("level"), "{e}");
        let e = assemble(&wanted(), &cands(vec![Some(sb(0, 5, &[])), Some(sb(0, 5, &[]))]), [1; 16]).unwrap_err();
        assert!(matches!(e, AssemblyError::SlotTwice(..)));
    }
}
