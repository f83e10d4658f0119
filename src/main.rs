//! The `nvmf-raid` command: `serve` runs the target, `perf` drives load against one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;

mod cli;
use nvmf_raid::config::{Config, DEFAULT_NQN};
use nvmf_raid::host::perf::{self, Pattern, PerfOptions};
use nvmf_raid::host::QueueOptions;
use nvmf_raid::reactor::PollMode;
use nvmf_raid::server::Server;

#[derive(Parser)]
#[command(
    name = "nvmf-raid",
    version,
    about = "Software RAID target for NVMe over TCP"
)]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. "info" or "nvmf_raid=debug".
    #[arg(long, global = true, default_value = "info", env = "NVMF_RAID_LOG")]
    log: String,
    /// Management socket of the target (client commands; `serve` without --config).
    #[arg(long, global = true, env = "NVMF_RAID_SOCKET", default_value = nvmf_raid::mgmt::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the target. Without --config: a RAID-5 volume over four 1 GiB sparse files plus a
    /// hot spare in --data-dir, served on --listen.
    Serve(ServeArgs),
    /// Check a configuration file and exit.
    CheckConfig { config: PathBuf },
    /// RAID volumes of a running target.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Fault injection on a device configured with fault_injection = true.
    Fault {
        device: String,
        /// fail, heal, fail_reads, fail_writes, fail_range, fail_after, delay
        action: String,
        #[arg(long)]
        start: Option<u64>,
        #[arg(long)]
        end: Option<u64>,
        #[arg(long)]
        ios: Option<u64>,
        #[arg(long)]
        us: Option<u64>,
    },
    /// Subsystems, namespaces and allowed hosts of a running target.
    Subsystems {
        #[arg(long)]
        json: bool,
    },
    /// Connected controllers (hosts) of a running target.
    Controllers {
        #[arg(long)]
        json: bool,
    },
    /// Asymmetric Namespace Access: the state each listener reports to multipath hosts.
    #[command(subcommand)]
    Ana(AnaCmd),
    /// Stretched volumes served from two sites: status, planned hand-over, takeover.
    #[command(subcommand)]
    Site(SiteCmd),
    /// Allow (add) or disallow (remove) a host NQN on a subsystem, at run time.
    Host {
        #[arg(value_parser = ["add", "remove"])]
        action: String,
        subsystem: String,
        host: String,
    },
    /// Send any JSON-RPC method with JSON parameters and print the JSON result.
    Rpc {
        method: String,
        params: Option<String>,
    },
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
        /// Connect without SQ flow control (as `nvme connect --disable-sqflow`): reads
        /// then complete in their last data PDU, without a response capsule.
        #[arg(long)]
        disable_sqflow: bool,
        #[arg(long)]
        hostnqn: Option<String>,
        /// Pin the initiator to this core.
        #[arg(long)]
        core: Option<usize>,
        /// Draw the latency percentile curve to this SVG file.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// busy: poll the sockets without sleeping, as spdk_nvme_perf does; adaptive:
        /// sleep in poll(2) whenever a pass finds nothing.
        #[arg(long, value_parser = ["busy", "adaptive"], default_value = "busy")]
        poll: String,
    },
    /// Run a site-link relay: forward TCP connections from --listen to --to with a delay
    /// and a bandwidth limit, and cut the link on command (`relay-ctl`).
    Relay {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        to: SocketAddr,
        /// One-way delay in milliseconds (each direction).
        #[arg(long, default_value_t = 0.0)]
        delay_ms: f64,
        /// Bandwidth per direction in bytes per second ("100M"; 0 = unlimited).
        #[arg(long, default_value = "0")]
        rate: String,
        /// Control socket for relay-ctl.
        #[arg(long)]
        control: PathBuf,
    },
    /// Control a running relay: status, cut [--blackhole], heal, set [--delay-ms] [--rate].
    RelayCtl {
        #[arg(long)]
        control: PathBuf,
        #[arg(value_parser = ["status", "cut", "heal", "set"])]
        action: String,
        /// With cut: hold every byte instead of resetting the connections.
        #[arg(long)]
        blackhole: bool,
        #[arg(long)]
        delay_ms: Option<f64>,
        #[arg(long)]
        rate: Option<String>,
    },
    /// Latency percentiles and I/O counters per namespace, member device and reactor.
    Stats {
        #[arg(long)]
        json: bool,
        /// With --json: every histogram bucket as [latency_us, count].
        #[arg(long)]
        buckets: bool,
        /// Reset the statistics after reading them.
        #[arg(long)]
        reset: bool,
        /// Draw the latency percentile curves (per namespace and operation) to this SVG file.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
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
    /// Serve Prometheus metrics on this address ("" turns them off); the default
    /// configuration uses 127.0.0.1:9464.
    #[arg(long)]
    metrics: Option<String>,
}

