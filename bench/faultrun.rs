//! A long randomized fault run against the real target binary. Not part of CI: run it by
//! hand for tens of minutes and read the summary.
//!
//!   cargo bench --bench faultrun -- --minutes 30 [--seed N] [--dir /path] [--keep]
//!
//! One `nvmf-raid serve` process (one reactor on core 0, adaptive polling) serves a RAID-5,
//! a RAID-6 and a RAID-10 volume as three namespaces of one subsystem, over member files
//! with fault injection, each volume with hot spares. The in-tree initiator keeps random
//! writes (4 KiB to 256 KiB, anywhere in a working area, so unaligned to strips) running
//! on every volume. Every 4 KiB unit's content follows from (volume, unit, version), so
//! the model keeps versions only: the last acknowledged one, and a version a unit may hold
//! instead when its write's outcome is unknown (in flight at a crash or stop, or failed).
//!
//! Steps, chosen at random from the seed (printed, so a run can be replayed as far as
//! timing allows): orderly stop and restart, kill -9 and restart, orderly stop while a
//! member is slowed by seconds (the stop's drain limit is hit), kill -9 during a rebuild,
//! failing a member by the management call, a slow member for a while, failing writes,
//! reads or the whole device by fault injection, and adding a spare back (detaching a
//! failed member first). Redundancy is never exceeded: a volume going offline ends the
//! run as a test-design error.
//!
//! After every step, with the load paused, every unit is read back: an acknowledged unit
//! must hold its last acknowledged version, a unit whose write's outcome is unknown either
//! version (what was read becomes its expected content; old/new are counted). Whenever the
//! target has stopped with superblocks that say clean, every stripe's P and Q and every
//! mirror copy is checked offline from the member files, slots mapped to files by the
//! superblocks; inconsistent rows are reported and then repaired offline so that later
//! findings stand alone. Violations (lost or wrong data, inconsistent parity, a target
//! that fails to start or exits badly, a host-visible I/O error while redundancy remained,
//! a hang past a deadline) are recorded with step, volume and location, and the run goes
//! on where it can. The target's log is DIR/target.log (a marker line before each start);
//! DIR defaults to $TMPDIR/faultrun-SEED. The member images (2.3 GB) are deleted after a
//! run without violations unless --keep is given. The exit status is 1 after violations.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nvmf_raid::host::{Data, HostController, Queue, QueueOptions};
use nvmf_raid::mgmt::call;
use nvmf_raid::nvmf::command::{self, Cqe};
use nvmf_raid::nvmf::spec::io as op;
use nvmf_raid::parity;
use nvmf_raid::volume::layout::{Layout, Level};
use nvmf_raid::volume::raid::RESERVED_BYTES;
use nvmf_raid::volume::superblock::{SlotState, Superblock, NO_REBUILD, SB_BYTES};
use serde_json::{json, Value};

const NQN: &str = "nqn.2026-11.io.nvmf-raid:faultrun";
/// The model's unit: every write covers whole units.
const UNIT: usize = 4096;
const BLOCK: usize = 512;
const BLOCKS_PER_UNIT: u64 = (UNIT / BLOCK) as u64;
const MEMBER_BYTES: u64 = 128 << 20;
/// Bytes at the start of each volume the load writes and the checks read.
const WORK_BYTES: u64 = 64 << 20;
const MAX_WRITE_UNITS: u64 = 64;
/// Writes each volume keeps in flight.
const DEPTH: usize = 16;
const VERIFY_CHUNK_UNITS: u64 = 64;
const VERIFY_DEPTH: usize = 8;
const REBUILD_RATE: &str = "32M";
/// No alternative version.
const NONE: u32 = u32::MAX;
const MAGIC: u64 = 0x4E55_5254_4C55_4146;
/// Wrong units reported one by one per volume and check; the rest are counted.
const DETAILS: usize = 6;

const START_DEADLINE: Duration = Duration::from_secs(60);
const STOP_DEADLINE: Duration = Duration::from_secs(60);
const DRAIN_DEADLINE: Duration = Duration::from_secs(120);
const IO_DEADLINE: Duration = Duration::from_secs(120);
const IDLE_DEADLINE: Duration = Duration::from_secs(600);

struct VolSpec {
    name: &'static str,
    level: Level,
    members: usize,
    /// group_size in the configuration (RAID 10); 0 otherwise.
    group: usize,
    strip: u64,
    spares: usize,
}

const VOLS: [VolSpec; 3] = [
    VolSpec {
        name: "r5",
        level: Level::Raid5,
        members: 4,
        group: 0,
        strip: 32 << 10,
        spares: 2,
    },
    VolSpec {
        name: "r6",
        level: Level::Raid6,
        members: 5,
        group: 0,
        strip: 16 << 10,
        spares: 2,
    },
    VolSpec {
        name: "r10",
        level: Level::Raid10,
        members: 4,
        group: 2,
        strip: 64 << 10,
        spares: 1,
    },
];

impl VolSpec {
    fn member_names(&self) -> Vec<String> {
        (0..self.members)
            .map(|i| format!("{}m{i}", self.name))
            .collect()
    }
    fn spare_names(&self) -> Vec<String> {
        (0..self.spares)
            .map(|i| format!("{}s{i}", self.name))
            .collect()
    }
    /// Every device that ever belongs to this volume.
    fn pool(&self) -> Vec<String> {
        let mut p = self.member_names();
        p.extend(self.spare_names());
        p
    }
    fn group_size(&self) -> usize {
        if self.group > 0 {
            self.group
        } else {
            self.members
        }
    }
    fn tolerance(&self) -> usize {
        self.level.tolerance(self.group_size())
    }
    /// The layout the target builds for fresh members of MEMBER_BYTES.
    fn layout(&self) -> Layout {
        let blocks = (MEMBER_BYTES - RESERVED_BYTES) / BLOCK as u64;
        Layout::new(
            self.level,
            &vec![blocks; self.members],
            self.group,
            self.strip / BLOCK as u64,
        )
        .unwrap()
    }
    fn units(&self) -> u64 {
        WORK_BYTES / UNIT as u64
    }
}

// ------------------------------------------------------------------ randomness and data

struct Rng(u64);

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// The content of `unit` of volume `vol` at `version` (0: never written, zeroes): a header
/// naming (volume, unit, version), then pseudo-random words.
fn fill_unit(vol: usize, unit: u64, version: u32, out: &mut [u8]) {
    if version == 0 {
        out[..UNIT].fill(0);
        return;
    }
    let header = [MAGIC ^ vol as u64, unit, version as u64];
    let mut x = mix(mix(((vol as u64) << 40) ^ unit) ^ version as u64);
    for (i, w) in out[..UNIT].chunks_exact_mut(8).enumerate() {
        let v = if i < header.len() {
            header[i]
        } else {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            mix(x)
        };
        w.copy_from_slice(&v.to_le_bytes());
    }
}

fn unit_data(vol: usize, unit: u64, version: u32) -> Vec<u8> {
    let mut b = vec![0u8; UNIT];
    fill_unit(vol, unit, version, &mut b);
    b
}

/// What a unit read back holds, in words.
fn describe(buf: &[u8]) -> String {
    if buf.iter().all(|b| *b == 0) {
        return "zeroes".into();
    }
    let w = |i: usize| u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap());
    let (vol, unit, version) = ((w(0) ^ MAGIC) as usize, w(1), w(2));
    if vol < VOLS.len() && version < NONE as u64 {
        let intact = unit_data(vol, unit, version as u32) == buf;
        let what = if intact {
            "intact"
        } else {
            "damaged (header matches, body not)"
        };
        return format!(
            "{what} data of {} unit {unit} version {version}",
            VOLS[vol].name
        );
    }
    let zero_sectors = buf
        .chunks(BLOCK)
        .filter(|s| s.iter().all(|b| *b == 0))
        .count();
    format!("unrecognised bytes ({zero_sectors} of 8 sectors zero)")
}

// ------------------------------------------------------------------ the model

/// Outcome of reading one unit back.
enum Check {
    Ok,
    /// An unknown outcome resolved: the old version, or the new one.
    Old,
    New,
    /// Sectors mix the old and new version (allowed for a write cut by a crash).
    Torn,
    Bad(String),
}

/// Per volume: what every unit of the working area must hold.
struct Model {
    vol: usize,
    /// Last acknowledged version (0: never written).
    acked: Vec<u32>,
    /// A version the unit may hold instead (a write whose outcome is unknown), or NONE.
    maybe: Vec<u32>,
    /// The candidate not chosen when `maybe` was last resolved, to recognise a flip back.
    other: Vec<u32>,
    busy: Vec<bool>,
    next_version: u32,
}

impl Model {
    fn new(vol: usize) -> Model {
        let n = VOLS[vol].units() as usize;
        Model {
            vol,
            acked: vec![0; n],
            maybe: vec![NONE; n],
            other: vec![NONE; n],
            busy: vec![false; n],
            next_version: 0,
        }
    }

    fn units(&self) -> u64 {
        self.acked.len() as u64
    }

    /// A write over units no other write or unknown outcome touches: (first, count, version).
    fn pick_write(&mut self, rng: &mut Rng) -> Option<(u64, u64, u32)> {
        for _ in 0..8 {
            let n = if rng.chance(0.4) {
                1
            } else {
                rng.range(2, MAX_WRITE_UNITS)
            }
            .min(self.units());
            let first = rng.below(self.units() - n + 1);
            let r = first as usize..(first + n) as usize;
            if self.busy[r.clone()].iter().any(|b| *b)
                || self.maybe[r.clone()].iter().any(|m| *m != NONE)
            {
                continue;
            }
            self.busy[r].fill(true);
            self.next_version += 1;
            return Some((first, n, self.next_version));
        }
        None
    }

