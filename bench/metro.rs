//! Two sites on one machine: what synchronous mirroring costs and how fast a returning site
//! catches up. Three targets (site A, the leader; site B; and a lone target with the same
//! local volume as the reference), the site link through the project's relay, every
//! figure measured in the same run:
//!
//! 1. Resync throughput: the first start copies site A's whole volume to site B through a
//!    link limited to `--rate` bytes per second; reported against that limit.
//! 2. QD1 4 KiB random-write latency through the lone target (local), the lone target
//!    reached through a relay with the link's delay (what one round trip on the link costs
//!    by itself), site A (the leader: one round trip to the peer) and site B (the
//!    follower: the write goes to A and back), with 0, 0.5 and 1 ms of one-way delay on
//!    the link (0, 1 and 2 ms round trip).
//!
//!   cargo bench --bench metro -- [--volume-mib 256] [--rate 100M] [--writes 2000]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nvmf_raid::host::{HostController, Queue, QueueOptions};
use nvmf_raid::mgmt::call;
use serde_json::{json, Value};

const NQN: &str = "nqn.2026-12.io.nvmf-raid:metro-bench";
const BIN: &str = env!("CARGO_BIN_EXE_nvmf-raid");

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn bytes(s: &str) -> u64 {
    let (n, mult) = match s.chars().last() {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    n.parse::<u64>().expect("a size") * mult
}

/// A RAID-1 of two sparse files, and optionally the stretch over it.
fn config(
    dir: &Path,
    core: usize,
    host_port: u16,
    volume_mib: u64,
    stretch: Option<(&str, &str, u16, u16)>,
) -> String {
    let d = dir.display();
    let mut c = format!("[reactor]\ncores = [{core}]\n[management]\nsocket = \"{d}/mgmt.sock\"\n[metrics]\naddress = \"\"\n[[listener]]\naddress = \"127.0.0.1:{host_port}\"\n");
    for m in 0..2 {
        c += &format!("[[device]]\nname = \"m{m}\"\nkind = \"file\"\npath = \"{d}/m{m}.img\"\nsize = \"{}M\"\n", volume_mib + 2);
    }
    c += "[[volume]]\nname = \"vol\"\nlevel = \"raid1\"\nmembers = [\"m0\", \"m1\"]\n";
    let device = match stretch {
        Some((site, peer, link, peer_link)) => {
            c += &format!(
                "[[stretch]]\nname = \"metro\"\nvolume = \"vol\"\nsite = \"{site}\"\npeer_site = \"{peer}\"\nleader = \"a\"\nlink_listener = \"127.0.0.1:{link}\"\npeer_link = \"127.0.0.1:{peer_link}\"\nlink_timeout_ms = 5000\nresync_rate = \"0\"\nstate_file = \"{d}/metro.state\"\n"
            );
            "metro"
        }
        None => "vol",
    };
    c + &format!("[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = \"{device}\"\n")
}

fn start(dir: &Path, cfg: String) -> Proc {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("t.toml");
    std::fs::write(&path, cfg).unwrap();
    let log = std::fs::File::create(dir.join("target.log")).unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while call(&dir.join("mgmt.sock"), "volume_status", json!({})).is_err() {
        assert!(
            Instant::now() < deadline,
            "target in {} did not start",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Proc(child)
}

fn relay(dir: &Path, name: &str, listen: u16, to: u16, rate: u64) -> Proc {
    let ctl = dir.join(format!("{name}.sock"));
    let child = Command::new(BIN)
        .args([
            "relay",
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--to",
            &format!("127.0.0.1:{to}"),
            "--rate",
            &rate.to_string(),
            "--control",
        ])
        .arg(&ctl)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&ctl, "relay_status", json!({})).is_err() {
        assert!(Instant::now() < deadline, "relay did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Proc(child)
}

fn site_status(dir: &Path) -> Value {
    call(&dir.join("mgmt.sock"), "site_status", json!({}))
        .map(|v| v[0].clone())
        .unwrap_or(Value::Null)
}

fn queue(port: u16) -> (HostController, Queue, u32, u64) {
    let mut c = HostController::connect(
        format!("127.0.0.1:{port}").parse().unwrap(),
        NQN,
        &QueueOptions::default(),
    )
    .unwrap();
    c.set_queue_count(1).unwrap();
    let (shift, blocks) = c.namespace_geometry(1).unwrap();
    let q = c.io_queue(1).unwrap();
    (c, q, shift, blocks)
}

/// QD1 4 KiB random writes: (mean, p50, p99) in microseconds.
fn qd1_writes(port: u16, n: usize) -> (f64, f64, f64) {
    let (_c, mut q, shift, blocks) = queue(port);
    let data = vec![0x5Au8; 4096];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let per = 4096 >> shift;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n + 100 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let slba = (x % (blocks / per)) * per;
        let t = Instant::now();
        assert!(q.write(1, slba, shift, &data).unwrap().is_success());
        if i >= 100 {
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = lat.iter().sum::<f64>() / lat.len() as f64;
    (mean, lat[lat.len() / 2], lat[lat.len() * 99 / 100])
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default()
}

fn main() {
    let volume_mib: u64 = arg("--volume-mib", "256").parse().unwrap();
    let rate = bytes(&arg("--rate", "100M"));
    let writes: usize = arg("--writes", "2000").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (da, db, dl) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("local"),
    );
    let (ha, hb, hl) = (free_port(), free_port(), free_port());
    let (la, lb, ra, rb) = (free_port(), free_port(), free_port(), free_port());
    println!("cpu: {}", cpu_model());
    println!(
        "volume: RAID-1 of two sparse files, {volume_mib} MiB; site link through nvmf-raid relay"
    );

    let rl = free_port();
    let _relays = [
        relay(dir.path(), "to-a", ra, la, rate),
        relay(dir.path(), "to-b", rb, lb, rate),
        relay(dir.path(), "to-local", rl, hl, 0),
    ];
    // Each site on its own core, as on two machines (two reactors polling on one core
    // would take turns and time each other's waits).
    let _local = start(&dl, config(&dl, 0, hl, volume_mib, None));
    let started = Instant::now();
    let _a = start(
        &da,
        config(&da, 0, ha, volume_mib, Some(("a", "b", la, rb))),
    );
    let _b = start(
        &db,
        config(&db, 1, hb, volume_mib, Some(("b", "a", lb, ra))),
    );
    let mut source_at = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (sa, sb) = (site_status(&da), site_status(&db));
        if sa["mode"] == "source" && source_at.is_none() {
            source_at = Some(Instant::now());
        }
        if sa["mode"] == "mirrored" && sb["mode"] == "mirrored" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sites did not reach mirrored: {sa} {sb}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let copy_secs = source_at.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let copied = site_status(&da)["resync_bytes"].as_u64().unwrap_or(0);
    let mbps = copied as f64 / copy_secs.max(1e-3) / 1e6;
    println!(
        "\n## Resync through a link limited to {} MB/s",
        rate as f64 / 1e6
    );
    println!("| copied | time | throughput | of the link limit |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {:.0} MiB | {copy_secs:.2} s | {mbps:.1} MB/s | {:.0}% |",
        copied as f64 / (1 << 20) as f64,
        100.0 * mbps * 1e6 / rate as f64
    );
    println!(
        "(from start to mirrored: {:.2} s)",
        started.elapsed().as_secs_f64()
    );

    for r in ["to-a", "to-b"] {
        call(
            &dir.path().join(format!("{r}.sock")),
            "relay_set",
            json!({"rate": 0}),
        )
        .unwrap();
    }
    println!("\n## QD1 4 KiB random writes ({writes} per row), microseconds");
    println!("| one-way link delay | path | mean | p50 | p99 | mean over local |");
    println!("|---:|---|---:|---:|---:|---:|");
    for delay_ms in [0.0, 0.5, 1.0] {
        for r in ["to-a", "to-b", "to-local"] {
            call(
                &dir.path().join(format!("{r}.sock")),
                "relay_set",
                json!({"delay_ms": delay_ms}),
            )
            .unwrap();
        }
        let local = qd1_writes(hl, writes);
        let rows = [
            ("local volume (no peer)", hl),
            (
                "local volume through the link (one round trip, no peer)",
                rl,
            ),
            ("site A (leader)", ha),
            ("site B (follower)", hb),
        ];
        for (name, port) in rows {
            let (mean, p50, p99) = if port == hl {
                local
            } else {
                qd1_writes(port, writes)
            };
            println!(
                "| {delay_ms} ms | {name} | {mean:.0} | {p50:.0} | {p99:.0} | +{:.0} |",
                mean - local.0
            );
        }
    }
    println!("\n(expected: at the leader, local + one link round trip + the peer's own write; at the follower, one more round trip.");
    println!(" The row through the link shows what the relay itself costs per round trip.)");
}
