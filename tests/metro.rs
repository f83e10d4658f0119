//! Two sites on loopback serving one stretched volume, each a real target process, the
//! site link through the project's relay (one per direction, so a cut is a partition),
//! and a real etcd as the witness:
//! - writes through both sites at once to overlapping blocks leave identical copies;
//! - kill -9 of a site loses no acknowledged write;
//! - in a partition exactly one site accepts writes; after the heal the other catches up
//!   by copying only the regions written meanwhile, and the copies are identical.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{etcd, free_port, pattern, spawn_target, start_relay, wait_for, Proc};
use nvmf_raid::host::{HostController, Queue, QueueOptions};
use nvmf_raid::mgmt::call;
use serde_json::{json, Value};

const NQN: &str = "nqn.2026-12.io.nvmf-raid:metro";

/// One two-site cluster at a time: each puts site A on core 0 and site B on core 1, and
/// the sites judge their link by time (link timeout, fence delay); several clusters at
/// once on a two-core machine would starve each other into false link losses.
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_cluster() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner())
}
const LINK_NQN: &str = "nqn.2026-01.io.nvmf-raid:link:metro";
const VOLUME_BYTES: usize = 32 << 20;
const MIB: usize = 1 << 20;

#[derive(Clone)]
struct Site {
    name: &'static str,
    dir: PathBuf,
    host_port: u16,
    link_port: u16,
    metrics_port: u16,
    /// The RAID level of the site's local volume (two file members).
    level: &'static str,
}

impl Site {
    fn sock(&self) -> PathBuf {
        self.dir.join("mgmt.sock")
    }

    fn status(&self) -> Value {
        call(&self.sock(), "site_status", json!({}))
            .map(|v| v[0].clone())
            .unwrap_or(Value::Null)
    }

    fn mode(&self) -> String {
        self.status()["mode"].as_str().unwrap_or("down").to_string()
    }
}

/// A site's configuration: a RAID volume of two files (RAID-1 unless the test says), the
/// stretched volume over it.
fn config(s: &Site, peer: &str, peer_link: u16, witness: Option<std::net::SocketAddr>) -> String {
    let d = s.dir.display();
    let mut c = format!(
        "[reactor]\ncores = [{}]\n[management]\nsocket = \"{d}/mgmt.sock\"\n[metrics]\naddress = \"127.0.0.1:{}\"\n[[listener]]\naddress = \"127.0.0.1:{}\"\n",
        if s.name == "a" { 0 } else { 1 },
        s.metrics_port,
        s.host_port
    );
    for m in 0..2 {
        c += &format!("[[device]]\nname = \"m{m}\"\nkind = \"file\"\npath = \"{d}/m{m}.img\"\nsize = \"{}M\"\n", VOLUME_BYTES / MIB + 2);
    }
    c += &format!(
        "[[volume]]\nname = \"vol\"\nlevel = \"{}\"\nmembers = [\"m0\", \"m1\"]\n",
        s.level
    );
    c += &format!(
        "[[stretch]]\nname = \"metro\"\nvolume = \"vol\"\nsite = \"{}\"\npeer_site = \"{peer}\"\nleader = \"a\"\nlink_listener = \"127.0.0.1:{}\"\npeer_link = \"127.0.0.1:{peer_link}\"\nlink_timeout_ms = 1000\nstate_file = \"{d}/metro.state\"\n",
        s.name, s.link_port
    );
    if let Some(w) = witness {
        c += &format!("witness = \"{w}\"\nwitness_ttl_s = 3\n");
    }
    c + &format!("[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = \"metro\"\n")
}

/// Two sites, A (the leader) and B, linked through two relays.
struct Metro {
    dir: tempfile::TempDir,
    a: Site,
    b: Site,
    witness: Option<std::net::SocketAddr>,
    relay_to_a: u16,
    relay_to_b: u16,
    procs: Vec<(String, Proc)>,
}

impl Metro {
    fn new(witness: Option<std::net::SocketAddr>) -> Metro {
        let m = Metro::start_a(witness);
        m.start_b_and_wait()
    }

    /// Site A alone (site B not started yet), with the relays in place.
    fn start_a(witness: Option<std::net::SocketAddr>) -> Metro {
        Metro::start_a_with(witness, "raid1")
    }

