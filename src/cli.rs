//! Readable output of the management commands (tables by default, JSON with --json).

use std::path::Path;

use serde_json::{json, Value};

use super::{AnaCmd, SiteCmd, VolumeCmd};

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn volume(socket: &Path, cmd: VolumeCmd) -> Result<(), String> {
    let call = |method: &str, p: Value| nvmf_raid::mgmt::call(socket, method, p);
    match cmd {
        VolumeCmd::Status {
            name,
            json,
            watch: false,
            ..
        } => {
            let r = call("volume_status", json!({"name": name}))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap());
                return Ok(());
            }
            print_volumes(&r, name.as_deref())
        }
        VolumeCmd::Status {
            name, until_idle, ..
        } => watch(socket, name.as_deref(), until_idle),
        VolumeCmd::FailMember {
            volume,
            member,
            force,
            wait,
        } => {
            call(
                "volume_fail_member",
                json!({"volume": volume, "member": member, "force": force}),
            )?;
            println!("{volume}: member {member} failed");
            follow(socket, &volume, wait)
        }
        VolumeCmd::AddSpare {
            volume,
            device,
            path,
            wait,
        } => {
            let r = call(
                "volume_add_spare",
                json!({"volume": volume, "device": device, "path": path}),
            )?;
            print_volumes(&json!([r]), None)?;
            follow(socket, &volume, wait)
        }
        VolumeCmd::RemoveSpare { volume, device } => print_volumes(
            &json!([call(
                "volume_remove_spare",
                json!({"volume": volume, "device": device})
            )?]),
            None,
        ),
        VolumeCmd::Replace {
            volume,
            member,
            spare,
            force,
            wait,
        } => {
            let r = call(
                "volume_replace_member",
                json!({"volume": volume, "member": member, "spare": spare, "force": force}),
            )?;
            print_volumes(&json!([r]), None)?;
            follow(socket, &volume, wait)
        }
        VolumeCmd::ReAdd {
            volume,
            member,
            wait,
        } => {
            let r = call(
                "volume_readd_member",
                json!({"volume": volume, "member": member}),
            )?;
            match r["catch_up_regions"].as_u64() {
                Some(n) => println!("{volume}: member {member} re-added: copying the {n} write-intent regions written while it was out"),
                None => println!("{volume}: member {member} re-added: no bitmap covers its absence, rebuilding it in full"),
            }
            follow(socket, &volume, wait)
        }
        VolumeCmd::RemoveMember { volume, member } => print_volumes(
            &json!([call(
                "volume_remove_member",
                json!({"volume": volume, "member": member})
            )?]),
            None,
        ),
        VolumeCmd::Scrub {
            volume,
            repair,
            stop,
            rate,
            wait,
        } => {
            let mut p = json!({"volume": volume, "repair": repair, "action": if stop { "stop" } else { "start" }});
            if let Some(r) = rate {
                p["bytes_per_sec"] =
                    json!(nvmf_raid::config::parse_size(&r).map_err(|e| format!("rate: {e}"))?);
            }
            let r = call("volume_scrub", p)?;
            print_volumes(&json!([r]), None)?;
            if !wait {
                return Ok(());
            }
            watch(socket, Some(&volume), true)?;
            let sc = &call("volume_status", json!({"name": volume}))?[0]["scrub"];
            println!("{volume}: {}", scrub_summary(sc));
            if sc["mismatches"].as_u64().unwrap_or(0) > sc["repaired"].as_u64().unwrap_or(0) {
                return Err(format!("{volume}: the scrub found mismatches it did not repair (run it with --repair to rewrite them)"));
            }
            Ok(())
        }
        VolumeCmd::RebuildRate { volume, rate } => {
            let bytes = nvmf_raid::config::parse_size(&rate).map_err(|e| format!("rate: {e}"))?;
            call(
                "volume_rebuild_rate",
                json!({"volume": volume, "bytes_per_sec": bytes}),
            )?;
            println!(
                "{volume}: rebuild rate {}",
                if bytes == 0 {
                    "unlimited".to_string()
                } else {
                    format!("{}/s", human_bytes(bytes))
                }
            );
            Ok(())
        }
    }
}

