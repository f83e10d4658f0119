//! The remote leg: a namespace on another NVMe/TCP target used as a block device, driven
//! from the reactors' rings. Two real targets on loopback (separate processes): data
//! written through the one reads back through both; as a RAID-1 member, the remote
//! target's death or a silent link fails the member, never a host write, and the link
//! comes back by itself.

mod common;

use std::path::Path;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, pattern, spawn_target, start_relay, wait_for, Proc};
use nvmf_raid::host::{Data, HostController, Queue, QueueOptions};
use nvmf_raid::mgmt::call;
use nvmf_raid::nvmf::command;
use nvmf_raid::nvmf::spec::io;
use serde_json::{json, Value};

const NQN_A: &str = "nqn.2026-12.io.nvmf-raid:site-a";
const NQN_B: &str = "nqn.2026-12.io.nvmf-raid:site-b";

/// Site A: a 64 MiB device exported as one namespace.
fn config_a(dir: &Path, port: u16) -> String {
    format!(
        "[management]\nsocket = \"{}\"\n[metrics]\naddress = \"\"\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n[[device]]\nname = \"disk\"\nkind = \"file\"\npath = \"{}\"\nsize = \"64M\"\n[[subsystem]]\nnqn = \"{NQN_A}\"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = \"disk\"\n",
        dir.join("mgmt.sock").display(),
        dir.join("disk.img").display()
    )
}

/// Site B: the remote namespace (at `remote_port`) as device "peer", exported directly
/// or as the second leg of a RAID-1 volume with a local file.
fn config_b(dir: &Path, port: u16, remote_port: u16, raid1: bool, remote_extra: &str) -> String {
    let mut c = format!(
        "[management]\nsocket = \"{}\"\n[metrics]\naddress = \"\"\n[reactor]\ncores = [0, 1]\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n[[device]]\nname = \"peer\"\nkind = \"nvmf\"\naddress = \"127.0.0.1:{remote_port}\"\nsubnqn = \"{NQN_A}\"\n{remote_extra}\n",
        dir.join("mgmt.sock").display()
    );
    let exported = if raid1 {
        c += &format!(
            "[[device]]\nname = \"local\"\nkind = \"file\"\npath = \"{}\"\nsize = \"64M\"\n",
            dir.join("local.img").display()
        );
        c += "[[volume]]\nname = \"mirror\"\nlevel = \"raid1\"\nmembers = [\"local\", \"peer\"]\n";
        "mirror"
    } else {
        "peer"
    };
    c + &format!("[[subsystem]]\nnqn = \"{NQN_B}\"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = \"{exported}\"\n")
}

fn start(dir: &Path, cfg: String) -> Proc {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("t.toml");
    std::fs::write(&path, cfg).unwrap();
    Proc(spawn_target(&path, dir))
}

fn io_queue(port: u16, nqn: &str) -> (HostController, Queue, u32, u64) {
    common::io_queue_on(port, nqn, &QueueOptions::default())
}

fn remote_status(dir: &Path) -> Value {
    call(&dir.join("mgmt.sock"), "remote_status", json!({})).unwrap()["devices"][0].clone()
}

fn read_all(q: &mut Queue, shift: u32, bytes: usize) -> Vec<u8> {
    let mut out = vec![0u8; bytes];
    for (i, chunk) in out.chunks_mut(1 << 20).enumerate() {
        let cqe = q
            .read(1, ((i << 20) >> shift) as u64, shift, chunk)
            .unwrap();
        assert!(cqe.is_success(), "read at MiB {i}: {cqe:?}");
    }
    out
}

