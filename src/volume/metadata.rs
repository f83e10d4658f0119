//! Keeping the members' superblocks current. A volume's metadata thread rewrites the
//! superblocks of every surviving member whenever a member fails, bumping the generation;
//! until that write is durable, write completions on the volume are held back (see
//! `RaidChannel`), so no host write is acknowledged that a restart could forget was
//! written around a failed member.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam::channel::{Receiver, Sender};
use tracing::{error, info};

use super::layout::Layout;
use super::raid::MemberHealth;
use super::superblock::{Slot, SlotState, Superblock, NO_REBUILD, SB_BYTES};
use crate::bdev::{Bdev, BdevOp};
use crate::util::aligned::AlignedRegion;

/// What every superblock of the volume shares.
#[derive(Debug)]
pub struct VolumeIdentity {
    pub uuid: [u8; 16],
    pub name: String,
    pub device_ids: Vec<[u8; 16]>,
    pub data_offset: u64,
    pub created: u64,
}

pub enum MetaMsg {
    /// Record the current member states.
    Update,
    /// Write the final superblocks (clean when nothing is left to resynchronise) and stop;
    /// the sender waits on the reply.
    Close { reply: Sender<()>, clean: bool },
}

pub struct Metadata {
    identity: VolumeIdentity,
    layout: Arc<Layout>,
    block_size: u32,
    members: Vec<Arc<dyn Bdev>>,
    health: Arc<MemberHealth>,
    generation: Mutex<u64>,
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Read the superblock area of a device: Ok(None) when it holds none.
pub fn read_superblock(dev: &dyn Bdev) -> std::io::Result<Result<Option<Superblock>, super::superblock::SbError>> {
    let buf = AlignedRegion::new(SB_BYTES)?;
    // SAFETY: the fresh region is ours alone.
    let b = unsafe { buf.slice_mut(0, SB_BYTES) };
    dev.sync_io(BdevOp::Read, 0, b)?;
    Ok(Superblock::decode(b))
}

impl Metadata {
    pub fn new(identity: VolumeIdentity, layout: Arc<Layout>, block_size: u32, members: Vec<Arc<dyn Bdev>>, health: Arc<MemberHealth>, generation: u64) -> Self {
        Metadata { identity, layout, block_size, members, health, generation: Mutex::new(generation) }
    }

    fn superblock(&self, slot: usize, generation: u64, clean: bool) -> Superblock {
        let slots = (0..self.members.len())
            .map(|m| Slot {
                state: if self.health.is_failed(m) { SlotState::Failed } else { SlotState::Active },
                device: self.identity.device_ids[m],
            })
            .collect();
        Superblock {
            volume_uuid: self.identity.uuid,
            volume_name: self.identity.name.clone(),
            level: self.layout.level,
            group_size: self.layout.group_size as u16,
            strip_blocks: self.layout.strip_blocks as u32,
            block_size: self.block_size,
            member_blocks: self.layout.member_blocks,
            data_offset: self.identity.data_offset,
            generation,
            clean,
            rebuild_checkpoint: NO_REBUILD,
            created: self.identity.created,
            this_slot: slot as u16,
            this_device: self.identity.device_ids[slot],
            slots,
        }
    }

    /// Write a new generation of superblocks to every surviving member. A member that
    /// cannot take it is failed, and the survivors are written again.
    pub fn write_all(&self, clean: bool) {
        let mut generation = self.generation.lock().unwrap();
        loop {
            *generation += 1;
            let epoch = self.health.epoch();
            let mut all_written = true;
            for m in (0..self.members.len()).filter(|&m| !self.health.is_failed(m)) {
                let bytes = self.superblock(m, *generation, clean).encode();
                let written = AlignedRegion::new(SB_BYTES).and_then(|buf| {
                    // SAFETY: the fresh region is ours alone.
                    let b = unsafe { buf.slice_mut(0, SB_BYTES) };
                    b.copy_from_slice(&bytes[..]);
                    self.members[m].sync_io(BdevOp::Write, 0, b)
                });
                if let Err(e) = written {
                    error!(volume = self.identity.name, member = self.members[m].name(), error = %e, "superblock write failed");
                    self.health.fail(m, "superblock write failed");
                    all_written = false;
                }
            }
            if all_written && epoch == self.health.epoch() {
                self.health.set_recorded(epoch);
                return;
            }
        }
    }

    /// Serve update requests until the volume closes.
    pub fn run(self: Arc<Self>, rx: Receiver<MetaMsg>) {
        while let Ok(msg) = rx.recv() {
            match msg {
                MetaMsg::Update => {
                    // Coalesce a burst of failures into one write.
                    while let Ok(MetaMsg::Update) = rx.try_recv() {}
                    self.write_all(false);
                    info!(volume = self.identity.name, failed = ?self.health.failed_members(), "member states recorded in the superblocks");
                }
                MetaMsg::Close { reply, clean } => {
                    self.write_all(clean);
                    let _ = reply.send(());
                    return;
                }
            }
        }
    }
}

/// Failure epochs: bumped on each failure, recorded once the superblocks say so.
#[derive(Debug, Default)]
pub struct Epochs {
    pub changed: AtomicU64,
    pub recorded: AtomicU64,
}

impl Epochs {
    pub fn up_to_date(&self) -> bool {
        self.changed.load(Ordering::Acquire) == self.recorded.load(Ordering::Acquire)
    }
}
