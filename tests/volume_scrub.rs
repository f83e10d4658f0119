//! Online scrub: mismatches planted in member files while the target is down (a parity
//! strip, a Q strip, a data strip, a mirror copy) are found by a check scrub while the
//! volume serves, counted exactly and left alone; a repair scrub rewrites them; a
//! further check finds none, and the parity on the member files is consistent.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use common::{free_port, spawn_target, Model};
use nvmf_raid::host::{HostController, QueueOptions};
use nvmf_raid::mgmt::call;
use nvmf_raid::volume::layout::{Layout, Level};
use nvmf_raid::volume::raid::RESERVED_BYTES;
use serde_json::{json, Value};

const NQN: &str = "nqn.2026-12.io.nvmf-raid:scrub";
const STRIP: u64 = 16384;
const MEMBER_BYTES: u64 = 16 << 20;

fn write_config(
    dir: &std::path::Path,
    port: u16,
    level: &str,
    members: usize,
) -> std::path::PathBuf {
    write_config_with(dir, port, level, members, "")
}

/// `extra`: more fields of the volume section.
fn write_config_with(
    dir: &std::path::Path,
    port: u16,
    level: &str,
    members: usize,
    extra: &str,
) -> std::path::PathBuf {
    let mut c = format!("[reactor]\ncores = [0]\n[management]\nsocket = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n", dir.join("mgmt.sock").display());
    for m in 0..members {
        c += &format!(
            "[[device]]\nname = \"m{m}\"\nkind = \"file\"\npath = \"{}\"\nsize = {MEMBER_BYTES}\n",
            dir.join(format!("m{m}.img")).display()
        );
    }
    let names: Vec<String> = (0..members).map(|m| format!("\"m{m}\"")).collect();
    c += &format!("[[volume]]\nname = \"vol\"\nlevel = \"{level}\"\nmembers = [{}]\nstrip_size = {STRIP}\nscrub_rate = 0\n{extra}", names.join(", "));
    c += &format!("[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = \"vol\"\n");
    let path = dir.join("target.toml");
    std::fs::write(&path, c).unwrap();
    path
}

fn sock(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("mgmt.sock")
}

/// Run a scrub to its end and return its report.
fn scrub(dir: &std::path::Path, repair: bool) -> Value {
    call(
        &sock(dir),
        "volume_scrub",
        json!({"volume": "vol", "repair": repair}),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sc = call(&sock(dir), "volume_status", json!({})).unwrap()[0]["scrub"].clone();
        if sc["active"] == false {
            return sc;
        }
        assert!(Instant::now() < deadline, "scrub did not finish: {sc}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn member_file(dir: &std::path::Path, m: usize) -> std::fs::File {
    std::fs::File::options()
        .read(true)
        .write(true)
        .open(dir.join(format!("m{m}.img")))
        .unwrap()
}

fn read_strip(dir: &std::path::Path, m: usize, row: u64) -> Vec<u8> {
    let mut f = member_file(dir, m);
    f.seek(SeekFrom::Start(RESERVED_BYTES + row * STRIP))
        .unwrap();
    let mut b = vec![0u8; STRIP as usize];
    f.read_exact(&mut b).unwrap();
    b
}

/// Flip one byte of member `m`'s strip at `row`.
fn corrupt(dir: &std::path::Path, m: usize, row: u64) {
    let mut b = read_strip(dir, m, row);
    b[777] ^= 0x5a;
    let mut f = member_file(dir, m);
    f.seek(SeekFrom::Start(RESERVED_BYTES + row * STRIP))
        .unwrap();
    f.write_all(&b).unwrap();
}

fn layout(level: Level, members: usize) -> Layout {
    Layout::new(
        level,
        &vec![(MEMBER_BYTES - RESERVED_BYTES) / 512; members],
        0,
        STRIP / 512,
    )
    .unwrap()
}

/// Rows whose parity (or copies) disagree, read straight from the member files.
fn inconsistent_rows(dir: &std::path::Path, level: Level, members: usize) -> Vec<u64> {
    common::inconsistent_rows(dir, level, members, STRIP).0
}

struct Target {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Target {
    fn start(cfg: &std::path::Path, dir: &std::path::Path, port: u16) -> Target {
        Target {
            child: spawn_target(cfg, dir),
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        }
    }
    fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::SIGTERM,
        )
        .unwrap();
        assert!(self.child.wait().unwrap().success());
    }
}

fn model(addr: std::net::SocketAddr, seed: u64) -> (HostController, Model) {
    let mut c = HostController::connect(addr, NQN, &QueueOptions::default()).unwrap();
    c.set_queue_count(1).unwrap();
    let q = c.io_queue(1).unwrap();
    (c, Model::new(q, 4096, seed))
}

/// `plant` corrupts member files (target stopped) and returns the rows it touched.
fn scrub_finds_and_repairs(
    level: Level,
    name: &str,
    members: usize,
    plant: impl Fn(&std::path::Path, &Layout) -> Vec<u64>,
) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port, name, members);
    let t = Target::start(&cfg, dir.path(), port);
    let (c, mut m) = model(t.addr, 5);
    m.exercise(300, "before planting");
    let data = std::mem::take(&mut m.data);
    drop((m, c));
    t.stop();
    assert_eq!(
        inconsistent_rows(dir.path(), level, members),
        Vec::<u64>::new(),
        "{name}: consistent before planting"
    );

    let planted = plant(dir.path(), &layout(level, members));
    assert_eq!(
        inconsistent_rows(dir.path(), level, members),
        planted,
        "{name}: the planted rows are the inconsistent ones"
    );

    let t = Target::start(&cfg, dir.path(), port);
    let check = scrub(dir.path(), false);
    assert_eq!(
        check["mismatches"].as_u64().unwrap(),
        planted.len() as u64,
        "{name}: check scrub {check}"
    );
    assert_eq!(check["repaired"], 0, "{check}");
    let found: Vec<u64> = check["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[1].as_u64().unwrap())
        .collect();
    assert_eq!(found, planted, "{name}: the rows reported");
    assert_eq!(check["rows_done"], check["rows"], "{check}");
    assert_eq!(
        inconsistent_rows(dir.path(), level, members),
        planted,
        "{name}: a check scrub changes nothing"
    );

    let repair = scrub(dir.path(), true);
    assert_eq!(
        repair["mismatches"].as_u64().unwrap(),
        planted.len() as u64,
        "{repair}"
    );
    assert_eq!(
        repair["repaired"].as_u64().unwrap(),
        planted.len() as u64,
        "{repair}"
    );
    let again = scrub(dir.path(), false);
    assert_eq!(again["mismatches"], 0, "{name}: after repair {again}");
    // Host data outside the planted data strip reads back as written.
    let (c, mut m) = model(t.addr, 6);
    m.data = data;
    m.exercise(100, "after repair");
    drop((m, c));
    t.stop();
    assert_eq!(
        inconsistent_rows(dir.path(), level, members),
        Vec::<u64>::new(),
        "{name}: member files consistent after repair"
    );
}

