//! Shared code of the nvmf-raid fuzz targets: the harnesses (so a test or the seed
//! generator can run them outside libFuzzer) and the seed builders.

pub mod conn;
pub mod pdu;
pub mod seeds;
