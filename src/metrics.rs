//! Prometheus text exposition over HTTP (GET /metrics): I/O and byte counters and latency
//! histograms per namespace, member and reactor, volume and member states, rebuild and
//! resync progress, ANA states, connections. One small thread; every scrape asks the reactors for
//! their statistics, as the management API does.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::bdev::Bdev;
use crate::mgmt::stats::{merged, namespace_names};
use crate::reactor::Shared;
use crate::site::control::SiteHandle;
use crate::stats::{OpSet, OP_CLASSES};
use crate::util::stopper::{accept_until_stopped, Stopper};
use crate::volume::raid::RaidBdev;

/// Upper bounds of the exported latency buckets, in seconds.
pub const BUCKETS_S: [f64; 20] = [
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
    250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0, 60.0,
];
/// Longest request line and headers read from a scraper.
const MAX_REQUEST: u64 = 8192;

pub struct MetricsServer {
    pub addr: SocketAddr,
    stopper: Arc<Stopper>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    pub fn stop(mut self) {
        self.stopper.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serve /metrics on `address` until stopped.
pub fn serve(
    address: &str,
    shared: Arc<Shared>,
    volumes: Vec<Arc<RaidBdev>>,
    sites: Vec<SiteHandle>,
) -> std::io::Result<MetricsServer> {
    let listener = TcpListener::bind(address)
        .map_err(|e| std::io::Error::new(e.kind(), format!("metrics listener {address}: {e}")))?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let stopper = Arc::new(Stopper::new()?);
    let stopping = stopper.clone();
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            accept_until_stopped(
                &listener,
                &stopping,
                |l| l.accept().map(|(c, _)| c),
                |conn| {
                    if let Err(e) = answer(conn, &shared, &volumes, &sites) {
                        warn!(error = %e, "metrics request failed");
                    }
                },
            );
        })?;
    info!(%addr, "metrics on http://{addr}/metrics");
    Ok(MetricsServer {
        addr,
        stopper,
        thread: Some(thread),
    })
}

