//! Shared by the volume tests: an in-memory model of a volume, checked on every read
//! over NVMe/TCP with the in-tree initiator.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nvmf_raid::host::Queue;
use nvmf_raid::mgmt::call;
use serde_json::json;

/// Start `nvmf-raid serve --config CFG` as a child process (its log appended to
/// DIR/target.log) and wait until its management socket DIR/mgmt.sock answers.
pub fn spawn_target(cfg: &std::path::Path, dir: &std::path::Path) -> Child {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("target.log"))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_nvmf-raid"))
        .args(["serve", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while call(&dir.join("mgmt.sock"), "volume_status", json!({})).is_err() {
        assert!(
            Instant::now() < deadline,
            "target did not start: {}",
            std::fs::read_to_string(dir.join("target.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// A TCP port that was free a moment ago.
/// A loopback port nothing listens on, below the kernel's ephemeral range (32768 and
/// up): a port from that range can be taken as the source port of an outgoing connection
/// between this call and the bind of whoever uses it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() * 97) % 12_000;
    for _ in 0..12_000 {
        let port = (base + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000 + 20_000;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free loopback port from 20000 to 31999")
}

pub struct Model {
    pub q: Queue,
    pub data: Vec<u8>,
    pub blocks: u64,
    /// log2 of the namespace's block size.
    pub shift: u32,
    x: u64,
}

impl Model {
    pub fn new(q: Queue, blocks: u64, seed: u64) -> Model {
        Model::with_shift(q, blocks, 9, seed)
    }

    /// A model of a namespace of `blocks` blocks of `1 << shift` bytes.
    pub fn with_shift(q: Queue, blocks: u64, shift: u32, seed: u64) -> Model {
        Model {
            q,
            data: vec![0u8; (blocks as usize) << shift],
            blocks,
            shift,
            x: seed,
        }
    }

    pub fn next(&mut self) -> u64 {
        self.x ^= self.x << 13;
        self.x ^= self.x >> 7;
        self.x ^= self.x << 17;
        self.x
    }

    /// Random writes and verified reads.
    pub fn exercise(&mut self, rounds: usize, what: &str) {
        let (bs, shift) = (1usize << self.shift, self.shift);
        for round in 0..rounds {
            let nlb = 1 + self.next() % 160.min(self.blocks - 1);
            let slba = self.next() % (self.blocks - nlb);
            let (off, len) = (slba as usize * bs, nlb as usize * bs);
            if self.next().is_multiple_of(2) {
                let d: Vec<u8> = (0..len).map(|_| self.next() as u8).collect();
                let cqe = self.q.write(1, slba, shift, &d).unwrap();
                assert!(
                    cqe.is_success(),
                    "{what}: write round {round} failed: {cqe:?}"
                );
                self.data[off..off + len].copy_from_slice(&d);
            } else {
                let mut back = vec![0u8; len];
                let cqe = self.q.read(1, slba, shift, &mut back).unwrap();
                assert!(
                    cqe.is_success(),
                    "{what}: read round {round} failed: {cqe:?}"
                );
                if back != self.data[off..off + len] {
                    let bad: Vec<usize> = (0..nlb as usize)
                        .filter(|b| {
                            back[b * bs..(b + 1) * bs]
                                != self.data[off + b * bs..off + (b + 1) * bs]
                        })
                        .collect();
                    let zero = bad
                        .iter()
                        .filter(|&&b| back[b * bs..(b + 1) * bs].iter().all(|&x| x == 0))
                        .count();
                    panic!("{what}: read of {nlb} blocks at {slba} is wrong (round {round}): blocks {:?} of it differ ({zero} of them read as zeroes)", bad.iter().map(|b| slba + *b as u64).collect::<Vec<_>>());
                }
            }
        }
    }

    pub fn verify_all(&mut self, what: &str) {
        for start in (0..self.data.len()).step_by(1 << 20) {
            let len = (1 << 20).min(self.data.len() - start);
            let mut back = vec![0u8; len];
            assert!(
                self.q
                    .read(1, (start >> self.shift) as u64, self.shift, &mut back)
                    .unwrap()
                    .is_success(),
                "{what}"
            );
            assert!(
                back == self.data[start..start + len],
                "{what}: full read-back differs at byte {start}"
            );
        }
    }
}

/// Stripes (rows) whose parity does not match their data, or whose mirror copies differ,
/// read straight from the member files DIR/m0.img.. of a stopped target; and the row count.
pub fn inconsistent_rows(
    dir: &std::path::Path,
    level: nvmf_raid::volume::layout::Level,
    members: usize,
    strip: u64,
) -> (Vec<u64>, u64) {
    use nvmf_raid::volume::raid::RESERVED_BYTES;
    use std::io::{Read, Seek, SeekFrom};
    let files: Vec<std::fs::File> = (0..members)
        .map(|m| std::fs::File::open(dir.join(format!("m{m}.img"))).unwrap())
        .collect();
    let blocks_per_member = (files[0].metadata().unwrap().len() - RESERVED_BYTES) / 512;
    let l = nvmf_raid::volume::layout::Layout::new(
        level,
        &vec![blocks_per_member; members],
        0,
        strip / 512,
    )
    .unwrap();
    let read = |member: usize, row: u64| {
        let mut f = &files[member];
        f.seek(SeekFrom::Start(RESERVED_BYTES + row * strip))
            .unwrap();
        let mut b = vec![0u8; strip as usize];
        f.read_exact(&mut b).unwrap();
        b
    };
    let bad = |row: u64| {
        if l.level.parity_count() == 0 {
            let first = read(0, row);
            return (1..members).any(|m| read(m, row) != first);
        }
        let data: Vec<Vec<u8>> = (0..l.data_per_stripe())
            .map(|i| read(l.data_slot(row, i), row))
            .collect();
        let (p, q) = stripe_parity(level, &data);
        read(l.p_slot(row), row) != p || l.q_slot(row).is_some_and(|qs| read(qs, row) != q)
    };
    (
        (0..l.stripes_per_group()).filter(|&r| bad(r)).collect(),
        l.stripes_per_group(),
    )
}

/// The parity strips a stripe of `data` strips should hold, by the level's code: P and
/// Q, or row and diagonal parity (RAID-6 DP); Q is empty for single-parity levels.
pub fn stripe_parity(
    level: nvmf_raid::volume::layout::Level,
    data: &[Vec<u8>],
) -> (Vec<u8>, Vec<u8>) {
    let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
    let code = level.parity_code().expect("a parity level");
    let two = code.strips() == 2;
    let mut p = vec![0u8; data[0].len()];
    let mut q = vec![0u8; if two { p.len() } else { 0 }];
    code.generate(&refs, &mut p, two.then_some(&mut q[..]));
    (p, q)
}

/// A single-member etcd on loopback, stopped when dropped.
pub struct EtcdServer {
    child: Child,
    pub addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh single-member etcd on loopback (the witness).
pub fn etcd() -> EtcdServer {
    use nvmf_raid::witness::Etcd;
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let url = |p: u16| format!("http://127.0.0.1:{p}");
    let child = Command::new("etcd")
        .args(["--data-dir"])
        .arg(dir.path().join("etcd"))
        .args([
            "--listen-client-urls",
            &url(client),
            "--advertise-client-urls",
            &url(client),
            "--listen-peer-urls",
            &url(peer),
        ])
        .args([
            "--initial-advertise-peer-urls",
            &url(peer),
            "--initial-cluster",
            &format!("default={}", url(peer)),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("etcd.log")).unwrap())
        .spawn()
        .expect("the etcd binary (Debian package etcd-server; scripts/test.sh installs it)");
    let server = EtcdServer {
        child,
        addr: format!("127.0.0.1:{client}").parse().unwrap(),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Etcd::new(server.addr).grant(5).is_err() {
        assert!(Instant::now() < deadline, "etcd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// A child process killed and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Poll `f` every 50 ms until it holds; panics with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `nvmf-raid relay` from 127.0.0.1:`listen` to 127.0.0.1:`to` with `delay_ms` each way,
/// controlled through DIR/NAME.sock.
pub fn start_relay(dir: &std::path::Path, name: &str, listen: u16, to: u16, delay_ms: u32) -> Proc {
    let ctl = dir.join(format!("{name}.sock"));
    let child = Command::new(env!("CARGO_BIN_EXE_nvmf-raid"))
        .args([
            "relay",
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--to",
            &format!("127.0.0.1:{to}"),
            "--delay-ms",
            &delay_ms.to_string(),
            "--control",
        ])
        .arg(&ctl)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("relay started", Duration::from_secs(10), || {
        call(&ctl, "relay_status", json!({})).is_ok()
    });
    Proc(child)
}

/// `len` pseudo-random bytes from `seed` (xorshift).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A controller on the loopback `port` for `nqn` with one I/O queue: (controller, queue,
/// log2 of the block size, blocks of namespace 1). Keep the controller alive as long as
/// the queue: dropping it ends the association.
pub fn io_queue_on(
    port: u16,
    nqn: &str,
    opts: &nvmf_raid::host::QueueOptions,
) -> (nvmf_raid::host::HostController, Queue, u32, u64) {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = nvmf_raid::host::HostController::connect(addr, nqn, opts).unwrap();
    c.set_queue_count(1).unwrap();
    let (shift, blocks) = c.namespace_geometry(1).unwrap();
    let q = c.io_queue(1).unwrap();
    (c, q, shift, blocks)
}
