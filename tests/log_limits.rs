//! An offline volume fails every I/O; the log says so a few times per window and then how
//! many lines it left out, instead of one warning per failed I/O.

mod common;

use common::{free_port, spawn_target};
use nvmf_raid::host::{HostController, QueueOptions};
use nvmf_raid::mgmt::call;
use serde_json::json;

#[test]
fn failed_io_on_an_offline_volume_is_logged_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let nqn = "nqn.2026-12.io.nvmf-raid:logs";
    let mut c = format!("[reactor]\ncores = [0]\n[management]\nsocket = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n", dir.path().join("mgmt.sock").display());
    for m in 0..2 {
        c += &format!("[[device]]\nname = \"m{m}\"\nkind = \"file\"\npath = \"{}\"\nsize = \"16M\"\nfault_injection = true\n", dir.path().join(format!("m{m}.img")).display());
    }
    c += "[[volume]]\nname = \"vol\"\nlevel = \"raid0\"\nmembers = [\"m0\", \"m1\"]\n";
    c += &format!("[[subsystem]]\nnqn = \"{nqn}\"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = \"vol\"\n");
    let cfg = dir.path().join("target.toml");
    std::fs::write(&cfg, c).unwrap();
    let mut child = spawn_target(&cfg, dir.path());
    let mut host = HostController::connect(
        format!("127.0.0.1:{port}").parse().unwrap(),
        nqn,
        &QueueOptions::default(),
    )
    .unwrap();
    host.set_queue_count(1).unwrap();
    let mut q = host.io_queue(1).unwrap();
    call(
        &dir.path().join("mgmt.sock"),
        "volume_fail_member",
        json!({"volume": "vol", "member": "m1", "force": true}),
    )
    .unwrap();
    let reads: u64 = 3000;
    let mut failed = 0u64;
    for i in 0..reads {
        let mut b = vec![0u8; 4096];
        failed += !q.read(1, (i * 8) % 8192, 9, &mut b).unwrap().is_success() as u64;
    }
    assert_eq!(failed, reads, "every read of an offline volume fails");
    drop(q);
    drop(host);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("target.log")).unwrap();
    let lines = log
        .lines()
        .filter(|l| l.contains("block I/O failed"))
        .count();
    assert!(lines >= 1, "the failures are logged");
    assert!(lines <= 20, "{lines} log lines for {reads} failed reads");
}