fn answer(
    conn: TcpStream,
    shared: &Shared,
    volumes: &[Arc<RaidBdev>],
    sites: &[SiteHandle],
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(std::io::Read::take(conn.try_clone()?, MAX_REQUEST));
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Skip the headers.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut out = conn;
    let path = request.split_whitespace().nth(1).unwrap_or("");
    if !request.starts_with("GET ") || !(path == "/metrics" || path.starts_with("/metrics?")) {
        return write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }
    let body = render(shared, volumes, sites);
    write!(out, "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Text exposition of one family header.
fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Counters and histograms of a set of objects, each with its labels.
fn op_families(o: &mut String, prefix: &str, what: &str, objects: &[(String, &OpSet)]) {
    let each = |o: &mut String, f: &dyn Fn(&mut String, &str, &crate::stats::OpStats)| {
        for (labels, set) in objects {
            for c in OP_CLASSES {
                let s = set.get(c);
                if s.ios > 0 {
                    f(o, &format!("{labels},op=\"{}\"", c.name()), s);
                }
            }
        }
    };
    family(
        o,
        &format!("{prefix}_ios_total"),
        "counter",
        &format!("I/Os completed per {what} and operation."),
    );
    each(o, &|o, l, s| {
        let _ = writeln!(o, "{prefix}_ios_total{{{l}}} {}", s.ios);
    });
    family(
        o,
        &format!("{prefix}_transferred_bytes_total"),
        "counter",
        &format!("Bytes transferred per {what} and operation."),
    );
    each(o, &|o, l, s| {
        let _ = writeln!(o, "{prefix}_transferred_bytes_total{{{l}}} {}", s.bytes);
    });
    family(
        o,
        &format!("{prefix}_latency_seconds"),
        "histogram",
        &format!("Latency per {what} and operation."),
    );
    each(o, &|o, l, s| {
        let h = &s.latency;
        for le in BUCKETS_S {
            let us = (le * 1e6) as u64;
            let _ = writeln!(
                o,
                "{prefix}_latency_seconds_bucket{{{l},le=\"{le}\"}} {}",
                h.count_between(0, us)
            );
        }
        let _ = writeln!(
            o,
            "{prefix}_latency_seconds_bucket{{{l},le=\"+Inf\"}} {}",
            h.len()
        );
        let _ = writeln!(
            o,
            "{prefix}_latency_seconds_sum{{{l}}} {}",
            h.mean() * h.len() as f64 / 1e6
        );
        let _ = writeln!(o, "{prefix}_latency_seconds_count{{{l}}} {}", h.len());
    });
}

/// The whole exposition.
pub fn render(shared: &Shared, volumes: &[Arc<RaidBdev>], sites: &[SiteHandle]) -> String {
    let per_reactor = shared.collect_stats(false);
    let all = merged(&per_reactor);
    let names = namespace_names(&shared.target);
    let mut o = String::with_capacity(64 << 10);
    let ns: Vec<(String, &OpSet)> = all
        .namespaces
        .iter()
        .enumerate()
        .map(|(i, set)| {
            let (nqn, nsid) = names.get(i).cloned().unwrap_or_default();
            (
                format!("subsystem=\"{}\",nsid=\"{nsid}\"", label(&nqn)),
                set,
            )
        })
        .collect();
    op_families(&mut o, "nvmf_raid_namespace", "namespace", &ns);
    let members: Vec<(String, &OpSet)> = all
        .members
        .iter()
        .map(|m| {
            (
                format!(
                    "volume=\"{}\",device=\"{}\"",
                    label(&m.volume),
                    label(&m.device)
                ),
                &m.ops,
            )
        })
        .collect();
    op_families(&mut o, "nvmf_raid_member", "member device", &members);
    let reactors: Vec<(String, &OpSet)> = per_reactor
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("reactor=\"{i}\""), &s.reactor))
        .collect();
    op_families(&mut o, "nvmf_raid_reactor", "reactor", &reactors);
    volume_families(&mut o, volumes);
    ana_families(&mut o, &shared.target);
    site_families(&mut o, sites);
    let turns = shared.utilisation();
    family(
        &mut o,
        "nvmf_raid_reactor_busy_seconds_total",
        "counter",
        "Time of event-loop turns that did work (events or submissions).",
    );
    for (i, (busy, _)) in turns.iter().enumerate() {
        let _ = writeln!(
            o,
            "nvmf_raid_reactor_busy_seconds_total{{reactor=\"{i}\"}} {busy:.6}"
        );
    }
    family(
        &mut o,
        "nvmf_raid_reactor_idle_seconds_total",
        "counter",
        "Time of event-loop turns that polled and found nothing (sleeps excluded).",
    );
    for (i, (_, idle)) in turns.iter().enumerate() {
        let _ = writeln!(
            o,
            "nvmf_raid_reactor_idle_seconds_total{{reactor=\"{i}\"}} {idle:.6}"
        );
    }
    let (connections, buffers) = shared.resource_use();
    family(
        &mut o,
        "nvmf_raid_connections",
        "gauge",
        "Open NVMe/TCP connections.",
    );
    let _ = writeln!(o, "nvmf_raid_connections {connections}");
    family(
        &mut o,
        "nvmf_raid_pool_buffers_in_use",
        "gauge",
        "Data buffers of the reactors' pools in use.",
    );
    let _ = writeln!(o, "nvmf_raid_pool_buffers_in_use {buffers}");
    o
}

