//! The management socket and the command line: volume status, failing a member, fault
//! injection, run-time host allow-lists, and errors that name what was wrong.

mod common;

use std::process::Command;

use nvmf_raid::config::Config;
use nvmf_raid::host::{HostController, Queue, QueueOptions};
use nvmf_raid::mgmt::call;
use nvmf_raid::server::Server;
use serde_json::json;

const NQN: &str = "nqn.2026-11.io.nvmf-raid:mgmt";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:cccccccc-0000-4000-8000-000000000003";

fn start(dir: &std::path::Path) -> Server {
    let c = format!(
        r#"
[reactor]
cores = [0]
[management]
socket = "{sock}"
[[listener]]
address = "127.0.0.1:0"
[[device]]
name = "a"
kind = "ram"
size = "8M"
fault_injection = true
[[device]]
name = "b"
kind = "ram"
size = "8M"
fault_injection = true
[[volume]]
name = "mirror"
level = "raid1"
members = ["a", "b"]
[[subsystem]]
nqn = "{NQN}"
hosts = ["nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001"]
[[subsystem.namespace]]
device = "mirror"
"#,
        sock = dir.join("mgmt.sock").display()
    );
    Server::start(&Config::parse(&c).unwrap()).unwrap()
}

fn cli(sock: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nvmf-raid"))
        .arg("--socket")
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn volume_status_and_fail_member_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mgmt.sock");
    let server = start(dir.path());
    let mode = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    let (ok, out) = cli(&sock, &["volume", "status"]);
    assert!(
        ok && out.contains("mirror") && out.contains("online"),
        "{out}"
    );
    let (ok, out) = cli(&sock, &["volume", "fail-member", "mirror", "b"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&sock, &["volume", "status", "mirror"]);
    assert!(
        ok && out.contains("degraded") && out.contains("failed"),
        "{out}"
    );
    // The last member cannot be failed without --force, and the error says why.
    let (ok, out) = cli(&sock, &["volume", "fail-member", "mirror", "a"]);
    assert!(!ok && out.contains("offline"), "{out}");
    let (ok, out) = cli(&sock, &["volume", "fail-member", "nope", "a"]);
    assert!(!ok && out.contains("unknown volume 'nope'"), "{out}");
    let (ok, out) = cli(&sock, &["volume", "fail-member", "mirror", "zz"]);
    assert!(!ok && out.contains("no member 'zz'"), "{out}");
    server.stop();
}

#[test]
fn fault_injection_fails_a_member_under_io() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mgmt.sock");
    let server = start(dir.path());
    let (ok, out) = cli(&sock, &["fault", "a", "fail"]);
    assert!(ok, "{out}");
    let mut c =
        HostController::connect(server.ports[0].addr, NQN, &QueueOptions::default()).unwrap();
    c.set_queue_count(1).unwrap();
    let mut q = c.io_queue(1).unwrap();
    let data = vec![0x5Au8; 65536];
    assert!(
        q.write(1, 0, 9, &data).unwrap().is_success(),
        "the mirror absorbs the failure"
    );
    let mut back = vec![0u8; 65536];
    assert!(q.read(1, 0, 9, &mut back).unwrap().is_success());
    assert!(back == data);
    let st = call(&sock, "volume_status", json!({})).unwrap();
    assert_eq!(st[0]["state"], "degraded", "{st}");
    let (ok, out) = cli(&sock, &["fault", "mirror", "fail"]);
    assert!(!ok && out.contains("no fault_injection"), "{out}");
    let (ok, out) = cli(&sock, &["fault", "a", "explode"]);
    assert!(!ok && out.contains("unknown action"), "{out}");
    server.stop();
}

#[test]
fn host_allow_list_changes_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mgmt.sock");
    let server = start(dir.path());
    let opts = QueueOptions {
        hostnqn: HOST.into(),
        depth: 32,
        ..QueueOptions::default()
    };
    let refused = |server: &Server| {
        let mut q = Queue::open(server.ports[0].addr, &opts).unwrap();
        q.connect(0, 0xFFFF, NQN, &opts).is_err()
    };
    assert!(refused(&server));
    let (ok, out) = cli(&sock, &["host", "add", NQN, HOST]);
    assert!(ok, "{out}");
    assert!(!refused(&server), "host allowed after host add");
    let (ok, out) = cli(&sock, &["controllers"]);
    assert!(ok && out.contains("CNTLID"), "{out}");
    let (ok, out) = cli(&sock, &["host", "remove", NQN, HOST]);
    assert!(ok, "{out}");
    assert!(refused(&server));
    let (ok, out) = cli(
        &sock,
        &["host", "add", "nqn.2026-11.io.nvmf-raid:none", HOST],
    );
    assert!(!ok && out.contains("unknown subsystem"), "{out}");
    server.stop();
}

#[test]
fn protocol_errors_are_json_rpc_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mgmt.sock");
    let server = start(dir.path());
    assert!(call(&sock, "no_such_method", json!({}))
        .unwrap_err()
        .contains("unknown method"));
    assert!(
        call(&sock, "volume_fail_member", json!({"volume": "mirror"}))
            .unwrap_err()
            .contains("'member'")
    );
    let (ok, out) = cli(&sock, &["rpc", "subsystem_list"]);
    assert!(ok && out.contains(NQN), "{out}");
    drop(HostController::connect(server.ports[0].addr, NQN, &QueueOptions::default()).unwrap());
    server.stop();
}

/// SIGHUP (and the hosts_reload method) re-read the host allow-lists from the
/// configuration file of a running target; SIGTERM then stops it with status 0.
#[test]
fn sighup_reloads_host_allow_lists() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let cfg = dir.path().join("target.toml");
    let write_cfg = |hosts: &str| {
        let c = format!(
            "[reactor]\ncores = [0]\n[management]\nsocket = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n[[device]]\nname = \"r\"\nkind = \"ram\"\nsize = \"4M\"\n[[subsystem]]\nnqn = \"{NQN}\"\nhosts = [{hosts}]\n[[subsystem.namespace]]\ndevice = \"r\"\n",
            dir.path().join("mgmt.sock").display()
        );
        std::fs::write(&cfg, c).unwrap();
    };
    let other = "\"nqn.2014-08.org.nvmexpress:uuid:dddddddd-0000-4000-8000-000000000004\"";
    write_cfg(other);
    let mut child = common::spawn_target(&cfg, dir.path());
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let opts = QueueOptions {
        hostnqn: HOST.into(),
        ..Default::default()
    };
    assert!(
        HostController::connect(addr, NQN, &opts).is_err(),
        "a host not on the list connected"
    );
    write_cfg(&format!("\"{HOST}\""));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGHUP,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while HostController::connect(addr, NQN, &opts).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload the allow-list"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The RPC does the same: back to the other host only.
    write_cfg(other);
    let r = call(&dir.path().join("mgmt.sock"), "hosts_reload", json!({})).unwrap();
    assert_eq!(r["reloaded"], json!([NQN]));
    assert!(
        HostController::connect(addr, NQN, &opts).is_err(),
        "hosts_reload did not apply the new list"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success(), "exit status after SIGTERM");
}
