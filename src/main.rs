//! The `nvmf-raid` command: `serve` runs the target, `perf` drives load against one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use nvmf_raid::config::{Config, DEFAULT_NQN};
use nvmf_raid::host::perf::{self, Pattern, PerfOptions};
use nvmf_raid::host::QueueOptions;
use nvmf_raid::reactor::PollMode;
use nvmf_raid::server::Server;

#[derive(Parser)]
#[command(name = "nvmf-raid", version, about = "Software RAID target for NVMe over TCP")]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. "info" or "nvmf_raid=debug".
    #[arg(long, global = true, default_value = "info", env = "NVMF_RAID_LOG")]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the target. Without --config: one namespace on a 1 GiB sparse file.
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the default configuration keeps its files.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Listen address of the default configuration.
        #[arg(long, default_value = "127.0.0.1:4420")]
        listen: String,
        /// Override the polling mode.
        #[arg(long, value_enum)]
        polling: Option<PollArg>,
        /// Override the reactor cores (comma separated).
        #[arg(long, value_delimiter = ',')]
        cores: Option<Vec<usize>>,
    },
    /// Check a configuration file and exit.
    CheckConfig { config: PathBuf },
    /// Generate load against a target, in the style of spdk_nvme_perf.
    Perf {
        #[arg(long, default_value = "127.0.0.1:4420")]
        addr: SocketAddr,
        #[arg(long, default_value = DEFAULT_NQN)]
        nqn: String,
        #[arg(long, default_value_t = 1)]
        nsid: u32,
        /// Queue depth per queue.
        #[arg(short = 'q', long, default_value_t = 32)]
        qd: u16,
        /// I/O size in bytes.
        #[arg(short = 'o', long, default_value_t = 4096)]
        bs: usize,
        #[arg(short = 'w', long, value_enum, default_value = "randread")]
        pattern: Pattern,
        /// Percentage of reads for randrw.
        #[arg(short = 'M', long, default_value_t = 50)]
        read_percent: u32,
        /// Seconds to run.
        #[arg(short = 't', long, default_value_t = 10)]
        time: u64,
        /// Number of I/O queues (TCP connections).
        #[arg(long, default_value_t = 1)]
        queues: u16,
        /// Header digest.
        #[arg(long)]
        hdgst: bool,
        /// Data digest.
        #[arg(long)]
        ddgst: bool,
        #[arg(long)]
        hostnqn: Option<String>,
        /// Pin the initiator to this core.
        #[arg(long)]
        core: Option<usize>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PollArg {
    Busy,
    Adaptive,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log)).with_target(false).init();
    let code = match cli.cmd {
        Cmd::Serve { config, data_dir, listen, polling, cores } => serve(config, data_dir, listen, polling, cores),
        Cmd::CheckConfig { config } => Config::load(&config).map(|_| println!("{}: ok", config.display())).map_err(|e| e.to_string()),
        Cmd::Perf { addr, nqn, nsid, qd, bs, pattern, read_percent, time, queues, hdgst, ddgst, hostnqn, core } => {
            if let Some(c) = core {
                core_affinity::set_for_current(core_affinity::CoreId { id: c });
            }
            let mut host = QueueOptions { hdgst, ddgst, ..Default::default() };
            if let Some(h) = hostnqn {
                host.hostnqn = h;
            }
            let o = PerfOptions { addr, subnqn: nqn, nsid, queues, depth: qd, block_size: bs, pattern, read_percent, duration: Duration::from_secs(time), host };
            perf::run(&o).map(|r| r.print(&o)).map_err(|e| format!("perf: {e}"))
        }
    };
    if let Err(e) = code {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn serve(config: Option<PathBuf>, data_dir: PathBuf, listen: String, polling: Option<PollArg>, cores: Option<Vec<usize>>) -> Result<(), String> {
    let mut cfg = match &config {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => Config::default_target(&data_dir, &listen),
    };
    if let Some(p) = polling {
        cfg.reactor.polling = match p {
            PollArg::Busy => PollMode::Busy,
            PollArg::Adaptive => PollMode::Adaptive,
        };
    }
    if let Some(c) = cores {
        cfg.reactor.cores = c;
    }
    cfg.validate().map_err(|e| e.to_string())?;
    // Signals are taken synchronously by this thread; reactors inherit the mask.
    let mut mask = nix::sys::signal::SigSet::empty();
    for s in [nix::sys::signal::SIGINT, nix::sys::signal::SIGTERM] {
        mask.add(s);
    }
    mask.thread_block().map_err(|e| e.to_string())?;
    let server = Server::start(&cfg).map_err(|e| e.to_string())?;
    for port in &server.ports {
        for s in cfg.subsystems.iter() {
            println!("nvme connect -t tcp -a {} -s {} -n {}", port.addr.ip(), port.addr.port(), s.nqn);
        }
    }
    println!("nvmf-raid serving; stop with Ctrl-C");
    let sig = mask.wait().map_err(|e| e.to_string())?;
    tracing::info!(signal = ?sig, "stopping");
    server.stop();
    Ok(())
}
