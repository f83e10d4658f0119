//! Member failures under load: a model of the volume is checked on every read while members
//! fail (injected I/O errors) up to the level's tolerance; one more failure takes the
//! volume offline, after which every I/O fails and none returns wrong data.

mod common;

use common::Model;
use nvmf_raid::config::Config;
use nvmf_raid::host::{HostController, QueueOptions};
use nvmf_raid::server::Server;

const NQN: &str = "nqn.2026-11.io.nvmf-raid:degraded";

fn start(dir: &std::path::Path, level: &str, members: usize, group: usize) -> Server {
    let mut c =
        String::from("[reactor]\ncores = [0, 1]\n[[listener]]\naddress = \"127.0.0.1:0\"\n");
    for m in 0..members {
        c += &format!(
            "[[device]]\nname = \"m{m}\"\nkind = \"file\"\npath = \"{}\"\nsize = \"6M\"\nfault_injection = true\n",
            dir.join(format!("m{m}.img")).display()
        );
    }
    let names: Vec<String> = (0..members).map(|m| format!("\"m{m}\"")).collect();
    let strip = if level == "raid3" {
        ""
    } else {
        "strip_size = \"16K\"\n"
    };
    c += &format!("[[volume]]\nname = \"vol\"\nlevel = \"{level}\"\nmembers = [{}]\n{strip}group_size = {group}\n", names.join(", "));
    c += &format!("[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = \"vol\"\n");
    Server::start(&Config::parse(&c).unwrap()).unwrap()
}

fn run(level: &str, members: usize, group: usize, fail_order: &[usize]) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), level, members, group);
    let mut c =
        HostController::connect(server.ports[0].addr, NQN, &QueueOptions::default()).unwrap();
    c.set_queue_count(1).unwrap();
    let (shift, blocks) = c.namespace_geometry(1).unwrap();
    let q = c.io_queue(1).unwrap();
    let mut m = Model::with_shift(q, blocks, shift, 0xDEADBEEF);
    m.exercise(120, "healthy");
    let vol = server.volume("vol").unwrap().clone();
    let (last, within) = fail_order.split_last().unwrap();
    for (n, &member) in within.iter().enumerate() {
        server
            .fault(&format!("m{member}"))
            .unwrap()
            .fail_device(true);
        m.exercise(150, &format!("{level} with {} failed", n + 1));
        assert!(
            vol.health().is_failed(member),
            "member m{member} was not marked failed"
        );
        assert!(vol.health().online());
        m.verify_all(&format!("{level} degraded"));
    }
    // One failure beyond the tolerance: the volume stops serving, and says so.
    server.fault(&format!("m{last}")).unwrap().fail_device(true);
    let mut saw_error = false;
    for _ in 0..40 {
        let lba = m.next() % (blocks - 64);
        let mut back = vec![0u8; 64 << shift];
        let cqe = m.q.read(1, lba, shift, &mut back).unwrap();
        if cqe.is_success() {
            assert!(!saw_error, "served I/O after going offline");
            assert!(
                back == m.data[lba as usize * 512..(lba as usize + 64) * 512],
                "{level}: wrong data while failing"
            );
        } else {
            saw_error = true;
        }
    }
    assert!(
        saw_error,
        "{level}: the volume kept serving beyond its tolerance"
    );
    assert!(!vol.health().online());
    drop(m);
    server.stop();
}

#[test]
fn raid1_survives_two_of_three_failures() {
    run("raid1", 3, 0, &[0, 2, 1]);
}

#[test]
fn raid10_survives_one_failure_per_mirror() {
    run("raid10", 4, 2, &[1, 2, 0]);
}

#[test]
fn raid5_survives_one_failure() {
    run("raid5", 4, 0, &[2, 0]);
}

#[test]
fn raid6_survives_two_failures() {
    run("raid6", 6, 0, &[1, 4, 2]);
}

#[test]
fn raid4_survives_losing_the_parity_member() {
    run("raid4", 4, 0, &[3, 1]);
}

#[test]
fn raid60_survives_two_failures_per_group() {
    run("raid60", 8, 4, &[0, 1, 5, 6, 2]);
}

#[test]
fn raid3_survives_one_failure() {
    run("raid3", 5, 0, &[2, 0]);
}

#[test]
fn raid6_dp_survives_two_failures() {
    run("raid6-dp", 6, 0, &[1, 4, 2]);
}
