//! nvmf-raid: a software RAID target for NVMe over TCP, built on pinned per-core reactors
//! that drive sockets and member devices through io_uring.

pub mod bdev;
pub mod config;
pub mod host;
pub mod metrics;
pub mod mgmt;
pub mod nvmf;
pub mod parity;
pub mod plot;
pub mod reactor;
pub mod relay;
pub mod server;
pub mod site;
pub mod stats;
pub mod util;
pub mod volume;
pub mod witness;
