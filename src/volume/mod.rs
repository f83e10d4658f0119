//! RAID volumes: layout (pure), and the engine that serves volumes from member devices.

pub mod assemble;
pub mod bitmap;
pub mod layout;
pub mod level;
pub mod members;
pub mod metadata;
pub mod plan;
pub mod raid;
mod rebuild;
pub mod scrub;
pub mod slow;
mod stripe;
pub mod superblock;
