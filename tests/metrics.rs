//! Statistics, metrics and plots of a running target: exact I/O counts per namespace,
//! member and reactor from the management API; Prometheus exposition scraped while load
//! runs, checked with the real `promtool`; `nvmf-raid stats --plot` rendered to PNG by the
//! real `rsvg-convert`. scripts/test.sh installs both tools.

use std::io::{Read, Write};
use std::process::Command;

use nvmf_raid::config::Config;
use nvmf_raid::host::{HostController, QueueOptions};
use nvmf_raid::mgmt::call;
use nvmf_raid::server::Server;
use serde_json::{json, Value};

const NQN: &str = "nqn.2026-11.io.nvmf-raid:metrics";

fn start(dir: &std::path::Path) -> Server {
    let mut c = format!(
        "[reactor]\ncores = [0, 1]\n[management]\nsocket = \"{}\"\n[metrics]\naddress = \"127.0.0.1:0\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n",
        dir.join("mgmt.sock").display()
    );
    for d in 0..4 {
        c += &format!("[[device]]\nname = \"m{d}\"\nkind = \"ram\"\nsize = \"8M\"\n");
    }
    c += "[[volume]]\nname = \"vol\"\nlevel = \"raid5\"\nmembers = [\"m0\", \"m1\", \"m2\", \"m3\"]\nstrip_size = \"16K\"\n";
    c += &format!("[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = \"vol\"\n");
    Server::start(&Config::parse(&c).unwrap()).unwrap()
}

fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(
        body.starts_with("HTTP/1.1 200"),
        "{}",
        &body[..body.len().min(200)]
    );
    body.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// The value of the sample line that starts with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no sample {prefix}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn tool(name: &str) -> std::path::PathBuf {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.exists());
    found.unwrap_or_else(|| panic!("{name} is not installed (scripts/test.sh installs it: apt-get install prometheus librsvg2-bin)"))
}

fn ops(v: &Value, op: &str) -> u64 {
    v["ops"][op]["ios"].as_u64().unwrap_or(0)
}

#[test]
fn stats_metrics_and_plots_while_load_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let sock = dir.path().join("mgmt.sock");
    let metrics = server.metrics_addr().expect("metrics configured");
    let mut c =
        HostController::connect(server.ports[0].addr, NQN, &QueueOptions::default()).unwrap();
    c.set_queue_count(1).unwrap();
    let mut q = c.io_queue(1).unwrap();
    let data = vec![0x5Au8; 8192];
    let mut back = vec![0u8; 8192];
    let round = |q: &mut nvmf_raid::host::Queue, back: &mut Vec<u8>, n: u64| {
        for i in 0..n {
            assert!(q.write(1, i * 16, 9, &data).unwrap().is_success());
            assert!(q.read(1, i * 16, 9, back).unwrap().is_success());
        }
    };
    round(&mut q, &mut back, 200);
    let first = scrape(metrics);
    round(&mut q, &mut back, 100);
    let second = scrape(metrics);

    // Counters move with the load, and promtool accepts the exposition.
    let reads =
        format!("nvmf_raid_namespace_ios_total{{subsystem=\"{NQN}\",nsid=\"1\",op=\"read\"}}");
    assert_eq!(sample(&first, &reads), 200.0);
    assert_eq!(sample(&second, &reads), 300.0);
    let write_count = format!(
        "nvmf_raid_namespace_latency_seconds_count{{subsystem=\"{NQN}\",nsid=\"1\",op=\"write\"}}"
    );
    assert_eq!(sample(&second, &write_count), 300.0);
    assert!(
        sample(
            &second,
            "nvmf_raid_member_ios_total{volume=\"vol\",device=\"m0\",op=\"write\"}"
        ) > 0.0
    );
    assert_eq!(
        sample(
            &second,
            "nvmf_raid_volume_state{volume=\"vol\",state=\"online\"}"
        ),
        1.0
    );
    // Connections are published by the reactors' 100 ms tick.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while sample(&scrape(metrics), "nvmf_raid_connections") != 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "nvmf_raid_connections never reached 2"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Reactor utilisation, published on the same tick: the 600 I/Os took busy turns.
    let third = scrape(metrics);
    let total = |family: &str| -> f64 {
        third
            .lines()
            .filter(|l| l.starts_with(family))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert!(
        total("nvmf_raid_reactor_busy_seconds_total{") > 0.0,
        "{third}"
    );
    assert!(total("nvmf_raid_reactor_idle_seconds_total{") >= 0.0);
    let path = dir.path().join("metrics.txt");
    std::fs::write(&path, &second).unwrap();
    let out = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The API's numbers are exact: namespace = sum of reactors; every member saw I/O.
    let st = call(&sock, "stats", json!({})).unwrap();
    let ns = &st["namespaces"][0];
    assert_eq!((ops(ns, "read"), ops(ns, "write")), (300, 300), "{st}");
    assert_eq!(ns["ops"]["read"]["bytes"], 300 * 8192);
    let lat = &ns["ops"]["write"]["latency_us"];
    assert!(
        lat["p50"].as_u64().unwrap() >= 1
            && lat["p50"].as_u64() <= lat["p99"].as_u64()
            && lat["p99"].as_u64() <= lat["max"].as_u64(),
        "{lat}"
    );
    let reactor_writes: u64 = st["reactors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| ops(r, "write"))
        .sum();
    assert_eq!(reactor_writes, 300);
    let members = st["members"].as_array().unwrap();
    assert_eq!(members.len(), 4, "{st}");
    assert!(members.iter().all(|m| ops(m, "write") > 0));

    // The plot renders with a real SVG renderer.
    let svg = dir.path().join("lat.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_nvmf-raid"))
        .arg("--socket")
        .arg(&sock)
        .args(["stats", "--plot"])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{NQN} ns 1")));
    let png = dir.path().join("lat.png");
    let r = Command::new(tool("rsvg-convert"))
        .arg("-o")
        .arg(&png)
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "rsvg-convert: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let bytes = std::fs::read(&png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 5000,
        "not a rendered PNG ({} bytes)",
        bytes.len()
    );
    assert_eq!(
        u32::from_be_bytes(bytes[16..20].try_into().unwrap()),
        900,
        "PNG width"
    );

    // Reset: everything starts from zero again.
    call(&sock, "stats_reset", json!({})).unwrap();
    let st = call(&sock, "stats", json!({})).unwrap();
    assert!(
        st["namespaces"].as_array().unwrap().is_empty()
            && st["members"].as_array().unwrap().is_empty(),
        "{st}"
    );
    drop((q, c));

    // `perf --plot` draws the initiator's view the same way.
    let perf_svg = dir.path().join("perf.svg");
    let addr = server.ports[0].addr.to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_nvmf-raid"))
        .args([
            "perf", "--addr", &addr, "--nqn", NQN, "-q", "4", "-w", "randrw", "-t", "1", "--plot",
        ])
        .arg(&perf_svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = Command::new(tool("rsvg-convert"))
        .arg("-o")
        .arg(dir.path().join("perf.png"))
        .arg(&perf_svg)
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "rsvg-convert: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(std::fs::read(dir.path().join("perf.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));
    server.stop();
}
