//! Concurrent writers on two reactors hitting the same stripes (different blocks): every
//! block must read back as written, and afterwards, read straight from the member files,
//! every stripe's P and Q must match its data.

mod common;

use std::io::{Read, Seek, SeekFrom};

use nvmf_raid::config::Config;
use nvmf_raid::host::{Data, HostController, Queue, QueueOptions};
use nvmf_raid::nvmf::command;
use nvmf_raid::nvmf::spec::io;
use nvmf_raid::server::Server;
use nvmf_raid::volume::layout::{Layout, Level};
use nvmf_raid::volume::raid::RESERVED_BYTES;

const STRIP: u64 = 16384;

fn start(dir: &std::path::Path, level: &str, members: usize, group: usize) -> Server {
    let mut c =
        String::from("[reactor]\ncores = [0, 1]\n[[listener]]\naddress = \"127.0.0.1:0\"\n");
    for m in 0..members {
        c += &format!(
            "[[device]]\nname = \"m{m}\"\nkind = \"file\"\npath = \"{}\"\nsize = \"5M\"\n",
            dir.join(format!("m{m}.img")).display()
        );
    }
    let names: Vec<String> = (0..members).map(|m| format!("\"m{m}\"")).collect();
    c += &format!("[[volume]]\nname = \"vol\"\nlevel = \"{level}\"\nmembers = [{}]\nstrip_size = {STRIP}\ngroup_size = {group}\n", names.join(", "));
    c += "[[subsystem]]\nnqn = \"nqn.2026-11.io.nvmf-raid:vol\"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = \"vol\"\n";
    Server::start(&Config::parse(&c).unwrap()).unwrap()
}

fn check_parity(dir: &std::path::Path, level: Level, members: usize, group: usize) {
    let files: Vec<std::fs::File> = (0..members)
        .map(|m| std::fs::File::open(dir.join(format!("m{m}.img"))).unwrap())
        .collect();
    let size = files[0].metadata().unwrap().len();
    let blocks = (size - RESERVED_BYTES) / 512;
    let l = Layout::new(level, &vec![blocks; members], group, STRIP / 512).unwrap();
    let read = |member: usize, stripe: u64| {
        let mut f = &files[member];
        f.seek(SeekFrom::Start(RESERVED_BYTES + stripe * STRIP))
            .unwrap();
        let mut b = vec![0u8; STRIP as usize];
        f.read_exact(&mut b).unwrap();
        b
    };
    for g in 0..l.groups() {
        for s in 0..l.stripes_per_group() {
            let data: Vec<Vec<u8>> = (0..l.data_per_stripe())
                .map(|i| read(l.member_of(g, l.data_slot(s, i)), s))
                .collect();
            let (p, q) = common::stripe_parity(level, &data);
            assert!(
                read(l.member_of(g, l.p_slot(s)), s) == p,
                "{level:?} group {g} stripe {s}: P does not match the data"
            );
            if let Some(qs) = l.q_slot(s) {
                assert!(
                    read(l.member_of(g, qs), s) == q,
                    "{level:?} group {g} stripe {s}: Q does not match the data"
                );
            }
        }
    }
}

fn run(level_name: &str, level: Level, members: usize, group: usize) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), level_name, members, group);
    let mut c = HostController::connect(
        server.ports[0].addr,
        "nqn.2026-11.io.nvmf-raid:vol",
        &QueueOptions::default(),
    )
    .unwrap();
    const QUEUES: u64 = 4;
    c.set_queue_count(QUEUES as u16).unwrap();
    let (_, blocks) = c.namespace_geometry(1).unwrap();
    let queues: Vec<Queue> = (1..=QUEUES as u16)
        .map(|q| c.io_queue(q).unwrap())
        .collect();
    // 4-block units; queue i owns the strips j with j % QUEUES == i, so writes of
    // different queues meet in the same rows of the same stripes.
    let units = blocks / 4;
    let units_per_strip = STRIP / 2048;
    let threads: Vec<_> = queues
        .into_iter()
        .enumerate()
        .map(|(i, mut q)| {
            std::thread::spawn(move || {
                // Keep 32 writes in flight, each to a different unit: they overlap in
                // stripes with each other and with the other queues' writes.
                let mine: Vec<u64> = (0..units)
                    .filter(|u| (u / units_per_strip) % QUEUES == i as u64)
                    .collect();
                let bufs: Vec<Vec<u8>> = (0..600u64)
                    .map(|n| vec![(n as u8) ^ (i as u8 * 61); 2048])
                    .collect();
                let mut last = std::collections::HashMap::new();
                let mut next = 0usize;
                let mut done = 0usize;
                while done < bufs.len() {
                    while next < bufs.len() && q.outstanding() < 32 {
                        let u = mine[(next * 7) % mine.len()];
                        let sqe = command::rw_sqe(io::WRITE, 0, 1, u * 4, 4, 2048, false);
                        q.submit(sqe, Data::ToController(bufs[next].as_ptr(), 2048))
                            .unwrap();
                        last.insert(u, next);
                        next += 1;
                    }
                    done += q.poll(&mut |_, cqe, _| assert!(cqe.is_success())).unwrap();
                }
                for (u, n) in last {
                    let mut back = vec![0u8; 2048];
                    assert!(q.read(1, u * 4, 9, &mut back).unwrap().is_success());
                    assert!(back == bufs[n], "queue {i} unit {u}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(c);
    server.stop();
    check_parity(dir.path(), level, members, group);
}

#[test]
fn raid5_concurrent_writers_keep_parity() {
    run("raid5", Level::Raid5, 4, 0);
}

#[test]
fn raid6_concurrent_writers_keep_parity() {
    run("raid6", Level::Raid6, 5, 0);
}

#[test]
fn raid6_dp_concurrent_writers_keep_parity() {
    run("raid6-dp", Level::Raid6Dp, 6, 0);
}
