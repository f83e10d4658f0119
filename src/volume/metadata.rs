//! Keeping the members' superblocks current. A volume's metadata thread rewrites the
//! superblocks of every surviving member whenever a member fails, bumping the generation;
//! until that write is durable, write completions on the volume are held back (see
//! `RaidChannel`), so no host write is acknowledged that a restart could forget was
//! written around a failed member.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};
use tracing::{error, info};

use super::layout::Layout;
use super::members::{Device, Members, SlotState};
use super::superblock::{Slot, Superblock, NO_REBUILD, SB_BYTES, SPARE_SLOT};
use crate::bdev::{Bdev, BdevOp};
use crate::util::aligned::AlignedRegion;

/// How often a running rebuild's checkpoint is written to the superblocks.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// What every superblock of the volume shares.
#[derive(Debug)]
pub struct VolumeIdentity {
    pub uuid: [u8; 16],
    pub name: String,
    pub data_offset: u64,
    pub created: u64,
}

pub enum MetaMsg {
    /// Record the current member states (and put spares into failed slots).
    Update,
    /// Write the final superblocks (clean when nothing is left to resynchronise) and stop;
    /// the sender waits on the reply.
    Close { reply: Sender<()>, clean: bool },
}

pub struct Metadata {
    identity: VolumeIdentity,
    layout: Arc<Layout>,
    block_size: u32,
    members: Arc<Members>,
    generation: Mutex<u64>,
    /// Rebuild frontier last written to the superblocks.
    checkpointed: AtomicU64,
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

/// Write a 4 KiB-aligned metadata block to a device, durably.
pub fn write_block(dev: &dyn Bdev, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    let buf = AlignedRegion::new(bytes.len())?;
    // SAFETY: the fresh region is ours alone.
    let b = unsafe { buf.slice_mut(0, bytes.len()) };
    b.copy_from_slice(bytes);
    dev.sync_io(BdevOp::Write, offset, b)
}

impl Metadata {
    pub fn new(identity: VolumeIdentity, layout: Arc<Layout>, block_size: u32, members: Arc<Members>, generation: u64) -> Self {
        Metadata { identity, layout, block_size, members, generation: Mutex::new(generation), checkpointed: AtomicU64::new(NO_REBUILD) }
    }

    fn slot_table(&self) -> Vec<Slot> {
        (0..self.members.slots())
            .map(|s| {
                let dev = self.members.slot_device(s);
                let state = match self.members.state(s) {
                    SlotState::Failed if !dev.present => SlotState::Missing,
                    st => st,
                };
                Slot { state, device: dev.id }
            })
            .collect()
    }

    fn superblock(&self, this_slot: u16, this_device: [u8; 16], slots: &[Slot], generation: u64, clean: bool, checkpoint: u64) -> Superblock {
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
            rebuild_checkpoint: checkpoint,
            created: self.identity.created,
            this_slot,
            this_device,
            slots: slots.to_vec(),
        }
    }

    /// Every device that takes superblocks: members not failed, then spares.
    fn targets(&self) -> Vec<(Option<usize>, Device)> {
        let members = (0..self.members.slots()).filter(|&s| !self.members.is_failed(s)).map(|s| (Some(s), self.members.slot_device(s)));
        members.chain(self.members.spares().into_iter().map(|d| (None, d))).collect()
    }

    /// Write a new generation of superblocks to every surviving member and spare. A member
    /// that cannot take it is failed, and the survivors are written again.
    pub fn write_all(&self, clean: bool) {
        let mut generation = self.generation.lock().unwrap();
        loop {
            *generation += 1;
            let epoch = self.members.epoch();
            let checkpoint = if self.members.rebuilding() { self.members.rebuild.frontier() } else { NO_REBUILD };
            let slots = self.slot_table();
            let mut all_written = true;
            for (slot, dev) in self.targets() {
                let sb = self.superblock(slot.map_or(SPARE_SLOT, |s| s as u16), dev.id, &slots, *generation, clean, checkpoint);
                if let Err(e) = write_block(dev.bdev.as_ref(), 0, &sb.encode()[..]) {
                    error!(volume = self.identity.name, device = dev.bdev.name(), error = %e, "superblock write failed");
                    if let Some(s) = slot {
                        self.members.fail(s, "superblock write failed");
                        all_written = false;
                    }
                }
            }
            if all_written && epoch == self.members.epoch() {
                self.members.set_recorded(epoch);
                self.checkpointed.store(checkpoint, Ordering::Relaxed);
                return;
            }
        }
    }

    fn update(&self) {
        self.members.take_spares(self.layout.level.tolerance(self.layout.group_size) > 0);
        self.write_all(false);
        info!(volume = self.identity.name, failed = ?self.members.failed_members(), rebuilding = self.members.rebuilding(), "member states recorded in the superblocks");
    }

    /// Serve update requests until the volume closes; checkpoint a running rebuild.
    pub fn run(self: Arc<Self>, rx: Receiver<MetaMsg>) {
        loop {
            let msg = match rx.recv_timeout(CHECKPOINT_INTERVAL) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    if self.members.rebuilding() && self.members.rebuild.frontier() != self.checkpointed.load(Ordering::Relaxed) {
                        self.write_all(false);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            match msg {
                MetaMsg::Update => {
                    // Coalesce a burst of updates into one write; a close behind them still runs.
                    let mut close = None;
                    while let Ok(m) = rx.try_recv() {
                        if let MetaMsg::Close { .. } = m {
                            close = Some(m);
                            break;
                        }
                    }
                    self.update();
                    if let Some(MetaMsg::Close { reply, clean }) = close {
                        return self.close(reply, clean);
                    }
                }
                MetaMsg::Close { reply, clean } => return self.close(reply, clean),
            }
        }
    }

    fn close(&self, reply: Sender<()>, clean: bool) {
        self.write_all(clean);
        let _ = reply.send(());
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
