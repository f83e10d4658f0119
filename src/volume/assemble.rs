//! Assembling a volume from its devices' superblocks: which device sits in which slot (as
//! the superblocks say, not the configuration's order), which slots are failed or stale,
//! and which devices are refused. Pure: the caller reads the superblocks.

use super::layout::Level;
use std::time::{SystemTime, UNIX_EPOCH};

use super::superblock::{SlotState, Superblock, NO_REBUILD, SPARE_SLOT};

/// A device offered to the volume, with what its superblock area holds.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub sb: Option<Superblock>,
    /// Listed as a hot spare in the configuration (else as a member).
    pub spare: bool,
    /// Position in the configuration's member list (members only).
    pub position: Option<usize>,
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

/// What fills one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotFill {
    /// Index into the candidates; None when the device is absent.
    pub device: Option<usize>,
    pub state: SlotState,
    /// The device identity recorded for the slot.
    pub id: [u8; 16],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembly {
    pub volume_uuid: [u8; 16],
    /// No device had a superblock: the volume is created now.
    pub created: bool,
    pub slots: Vec<SlotFill>,
    /// Hot spares: (candidate index, device identity).
    pub spares: Vec<(usize, [u8; 16])>,
    /// Rows already rebuilt on rebuilding slots (0 when a rebuild starts over).
    pub rebuild_from: u64,
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
    #[error("device '{0}' has no superblock and no slot of the volume is clearly its own (several lack a device): list it under spares to rebuild onto it")]
    Blank(String),
    #[error("devices '{0}' and '{1}' both claim slot {2}")]
    SlotTwice(String, String, u16),
    #[error("the configuration says {field} = {config} but the superblocks say {disk}")]
    Mismatch {
        field: &'static str,
        config: String,
        disk: String,
    },
}

/// Derive a device identity from the volume and the slot it first filled.
pub fn device_id(volume_uuid: &[u8; 16], slot: usize) -> [u8; 16] {
    let mut name = volume_uuid.to_vec();
    name.extend_from_slice(&(slot as u64).to_le_bytes());
    *uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &name).as_bytes()
}

/// A fresh identity for a device joining as a spare.
pub fn spare_id(volume_uuid: &[u8; 16], device_name: &str) -> [u8; 16] {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut name = volume_uuid.to_vec();
    name.extend_from_slice(device_name.as_bytes());
    name.extend_from_slice(&nanos.to_le_bytes());
    *uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &name).as_bytes()
}

pub fn assemble(
    w: &Wanted,
    cands: &[Candidate],
    new_uuid: [u8; 16],
) -> Result<Assembly, AssemblyError> {
    // The newest superblock of this volume (by name) is authoritative.
    let ours = cands
        .iter()
        .filter_map(|c| c.sb.as_ref())
        .filter(|sb| sb.volume_name == w.name)
        .max_by_key(|sb| sb.generation);
    if let (None, Some(c)) = (ours, cands.iter().find(|c| c.sb.is_some())) {
        let other = c.sb.as_ref().unwrap().volume_name.clone();
        return Err(AssemblyError::Foreign {
            device: c.name.clone(),
            other,
        });
    }
    let Some(auth) = ours else {
        return Ok(create(w, cands, new_uuid));
    };
    check_geometry(w, auth)?;
    let mut a = Assembly {
        volume_uuid: auth.volume_uuid,
        created: false,
        slots: auth
            .slots
            .iter()
            .map(|s| SlotFill {
                device: None,
                state: s.state,
                id: s.device,
            })
            .collect(),
        spares: Vec::new(),
        rebuild_from: if auth.rebuild_checkpoint == NO_REBUILD {
            0
        } else {
            auth.rebuild_checkpoint
        },
        generation: auth.generation,
        unclean: !auth.clean,
        notes: Vec::new(),
    };
    let mut blanks = Vec::new();
    for ci in 0..cands.len() {
        if cands[ci].sb.is_none() && !cands[ci].spare {
            blanks.push(ci);
        } else {
            place(&mut a, auth, cands, ci)?;
        }
    }
    for ci in blanks {
        place_blank(&mut a, cands, ci)?;
    }
    for (slot, fill) in a.slots.iter_mut().enumerate() {
        if fill.device.is_none() && matches!(fill.state, SlotState::Active | SlotState::Rebuilding)
        {
            fill.state = SlotState::Missing;
            a.notes
                .push(format!("slot {slot} has no device: treated as failed"));
        }
    }
    Ok(a)
}

