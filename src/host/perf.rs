//! `nvmf-raid perf`: a load generator in the style of spdk_nvme_perf. One thread drives
//! every queue, keeping each at its queue depth, and records each I/O's latency.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{Data, HostController, Queue, QueueOptions};
use crate::nvmf::command;
use crate::nvmf::spec::io as io_op;
use crate::util::aligned::AlignedRegion;
use crate::util::clock::{self, Stamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pattern {
    Read,
    Write,
    Randread,
    Randwrite,
    Randrw,
}

#[derive(Debug, Clone)]
pub struct PerfOptions {
    pub addr: SocketAddr,
    pub subnqn: String,
    pub nsid: u32,
    pub queues: u16,
    pub depth: u16,
    pub block_size: usize,
    pub pattern: Pattern,
    /// Share of reads for `randrw`, in percent.
    pub read_percent: u32,
    pub duration: Duration,
    pub host: QueueOptions,
    /// Poll the sockets without sleeping (as spdk_nvme_perf does), or sleep in poll(2)
    /// whenever a pass finds nothing.
    pub busy_poll: bool,
}

pub struct PerfReport {
    pub ios: u64,
    pub bytes: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency in nanoseconds.
    pub latency: Histogram<u64>,
    pub cpu_seconds: f64,
    /// Time of loop passes that made progress: the initiator's work, without its idle
    /// polling (what the CPU time is when it busy-polls).
    pub busy_seconds: f64,
    /// Reads the controller completed with the C2HData SUCCESS flag, and how many of those
    /// it sent although SQ flow control was on (SPDK's target does).
    pub completed_in_data: u64,
    pub success_with_sq_flow: u64,
}

impl PerfReport {
    pub fn iops(&self) -> f64 {
        self.ios as f64 / self.elapsed.as_secs_f64()
    }
    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / (1 << 20) as f64
    }

    pub fn print(&self, o: &PerfOptions) {
        let us = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "pattern {:?} bs {} qd {} queues {} time {:.1}s",
            o.pattern,
            o.block_size,
            o.depth,
            o.queues,
            self.elapsed.as_secs_f64()
        );
        println!(
            "IOPS {:.0}  MiB/s {:.1}  errors {}",
            self.iops(),
            self.mib_per_sec(),
            self.errors
        );
        println!(
            "latency us: avg {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  p99.99 {:.1}  max {:.1}",
            self.latency.mean() / 1000.0,
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999),
            us(0.9999),
            self.latency.max() as f64 / 1000.0
        );
        if self.completed_in_data > 0 {
            println!(
                "completed by the C2HData SUCCESS flag: {} ({} of them with SQ flow control on, which the target should not do)",
                self.completed_in_data, self.success_with_sq_flow
            );
        }
        let per_million = |s: f64| s / (self.ios.max(1) as f64 / 1e6);
        println!(
            "initiator CPU {:.2} s ({:.2} s per million I/Os), busy {:.2} s ({:.2} s per million I/Os)",
            self.cpu_seconds,
            per_million(self.cpu_seconds),
            self.busy_seconds,
            per_million(self.busy_seconds)
        );
    }
}

pub fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: cheap and good enough for offsets.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

struct Generator {
    pattern: Pattern,
    read_percent: u32,
    blocks_per_io: u64,
    ios_in_ns: u64,
    next_seq: u64,
    rng: Rng,
}

impl Generator {
    /// (is_read, starting LBA) of the next I/O.
    fn next(&mut self) -> (bool, u64) {
        let idx = match self.pattern {
            Pattern::Read | Pattern::Write => {
                self.next_seq = (self.next_seq + 1) % self.ios_in_ns;
                self.next_seq
            }
            _ => self.rng.next() % self.ios_in_ns,
        };
        let read = match self.pattern {
            Pattern::Read | Pattern::Randread => true,
            Pattern::Write | Pattern::Randwrite => false,
            Pattern::Randrw => (self.rng.next() % 100) < self.read_percent as u64,
        };
        (read, idx * self.blocks_per_io)
    }
}

