//! Stopping safely, at process level: an orderly stop that cannot drain a slow member
//! keeps the volume dirty so its torn stripes are resynchronised; no host gets in while
//! the target drains; idle connections that sent only an ICReq cannot hold every
//! connection slot forever; and SIGTERM stops the target even when its management
//! socket file has been removed.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use common::{free_port, spawn_target};
use nvmf_raid::host::{Data, HostController, Queue, QueueOptions};
use nvmf_raid::mgmt::call;
use nvmf_raid::nvmf::command;
use nvmf_raid::nvmf::pdu::{self, IcReq};
use nvmf_raid::nvmf::spec::io;
use nvmf_raid::volume::layout::Level;
use serde_json::{json, Value};

const NQN: &str = "nqn.2026-11.io.nvmf-raid:stop";
const STRIP: u64 = 16384;
const MEMBERS: usize = 4;
/// The member whose I/O is delayed; the others answer at once.
const SLOW: &str = "m1";
/// Longer than the target's 5 s drain limit: writes to the slow member are still in
/// flight when the drain gives up.
const SLOW_US: u64 = 8_000_000;
/// Writes land in 4 KiB units of the first 4 MiB of the volume (one write-intent region).
const UNIT: usize = 4096;
const HOT_UNITS: u64 = (4 << 20) / UNIT as u64;
const QD: usize = 16;

// ------------------------------------------------------------------ the target process

/// A running `nvmf-raid serve`; killed when dropped, so a hung target never outlives its
/// test.
struct Target {
    child: Option<Child>,
    dir: PathBuf,
    cfg: PathBuf,
    addr: SocketAddr,
}

impl Target {
    fn start(dir: &Path, cfg: &Path, addr: SocketAddr) -> Target {
        let child = spawn_target(cfg, dir);
        Target {
            child: Some(child),
            dir: dir.to_path_buf(),
            cfg: cfg.to_path_buf(),
            addr,
        }
    }

    /// The same configuration started again.
    fn restart(&self) -> Target {
        assert!(self.child.is_none(), "restart of a target that still runs");
        Target::start(&self.dir, &self.cfg, self.addr)
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("mgmt.sock")
    }

    fn rpc(&self, method: &str, params: Value) -> Value {
        call(&self.sock(), method, params).unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// volume_status of the one volume.
    fn status(&self) -> Value {
        self.rpc("volume_status", json!({}))[0].clone()
    }

    fn sigterm(&self) {
        let pid = self.child.as_ref().expect("target runs").id() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM).unwrap();
    }

