//! RAID volumes served over NVMe/TCP: random writes of random sizes and offsets through the
//! in-tree host, every read compared with an in-memory model of the volume. Members are
//! files, so member I/O goes through io_uring and completes asynchronously.

use nvmf_raid::config::Config;
use nvmf_raid::host::{HostController, QueueOptions};
use nvmf_raid::server::Server;

fn config(dir: &std::path::Path, level: &str, members: usize, group: usize) -> String {
    let mut c =
        String::from("[reactor]\ncores = [0, 1]\n[[listener]]\naddress = \"127.0.0.1:0\"\n");
    for m in 0..members {
        c += &format!(
            "[[device]]\nname = \"m{m}\"\nkind = \"file\"\npath = \"{}\"\nsize = \"{}M\"\n",
            dir.join(format!("m{m}.img")).display(),
            6 + m
        );
    }
    let names: Vec<String> = (0..members).map(|m| format!("\"m{m}\"")).collect();
    c += &format!("[[volume]]\nname = \"vol\"\nlevel = \"{level}\"\nmembers = [{}]\nstrip_size = \"16K\"\ngroup_size = {group}\n", names.join(", "));
    c += "[[subsystem]]\nnqn = \"nqn.2026-11.io.nvmf-raid:vol\"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = \"vol\"\n";
    c
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn model_test(level: &str, members: usize, group: usize) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(&config(dir.path(), level, members, group)).unwrap();
    let server = Server::start(&cfg).unwrap();
    let mut c = HostController::connect(
        server.ports[0].addr,
        "nqn.2026-11.io.nvmf-raid:vol",
        &QueueOptions::default(),
    )
    .unwrap();
    c.set_queue_count(1).unwrap();
    let (shift, blocks) = c.namespace_geometry(1).unwrap();
    let mut q = c.io_queue(1).unwrap();
    let mut model = vec![0u8; (blocks << shift) as usize];
    let mut rng = Rng(0x1234_5678 + members as u64);
    for round in 0..150 {
        let nlb = 1 + rng.next() % 256;
        let slba = rng.next() % (blocks - nlb);
        let (off, len) = ((slba << shift) as usize, (nlb << shift) as usize);
        if !rng.next().is_multiple_of(3) {
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            assert!(
                q.write(1, slba, shift, &data).unwrap().is_success(),
                "{level} write round {round}"
            );
            model[off..off + len].copy_from_slice(&data);
        } else {
            let mut back = vec![0u8; len];
            assert!(
                q.read(1, slba, shift, &mut back).unwrap().is_success(),
                "{level} read round {round}"
            );
            assert!(
                back == model[off..off + len],
                "{level}: read of {nlb} blocks at {slba} differs from the model (round {round})"
            );
        }
    }
    // A final full read-back of everything written.
    let chunk = 1 << 20;
    for start in (0..model.len()).step_by(chunk) {
        let len = chunk.min(model.len() - start);
        let mut back = vec![0u8; len];
        assert!(q
            .read(1, (start >> shift) as u64, shift, &mut back)
            .unwrap()
            .is_success());
        assert!(
            back == model[start..start + len],
            "{level}: final read-back at byte {start}"
        );
    }
    drop(q);
    server.stop();
}

#[test]
fn raid0_matches_model() {
    model_test("raid0", 3, 0);
}

#[test]
fn raid1_matches_model() {
    model_test("raid1", 3, 0);
}

#[test]
fn raid10_matches_model() {
    model_test("raid10", 4, 2);
}

#[test]
fn concat_matches_model() {
    model_test("concat", 3, 0);
}

#[test]
fn raid4_matches_model() {
    model_test("raid4", 4, 0);
}

#[test]
fn raid5_matches_model() {
    model_test("raid5", 4, 0);
}

#[test]
fn raid6_matches_model() {
    model_test("raid6", 5, 0);
}

#[test]
fn raid50_matches_model() {
    model_test("raid50", 6, 3);
}

#[test]
fn raid60_matches_model() {
    model_test("raid60", 8, 4);
}

#[test]
fn raid6_dp_matches_model() {
    model_test("raid6-dp", 6, 0);
}