/// With `wait`: follow the volume's rebuild or resync until none runs. The metadata
/// thread puts a spare in place a moment after a failure, so give it that moment.
fn follow(socket: &Path, volume: &str, wait: bool) -> Result<(), String> {
    if !wait {
        return Ok(());
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    watch(socket, Some(volume), true)
}

fn print_volumes(r: &Value, name: Option<&str>) -> Result<(), String> {
    let vols = r.as_array().cloned().unwrap_or_default();
    if vols.is_empty() {
        return Err(match name {
            Some(n) => format!("unknown volume '{n}'"),
            None => "the target has no volumes".into(),
        });
    }
    println!(
        "{:<16} {:<8} {:<10} {:>11} {:>9}",
        "VOLUME", "LEVEL", "STATE", "SIZE", "STRIP"
    );
    for v in vols {
        let size = v["blocks"].as_u64().unwrap_or(0) * v["block_size"].as_u64().unwrap_or(0);
        let s = |k: &str| v[k].as_str().unwrap_or("?").to_string();
        println!(
            "{:<16} {:<8} {:<10} {:>11} {:>9}",
            s("name"),
            s("level"),
            s("state"),
            human_bytes(size),
            human_bytes(v["strip_bytes"].as_u64().unwrap_or(0))
        );
        if let Some(line) = progress_line(&v) {
            println!("  {line}");
        }
        for m in v["members"].as_array().into_iter().flatten() {
            let slow = if m["slow"] == true {
                format!(
                    "  SLOW ({:.1} ms, for {:.0} s)",
                    m["latency_us"].as_f64().unwrap_or(0.0) / 1e3,
                    m["slow_for_secs"].as_f64().unwrap_or(0.0)
                )
            } else {
                String::new()
            };
            println!(
                "  slot {:<3} {:<20} {}{slow}",
                m["slot"],
                m["device"].as_str().unwrap_or("?"),
                m["state"].as_str().unwrap_or("?")
            );
        }
        if v["scrub"]["completed"].as_u64().unwrap_or(0) > 0 && v["scrub"]["active"] == false {
            println!("  last {}", scrub_summary(&v["scrub"]));
        }
        for sp in v["spares"].as_array().into_iter().flatten() {
            println!("  spare    {:<20} ready", sp.as_str().unwrap_or("?"));
        }
    }
    Ok(())
}

/// "scrub of 1024 rows: 3 mismatches, 3 repaired, 0 skipped, 2.1 s".
fn scrub_summary(sc: &Value) -> String {
    format!(
        "scrub of {} rows: {} mismatches, {} repaired, {} skipped, {:.1} s",
        sc["rows_done"],
        sc["mismatches"],
        sc["repaired"],
        sc["skipped"],
        sc["elapsed_secs"].as_f64().unwrap_or(0.0)
    )
}

fn bar(fraction: f64) -> String {
    const WIDTH: usize = 30;
    let filled = ((fraction.clamp(0.0, 1.0) * WIDTH as f64) as usize).min(WIDTH);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(WIDTH - filled))
}

fn eta(secs: Option<f64>) -> String {
    match secs {
        Some(s) if s.is_finite() => {
            let s = s.round() as u64;
            format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
        }
        _ => "--:--:--".into(),
    }
}