    /// Wait up to `limit` for the process to exit; None (and the process killed) if it
    /// did not.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("target runs");
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and the exit status (the stop must not hang).
    fn stop(&mut self) -> ExitStatus {
        self.sigterm();
        self.wait_exit(Duration::from_secs(60)).unwrap_or_else(|| {
            panic!(
                "target did not stop within 60 s of SIGTERM; log:\n{}",
                self.log_tail()
            )
        })
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The end of the target's log, for failure messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("target.log")).unwrap_or_default();
        let log = strip_ansi(&log);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// The log is coloured even into a file: drop the escape sequences ("ESC [ ... m").
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Target {
    fn drop(&mut self) {
        self.kill();
    }
}

/// RAID-5 over four file members of `size`; the slow member has fault injection. Default
/// limits (max_connections = 128), one reactor.
fn write_config(dir: &Path, port: u16, size: &str) -> PathBuf {
    let mut c = format!("[reactor]\ncores = [0]\n[management]\nsocket = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n", dir.join("mgmt.sock").display());
    for m in 0..MEMBERS {
        let name = format!("m{m}");
        c += &format!(
            "[[device]]\nname = \"{name}\"\nkind = \"file\"\npath = \"{}\"\nsize = \"{size}\"\n",
            dir.join(format!("{name}.img")).display()
        );
        if name == SLOW {
            c += "fault_injection = true\n";
        }
    }
    c += &format!("[[volume]]\nname = \"vol\"\nlevel = \"raid5\"\nmembers = [\"m0\", \"m1\", \"m2\", \"m3\"]\nstrip_size = {STRIP}\n");
    c += &format!("[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = \"vol\"\n");
    let path = dir.join("target.toml");
    std::fs::write(&path, c).unwrap();
    path
}

/// A fresh target in `dir` with members of `size`.
fn new_target(dir: &Path, size: &str) -> Target {
    let port = free_port();
    let cfg = write_config(dir, port, size);
    Target::start(dir, &cfg, format!("127.0.0.1:{port}").parse().unwrap())
}

/// Every I/O of the slow member waits SLOW_US first (until the target restarts: fault
/// switches live in memory).
fn slow_down_member(t: &Target) {
    t.rpc(
        "device_fault",
        json!({"device": SLOW, "action": "delay", "us": SLOW_US}),
    );
}

fn wait_for_resync(t: &Target) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while t.status()["resync"]["active"] != false {
        assert!(
            Instant::now() < deadline,
            "resync did not finish: {}",
            t.status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ------------------------------------------------------------------ the host side

/// The controller must outlive its queue: dropping it ends the association.
fn connect(addr: SocketAddr, opts: &QueueOptions) -> std::io::Result<(HostController, Queue)> {
    let mut c = HostController::connect(addr, NQN, opts)?;
    c.set_queue_count(1)?;
    let q = c.io_queue(1)?;
    Ok((c, q))
}

/// Unit `unit` as written by version `version` (0: the prewrite).
fn unit_data(unit: u64, version: u32) -> Vec<u8> {
    (0..UNIT)
        .map(|i| {
            (i as u32 ^ (unit as u32).wrapping_mul(2654435761) ^ version.wrapping_mul(40503)) as u8
        })
        .collect()
}

/// Read the hot area back in 1 MiB pieces, one buffer per unit.
fn read_hot_area(q: &mut Queue) -> Vec<Vec<u8>> {
    let per = (1 << 20) / UNIT as u64;
    let mut units = Vec::new();
    for first in (0..HOT_UNITS).step_by(per as usize) {
        let mut back = vec![0u8; per as usize * UNIT];
        let cqe = q.read(1, first * 8, 9, &mut back).unwrap();
        assert!(cqe.is_success(), "read of units {first}.. failed: {cqe:?}");
        units.extend(back.chunks(UNIT).map(|c| c.to_vec()));
    }
    units
}

/// Version 0 of every unit of the hot area, read back.
fn prewrite_hot_area(q: &mut Queue) {
    let per = (1 << 20) / UNIT as u64;
    for first in (0..HOT_UNITS).step_by(per as usize) {
        let d: Vec<u8> = (first..first + per).flat_map(|u| unit_data(u, 0)).collect();
        assert!(
            q.write(1, first * 8, 9, &d).unwrap().is_success(),
            "prewrite of units {first}.."
        );
    }
    for (u, back) in read_hot_area(q).iter().enumerate() {
        assert!(
            *back == unit_data(u as u64, 0),
            "prewrite of unit {u} did not read back"
        );
    }
}

/// What a random write load left behind: per unit the last acknowledged version, and the
/// writes still in flight (whose units may hold the old or the new version).
#[derive(Default)]
struct Load {
    acked: HashMap<u64, u32>,
    /// cid -> (unit, version, data); the data stays alive while the queue may send it.
    inflight: HashMap<u16, (u64, u32, Vec<u8>)>,
}

impl Load {
    /// Versions unit `u` may hold now.
    fn candidates(&self, u: u64) -> Vec<u32> {
        let settled = self.acked.get(&u).copied().unwrap_or(0);
        let pending = self
            .inflight
            .values()
            .filter(|(unit, _, _)| *unit == u)
            .map(|(_, v, _)| *v);
        std::iter::once(settled).chain(pending).collect()
    }
}

/// Random 4 KiB writes in the hot area at queue depth QD, one at a time per unit, for
/// `run`; returns with the writes not yet completed still in flight.
fn write_load(q: &mut Queue, run: Duration) -> Load {
    let mut load = Load::default();
    let (mut x, mut version) = (0x1234_5678u64, 0u32);
    let start = Instant::now();
    while start.elapsed() < run {
        while load.inflight.len() < QD {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let unit = x % HOT_UNITS;
            if load.inflight.values().any(|(u, _, _)| *u == unit) {
                continue;
            }
            version += 1;
            let data = unit_data(unit, version);
            let sqe = command::rw_sqe(io::WRITE, 0, 1, unit * 8, 8, UNIT as u32, false);
            let cid = q
                .submit(sqe, Data::ToController(data.as_ptr(), UNIT))
                .unwrap();
            load.inflight.insert(cid, (unit, version, data));
        }
        let mut finished = Vec::new();
        let n = q
            .poll(&mut |cid, cqe, _| finished.push((cid, cqe)))
            .unwrap();
        for (cid, cqe) in finished {
            assert!(cqe.is_success(), "write failed under load: {cqe:?}");
            let (unit, v, _) = load.inflight.remove(&cid).unwrap();
            load.acked.insert(unit, v);
        }
        if n == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    load
}

// ------------------------------------------------------------------ offline checks

/// Stripes whose parity on the member files does not match their data (the target must
/// be stopped).
fn torn_stripes(dir: &Path) -> (Vec<u64>, u64) {
    common::inconsistent_rows(dir, Level::Raid5, MEMBERS, STRIP)
}

// ------------------------------------------------------------------ 1. drain limit

/// SIGTERM while writes wait on a slow member: the drain gives up after its limit with
/// stripe writes half done (data written, parity not, or the reverse). The volume must
/// then stay dirty, so that the next start resynchronises those stripes; marking it
/// clean leaves parity that a later member failure turns into wrong data.
#[test]
fn orderly_stop_with_a_slow_member_keeps_the_volume_dirty() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = new_target(dir.path(), "256M");
    let (c, mut q) = connect(t.addr, &QueueOptions::default()).unwrap();
    prewrite_hot_area(&mut q);
    slow_down_member(&t);
    let load = write_load(&mut q, Duration::from_millis(1500));
    assert!(
        !load.inflight.is_empty(),
        "setup: no write was in flight at the stop"
    );
    t.sigterm();
    assert!(
        t.wait_exit(Duration::from_secs(60)).is_some(),
        "target did not stop within 60 s of SIGTERM; log:\n{}",
        t.log_tail()
    );
    drop((q, c));

    // Every check runs, so that the failure says how much went wrong.
    let mut problems = Vec::new();
    let mut t = t.restart();
    let st = t.status();
    if st["resync"]["stripes"].as_u64().unwrap() == 0 {
        problems.push(format!("no resync after an orderly stop that gave up on {} in-flight writes (the volume was marked clean): resync {}", load.inflight.len(), st["resync"]));
    }
    wait_for_resync(&t);
    let exit = t.stop();
    assert!(
        exit.success(),
        "clean stop after the resync: {exit}; log:\n{}",
        t.log_tail()
    );

    let (torn, stripes) = torn_stripes(dir.path());
    if !torn.is_empty() {
        problems.push(format!(
            "{} of {stripes} stripes have parity that does not match their data (first: {:?})",
            torn.len(),
            &torn[..torn.len().min(8)]
        ));
    }

    // Lean on parity: with m2 failed, its strips are reconstructed from the others.
    let t = t.restart();
    t.rpc(
        "volume_fail_member",
        json!({"volume": "vol", "member": "m2"}),
    );
    let (_c, mut q) = connect(t.addr, &QueueOptions::default()).unwrap();
    let wrong: Vec<u64> = read_hot_area(&mut q)
        .iter()
        .enumerate()
        .map(|(u, back)| (u as u64, back))
        .filter(|(u, back)| {
            !load
                .candidates(*u)
                .iter()
                .any(|v| **back == unit_data(*u, *v))
        })
        .map(|(u, _)| u)
        .collect();
    if !wrong.is_empty() {
        problems.push(format!(
            "with m2 failed, {} of {HOT_UNITS} units read wrong (first: {:?})",
            wrong.len(),
            &wrong[..wrong.len().min(8)]
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("; "));
}

// ------------------------------------------------------------------ 2. no connects while draining

/// Try to bring up a controller; Ok(cntlid) if the target let the host in. Bounded by the
/// initiator's own timeouts and by a thread that is abandoned if it still hangs.
fn try_connect(addr: SocketAddr) -> Result<u16, String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let opts = QueueOptions {
            timeout: Duration::from_secs(3),
            ..QueueOptions::default()
        };
        let r = HostController::connect(addr, NQN, &opts)
            .map(|c| c.cntlid)
            .map_err(|e| e.to_string());
        let _ = tx.send(r);
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| Err("no answer within 20 s".into()))
}

/// A stopping target must not take new hosts: listeners stop accepting at SIGTERM, while
/// the connections already open drain.
#[test]
fn no_new_connection_is_accepted_while_the_target_drains() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = new_target(dir.path(), "64M");
    let (c, mut q) = connect(t.addr, &QueueOptions::default()).unwrap();
    slow_down_member(&t);
    let load = write_load(&mut q, Duration::from_millis(300));
    assert!(
        !load.inflight.is_empty(),
        "setup: no write was in flight at the stop"
    );
    t.sigterm();
    std::thread::sleep(Duration::from_millis(500));
    let late = try_connect(t.addr);
    let exit = t.wait_exit(Duration::from_secs(60));
    drop((q, c));
    if let Ok(cntlid) = late {
        panic!("a host connected during the drain: controller {cntlid} was created 0.5 s after SIGTERM, with {} writes still draining", load.inflight.len());
    }
    assert!(
        exit.is_some(),
        "target did not exit within 60 s of SIGTERM; log:\n{}",
        t.log_tail()
    );
}

// ------------------------------------------------------------------ 3. idle connections

/// Open `n` connections that each send a valid ICReq and then nothing; returns them and
/// how many got an ICResp within a few seconds (the others were closed at once, or wait
/// unanswered).
fn open_idle_connections(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, usize) {
    let mut icreq = [0u8; pdu::IC_LEN];
    pdu::encode_ic_req(
        &mut icreq,
        &IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: false,
            ddgst: false,
            maxr2t: 0,
        },
    );
    let mut conns = Vec::new();
    for _ in 0..n {
        // A connection the target closes at once may fail the write: it is still counted.
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .expect("TCP connect to the target");
        let _ = (&s).write_all(&icreq);
        conns.push(s);
    }
    // One deadline for all the answers, so that unanswered connections cost no more.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut answered = 0;
    for mut s in &conns {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        s.set_read_timeout(Some(left)).unwrap();
        let mut resp = [0u8; pdu::IC_LEN];
        answered += s.read_exact(&mut resp).is_ok() as usize;
    }
    (conns, answered)
}

/// A host brings up a controller and an I/O queue and reads one block; retried until
/// `limit` has passed. Returns the last error if it never succeeded.
fn host_gets_in(addr: SocketAddr, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let opts = QueueOptions {
        timeout: Duration::from_secs(5),
        ..QueueOptions::default()
    };
    loop {
        let r = connect(addr, &opts).and_then(|(_c, mut q)| {
            let mut b = vec![0u8; 4096];
            q.read(1, 0, 9, &mut b).map(|cqe| cqe.is_success())
        });
        match r {
            Ok(true) => return Ok(()),
            Ok(false) => return Err("the read failed".into()),
            Err(e) if Instant::now() > deadline => return Err(e.to_string()),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// How many of `conns` the target has not closed by `limit` (a read returns EOF or an
/// error once it has; a TermReq may come first).
fn still_open(conns: &mut [TcpStream], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut open = 0;
    for s in conns {
        let mut buf = [0u8; 256];
        let closed = loop {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(10));
            s.set_read_timeout(Some(left)).unwrap();
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break false
                }
                Err(_) => break true,
            }
        };
        open += !closed as usize;
    }
    open
}

/// Connections that stop after the ICReq must not hold the connection slots forever: a
/// real host gets in, and the idle ones are closed.
#[test]
fn idle_connections_after_icreq_cannot_lock_hosts_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = new_target(dir.path(), "32M");
    let n = 200; // more than max_connections (128 by default)
    let (mut idle, answered) = open_idle_connections(t.addr, n);
    let host = host_gets_in(t.addr, Duration::from_secs(30));
    assert!(host.is_ok(), "a host could not connect for 30 s while {n} idle connections ({answered} of them answered with an ICResp) were open: {}", host.unwrap_err());
    let open = still_open(&mut idle, Duration::from_secs(60));
    assert!(
        open == 0,
        "{open} of {n} idle connections were still open 60 s after their ICReq"
    );
    t.stop();
}

// ------------------------------------------------------------------ 4. socket file gone

/// Removing the management socket's file (a tmp cleaner, an operator) must not make the
/// stop hang: SIGTERM still stops the target, which marks the volume clean.
#[test]
fn sigterm_stops_the_target_when_the_management_socket_file_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = new_target(dir.path(), "32M");
    // A write, so that the volume has a dirty region an unclean stop would resync.
    let (c, mut q) = connect(t.addr, &QueueOptions::default()).unwrap();
    assert!(q.write(1, 0, 9, &unit_data(0, 1)).unwrap().is_success());
    drop((q, c));
    std::fs::remove_file(t.sock()).unwrap();
    t.sigterm();
    match t.wait_exit(Duration::from_secs(30)) {
        None => panic!("the target did not exit within 30 s of SIGTERM once its management socket file was gone (killed); log:\n{}", t.log_tail()),
        Some(st) => assert!(st.success(), "exit status after SIGTERM: {st}; log:\n{}", t.log_tail()),
    }
    let t = t.restart();
    let st = t.status();
    assert!(
        st["resync"]["stripes"] == 0 && st["resync"]["active"] == false,
        "the volume was not closed cleanly: {st}"
    );
}