#[test]
fn a_remote_namespace_reads_and_writes_like_a_local_one() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let _a = start(&dir.path().join("a"), config_a(&dir.path().join("a"), pa));
    let _b = start(
        &dir.path().join("b"),
        config_b(&dir.path().join("b"), pb, pa, false, ""),
    );
    let (_c, mut q, shift, blocks) = io_queue(pb, NQN_B);
    assert_eq!(
        blocks << shift,
        64 << 20,
        "site B exports the remote namespace's size"
    );
    let mut model = vec![0u8; 64 << 20];

    // One at a time: in-capsule writes (up to 8 KiB), R2T writes up to 1 MiB, reads.
    let sizes = [512usize, 4096, 8192, 12288, 65536, 131072, 1 << 20];
    for (i, &len) in sizes.iter().cycle().take(60).enumerate() {
        let slba = (pattern(i as u64 + 7, 8)
            .iter()
            .map(|&b| b as u64)
            .sum::<u64>()
            * 977)
            % ((model.len() - len) as u64 >> shift);
        let off = (slba << shift) as usize;
        let d = pattern(i as u64 + 100, len);
        assert!(
            q.write(1, slba, shift, &d).unwrap().is_success(),
            "write {i} of {len} bytes"
        );
        model[off..off + len].copy_from_slice(&d);
        let mut back = vec![0u8; len];
        assert!(q.read(1, slba, shift, &mut back).unwrap().is_success());
        assert!(
            back == model[off..off + len],
            "read {i} of {len} bytes differs"
        );
    }

    // 32 writes in flight at once, then 32 reads in flight.
    let bufs: Vec<Vec<u8>> = (0..32).map(|i| pattern(1000 + i, 65536)).collect();
    let mut cids = Vec::new();
    for (i, b) in bufs.iter().enumerate() {
        let slba = ((i * 65536) >> shift) as u64;
        let sqe = command::rw_sqe(
            io::WRITE,
            0,
            1,
            slba,
            (b.len() >> shift) as u32,
            b.len() as u32,
            false,
        );
        cids.push(
            q.submit(sqe, Data::ToController(b.as_ptr(), b.len()))
                .unwrap(),
        );
        model[i * 65536..(i + 1) * 65536].copy_from_slice(b);
    }
    drain(&mut q, cids.len(), "concurrent writes");
    let mut backs: Vec<Vec<u8>> = (0..32).map(|_| vec![0u8; 65536]).collect();
    for (i, b) in backs.iter_mut().enumerate() {
        let sqe = command::rw_sqe(
            io::READ,
            0,
            1,
            ((i * 65536) >> shift) as u64,
            (65536 >> shift) as u32,
            65536,
            false,
        );
        q.submit(sqe, Data::FromController(b.as_mut_ptr(), b.len()))
            .unwrap();
    }
    drain(&mut q, 32, "concurrent reads");
    for (i, b) in backs.iter().enumerate() {
        assert!(
            *b == model[i * 65536..(i + 1) * 65536],
            "concurrent read {i} differs"
        );
    }

    // Everything read straight from site A is what the host wrote through site B.
    let (_ca, mut qa, shift_a, _) = io_queue(pa, NQN_A);
    assert!(
        read_all(&mut qa, shift_a, model.len()) == model,
        "site A's copy differs from what was written through site B"
    );
    let st = remote_status(&dir.path().join("b"));
    assert_eq!(
        (
            st["connected"].as_bool(),
            st["associations"].as_u64(),
            st["queue_failures"].as_u64()
        ),
        (Some(true), Some(1), Some(0)),
        "{st}"
    );
}