/// A new volume: members fill slots in configuration order, spares get identities.
fn create(w: &Wanted, cands: &[Candidate], uuid: [u8; 16]) -> Assembly {
    let members: Vec<usize> = (0..cands.len()).filter(|&i| !cands[i].spare).collect();
    debug_assert_eq!(members.len(), w.members);
    Assembly {
        volume_uuid: uuid,
        created: true,
        slots: members
            .iter()
            .enumerate()
            .map(|(slot, &ci)| SlotFill {
                device: Some(ci),
                state: SlotState::Active,
                id: device_id(&uuid, slot),
            })
            .collect(),
        spares: (0..cands.len())
            .filter(|&i| cands[i].spare)
            .map(|i| (i, spare_id(&uuid, &cands[i].name)))
            .collect(),
        rebuild_from: 0,
        generation: 0,
        unclean: false,
        notes: vec![],
    }
}

/// Put candidate `ci` where its superblock says, or among the spares.
fn place(
    a: &mut Assembly,
    auth: &Superblock,
    cands: &[Candidate],
    ci: usize,
) -> Result<(), AssemblyError> {
    let c = &cands[ci];
    let Some(sb) = c.sb.as_ref() else {
        debug_assert!(c.spare, "blank members are placed by place_blank");
        a.spares.push((ci, spare_id(&a.volume_uuid, &c.name)));
        return Ok(());
    };
    if sb.volume_uuid != auth.volume_uuid {
        return Err(AssemblyError::Foreign {
            device: c.name.clone(),
            other: sb.volume_name.clone(),
        });
    }
    if sb.this_slot == SPARE_SLOT {
        // Roles come from the superblocks: a device added as a spare at run time is a
        // spare even where the configuration still lists it as a member.
        if !c.spare {
            a.notes.push(format!(
                "device '{}' is listed as a member but is a hot spare: used as a spare",
                c.name
            ));
        }
        a.spares.push((ci, sb.this_device));
        return Ok(());
    }
    let slot = sb.this_slot as usize;
    if sb.this_device != auth.slots[slot].device {
        // A former member whose slot has since been rebuilt onto another device.
        if c.spare {
            a.notes.push(format!(
                "device '{}' was replaced in slot {slot}: reused as a spare",
                c.name
            ));
            a.spares.push((ci, spare_id(&a.volume_uuid, &c.name)));
        } else {
            a.notes.push(format!(
                "device '{}' was replaced in slot {slot} and is no longer a member: ignored",
                c.name
            ));
        }
        return Ok(());
    }
    let fill = &mut a.slots[slot];
    if let Some(prev) = fill.device {
        return Err(AssemblyError::SlotTwice(
            cands[prev].name.clone(),
            c.name.clone(),
            sb.this_slot,
        ));
    }
    fill.device = Some(ci);
    match fill.state {
        SlotState::Missing => {
            // Absent at an earlier start and back now: its data is old, rebuild it.
            fill.state = SlotState::Rebuilding;
            a.rebuild_from = 0;
            a.notes.push(format!(
                "device '{}' is back in slot {slot} after being absent: rebuilding it",
                c.name
            ));
        }
        SlotState::Rebuilding if sb.generation < auth.generation => a.rebuild_from = 0,
        SlotState::Active if sb.generation < auth.generation => {
            // Only a superblock update interrupted by a crash leaves an active member
            // behind: it missed no data write.
            a.notes.push(format!("device '{}' has generation {} < {}: superblock update was interrupted, member kept", c.name, sb.generation, auth.generation));
        }
        _ => {}
    }
    Ok(())
}

/// A member without a superblock while the others have one: a replaced disk or a
/// recreated file. It takes the slot left without a device (the one at its configured
/// position when several are) and is rebuilt there, like a spare.
fn place_blank(a: &mut Assembly, cands: &[Candidate], ci: usize) -> Result<(), AssemblyError> {
    let c = &cands[ci];
    let open: Vec<usize> = (0..a.slots.len())
        .filter(|&s| a.slots[s].device.is_none())
        .collect();
    let slot = match (c.position.filter(|p| open.contains(p)), open.as_slice()) {
        (Some(p), _) => p,
        (None, [only]) => *only,
        _ => return Err(AssemblyError::Blank(c.name.clone())),
    };
    let fill = &mut a.slots[slot];
    fill.device = Some(ci);
    fill.state = SlotState::Rebuilding;
    fill.id = spare_id(&a.volume_uuid, &c.name);
    a.rebuild_from = 0;
    a.notes.push(format!(
        "device '{}' has no superblock: it replaces the device of slot {slot} and is rebuilt",
        c.name
    ));
    Ok(())
}