/// "rebuild [####....] 42.0%  123.4 MiB/s  ETA 0:00:12", or the resync's; None when idle.
fn progress_line(v: &Value) -> Option<String> {
    let rb = &v["rebuild"];
    if rb["active"].as_bool() == Some(true) {
        let pct = rb["percent"].as_f64().unwrap_or(0.0);
        let rate = rb["bytes_per_sec"].as_f64().unwrap_or(0.0);
        let limit = rb["rate_limit"].as_u64().unwrap_or(0);
        let limit = if limit == 0 {
            "unlimited".to_string()
        } else {
            format!("limit {}/s", human_bytes(limit))
        };
        return Some(format!(
            "rebuild {} {pct:5.1}%  {}/s  ETA {}  ({limit})",
            bar(pct / 100.0),
            human_bytes(rate as u64),
            eta(rb["eta_secs"].as_f64())
        ));
    }
    let sc = &v["scrub"];
    if sc["active"].as_bool() == Some(true) {
        let (done, total) = (
            sc["rows_done"].as_u64().unwrap_or(0),
            sc["rows"].as_u64().unwrap_or(1).max(1),
        );
        let f = done as f64 / total as f64;
        let mode = if sc["repair"] == true {
            "repair"
        } else {
            "check"
        };
        return Some(format!(
            "scrub   {} {:5.1}%  {done}/{total} rows  {mode}  mismatches {}",
            bar(f),
            100.0 * f,
            sc["mismatches"]
        ));
    }
    if v["resync"]["active"].as_bool() == Some(true) {
        let (done, total) = (
            v["resync"]["stripes_done"].as_u64().unwrap_or(0),
            v["resync"]["stripes"].as_u64().unwrap_or(1).max(1),
        );
        let f = done as f64 / total as f64;
        return Some(format!(
            "resync  {} {:5.1}%  {done}/{total} stripes",
            bar(f),
            100.0 * f
        ));
    }
    None
}

