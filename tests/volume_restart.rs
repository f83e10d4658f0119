//! Superblocks across restarts: a volume re-assembles from its members in the order their
//! superblocks say (whatever the configuration's order), remembers failed members, and
//! refuses foreign or mismatched devices with a clear error.

use nvmf_raid::config::Config;
use nvmf_raid::host::{HostController, QueueOptions};
use nvmf_raid::server::Server;

const NQN: &str = "nqn.2026-11.io.nvmf-raid:restart";

fn config(dir: &std::path::Path, level: &str, devices: &[&str], members: &[&str]) -> String {
    let mut c = String::from("[reactor]\ncores = [0]\n[[listener]]\naddress = \"127.0.0.1:0\"\n");
    for d in devices {
        c += &format!("[[device]]\nname = \"{d}\"\nkind = \"file\"\npath = \"{}\"\nsize = \"6M\"\nfault_injection = true\n", dir.join(format!("{d}.img")).display());
    }
    let names: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
    c += &format!(
        "[[volume]]\nname = \"vol\"\nlevel = \"{level}\"\nmembers = [{}]\nstrip_size = \"16K\"\n",
        names.join(", ")
    );
    c += &format!("[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = \"vol\"\n");
    c
}

fn start(text: &str) -> std::io::Result<Server> {
    Server::start(&Config::parse(text).unwrap())
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

fn write(server: &Server, lba: u64, data: &[u8]) {
    let mut c =
        HostController::connect(server.ports[0].addr, NQN, &QueueOptions::default()).unwrap();
    c.set_queue_count(1).unwrap();
    let mut q = c.io_queue(1).unwrap();
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        assert!(q
            .write(1, lba + (i as u64) * 2048, 9, chunk)
            .unwrap()
            .is_success());
    }
}

fn read(server: &Server, lba: u64, len: usize) -> Vec<u8> {
    let mut c =
        HostController::connect(server.ports[0].addr, NQN, &QueueOptions::default()).unwrap();
    c.set_queue_count(1).unwrap();
    let mut q = c.io_queue(1).unwrap();
    let mut b = vec![0u8; len];
    for (i, chunk) in b.chunks_mut(1 << 20).enumerate() {
        assert!(q
            .read(1, lba + (i as u64) * 2048, 9, chunk)
            .unwrap()
            .is_success());
    }
    b
}

#[test]
fn reassembles_in_superblock_order_and_remembers_failures() {
    let dir = tempfile::tempdir().unwrap();
    let devs = ["a", "b", "c", "d"];
    let data = pattern(3 << 20, 7);
    let s = start(&config(dir.path(), "raid5", &devs, &["a", "b", "c", "d"])).unwrap();
    write(&s, 0, &data);
    s.stop();

    // Listed in another order: the superblocks put each device back in its slot.
    let s = start(&config(dir.path(), "raid5", &devs, &["d", "b", "a", "c"])).unwrap();
    assert!(
        read(&s, 0, data.len()) == data,
        "data after re-assembly in a different order"
    );
    // Fail member "c" under I/O, then restart with the device healthy again.
    s.fault("c").unwrap().fail_device(true);
    let more = pattern(1 << 20, 9);
    write(&s, 100, &more);
    assert_eq!(
        s.volume("vol").unwrap().health().failed_members(),
        vec!["c".to_string()]
    );
    s.stop();

    let s = start(&config(dir.path(), "raid5", &devs, &["a", "b", "c", "d"])).unwrap();
    let health = s.volume("vol").unwrap().health().clone();
    assert_eq!(
        health.failed_members(),
        vec!["c".to_string()],
        "the failure survives the restart"
    );
    let mut expect = data.clone();
    expect[100 * 512..100 * 512 + more.len()].copy_from_slice(&more);
    assert!(
        read(&s, 0, expect.len()) == expect,
        "degraded data after restart"
    );
    s.stop();
}

#[test]
fn refuses_foreign_and_mismatched_devices_and_takes_a_blank_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&config(dir.path(), "raid1", &["a", "b"], &["a", "b"])).unwrap();
    s.stop();
    // Another volume named differently on other devices.
    let other = config(dir.path(), "raid1", &["x", "y"], &["x", "y"])
        .replace("name = \"vol\"", "name = \"other\"")
        .replace("device = \"vol\"", "device = \"other\"");
    let s = start(&other).unwrap();
    s.stop();

    let foreign = start(&config(dir.path(), "raid1", &["a", "x"], &["a", "x"]))
        .err()
        .expect("foreign device accepted");
    assert!(
        foreign.to_string().contains("belongs to another volume"),
        "{foreign}"
    );

    // A blank device where 'b' was (a replaced disk) is taken as b's replacement.
    let replaced = start(&config(dir.path(), "raid1", &["a", "new"], &["a", "new"]))
        .expect("a blank replacement is accepted");
    let v = replaced.volume("vol").unwrap();
    assert_eq!(v.member_names(), ["a", "new"]);
    assert_ne!(
        v.state(),
        "online",
        "the replacement is rebuilt before it serves reads"
    );
    replaced.stop();

    let mismatch = start(&config(dir.path(), "raid0", &["a", "b"], &["a", "b"]))
        .err()
        .expect("level change accepted");
    assert!(mismatch.to_string().contains("level"), "{mismatch}");
}

/// A member smaller than the member size the superblocks record is refused, and the
/// message gives both sizes.
#[test]
fn a_too_small_member_is_refused_with_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&config(dir.path(), "raid1", &["a", "b"], &["a", "b"])).unwrap();
    s.stop();
    let small = config(dir.path(), "raid1", &["a", "small"], &["a", "small"])
        .replace("small.img\"\nsize = \"6M\"", "small.img\"\nsize = \"4M\"");
    let e = start(&small)
        .err()
        .expect("a member smaller than the volume's was accepted")
        .to_string();
    assert!(
        e.contains("'small' has 4194304 bytes; it needs 6291456 bytes"),
        "{e}"
    );
    assert!(
        e.contains("member size"),
        "the message says what the size is: {e}"
    );
}
