#![no_main]
//! PDU codec: arbitrary bytes and decode parameters (see nvmf_raid_fuzz::pdu).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nvmf_raid_fuzz::pdu::run(data);
});