    fn acknowledged(&mut self, first: u64, n: u64, version: u32) {
        for u in first as usize..(first + n) as usize {
            self.acked[u] = version;
            self.other[u] = NONE;
            self.busy[u] = false;
        }
    }

    /// The write's outcome is unknown: each unit holds the old or the new version.
    fn unknown(&mut self, first: u64, n: u64, version: u32) {
        for u in first as usize..(first + n) as usize {
            self.maybe[u] = version;
            self.busy[u] = false;
        }
    }

    fn check(&mut self, unit: u64, buf: &[u8]) -> Check {
        let u = unit as usize;
        let (acked, maybe) = (self.acked[u], self.maybe[u]);
        let old = unit_data(self.vol, unit, acked);
        if buf == old {
            if maybe == NONE {
                return Check::Ok;
            }
            (self.other[u], self.maybe[u]) = (maybe, NONE);
            return Check::Old;
        }
        if maybe != NONE {
            let new = unit_data(self.vol, unit, maybe);
            if buf == new {
                (self.other[u], self.acked[u], self.maybe[u]) = (acked, maybe, NONE);
                return Check::New;
            }
            let mixed = buf
                .chunks(BLOCK)
                .zip(old.chunks(BLOCK).zip(new.chunks(BLOCK)))
                .all(|(b, (o, n))| b == o || b == n);
            if mixed {
                return Check::Torn;
            }
        }
        Check::Bad(self.explain(unit, buf, &old))
    }

    fn explain(&self, unit: u64, buf: &[u8], expected: &[u8]) -> String {
        let u = unit as usize;
        let sectors: Vec<usize> = (0..UNIT / BLOCK)
            .filter(|s| buf[s * BLOCK..(s + 1) * BLOCK] != expected[s * BLOCK..(s + 1) * BLOCK])
            .collect();
        let mut want = format!("acknowledged version {}", self.acked[u]);
        if self.maybe[u] != NONE {
            want += &format!(" or unresolved version {}", self.maybe[u]);
        }
        let mut found = describe(buf);
        if self.other[u] != NONE && unit_data(self.vol, unit, self.other[u]) == buf {
            found += &format!(" = the version {} this unit held before an earlier read resolved it (the unit flipped back)", self.other[u]);
        }
        format!("expected {want}, found {found}; sectors differing {sectors:?}")
    }

    /// Start over from a known state after a wrong unit: the caller rewrites it.
    fn rewritten(&mut self, unit: u64) -> u32 {
        self.next_version += 1;
        let u = unit as usize;
        (self.acked[u], self.maybe[u], self.other[u]) = (self.next_version, NONE, NONE);
        self.next_version
    }
}

// ------------------------------------------------------------------ the target process

struct Target {
    exe: PathBuf,
    cfg: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
    starts: u64,
    t0: Instant,
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn config_text(dir: &Path, port: u16) -> String {
    let mut c = format!(
        "[reactor]\ncores = [0]\npolling = \"adaptive\"\n[management]\nsocket = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n",
        dir.join("mgmt.sock").display()
    );
    for d in VOLS.iter().flat_map(|v| v.pool()) {
        c += &format!("[[device]]\nname = \"{d}\"\nkind = \"file\"\npath = \"{}\"\nsize = {MEMBER_BYTES}\nfault_injection = true\n", dir.join(format!("{d}.img")).display());
    }
    for v in &VOLS {
        let level = format!("{:?}", v.level).to_lowercase();
        c += &format!(
            "[[volume]]\nname = \"{}\"\nlevel = \"{level}\"\nmembers = [{}]\nspares = [{}]\nstrip_size = {}\ngroup_size = {}\nrebuild_rate = \"{REBUILD_RATE}\"\n",
            v.name,
            quoted(&v.member_names()),
            quoted(&v.spare_names()),
            v.strip,
            v.group
        );
    }
    c += &format!("[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n");
    for (i, v) in VOLS.iter().enumerate() {
        c += &format!(
            "[[subsystem.namespace]]\nnsid = {}\ndevice = \"{}\"\n",
            i + 1,
            v.name
        );
    }
    c
}

impl Target {
    fn new(dir: &Path) -> Target {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = dir.join("target.toml");
        std::fs::write(&cfg, config_text(dir, port)).unwrap();
        Target {
            exe: PathBuf::from(env!("CARGO_BIN_EXE_nvmf-raid")),
            cfg,
            sock: dir.join("mgmt.sock"),
            log: dir.join("target.log"),
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            child: None,
            starts: 0,
            t0: Instant::now(),
        }
    }

    fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        call(&self.sock, method, params)
    }

    /// Spawn the target and wait until its management socket answers.
    fn start(&mut self, why: &str) -> Result<(), String> {
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let _ = writeln!(
            log,
            "\n==== faultrun: start #{} ({why}) at +{:.1} s ====",
            self.starts + 1,
            self.t0.elapsed().as_secs_f64()
        );
        let out = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.exe)
            .args(["serve", "--config"])
            .arg(&self.cfg)
            .env("NO_COLOR", "1")
            .stdout(out)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        self.child = Some(child);
        self.starts += 1;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if self.call("volume_status", json!({})).is_ok() {
                return Ok(());
            }
            if let Some(st) = self.exited() {
                return Err(format!(
                    "target exited during start with {st}; log tail:\n{}",
                    self.log_tail(12)
                ));
            }
            if Instant::now() > deadline {
                self.kill9();
                return Err(format!(
                    "no answer on the management socket within {START_DEADLINE:?}; log tail:\n{}",
                    self.log_tail(12)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The exit status if the process has ended (it is then forgotten).
    fn exited(&mut self) -> Option<ExitStatus> {
        let st = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(st)
    }

    fn sigterm(&self) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::SIGTERM,
            );
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..]
            .iter()
            .map(|l| format!("      | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ------------------------------------------------------------------ the host side

struct Pending {
    first: u64,
    n: u64,
    version: u32,
    buf: Vec<u8>,
    at: Instant,
    reported: bool,
}

/// One volume's I/O queue and its writes in flight.
struct VolIo {
    q: Queue,
    nsid: u32,
    inflight: HashMap<u16, Pending>,
    dead: bool,
}

/// The connection: one controller, one I/O queue per volume. The queues go first (fields
/// drop in order): the controller must outlive them.
struct Host {
    vols: Vec<VolIo>,
    _ctrl: HostController,
}

fn connect_host(addr: SocketAddr) -> std::io::Result<Host> {
    let mut c = HostController::connect(addr, NQN, &QueueOptions::default())?;
    c.set_queue_count(VOLS.len() as u16)?;
    let mut vols = Vec::new();
    for (i, v) in VOLS.iter().enumerate() {
        let nsid = i as u32 + 1;
        let (shift, blocks) = c.namespace_geometry(nsid)?;
        if shift != 9 || blocks * (BLOCK as u64) < WORK_BYTES {
            return Err(std::io::Error::other(format!(
                "{}: namespace {nsid} has 2^{shift} B blocks x {blocks}",
                v.name
            )));
        }
        vols.push(VolIo {
            q: c.io_queue(i as u16 + 1)?,
            nsid,
            inflight: HashMap::new(),
            dead: false,
        });
    }
    Ok(Host { vols, _ctrl: c })
}

/// What the load saw that the run must look at.
enum Event {
    WriteError {
        vol: usize,
        first: u64,
        n: u64,
        status: u16,
    },
    Lost {
        vol: usize,
        writes: usize,
        error: String,
    },
    Hung {
        vol: usize,
        first: u64,
        n: u64,
        secs: u64,
    },
}

impl VolIo {
    fn submit_write(
        &mut self,
        vol: usize,
        (first, n, version): (u64, u64, u32),
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; n as usize * UNIT];
        for i in 0..n {
            fill_unit(vol, first + i, version, &mut buf[i as usize * UNIT..]);
        }
        let sqe = command::rw_sqe(
            op::WRITE,
            0,
            self.nsid,
            first * BLOCKS_PER_UNIT,
            (n * BLOCKS_PER_UNIT) as u32,
            buf.len() as u32,
            false,
        );
        let cid = self
            .q
            .submit(sqe, Data::ToController(buf.as_ptr(), buf.len()))?;
        self.inflight.insert(
            cid,
            Pending {
                first,
                n,
                version,
                buf,
                at: Instant::now(),
                reported: false,
            },
        );
        Ok(())
    }

    /// Top the queue up to DEPTH writes.
    fn top_up(&mut self, vol: usize, model: &mut Model, rng: &mut Rng) {
        while self.inflight.len() < DEPTH {
            let Some(w) = model.pick_write(rng) else {
                return;
            };
            if self.submit_write(vol, w).is_err() {
                model.unknown(w.0, w.1, w.2);
                return;
            }
        }
    }

    /// Completions of writes; the connection's end makes every write in flight unknown.
    fn reap(
        &mut self,
        vol: usize,
        model: &mut Model,
        stats: &mut Stats,
        events: &mut Vec<Event>,
    ) -> usize {
        let mut finished: Vec<(u16, Cqe)> = Vec::new();
        let r = self.q.poll(&mut |cid, cqe, _| finished.push((cid, cqe)));
        for (cid, cqe) in &finished {
            let Some(p) = self.inflight.remove(cid) else {
                continue;
            };
            if cqe.is_success() {
                model.acknowledged(p.first, p.n, p.version);
                stats.writes_acked += 1;
                stats.bytes_acked += p.buf.len() as u64;
            } else {
                model.unknown(p.first, p.n, p.version);
                stats.write_errors += 1;
                events.push(Event::WriteError {
                    vol,
                    first: p.first,
                    n: p.n,
                    status: cqe.status,
                });
            }
        }
        if let Err(e) = r {
            self.dead = true;
            events.push(Event::Lost {
                vol,
                writes: self.inflight.len(),
                error: e.to_string(),
            });
            self.forget(model);
        }
        for p in self
            .inflight
            .values_mut()
            .filter(|p| !p.reported && p.at.elapsed() > IO_DEADLINE)
        {
            p.reported = true;
            events.push(Event::Hung {
                vol,
                first: p.first,
                n: p.n,
                secs: p.at.elapsed().as_secs(),
            });
        }
        finished.len()
    }

    /// Every write in flight now has an unknown outcome.
    fn forget(&mut self, model: &mut Model) -> usize {
        let n = self.inflight.len();
        for (_, p) in self.inflight.drain() {
            model.unknown(p.first, p.n, p.version);
        }
        n
    }
}

/// Sleep until one of the sockets is readable or `ms` pass.
fn wait_fds(fds: &[i32], ms: i32) {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: valid pollfds.
    unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
}

/// A finished read: its first unit, and the data or the error status.
type ChunkRead = (u64, Result<Vec<u8>, u16>);

/// Reads over one volume's working area, VERIFY_DEPTH at a time.
struct Sweep {
    next: u64,
    units: u64,
    outstanding: HashMap<u16, (u64, Vec<u8>)>,
}

impl Sweep {
    fn done(&self) -> bool {
        self.next >= self.units && self.outstanding.is_empty()
    }

    /// Submit up to the depth and reap what completed: (first unit, data or status).
    fn step(&mut self, vio: &mut VolIo) -> std::io::Result<Vec<ChunkRead>> {
        while self.outstanding.len() < VERIFY_DEPTH && self.next < self.units {
            let n = VERIFY_CHUNK_UNITS.min(self.units - self.next);
            let mut buf = vec![0u8; n as usize * UNIT];
            let sqe = command::rw_sqe(
                op::READ,
                0,
                vio.nsid,
                self.next * BLOCKS_PER_UNIT,
                (n * BLOCKS_PER_UNIT) as u32,
                buf.len() as u32,
                false,
            );
            let cid = vio
                .q
                .submit(sqe, Data::FromController(buf.as_mut_ptr(), buf.len()))?;
            self.outstanding.insert(cid, (self.next, buf));
            self.next += n;
        }
        let mut finished: Vec<(u16, Cqe)> = Vec::new();
        vio.q.poll(&mut |cid, cqe, _| finished.push((cid, cqe)))?;
        if finished.is_empty() {
            wait_fds(&[vio.q.raw_fd()], 1);
        }
        let mut out = Vec::new();
        for (cid, cqe) in finished {
            if let Some((first, buf)) = self.outstanding.remove(&cid) {
                out.push((
                    first,
                    if cqe.is_success() {
                        Ok(buf)
                    } else {
                        Err(cqe.status)
                    },
                ));
            }
        }
        Ok(out)
    }
}

// ------------------------------------------------------------------ bookkeeping

#[derive(Default)]
struct Stats {
    steps: BTreeMap<&'static str, u64>,
    writes_acked: u64,
    bytes_acked: u64,
    write_errors: u64,
    bytes_verified: u64,
    verifications: u64,
    starts: u64,
    orderly_stops: u64,
    /// Orderly stops that hit the drain limit with writes in flight: exit status 1, the
    /// volume left dirty for a resync at the next start.
    stops_left_dirty: u64,
    kills: u64,
    rebuilds_started: u64,
    rebuilds_completed: u64,
    rebuilds_resumed: u64,
    resyncs_observed: u64,
    resyncs_completed: u64,
    parity_checks: u64,
    rows_checked: u64,
    rows_inconsistent: u64,
    rows_repaired: u64,
    checks_skipped_dirty: u64,
    checks_skipped_degraded: u64,
    inflight_old: u64,
    inflight_new: u64,
    torn_units: u64,
    units_rewritten: u64,
    spares_added: u64,
    members_removed: u64,
    devices_zeroed: u64,
    /// What the target accepts when a device that was a member comes back.
    learned: std::collections::BTreeSet<String>,
    notes: Vec<String>,
}

struct Violation {
    step: u64,
    kind: &'static str,
    what: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Restart,
    Crash,
    SlowStop,
    CrashInRebuild,
    FailMember,
    SlowMember,
    FailIo,
    AddSpare,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Restart => "orderly restart",
            Kind::Crash => "kill -9",
            Kind::SlowStop => "stop with a slow member",
            Kind::CrashInRebuild => "kill -9 during rebuild",
            Kind::FailMember => "fail member",
            Kind::SlowMember => "slow member",
            Kind::FailIo => "failing I/O",
            Kind::AddSpare => "add spare back",
        }
    }
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}", s / 60, s % 60)
}