fn drain(q: &mut Queue, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut done = 0;
    while done < n {
        assert!(Instant::now() < deadline, "{what}: {done} of {n} completed");
        done += q
            .poll(&mut |_, cqe, _| {
                assert!(cqe.is_success(), "{what}: {cqe:?}");
            })
            .unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Writes through site B from a thread until told to stop: every write must succeed.
/// Returns (writes done, data of each written 4 KiB block by index).
fn writer(
    port: u16,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Vec<(u64, Vec<u8>)>> {
    std::thread::spawn(move || {
        let (_c, mut q, shift, _) = io_queue(port, NQN_B);
        let mut written = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let slba = ((i % 4096) * 4096) >> shift;
            let d = pattern(i + 5, 4096);
            let cqe = q.write(1, slba, shift, &d).unwrap();
            assert!(
                cqe.is_success(),
                "write {i} through site B failed while the remote leg was lost: {cqe:?}"
            );
            written.push((slba, d));
            count.fetch_add(1, Ordering::Relaxed);
            i += 1;
        }
        written
    })
}

fn member_state(dir: &Path, device: &str) -> String {
    let st = call(&dir.join("mgmt.sock"), "volume_status", json!({})).unwrap();
    st[0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["device"] == device)
        .map(|m| m["state"].as_str().unwrap().to_string())
        .unwrap()
}

fn verify_written(port: u16, written: &[(u64, Vec<u8>)]) {
    let (_c, mut q, shift, _) = io_queue(port, NQN_B);
    let mut last = std::collections::HashMap::new();
    for (slba, d) in written {
        last.insert(*slba, d);
    }
    for (slba, d) in last {
        let mut back = vec![0u8; 4096];
        assert!(q.read(1, slba, shift, &mut back).unwrap().is_success());
        assert!(
            back == *d,
            "block at {slba} does not hold its last acknowledged write"
        );
    }
}

#[test]
fn a_raid1_remote_leg_survives_the_remote_target_being_killed_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let mut a = start(&da, config_a(&da, pa));
    let _b = start(
        &db,
        config_b(
            &db,
            pb,
            pa,
            true,
            "io_timeout_ms = 2000\nreconnect_max_ms = 500",
        ),
    );
    let (stop, count) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let w = writer(pb, stop.clone(), count.clone());
    wait_for("writes flowing", Duration::from_secs(10), || {
        count.load(Ordering::Relaxed) > 200
    });

    a.0.kill().unwrap();
    a.0.wait().unwrap();
    wait_for("the remote member failed", Duration::from_secs(10), || {
        member_state(&db, "peer") == "failed"
    });
    let at_kill = count.load(Ordering::Relaxed);
    wait_for(
        "writes go on without the remote leg",
        Duration::from_secs(10),
        || count.load(Ordering::Relaxed) > at_kill + 200,
    );
    assert_eq!(remote_status(&db)["connected"], false);

    let _a2 = start(&da, config_a(&da, pa));
    wait_for("the link reconnected", Duration::from_secs(15), || {
        let st = remote_status(&db);
        st["connected"] == true && st["associations"].as_u64() >= Some(2)
    });
    stop.store(true, Ordering::Relaxed);
    let written = w.join().unwrap();
    verify_written(pb, &written);
}

#[test]
fn a_silent_link_fails_the_remote_leg_after_the_io_timeout_and_heals() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb, pr) = (free_port(), free_port(), free_port());
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let _a = start(&da, config_a(&da, pa));
    let _relay = start_relay(dir.path(), "relay", pr, pa, 0);
    let _b = start(&db, config_b(&db, pb, pr, true, "io_timeout_ms = 1000\nkeep_alive_ms = 3000\nconnect_timeout_ms = 1000\nreconnect_max_ms = 500"));
    let (stop, count) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let w = writer(pb, stop.clone(), count.clone());
    wait_for("writes flowing", Duration::from_secs(10), || {
        count.load(Ordering::Relaxed) > 200
    });

    // Packets vanish: nothing fails at the socket, only the deadline can tell.
    call(
        &dir.path().join("relay.sock"),
        "relay_cut",
        json!({"mode": "blackhole"}),
    )
    .unwrap();
    let cut = Instant::now();
    wait_for("the remote member failed", Duration::from_secs(10), || {
        member_state(&db, "peer") == "failed"
    });
    let failed_after = cut.elapsed();
    let at_fail = count.load(Ordering::Relaxed);
    wait_for(
        "writes go on without the remote leg",
        Duration::from_secs(10),
        || count.load(Ordering::Relaxed) > at_fail + 200,
    );
    let st = remote_status(&db);
    assert!(
        st["io_timeouts"].as_u64() >= Some(1)
            || st["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("keep-alive"),
        "{st}"
    );
    assert!(
        failed_after < Duration::from_secs(5),
        "a silent link was noticed only after {failed_after:?}"
    );

    call(&dir.path().join("relay.sock"), "relay_heal", json!({})).unwrap();
    wait_for("the link reconnected", Duration::from_secs(15), || {
        let st = remote_status(&db);
        st["connected"] == true && st["associations"].as_u64() >= Some(2)
    });
    stop.store(true, Ordering::Relaxed);
    let written = w.join().unwrap();
    verify_written(pb, &written);
}