/// Stretched volumes: mode, peer, dirty regions and resync, write and link latency.
fn site_families(o: &mut String, sites: &[SiteHandle]) {
    if sites.is_empty() {
        return;
    }
    let st: Vec<(String, crate::site::control::SiteStatus)> = sites
        .iter()
        .map(|h| h.status())
        .map(|s| {
            (
                format!(
                    "volume=\"{}\",site=\"{}\"",
                    label(&s.volume),
                    label(&s.site)
                ),
                s,
            )
        })
        .collect();
    family(o, "nvmf_raid_site_mode", "gauge", "1 for the site's current mode (starting, mirrored, suspended, solo, fenced, source, target).");
    for (l, s) in &st {
        let _ = writeln!(o, "nvmf_raid_site_mode{{{l},mode=\"{}\"}} 1", s.mode);
    }
    type Value = fn(&crate::site::control::SiteStatus) -> f64;
    let gauges: [(&str, &str, &str, Value); 5] = [
        (
            "nvmf_raid_site_peer_reachable",
            "gauge",
            "1 while the peer site answers over the site link.",
            |s| s.peer_reachable as u8 as f64,
        ),
        (
            "nvmf_raid_site_dirty_regions",
            "gauge",
            "1 MiB regions the peer site misses (copied by the resync).",
            |s| s.dirty_regions as f64,
        ),
        (
            "nvmf_raid_site_resync_bytes_total",
            "counter",
            "Bytes copied to the peer site by resyncs.",
            |s| s.resync_bytes as f64,
        ),
        (
            "nvmf_raid_site_resync_eta_seconds",
            "gauge",
            "Estimated time left of the running resync (0 when none runs).",
            |s| s.resync_eta_secs.unwrap_or(0) as f64,
        ),
        (
            "nvmf_raid_site_solo_writes_total",
            "counter",
            "Writes acknowledged while serving alone (their regions marked dirty).",
            |s| s.solo_writes as f64,
        ),
    ];
    for (name, kind, help, value) in gauges {
        family(o, name, kind, help);
        for (l, s) in &st {
            let _ = writeln!(o, "{name}{{{l}}} {}", value(s));
        }
    }
    type Histogram = fn(&crate::site::SiteShared) -> &crate::site::LatencyHistogram;
    let hists: [(&str, &str, Histogram); 2] = [
        (
            "nvmf_raid_site_mirrored_write_seconds",
            "Latency of writes acknowledged once both sites had them.",
            |s| &s.mirrored_writes,
        ),
        (
            "nvmf_raid_site_link_rtt_seconds",
            "Round trip of the state exchanges with the peer over the site link.",
            |s| &s.link_rtt,
        ),
    ];
    for (name, help, hist) in hists {
        family(o, name, "histogram", help);
        for (h, (l, _)) in sites.iter().zip(&st) {
            let (buckets, sum_us, count) = hist(&h.shared).snapshot();
            let mut cumulative = 0;
            for (b, n) in BUCKETS_S.iter().zip(buckets) {
                cumulative += n;
                let _ = writeln!(o, "{name}_bucket{{{l},le=\"{b}\"}} {cumulative}");
            }
            let _ = writeln!(o, "{name}_bucket{{{l},le=\"+Inf\"}} {count}");
            let _ = writeln!(o, "{name}_sum{{{l}}} {}", sum_us as f64 / 1e6);
            let _ = writeln!(o, "{name}_count{{{l}}} {count}");
        }
    }
}

/// ANA state per listener and subsystem, and the change count.
fn ana_families(o: &mut String, target: &crate::nvmf::subsystem::Target) {
    family(o, "nvmf_raid_ana_state", "gauge", "ANA state a listener reports for a subsystem: 1 optimized, 2 non-optimized, 3 inaccessible, 4 persistent loss, 15 change.");
    for g in target.ana_report() {
        let _ = writeln!(
            o,
            "nvmf_raid_ana_state{{listener=\"{}\",subsystem=\"{}\"}} {}",
            label(&g.addr.to_string()),
            label(&g.subsystem),
            g.state.code()
        );
    }
    family(
        o,
        "nvmf_raid_ana_changes_total",
        "counter",
        "ANA state changes since the start (the ANA log page's change count).",
    );
    let _ = writeln!(
        o,
        "nvmf_raid_ana_changes_total {}",
        target.ana.change_count()
    );
}