/// (device, state) of every slot, from one volume's status.
fn slots_of(st: &Value) -> Vec<(String, String)> {
    st["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["device"].as_str().unwrap_or("?").to_string(),
                m["state"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

fn spares_of(st: &Value) -> Vec<String> {
    st["spares"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

fn read_sb(path: &Path) -> Option<Superblock> {
    let f = File::open(path).ok()?;
    let mut b = vec![0u8; SB_BYTES];
    f.read_exact_at(&mut b, 0).ok()?;
    Superblock::decode(&b).ok().flatten()
}

// ------------------------------------------------------------------ the run

struct Run {
    seed: u64,
    rng: Rng,
    dir: PathBuf,
    t0: Instant,
    target: Target,
    host: Option<Host>,
    models: Vec<Model>,
    stats: Stats,
    violations: Vec<Violation>,
    step: u64,
    /// A stop is under way: failed writes are expected, not violations.
    stopping: bool,
    /// The last volume_status, one entry per volume in VOLS order.
    status: Vec<Value>,
    rebuilding: Vec<bool>,
    resyncing: Vec<bool>,
    /// Devices this run failed or faulted (member failures of others are noted).
    expected_failures: HashSet<String>,
    seen_failed: HashSet<String>,
    /// The last disruptive event and the volume states then, for violation reports.
    last_event: String,
    /// Per volume: not online at the last crash or stop (a torn stripe may then lose
    /// data no resync can restore: the write hole).
    degraded_at_event: Vec<bool>,
    fatal: Option<String>,
}

impl Run {
    fn new(seed: u64, dir: PathBuf) -> Run {
        Run {
            seed,
            rng: Rng(seed),
            target: Target::new(&dir),
            dir,
            t0: Instant::now(),
            host: None,
            models: (0..VOLS.len()).map(Model::new).collect(),
            stats: Stats::default(),
            violations: Vec::new(),
            step: 0,
            stopping: false,
            status: Vec::new(),
            rebuilding: vec![false; VOLS.len()],
            resyncing: vec![false; VOLS.len()],
            expected_failures: HashSet::new(),
            seen_failed: HashSet::new(),
            last_event: "start".into(),
            degraded_at_event: vec![false; VOLS.len()],
            fatal: None,
        }
    }

    fn say(&self, msg: &str) {
        println!("            {msg}");
    }

    fn violation(&mut self, kind: &'static str, what: String) {
        println!(
            "  !! VIOLATION [{kind}] step {} (seed {}): {what}",
            self.step, self.seed
        );
        self.violations.push(Violation {
            step: self.step,
            kind,
            what,
        });
    }

    fn note(&mut self, what: String) {
        self.say(&format!("note: {what}"));
        self.stats.notes.push(format!("step {}: {what}", self.step));
    }

    fn img(&self, dev: &str) -> PathBuf {
        self.dir.join(format!("{dev}.img"))
    }

    // -------------------------------------------------------------- load

    /// One pass over the volumes: submit (if asked), reap, note what happened.
    fn pump(&mut self, submit: bool) -> usize {
        let mut events = Vec::new();
        let mut done = 0;
        let mut fds = Vec::new();
        if let Some(host) = self.host.as_mut() {
            for (v, vio) in host
                .vols
                .iter_mut()
                .enumerate()
                .filter(|(_, vio)| !vio.dead)
            {
                if submit {
                    vio.top_up(v, &mut self.models[v], &mut self.rng);
                }
                done += vio.reap(v, &mut self.models[v], &mut self.stats, &mut events);
                if !vio.dead {
                    fds.push(vio.q.raw_fd());
                }
            }
        }
        for e in events {
            self.on_event(e);
        }
        if !self.stopping && self.target.running() {
            if let Some(st) = self.target.exited() {
                let tail = self.target.log_tail(12);
                self.violation(
                    "target died",
                    format!(
                        "the target exited on its own with {st} ({}); log tail:\n{tail}",
                        self.last_event
                    ),
                );
                self.drop_host();
            }
        }
        if done == 0 {
            if fds.is_empty() {
                std::thread::sleep(Duration::from_millis(2));
            } else {
                wait_fds(&fds, 1);
            }
        }
        done
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::WriteError {
                vol,
                first,
                n,
                status,
            } if !self.stopping => {
                let what = format!("{}: write of units {first}..{} failed with status {status:#x} while the volume had redundancy ({})", VOLS[vol].name, first + n, self.volume_states());
                self.violation("host write error", what);
            }
            Event::WriteError { .. } => {}
            Event::Lost { vol, writes, error } if !self.stopping => {
                self.violation(
                    "connection lost",
                    format!(
                        "{}: the I/O queue failed ({error}) with {writes} writes in flight",
                        VOLS[vol].name
                    ),
                );
            }
            Event::Lost { .. } => {}
            Event::Hung {
                vol,
                first,
                n,
                secs,
            } => {
                self.violation(
                    "hang",
                    format!(
                        "{}: write of units {first}..{} not completed after {secs} s",
                        VOLS[vol].name,
                        first + n
                    ),
                );
            }
        }
    }

    fn inflight(&self) -> usize {
        self.host
            .as_ref()
            .map_or(0, |h| h.vols.iter().map(|v| v.inflight.len()).sum())
    }

    fn load_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end && self.host.is_some() {
            self.pump(true);
        }
    }

    /// Let the writes in flight finish. On a hang the target is killed and restarted.
    fn drain(&mut self) {
        let deadline = Instant::now() + DRAIN_DEADLINE;
        while self.inflight() > 0 && self.host.is_some() {
            self.pump(false);
            if Instant::now() > deadline {
                let n = self.inflight();
                self.violation("hang", format!("{n} writes still in flight {DRAIN_DEADLINE:?} after the load paused; killing the target"));
                self.crash("drain hang");
                self.start_target("after a drain hang");
                return;
            }
        }
    }

    /// Connection gone: every write in flight has an unknown outcome.
    fn drop_host(&mut self) -> usize {
        let Some(mut h) = self.host.take() else {
            return 0;
        };
        let mut n = 0;
        for (v, vio) in h.vols.iter_mut().enumerate() {
            n += vio.forget(&mut self.models[v]);
        }
        n
    }

    fn connect(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match connect_host(self.target.addr) {
                Ok(h) => {
                    self.host = Some(h);
                    return;
                }
                Err(e) if Instant::now() > deadline => {
                    self.violation("connect", format!("cannot connect to the target: {e}"));
                    self.fatal = Some("the host cannot connect".into());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    // -------------------------------------------------------------- target control

    fn rpc(&self, method: &str, params: Value) -> Result<Value, String> {
        self.target.call(method, params)
    }

    fn fetch_status(&mut self) -> bool {
        match self.rpc("volume_status", json!({})) {
            Ok(Value::Array(list)) => {
                self.status = VOLS
                    .iter()
                    .map(|s| {
                        list.iter()
                            .find(|v| v["name"] == s.name)
                            .cloned()
                            .unwrap_or(Value::Null)
                    })
                    .collect();
                self.observe();
                true
            }
            Ok(other) => {
                self.violation("management", format!("volume_status answered {other}"));
                false
            }
            Err(e) => {
                if self.target.running() {
                    self.violation("management", format!("volume_status failed: {e}"));
                }
                false
            }
        }
    }

    /// Count rebuilds and resyncs ending, notice member failures nobody asked for, and
    /// stop the run if a volume went offline.
    fn observe(&mut self) {
        for (v, spec) in VOLS.iter().enumerate() {
            let st = self.status[v].clone();
            let (rb, rs) = (
                st["rebuild"]["active"] == true,
                st["resync"]["active"] == true,
            );
            if self.rebuilding[v] && !rb && st["state"] != "offline" {
                self.stats.rebuilds_completed += 1;
                self.say(&format!("{}: rebuild finished", spec.name));
            }
            if !self.rebuilding[v] && rb {
                self.stats.rebuilds_started += 1;
            }
            if self.resyncing[v] && !rs {
                self.stats.resyncs_completed += 1;
            }
            (self.rebuilding[v], self.resyncing[v]) = (rb, rs);
            for (dev, state) in slots_of(&st) {
                if state == "failed"
                    && !self.expected_failures.contains(&dev)
                    && self.seen_failed.insert(dev.clone())
                {
                    self.note(format!(
                        "{}: the target failed member {dev} on its own (last event: {})",
                        spec.name, self.last_event
                    ));
                }
            }
            if st["state"] == "offline" {
                self.violation("offline", format!("{} went offline: {st}", spec.name));
                self.fatal = Some(format!("volume {} offline", spec.name));
            }
        }
    }

    fn mark_event(&mut self, what: String) {
        self.last_event = what;
        self.degraded_at_event = self.status.iter().map(|s| s["state"] != "online").collect();
    }

    fn volume_states(&self) -> String {
        VOLS.iter()
            .zip(&self.status)
            .map(|(s, st)| format!("{} {}", s.name, st["state"].as_str().unwrap_or("?")))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn start_target(&mut self, why: &str) {
        if let Err(e) = self.target.start(why) {
            self.violation(
                "start",
                format!(
                    "target failed to start ({why}; last event: {}): {e}",
                    self.last_event
                ),
            );
            self.fatal = Some("the target does not start".into());
            return;
        }
        self.stats.starts += 1;
        self.connect();
        if !self.fetch_status() {
            return;
        }
        let mut parts = Vec::new();
        for (v, st) in self.status.iter().enumerate() {
            let stripes = st["resync"]["stripes"].as_u64().unwrap_or(0);
            if stripes > 0 {
                self.stats.resyncs_observed += 1;
                parts.push(format!("{} resync of {stripes} stripes", VOLS[v].name));
            }
            if st["state"] != "online" {
                parts.push(format!(
                    "{} {}",
                    VOLS[v].name,
                    st["state"].as_str().unwrap_or("?")
                ));
            }
        }
        self.say(&format!(
            "start #{}: {}",
            self.target.starts,
            if parts.is_empty() {
                "all online, no resync".into()
            } else {
                parts.join(", ")
            }
        ));
    }

    fn crash(&mut self, why: &str) {
        let states = self.volume_states();
        self.target.kill9();
        self.stats.kills += 1;
        let n = self.drop_host();
        self.mark_event(format!(
            "kill -9 ({why}) with {n} writes in flight; volumes then: {states}"
        ));
    }

    /// SIGTERM with the load running; wait for the exit, then check the member files.
    /// `slow`: a member is delayed past the drain limit, so the target may exit with
    /// status 1 saying it left volumes dirty (their next start resynchronises them).
    fn stop_orderly(&mut self, why: &str, slow: bool) {
        let states = self.volume_states();
        let inflight = self.inflight();
        let answered = self.stats.writes_acked + self.stats.write_errors;
        self.stopping = true;
        self.target.sigterm();
        let t = Instant::now();
        let status = loop {
            self.pump(false);
            if let Some(st) = self.target.exited() {
                break Some(st);
            }
            if t.elapsed() > STOP_DEADLINE {
                break None;
            }
        };
        self.drop_host();
        let lost = inflight as u64
            - (self.stats.writes_acked + self.stats.write_errors - answered).min(inflight as u64);
        self.stopping = false;
        self.stats.orderly_stops += 1;
        self.mark_event(format!("orderly stop ({why}) with {inflight} writes in flight, {lost} unanswered; volumes then: {states}"));
        match status {
            Some(st) if st.success() => self.say(&format!(
                "stopped in {:.1} s ({inflight} writes in flight at SIGTERM, {lost} unanswered)",
                t.elapsed().as_secs_f64()
            )),
            Some(st)
                if slow
                    && st.code() == Some(1)
                    && self.target.log_tail(40).contains("left dirty") =>
            {
                self.stats.stops_left_dirty += 1;
                self.say(&format!("stopped in {:.1} s with writes in flight on the slow member: exit status 1, volumes left dirty", t.elapsed().as_secs_f64()));
            }
            Some(st) => {
                let tail = self.target.log_tail(12);
                self.violation(
                    "stop",
                    format!("target exited with {st} after SIGTERM ({why}); log tail:\n{tail}"),
                );
            }
            None => {
                self.violation(
                    "hang",
                    format!("target still running {STOP_DEADLINE:?} after SIGTERM ({why}); killed"),
                );
                self.target.kill9();
            }
        }
        for v in 0..VOLS.len() {
            self.check_files(v, why);
        }
    }

    fn fault(&mut self, dev: &str, action: &str, us: Option<u64>) -> Result<Value, String> {
        if action != "heal" {
            self.expected_failures.insert(dev.to_string());
        }
        self.rpc(
            "device_fault",
            json!({"device": dev, "action": action, "us": us}),
        )
    }

    fn heal_all(&mut self) {
        if !self.target.running() {
            return;
        }
        for dev in VOLS.iter().flat_map(|v| v.pool()) {
            let _ = self.rpc("device_fault", json!({"device": dev, "action": "heal"}));
        }
    }

    /// With the load running, until no rebuild or resync runs.
    fn wait_idle(&mut self) -> bool {
        let deadline = Instant::now() + IDLE_DEADLINE;
        loop {
            if !self.fetch_status() || self.fatal.is_some() {
                return false;
            }
            if self
                .status
                .iter()
                .all(|s| s["rebuild"]["active"] != true && s["resync"]["active"] != true)
            {
                return true;
            }
            if Instant::now() > deadline {
                let what = format!(
                    "rebuild or resync still running after {IDLE_DEADLINE:?}: {}",
                    self.volume_states()
                );
                self.violation("hang", what);
                self.fatal = Some("a rebuild or resync does not finish".into());
                return false;
            }
            self.load_for(Duration::from_millis(250));
        }
    }

    /// Slots that may fail now without taking their volume offline: (volume, device).
    fn losable(&self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (v, spec) in VOLS.iter().enumerate() {
            let slots = slots_of(&self.status[v]);
            let gs = spec.group_size();
            for (i, (dev, state)) in slots.iter().enumerate() {
                let group = &slots[i / gs * gs..(i / gs + 1) * gs];
                let degraded = group.iter().filter(|(_, s)| s != "active").count();
                if state == "active" && degraded < spec.tolerance() {
                    out.push((v, dev.clone()));
                }
            }
        }
        out
    }

    fn has_spare(&self, v: usize) -> bool {
        !spares_of(&self.status[v]).is_empty()
    }

    /// Pool devices neither in a slot nor a spare.
    fn free_devices(&self, v: usize) -> Vec<String> {
        let used: Vec<String> = slots_of(&self.status[v])
            .into_iter()
            .map(|(d, _)| d)
            .chain(spares_of(&self.status[v]))
            .collect();
        VOLS[v]
            .pool()
            .into_iter()
            .filter(|d| !used.contains(d))
            .collect()
    }

    fn failed_in_slot(&self, v: usize) -> Vec<String> {
        let pool = VOLS[v].pool();
        slots_of(&self.status[v])
            .into_iter()
            .filter(|(d, s)| s == "failed" && pool.contains(d))
            .map(|(d, _)| d)
            .collect()
    }

    /// A volume short of spares, or with a failed slot, and a device to give it.
    fn wants_spare(&self, v: usize) -> bool {
        let short = spares_of(&self.status[v]).len() < VOLS[v].spares
            || slots_of(&self.status[v]).iter().any(|(_, s)| s != "active");
        short && (!self.free_devices(v).is_empty() || !self.failed_in_slot(v).is_empty())
    }
}

// ------------------------------------------------------------------ verification

impl Run {
    /// Read every unit of every volume back (load paused).
    fn verify_all(&mut self) {
        self.drain();
        if self.host.is_none() {
            return;
        }
        let mut totals = [0u64; 5];
        for v in 0..VOLS.len() {
            if let Some(t) = self.verify_vol(v) {
                totals.iter_mut().zip(t).for_each(|(a, b)| *a += b);
            }
        }
        self.stats.verifications += 1;
        let [ok, old, new, torn, bad] = totals;
        let mut line = format!("verify: {} units read back", ok + old + new + torn + bad);
        if old + new + torn > 0 {
            line += &format!(", unknown outcomes resolved: {old} old / {new} new / {torn} torn");
        }
        if bad > 0 {
            line += &format!(", {bad} WRONG");
        }
        self.say(&line);
    }

    /// Pipelined reads of the working area; returns [ok, old, new, torn, bad].
    fn verify_vol(&mut self, v: usize) -> Option<[u64; 5]> {
        let mut sweep = Sweep {
            next: 0,
            units: self.models[v].units(),
            outstanding: HashMap::new(),
        };
        let (mut counts, mut bad, deadline) = ([0u64; 5], Vec::new(), Instant::now() + IO_DEADLINE);
        while !sweep.done() {
            let vio = &mut self.host.as_mut()?.vols[v];
            let chunks = match sweep.step(vio) {
                Ok(c) => c,
                Err(e) => {
                    vio.dead = true;
                    return self.verify_failed(v, format!("connection: {e}"));
                }
            };
            for (first, read) in chunks {
                match read {
                    Ok(buf) => self.check_chunk(v, first, &buf, &mut counts, &mut bad),
                    Err(status) => {
                        let what = format!("{}: read of units {first}..{} failed with status {status:#x} ({}; last event: {})", VOLS[v].name, first + VERIFY_CHUNK_UNITS, self.volume_states(), self.last_event);
                        self.violation("host read error", what);
                    }
                }
            }
            if Instant::now() > deadline {
                return self.verify_failed(v, format!("reads not done after {IO_DEADLINE:?}"));
            }
        }
        self.report_bad(v, &bad);
        self.rewrite(v, &bad);
        Some(counts)
    }

    fn verify_failed(&mut self, v: usize, why: String) -> Option<[u64; 5]> {
        let what = format!(
            "{}: verification failed: {why} ({}; last event: {})",
            VOLS[v].name,
            self.volume_states(),
            self.last_event
        );
        self.violation("host read error", what);
        self.drop_host();
        None
    }

    /// Check the units of one read; wrong and torn units go to `bad` (torn ones with no
    /// explanation: they are allowed, but get rewritten).
    fn check_chunk(
        &mut self,
        v: usize,
        first: u64,
        buf: &[u8],
        counts: &mut [u64; 5],
        bad: &mut Vec<(u64, String)>,
    ) {
        self.stats.bytes_verified += buf.len() as u64;
        for (i, unit_buf) in buf.chunks(UNIT).enumerate() {
            let unit = first + i as u64;
            match self.models[v].check(unit, unit_buf) {
                Check::Ok => counts[0] += 1,
                Check::Old => {
                    counts[1] += 1;
                    self.stats.inflight_old += 1;
                }
                Check::New => {
                    counts[2] += 1;
                    self.stats.inflight_new += 1;
                }
                Check::Torn => {
                    counts[3] += 1;
                    self.stats.torn_units += 1;
                    bad.push((unit, String::new()));
                }
                Check::Bad(why) => {
                    counts[4] += 1;
                    bad.push((unit, why));
                }
            }
        }
    }

    fn report_bad(&mut self, v: usize, bad: &[(u64, String)]) {
        let wrong: Vec<&(u64, String)> = bad.iter().filter(|(_, why)| !why.is_empty()).collect();
        let hint = if self.degraded_at_event.get(v) == Some(&true) {
            " [write-hole class: the volume was not online at that unclean stop]"
        } else {
            ""
        };
        for (unit, why) in wrong.iter().take(DETAILS) {
            let what = format!(
                "{} unit {unit} ({}): {why}; last event: {}{hint}",
                VOLS[v].name,
                self.where_is(v, *unit),
                self.last_event
            );
            self.violation("wrong data", what);
        }
        if wrong.len() > DETAILS {
            let units: Vec<u64> = wrong.iter().map(|(u, _)| *u).collect();
            let what = format!(
                "{}: {} more wrong units (of {} in all; units {:?}...){hint}",
                VOLS[v].name,
                wrong.len() - DETAILS,
                wrong.len(),
                &units[..units.len().min(40)]
            );
            self.violation("wrong data", what);
        }
    }

    /// Where a unit lives: member slot and device, member offset, stripe row.
    fn where_is(&self, v: usize, unit: u64) -> String {
        let l = VOLS[v].layout();
        let lba = unit * BLOCKS_PER_UNIT;
        let loc = l.locate(lba);
        let row = l.member_row(lba);
        let dev = slots_of(&self.status[v])
            .get(loc.member)
            .map_or("?".to_string(), |(d, s)| format!("{d}, {s}"));
        let mut s = format!(
            "volume lba {lba}: slot {} ({dev}) member lba {}, row {row}",
            loc.member, loc.member_lba
        );
        if l.level.parity_count() > 0 {
            s += &format!(", P on slot {}", l.p_slot(row));
            if let Some(q) = l.q_slot(row) {
                s += &format!(", Q on slot {q}");
            }
        }
        s
    }

    /// Give wrong or torn units a fresh known version, so later checks stand alone.
    fn rewrite(&mut self, v: usize, bad: &[(u64, String)]) {
        for (unit, _) in bad {
            let version = self.models[v].rewritten(*unit);
            let data = unit_data(v, *unit, version);
            let Some(host) = self.host.as_mut() else {
                return;
            };
            let vio = &mut host.vols[v];
            match vio.q.write(vio.nsid, unit * BLOCKS_PER_UNIT, 9, &data) {
                Ok(cqe) if cqe.is_success() => self.stats.units_rewritten += 1,
                r => {
                    self.violation(
                        "host write error",
                        format!("{}: rewriting unit {unit} failed: {r:?}", VOLS[v].name),
                    );
                    return;
                }
            }
        }
    }
}

// ------------------------------------------------------------------ offline parity check

/// Which rows of the volume a member row holds: the range of volume units (for the
/// levels used here: RAID 5/6 with one group, RAID 10).
fn row_units(l: &Layout, g: usize, row: u64) -> std::ops::Range<u64> {
    let sb = l.strip_blocks;
    let (start, len) = if l.level.parity_count() > 0 {
        (
            row * l.data_per_stripe() as u64 * sb,
            l.data_per_stripe() as u64 * sb,
        )
    } else {
        ((row * l.groups() as u64 + g as u64) * sb, sb)
    };
    start / BLOCKS_PER_UNIT..(start + len) / BLOCKS_PER_UNIT
}

fn expected_parity(l: &Layout, g: usize, row: u64, strips: &[&[u8]]) -> (Vec<u8>, Option<Vec<u8>>) {
    let data: Vec<&[u8]> = (0..l.data_per_stripe())
        .map(|i| strips[l.member_of(g, l.data_slot(row, i))])
        .collect();
    let mut p = vec![0u8; data[0].len()];
    if l.level.parity_count() == 2 {
        let mut q = vec![0u8; p.len()];
        parity::pq_gen(&data, &mut p, &mut q);
        (p, Some(q))
    } else {
        parity::xor_gen(&data, &mut p);
        (p, None)
    }
}

/// What is wrong with one row of group `g`, if anything.
fn row_problem(l: &Layout, g: usize, row: u64, strips: &[&[u8]]) -> Option<String> {
    let m = |slot: usize| l.member_of(g, slot);
    if l.level.parity_count() == 0 {
        let differ: Vec<usize> = (1..l.group_size)
            .map(m)
            .filter(|&s| strips[s] != strips[m(0)])
            .collect();
        return (!differ.is_empty()).then(|| {
            format!(
                "mirror copies on slots {differ:?} differ from slot {}",
                m(0)
            )
        });
    }
    let (p, q) = expected_parity(l, g, row, strips);
    let mut wrong = Vec::new();
    if *strips[m(l.p_slot(row))] != p[..] {
        wrong.push(format!("P on slot {}", m(l.p_slot(row))));
    }
    if let (Some(qs), Some(q)) = (l.q_slot(row), q) {
        if *strips[m(qs)] != q[..] {
            wrong.push(format!("Q on slot {}", m(qs)));
        }
    }
    (!wrong.is_empty()).then(|| format!("{} inconsistent with the data", wrong.join(" and ")))
}

/// Member files of one volume, slot by slot, with the geometry of their superblocks.
struct Members {
    names: Vec<String>,
    files: Vec<File>,
    layout: Layout,
    base: u64,
    strip: usize,
}

impl Members {
    fn read_rows(&self, first: u64, rows: u64, bufs: &mut [Vec<u8>]) -> std::io::Result<()> {
        let len = rows as usize * self.strip;
        for (f, b) in self.files.iter().zip(bufs.iter_mut()) {
            f.read_exact_at(&mut b[..len], self.base + first * self.strip as u64)?;
        }
        Ok(())
    }

    fn write_strip(&self, slot: usize, row: u64, at: usize, data: &[u8]) -> std::io::Result<()> {
        self.files[slot].write_all_at(data, self.base + row * self.strip as u64 + at as u64)
    }

    /// Every row of every group: (group, row, problem).
    fn scan(&self) -> std::io::Result<Vec<(usize, u64, String)>> {
        let rows = self.layout.stripes_per_group();
        let chunk = ((1usize << 20) / self.strip).max(1) as u64;
        let mut bufs = vec![vec![0u8; chunk as usize * self.strip]; self.files.len()];
        let mut bad = Vec::new();
        let mut r0 = 0;
        while r0 < rows {
            let n = chunk.min(rows - r0);
            self.read_rows(r0, n, &mut bufs)?;
            for r in r0..r0 + n {
                let off = (r - r0) as usize * self.strip;
                let strips: Vec<&[u8]> = bufs.iter().map(|b| &b[off..off + self.strip]).collect();
                for g in 0..self.layout.groups() {
                    if let Some(p) = row_problem(&self.layout, g, r, &strips) {
                        bad.push((g, r, p));
                    }
                }
            }
            r0 += n;
        }
        Ok(bad)
    }
}

impl Run {
    /// With the target stopped: if the volume's superblocks say clean and every slot
    /// active, every row must be consistent on the member files.
    fn check_files(&mut self, v: usize, context: &str) {
        let Some(members) = self.open_members(v) else {
            return;
        };
        let rows = members.layout.stripes_per_group() * members.layout.groups() as u64;
        let bad = match members.scan() {
            Ok(b) => b,
            Err(e) => {
                return self.note(format!(
                    "{}: parity check could not read the member files: {e}",
                    VOLS[v].name
                ))
            }
        };
        self.stats.parity_checks += 1;
        self.stats.rows_checked += rows;
        if bad.is_empty() {
            return self.say(&format!(
                "{}: {rows} rows consistent on the member files",
                VOLS[v].name
            ));
        }
        self.stats.rows_inconsistent += bad.len() as u64;
        let first: Vec<String> = bad
            .iter()
            .take(DETAILS)
            .map(|(g, r, p)| self.row_story(v, &members, *g, *r, p))
            .collect();
        let what = format!(
            "{}: {} of {rows} rows inconsistent on the member files after {context}, with superblocks saying clean; first: {}",
            VOLS[v].name,
            bad.len(),
            first.join("; ")
        );
        let hint = if context.contains("delayed") {
            " [the known class: a stop that runs out its drain limit marks the volume clean without a resync]"
        } else {
            ""
        };
        self.violation("inconsistent parity", what + hint);
        let repaired = bad
            .iter()
            .filter(|(g, r, _)| self.repair_row(v, &members, *g, *r).is_ok())
            .count();
        self.stats.rows_repaired += repaired as u64;
        self.say(&format!(
            "{}: {repaired} rows repaired offline",
            VOLS[v].name
        ));
    }

    fn row_story(&self, v: usize, m: &Members, g: usize, row: u64, problem: &str) -> String {
        let units = row_units(&m.layout, g, row);
        let unresolved = units
            .clone()
            .filter(|u| *u < self.models[v].units() && self.models[v].maybe[*u as usize] != NONE)
            .count();
        let slots: Vec<String> = (0..m.layout.group_size)
            .map(|s| {
                format!(
                    "{}={}",
                    m.layout.member_of(g, s),
                    m.names[m.layout.member_of(g, s)]
                )
            })
            .collect();
        format!("group {g} row {row} [{}]: {problem} (volume units {}..{}, {unresolved} with a write of unknown outcome)", slots.join(" "), units.start, units.end)
    }

    /// The superblocks of the volume's devices, if they say clean with every slot active;
    /// the member files in slot order.
    fn open_members(&mut self, v: usize) -> Option<Members> {
        let spec = &VOLS[v];
        let sbs: Vec<(String, Option<Superblock>)> = spec
            .pool()
            .into_iter()
            .map(|d| (d.clone(), read_sb(&self.img(&d))))
            .collect();
        let Some(auth) = sbs
            .iter()
            .filter_map(|(_, s)| s.as_ref())
            .filter(|s| s.volume_name == spec.name)
            .max_by_key(|s| s.generation)
            .cloned()
        else {
            self.violation(
                "superblock",
                format!("{}: no device holds a superblock of the volume", spec.name),
            );
            return None;
        };
        if !auth.clean {
            self.stats.checks_skipped_dirty += 1;
            self.say(&format!(
                "{}: superblocks say not clean (generation {}): no parity check",
                spec.name, auth.generation
            ));
            return None;
        }
        if auth.rebuild_checkpoint != NO_REBUILD
            || auth.slots.iter().any(|s| s.state != SlotState::Active)
        {
            self.stats.checks_skipped_degraded += 1;
            return None;
        }
        let mut names = Vec::new();
        for (slot, s) in auth.slots.iter().enumerate() {
            let owner = sbs.iter().find(|(_, sb)| {
                sb.as_ref().is_some_and(|sb| {
                    sb.volume_uuid == auth.volume_uuid
                        && sb.this_slot as usize == slot
                        && sb.this_device == s.device
                })
            });
            match owner {
                Some((d, _)) => names.push(d.clone()),
                None => {
                    self.violation("superblock", format!("{}: clean superblocks (generation {}) but no device claims slot {slot}", spec.name, auth.generation));
                    return None;
                }
            }
        }
        let said: Vec<String> = slots_of(&self.status[v])
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        if said != names {
            self.violation("superblock", format!("{}: the superblocks put {names:?} in the slots, volume_status said {said:?} before the stop", spec.name));
        }
        let files = names
            .iter()
            .map(|d| File::options().read(true).write(true).open(self.img(d)))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        let layout = Layout::new(
            spec.level,
            &vec![auth.member_blocks; names.len()],
            spec.group,
            auth.strip_blocks as u64,
        )
        .ok()?;
        let (base, strip) = (
            auth.data_offset * auth.block_size as u64,
            (auth.strip_blocks * auth.block_size) as usize,
        );
        Some(Members {
            names,
            files,
            layout,
            base,
            strip,
        })
    }

    /// Make one row consistent offline: parity from the data (which is what the host
    /// reads), mirror copies from the copy that holds what the model expects.
    fn repair_row(&self, v: usize, m: &Members, g: usize, row: u64) -> std::io::Result<()> {
        let mut bufs = vec![vec![0u8; m.strip]; m.files.len()];
        m.read_rows(row, 1, &mut bufs)?;
        let strips: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
        let l = &m.layout;
        if l.level.parity_count() > 0 {
            let (p, q) = expected_parity(l, g, row, &strips);
            m.write_strip(l.member_of(g, l.p_slot(row)), row, 0, &p)?;
            if let (Some(qs), Some(q)) = (l.q_slot(row), q) {
                m.write_strip(l.member_of(g, qs), row, 0, &q)?;
            }
        } else {
            let first_unit = row_units(l, g, row).start;
            for (i, piece) in (0..m.strip).step_by(UNIT).enumerate() {
                let copies: Vec<&[u8]> = (0..l.group_size)
                    .map(|c| &strips[l.member_of(g, c)][piece..piece + UNIT])
                    .collect();
                let best = self.expected_copy(v, first_unit + i as u64, &copies);
                for c in (0..l.group_size).filter(|&c| c != best) {
                    m.write_strip(l.member_of(g, c), row, piece, copies[best])?;
                }
            }
        }
        m.files.iter().try_for_each(|f| f.sync_all())
    }

    /// The copy holding a version the model accepts for `unit` (else the first).
    fn expected_copy(&self, v: usize, unit: u64, copies: &[&[u8]]) -> usize {
        let model = &self.models[v];
        if unit >= model.units() {
            return 0;
        }
        let ok: Vec<Vec<u8>> = [model.acked[unit as usize], model.maybe[unit as usize]]
            .iter()
            .filter(|x| **x != NONE)
            .map(|x| unit_data(v, unit, *x))
            .collect();
        copies
            .iter()
            .position(|c| ok.iter().any(|o| o == c))
            .unwrap_or(0)
    }
}

// ------------------------------------------------------------------ steps

impl Run {
    fn choose(&mut self) -> Kind {
        let losable = !self.losable().is_empty();
        let rebuildable = self.losable().iter().any(|(v, _)| self.has_spare(*v));
        let spare_wanted = (0..VOLS.len()).any(|v| self.wants_spare(v));
        let degraded = self.status.iter().any(|s| s["state"] != "online");
        let mut table: Vec<(Kind, u64)> = vec![
            (Kind::Restart, 20),
            (Kind::Crash, 25),
            (Kind::SlowStop, 12),
            (Kind::SlowMember, 12),
        ];
        if losable {
            table.extend([(Kind::FailMember, 15), (Kind::FailIo, 18)]);
        }
        if rebuildable {
            table.push((Kind::CrashInRebuild, 15));
        }
        if spare_wanted {
            table.push((Kind::AddSpare, if degraded { 60 } else { 8 }));
        }
        let total: u64 = table.iter().map(|(_, w)| w).sum();
        let mut x = self.rng.below(total);
        for (k, w) in table {
            if x < w {
                return k;
            }
            x -= w;
        }
        unreachable!()
    }

    fn run_step(&mut self, kind: Kind) -> String {
        match kind {
            Kind::Restart => self.step_restart(),
            Kind::Crash => self.step_crash(),
            Kind::SlowStop => self.step_slow_stop(),
            Kind::CrashInRebuild => self.step_crash_in_rebuild(),
            Kind::FailMember => self.step_fail_member(),
            Kind::SlowMember => self.step_slow_member(),
            Kind::FailIo => self.step_fail_io(),
            Kind::AddSpare => self.step_add_spare(),
        }
    }

    /// Load for a while, SIGTERM during it, check the files, start again.
    fn step_restart(&mut self) -> String {
        let d = self.rng.millis(800, 4000);
        self.load_for(d);
        self.stop_orderly("an orderly stop under load", false);
        self.start_target("orderly restart");
        format!("load {:.1} s, SIGTERM under load, restart", d.as_secs_f64())
    }

    fn step_crash(&mut self) -> String {
        let d = self.rng.millis(300, 4000);
        self.load_for(d);
        let n = self.inflight();
        self.crash("random");
        self.start_target("after kill -9");
        format!(
            "load {:.1} s, kill -9 with {n} writes in flight, restart",
            d.as_secs_f64()
        )
    }

    /// A member delayed by seconds: the stop's drain limit (5 s) runs out with member
    /// writes in flight. The superblocks must then say not clean, or the stripes be whole.
    fn step_slow_stop(&mut self) -> String {
        // A healthy volume, so what the check finds is the stop's doing, not a write hole.
        let healthy: Vec<usize> = (0..VOLS.len())
            .filter(|&v| self.status[v]["state"] == "online")
            .collect();
        if healthy.is_empty() {
            return "no healthy volume to slow".into();
        }
        let v = *self.rng.pick(&healthy);
        let active: Vec<String> = slots_of(&self.status[v])
            .into_iter()
            .filter(|(_, s)| s == "active")
            .map(|(d, _)| d)
            .collect();
        let dev = self.rng.pick(&active).clone();
        let secs = self.rng.range(6, 10);
        if let Err(e) = self.fault(&dev, "delay", Some(secs * 1_000_000)) {
            return format!("delay on {dev} refused: {e}");
        }
        let d = self.rng.millis(1000, 2500);
        self.load_for(d);
        self.stop_orderly(
            &format!(
                "an orderly stop while {dev} of {} was delayed by {secs} s per I/O",
                VOLS[v].name
            ),
            true,
        );
        self.start_target("after a stop with a slow member");
        format!(
            "{}: {dev} delayed {secs} s per I/O, load {:.1} s, SIGTERM, restart",
            VOLS[v].name,
            d.as_secs_f64()
        )
    }

    fn step_crash_in_rebuild(&mut self) -> String {
        let choices: Vec<(usize, String)> = self
            .losable()
            .into_iter()
            .filter(|(v, _)| self.has_spare(*v))
            .collect();
        let (v, dev) = self.rng.pick(&choices).clone();
        let name = VOLS[v].name;
        let d0 = self.rng.millis(200, 800);
        self.load_for(d0);
        if let Err(e) = self.fail_member(v, &dev) {
            return format!("{name}: failing {dev} refused: {e}");
        }
        let goal = self.rng.range(10, 75) as f64;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen = (false, 0.0, 0u64);
        while Instant::now() < deadline && self.fetch_status() && self.fatal.is_none() {
            let rb = &self.status[v]["rebuild"];
            seen = (
                rb["active"] == true,
                rb["percent"].as_f64().unwrap_or(0.0),
                rb["rows_done"].as_u64().unwrap_or(0),
            );
            if seen.0 && seen.1 >= goal || !seen.0 && seen.1 >= 100.0 {
                break;
            }
            self.load_for(Duration::from_millis(100));
        }
        if !seen.0 {
            self.note(format!(
                "{name}: no rebuild running when the kill came (percent {:.0})",
                seen.1
            ));
        }
        self.crash(&format!("during the rebuild of {name} at {:.0}%", seen.1));
        self.start_target("after kill -9 during a rebuild");
        let rb = self
            .status
            .get(v)
            .map(|s| s["rebuild"].clone())
            .unwrap_or(Value::Null);
        let resumed = rb["rows_done"].as_u64().unwrap_or(0);
        if rb["active"] == true && resumed > 0 {
            self.stats.rebuilds_resumed += 1;
        }
        if seen.0
            && rb["active"] != true
            && self.status.get(v).is_some_and(|s| s["state"] != "online")
        {
            self.note(format!(
                "{name}: the rebuild killed at {:.0}% did not resume: {}",
                seen.1, self.status[v]
            ));
        }
        format!("{name}: {dev} failed, rebuild killed at {:.0}% (row {}), resumed at row {resumed} of {}", seen.1, seen.2, rb["rows"])
    }

    fn fail_member(&mut self, v: usize, dev: &str) -> Result<Value, String> {
        self.expected_failures.insert(dev.to_string());
        self.rpc(
            "volume_fail_member",
            json!({"volume": VOLS[v].name, "member": dev}),
        )
    }

    fn step_fail_member(&mut self) -> String {
        let (v, dev) = {
            let l = self.losable();
            self.rng.pick(&l).clone()
        };
        let spare = self.has_spare(v);
        let d0 = self.rng.millis(300, 1000);
        self.load_for(d0);
        if let Err(e) = self.fail_member(v, &dev) {
            self.violation(
                "management",
                format!(
                    "{}: volume_fail_member {dev} refused although the volume can lose it: {e}",
                    VOLS[v].name
                ),
            );
        }
        let d = self.rng.millis(2000, 5000);
        self.load_for(d);
        let _ = self.fetch_status();
        format!(
            "{}: {dev} failed by the management call ({}), load {:.1} s, volume {}",
            VOLS[v].name,
            if spare {
                "a spare takes over"
            } else {
                "no spare"
            },
            d.as_secs_f64(),
            self.status[v]["state"].as_str().unwrap_or("?")
        )
    }

    fn step_slow_member(&mut self) -> String {
        let (v, dev) = {
            let l = self.losable();
            if l.is_empty() {
                return "no member to slow".into();
            }
            self.rng.pick(&l).clone()
        };
        let ms = self.rng.range(10, 50);
        if let Err(e) = self.fault(&dev, "delay", Some(ms * 1000)) {
            return format!("delay refused: {e}");
        }
        let d = self.rng.millis(3000, 8000);
        self.load_for(d);
        let _ = self.fault(&dev, "heal", None);
        self.expected_failures.remove(&dev);
        format!(
            "{}: {dev} delayed {ms} ms per I/O for {:.1} s, then healed",
            VOLS[v].name,
            d.as_secs_f64()
        )
    }

    fn step_fail_io(&mut self) -> String {
        let (v, dev) = {
            let l = self.losable();
            self.rng.pick(&l).clone()
        };
        let action = *self
            .rng
            .pick(&["fail_writes", "fail_writes", "fail_reads", "fail"]);
        if let Err(e) = self.fault(&dev, action, None) {
            return format!("{action} on {dev} refused: {e}");
        }
        let d = self.rng.millis(1500, 4000);
        self.load_for(d);
        if action == "fail_reads" {
            self.verify_all(); // reads hit the member while it fails them
        }
        let injected = self
            .fault(&dev, "heal", None)
            .map(|r| r["injected"].as_u64().unwrap_or(0))
            .unwrap_or(0);
        let _ = self.fetch_status();
        let state = slots_of(&self.status[v])
            .into_iter()
            .find(|(d, _)| *d == dev)
            .map_or("replaced".to_string(), |(_, s)| s);
        format!(
            "{}: {action} on {dev} for {:.1} s, {injected} I/Os failed, member now {state}",
            VOLS[v].name,
            d.as_secs_f64()
        )
    }

    fn step_add_spare(&mut self) -> String {
        let wanting: Vec<usize> = (0..VOLS.len()).filter(|&v| self.wants_spare(v)).collect();
        let v = *self.rng.pick(&wanting);
        let story = self.give_spare(v);
        let d = self.rng.millis(1000, 3000);
        self.load_for(d);
        let _ = self.fetch_status();
        format!(
            "{}: {story}; volume {}",
            VOLS[v].name,
            self.status[v]["state"].as_str().unwrap_or("?")
        )
    }

    /// Give volume `v` a device back as a spare: a free one (a former member a spare took
    /// over from, or one detached earlier), or a failed member still in its slot, detached
    /// first. Records what the target accepts for a device that was a member before.
    fn give_spare(&mut self, v: usize) -> String {
        let free = self.free_devices(v);
        let failed = self.failed_in_slot(v);
        if failed.is_empty() || !free.is_empty() && self.rng.chance(0.5) {
            let dev = self.rng.pick(&free).clone();
            let kind = if read_sb(&self.img(&dev)).is_some() {
                "a former member (superblock of this volume on it)"
            } else {
                "a blank device"
            };
            return self.add_or_zero(v, &dev, kind);
        }
        let dev = self.rng.pick(&failed).clone();
        let (name, mut story) = (VOLS[v].name, Vec::new());
        match self.add_spare(v, &dev) {
            Ok(_) => {
                self.learn(
                    "add-spare of a failed member still in its slot: accepted".into(),
                    v,
                    &dev,
                );
                return format!("added failed member {dev} as a spare without removing it");
            }
            Err(e) => {
                self.learn(
                    format!("add-spare of a failed member still in its slot: refused: {e}"),
                    v,
                    &dev,
                );
                story.push(format!("add-spare of failed member {dev} refused"));
            }
        }
        if let Err(e) = self.rpc(
            "volume_remove_member",
            json!({"volume": name, "member": dev}),
        ) {
            self.violation(
                "management",
                format!("{name}: remove-member of failed member {dev} refused: {e}"),
            );
            return story.join(", ");
        }
        self.stats.members_removed += 1;
        story.push(format!("removed {dev}"));
        story.push(self.add_or_zero(v, &dev, "a failed member after remove-member"));
        story.join(", ")
    }

    /// Record what the target said, with the device and volume names taken out.
    fn learn(&mut self, fact: String, v: usize, dev: &str) {
        self.stats.learned.insert(
            fact.replace(&format!("'{dev}'"), "'DEV'")
                .replace(&format!("'{}'", VOLS[v].name), "'VOL'"),
        );
    }

    fn add_spare(&mut self, v: usize, dev: &str) -> Result<Value, String> {
        self.rpc(
            "volume_add_spare",
            json!({"volume": VOLS[v].name, "device": dev}),
        )
    }

    /// Add `dev` (`kind` says what it was) as a spare; if the target refuses it, zero its
    /// first MiB (superblock and bitmap; the device belongs to no volume now) and retry.
    fn add_or_zero(&mut self, v: usize, dev: &str, kind: &str) -> String {
        self.expected_failures.remove(dev);
        self.seen_failed.remove(dev);
        match self.add_spare(v, dev) {
            Ok(_) => {
                self.stats.spares_added += 1;
                self.learn(format!("add-spare of {kind}: accepted as is"), v, dev);
                return format!("added {dev} ({kind}) as a spare");
            }
            Err(e) => {
                self.learn(format!("add-spare of {kind}: refused: {e}"), v, dev);
                self.note(format!(
                    "{}: add-spare of {dev} refused: {e}; zeroing its first MiB",
                    VOLS[v].name
                ));
            }
        }
        let zero = || -> std::io::Result<()> {
            let f = File::options().write(true).open(self.img(dev))?;
            f.write_all_at(&vec![0u8; RESERVED_BYTES as usize], 0)?;
            f.sync_all()
        };
        if let Err(e) = zero() {
            return format!("zeroing {dev} failed: {e}");
        }
        self.stats.devices_zeroed += 1;
        match self.add_spare(v, dev) {
            Ok(_) => {
                self.stats.spares_added += 1;
                format!("added {dev} as a spare after zeroing its first MiB")
            }
            Err(e) => {
                self.note(format!(
                    "{}: add-spare of {dev} refused even after zeroing: {e}",
                    VOLS[v].name
                ));
                format!("{dev} refused twice")
            }
        }
    }
}

// ------------------------------------------------------------------ main loop and summary

impl Run {
    /// Before a step: the target runs, the host is connected, no rebuild or resync runs
    /// (some crashes skip the wait, to land in a rebuild or resync), no fault is set.
    fn prepare(&mut self, wait: bool) {
        if !self.target.running() {
            self.start_target("recovery");
        }
        if self.host.is_none() && self.fatal.is_none() {
            self.connect();
        }
        self.heal_all();
        if wait {
            self.wait_idle();
        } else {
            self.fetch_status();
        }
    }

    fn one_step(&mut self) {
        self.step += 1;
        let wait = !self.rng.chance(0.2);
        self.prepare(wait);
        if self.fatal.is_some() {
            return;
        }
        let mut kind = self.choose();
        if !wait && !matches!(kind, Kind::Crash | Kind::Restart) {
            self.wait_idle();
            kind = self.choose();
        }
        if self.fatal.is_some() {
            return;
        }
        *self.stats.steps.entry(kind.name()).or_default() += 1;
        println!(
            "[{:>4} {}] {}",
            self.step,
            clock(self.t0.elapsed()),
            kind.name()
        );
        let story = self.run_step(kind);
        self.say(&story);
        if self.fatal.is_some() {
            return;
        }
        self.heal_all();
        if !self.target.running() {
            self.start_target("recovery after the step");
        }
        if self.host.is_none() && self.fatal.is_none() {
            self.connect();
        }
        self.verify_all();
    }

    /// The end: wait for quiet, verify, stop cleanly with nothing in flight, check files.
    fn finish(&mut self) {
        if self.fatal.is_some() || !self.target.running() {
            return;
        }
        self.step += 1;
        println!(
            "[{:>4} {}] final: wait for quiet, verify, clean stop, parity check",
            self.step,
            clock(self.t0.elapsed())
        );
        self.heal_all();
        for _ in 0..8 {
            if !self.wait_idle() {
                return;
            }
            let Some(v) = (0..VOLS.len()).find(|&v| self.status[v]["state"] != "online") else {
                break;
            };
            let story = self.give_spare(v);
            self.say(&format!("{}: {story}", VOLS[v].name));
        }
        self.wait_idle();
        self.verify_all();
        self.stop_orderly("the final stop, nothing in flight", false);
    }

    fn summary(&self) {
        let s = &self.stats;
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!("\n================ faultrun summary ================");
        println!(
            "duration            {} (seed {}, replay with --seed {})",
            clock(self.t0.elapsed()),
            self.seed,
            self.seed
        );
        println!("run directory       {}", self.dir.display());
        println!("target log          {}", self.target.log.display());
        println!(
            "volumes             {}",
            VOLS.iter()
                .map(|v| format!(
                    "{} ({:?}, {} members, {} KiB strip, {} spares)",
                    v.name,
                    v.level,
                    v.members,
                    v.strip >> 10,
                    v.spares
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("steps               {}", self.step);
        for (k, n) in &s.steps {
            println!("  {k:<24} {n}");
        }
        println!(
            "writes acknowledged {} ({:.1} MiB), failed {}",
            s.writes_acked,
            mib(s.bytes_acked),
            s.write_errors
        );
        println!(
            "verified            {:.1} MiB read back in {} passes",
            mib(s.bytes_verified),
            s.verifications
        );
        println!("target starts       {} (orderly stops {}, of which {} left volumes dirty at the drain limit; kill -9 {})", s.starts, s.orderly_stops, s.stops_left_dirty, s.kills);
        println!(
            "rebuilds            {} started, {} completed, {} resumed after kill -9",
            s.rebuilds_started, s.rebuilds_completed, s.rebuilds_resumed
        );
        println!(
            "resyncs             {} observed at start, {} seen finishing",
            s.resyncs_observed, s.resyncs_completed
        );
        println!(
            "parity checks       {} ({} rows checked, {} inconsistent, {} repaired offline)",
            s.parity_checks, s.rows_checked, s.rows_inconsistent, s.rows_repaired
        );
        println!(
            "  skipped           {} with superblocks not clean, {} with a slot not active",
            s.checks_skipped_dirty, s.checks_skipped_degraded
        );
        println!(
            "unknown outcomes    {} units found old, {} new, {} torn (sector mix)",
            s.inflight_old, s.inflight_new, s.torn_units
        );
        println!("spares              {} added back, {} failed members removed, {} devices zeroed before re-adding", s.spares_added, s.members_removed, s.devices_zeroed);
        for fact in &s.learned {
            println!("  re-adding        {fact}");
        }
        if s.units_rewritten > 0 {
            println!(
                "units rewritten     {} (wrong or torn units given a fresh version)",
                s.units_rewritten
            );
        }
        if !s.notes.is_empty() {
            println!("notes:");
            for n in &s.notes {
                println!("  {n}");
            }
        }
        if self.violations.is_empty() {
            println!("violations          no violations");
        } else {
            println!("violations          {}", self.violations.len());
            for v in &self.violations {
                println!("  step {} [{}] {}", v.step, v.kind, v.what);
            }
        }
        if let Some(f) = &self.fatal {
            println!("run stopped early:  {f}");
        }
    }
}

struct Args {
    minutes: f64,
    seed: u64,
    dir: Option<PathBuf>,
    keep: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        minutes: 30.0,
        seed: 0,
        dir: None,
        keep: false,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    a.seed = now.as_nanos() as u64 % 1_000_000_007;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--minutes" => a.minutes = val("--minutes").parse().expect("--minutes: a number"),
            "--seed" => a.seed = val("--seed").parse().expect("--seed: a number"),
            "--dir" => a.dir = Some(PathBuf::from(val("--dir"))),
            "--keep" => a.keep = true,
            "--bench" => {}
            other => {
                panic!("unknown argument '{other}' (use --minutes M, --seed N, --dir PATH, --keep)")
            }
        }
    }
    a
}

fn main() {
    let args = parse_args();
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("faultrun-{}", args.seed)));
    std::fs::create_dir_all(&dir).expect("run directory");
    for d in VOLS.iter().flat_map(|v| v.pool()) {
        let _ = std::fs::remove_file(dir.join(format!("{d}.img")));
    }
    let _ = std::fs::remove_file(dir.join("target.log"));
    println!(
        "faultrun: seed {} (replay with --seed {}), {} minutes, run directory {}",
        args.seed,
        args.seed,
        args.minutes,
        dir.display()
    );
    let mut run = Run::new(args.seed, dir.clone());
    println!("target log: {}", run.target.log.display());
    let until = Instant::now() + Duration::from_secs_f64(args.minutes * 60.0);
    run.start_target("first start");
    if run.fatal.is_none() {
        run.verify_all();
    }
    while Instant::now() < until && run.fatal.is_none() {
        run.one_step();
    }
    run.finish();
    run.summary();
    let clean = run.violations.is_empty();
    drop(run);
    if clean && !args.keep {
        for d in VOLS.iter().flat_map(|v| v.pool()) {
            let _ = std::fs::remove_file(dir.join(format!("{d}.img")));
        }
    }
    std::process::exit(if clean { 0 } else { 1 });
}