/// Follow volume state every second until interrupted (or, with `until_idle`, until no
/// rebuild, resync or scrub runs).
fn watch(socket: &Path, name: Option<&str>, until_idle: bool) -> Result<(), String> {
    loop {
        let r = nvmf_raid::mgmt::call(socket, "volume_status", json!({"name": name}))?;
        let vols = r.as_array().cloned().unwrap_or_default();
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let stamp = format!(
            "{:02}:{:02}:{:02}",
            secs / 3600 % 24,
            secs / 60 % 60,
            secs % 60
        );
        let mut busy = false;
        for v in &vols {
            let line = progress_line(v);
            busy |= line.is_some();
            println!(
                "{stamp} {:<16} {:<10} {}",
                v["name"].as_str().unwrap_or("?"),
                v["state"].as_str().unwrap_or("?"),
                line.unwrap_or_default()
            );
        }
        if until_idle && !busy {
            if vols.iter().any(|v| v["state"] == "offline") {
                return Err("a volume is offline".into());
            }
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

pub fn print_subsystems(r: &Value, as_json: bool) {
    if as_json {
        return println!("{}", serde_json::to_string_pretty(r).unwrap());
    }
    for s in r.as_array().into_iter().flatten() {
        let hosts = if s["allow_any_host"].as_bool() == Some(true) {
            "any host".to_string()
        } else {
            s["hosts"].to_string()
        };
        println!(
            "{}  serial {}  hosts: {hosts}",
            s["nqn"].as_str().unwrap_or("?"),
            s["serial"].as_str().unwrap_or("?")
        );
        for n in s["namespaces"].as_array().into_iter().flatten() {
            let size = n["blocks"].as_u64().unwrap_or(0) * n["block_size"].as_u64().unwrap_or(0);
            println!(
                "  nsid {:<4} {:>11}  {} B blocks",
                n["nsid"],
                human_bytes(size),
                n["block_size"]
            );
        }
    }
}

pub fn print_controllers(r: &Value, as_json: bool) {
    if as_json {
        return println!("{}", serde_json::to_string_pretty(r).unwrap());
    }
    println!(
        "{:<7} {:<9} {:<44} HOST",
        "CNTLID", "IO QUEUES", "SUBSYSTEM"
    );
    for c in r.as_array().into_iter().flatten() {
        println!(
            "{:<7} {:<9} {:<44} {}",
            c["cntlid"],
            c["io_queues"],
            c["subsystem"].as_str().unwrap_or("?"),
            c["host"].as_str().unwrap_or("?")
        );
    }
}

fn stats_rows(objects: &[Value], name: impl Fn(&Value) -> String) {
    for obj in objects {
        for (op, st) in obj["ops"].as_object().into_iter().flatten() {
            let l = &st["latency_us"];
            let n = |k: &str| l[k].as_u64().unwrap_or(0);
            println!(
                "{:<44} {:<6} {:>10} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
                name(obj),
                op,
                st["ios"].as_u64().unwrap_or(0),
                human_bytes(st["bytes"].as_u64().unwrap_or(0)),
                n("p50"),
                n("p90"),
                n("p99"),
                n("p99.9"),
                n("p99.99"),
                n("max")
            );
        }
    }
}

/// `nvmf-raid stats`: a table (latencies in microseconds), JSON, and optionally a plot.
pub fn stats(
    socket: &Path,
    as_json: bool,
    buckets: bool,
    reset: bool,
    plot: Option<&Path>,
) -> Result<(), String> {
    let r = nvmf_raid::mgmt::call(
        socket,
        "stats",
        json!({"reset": reset, "buckets": buckets || plot.is_some()}),
    )?;
    if let Some(path) = plot {
        write_stats_plot(path, &r)?;
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap());
        return Ok(());
    }
    println!(
        "{:<44} {:<6} {:>10} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "OBJECT", "OP", "IOS", "BYTES", "p50", "p90", "p99", "p99.9", "p99.99", "max(us)"
    );
    let arr = |k: &str| r[k].as_array().cloned().unwrap_or_default();
    stats_rows(&arr("namespaces"), |o| {
        format!(
            "{} ns {}",
            o["subsystem"].as_str().unwrap_or("?"),
            o["nsid"]
        )
    });
    stats_rows(&arr("members"), |o| {
        format!(
            "member {}/{}",
            o["volume"].as_str().unwrap_or("?"),
            o["device"].as_str().unwrap_or("?")
        )
    });
    stats_rows(&arr("reactors"), |o| format!("reactor {}", o["reactor"]));
    if reset {
        println!("(statistics reset)");
    }
    Ok(())
}

/// A histogram rebuilt from the API's [latency_us, count] buckets.
fn histogram_of(buckets: &Value) -> hdrhistogram::Histogram<u64> {
    let mut h = nvmf_raid::stats::histogram();
    for b in buckets.as_array().into_iter().flatten() {
        let (v, c) = (b[0].as_u64().unwrap_or(0), b[1].as_u64().unwrap_or(0));
        h.saturating_record_n(
            v.clamp(nvmf_raid::stats::LOWEST_US, nvmf_raid::stats::HIGHEST_US),
            c,
        );
    }
    h
}

fn write_stats_plot(path: &Path, r: &Value) -> Result<(), String> {
    let mut curves = Vec::new();
    for ns in r["namespaces"].as_array().into_iter().flatten() {
        for (op, st) in ns["ops"].as_object().into_iter().flatten() {
            curves.push((
                format!("nsid {} {op}", ns["nsid"]),
                histogram_of(&st["latency_us"]["buckets"]),
            ));
        }
    }
    let series: Vec<nvmf_raid::plot::Series> = curves
        .iter()
        .map(|(label, h)| nvmf_raid::plot::Series {
            label: label.clone(),
            histogram: h,
            unit_ns: 1000.0,
        })
        .collect();
    let svg = nvmf_raid::plot::percentile_svg("nvmf-raid namespace latency", &series);
    std::fs::write(path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("plot written to {}", path.display());
    Ok(())
}

pub fn write_perf_plot(
    path: &Path,
    latency: &hdrhistogram::Histogram<u64>,
    o: &nvmf_raid::host::perf::PerfOptions,
) -> Result<(), String> {
    let label = format!("{:?} {} B QD {}", o.pattern, o.block_size, o.depth);
    let series = [nvmf_raid::plot::Series {
        label,
        histogram: latency,
        unit_ns: 1.0,
    }];
    let svg = nvmf_raid::plot::percentile_svg("nvmf-raid perf latency", &series);
    std::fs::write(path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("plot written to {}", path.display());
    Ok(())
}

/// `nvmf-raid ana set|status`.
pub fn ana(socket: &Path, cmd: AnaCmd) -> Result<(), String> {
    match cmd {
        AnaCmd::Set {
            listener,
            state,
            subsystem,
        } => {
            let port = listener
                .trim()
                .parse::<u64>()
                .map_or_else(|_| json!(listener), |id| json!(id));
            let r = nvmf_raid::mgmt::call(
                socket,
                "ana_set",
                json!({"port": port, "subsystem": subsystem, "state": state}),
            )?;
            let changed = r["changed"].as_array().cloned().unwrap_or_default();
            if changed.is_empty() {
                println!("{listener}: already {state}, nothing changed");
            }
            for c in &changed {
                println!(
                    "{listener}: {} group {} {} -> {} (change count {}, {} controllers notified)",
                    c["subsystem"].as_str().unwrap_or("?"),
                    c["anagrpid"],
                    c["from"].as_str().unwrap_or("?"),
                    c["to"].as_str().unwrap_or("?"),
                    c["change_count"],
                    c["notified"]
                );
            }
            Ok(())
        }
        AnaCmd::Status { json } => {
            let r = nvmf_raid::mgmt::call(socket, "ana_status", json!({}))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap());
                return Ok(());
            }
            println!("change count {}", r["change_count"]);
            println!(
                "{:<4} {:<22} {:<44} {:<5} {:<16} {:>7} {:>11}",
                "PORT", "LISTENER", "SUBSYSTEM", "GROUP", "STATE", "CHGCNT", "CONTROLLERS"
            );
            for g in r["groups"].as_array().into_iter().flatten() {
                println!(
                    "{:<4} {:<22} {:<44} {:<5} {:<16} {:>7} {:>11}",
                    g["port"],
                    g["listener"].as_str().unwrap_or("?"),
                    g["subsystem"].as_str().unwrap_or("?"),
                    g["anagrpid"],
                    g["state"].as_str().unwrap_or("?"),
                    g["change_count"],
                    g["controllers"]
                );
            }
            Ok(())
        }
    }
}

/// `nvmf-raid site status|handover|takeover`.
pub fn site(socket: &Path, cmd: SiteCmd) -> Result<(), String> {
    match cmd {
        SiteCmd::Status { json } => {
            let r = nvmf_raid::mgmt::call(socket, "site_status", json!({}))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap());
                return Ok(());
            }
            for v in r.as_array().into_iter().flatten() {
                let s = |k: &str| v[k].as_str().unwrap_or("?").to_string();
                println!(
                    "{}: site {} ({}), {}",
                    s("volume"),
                    s("site"),
                    if v["leader"] == true {
                        "leader"
                    } else {
                        "follower"
                    },
                    s("mode")
                );
                println!(
                    "  peer {}: {}, mode {}, link round trip {} us",
                    s("peer_site"),
                    if v["peer_reachable"] == true {
                        "reachable"
                    } else {
                        "unreachable"
                    },
                    s("peer_mode"),
                    v["link_rtt_us"]
                );
                println!("  witness {}: {}", s("witness"), s("witness_role"));
                let eta = v["resync_eta_secs"]
                    .as_u64()
                    .map_or(String::new(), |e| format!(", about {e} s left"));
                println!(
                    "  dirty regions {} (1 MiB each), resync copied {} bytes{eta}",
                    v["dirty_regions"], v["resync_bytes"]
                );
                println!(
                    "  writes: {} on both sites (mean {} us), {} alone, {} refused",
                    v["mirrored_writes"],
                    v["mirrored_write_avg_us"],
                    v["solo_writes"],
                    v["refused"]
                );
                println!("  last change: {}", s("last_change"));
            }
            Ok(())
        }
        SiteCmd::Handover { volume } => {
            nvmf_raid::mgmt::call(socket, "site_handover", json!({"volume": volume}))?;
            println!("{volume}: hand-over requested; `nvmf-raid site status` shows the mode");
            Ok(())
        }
        SiteCmd::Takeover { volume, force } => {
            nvmf_raid::mgmt::call(
                socket,
                "site_takeover",
                json!({"volume": volume, "force": force}),
            )?;
            println!("{volume}: takeover requested");
            Ok(())
        }
    }
}