    /// Site A alone, both sites to run a local volume of `level`.
    fn start_a_with(witness: Option<std::net::SocketAddr>, level: &'static str) -> Metro {
        let dir = tempfile::tempdir().unwrap();
        let site = |name: &'static str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            Site {
                name,
                dir: d,
                host_port: free_port(),
                link_port: free_port(),
                metrics_port: free_port(),
                level,
            }
        };
        let (a, b) = (site("a"), site("b"));
        let (relay_to_a, relay_to_b) = (free_port(), free_port());
        let mut m = Metro {
            dir,
            a,
            b,
            witness,
            relay_to_a,
            relay_to_b,
            procs: vec![],
        };
        let (ra, rb) = (
            start_relay(m.dir.path(), "relay-to-a", relay_to_a, m.a.link_port, 0),
            start_relay(m.dir.path(), "relay-to-b", relay_to_b, m.b.link_port, 0),
        );
        m.procs.push(("relay-to-a".into(), ra));
        m.procs.push(("relay-to-b".into(), rb));
        m.start("a");
        m
    }

    fn start_b_and_wait(mut self) -> Metro {
        self.start("b");
        self.wait_mirrored("both sites mirrored after the start");
        self
    }

    fn site(&self, name: &str) -> &Site {
        if name == "a" {
            &self.a
        } else {
            &self.b
        }
    }

    fn start(&mut self, name: &str) {
        let (s, peer, peer_link) = if name == "a" {
            (self.a.clone(), "b", self.relay_to_b)
        } else {
            (self.b.clone(), "a", self.relay_to_a)
        };
        let path = s.dir.join("t.toml");
        std::fs::write(&path, config(&s, peer, peer_link, self.witness)).unwrap();
        self.procs.retain(|(n, _)| n != name);
        self.procs
            .push((name.to_string(), Proc(spawn_target(&path, &s.dir))));
    }

    /// SIGTERM, and wait for the orderly stop to end (the site saves its state last).
    fn stop(&mut self, name: &str) {
        let i = self.procs.iter().position(|(n, _)| n == name).unwrap();
        let (_, mut p) = self.procs.remove(i);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.0.id() as i32),
            nix::sys::signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.0.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "site {name} did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self, name: &str) {
        let i = self.procs.iter().position(|(n, _)| n == name).unwrap();
        let (_, mut p) = self.procs.remove(i);
        p.0.kill().unwrap();
        p.0.wait().unwrap();
    }

    fn relay(&self, mode: Option<&str>) {
        for r in ["relay-to-a", "relay-to-b"] {
            let ctl = self.dir.path().join(format!("{r}.sock"));
            match mode {
                Some(m) => call(&ctl, "relay_cut", json!({"mode": m})).unwrap(),
                None => call(&ctl, "relay_heal", json!({})).unwrap(),
            };
        }
    }

    fn wait_mirrored(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(self.a.mode() == "mirrored" && self.b.mode() == "mirrored") {
            assert!(
                Instant::now() < deadline,
                "{what}:\n{}\n{}\n--- a ---\n{}\n--- b ---\n{}",
                self.a.status(),
                self.b.status(),
                self.log("a"),
                self.log("b")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A site's mode changes and peer losses, from its log (for failure messages).
    fn mode_history(&self, name: &str) -> String {
        self.log(name)
            .lines()
            .filter(|l| l.contains("site mode changed") || l.contains("peer site lost"))
            .map(|l| l.split("INFO").last().unwrap_or("").to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.site(name).dir.join("target.log")).unwrap_or_default()
    }
}

fn connect(port: u16, nqn: &str) -> (HostController, Queue, u32) {
    connect_as(port, nqn, &QueueOptions::default().hostnqn)
}

/// Connect presenting `hostnqn` (a site's link admits only its peer site).
fn connect_as(port: u16, nqn: &str, hostnqn: &str) -> (HostController, Queue, u32) {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let opts = QueueOptions {
        timeout: Duration::from_secs(15),
        hostnqn: hostnqn.to_string(),
        ..QueueOptions::default()
    };
    let mut c = HostController::connect(addr, nqn, &opts).unwrap();
    c.set_queue_count(1).unwrap();
    let (shift, _) = c.namespace_geometry(1).unwrap();
    let q = c.io_queue(1).unwrap();
    (c, q, shift)
}

/// A site's own copy, read through its link subsystem (namespace 1: the local volume).
fn copy_of(s: &Site) -> Vec<u8> {
    let peer = if s.name == "a" { "b" } else { "a" };
    let (_c, mut q, shift) = connect_as(
        s.link_port,
        LINK_NQN,
        &format!("nqn.2026-01.io.nvmf-raid:site:{peer}"),
    );
    let mut out = vec![0u8; VOLUME_BYTES];
    for (i, chunk) in out.chunks_mut(MIB).enumerate() {
        assert!(q
            .read(1, ((i * MIB) >> shift) as u64, shift, chunk)
            .unwrap()
            .is_success());
    }
    out
}

fn assert_identical(m: &Metro) {
    let (a, b) = (copy_of(&m.a), copy_of(&m.b));
    if a != b {
        let bad: Vec<usize> = (0..VOLUME_BYTES / 4096)
            .filter(|i| a[i * 4096..(i + 1) * 4096] != b[i * 4096..(i + 1) * 4096])
            .collect();
        panic!(
            "the two sites' copies differ in {} 4 KiB blocks, first {:?}",
            bad.len(),
            &bad[..bad.len().min(8)]
        );
    }
}

#[test]
fn concurrent_overlapping_writes_through_both_sites_leave_identical_copies() {
    let _cluster = one_cluster();
    let m = Metro::new(None);
    let hot = 256 * 1024; // every write lands in the same 256 KiB
    let threads: Vec<_> = [m.a.host_port, m.a.host_port, m.b.host_port, m.b.host_port]
        .into_iter()
        .enumerate()
        .map(|(t, port)| {
            std::thread::spawn(move || {
                let (_c, mut q, shift) = connect(port, NQN);
                for i in 0..300u64 {
                    let seed = (t as u64) << 32 | i;
                    let len = 4096 * (1 + (pattern(seed, 1)[0] as usize % 16));
                    let off = 4096 * (pattern(seed + 7, 1)[0] as usize % ((hot - len) / 4096 + 1));
                    let cqe = q
                        .write(1, (off >> shift) as u64, shift, &pattern(seed, len))
                        .unwrap();
                    assert!(cqe.is_success(), "writer {t} write {i}: {cqe:?}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_identical(&m);
    let (sa, sb) = (m.a.status(), m.b.status());
    assert!(
        sa["mirrored_writes"].as_u64() >= Some(600) && sb["mirrored_writes"].as_u64() >= Some(600),
        "{sa}\n{sb}"
    );
    assert_eq!(
        (sa["mode"].as_str(), sb["mode"].as_str()),
        (Some("mirrored"), Some("mirrored"))
    );

    // The metrics say the same, and promtool accepts them.
    let metrics = scrape(m.a.metrics_port);
    for line in [
        "nvmf_raid_site_mode{volume=\"metro\",site=\"a\",mode=\"mirrored\"} 1",
        "nvmf_raid_site_peer_reachable{volume=\"metro\",site=\"a\"} 1",
        "nvmf_raid_site_dirty_regions{volume=\"metro\",site=\"a\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no '{line}' in the metrics"
        );
    }
    let count = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}_count{{volume=\"metro\",site=\"a\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(
        count("nvmf_raid_site_mirrored_write_seconds") >= 600
            && count("nvmf_raid_site_link_rtt_seconds") > 0,
        "histograms count the writes and the link round trips"
    );
    let path = m.dir.path().join("metrics.txt");
    std::fs::write(&path, metrics.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap();
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "promtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// What a writer saw: the acknowledged (block, data) in order, and the write that failed,
/// if one did (it may or may not have landed: the oracle accepts either).
struct Written {
    acked: Vec<(u64, Vec<u8>)>,
    failed: Option<(u64, Vec<u8>, String)>,
}

/// Writes 4 KiB blocks of its own set through `port` until stopped or until the path
/// fails.
fn writer(port: u16, first_block: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Written> {
    std::thread::spawn(move || {
        let (_c, mut q, shift) = connect(port, NQN);
        let mut acked = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let block = first_block + i % 512;
            let d = pattern(first_block << 20 | i, 4096);
            match q.write(1, (block * 4096) >> shift, shift, &d) {
                Ok(c) if c.is_success() => acked.push((block, d)),
                Ok(c) => {
                    return Written {
                        acked,
                        failed: Some((block, d, format!("status {:#x}", c.status))),
                    }
                }
                Err(e) => {
                    return Written {
                        acked,
                        failed: Some((block, d, e.to_string())),
                    }
                }
            }
            i += 1;
        }
        Written {
            acked,
            failed: None,
        }
    })
}

fn verify_through(port: u16, w: &Written, what: &str) {
    let acked = &w.acked;
    let (_c, mut q, shift) = connect(port, NQN);
    let mut last = std::collections::HashMap::new();
    for (b, d) in acked {
        last.insert(*b, d);
    }
    for (b, d) in last {
        let mut back = vec![0u8; 4096];
        assert!(q
            .read(1, (b * 4096) >> shift, shift, &mut back)
            .unwrap()
            .is_success());
        let unacknowledged = w
            .failed
            .as_ref()
            .is_some_and(|(fb, fd, _)| *fb == b && *fd == back);
        if back != *d && !unacknowledged {
            let older = acked.iter().rposition(|(ob, od)| *ob == b && *od == back);
            let n = acked.iter().filter(|(ob, _)| *ob == b).count();
            panic!("{what}: block {b} does not hold its last acknowledged write (of {n} to it): it holds {}", match older {
                Some(i) => format!("the acknowledged write #{i} of {}", acked.len()),
                None if back.iter().all(|&x| x == 0) => "zeroes".into(),
                None => "data never acknowledged".into(),
            });
        }
    }
}

#[test]
#[cfg_attr(
    not(have_etcd),
    ignore = "etcd (etcd-server) is not installed: no witness"
)]
fn kill_9_of_a_site_loses_no_acknowledged_write() {
    let _cluster = one_cluster();
    let e = etcd();
    let mut m = Metro::new(Some(e.addr));
    let stop = Arc::new(AtomicBool::new(false));
    let wa = writer(m.a.host_port, 0, stop.clone());
    let wb = writer(m.b.host_port, 1024, stop.clone());
    std::thread::sleep(Duration::from_millis(800));
    m.kill("a");
    let killed = Instant::now();
    wait_for("site B serves alone", Duration::from_secs(20), || {
        m.b.mode() == "solo"
    });
    let took = killed.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (wa, wb) = (wa.join().unwrap(), wb.join().unwrap());
    assert!(
        wb.failed.is_none(),
        "a write through the surviving site failed: {:?}\n{}",
        wb.failed.map(|f| f.2),
        m.log("b")
    );
    assert!(
        wa.acked.len() > 10 && wb.acked.len() > 10,
        "writes went through both sites: {} and {}",
        wa.acked.len(),
        wb.acked.len()
    );
    verify_through(m.b.host_port, &wa, "writes acknowledged by the killed site");
    verify_through(
        m.b.host_port,
        &wb,
        "writes acknowledged by the surviving site",
    );
    eprintln!("site B served alone {took:?} after site A was killed");

    // Site A returns: it reports what its volume's write-intent bitmap says was being
    // written at the crash (not "copy everything"), receives the catch-up, and both
    // copies end identical.
    m.start("a");
    m.wait_mirrored("both sites mirrored after site A's restart");
    assert!(
        m.log("a").contains("restart after a crash while mirrored"),
        "site A used its bitmap"
    );
    assert_identical(&m);
    verify_through(
        m.a.host_port,
        &wa,
        "the killed site's writes, read through it after its return",
    );
    verify_through(
        m.a.host_port,
        &wb,
        "the survivor's writes, read through the returned site",
    );
}

#[test]
#[cfg_attr(
    not(have_etcd),
    ignore = "etcd (etcd-server) is not installed: no witness"
)]
fn a_partition_leaves_one_site_writing_and_the_rejoin_copies_only_dirty_regions() {
    let _cluster = one_cluster();
    let e = etcd();
    let m = Metro::new(Some(e.addr));
    m.relay(Some("blackhole"));
    wait_for(
        "one site alone and the other fenced",
        Duration::from_secs(20),
        || {
            let modes = [m.a.mode(), m.b.mode()];
            modes.contains(&"solo".to_string()) && modes.contains(&"fenced".to_string())
        },
    );
    let (winner, loser) = if m.a.mode() == "solo" {
        (&m.a, &m.b)
    } else {
        (&m.b, &m.a)
    };
    // Exactly one site accepts writes; the other answers with an ANA path error.
    let block = vec![0xA5u8; 4096];
    let (_cw, mut qw, shift) = connect(winner.host_port, NQN);
    let (_cl, mut ql, _) = connect(loser.host_port, NQN);
    let base = winner.status()["resync_bytes"].as_u64().unwrap();
    for region in [3u64, 7, 8, 20, 31] {
        let cqe = qw
            .write(1, (region * MIB as u64) >> shift, shift, &block)
            .unwrap();
        assert!(cqe.is_success(), "the winner writes: {cqe:?}");
    }
    let refused = ql.write(1, 0, shift, &block).unwrap();
    assert_eq!(
        refused.status_code(),
        0x302,
        "the fenced site refuses writes with ANA Inaccessible: {refused:?}"
    );
    assert_eq!(winner.status()["dirty_regions"], 5, "{}", winner.status());
    // A write the loser sent before the cut and the link delivers late must not land: the
    // winner's link namespaces refuse writes while it serves alone (reads still work).
    let host = QueueOptions::default();
    assert!(
        HostController::connect(
            format!("127.0.0.1:{}", winner.link_port).parse().unwrap(),
            LINK_NQN,
            &host
        )
        .is_err(),
        "a host may not use a site's link"
    );
    let (_cs, mut stale, _) = connect_as(
        winner.link_port,
        LINK_NQN,
        &format!("nqn.2026-01.io.nvmf-raid:site:{}", loser.name),
    );
    for nsid in [1, 2] {
        let sqe = nvmf_raid::nvmf::command::rw_sqe(
            nvmf_raid::nvmf::spec::io::WRITE,
            0,
            nsid,
            (3 * MIB as u64) >> shift,
            (4096 >> shift) as u32,
            4096,
            false,
        );
        let cqe = stale
            .execute(
                sqe,
                nvmf_raid::host::Data::ToController(block.as_ptr(), 4096),
            )
            .unwrap();
        assert_eq!(
            cqe.status_code(),
            0x302,
            "a peer write to link namespace {nsid} of a site serving alone is refused: {cqe:?}"
        );
    }
    let mut back = vec![0u8; 4096];
    assert!(
        stale
            .read(1, (3 * MIB as u64) >> shift, shift, &mut back)
            .unwrap()
            .is_success()
            && back == block
    );

    m.relay(None);
    m.wait_mirrored("both sites mirrored again after the heal");
    let copied = winner.status()["resync_bytes"].as_u64().unwrap() - base;
    let modes = |site: &str| m.mode_history(site);
    assert_eq!(copied, 5 * MIB as u64, "the resync copies the 5 regions written during the partition, and nothing else\n--- a ---\n{}\n--- b ---\n{}", modes("a"), modes("b"));
    assert_identical(&m);
    let mut back = vec![0u8; 4096];
    assert!(
        ql.read(1, (20 * MIB as u64) >> shift, shift, &mut back)
            .unwrap()
            .is_success()
            && back == block,
        "the rejoined site serves the data written without it"
    );
}

#[test]
#[cfg_attr(
    not(have_etcd),
    ignore = "etcd (etcd-server) is not installed: no witness"
)]
fn a_site_that_starts_while_the_other_decides_alone_joins_it() {
    let _cluster = one_cluster();
    let e = etcd();
    let m = Metro::start_a(Some(e.addr));
    // Site A, alone, gives up waiting for its peer and asks the witness; site B starts
    // right then (the moment both sites' state machines are furthest apart).
    wait_for("site A suspended", Duration::from_secs(20), || {
        m.a.mode() == "suspended"
    });
    let m = m.start_b_and_wait();
    let (_c, mut q, shift) = connect(m.b.host_port, NQN);
    let d = pattern(99, 65536);
    let cqe = q.write(1, 0, shift, &d).unwrap();
    let modes = |site: &str| m.mode_history(site);
    assert!(
        cqe.is_success(),
        "a write through site B once both are mirrored: {cqe:?}\n--- a ---\n{}\n--- b ---\n{}",
        modes("a"),
        modes("b")
    );
    assert_identical(&m);
}

#[test]
#[cfg_attr(
    not(have_etcd),
    ignore = "etcd (etcd-server) is not installed: no witness"
)]
fn a_planned_handover_moves_writes_at_once_and_the_site_rejoins_by_itself() {
    let _cluster = one_cluster();
    let e = etcd();
    let mut m = Metro::new(Some(e.addr));
    let (_cb, mut qb, shift) = connect(m.b.host_port, NQN);
    let block = vec![0x3Cu8; 4096];
    assert!(qb.write(1, 0, shift, &block).unwrap().is_success());

    let asked = Instant::now();
    call(&m.b.sock(), "site_handover", json!({"volume": "metro"})).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(m.b.mode() == "fenced" && m.a.mode() == "solo") {
        assert!(
            Instant::now() < deadline,
            "site B fenced and site A alone within 5 s:\n{}\n{}\n--- a ---\n{}\n--- b ---\n{}",
            m.a.status(),
            m.b.status(),
            m.log("a"),
            m.log("b")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = asked.elapsed();
    assert!(
        m.a.status()["last_change"]
            .as_str()
            .unwrap_or("")
            .contains("handed over"),
        "{}",
        m.a.status()
    );
    // Site B refuses with an ANA path error (the host retries on A); site A takes writes.
    let refused = qb.write(1, 0, shift, &block).unwrap();
    assert_eq!(refused.status_code(), 0x302, "{refused:?}");
    let (_ca, mut qa, _) = connect(m.a.host_port, NQN);
    let base = m.a.status()["resync_bytes"].as_u64().unwrap();
    for region in [2u64, 9] {
        assert!(qa
            .write(
                1,
                (region * MIB as u64) >> shift,
                shift,
                &pattern(region, 8192)
            )
            .unwrap()
            .is_success());
    }

    // Maintenance: stop site B in order, start it again; it rejoins by itself.
    drop((qb, _cb));
    m.stop("b");
    m.start("b");
    m.wait_mirrored("both sites mirrored after site B's maintenance");
    let copied = m.a.status()["resync_bytes"].as_u64().unwrap() - base;
    assert_eq!(
        copied,
        2 * MIB as u64,
        "only the two regions written during the maintenance are copied"
    );
    assert_identical(&m);
    eprintln!("hand-over took {took:?}");
}

#[test]
#[cfg_attr(
    not(have_etcd),
    ignore = "etcd (etcd-server) is not installed: no witness"
)]
fn a_write_failing_at_the_peer_with_the_link_up_stops_the_peer_reading_before_the_other_goes_on_alone(
) {
    let _cluster = one_cluster();
    let e = etcd();
    // Each site's volume is a RAID-0: with one member of B's failed, the leader's writes to
    // B's copy fail on that member's strips while the link and B's other strips work.
    let m = Metro::start_a_with(Some(e.addr), "raid0").start_b_and_wait();
    let strip = call(&m.b.sock(), "volume_status", json!({"name": "vol"})).unwrap();
    let strip = strip[0]["strip_bytes"]
        .as_u64()
        .expect("strip_bytes in volume_status");
    let (_ca, mut qa, shift) = connect(m.a.host_port, NQN);
    let (_cb, mut qb, _) = connect(m.b.host_port, NQN);
    let (on_m0, on_m1) = (0u64, strip);
    let (old, new) = (pattern(1, 4096), pattern(2, 4096));
    assert!(qa
        .write(1, on_m0 >> shift, shift, &old)
        .unwrap()
        .is_success());
    let mut back = vec![0u8; 4096];
    assert!(
        qb.read(1, on_m0 >> shift, shift, &mut back)
            .unwrap()
            .is_success()
            && back == old,
        "site B reads the mirrored write"
    );

    call(
        &m.b.sock(),
        "volume_fail_member",
        json!({"volume": "vol", "member": "m1", "force": true}),
    )
    .unwrap();
    // A's write reaches A's copy but not B's: A asks the witness and goes on alone.
    let cqe = qa.write(1, on_m1 >> shift, shift, &new).unwrap();
    assert!(
        cqe.is_success(),
        "the write completes at A once it serves alone: {cqe:?}\n{}\n{}",
        m.a.status(),
        m.b.status()
    );
    assert_eq!(m.a.mode(), "solo", "{}", m.a.status());
    // From the moment A acknowledges alone, B must not return what A overwrites.
    assert!(qa
        .write(1, on_m0 >> shift, shift, &new)
        .unwrap()
        .is_success());
    let cqe = qb.read(1, on_m0 >> shift, shift, &mut back).unwrap();
    let modes = |site: &str| m.mode_history(site);
    assert!(
        cqe.status_code() == 0x302 || (cqe.is_success() && back == new),
        "site B answered a read with {cqe:?} and {} data after A went on alone\n--- a ---\n{}\n--- b ---\n{}",
        if back == old { "stale" } else { "other" },
        modes("a"),
        modes("b")
    );
    assert_ne!(m.b.mode(), "mirrored", "{}", m.b.status());
}
