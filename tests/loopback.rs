//! Loopback integration tests: the real target (reactors, io_uring, devices) driven by the
//! in-tree NVMe/TCP host over 127.0.0.1.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nvmf_raid::config::Config;
use nvmf_raid::host::{Data, HostController, Queue, QueueOptions};
use nvmf_raid::nvmf::command::{self, Sqe};
use nvmf_raid::nvmf::pdu;
use nvmf_raid::nvmf::spec::{self, admin, io, status, DISCOVERY_NQN};
use nvmf_raid::server::Server;

const NQN_RAM: &str = "nqn.2026-11.io.nvmf-raid:test-ram";
const NQN_FILE: &str = "nqn.2026-11.io.nvmf-raid:test-file";
const NQN_LOCKED: &str = "nqn.2026-11.io.nvmf-raid:test-locked";
const ALLOWED_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-0000-4000-8000-000000000001";

struct Fixture {
    server: Option<Server>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn start(cores: &str) -> Fixture {
        Fixture::start_with(cores, "adaptive")
    }

    fn start_with(cores: &str, polling: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            r#"
[reactor]
cores = [{cores}]
polling = "{polling}"
[limits]
max_io_queues = 16
[[listener]]
address = "127.0.0.1:0"
[[device]]
name = "ram0"
kind = "ram"
size = "64M"
[[device]]
name = "file0"
kind = "file"
path = "{path}"
size = "64M"
[[device]]
name = "ram1"
kind = "ram"
size = "8M"
[[subsystem]]
nqn = "{NQN_RAM}"
allow_any_host = true
[[subsystem.namespace]]
device = "ram0"
[[subsystem]]
nqn = "{NQN_FILE}"
allow_any_host = true
[[subsystem.namespace]]
device = "file0"
[[subsystem]]
nqn = "{NQN_LOCKED}"
hosts = ["{ALLOWED_HOST}"]
[[subsystem.namespace]]
device = "ram1"
"#,
            path = dir.path().join("file0.img").display()
        );
        let cfg = Config::parse(&cfg).unwrap();
        let server = Server::start(&cfg).unwrap();
        let addr = server.ports[0].addr;
        Fixture {
            server: Some(server),
            addr,
            _dir: dir,
        }
    }

    fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    /// Wait until the target holds no connection, controller or pool buffer.
    fn assert_drained(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (conns, bufs) = self.server().shared.resource_use();
            let ctrls = self.server().target().controller_count();
            if conns == 0 && bufs == 0 && ctrls == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "target still holds {conns} connections, {bufs} buffers, {ctrls} controllers"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
    }
}

