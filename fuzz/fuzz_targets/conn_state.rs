#![no_main]
//! One connection's state machine driven by a fuzzed host stream and completion schedule
//! (see nvmf_raid_fuzz::conn).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nvmf_raid_fuzz::conn::run(data);
});
