//! Asymmetric Namespace Access over the wire: one target, two listeners (two ports) that
//! export the same subsystem, as two sites would. Identify reports ANA, each port's ANA
//! log page carries its own state, a change made with the command line or the
//! management socket shows on that port only, ANA change notices are raised for the
//! controllers of that port, and controller IDs come from the subsystem's range.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;

use nvmf_raid::config::Config;
use nvmf_raid::host::{Data, HostController, QueueOptions};
use nvmf_raid::mgmt::call;
use nvmf_raid::nvmf::command::Sqe;
use nvmf_raid::nvmf::spec::{admin, feature, log};
use nvmf_raid::server::Server;
use serde_json::json;

const NQN: &str = "nqn.2026-11.io.nvmf-raid:ana";
const ANA_LOG_LEN: usize = 64;

fn le16(d: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(d[at..at + 2].try_into().unwrap())
}
fn le32(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(d[at..at + 4].try_into().unwrap())
}
fn le64(d: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(d[at..at + 8].try_into().unwrap())
}

/// The ANA log page as one controller reports it, for a subsystem with one group.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AnaLog {
    change_count: u64,
    groups: u16,
    anagrpid: u32,
    group_change_count: u64,
    state: u8,
    nsids: Vec<u32>,
}

fn parse(d: &[u8]) -> AnaLog {
    let n = le32(d, 20) as usize;
    assert!(
        d[10..16].iter().all(|b| *b == 0) && d[33..48].iter().all(|b| *b == 0),
        "reserved bytes are zero: {d:?}"
    );
    AnaLog {
        change_count: le64(d, 0),
        groups: le16(d, 8),
        anagrpid: le32(d, 16),
        group_change_count: le64(d, 24),
        state: d[32],
        nsids: (0..n).map(|i| le32(d, 48 + 4 * i)).collect(),
    }
}

fn ana_log(c: &mut HostController) -> AnaLog {
    parse(&c.get_log_page(log::ANA, ANA_LOG_LEN).unwrap())
}

/// The ANA log page read with Return Groups Only (LSP bit 0).
fn ana_log_groups_only(c: &mut HostController) -> AnaLog {
    let mut buf = vec![0u8; ANA_LOG_LEN];
    let mut sqe = Sqe {
        opcode: admin::GET_LOG_PAGE,
        nsid: u32::MAX,
        ..Default::default()
    };
    sqe.cdw[0] = log::ANA as u32 | 1 << 8 | ((ANA_LOG_LEN / 4 - 1) as u32) << 16;
    let cqe = c
        .admin_command(sqe, Data::FromController(buf.as_mut_ptr(), buf.len()))
        .unwrap();
    assert!(cqe.is_success(), "{cqe:?}");
    parse(&buf)
}

