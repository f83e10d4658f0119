//! RAID volumes: layout (pure), and the engine that serves volumes from member devices.

pub mod layout;
pub mod plan;
pub mod raid;
mod stripe;
mod rebuild;
pub mod scrub;
pub mod members;
pub mod bitmap;
pub mod superblock;
pub mod assemble;
pub mod metadata;
pub mod slow;
