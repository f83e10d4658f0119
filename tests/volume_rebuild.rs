//! Hot spares and rebuild over NVMe/TCP: members fail (injected I/O errors), spares take
//! over by themselves and rebuild while a model-checked host load runs; at the end the
//! spares are active members, and after a restart the volume assembles from what the
//! superblocks say. A rebuild interrupted by kill -9 resumes from its checkpoint.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, spawn_target, Model};
use nvmf_raid::config::Config;
use nvmf_raid::host::{HostController, QueueOptions};
use nvmf_raid::mgmt::call;
use nvmf_raid::server::Server;
use serde_json::{json, Value};

const NQN: &str = "nqn.2026-11.io.nvmf-raid:rebuild";

/// Members m0.., spares s0.., all with fault injection; `listen` "127.0.0.1:0" or a port.
#[allow(clippy::too_many_arguments)]
fn config(
    dir: &std::path::Path,
    level: &str,
    members: usize,
    spares: usize,
    group: usize,
    size: &str,
    rate: &str,
    listen: &str,
) -> String {
    let mut c = format!("[reactor]\ncores = [0, 1]\n[management]\nsocket = \"{}\"\n[[listener]]\naddress = \"{listen}\"\n", dir.join("mgmt.sock").display());
    let names = |p: &str, n: usize| (0..n).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
    for d in names("m", members).iter().chain(&names("s", spares)) {
        c += &format!("[[device]]\nname = \"{d}\"\nkind = \"file\"\npath = \"{}\"\nsize = \"{size}\"\nfault_injection = true\n", dir.join(format!("{d}.img")).display());
    }
    let list = |v: Vec<String>| {
        v.iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    c += &format!(
        "[[volume]]\nname = \"vol\"\nlevel = \"{level}\"\nmembers = [{}]\nspares = [{}]\nstrip_size = \"16K\"\ngroup_size = {group}\nrebuild_rate = \"{rate}\"\n",
        list(names("m", members)),
        list(names("s", spares))
    );
    c + &format!("[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = \"vol\"\n")
}

fn status(dir: &std::path::Path) -> Value {
    call(
        &dir.join("mgmt.sock"),
        "volume_status",
        json!({"name": "vol"}),
    )
    .unwrap()[0]
        .clone()
}

fn member_states(st: &Value) -> Vec<String> {
    st["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap().to_string())
        .collect()
}

fn member_devices(st: &Value) -> Vec<String> {
    st["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["device"].as_str().unwrap().to_string())
        .collect()
}

/// The controller must outlive the model's queue: dropping it ends the association.
fn connect(addr: std::net::SocketAddr, seed: u64) -> (HostController, Model) {
    let mut c = HostController::connect(addr, NQN, &QueueOptions::default()).unwrap();
    c.set_queue_count(1).unwrap();
    let (_, blocks) = c.namespace_geometry(1).unwrap();
    let q = c.io_queue(1).unwrap();
    (c, Model::new(q, blocks, seed))
}

fn rebuild_during_io(level: &str, members: usize, group: usize, fail: &[usize]) {
    // RUST_LOG=info shows the target's side of a failure.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(&config(
        dir.path(),
        level,
        members,
        fail.len(),
        group,
        "6M",
        "1M",
        "127.0.0.1:0",
    ))
    .unwrap();
    let server = Server::start(&cfg).unwrap();
    let (_c, mut m) = connect(server.ports[0].addr, 0xC0FFEE);
    m.exercise(100, "healthy");
    for f in fail {
        server.fault(&format!("m{f}")).unwrap().fail_device(true);
    }
    // Host I/O hits the failed members, which fail; spares take over and rebuild.
    let mut rounds_during_rebuild = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        m.exercise(20, &format!("{level} rebuilding"));
        let st = status(dir.path());
        match st["state"].as_str().unwrap() {
            "rebuilding" => rounds_during_rebuild += 1,
            "online" if rounds_during_rebuild > 0 => break,
            _ => {}
        }
        if rounds_during_rebuild == 10 {
            // Enough overlap seen: let it finish.
            call(
                &dir.path().join("mgmt.sock"),
                "volume_rebuild_rate",
                json!({"volume": "vol", "bytes_per_sec": 0}),
            )
            .unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "{level}: rebuild did not finish: {st}"
        );
    }
    assert!(
        rounds_during_rebuild >= 2,
        "{level}: the rebuild did not overlap host I/O"
    );
    m.verify_all(&format!("{level} after rebuild"));
    let st = status(dir.path());
    assert_eq!(member_states(&st), vec!["active"; members], "{level}: {st}");
    assert!(
        st["spares"].as_array().unwrap().is_empty(),
        "{level}: spares left: {st}"
    );
    let devices = member_devices(&st);
    for f in fail {
        assert!(
            devices[*f].starts_with('s'),
            "{level}: slot {f} holds {} instead of a spare",
            devices[*f]
        );
    }
    let data = std::mem::take(&mut m.data);
    drop(m);
    server.stop();

    // Restart on the same configuration: the spares are members now, the failed devices
    // are recognised as replaced.
    let server = Server::start(&cfg).unwrap();
    let st = status(dir.path());
    assert_eq!(
        member_devices(&st),
        devices,
        "{level}: assembly after restart"
    );
    assert_eq!(st["state"], "online", "{level}: {st}");
    let (_c2, mut m2) = connect(server.ports[0].addr, 1);
    m2.data = data;
    m2.verify_all(&format!("{level} after restart"));
    drop(m2);
    server.stop();
}