#[test]
fn raid5_scrub_counts_and_repairs_parity_mismatches() {
    scrub_finds_and_repairs(Level::Raid5, "raid5", 4, |dir, l| {
        corrupt(dir, l.p_slot(3), 3);
        corrupt(dir, l.p_slot(9), 9);
        // A data strip in a row the host never wrote: repair makes parity match it.
        corrupt(dir, l.data_slot(900, 1), 900);
        vec![3, 9, 900]
    });
}

#[test]
fn raid6_scrub_counts_and_repairs_p_and_q_mismatches() {
    scrub_finds_and_repairs(Level::Raid6, "raid6", 5, |dir, l| {
        corrupt(dir, l.p_slot(2), 2);
        corrupt(dir, l.q_slot(5).unwrap(), 5);
        corrupt(dir, l.p_slot(7), 7);
        corrupt(dir, l.q_slot(7).unwrap(), 7);
        vec![2, 5, 7]
    });
}

#[test]
fn raid6_dp_scrub_counts_and_repairs_row_and_diagonal_mismatches() {
    scrub_finds_and_repairs(Level::Raid6Dp, "raid6-dp", 6, |dir, l| {
        corrupt(dir, l.p_slot(4), 4);
        corrupt(dir, l.q_slot(6).unwrap(), 6);
        // A data strip in a row the host never wrote: repair rewrites both parities.
        corrupt(dir, l.data_slot(900, 2), 900);
        vec![4, 6, 900]
    });
}

#[test]
fn raid1_scrub_counts_and_repairs_differing_copies() {
    scrub_finds_and_repairs(Level::Raid1, "raid1", 2, |dir, _| {
        corrupt(dir, 1, 4);
        corrupt(dir, 1, 800);
        vec![4, 800]
    });
}

/// A scheduled scrub starts by itself (here every 2 s) and finds what was planted.
#[test]
fn scheduled_scrub_runs_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let every_hours = 2.0 / 3600.0;
    let cfg = write_config_with(
        dir.path(),
        port,
        "raid5",
        4,
        &format!("scrub_interval_hours = {every_hours}\n"),
    );
    let t = Target::start(&cfg, dir.path(), port);
    t.stop();
    let l = layout(Level::Raid5, 4);
    corrupt(dir.path(), l.p_slot(6), 6);
    let t = Target::start(&cfg, dir.path(), port);
    let deadline = Instant::now() + Duration::from_secs(60);
    let sc = loop {
        let sc = call(&sock(dir.path()), "volume_status", json!({})).unwrap()[0]["scrub"].clone();
        if sc["completed"].as_u64().unwrap() >= 1 {
            break sc;
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled scrub finished: {sc}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(sc["mismatches"], 1, "{sc}");
    assert_eq!(sc["repaired"], 0, "a scheduled scrub only checks: {sc}");
    t.stop();
    assert!(std::fs::read_to_string(dir.path().join("target.log"))
        .unwrap()
        .contains("scheduled scrub started"));
}