fn enable_ana_notices(c: &mut HostController) {
    let mut sqe = Sqe {
        opcode: admin::SET_FEATURES,
        ..Default::default()
    };
    sqe.cdw[0] = feature::ASYNC_EVENT_CONFIG as u32;
    sqe.cdw[1] = 1 << 11;
    assert!(c.admin_command(sqe, Data::None).unwrap().is_success());
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

fn scrape(addr: SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// Two listeners, the second starting non-optimized; namespaces 1 and 5; controller IDs
/// 0x100 and 0x101 only.
fn config(dir: &std::path::Path, listeners: [u16; 2], metrics: u16) -> String {
    format!(
        r#"
[reactor]
cores = [0]
[management]
socket = "{sock}"
[metrics]
address = "127.0.0.1:{metrics}"
[[listener]]
address = "127.0.0.1:{p1}"
[[listener]]
address = "127.0.0.1:{p2}"
ana_state = "non-optimized"
[[device]]
name = "a"
kind = "ram"
size = "4M"
[[device]]
name = "b"
kind = "ram"
size = "4M"
[[subsystem]]
nqn = "{NQN}"
allow_any_host = true
cntlid_min = 256
cntlid_max = 257
[[subsystem.namespace]]
device = "a"
[[subsystem.namespace]]
nsid = 5
device = "b"
"#,
        sock = dir.join("mgmt.sock").display(),
        p1 = listeners[0],
        p2 = listeners[1],
    )
}

#[test]
fn each_listener_reports_its_own_ana_state() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2, pm) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let cfg = dir.path().join("target.toml");
    std::fs::write(&cfg, config(dir.path(), [p1, p2], pm)).unwrap();
    let mut child = common::spawn_target(&cfg, dir.path());
    let sock = dir.path().join("mgmt.sock");
    let (a1, a2): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{p1}").parse().unwrap(),
        format!("127.0.0.1:{p2}").parse().unwrap(),
    );

    let mut c1 = HostController::connect(a1, NQN, &QueueOptions::default()).unwrap();
    let mut c2 = HostController::connect(a2, NQN, &QueueOptions::default()).unwrap();
    // Controller IDs come from the configured range, and a full range refuses the next.
    let mut ids = [c1.cntlid, c2.cntlid];
    ids.sort_unstable();
    assert_eq!(ids, [0x100, 0x101]);
    let third = HostController::connect(a1, NQN, &QueueOptions::default())
        .err()
        .expect("a third controller in a range of two");
    assert!(
        third.to_string().contains("181"),
        "Connect Controller Busy: {third}"
    );

    // Identify Controller and Namespace, as the Linux host reads them.
    let id = &c1.identify;
    assert_eq!(le16(id, 78), c1.cntlid);
    assert_eq!(
        id[76] & 0b1010,
        0b1010,
        "CMIC: multi-controller, ANA reporting"
    );
    assert_ne!(le32(id, 92) & (1 << 11), 0, "OAES: ANA change notices");
    assert_eq!((id[342], id[343]), (10, 0xDF), "ANATT, ANACAP");
    assert_eq!(
        (le32(id, 344), le32(id, 348)),
        (1, 1),
        "ANAGRPMAX, NANAGRPID"
    );
    for nsid in [1, 5] {
        let ns = c2.identify_raw(0, nsid).unwrap();
        assert_eq!(
            (ns[30] & 1, le32(&ns, 92)),
            (1, 1),
            "nsid {nsid}: NMIC shared, ANAGRPID 1"
        );
    }

    // Each port reports its configured state; nothing has changed yet.
    let opt = AnaLog {
        change_count: 0,
        groups: 1,
        anagrpid: 1,
        group_change_count: 0,
        state: 0x01,
        nsids: vec![1, 5],
    };
    assert_eq!(ana_log(&mut c1), opt);
    assert_eq!(
        ana_log(&mut c2),
        AnaLog {
            state: 0x02,
            ..opt.clone()
        }
    );
    assert_eq!(
        ana_log_groups_only(&mut c2),
        AnaLog {
            state: 0x02,
            nsids: vec![],
            ..opt.clone()
        },
        "RGO: no NSIDs"
    );

    // The first site's path becomes inaccessible: only port 1's group changes.
    let (ok, out) = cli(
        &sock,
        &[
            "ana",
            "set",
            "--listener",
            &a1.to_string(),
            "--state",
            "inaccessible",
        ],
    );
    assert!(ok && out.contains("optimized -> inaccessible"), "{out}");
    assert_eq!(
        ana_log(&mut c1),
        AnaLog {
            change_count: 1,
            group_change_count: 1,
            state: 0x03,
            ..opt.clone()
        }
    );
    assert_eq!(
        ana_log(&mut c2),
        AnaLog {
            change_count: 1,
            state: 0x02,
            ..opt.clone()
        },
        "port 2 keeps its state"
    );
    // The same state again is no change.
    let (ok, out) = cli(
        &sock,
        &["ana", "set", "--listener", "1", "--state", "inaccessible"],
    );
    assert!(ok && out.contains("nothing changed"), "{out}");
    assert_eq!(ana_log(&mut c1).change_count, 1);

    // The second site takes over, named by port id and subsystem.
    let (ok, out) = cli(
        &sock,
        &[
            "ana",
            "set",
            "--listener",
            "2",
            "--subsystem",
            NQN,
            "--state",
            "optimized",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(
        ana_log(&mut c2),
        AnaLog {
            change_count: 2,
            group_change_count: 2,
            ..opt.clone()
        }
    );
    assert_eq!(
        ana_log(&mut c1),
        AnaLog {
            change_count: 2,
            group_change_count: 1,
            state: 0x03,
            ..opt.clone()
        }
    );

    let (ok, out) = cli(&sock, &["ana", "status"]);
    assert!(ok && out.contains("change count 2"), "{out}");
    let line = |addr: &SocketAddr| {
        out.lines()
            .find(|l| l.contains(&addr.to_string()))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line(&a1).contains("inaccessible") && line(&a2).contains("optimized"),
        "{out}"
    );
    let st = call(&sock, "ana_status", json!({"port": a2.to_string()})).unwrap();
    assert_eq!(
        (
            st["groups"].as_array().unwrap().len(),
            &st["groups"][0]["state"],
            &st["groups"][0]["controllers"]
        ),
        (1, &json!("optimized"), &json!(1)),
        "{st}"
    );

    let metrics = scrape(format!("127.0.0.1:{pm}").parse().unwrap());
    assert!(
        metrics.contains(&format!(
            "nvmf_raid_ana_state{{listener=\"{a1}\",subsystem=\"{NQN}\"}} 3"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "nvmf_raid_ana_state{{listener=\"{a2}\",subsystem=\"{NQN}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("nvmf_raid_ana_changes_total 2"),
        "{metrics}"
    );

    // Errors name what was wrong, and change nothing.
    let (ok, out) = cli(
        &sock,
        &[
            "ana",
            "set",
            "--listener",
            "127.0.0.1:1",
            "--state",
            "optimized",
        ],
    );
    assert!(
        !ok && out.contains("no listener") && out.contains(&a1.to_string()),
        "{out}"
    );
    let (ok, out) = cli(
        &sock,
        &[
            "ana",
            "set",
            "--listener",
            "1",
            "--subsystem",
            "nqn.2026-11.io.nvmf-raid:none",
            "--state",
            "optimized",
        ],
    );
    assert!(!ok && out.contains("unknown subsystem"), "{out}");
    let (ok, out) = cli(
        &sock,
        &["ana", "set", "--listener", "1", "--state", "sideways"],
    );
    assert!(!ok && out.contains("sideways"), "{out}");
    assert!(call(&sock, "ana_set", json!({"port": 1, "state": "up"}))
        .unwrap_err()
        .contains("not an ANA state"));
    assert_eq!(ana_log(&mut c1).change_count, 2);

    // A configuration with a bad initial state is refused with the field named.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        config(dir.path(), [p1, p2], pm).replace("\"non-optimized\"", "\"half\""),
    )
    .unwrap();
    let (ok, out) = cli(&sock, &["check-config", bad.to_str().unwrap()]);
    assert!(!ok && out.contains("listener[1].ana_state"), "{out}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn an_ana_change_raises_a_notice_on_that_port_only() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), [0, 0], 0).replace("cntlid_max = 257", "cntlid_max = 300");
    let server = Server::start(&Config::parse(&c).unwrap()).unwrap();
    let sock = dir.path().join("mgmt.sock");
    let (a1, a2) = (server.ports[0].addr, server.ports[1].addr);
    let mut h1 = HostController::connect(a1, NQN, &QueueOptions::default()).unwrap();
    let mut h2 = HostController::connect(a2, NQN, &QueueOptions::default()).unwrap();
    let silent = HostController::connect(a1, NQN, &QueueOptions::default()).unwrap();
    enable_ana_notices(&mut h1);
    enable_ana_notices(&mut h2);
    let ctrl = |cntlid: u16| {
        server
            .target()
            .controllers()
            .into_iter()
            .find(|c| c.cntlid == cntlid)
            .unwrap()
    };
    assert!(
        !ctrl(h1.cntlid).take_ana_change_event(),
        "nothing before a change"
    );

    let r = call(
        &sock,
        "ana_set",
        json!({"port": a1.to_string(), "state": "change"}),
    )
    .unwrap();
    assert_eq!(r["changed"][0]["notified"], 1, "{r}");
    assert!(
        ctrl(h1.cntlid).take_ana_change_event(),
        "the host on port 1 enabled notices"
    );
    assert!(
        !ctrl(h2.cntlid).take_ana_change_event(),
        "port 2 did not change"
    );
    assert!(
        !ctrl(silent.cntlid).take_ana_change_event(),
        "notices not enabled"
    );
    assert_eq!(ana_log(&mut h1).state, 0x0F);

    // The host read the log (without RAE): the next change is notified again.
    let r = call(
        &sock,
        "ana_set",
        json!({"port": 1, "subsystem": NQN, "state": "optimized"}),
    )
    .unwrap();
    assert_eq!(r["change_count"], 2, "{r}");
    assert!(ctrl(h1.cntlid).take_ana_change_event());
    assert_eq!(ana_log(&mut h1).state, 0x01);
    assert_eq!(ana_log(&mut h2).state, 0x02);
    drop(silent);
    server.stop();
}

/// Wait for the completion of command `cid` on the admin queue.
fn wait_admin_completion(
    c: &mut HostController,
    cid: u16,
    limit: std::time::Duration,
) -> Option<nvmf_raid::nvmf::command::Cqe> {
    let deadline = std::time::Instant::now() + limit;
    let mut got = None;
    while got.is_none() && std::time::Instant::now() < deadline {
        c.admin
            .poll(&mut |id, cqe, _| {
                if id == cid {
                    got = Some(cqe);
                }
            })
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    got
}

#[test]
fn an_inaccessible_path_refuses_io_and_a_parked_event_request_reports_the_change() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), [0, 0], 0).replace("cntlid_max = 257", "cntlid_max = 300");
    let server = Server::start(&Config::parse(&c).unwrap()).unwrap();
    let sock = dir.path().join("mgmt.sock");
    let (a1, a2) = (server.ports[0].addr, server.ports[1].addr);
    let mut h1 = HostController::connect(a1, NQN, &QueueOptions::default()).unwrap();
    let mut h2 = HostController::connect(a2, NQN, &QueueOptions::default()).unwrap();
    h1.set_queue_count(1).unwrap();
    h2.set_queue_count(1).unwrap();
    enable_ana_notices(&mut h1);
    let aer = h1
        .admin
        .submit(
            Sqe {
                opcode: admin::ASYNC_EVENT_REQUEST,
                ..Default::default()
            },
            Data::None,
        )
        .unwrap();
    let (shift, _) = h1.namespace_geometry(1).unwrap();
    let (mut q1, mut q2) = (h1.io_queue(1).unwrap(), h2.io_queue(1).unwrap());
    let block = vec![0x5Au8; 1 << shift];
    assert!(
        q1.write(1, 0, shift, &block).unwrap().is_success(),
        "port 1 starts optimized"
    );
    assert!(
        wait_admin_completion(&mut h1, aer, std::time::Duration::from_millis(300)).is_none(),
        "no event before a change"
    );

    call(
        &sock,
        "ana_set",
        json!({"port": a1.to_string(), "state": "inaccessible"}),
    )
    .unwrap();
    let ev = wait_admin_completion(&mut h1, aer, std::time::Duration::from_secs(5))
        .expect("the parked event request completes after the change");
    assert!(ev.is_success(), "{ev:?}");
    assert_eq!(ev.dw0, 0x000C_0302, "notice, ANA change, log page 0Ch");

    for (what, cqe) in [
        ("write", q1.write(1, 0, shift, &block).unwrap()),
        (
            "read",
            q1.read(1, 0, shift, &mut vec![0u8; 1 << shift]).unwrap(),
        ),
    ] {
        assert_eq!(
            cqe.status_code(),
            0x302,
            "{what} on the inaccessible path: ANA Inaccessible, {cqe:?}"
        );
        assert_eq!(
            cqe.status & (1 << 14),
            0,
            "{what}: no DNR, the host retries on another path"
        );
    }
    let mut back = vec![0u8; 1 << shift];
    assert!(
        q2.write(1, 1, shift, &block).unwrap().is_success(),
        "port 2 still serves"
    );
    assert!(q2.read(1, 0, shift, &mut back).unwrap().is_success() && back == block);

    call(
        &sock,
        "ana_set",
        json!({"port": a1.to_string(), "state": "optimized"}),
    )
    .unwrap();
    assert!(
        q1.read(1, 1, shift, &mut back).unwrap().is_success() && back == block,
        "port 1 serves again"
    );
    drop((q1, q2));
    server.stop();
}