#[derive(Subcommand)]
enum VolumeCmd {
    /// State of every volume (or one), its members, spares, and rebuild or resync progress.
    Status {
        name: Option<String>,
        #[arg(long)]
        json: bool,
        /// Refresh every second, with a progress bar, rate and ETA for rebuild and resync.
        #[arg(long)]
        watch: bool,
        /// With --watch: exit once no rebuild or resync is running (exit 1 if a volume is offline).
        #[arg(long, requires = "watch")]
        until_idle: bool,
    },
    /// Add a hot spare: a configured device, or a file or block device by --path.
    AddSpare {
        volume: String,
        device: String,
        #[arg(long)]
        path: Option<String>,
        /// Follow the rebuild (if the spare fills a failed slot) until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// Take a hot spare off a volume.
    RemoveSpare { volume: String, device: String },
    /// Replace a member by a spare now: the member is failed and the spare rebuilt in its place.
    Replace {
        volume: String,
        member: String,
        spare: String,
        #[arg(long)]
        force: bool,
        /// Follow the rebuild until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// Detach a failed member so its device can be reused.
    RemoveMember { volume: String, member: String },
    /// Put a failed member back when its device returns (md's re-add): only the regions
    /// the write-intent bitmap says were written while it was out are copied to it.
    ReAdd {
        volume: String,
        member: String,
        /// Wait for the catch-up to finish, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Check every row's parity or mirror copies while the volume serves (md's check);
    /// --repair rewrites the rows that disagree (parity from the data, copies from the first).
    Scrub {
        volume: String,
        #[arg(long)]
        repair: bool,
        /// Stop the running scrub.
        #[arg(long, conflicts_with = "repair")]
        stop: bool,
        /// Rate limit in bytes per second of member data read ("50M"; 0 = unlimited).
        #[arg(long)]
        rate: Option<String>,
        /// Follow the scrub until it ends and print its result (exit 1 if mismatches remain).
        #[arg(long)]
        wait: bool,
    },
    /// Set the rebuild rate limit in bytes per second ("100M"; 0 = unlimited).
    RebuildRate { volume: String, rate: String },
    /// Fail a member now (refused if it would take the volume offline, unless --force).
    FailMember {
        volume: String,
        member: String,
        #[arg(long)]
        force: bool,
        /// Follow the rebuild onto a spare (if one starts) until it ends.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
enum AnaCmd {
    /// Set the ANA state a listener reports, for every subsystem or one. Hosts connected
    /// through it that enabled ANA change notices are told.
    Set {
        /// The listener: its address (127.0.0.1:4420) or port id (1 = first listener).
        #[arg(long)]
        listener: String,
        #[arg(long, value_parser = ["optimized", "non-optimized", "inaccessible", "persistent-loss", "change"])]
        state: String,
        /// Only this subsystem (default: every subsystem on the listener).
        #[arg(long)]
        subsystem: Option<String>,
    },
    /// The ANA state of every listener and subsystem, and the change count.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SiteCmd {
    /// Mode, peer and link, witness, dirty regions and resync progress of every stretched
    /// volume.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Planned maintenance: this site stops serving the volume and hands it to the peer
    /// (hosts move to the peer's paths); it resynchronises by itself when it returns.
    Handover { volume: String },
    /// Serve the volume alone without asking the witness (the witness is gone too). Only
    /// when the peer site is known not to serve it.
    Takeover {
        volume: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PollArg {
    Busy,
    Adaptive,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let code = match cli.cmd {
        Cmd::Serve(args) => serve(args, &cli.socket),
        Cmd::CheckConfig { config } => Config::load(&config)
            .map(|_| println!("{}: ok", config.display()))
            .map_err(|e| e.to_string()),
        Cmd::Volume(v) => cli::volume(&cli.socket, v),
        Cmd::Fault {
            device,
            action,
            start,
            end,
            ios,
            us,
        } => {
            let p = json!({"device": device, "action": action, "start": start, "end": end, "ios": ios, "us": us});
            rpc(&cli.socket, "device_fault", p)
                .map(|r| println!("{device}: {action} (failed I/Os so far: {})", r["injected"]))
        }
        Cmd::Ana(a) => cli::ana(&cli.socket, a),
        Cmd::Site(c) => cli::site(&cli.socket, c),
        Cmd::Subsystems { json } => {
            rpc(&cli.socket, "subsystem_list", json!({})).map(|r| cli::print_subsystems(&r, json))
        }
        Cmd::Controllers { json } => {
            rpc(&cli.socket, "controller_list", json!({})).map(|r| cli::print_controllers(&r, json))
        }
        Cmd::Host {
            action,
            subsystem,
            host,
        } => {
            let method = if action == "add" {
                "host_add"
            } else {
                "host_remove"
            };
            rpc(
                &cli.socket,
                method,
                json!({"subsystem": subsystem, "host": host}),
            )
            .map(|r| println!("{}: allowed hosts {}", subsystem, r["hosts"]))
        }
        Cmd::Rpc { method, params } => {
            let p = match params.as_deref().map(serde_json::from_str) {
                None => Ok(json!({})),
                Some(r) => r.map_err(|e| format!("params: {e}")),
            };
            p.and_then(|p| rpc(&cli.socket, &method, p))
                .map(|r| println!("{}", serde_json::to_string_pretty(&r).unwrap()))
        }
        Cmd::Relay {
            listen,
            to,
            delay_ms,
            rate,
            control,
        } => relay(&listen, to, delay_ms, &rate, &control),
        Cmd::RelayCtl {
            control,
            action,
            blackhole,
            delay_ms,
            rate,
        } => {
            let (method, mut p) = match action.as_str() {
                "cut" => (
                    "relay_cut",
                    json!({"mode": if blackhole { "blackhole" } else { "drop" }}),
                ),
                "heal" => ("relay_heal", json!({})),
                "set" => ("relay_set", json!({"delay_ms": delay_ms})),
                _ => ("relay_status", json!({})),
            };
            let rate = rate
                .map(|r| nvmf_raid::config::parse_size(&r))
                .transpose()
                .map_err(|e| format!("rate: {e}"));
            rate.and_then(|r| {
                if let Some(r) = r {
                    p["rate"] = json!(r);
                }
                rpc(&control, method, p)
            })
            .map(|r| println!("{}", serde_json::to_string_pretty(&r).unwrap()))
        }
        Cmd::Stats {
            json,
            buckets,
            reset,
            plot,
        } => cli::stats(&cli.socket, json, buckets, reset, plot.as_deref()),
        Cmd::Perf {
            addr,
            nqn,
            nsid,
            qd,
            bs,
            pattern,
            read_percent,
            time,
            queues,
            hdgst,
            ddgst,
            disable_sqflow,
            hostnqn,
            core,
            plot,
            poll,
        } => {
            if let Some(c) = core {
                core_affinity::set_for_current(core_affinity::CoreId { id: c });
            }
            let mut host = QueueOptions {
                hdgst,
                ddgst,
                disable_sqflow,
                ..Default::default()
            };
            if let Some(h) = hostnqn {
                host.hostnqn = h;
            }
            let o = PerfOptions {
                addr,
                subnqn: nqn,
                nsid,
                queues,
                depth: qd,
                block_size: bs,
                pattern,
                read_percent,
                duration: Duration::from_secs(time),
                host,
                busy_poll: poll == "busy",
            };
            perf::run(&o)
                .map_err(|e| format!("perf: {e}"))
                .and_then(|r| {
                    r.print(&o);
                    match plot {
                        Some(path) => cli::write_perf_plot(&path, &r.latency, &o),
                        None => Ok(()),
                    }
                })
        }
    };
    if let Err(e) = code {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Run a site-link relay until SIGINT or SIGTERM.
fn relay(
    listen: &str,
    to: SocketAddr,
    delay_ms: f64,
    rate: &str,
    control: &std::path::Path,
) -> Result<(), String> {
    let rate = nvmf_raid::config::parse_size(rate).map_err(|e| format!("rate: {e}"))?;
    if !(0.0..=10_000.0).contains(&delay_ms) {
        return Err(format!("delay-ms {delay_ms}: must be 0..=10000"));
    }
    let mut mask = nix::sys::signal::SigSet::empty();
    mask.add(nix::sys::signal::SIGINT);
    mask.add(nix::sys::signal::SIGTERM);
    mask.thread_block().map_err(|e| e.to_string())?;
    let r = std::sync::Arc::new(
        nvmf_raid::relay::Relay::start(
            listen,
            to,
            Duration::from_micros((delay_ms * 1000.0) as u64),
            rate,
        )
        .map_err(|e| e.to_string())?,
    );
    let ctl = nvmf_raid::mgmt::serve(control, r.clone())
        .map_err(|e| format!("control socket {}: {e}", control.display()))?;
    println!(
        "relay {} -> {to}: delay {delay_ms} ms each way, rate {}; control {}",
        r.listen,
        if rate == 0 {
            "unlimited".to_string()
        } else {
            format!("{rate} B/s")
        },
        control.display()
    );
    mask.wait().map_err(|e| e.to_string())?;
    ctl.stop();
    Ok(())
}

fn rpc(
    socket: &std::path::Path,
    method: &str,
    params: serde_json::Value,
) -> Result<serde_json::Value, String> {
    nvmf_raid::mgmt::call(socket, method, params)
}

fn serve(args: ServeArgs, socket: &std::path::Path) -> Result<(), String> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => {
            let mut c = Config::default_target(&args.data_dir, &args.listen);
            c.management.socket = Some(socket.to_path_buf());
            c
        }
    };
    if let Some(p) = args.polling {
        cfg.reactor.polling = match p {
            PollArg::Busy => PollMode::Busy,
            PollArg::Adaptive => PollMode::Adaptive,
        };
    }
    if let Some(c) = args.cores {
        cfg.reactor.cores = c;
    }
    if let Some(m) = args.metrics {
        cfg.metrics.address = Some(m);
    }
    cfg.validate().map_err(|e| e.to_string())?;
    // Signals are taken synchronously by this thread; reactors inherit the mask.
    let mut mask = nix::sys::signal::SigSet::empty();
    for s in [
        nix::sys::signal::SIGINT,
        nix::sys::signal::SIGTERM,
        nix::sys::signal::SIGHUP,
    ] {
        mask.add(s);
    }
    mask.thread_block().map_err(|e| e.to_string())?;
    let server =
        Server::start_with_path(&cfg, args.config.as_deref()).map_err(|e| e.to_string())?;
    // Site links are for the peer site, not for hosts.
    for port in server.ports.iter().filter(|p| {
        !cfg.stretches
            .iter()
            .any(|s| s.link_listener == p.addr.to_string())
    }) {
        for s in cfg.subsystems.iter() {
            println!(
                "nvme connect -t tcp -a {} -s {} -n {}",
                port.addr.ip(),
                port.addr.port(),
                s.nqn
            );
        }
    }
    if let Some(a) = server.metrics_addr() {
        println!("metrics: http://{a}/metrics");
    }
    println!("nvmf-raid serving; stop with Ctrl-C");
    loop {
        let sig = mask.wait().map_err(|e| e.to_string())?;
        if sig != nix::sys::signal::SIGHUP {
            tracing::info!(signal = ?sig, "stopping");
            break;
        }
        match server.reload_hosts() {
            Ok(summary) => {
                tracing::info!(subsystems = ?summary, "host allow-lists reloaded (SIGHUP)")
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: host allow-lists not reloaded"),
        }
    }
    let dirty = server.stop();
    if dirty.is_empty() {
        return Ok(());
    }
    Err(format!("stopped before every write had completed on the members: volumes {dirty:?} left dirty; the next start resynchronises them"))
}
