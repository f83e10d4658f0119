//! Writes the seed corpora: `cargo run --example gen_seeds -- [DIR]` (default: seeds/ next
//! to this crate's Cargo.toml), one directory per fuzz target. Each conn_state seed is run
//! through the harness once as a check; FUZZ_TRACE=1 prints what the target sends.

use std::path::PathBuf;

fn main() {
    let dir = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds"));
    let sets = [
        ("pdu_decode", nvmf_raid_fuzz::seeds::pdu_decode_seeds()),
        ("conn_state", nvmf_raid_fuzz::seeds::conn_state_seeds()),
    ];
    let regressions = dir.parent().unwrap_or(&dir).join("regressions");
    let mut failed = false;
    for (target, seeds) in sets {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).expect("create seed dir");
        for (name, bytes) in &seeds {
            if target == "conn_state" {
                if std::env::var_os("FUZZ_TRACE").is_some() {
                    eprintln!("=== {name}");
                }
                match std::panic::catch_unwind(|| nvmf_raid_fuzz::conn::run(bytes)) {
                    Ok(o) => println!(
                        "{target}/{name}: {} bytes, delivered {}/{}, {} PDUs back, terminated {}",
                        bytes.len(),
                        o.delivered,
                        o.stream_len,
                        o.pdus_sent,
                        o.terminated
                    ),
                    Err(_) => {
                        println!("{target}/{name}: ORACLE FAILURE (not written)");
                        failed = true;
                        continue;
                    }
                }
            } else {
                nvmf_raid_fuzz::pdu::run(bytes);
                println!("{target}/{name}: {} bytes", bytes.len());
            }
            std::fs::write(d.join(name), bytes).expect("write seed");
        }
    }
    // Reproducers of bugs found in the target: written to regressions/, expected to fail
    // until the target is fixed.
    std::fs::create_dir_all(&regressions).expect("create regressions dir");
    for (name, bytes) in nvmf_raid_fuzz::seeds::conn_state_regressions() {
        let ok = std::panic::catch_unwind(|| nvmf_raid_fuzz::conn::run(&bytes)).is_ok();
        println!("regressions/{name}: {} bytes, {}", bytes.len(), if ok { "passes (fixed?)" } else { "still fails" });
        std::fs::write(regressions.join(name), &bytes).expect("write regression");
    }
    if failed {
        std::process::exit(1);
    }
}
