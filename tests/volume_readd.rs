//! md's re-add: a member that drops out and comes back is caught up by copying only the
//! write-intent regions written while it was out, not rebuilt in full; afterwards the
//! volume leans on it (another member failed) and every block reads back.
//! - at run time: the device fails (injected errors), writes go on degraded in one region
//!   over several bitmap sweeps, the device heals, `volume_readd_member`;
//! - across a restart: the volume starts with the member still failed and takes what it
//!   missed from the bitmap on the other members.

mod common;

use std::time::{Duration, Instant};

use common::pattern;
use nvmf_raid::config::Config;
use nvmf_raid::host::{HostController, Queue, QueueOptions};
use nvmf_raid::mgmt::call;
use nvmf_raid::server::Server;
use serde_json::{json, Value};

const NQN: &str = "nqn.2026-12.io.nvmf-raid:readd";
const MIB: u64 = 1 << 20;
/// Members of 256 MiB with 16 KiB strips: 16384 member rows; a bitmap region covers at
/// least 64 MiB of each member, 4096 rows here, so four regions.
const ROWS: u64 = 16384;
const REGION_ROWS: u64 = 4096;

/// A RAID-5 of four members (three data strips per row) or a RAID-10 of four (two).
#[derive(Clone, Copy)]
struct Level {
    name: &'static str,
    data: u64,
    group: usize,
}
const RAID5: Level = Level {
    name: "raid5",
    data: 3,
    group: 0,
};
const RAID10: Level = Level {
    name: "raid10",
    data: 2,
    group: 2,
};

fn config(dir: &std::path::Path, level: Level) -> String {
    let mut c = format!("[reactor]\ncores = [0]\n[management]\nsocket = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n", dir.join("mgmt.sock").display());
    for m in 0..4 {
        c += &format!("[[device]]\nname = \"m{m}\"\nkind = \"file\"\npath = \"{}\"\nsize = \"257M\"\nfault_injection = true\n", dir.join(format!("m{m}.img")).display());
    }
    c += &format!("[[volume]]\nname = \"vol\"\nlevel = \"{}\"\nmembers = [\"m0\", \"m1\", \"m2\", \"m3\"]\nstrip_size = \"16K\"\ngroup_size = {}\nrebuild_rate = \"0\"\n", level.name, level.group);
    c + &format!("[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = \"vol\"\n")
}

fn rpc(dir: &std::path::Path, method: &str, params: Value) -> Result<Value, String> {
    call(&dir.join("mgmt.sock"), method, params).map_err(|e| e.to_string())
}

fn status(dir: &std::path::Path) -> Value {
    rpc(dir, "volume_status", json!({"name": "vol"})).unwrap()[0].clone()
}

fn connect(server: &Server) -> (HostController, Queue, u32) {
    let mut c =
        HostController::connect(server.ports[0].addr, NQN, &QueueOptions::default()).unwrap();
    c.set_queue_count(1).unwrap();
    let (shift, _) = c.namespace_geometry(1).unwrap();
    let q = c.io_queue(1).unwrap();
    (c, q, shift)
}

/// 256 KiB at one spot in each bitmap region (a region is 4096 rows of the level's data
/// strips of 16 KiB).
fn spots(level: Level) -> [u64; 4] {
    let region = REGION_ROWS * 16384 * level.data;
    [MIB, region + MIB, 2 * region + 3 * MIB, 4 * region - MIB]
}
const SPOT: usize = 256 << 10;

fn write(q: &mut Queue, shift: u32, offset: u64, data: &[u8]) {
    let cqe = q.write(1, offset >> shift, shift, data).unwrap();
    assert!(cqe.is_success(), "write at {offset}: {cqe:?}");
}

fn check(q: &mut Queue, shift: u32, offset: u64, want: &[u8], what: &str) {
    let mut back = vec![0u8; want.len()];
    let cqe = q.read(1, offset >> shift, shift, &mut back).unwrap();
    assert!(cqe.is_success(), "{what}: read at {offset}: {cqe:?}");
    if back != want {
        let first = back.iter().zip(want).position(|(a, b)| a != b).unwrap();
        panic!(
            "{what}: the data at volume offset {} differs",
            offset + first as u64
        );
    }
}

