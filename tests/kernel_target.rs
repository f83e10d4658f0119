//! The remote leg against the Linux kernel target: nvmet in the QEMU guest exports a RAM
//! disk over NVMe/TCP (tests/e2e/guest-nvmet.sh), forwarded to a loopback port; nvmf-raid
//! on the host uses it as the second member of a RAID-1 with a local file.
//! - writes through nvmf-raid land on the kernel target, byte for byte as on the local
//!   member (read back over a direct connection to the kernel target);
//! - the kernel target drops the subsystem from its port: the member fails, host writes
//!   go on without an error;
//! - the port comes back: the link reconnects by itself, `volume re-add` catches the
//!   member up, and with the local member failed every read is served by the kernel
//!   target and returns the newest data.
//!
//! It boots the guest, so `cargo test` leaves it out (ignored); scripts/e2e-kernel-target.sh
//! runs it (a step of scripts/test.sh).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, pattern, spawn_target, wait_for, Proc};
use nvmf_raid::host::{HostController, Queue, QueueOptions};
use nvmf_raid::mgmt::call;
use serde_json::{json, Value};

const KERNEL_NQN: &str = "nqn.2026-12.io.nvmf-raid:kernel-target";
const NQN: &str = "nqn.2026-12.io.nvmf-raid:over-kernel-target";
const MIB: usize = 1 << 20;
/// The RAID-1 keeps its superblock and bitmap in the first MiB of each member.
const RESERVED: usize = MIB;
/// Volume bytes the test writes (the members are 64 MiB).
const SPAN: usize = 8 * MIB;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Guest {
    qemu: Proc,
    log: PathBuf,
    ctl_port: u16,
}

