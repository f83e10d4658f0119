//! A slow member (the fault injector delays each of its I/Os by 30 ms while its peers
//! answer in well under a millisecond): the volume reports it in status, serves reads
//! around it (by reconstruction on RAID-5, from the other copy on RAID-1), keeps every
//! read correct, and fails it after the configured time, after which a spare rebuilds.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, spawn_target, Model};
use nvmf_raid::host::{HostController, QueueOptions};
use nvmf_raid::mgmt::call;
use serde_json::{json, Value};

const NQN: &str = "nqn.2026-12.io.nvmf-raid:slow";
const FAIL_AFTER_S: u64 = 6;

fn write_config(
    dir: &std::path::Path,
    port: u16,
    level: &str,
    members: usize,
) -> std::path::PathBuf {
    let mut c = format!("[reactor]\ncores = [0]\n[management]\nsocket = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n", dir.join("mgmt.sock").display());
    for m in 0..=members {
        c += &format!("[[device]]\nname = \"m{m}\"\nkind = \"file\"\npath = \"{}\"\nsize = \"64M\"\nfault_injection = true\n", dir.join(format!("m{m}.img")).display());
    }
    let names: Vec<String> = (0..members).map(|m| format!("\"m{m}\"")).collect();
    c += &format!(
        "[[volume]]\nname = \"vol\"\nlevel = \"{level}\"\nmembers = [{}]\nspares = [\"m{members}\"]\nstrip_size = 16384\nslow_member_fail_after_s = {FAIL_AFTER_S}\n",
        names.join(", ")
    );
    c += &format!("[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = \"vol\"\n");
    let path = dir.join("target.toml");
    std::fs::write(&path, c).unwrap();
    path
}

fn status(dir: &std::path::Path) -> Value {
    call(&dir.join("mgmt.sock"), "volume_status", json!({})).unwrap()[0].clone()
}

fn member_reads(dir: &std::path::Path) -> Vec<(String, u64)> {
    let st = call(&dir.join("mgmt.sock"), "stats", json!({})).unwrap();
    st["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["device"].as_str().unwrap().to_string(),
                m["ops"]["read"]["ios"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn reads_of(all: &[(String, u64)], dev: &str) -> u64 {
    all.iter().filter(|(d, _)| d == dev).map(|(_, n)| n).sum()
}

/// Random verified reads (and some writes) until `done` says stop or the deadline passes.
fn exercise_until(m: &mut Model, what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(
            t.elapsed() < deadline,
            "{what}: not reached within {deadline:?}"
        );
        m.exercise(20, what);
    }
}

fn slow_member_is_steered_around_and_failed(level: &str, members: usize) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port, level, members);
    let mut child = spawn_target(&cfg, dir.path());
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = HostController::connect(addr, NQN, &QueueOptions::default()).unwrap();
    c.set_queue_count(1).unwrap();
    let q = c.io_queue(1).unwrap();
    let mut m = Model::new(q, 8192, 77);
    m.exercise(200, "before the fault");
    m.verify_all("before the fault");

    call(
        &dir.path().join("mgmt.sock"),
        "device_fault",
        json!({"device": "m1", "action": "delay", "us": 30_000}),
    )
    .unwrap();
    exercise_until(&mut m, "m1 reported slow", Duration::from_secs(60), || {
        status(dir.path())["members"][1]["slow"] == true
    });
    let st = status(dir.path());
    assert!(
        st["members"][1]["latency_us"].as_u64().unwrap() >= 10_000,
        "{st}"
    );
    assert!(
        st["members"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .all(|(i, x)| i == 1 || x["slow"] == false),
        "only m1 is slow: {st}"
    );

    // While slow, reads keep off it: only the probes (one read in 32) reach it.
    let around0 = status(dir.path())["members"][1]["reads_around"]
        .as_u64()
        .unwrap();
    let before = member_reads(dir.path());
    let mut reads = 0;
    for i in 0..400u64 {
        let mut b = vec![0u8; 4096];
        let lba = (i * 7919 * 8) % (8192 - 8);
        assert!(m.q.read(1, lba, 9, &mut b).unwrap().is_success());
        assert!(
            b == m.data[lba as usize * 512..lba as usize * 512 + 4096],
            "{level}: read at {lba} wrong while m1 is slow"
        );
        reads += 1;
    }
    let after = member_reads(dir.path());
    let slow_reads = reads_of(&after, "m1") - reads_of(&before, "m1");
    let peer_reads = reads_of(&after, "m0") - reads_of(&before, "m0");
    assert!(
        slow_reads * 8 < reads,
        "{level}: {slow_reads} of {reads} reads still went to the slow member"
    );
    assert!(
        peer_reads > slow_reads * 2,
        "{level}: peers served {peer_reads} reads, the slow member {slow_reads}"
    );
    let st = status(dir.path());
    let (around, direct) = (
        st["members"][1]["reads_around"].as_u64().unwrap() - around0,
        st["members"][1]["reads_direct"].as_u64().unwrap(),
    );
    assert!(
        around > 0 && direct * 8 < around,
        "{level}: status counts {around} reads served around m1 and {direct} sent to it"
    );

    // Slow beyond the limit: failed, and the spare takes over; no I/O error meanwhile.
    exercise_until(
        &mut m,
        "m1 failed for being slow",
        Duration::from_secs(FAIL_AFTER_S * 10),
        || status(dir.path())["members"][1]["state"] != "active",
    );
    exercise_until(
        &mut m,
        "rebuild onto the spare",
        Duration::from_secs(120),
        || status(dir.path())["state"] == "online",
    );
    assert_eq!(
        status(dir.path())["members"][1]["device"],
        format!("m{members}"),
        "the spare fills the slow member's slot"
    );
    m.verify_all("after the slow member was replaced");
    drop(m);
    drop(c);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let log = std::fs::read_to_string(dir.path().join("target.log")).unwrap();
    assert!(
        log.contains("member slow"),
        "the log says which member is slow"
    );
    assert!(
        log.contains("slow for"),
        "the log says why the member failed"
    );
}

#[test]
fn raid5_slow_member_is_read_around_by_reconstruction_and_failed() {
    slow_member_is_steered_around_and_failed("raid5", 4);
}

#[test]
fn raid1_slow_member_is_read_around_from_its_mirror_and_failed() {
    slow_member_is_steered_around_and_failed("raid1", 2);
}
