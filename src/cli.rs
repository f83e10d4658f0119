//! Readable output of the management commands (tables by default, JSON with --json).

use std::path::Path;

use serde_json::{json, Value};

use super::VolumeCmd;

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

pub fn volume(socket: &Path, cmd: VolumeCmd) -> Result<(), String> {
    match cmd {
        VolumeCmd::Status { name, json } => {
            let r = nvmf_raid::mgmt::call(socket, "volume_status", json!({"name": name}))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap());
                return Ok(());
            }
            let vols = r.as_array().cloned().unwrap_or_default();
            if vols.is_empty() {
                return Err(match name {
                    Some(n) => format!("unknown volume '{n}'"),
                    None => "the target has no volumes".into(),
                });
            }
            println!("{:<16} {:<7} {:<9} {:>11} {:>9}", "VOLUME", "LEVEL", "STATE", "SIZE", "STRIP");
            for v in vols {
                let size = v["blocks"].as_u64().unwrap_or(0) * v["block_size"].as_u64().unwrap_or(0);
                println!(
                    "{:<16} {:<7} {:<9} {:>11} {:>9}",
                    v["name"].as_str().unwrap_or("?"),
                    v["level"].as_str().unwrap_or("?"),
                    v["state"].as_str().unwrap_or("?"),
                    human_bytes(size),
                    human_bytes(v["strip_bytes"].as_u64().unwrap_or(0))
                );
                if v["resync"]["active"].as_bool() == Some(true) {
                    let (done, total) = (v["resync"]["stripes_done"].as_u64().unwrap_or(0), v["resync"]["stripes"].as_u64().unwrap_or(1));
                    println!("  resync: {done}/{total} stripes ({:.1}%)", 100.0 * done as f64 / total.max(1) as f64);
                }
                for m in v["members"].as_array().into_iter().flatten() {
                    println!("  slot {:<3} {:<20} {}", m["slot"], m["device"].as_str().unwrap_or("?"), m["state"].as_str().unwrap_or("?"));
                }
            }
            Ok(())
        }
        VolumeCmd::FailMember { volume, member, force } => {
            nvmf_raid::mgmt::call(socket, "volume_fail_member", json!({"volume": volume, "member": member, "force": force}))?;
            println!("{volume}: member {member} failed");
            Ok(())
        }
    }
}

pub fn print_subsystems(r: &Value, as_json: bool) {
    if as_json {
        return println!("{}", serde_json::to_string_pretty(r).unwrap());
    }
    for s in r.as_array().into_iter().flatten() {
        let hosts = if s["allow_any_host"].as_bool() == Some(true) { "any host".to_string() } else { s["hosts"].to_string() };
        println!("{}  serial {}  hosts: {hosts}", s["nqn"].as_str().unwrap_or("?"), s["serial"].as_str().unwrap_or("?"));
        for n in s["namespaces"].as_array().into_iter().flatten() {
            let size = n["blocks"].as_u64().unwrap_or(0) * n["block_size"].as_u64().unwrap_or(0);
            println!("  nsid {:<4} {:>11}  {} B blocks", n["nsid"], human_bytes(size), n["block_size"]);
        }
    }
}

pub fn print_controllers(r: &Value, as_json: bool) {
    if as_json {
        return println!("{}", serde_json::to_string_pretty(r).unwrap());
    }
    println!("{:<7} {:<9} {:<44} HOST", "CNTLID", "IO QUEUES", "SUBSYSTEM");
    for c in r.as_array().into_iter().flatten() {
        println!("{:<7} {:<9} {:<44} {}", c["cntlid"], c["io_queues"], c["subsystem"].as_str().unwrap_or("?"), c["host"].as_str().unwrap_or("?"));
    }
}