fn check_geometry(w: &Wanted, sb: &Superblock) -> Result<(), AssemblyError> {
    let mismatch = |field, config: String, disk: String| {
        Err(AssemblyError::Mismatch {
            field,
            config,
            disk,
        })
    };
    if sb.level != w.level {
        return mismatch("level", format!("{:?}", w.level), format!("{:?}", sb.level));
    }
    if sb.slots.len() != w.members {
        return mismatch(
            "members (count)",
            w.members.to_string(),
            sb.slots.len().to_string(),
        );
    }
    if sb.strip_blocks != w.strip_blocks || sb.block_size != w.block_size {
        return mismatch(
            "strip_size",
            format!("{}", w.strip_blocks as u64 * w.block_size as u64),
            format!("{}", sb.strip_blocks as u64 * sb.block_size as u64),
        );
    }
    if sb.group_size != w.group_size {
        return mismatch(
            "group_size",
            w.group_size.to_string(),
            sb.group_size.to_string(),
        );
    }
    if sb.volume_name != w.name {
        return mismatch("name", w.name.clone(), sb.volume_name.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::superblock::Slot;

    fn wanted() -> Wanted {
        Wanted {
            name: "v".into(),
            level: Level::Raid5,
            group_size: 4,
            strip_blocks: 128,
            block_size: 512,
            members: 4,
        }
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
            slots: (0..4)
                .map(|i| Slot {
                    state: if failed.contains(&i) {
                        SlotState::Failed
                    } else {
                        SlotState::Active
                    },
                    device: device_id(&uuid, i),
                })
                .collect(),
        }
    }

    fn cands(sbs: Vec<Option<Superblock>>) -> Vec<Candidate> {
        sbs.into_iter()
            .enumerate()
            .map(|(i, sb)| Candidate {
                name: format!("d{i}"),
                sb,
                spare: false,
                position: Some(i),
            })
            .collect()
    }

    fn devices(a: &Assembly) -> Vec<Option<usize>> {
        a.slots.iter().map(|s| s.device).collect()
    }

    fn states(a: &Assembly) -> Vec<SlotState> {
        a.slots.iter().map(|s| s.state).collect()
    }

    use SlotState::{Active, Failed, Missing, Rebuilding};

    #[test]
    fn blank_devices_create_a_volume_in_config_order() {
        let mut c = cands(vec![None, None, None, None, None]);
        c[4].spare = true;
        let a = assemble(&wanted(), &c, [1; 16]).unwrap();
        assert!(a.created);
        assert_eq!(devices(&a), vec![Some(0), Some(1), Some(2), Some(3)]);
        assert_eq!(a.spares.len(), 1);
        assert_eq!(a.spares[0].0, 4);
    }

    #[test]
    fn superblock_order_wins_over_config_order() {
        let c = cands(vec![
            Some(sb(2, 5, &[])),
            Some(sb(0, 5, &[])),
            Some(sb(3, 5, &[])),
            Some(sb(1, 5, &[])),
        ]);
        let a = assemble(&wanted(), &c, [1; 16]).unwrap();
        assert_eq!(devices(&a), vec![Some(1), Some(3), Some(0), Some(2)]);
        assert_eq!(states(&a), vec![Active; 4]);
        assert_eq!(a.generation, 5);
    }

    #[test]
    fn member_behind_by_an_interrupted_update_is_kept() {
        let c = cands(vec![
            Some(sb(0, 7, &[])),
            Some(sb(1, 7, &[])),
            Some(sb(2, 6, &[])),
            Some(sb(3, 7, &[])),
        ]);
        let a = assemble(&wanted(), &c, [1; 16]).unwrap();
        assert_eq!(states(&a), vec![Active; 4]);
        assert!(a.notes[0].contains("interrupted"));
    }

    #[test]
    fn recorded_failure_and_missing_device_stay_failed() {
        let c = cands(vec![
            Some(sb(0, 8, &[1])),
            Some(sb(1, 7, &[])),
            Some(sb(2, 8, &[1])),
        ]);
        let a = assemble(
            &Wanted {
                members: 4,
                ..wanted()
            },
            &c,
            [1; 16],
        )
        .unwrap();
        assert_eq!(states(&a), vec![Active, Failed, Active, Missing]);
    }

    #[test]
    fn a_device_back_after_being_absent_is_rebuilt() {
        let newer = |slot| {
            let mut s = sb(slot, 9, &[]);
            s.slots[3].state = Missing;
            Some(s)
        };
        let c = cands(vec![newer(0), newer(1), newer(2), Some(sb(3, 8, &[]))]);
        let a = assemble(&wanted(), &c, [1; 16]).unwrap();
        assert_eq!(states(&a), vec![Active, Active, Active, Rebuilding]);
        assert_eq!(a.rebuild_from, 0);
    }

    #[test]
    fn rebuild_resumes_from_the_checkpoint_and_spares_are_recognised() {
        let spare_dev = [5; 16];
        let with = |slot: u16| {
            let mut s = sb(slot, 9, &[]);
            s.slots[2] = Slot {
                state: Rebuilding,
                device: spare_dev,
            };
            s.rebuild_checkpoint = 77;
            s
        };
        let mut rebuilding = with(2);
        rebuilding.this_device = spare_dev;
        let mut spare = with(0);
        spare.this_slot = SPARE_SLOT;
        spare.this_device = [6; 16];
        // The replaced device still lists itself in slot 2: ignored.
        let mut c = cands(vec![
            Some(with(0)),
            Some(with(1)),
            Some(sb(2, 8, &[])),
            Some(with(3)),
            Some(rebuilding),
            Some(spare),
        ]);
        c[4].spare = true;
        c[5].spare = true;
        let a = assemble(&wanted(), &c, [1; 16]).unwrap();
        assert_eq!(devices(&a), vec![Some(0), Some(1), Some(4), Some(3)]);
        assert_eq!(states(&a), vec![Active, Active, Rebuilding, Active]);
        assert_eq!(a.rebuild_from, 77);
        assert_eq!(a.spares, vec![(5, [6; 16])]);
        assert!(
            a.notes.iter().any(|n| n.contains("'d2' was replaced")),
            "{:?}",
            a.notes
        );
    }

    #[test]
    fn a_blank_device_replaces_the_failed_member_and_is_rebuilt() {
        // Slot 2 was failed; its device came back blank (a replaced disk).
        let c = cands(vec![
            Some(sb(0, 7, &[2])),
            Some(sb(1, 7, &[2])),
            None,
            Some(sb(3, 7, &[2])),
        ]);
        let a = assemble(&wanted(), &c, [1; 16]).unwrap();
        assert_eq!(devices(&a), vec![Some(0), Some(1), Some(2), Some(3)]);
        assert_eq!(states(&a)[2], SlotState::Rebuilding);
        assert_ne!(
            a.slots[2].id,
            sb(0, 7, &[2]).slots[2].device,
            "the new device gets an identity of its own"
        );
        assert!(
            a.notes.iter().any(|n| n.contains("'d2' has no superblock")),
            "{:?}",
            a.notes
        );
        // An active member's disk swapped while the target was down: the same.
        let c = cands(vec![
            Some(sb(0, 7, &[])),
            None,
            Some(sb(2, 7, &[])),
            Some(sb(3, 7, &[])),
        ]);
        let a = assemble(&wanted(), &c, [1; 16]).unwrap();
        assert_eq!(states(&a)[1], SlotState::Rebuilding);
    }

    #[test]
    fn refuses_foreign_blank_and_mismatched_devices() {
        let mut foreign = sb(1, 5, &[]);
        foreign.volume_uuid = [3; 16];
        foreign.volume_name = "other".into();
        let e = assemble(
            &wanted(),
            &cands(vec![Some(sb(0, 5, &[])), Some(foreign)]),
            [1; 16],
        )
        .unwrap_err();
        assert!(matches!(e, AssemblyError::Foreign { .. }), "{e}");
        // A blank device whose configured slot is taken while several others are open.
        let e = assemble(&wanted(), &cands(vec![None, Some(sb(0, 5, &[]))]), [1; 16]).unwrap_err();
        assert_eq!(e, AssemblyError::Blank("d0".into()));
        let e = assemble(
            &Wanted {
                level: Level::Raid6,
                ..wanted()
            },
            &cands(vec![Some(sb(0, 5, &[]))]),
            [1; 16],
        )
        .unwrap_err();
        assert!(e.to_string().contains("level"), "{e}");
        let e = assemble(
            &wanted(),
            &cands(vec![Some(sb(0, 5, &[])), Some(sb(0, 5, &[]))]),
            [1; 16],
        )
        .unwrap_err();
        assert!(matches!(e, AssemblyError::SlotTwice(..)));
    }
}