fn wait_online(dir: &std::path::Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = status(dir);
        if st["state"] == "online" {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "the catch-up did not finish: {st}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Re-add m1 and check the catch-up copied exactly region 0, then fail m0 and read
/// everything back: every stripe now needs m1's strips, copied or not.
fn readd_and_lean_on_it(
    server: &Server,
    dir: &std::path::Path,
    level: Level,
    expected: &[Vec<u8>],
) {
    let copied_before = status(dir)["rebuild"]["rows_copied"].as_u64().unwrap();
    let r = rpc(
        dir,
        "volume_readd_member",
        json!({"volume": "vol", "member": "m1"}),
    )
    .unwrap();
    assert_eq!(
        r["catch_up_regions"], 1,
        "only region 0 was written while m1 was out: {r}"
    );
    let st = wait_online(dir);
    let copied = st["rebuild"]["rows_copied"].as_u64().unwrap() - copied_before;
    assert_eq!(
        copied, REGION_ROWS,
        "the catch-up copies region 0's rows and no others (a full rebuild copies {ROWS}): {st}"
    );
    rpc(
        dir,
        "volume_fail_member",
        json!({"volume": "vol", "member": "m0"}),
    )
    .unwrap();
    let (_c, mut q, shift) = connect(server);
    for (i, (&at, want)) in spots(level).iter().zip(expected).enumerate() {
        check(
            &mut q,
            shift,
            at,
            want,
            &format!("spot {i} after the catch-up, with m0 failed"),
        );
    }
}

/// Writes before m1 goes: one pattern per spot. While it is out: new data in region 0.
fn before_and_during(server: &Server, level: Level, fail_m1: impl FnOnce()) -> Vec<Vec<u8>> {
    let (_c, mut q, shift) = connect(server);
    let spots = spots(level);
    let mut expected: Vec<Vec<u8>> = (0..spots.len())
        .map(|i| pattern(i as u64 + 1, SPOT))
        .collect();
    for (&at, d) in spots.iter().zip(&expected) {
        write(&mut q, shift, at, d);
    }
    // Two sweeps of idleness clear the bits of those writes.
    std::thread::sleep(Duration::from_secs(11));
    fail_m1();
    expected[0] = pattern(100, SPOT);
    write(&mut q, shift, spots[0], &expected[0]);
    expected
}

fn caught_up_after_failing(level: Level) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(&config(dir.path(), level)).unwrap();
    let server = Server::start(&cfg).unwrap();
    assert_eq!(status(dir.path())["rebuild"]["rows"], ROWS);
    let fault = server.fault("m1").unwrap().clone();
    let expected = before_and_during(&server, level, || fault.fail_device(true));
    let st = status(dir.path());
    assert_eq!(st["members"][1]["state"], "failed", "{st}");
    // Several sweeps pass while m1 is out: they must not clear region 0's bit.
    std::thread::sleep(Duration::from_secs(11));
    let refused = rpc(
        dir.path(),
        "volume_readd_member",
        json!({"volume": "vol", "member": "m0"}),
    );
    assert!(
        refused.is_err_and(|e| e.contains("failed member")),
        "only a failed member can be re-added"
    );
    fault.heal();
    readd_and_lean_on_it(&server, dir.path(), level, &expected);
    server.stop();
}

#[test]
fn a_raid5_member_back_after_failing_is_caught_up_from_the_bitmap() {
    caught_up_after_failing(RAID5);
}

#[test]
fn a_raid10_member_back_after_failing_is_caught_up_from_the_bitmap() {
    caught_up_after_failing(RAID10);
}

#[test]
fn a_member_still_failed_at_a_restart_is_caught_up_from_the_bitmap_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(&config(dir.path(), RAID5)).unwrap();
    let server = Server::start(&cfg).unwrap();
    let sock = dir.path().to_path_buf();
    let expected = before_and_during(&server, RAID5, || {
        rpc(
            &sock,
            "volume_fail_member",
            json!({"volume": "vol", "member": "m1"}),
        )
        .unwrap();
    });
    server.stop();

    let server = Server::start(&cfg).unwrap();
    let st = status(dir.path());
    assert_eq!(
        st["members"][1]["state"], "failed",
        "the failure is recorded: {st}"
    );
    readd_and_lean_on_it(&server, dir.path(), RAID5, &expected);
    server.stop();
}

#[test]
fn a_device_that_no_longer_holds_the_member_is_not_re_added() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(&config(dir.path(), RAID5)).unwrap();
    let server = Server::start(&cfg).unwrap();
    rpc(
        dir.path(),
        "volume_fail_member",
        json!({"volume": "vol", "member": "m1"}),
    )
    .unwrap();
    // Meanwhile the device was wiped (a new disk in the bay): nothing says what it holds.
    use std::os::unix::fs::FileExt;
    std::fs::File::options()
        .write(true)
        .open(dir.path().join("m1.img"))
        .unwrap()
        .write_all_at(&[0u8; 8192], 0)
        .unwrap();
    let e = rpc(
        dir.path(),
        "volume_readd_member",
        json!({"volume": "vol", "member": "m1"}),
    )
    .unwrap_err();
    assert!(e.contains("add it as a spare"), "{e}");
    assert_eq!(status(dir.path())["members"][1]["state"], "failed");
    server.stop();
}
