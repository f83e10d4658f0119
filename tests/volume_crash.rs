//! kill -9 during a write load: after the restart the volume resynchronises its parity in
//! the background while serving, every acknowledged write reads back, and afterwards every
//! stripe's parity matches its data on the member files.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{free_port, spawn_target};
use nvmf_raid::host::{Data, HostController, QueueOptions};
use nvmf_raid::mgmt::call;
use nvmf_raid::nvmf::command;
use nvmf_raid::nvmf::spec::io;
use nvmf_raid::volume::layout::Level;
use serde_json::json;

const NQN: &str = "nqn.2026-11.io.nvmf-raid:crash";
const STRIP: u64 = 16384;
const UNIT: usize = 4096;
const HOT_BYTES: u64 = 4 << 20;

fn write_config(
    dir: &std::path::Path,
    port: u16,
    level: &str,
    members: usize,
) -> std::path::PathBuf {
    let mut c = format!("[reactor]\ncores = [0]\n[management]\nsocket = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n", dir.join("mgmt.sock").display());
    for m in 0..members {
        c += &format!(
            "[[device]]\nname = \"m{m}\"\nkind = \"file\"\npath = \"{}\"\nsize = \"512M\"\n",
            dir.join(format!("m{m}.img")).display()
        );
    }
    let names: Vec<String> = (0..members).map(|m| format!("\"m{m}\"")).collect();
    c += &format!(
        "[[volume]]\nname = \"vol\"\nlevel = \"{level}\"\nmembers = [{}]\nstrip_size = {STRIP}\n",
        names.join(", ")
    );
    c += &format!("[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = \"vol\"\n");
    let path = dir.join("target.toml");
    std::fs::write(&path, c).unwrap();
    path
}

fn unit_data(unit: u64, version: u32) -> Vec<u8> {
    (0..UNIT)
        .map(|i| {
            (i as u32 ^ (unit as u32).wrapping_mul(2654435761) ^ version.wrapping_mul(40503)) as u8
        })
        .collect()
}

#[test]
fn raid5_kill_9_during_writes_loses_no_acknowledged_write_and_resyncs_parity() {
    kill_9_during_writes("raid5", Level::Raid5, 4);
}

/// RAID-6 DP: a torn write leaves diagonal cells of other rows stale too; the resync
/// rewrites both parities of the whole strip.
#[test]
fn raid6_dp_kill_9_during_writes_loses_no_acknowledged_write_and_resyncs_parity() {
    kill_9_during_writes("raid6-dp", Level::Raid6Dp, 6);
}

#[allow(clippy::zombie_processes)] // the first child is killed and reaped explicitly
fn kill_9_during_writes(name: &str, level: Level, members: usize) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port, name, members);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = spawn_target(&cfg, dir.path());

    let mut c = HostController::connect(addr, NQN, &QueueOptions::default()).unwrap();
    c.set_queue_count(1).unwrap();
    let (_, blocks) = c.namespace_geometry(1).unwrap();
    let mut q = c.io_queue(1).unwrap();
    // Writes stay in the first 4 MiB of the volume: one write-intent region of the members.
    let units = (blocks * 512 / UNIT as u64).min(HOT_BYTES / UNIT as u64);
    // Per unit: the last acknowledged version, and whether a write is still in flight.
    let mut acked: HashMap<u64, u32> = HashMap::new();
    let mut inflight: HashMap<u16, (u64, u32, Vec<u8>)> = HashMap::new();
    let mut busy_units = std::collections::HashSet::new();
    let mut x = 0x1234_5678u64;
    let mut version = 0u32;
    let start = Instant::now();
    let mut killed = false;
    while !killed {
        while inflight.len() < 16 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let unit = x % units;
            if !busy_units.insert(unit) {
                continue;
            }
            version += 1;
            let data = unit_data(unit, version);
            let sqe = command::rw_sqe(io::WRITE, 0, 1, unit * 8, 8, UNIT as u32, false);
            let cid = q
                .submit(sqe, Data::ToController(data.as_ptr(), UNIT))
                .unwrap();
            inflight.insert(cid, (unit, version, data));
        }
        let mut finished = Vec::new();
        q.poll(&mut |cid, cqe, _| {
            assert!(cqe.is_success());
            finished.push(cid);
        })
        .unwrap();
        for cid in finished {
            let (unit, v, _) = inflight.remove(&cid).unwrap();
            busy_units.remove(&unit);
            acked.insert(unit, v);
        }
        if start.elapsed() > Duration::from_millis(1500) {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            killed = true;
        }
    }
    drop(q);
    let unknown: std::collections::HashSet<u64> = inflight.values().map(|(u, _, _)| *u).collect();
    assert!(
        acked.len() > 100,
        "the load acknowledged too little to test ({})",
        acked.len()
    );

    // Restart: the unclean shutdown triggers a parity resync; I/O is served meanwhile.
    let mut child = spawn_target(&cfg, dir.path());
    let st = call(&dir.path().join("mgmt.sock"), "volume_status", json!({})).unwrap();
    let resync_rows = st[0]["resync"]["stripes"].as_u64().unwrap();
    assert!(resync_rows > 0, "no resync after kill -9: {st}");
    // The write-intent bitmap confines the resync to the written region (one 64 MiB region
    // of each member here), not the whole 511 MiB of data area.
    let all_rows = (512 << 20) / STRIP - (1 << 20) / STRIP;
    assert!(
        resync_rows * 4 <= all_rows,
        "resync of {resync_rows} of {all_rows} rows: the bitmap did not limit it"
    );
    let mut c = HostController::connect(addr, NQN, &QueueOptions::default()).unwrap();
    c.set_queue_count(1).unwrap();
    let mut q = c.io_queue(1).unwrap();
    for (unit, v) in &acked {
        if unknown.contains(unit) {
            continue;
        }
        let mut back = vec![0u8; UNIT];
        assert!(q.read(1, unit * 8, 9, &mut back).unwrap().is_success());
        assert!(
            back == unit_data(*unit, *v),
            "acknowledged write to unit {unit} (version {v}) lost"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = call(&dir.path().join("mgmt.sock"), "volume_status", json!({})).unwrap();
        if st[0]["resync"]["active"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "resync did not finish: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(q);
    drop(c);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success(), "clean stop after resync");

    // Parity straight from the member files.
    let (torn, rows) = common::inconsistent_rows(dir.path(), level, members, STRIP);
    assert!(
        torn.is_empty(),
        "{name}: {} of {rows} stripes have parity inconsistent after resync: {:?}",
        torn.len(),
        &torn[..torn.len().min(8)]
    );
}