fn opts() -> QueueOptions {
    QueueOptions::default()
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn connect_io(
    f: &Fixture,
    nqn: &str,
    o: &QueueOptions,
    queues: u16,
) -> (HostController, Vec<Queue>) {
    let mut c = HostController::connect(f.addr, nqn, o).unwrap();
    assert_eq!(c.set_queue_count(queues).unwrap(), queues);
    let qs = (1..=queues).map(|q| c.io_queue(q).unwrap()).collect();
    (c, qs)
}

#[test]
fn identify_controller_namespace_and_logs() {
    let f = Fixture::start("0");
    let mut c = HostController::connect(f.addr, NQN_RAM, &opts()).unwrap();
    let id = &c.identify;
    assert_eq!(u16::from_le_bytes([id[78], id[79]]), c.cntlid);
    assert_eq!(&id[768..768 + NQN_RAM.len()], NQN_RAM.as_bytes());
    assert_eq!(id[111], 1, "I/O controller");
    let (shift, blocks) = c.namespace_geometry(1).unwrap();
    assert_eq!((shift, blocks), (9, (64 << 20) >> 9));
    let list = c.identify_raw(2, 0).unwrap();
    assert_eq!(u32::from_le_bytes(list[0..4].try_into().unwrap()), 1);
    assert_eq!(u32::from_le_bytes(list[4..8].try_into().unwrap()), 0);
    let desc = c.identify_raw(3, 1).unwrap();
    assert_eq!((desc[0], desc[1]), (1, 8), "EUI-64 descriptor first");
    // An inactive namespace reads as zeroes; an unknown CNS is an error.
    assert!(c.identify_raw(0, 7).unwrap().iter().all(|b| *b == 0));
    assert!(c.identify_raw(0x42, 0).is_err());
    let smart = c.get_log_page(spec::log::SMART, 512).unwrap();
    assert_eq!(smart[3], 100, "available spare");
    let effects = c.get_log_page(spec::log::COMMAND_EFFECTS, 4096).unwrap();
    assert_eq!(effects[1024 + io::WRITE as usize * 4] & 3, 3);
    assert!(c.get_log_page(0x33, 512).is_err());
    c.keep_alive().unwrap();
    c.shutdown().unwrap();
    f.assert_drained();
}

#[test]
fn namespace_ids_are_stable_across_restarts() {
    let nguid = |f: &Fixture| {
        let mut c = HostController::connect(f.addr, NQN_RAM, &opts()).unwrap();
        c.identify_raw(0, 1).unwrap()[104..128].to_vec()
    };
    let a = nguid(&Fixture::start("0"));
    let b = nguid(&Fixture::start("0"));
    assert_eq!(a, b);
    assert!(a.iter().any(|x| *x != 0));
}

/// Returns how many reads completed in their data PDU (no response capsule).
fn write_read_verify(f: &Fixture, nqn: &str, o: &QueueOptions) -> u64 {
    let (_c, mut qs) = connect_io(f, nqn, o, 1);
    let q = &mut qs[0];
    let mut lba = 0u64;
    for (i, len) in [
        512usize,
        1024,
        4096,
        8192,
        8704,
        65536,
        131072,
        262144,
        1 << 20,
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(len, i as u64 + 7);
        let cqe = q.write(1, lba, 9, &data).unwrap();
        assert!(cqe.is_success(), "write {len}: {cqe:?}");
        let mut back = vec![0u8; len];
        let cqe = q.read(1, lba, 9, &mut back).unwrap();
        assert!(cqe.is_success(), "read {len}: {cqe:?}");
        assert!(back == data, "data mismatch at size {len}");
        lba += (len as u64 >> 9) + 3;
    }
    q.completed_in_data
}

#[test]
fn read_write_verify_all_sizes_without_digests() {
    let f = Fixture::start("0");
    assert_eq!(
        write_read_verify(&f, NQN_RAM, &opts()),
        0,
        "SUCCESS flag used with SQ flow control on"
    );
    write_read_verify(&f, NQN_FILE, &opts());
}

#[test]
fn reads_complete_in_their_data_pdu_without_sq_flow_control() {
    let f = Fixture::start("0");
    for digests in [false, true] {
        let o = QueueOptions {
            disable_sqflow: true,
            hdgst: digests,
            ddgst: digests,
            ..opts()
        };
        // Every one of the nine reads ends with the SUCCESS flag and no response capsule.
        assert_eq!(write_read_verify(&f, NQN_RAM, &o), 9, "digests {digests}");
        assert_eq!(write_read_verify(&f, NQN_FILE, &o), 9, "digests {digests}");
    }
}

#[test]
fn read_write_verify_all_sizes_with_digests() {
    let f = Fixture::start("0");
    let o = QueueOptions {
        hdgst: true,
        ddgst: true,
        ..opts()
    };
    write_read_verify(&f, NQN_RAM, &o);
    write_read_verify(&f, NQN_FILE, &o);
}

#[test]
fn large_write_goes_through_r2t_and_split_h2c_data() {
    let f = Fixture::start("0");
    let (_c, mut qs) = connect_io(&f, NQN_FILE, &opts(), 1);
    let q = &mut qs[0];
    // Force the R2T path even for a small write, and H2CData split at maxh2cdata for a big one.
    q.in_capsule_max = 0;
    assert!(q.maxh2cdata < 1 << 20);
    for (len, lba) in [(4096usize, 100u64), (1 << 20, 4096)] {
        let data = pattern(len, len as u64);
        assert!(q.write(1, lba, 9, &data).unwrap().is_success());
        let mut back = vec![0u8; len];
        assert!(q.read(1, lba, 9, &mut back).unwrap().is_success());
        assert!(back == data);
    }
}

#[test]
fn flush_write_zeroes_and_deallocate() {
    let f = Fixture::start("0");
    let (_c, mut qs) = connect_io(&f, NQN_FILE, &opts(), 1);
    let q = &mut qs[0];
    let data = pattern(65536, 3);
    assert!(q.write(1, 0, 9, &data).unwrap().is_success());
    assert!(q
        .execute(
            Sqe {
                opcode: io::FLUSH,
                nsid: 1,
                ..Default::default()
            },
            Data::None
        )
        .unwrap()
        .is_success());
    // Write Zeroes over blocks 0..8 (4 KiB).
    let wz = command::rw_sqe(io::WRITE_ZEROES, 0, 1, 0, 8, 0, false);
    assert!(q.execute(wz, Data::None).unwrap().is_success());
    // Deallocate blocks 64..128 (32 KiB at 32 KiB).
    let mut ranges = [0u8; 16];
    ranges[4..8].copy_from_slice(&64u32.to_le_bytes());
    ranges[8..16].copy_from_slice(&64u64.to_le_bytes());
    let mut dsm = Sqe {
        opcode: io::DATASET_MANAGEMENT,
        nsid: 1,
        ..Default::default()
    };
    dsm.cdw[1] = 1 << 2;
    assert!(q
        .execute(dsm, Data::ToController(ranges.as_ptr(), 16))
        .unwrap()
        .is_success());
    let mut back = vec![0u8; 65536];
    assert!(q.read(1, 0, 9, &mut back).unwrap().is_success());
    assert!(back[..4096].iter().all(|b| *b == 0), "write zeroes");
    assert_eq!(back[4096..32768], data[4096..32768], "untouched");
    assert!(back[32768..].iter().all(|b| *b == 0), "deallocated");
}

#[test]
fn errors_out_of_range_unknown_opcode_and_bad_namespace() {
    let f = Fixture::start("0");
    let (_c, mut qs) = connect_io(&f, NQN_RAM, &opts(), 1);
    let q = &mut qs[0];
    let mut buf = vec![0u8; 4096];
    let blocks = (64u64 << 20) >> 9;
    assert_eq!(
        q.read(1, blocks - 4, 9, &mut buf).unwrap().status_code(),
        status::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        q.read(9, 0, 9, &mut buf).unwrap().status_code(),
        status::INVALID_NAMESPACE
    );
    let cqe = q
        .execute(
            Sqe {
                opcode: 0x7E,
                nsid: 1,
                ..Default::default()
            },
            Data::None,
        )
        .unwrap();
    assert_eq!(cqe.status_code(), status::INVALID_OPCODE);
    // The queue keeps working after errors.
    assert!(q.read(1, 0, 9, &mut buf).unwrap().is_success());
}

#[test]
fn many_queues_on_two_reactors() {
    let f = Fixture::start("0,1");
    let (_c, mut qs) = connect_io(&f, NQN_RAM, &opts(), 8);
    let threads: Vec<_> = qs
        .drain(..)
        .enumerate()
        .map(|(i, mut q)| {
            std::thread::spawn(move || {
                for round in 0..20u64 {
                    let lba = (i as u64 * 4096) + round * 64;
                    let data = pattern(32768, i as u64 * 1000 + round);
                    assert!(q.write(1, lba, 9, &data).unwrap().is_success());
                    let mut back = vec![0u8; 32768];
                    assert!(q.read(1, lba, 9, &mut back).unwrap().is_success());
                    assert!(back == data, "queue {i} round {round}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn second_connect_on_same_qid_and_bad_sqsize_are_refused() {
    let f = Fixture::start("0");
    let (c, _qs) = connect_io(&f, NQN_RAM, &opts(), 2);
    let mut q = Queue::open(f.addr, &opts()).unwrap();
    assert!(
        q.connect(1, c.cntlid, NQN_RAM, &opts()).is_err(),
        "qid 1 is taken"
    );
    let mut q = Queue::open(
        f.addr,
        &QueueOptions {
            depth: 1024,
            ..opts()
        },
    )
    .unwrap();
    assert!(
        q.connect(2, c.cntlid, NQN_RAM, &opts()).is_err(),
        "sqsize above MQES"
    );
    let mut q = Queue::open(f.addr, &opts()).unwrap();
    assert!(
        q.connect(2, 0x7777, NQN_RAM, &opts()).is_err(),
        "unknown cntlid"
    );
}

#[test]
fn abrupt_disconnect_mid_io_leaks_nothing() {
    let f = Fixture::start("0,1");
    for _ in 0..3 {
        let (c, mut qs) = connect_io(&f, NQN_FILE, &opts(), 4);
        let bufs: Vec<Vec<u8>> = (0..32).map(|i| pattern(131072, i)).collect();
        for q in qs.iter_mut() {
            for (i, b) in bufs.iter().enumerate() {
                let sqe =
                    command::rw_sqe(io::WRITE, 0, 1, i as u64 * 256, 256, b.len() as u32, false);
                q.submit(sqe, Data::ToController(b.as_ptr(), b.len()))
                    .unwrap();
            }
            let _ = q.poll(&mut |_, _, _| {});
        }
        for q in qs {
            q.abort();
        }
        drop(c);
        f.assert_drained();
    }
    // The target still serves new hosts.
    write_read_verify(&f, NQN_RAM, &opts());
}

#[test]
fn keep_alive_expiry_ends_the_association() {
    let f = Fixture::start("0,1");
    let o = QueueOptions {
        kato_ms: 1000,
        ..opts()
    };
    let (mut c, mut qs) = connect_io(&f, NQN_RAM, &o, 2);
    let start = Instant::now();
    // No keep-alives: the admin queue and both I/O queues must be closed by the target.
    assert_eq!(
        c.admin
            .wait_for_termination(Duration::from_secs(10))
            .unwrap(),
        None
    );
    for q in qs.iter_mut() {
        q.wait_for_termination(Duration::from_secs(10)).unwrap();
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed too early: {waited:?}"
    );
    f.assert_drained();
}

#[test]
fn keep_alive_keeps_the_association() {
    let f = Fixture::start("0");
    let o = QueueOptions {
        kato_ms: 1000,
        ..opts()
    };
    let mut c = HostController::connect(f.addr, NQN_RAM, &o).unwrap();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(400));
        c.keep_alive().unwrap();
    }
    assert_eq!(f.server().target().controller_count(), 1);
}

fn expect_term(f: &Fixture, bytes: &[u8], hdgst: bool, fes: pdu::Fes) {
    let o = QueueOptions { hdgst, ..opts() };
    let mut q = Queue::open(f.addr, &o).unwrap();
    q.send_raw(bytes).unwrap();
    let got = q.wait_for_termination(Duration::from_secs(5)).unwrap();
    assert_eq!(
        got.map(|t| t.0),
        Some(fes as u16),
        "for {:02x?}",
        &bytes[..8.min(bytes.len())]
    );
}

#[test]
fn malformed_pdus_end_only_their_connection() {
    let f = Fixture::start("0");
    let (_c, mut qs) = connect_io(&f, NQN_RAM, &opts(), 1);
    let good = &mut qs[0];
    let mut capsule = [0u8; 72];
    pdu::encode_capsule_cmd(
        &mut capsule,
        &command::connect_sqe(0, 0, 31, 0, 0).encode(),
        0,
        false,
        false,
    );

    let mut bad_type = capsule;
    bad_type[0] = 0x0E;
    expect_term(&f, &bad_type, false, pdu::Fes::InvalidHeaderField);

    let mut bad_hlen = capsule;
    bad_hlen[2] = 60;
    expect_term(&f, &bad_hlen, false, pdu::Fes::InvalidHeaderField);

    let mut huge = capsule;
    huge[3] = 72;
    huge[4..8].copy_from_slice(&(64u32 << 20).to_le_bytes());
    expect_term(&f, &huge, false, pdu::Fes::DataLimitExceeded);

    let mut digest = [0u8; 76];
    pdu::encode_capsule_cmd(
        &mut digest,
        &command::connect_sqe(0, 0, 31, 0, 0).encode(),
        0,
        true,
        false,
    );
    digest[40] ^= 0x55;
    expect_term(&f, &digest, true, pdu::Fes::HeaderDigestError);

    // A second ICReq is a PDU sequence error.
    let mut ic = [0u8; 128];
    pdu::encode_ic_req(
        &mut ic,
        &pdu::IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: false,
            ddgst: false,
            maxr2t: 0,
        },
    );
    expect_term(&f, &ic, false, pdu::Fes::PduSequenceError);

    // H2CData for a transfer that was never requested.
    let mut h2c = vec![0u8; 24];
    let h = pdu::DataHeader {
        cccid: 1,
        ttag: 5,
        datao: 0,
        datal: 16,
        last: true,
        success: false,
    };
    pdu::encode_data_header(&mut h2c, false, &h, false, false);
    h2c.extend_from_slice(&[0u8; 16]);
    expect_term(&f, &h2c, false, pdu::Fes::InvalidHeaderField);

    // Everyone else keeps working.
    let data = pattern(8192, 99);
    assert!(good.write(1, 0, 9, &data).unwrap().is_success());
    let mut back = vec![0u8; 8192];
    assert!(good.read(1, 0, 9, &mut back).unwrap().is_success());
    assert!(back == data);
}

#[test]
fn data_digest_error_fails_the_command_with_transient_transport_error() {
    let f = Fixture::start("0");
    let o = QueueOptions {
        ddgst: true,
        ..opts()
    };
    let (_c, mut qs) = connect_io(&f, NQN_RAM, &o, 1);
    let q = &mut qs[0];
    let data = pattern(4096, 5);
    q.corrupt_next_data_digest = true;
    let cqe = q.write(1, 0, 9, &data).unwrap();
    assert_eq!(cqe.status_code(), 0x22, "transient transport error");
    // The command was not executed and the queue still works.
    let mut back = vec![0u8; 4096];
    assert!(q.read(1, 0, 9, &mut back).unwrap().is_success());
    assert!(back != data);
    assert!(q.write(1, 0, 9, &data).unwrap().is_success());
    // A large write's payload is received straight into its buffer; its digest is still
    // checked there.
    let big = pattern(256 * 1024, 6);
    q.corrupt_next_data_digest = true;
    let cqe = q.write(1, 64, 9, &big).unwrap();
    assert_eq!(
        cqe.status_code(),
        0x22,
        "transient transport error on a large write"
    );
    let mut back = vec![0u8; big.len()];
    assert!(q.read(1, 64, 9, &mut back).unwrap().is_success());
    assert!(back != big);
    assert!(q.write(1, 64, 9, &big).unwrap().is_success());
    assert!(q.read(1, 64, 9, &mut back).unwrap().is_success());
    assert!(back == big);
}

#[test]
fn disallowed_host_is_refused_and_hidden() {
    let f = Fixture::start("0");
    let admin_opts = QueueOptions {
        depth: 32,
        ..opts()
    };
    let mut q = Queue::open(f.addr, &admin_opts).unwrap();
    let e = q.connect(0, 0xFFFF, NQN_LOCKED, &admin_opts).unwrap_err();
    assert!(e.to_string().contains("0x4184"), "{e}");
    // The allowed host gets in.
    let allowed = QueueOptions {
        hostnqn: ALLOWED_HOST.into(),
        ..opts()
    };
    let (_c, mut qs) = connect_io(&f, NQN_LOCKED, &allowed, 1);
    let mut buf = vec![0u8; 512];
    assert!(qs[0].read(1, 0, 9, &mut buf).unwrap().is_success());
    // The discovery log shows the locked subsystem only to the allowed host.
    let entries = |hostnqn: &str| {
        let o = QueueOptions {
            hostnqn: hostnqn.into(),
            ..opts()
        };
        let mut d = HostController::connect(f.addr, DISCOVERY_NQN, &o).unwrap();
        let log = d.get_log_page(spec::log::DISCOVERY, 1024 * 8).unwrap();
        let n = u64::from_le_bytes(log[8..16].try_into().unwrap()) as usize;
        (0..n)
            .map(|i| {
                nvmf_raid::nvmf::identify::field_str(
                    &log[1024 * (i + 1) + 256..1024 * (i + 1) + 512],
                )
            })
            .collect::<Vec<_>>()
    };
    let all = entries(ALLOWED_HOST);
    assert!(
        all.contains(&NQN_LOCKED.to_string()) && all.contains(&DISCOVERY_NQN.to_string()),
        "{all:?}"
    );
    assert!(
        !entries("nqn.2014-08.org.nvmexpress:uuid:bbbbbbbb-0000-4000-8000-000000000002")
            .contains(&NQN_LOCKED.to_string())
    );
}

#[test]
fn commands_before_connect_are_sequence_errors() {
    let f = Fixture::start("0");
    let mut q = Queue::open(f.addr, &opts()).unwrap();
    let cqe = q
        .execute(
            Sqe {
                opcode: admin::IDENTIFY,
                ..Default::default()
            },
            Data::None,
        )
        .unwrap();
    assert_eq!(cqe.status_code(), status::COMMAND_SEQUENCE_ERROR);
}

#[test]
fn icreq_and_garbage_in_one_segment_get_icresp_then_termreq() {
    use std::io::{Read, Write};
    let f = Fixture::start("0");
    let mut s = std::net::TcpStream::connect(f.addr).unwrap();
    let mut bytes = vec![0u8; 128];
    pdu::encode_ic_req(
        &mut bytes,
        &pdu::IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: false,
            ddgst: false,
            maxr2t: 0,
        },
    );
    bytes.extend_from_slice(&[0xFFu8; 24]);
    s.write_all(&bytes).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    let p = pdu::DecodeParams {
        hdgst: false,
        ddgst: false,
        max_data: 0,
        from_host: false,
    };
    let pdu::Decoded::Frame(first) = pdu::decode(&got, &p).unwrap() else {
        panic!("no ICResp")
    };
    assert!(matches!(first.pdu, pdu::Pdu::IcResp(_)));
    let pdu::Decoded::Frame(second) = pdu::decode(&got[first.len..], &p).unwrap() else {
        panic!("no TermReq")
    };
    assert!(
        matches!(
            second.pdu,
            pdu::Pdu::TermReq {
                from_host: false,
                fes: 1,
                ..
            }
        ),
        "{:?}",
        second.pdu
    );
    assert_eq!(
        first.len + second.len,
        got.len(),
        "nothing after the C2HTermReq"
    );
}

#[test]
fn busy_polling_serves_io_and_stops() {
    let f = Fixture::start_with("1", "busy");
    write_read_verify(&f, NQN_FILE, &opts());
    drop(f);
}
