//! Small building blocks shared by the data path.

pub mod aligned;
pub mod bucket;
pub mod clock;
pub mod devcopy;
pub mod le;
pub mod locks;
pub mod ratelimit;
pub mod slab;
pub mod stopper;
