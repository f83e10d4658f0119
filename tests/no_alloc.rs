//! The steady-state I/O path allocates nothing: a counting global allocator counts every
//! allocation made on a reactor thread while reads and writes run over NVMe/TCP, on a
//! RAID-0 and on a RAID-5 volume (partial-stripe writes included).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use nvmf_raid::config::Config;
use nvmf_raid::host::{HostController, QueueOptions};
use nvmf_raid::server::Server;

struct Counting;

static REACTOR_ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; counting has no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if nvmf_raid::reactor::on_reactor_thread() {
            REACTOR_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if nvmf_raid::reactor::on_reactor_thread() {
            REACTOR_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const NQN: &str = "nqn.2026-11.io.nvmf-raid:noalloc";

fn start(level: &str) -> Server {
    let mut c = String::from("[reactor]\ncores = [0]\n[[listener]]\naddress = \"127.0.0.1:0\"\n");
    for d in 0..4 {
        c += &format!("[[device]]\nname = \"m{d}\"\nkind = \"ram\"\nsize = \"16M\"\n");
    }
    c += &format!("[[volume]]\nname = \"vol\"\nlevel = \"{level}\"\nmembers = [\"m0\", \"m1\", \"m2\", \"m3\"]\nstrip_size = \"16K\"\n");
    c += &format!("[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = \"vol\"\n");
    Server::start(&Config::parse(&c).unwrap()).unwrap()
}

/// Reactor allocations during `rounds` of writes and reads of mixed sizes.
fn allocations_during_io(level: &str, opts: &QueueOptions) -> (u64, u64) {
    let server = start(level);
    let mut c = HostController::connect(server.ports[0].addr, NQN, opts).unwrap();
    c.set_queue_count(1).unwrap();
    let (_, blocks) = c.namespace_geometry(1).unwrap();
    let mut q = c.io_queue(1).unwrap();
    let sizes = [4096usize, 512, 65536, 12288, 131072];
    let data = vec![0xA5u8; 131072];
    let mut back = vec![0u8; 131072];
    let mut run = |rounds: u64| {
        for i in 0..rounds {
            let len = sizes[(i % sizes.len() as u64) as usize];
            let lba = (i * 7919 * 8) % (blocks - 256);
            assert!(q.write(1, lba, 9, &data[..len]).unwrap().is_success());
            assert!(q.read(1, lba, 9, &mut back[..len]).unwrap().is_success());
        }
    };
    // Warm up: connection buffers, slabs, write-intent bits, histograms all in place.
    run(3000);
    let before = REACTOR_ALLOCS.load(Ordering::Relaxed);
    let rounds = 5000;
    run(rounds);
    let after = REACTOR_ALLOCS.load(Ordering::Relaxed);
    drop((q, c));
    server.stop();
    (after - before, rounds * 2)
}

#[test]
fn no_heap_allocation_per_io_on_raid0_and_raid5() {
    // Both ways of completing a read: a response capsule, or (no SQ flow control) the
    // SUCCESS flag on the last data PDU.
    for level in ["raid0", "raid5"] {
        for disable_sqflow in [false, true] {
            let opts = QueueOptions {
                disable_sqflow,
                ..Default::default()
            };
            let (allocs, ios) = allocations_during_io(level, &opts);
            println!(
                "{level}, SQ flow control {}: {allocs} reactor allocations over {ios} I/Os",
                if disable_sqflow { "off" } else { "on" }
            );
            assert_eq!(allocs, 0, "{level} (disable_sqflow {disable_sqflow}): the reactors allocated {allocs} times during {ios} steady-state I/Os");
        }
    }
}