#[test]
fn raid5_rebuilds_onto_a_spare_during_io() {
    rebuild_during_io("raid5", 4, 0, &[2]);
}

#[test]
fn raid6_rebuilds_two_spares_during_io() {
    rebuild_during_io("raid6", 6, 0, &[0, 3]);
}

#[test]
fn raid6_dp_rebuilds_two_spares_during_io() {
    rebuild_during_io("raid6-dp", 6, 0, &[1, 3]);
}

#[test]
fn raid10_rebuilds_onto_a_spare_during_io() {
    rebuild_during_io("raid10", 4, 2, &[1]);
}

#[test]
fn raid1_rebuilds_onto_a_spare_during_io() {
    rebuild_during_io("raid1", 3, 0, &[0]);
}

/// kill -9 halfway through a rebuild: the restarted target resumes from the checkpoint in
/// the superblocks, and the rebuilt member then serves reads alone (another member is
/// failed, so every strip of it is either read from the rebuilt spare or reconstructed
/// with it).
#[test]
#[allow(clippy::zombie_processes)] // the first child is killed and reaped explicitly
fn interrupted_rebuild_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg_path = dir.path().join("target.toml");
    std::fs::write(
        &cfg_path,
        config(
            dir.path(),
            "raid5",
            4,
            1,
            0,
            "48M",
            "16M",
            &format!("127.0.0.1:{port}"),
        ),
    )
    .unwrap();
    let sock = dir.path().join("mgmt.sock");
    let mut child = spawn_target(&cfg_path, dir.path());
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (c, mut m) = connect(addr, 7);
    // Data everywhere, so the rebuild has something to get right.
    for start in (0..m.blocks).step_by(2048) {
        let n = 2048.min(m.blocks - start);
        let d: Vec<u8> = (0..n * 512)
            .map(|i| (i ^ start.wrapping_mul(0x9E37_79B9)) as u8)
            .collect();
        assert!(m.q.write(1, start, 9, &d).unwrap().is_success());
        m.data[start as usize * 512..(start + n) as usize * 512].copy_from_slice(&d);
    }
    call(
        &sock,
        "volume_fail_member",
        json!({"volume": "vol", "member": "m1"}),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let st = status(dir.path());
        let pct = st["rebuild"]["percent"].as_f64().unwrap();
        if st["rebuild"]["active"] == true && pct >= 40.0 {
            break st["rebuild"]["rows_done"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "rebuild made no progress: {st}");
        std::thread::sleep(Duration::from_millis(100));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let data = std::mem::take(&mut m.data);
    drop((m, c));

    let mut child = spawn_target(&cfg_path, dir.path());
    let st = status(dir.path());
    assert_eq!(st["state"], "rebuilding", "{st}");
    let resumed = st["rebuild"]["rows_done"].as_u64().unwrap();
    let rows = st["rebuild"]["rows"].as_u64().unwrap();
    // Checkpoints are written every second: at 16 MiB/s that is at most 1024 rows of
    // 16 KiB behind (plus one interval of slack).
    assert!(
        resumed > 0 && resumed + 2048 >= before,
        "resumed at row {resumed}, had reached {before} of {rows}"
    );
    assert_eq!(member_devices(&st)[1], "s0");
    call(
        &sock,
        "volume_rebuild_rate",
        json!({"volume": "vol", "bytes_per_sec": 0}),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(dir.path())["state"] != "online" {
        assert!(
            Instant::now() < deadline,
            "resumed rebuild did not finish: {}",
            status(dir.path())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Lean on the rebuilt member: fail another one and read everything back.
    call(
        &sock,
        "volume_fail_member",
        json!({"volume": "vol", "member": "m3"}),
    )
    .unwrap();
    let (_c2, mut m2) = connect(addr, 8);
    m2.data = data;
    m2.verify_all("after resumed rebuild, with m3 failed");
    drop(m2);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
}

/// A member whose device is absent at a start leaves the volume degraded (writes go on
/// without it); when the device is back at a later start it is stale, and is rebuilt.
#[test]
fn absent_member_is_rebuilt_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(&config(
        dir.path(),
        "raid5",
        4,
        0,
        0,
        "6M",
        "0",
        "127.0.0.1:0",
    ))
    .unwrap();
    let server = Server::start(&cfg).unwrap();
    let (c, mut m) = connect(server.ports[0].addr, 11);
    m.exercise(150, "healthy");
    let mut data = std::mem::take(&mut m.data);
    drop((m, c));
    server.stop();

    let (img, away) = (dir.path().join("m2.img"), dir.path().join("m2.away"));
    // A file device with a size is created when missing: a directory in its place makes
    // it fail to open, as a dead disk would.
    std::fs::rename(&img, &away).unwrap();
    std::fs::create_dir(&img).unwrap();
    let server = Server::start(&cfg).unwrap();
    let st = status(dir.path());
    assert_eq!(st["state"], "degraded", "{st}");
    assert_eq!(member_states(&st)[2], "missing", "{st}");
    let (c, mut m) = connect(server.ports[0].addr, 12);
    m.data = data;
    m.exercise(150, "m2 absent");
    data = std::mem::take(&mut m.data);
    drop((m, c));
    server.stop();

    std::fs::remove_dir(&img).unwrap();
    std::fs::rename(&away, &img).unwrap();
    let server = Server::start(&cfg).unwrap();
    lean_on_rebuilt_member(&server, dir.path(), 2, data, 13);
    server.stop();
}

/// Wait until the volume is online again with device m`slot` rebuilt in `slot`, then fail
/// m0 and read everything back: every read now needs the rebuilt member's strips.
fn lean_on_rebuilt_member(
    server: &Server,
    dir: &std::path::Path,
    slot: usize,
    data: Vec<u8>,
    seed: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(dir)["state"] != "online" {
        assert!(
            Instant::now() < deadline,
            "m{slot} was not rebuilt: {}",
            status(dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(member_devices(&status(dir))[slot], format!("m{slot}"));
    call(
        &dir.join("mgmt.sock"),
        "volume_fail_member",
        json!({"volume": "vol", "member": "m0"}),
    )
    .unwrap();
    let (_c, mut m) = connect(server.ports[0].addr, seed);
    m.data = data;
    m.verify_all(&format!("m{slot} rebuilt, m0 failed"));
}

/// A member the volume failed comes back blank (a replaced disk, a recreated file): the
/// target starts with the volume degraded and rebuilds onto the blank device in its slot.
#[test]
fn failed_member_back_blank_is_rebuilt_as_its_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(&config(
        dir.path(),
        "raid5",
        4,
        0,
        0,
        "6M",
        "0",
        "127.0.0.1:0",
    ))
    .unwrap();
    let server = Server::start(&cfg).unwrap();
    let (c, mut m) = connect(server.ports[0].addr, 21);
    m.exercise(150, "healthy");
    call(
        &dir.path().join("mgmt.sock"),
        "volume_fail_member",
        json!({"volume": "vol", "member": "m1"}),
    )
    .unwrap();
    m.exercise(150, "m1 failed");
    let data = std::mem::take(&mut m.data);
    drop((m, c));
    server.stop();

    // The disk is replaced: a new, empty file of the same size.
    let img = dir.path().join("m1.img");
    let len = std::fs::metadata(&img).unwrap().len();
    std::fs::remove_file(&img).unwrap();
    std::fs::File::create(&img).unwrap().set_len(len).unwrap();
    let server = Server::start(&cfg).expect("a blank device in the failed slot is accepted");
    lean_on_rebuilt_member(&server, dir.path(), 1, data, 22);
    server.stop();
}