impl Guest {
    fn boot(dir: &Path, nvme_port: u16) -> Guest {
        let ctl_port = free_port();
        let log = dir.join("guest.log");
        let child = Command::new(repo().join("scripts/guest/run.sh"))
            .arg(repo().join("tests/e2e/guest-nvmet.sh"))
            .env("SUBNQN", KERNEL_NQN)
            .env("E2E_RAM_MIB", "64")
            .env("GUEST_LOG", &log)
            .env("GUEST_HOSTFWD", format!("tcp:127.0.0.1:{nvme_port}-10.0.2.15:4420,tcp:127.0.0.1:{ctl_port}-10.0.2.15:5000"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("scripts/guest/run.sh");
        let mut g = Guest {
            qemu: Proc(child),
            log,
            ctl_port,
        };
        g.wait_line("NVMET READY", Duration::from_secs(900));
        g
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_line(&mut self, line: &str, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        while !self.console().lines().any(|l| l.trim_end() == line) {
            if let Ok(Some(st)) = self.qemu.0.try_wait() {
                panic!(
                    "the guest ended ({st}) before '{line}':\n{}",
                    self.console()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no '{line}' from the guest within {within:?}:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Send a command to the guest's control port until it says it was done (the guest
    /// may not be listening yet when the first one arrives).
    fn command(&mut self, cmd: &str) {
        let done = format!("NVMET {cmd} DONE");
        let count = |c: &str| c.lines().filter(|l| l.trim_end() == done).count();
        let before = count(&self.console());
        for _ in 0..60 {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.ctl_port)) {
                let _ = s.write_all(format!("{cmd}\n").as_bytes());
            }
            for _ in 0..25 {
                if count(&self.console()) > before {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        panic!("the guest did not carry out '{cmd}':\n{}", self.console());
    }

    /// End the guest script and wait for its status (0: every command worked).
    fn finish(mut self) {
        self.command("done");
        // Kept for the record: the guest's kernel and what its target logged.
        let keep = repo().join("target/e2e/kernel-target-guest.log");
        let _ = std::fs::create_dir_all(keep.parent().unwrap());
        let _ = std::fs::copy(&self.log, &keep);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(st) = self.qemu.0.try_wait().unwrap() {
                assert!(
                    st.success(),
                    "the guest script failed ({st}):\n{}",
                    self.console()
                );
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the guest did not power off:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Guest {
    /// SIGTERM first: run.sh then stops QEMU itself (a SIGKILL would leave it running).
    fn drop(&mut self) {
        if matches!(self.qemu.0.try_wait(), Ok(None)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.qemu.0.id() as i32),
                nix::sys::signal::SIGTERM,
            );
            for _ in 0..100 {
                if !matches!(self.qemu.0.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn config(dir: &Path, port: u16, kernel_port: u16) -> String {
    format!(
        "[reactor]\ncores = [0]\n[management]\nsocket = \"{sock}\"\n[metrics]\naddress = \"\"\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n\
         [[device]]\nname = \"local\"\nkind = \"file\"\npath = \"{img}\"\nsize = \"64M\"\n\
         [[device]]\nname = \"kernel\"\nkind = \"nvmf\"\naddress = \"127.0.0.1:{kernel_port}\"\nsubnqn = \"{KERNEL_NQN}\"\nio_timeout_ms = 10000\nconnect_timeout_ms = 10000\nreconnect_max_ms = 1000\n\
         [[volume]]\nname = \"mirror\"\nlevel = \"raid1\"\nmembers = [\"local\", \"kernel\"]\n\
         [[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = \"mirror\"\n",
        sock = dir.join("mgmt.sock").display(),
        img = dir.join("local.img").display(),
    )
}

fn io_queue(port: u16, nqn: &str) -> (HostController, Queue, u32) {
    // Under emulation the guest's target can be slow: a long I/O timeout.
    let opts = QueueOptions {
        timeout: Duration::from_secs(60),
        ..QueueOptions::default()
    };
    let (c, q, shift, _) = common::io_queue_on(port, nqn, &opts);
    (c, q, shift)
}

fn read(q: &mut Queue, shift: u32, offset: usize, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for (i, chunk) in out.chunks_mut(MIB).enumerate() {
        let at = offset + i * MIB;
        let cqe = q.read(1, (at >> shift) as u64, shift, chunk).unwrap();
        assert!(cqe.is_success(), "read at {at}: {cqe:?}");
    }
    out
}

fn write(q: &mut Queue, shift: u32, offset: usize, data: &[u8]) {
    for (i, chunk) in data.chunks(MIB).enumerate() {
        let at = offset + i * MIB;
        let cqe = q.write(1, (at >> shift) as u64, shift, chunk).unwrap();
        assert!(cqe.is_success(), "write at {at} through nvmf-raid: {cqe:?}");
    }
}

/// The kernel target's copy of the volume's first `SPAN` bytes, read over a direct
/// connection, and the local member's, from its file.
fn member_copies(dir: &Path, kernel_port: u16) -> (Vec<u8>, Vec<u8>) {
    let (_c, mut q, shift) = io_queue(kernel_port, KERNEL_NQN);
    let remote = read(&mut q, shift, RESERVED, SPAN);
    let file = std::fs::read(dir.join("local.img")).unwrap();
    (remote, file[RESERVED..RESERVED + SPAN].to_vec())
}

fn rpc(dir: &Path, method: &str, params: Value) -> Value {
    call(&dir.join("mgmt.sock"), method, params).unwrap_or_else(|e| panic!("{method}: {e}"))
}

fn member_state(dir: &Path, member: usize) -> String {
    rpc(dir, "volume_status", json!({"name": "mirror"}))[0]["members"][member]["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
#[ignore = "boots the QEMU guest (the Linux kernel target): run by scripts/e2e-kernel-target.sh"]
fn a_raid1_member_on_the_linux_kernel_target_fails_reconnects_and_is_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let kernel_port = free_port();
    let mut guest = Guest::boot(dir.path(), kernel_port);

    let port = free_port();
    let cfg = dir.path().join("t.toml");
    std::fs::write(&cfg, config(dir.path(), port, kernel_port)).unwrap();
    let _target = Proc(spawn_target(&cfg, dir.path()));
    let (_c, mut q, shift) = io_queue(port, NQN);
    let first = pattern(1, SPAN);
    write(&mut q, shift, 0, &first);
    assert!(
        read(&mut q, shift, 0, SPAN) == first,
        "nvmf-raid reads back what it wrote"
    );
    let (remote, local) = member_copies(dir.path(), kernel_port);
    assert!(
        remote == first && local == first,
        "both members hold the writes: the kernel target's copy {} the data",
        if remote == first {
            "matches"
        } else {
            "differs from"
        }
    );

    // The kernel target drops the subsystem from its port: the member fails, not the host.
    guest.command("cut");
    let second = pattern(2, 2 * MIB);
    write(&mut q, shift, 3 * MIB, &second);
    wait_for(
        "the kernel target's member failed",
        Duration::from_secs(30),
        || member_state(dir.path(), 1) == "failed",
    );
    assert_eq!(member_state(dir.path(), 0), "active");

    guest.command("restore");
    wait_for(
        "the link to the kernel target back",
        Duration::from_secs(60),
        || rpc(dir.path(), "remote_status", json!({}))["devices"][0]["connected"] == true,
    );
    eprintln!(
        "kernel target: link back: {}",
        rpc(dir.path(), "remote_status", json!({}))["devices"][0]
    );
    let r = rpc(
        dir.path(),
        "volume_readd_member",
        json!({"volume": "mirror", "member": "kernel"}),
    );
    eprintln!(
        "kernel target: re-added: catch_up_regions {} of the volume's rebuild {}",
        r["catch_up_regions"], r["rebuild"]
    );
    assert!(
        r["catch_up_regions"].as_u64().is_some_and(|n| n >= 1),
        "a catch-up from the bitmap: {r}"
    );
    wait_for("the catch-up finished", Duration::from_secs(300), || {
        member_state(dir.path(), 1) == "active"
    });
    let mut expected = first.clone();
    expected[3 * MIB..5 * MIB].copy_from_slice(&second);
    let (remote, _) = member_copies(dir.path(), kernel_port);
    assert!(
        remote == expected,
        "the kernel target's copy holds what was written while it was cut off"
    );

    // Only the kernel target serves now.
    rpc(
        dir.path(),
        "volume_fail_member",
        json!({"volume": "mirror", "member": "local"}),
    );
    assert!(
        read(&mut q, shift, 0, SPAN) == expected,
        "reads served by the kernel target return the newest data"
    );
    guest.finish();
}