fn volume_families(o: &mut String, volumes: &[Arc<RaidBdev>]) {
    family(
        o,
        "nvmf_raid_volume_state",
        "gauge",
        "1 for the volume's current state (online, degraded, rebuilding, offline).",
    );
    for v in volumes {
        let _ = writeln!(
            o,
            "nvmf_raid_volume_state{{volume=\"{}\",state=\"{}\"}} 1",
            label(v.name()),
            v.state()
        );
    }
    family(
        o,
        "nvmf_raid_member_state",
        "gauge",
        "1 for each slot's current state (active, rebuilding, failed, missing).",
    );
    for v in volumes {
        let h = v.health();
        for slot in 0..h.slots() {
            let dev = h.slot_device(slot);
            let _ = writeln!(o, "nvmf_raid_member_state{{volume=\"{}\",slot=\"{slot}\",device=\"{}\",state=\"{}\"}} 1", label(v.name()), label(dev.bdev.name()), h.state_name(slot));
        }
    }
    family(
        o,
        "nvmf_raid_member_slow",
        "gauge",
        "1 while the member is far slower than its peers (reads are served around it).",
    );
    for v in volumes {
        let h = v.health();
        for slot in 0..h.slots() {
            let _ = writeln!(
                o,
                "nvmf_raid_member_slow{{volume=\"{}\",slot=\"{slot}\",device=\"{}\"}} {}",
                label(v.name()),
                label(h.slot_device(slot).bdev.name()),
                h.slow.report(slot).slow as u8
            );
        }
    }
    family(
        o,
        "nvmf_raid_member_recent_latency_seconds",
        "gauge",
        "Mean member I/O latency over the last second with I/O.",
    );
    for v in volumes {
        let h = v.health();
        for slot in 0..h.slots() {
            let secs = h.slow.report(slot).latency_us as f64 / 1e6;
            let _ = writeln!(o, "nvmf_raid_member_recent_latency_seconds{{volume=\"{}\",slot=\"{slot}\",device=\"{}\"}} {secs}", label(v.name()), label(h.slot_device(slot).bdev.name()));
        }
    }
    family(o, "nvmf_raid_volume_spares", "gauge", "Hot spares ready.");
    for v in volumes {
        let _ = writeln!(
            o,
            "nvmf_raid_volume_spares{{volume=\"{}\"}} {}",
            label(v.name()),
            v.health().spares().len()
        );
    }
    type Value = fn(&RaidBdev) -> f64;
    let per_volume: [(&str, &str, Value); 5] = [
        (
            "nvmf_raid_volume_scrub_ratio",
            "Fraction of the running scrub done (1 when none runs).",
            |v| {
                let r = v.scrub().report();
                if r.active {
                    r.rows_done as f64 / r.rows.max(1) as f64
                } else {
                    1.0
                }
            },
        ),
        (
            "nvmf_raid_volume_scrub_mismatches",
            "Rows whose parity or copies disagreed in the running or last scrub.",
            |v| v.scrub().report().mismatches as f64,
        ),
        (
            "nvmf_raid_volume_rebuild_ratio",
            "Fraction of the running rebuild done (1 when none runs).",
            |v| v.health().rebuild_progress().percent / 100.0,
        ),
        (
            "nvmf_raid_volume_rebuild_rate_bytes_per_second",
            "Rate of the running rebuild.",
            |v| v.health().rebuild_progress().bytes_per_sec,
        ),
        (
            "nvmf_raid_volume_resync_ratio",
            "Fraction of the running resync done (1 when none runs).",
            |v| {
                let (done, total) = v.resync().progress();
                if total == 0 {
                    1.0
                } else {
                    done as f64 / total as f64
                }
            },
        ),
    ];
    for (name, help, value) in per_volume {
        family(o, name, "gauge", help);
        for v in volumes {
            let _ = writeln!(o, "{name}{{volume=\"{}\"}} {}", label(v.name()), value(v));
        }
    }
}