pub fn run(o: &PerfOptions) -> io::Result<PerfReport> {
    let mut ctrl = HostController::connect(o.addr, &o.subnqn, &o.host)?;
    let granted = ctrl.set_queue_count(o.queues)?;
    if granted < o.queues {
        return Err(io::Error::other(format!(
            "controller granted only {granted} I/O queues"
        )));
    }
    let (shift, blocks) = ctrl.namespace_geometry(o.nsid)?;
    if !o.block_size.is_multiple_of(1 << shift) || o.block_size > 1 << 20 {
        return Err(io::Error::other(format!(
            "block size must be a multiple of {} up to 1 MiB",
            1 << shift
        )));
    }
    let mut queues = Vec::new();
    for qid in 1..=o.queues {
        queues.push(ctrl.io_queue(qid)?);
    }
    let depth = o.depth.min(o.host.depth) as usize;
    let buffers = AlignedRegion::new(queues.len() * o.host.depth as usize * o.block_size)?;
    // Writes carry a recognisable pattern rather than zero pages.
    // SAFETY: nothing else references the fresh region.
    unsafe { buffers.slice_mut(0, buffers.len()) }
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8);
    let blocks_per_io = (o.block_size >> shift) as u64;
    let mut gen = Generator {
        pattern: o.pattern,
        read_percent: o.read_percent.min(100),
        blocks_per_io,
        ios_in_ns: (blocks / blocks_per_io).max(1),
        next_seq: 0,
        rng: Rng(0x9E37_79B9_7F4A_7C15),
    };
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds");
    let (mut ios, mut errors) = (0u64, 0u64);
    let cpu0 = process_cpu_seconds();
    clock::init();
    let start = Stamp::now();
    let run_ns = o.duration.as_nanos() as u64;
    let submit_one = |q: &mut Queue, qi: usize, gen: &mut Generator| -> io::Result<()> {
        let cid = q.peek_cid().expect("caller checked depth");
        // SAFETY: buffer (qi, cid) is used by this command alone until it completes.
        let buf = unsafe {
            buffers
                .as_ptr()
                .add((qi * o.host.depth as usize + cid as usize) * o.block_size)
        };
        let (read, slba) = gen.next();
        let (op, data) = if read {
            (io_op::READ, Data::FromController(buf, o.block_size))
        } else {
            (io_op::WRITE, Data::ToController(buf, o.block_size))
        };
        let sqe = command::rw_sqe(
            op,
            0,
            o.nsid,
            slba,
            blocks_per_io as u32,
            o.block_size as u32,
            false,
        );
        let got = q.submit(sqe, data)?;
        debug_assert_eq!(got, cid);
        Ok(())
    };
    let mut running = true;
    let mut busy_ns = 0u64;
    let mut pass_start = Stamp::now();
    loop {
        let mut progressed = 0;
        for (qi, q) in queues.iter_mut().enumerate() {
            progressed += q.poll(&mut |_, cqe, lat| {
                ios += 1;
                if !cqe.is_success() {
                    errors += 1;
                }
                let _ = hist.record(lat.as_nanos().max(1) as u64);
            })?;
            while running && q.outstanding() < depth {
                submit_one(q, qi, &mut gen)?;
            }
        }
        let now = Stamp::now();
        if running && now.nanos_since(start) >= run_ns {
            running = false;
        }
        if !running && queues.iter().all(|q| q.outstanding() == 0) {
            break;
        }
        if progressed != 0 {
            busy_ns += now.nanos_since(pass_start);
        }
        pass_start = now;
        if progressed == 0 && !o.busy_poll {
            wait_any(&queues, Duration::from_millis(1));
            pass_start = Stamp::now();
        }
    }
    let elapsed = Duration::from_nanos(Stamp::now().nanos_since(start));
    let cpu_seconds = process_cpu_seconds() - cpu0;
    let completed_in_data = queues.iter().map(|q| q.completed_in_data).sum();
    let success_with_sq_flow = queues.iter().map(|q| q.success_with_sq_flow).sum();
    drop(queues);
    let _ = ctrl.shutdown();
    Ok(PerfReport {
        ios,
        bytes: ios * o.block_size as u64,
        errors,
        elapsed,
        latency: hist,
        cpu_seconds,
        busy_seconds: busy_ns as f64 * 1e-9,
        completed_in_data,
        success_with_sq_flow,
    })
}

/// Sleep until any queue's socket is readable, or the timeout.
fn wait_any(queues: &[Queue], timeout: Duration) {
    let mut fds: [libc::pollfd; 64] = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 64];
    let n = queues.len().min(64);
    for (i, q) in queues.iter().take(n).enumerate() {
        fds[i] = libc::pollfd {
            fd: q.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
    }
    // SAFETY: n valid pollfds.
    unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            n as libc::nfds_t,
            timeout.as_millis() as i32,
        )
    };
}
