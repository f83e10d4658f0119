//! The site-link relay as a process between a host and a target: NVMe/TCP passes through it
//! with its delay, a cut resets the host's connection and refuses new ones, and after the
//! heal the host connects again and reads back what it wrote.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, spawn_target, start_relay, Proc};
use nvmf_raid::host::{HostController, QueueOptions};
use nvmf_raid::mgmt::call;
use serde_json::json;

const NQN: &str = "nqn.2026-12.io.nvmf-raid:relay";

#[test]
fn nvme_tcp_through_the_relay_survives_a_cut_and_heal() {
    let dir = tempfile::tempdir().unwrap();
    let (tport, rport) = (free_port(), free_port());
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        format!(
            "[management]\nsocket = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:{tport}\"\n[[device]]\nname = \"r\"\nkind = \"ram\"\nsize = \"16M\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = \"r\"\n",
            dir.path().join("mgmt.sock").display()
        ),
    )
    .unwrap();
    let _target = Proc(spawn_target(&cfg, dir.path()));
    let _relay = start_relay(dir.path(), "relay", rport, tport, 10);
    let ctl = dir.path().join("relay.sock");
    let addr = format!("127.0.0.1:{rport}").parse().unwrap();

    let mut c = HostController::connect(addr, NQN, &QueueOptions::default()).unwrap();
    c.set_queue_count(1).unwrap();
    let mut q = c.io_queue(1).unwrap();
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 13) as u8).collect();
    let t = Instant::now();
    assert!(q.write(1, 128, 9, &data).unwrap().is_success());
    assert!(
        t.elapsed() >= Duration::from_millis(20),
        "a write crossed a 10 ms link in {:?}",
        t.elapsed()
    );

    call(&ctl, "relay_cut", json!({"mode": "drop"})).unwrap();
    let mut b = vec![0u8; 4096];
    assert!(
        !q.read(1, 128, 9, &mut b)
            .map(|c| c.is_success())
            .unwrap_or(false),
        "I/O fails while the link is cut"
    );
    drop((q, c));
    assert!(
        HostController::connect(addr, NQN, &QueueOptions::default()).is_err(),
        "no connection while the link is cut"
    );

    let st = call(&ctl, "relay_heal", json!({})).unwrap();
    assert_eq!(st["state"], "up");
    let mut c = HostController::connect(addr, NQN, &QueueOptions::default()).unwrap();
    c.set_queue_count(1).unwrap();
    let mut q = c.io_queue(1).unwrap();
    let mut back = vec![0u8; data.len()];
    assert!(q.read(1, 128, 9, &mut back).unwrap().is_success());
    assert!(
        back == data,
        "the data written before the cut reads back after the heal"
    );
    assert!(
        call(&ctl, "relay_status", json!({})).unwrap()["refused"]
            .as_u64()
            .unwrap()
            >= 1
    );
}
