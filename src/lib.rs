//! nvmf-raid: a software RAID target for NVMe over TCP, built on pinned per-core reactors
//! that drive sockets and member devices through io_uring.

pub mod bdev;
pub mod config;
pub mod host;
pub mod mgmt;
pub mod nvmf;
pub mod metrics;
pub mod parity;
pub mod plot;
pub mod relay;
pub mod reactor;
pub mod server;
pub mod site;
pub mod stats;
pub mod util;
pub mod witness;
pub mod volume;
