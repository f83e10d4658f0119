//! Assemble a running target from a configuration: devices, subsystems, listeners and
//! one reactor thread per configured core.

use std::net::TcpListener;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use tracing::info;

use crate::bdev::fault::{FaultBdev, FaultControl};
use crate::bdev::{Bdev, FileBdev, NullBdev, RamBdev};
use crate::config::{Config, DeviceKind, DeviceSection};
use crate::mgmt::{self, Managed};
use crate::nvmf::subsystem::{Namespace, Port, Subsystem, SubsystemKind, Target};
use crate::nvmf::TransportLimits;
use crate::reactor::bufpool::PoolConfig;
use crate::reactor::{self, HandshakeLimits, ReactorConfig, Shared};
use crate::volume::raid::{Closed, RaidBdev, VolumeSpec};

pub struct Server {
    pub shared: Arc<Shared>,
    pub ports: Vec<Port>,
    threads: Vec<JoinHandle<()>>,
    volumes: Vec<Arc<RaidBdev>>,
    faults: Vec<(String, Arc<FaultControl>)>,
    mgmt: Option<mgmt::MgmtServer>,
    metrics: Option<crate::metrics::MetricsServer>,
    config_path: Option<std::path::PathBuf>,
    /// Every device and volume, for the flush at shutdown.
    devices: Arc<Vec<Arc<dyn Bdev>>>,
    /// The site controllers of the stretched volumes.
    sites: Vec<(crate::site::control::SiteHandle, JoinHandle<()>)>,
}

/// Start the site controller of every stretched volume. Host paths of the subsystems that
/// export a stretched volume follow its mode; its link listener is never a host path.
fn start_sites(
    cfg: &Config,
    target: &Arc<Target>,
    ports: &[Port],
    stretches: &[crate::site::setup::Stretch],
) -> std::io::Result<Vec<(crate::site::control::SiteHandle, JoinHandle<()>)>> {
    use crate::nvmf::ana::AnaState;
    use crate::site::control::{SiteConfig, SiteController, SiteInbox};
    if stretches.is_empty() {
        return Ok(vec![]);
    }
    let inbox = Arc::new(SiteInbox::default());
    let _ = target.site_messages.set(inbox.clone());
    let link_ports: Vec<u16> = cfg
        .listeners
        .iter()
        .zip(ports)
        .filter(|(l, _)| cfg.stretches.iter().any(|s| s.link_listener == l.address))
        .map(|(_, p)| p.id)
        .collect();
    let mut out = Vec::new();
    for st in stretches {
        let s = &st.cfg;
        let exporting: Vec<&String> = cfg
            .subsystems
            .iter()
            .filter(|sub| {
                sub.namespaces.iter().any(|n| n.device == s.name) && sub.nqn != s.link_nqn()
            })
            .map(|sub| &sub.nqn)
            .collect();
        let mut host_paths = Vec::new();
        for p in ports {
            for nqn in &exporting {
                if link_ports.contains(&p.id) {
                    let _ = target.set_ana_state(p.id, Some(nqn), AnaState::Inaccessible);
                } else {
                    host_paths.push((p.id, nqn.to_string()));
                }
            }
        }
        inbox.add(&s.name, st.bdev.shared.clone(), st.inbox.clone());
        let sc = SiteConfig {
            volume: s.name.clone(),
            site: s.site.clone(),
            peer_site: s.peer_site.clone(),
            leader: s.leader.clone(),
            witness: s
                .witness
                .as_ref()
                .map(|w| w.parse().expect("validated witness")),
            witness_ttl_s: s.witness_ttl_s,
            link_timeout: std::time::Duration::from_millis(s.link_timeout_ms),
            state_file: s.state_file.clone(),
            host_paths,
        };
        out.push(SiteController::start(
            sc,
            st.bdev.shared.clone(),
            st.replica.clone(),
            target.clone(),
            st.inbox.clone(),
            st.crash_ranges.clone(),
        )?);
    }
    Ok(out)
}

fn open_device(d: &DeviceSection) -> std::io::Result<Arc<dyn Bdev>> {
    let size = d.size.map(|s| s.0);
    let dev: Arc<dyn Bdev> = match d.kind {
        DeviceKind::File => {
            let path = d
                .path
                .as_ref()
                .expect("validated: file devices have a path");
            let f = FileBdev::open(&d.name, path, d.block_size, size)?;
            info!(device = d.name, path = %path.display(), direct_io = f.uses_direct_io(), blocks = f.num_blocks(), "file device opened");
            Arc::new(f)
        }
        DeviceKind::Ram => Arc::new(RamBdev::new(&d.name, d.block_size, size.unwrap())?),
        DeviceKind::Null => Arc::new(NullBdev::new(&d.name, d.block_size, size.unwrap())),
        DeviceKind::Nvmf => {
            let cfg = d
                .remote_config()
                .expect("validated: nvmf devices have an address and subnqn");
            Arc::new(crate::bdev::remote::RemoteBdev::open(
                &d.name,
                cfg,
                d.block_size,
                size,
            )?)
        }
    };
    Ok(dev)
}

/// Bind a listener, waiting a while if the address is still held: a target that was
/// killed releases its listening socket only once the kernel has torn down its io_uring.
fn bind_listener(address: &str) -> std::io::Result<TcpListener> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut warned = false;
    loop {
        match TcpListener::bind(address) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(address, "address in use: waiting for it to be released");
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            r => {
                return r.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("listen on {address}: {e}"))
                })
            }
        }
    }
}

/// Position of a device or volume in the device table: devices first, then volumes.
fn device_index(cfg: &Config, name: &str) -> usize {
    cfg.devices
        .iter()
        .map(|d| &d.name)
        .chain(cfg.volumes.iter().map(|v| &v.name))
        .chain(
            cfg.stretches
                .iter()
                .flat_map(|s| {
                    [
                        s.name.clone(),
                        format!("{}:replica", s.name),
                        format!("{}:forward", s.name),
                    ]
                })
                .collect::<Vec<_>>()
                .iter(),
        )
        .position(|n| n == name)
        .expect("validated device name")
}

fn serial_for(nqn: &str) -> String {
    let h = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, nqn.as_bytes());
    h.simple().to_string()[..20].to_string()
}

fn build_subsystems(
    cfg: &Config,
    devices: &[Arc<dyn Bdev>],
) -> std::io::Result<Vec<Arc<Subsystem>>> {
    let mut out = Vec::new();
    let mut stats_index = 0;
    for s in &cfg.subsystems {
        let mut namespaces = Vec::new();
        for (j, n) in s.namespaces.iter().enumerate() {
            let nsid = n.nsid.unwrap_or(j as u32 + 1);
            let device = device_index(cfg, &n.device);
            let dev = &devices[device];
            if dev.num_blocks() == 0 {
                return Err(std::io::Error::other(format!(
                    "device '{}' is smaller than one block",
                    dev.name()
                )));
            }
            let mut ns = Namespace::new(&s.nqn, nsid, device, dev.block_size(), dev.num_blocks());
            if let Some(u) = &n.uuid {
                ns.uuid = *uuid::Uuid::parse_str(u).expect("validated uuid").as_bytes();
            }
            ns.stats_index = stats_index;
            stats_index += 1;
            namespaces.push(ns);
        }
        out.push(Arc::new(Subsystem {
            nqn: s.nqn.clone(),
            kind: SubsystemKind::Nvm,
            serial: s.serial.clone().unwrap_or_else(|| serial_for(&s.nqn)),
            model: s.model.clone(),
            allow_any_host: s.allow_any_host,
            hosts: RwLock::new(s.hosts.clone()),
            namespaces,
            cntlid_min: s.cntlid_min as u16,
            cntlid_max: s.cntlid_max as u16,
        }));
    }
    Ok(out)
}

pub fn limits_of(cfg: &Config) -> (TransportLimits, PoolConfig) {
    let l = &cfg.limits;
    let t = TransportLimits {
        queue_depth: l.queue_depth,
        admin_queue_depth: 32,
        inline_data: l.in_capsule_data,
        max_transfer: l.max_transfer,
        max_h2c_data: l.max_h2c_data,
    };
    let p = PoolConfig {
        small_size: 128 * 1024,
        small_count: l.buffers_128k,
        large_size: l.max_transfer.max(128 * 1024),
        large_count: l.buffers_1m,
    };
    (t, p)
}

/// Closes the volumes already assembled when a start fails later, so that they stay clean.
struct CloseOnError(Vec<Arc<RaidBdev>>);

impl CloseOnError {
    fn disarm(mut self) {
        self.0.clear();
    }
}

impl Drop for CloseOnError {
    fn drop(&mut self) {
        for v in &self.0 {
            let _ = v.close();
        }
    }
}

/// Replace every subsystem's host allow-list with the one `cfg` gives it; returns the
/// NQNs of the subsystems updated. Hosts already connected stay connected.
pub fn apply_host_lists(target: &Target, cfg: &Config) -> Vec<String> {
    let mut updated = Vec::new();
    for s in &cfg.subsystems {
        if let Some(sub) = target.subsystems.iter().find(|t| t.nqn == s.nqn) {
            *sub.hosts.write().unwrap() = s.hosts.clone();
            updated.push(s.nqn.clone());
        }
    }
    updated
}

/// Reload the host allow-lists from the configuration file at `path`.
pub fn reload_hosts_from(
    target: &Target,
    path: Option<&std::path::Path>,
) -> Result<Vec<String>, String> {
    let path = path.ok_or("the target runs without a configuration file: nothing to reload")?;
    let cfg = Config::load(path).map_err(|e| e.to_string())?;
    Ok(apply_host_lists(target, &cfg))
}

impl Server {
    pub fn start(cfg: &Config) -> std::io::Result<Server> {
        Server::start_with_path(cfg, None)
    }

    /// Start from `cfg`, which was read from `path` (reloaded on SIGHUP or by RPC).
    pub fn start_with_path(
        cfg: &Config,
        config_path: Option<&std::path::Path>,
    ) -> std::io::Result<Server> {
        // A forced parity path this CPU cannot run is a start-up error, not a panic later.
        let parity = crate::parity::Kernels::from_env().map_err(std::io::Error::other)?;
        tracing::info!(path = parity.isa().name(), "parity kernels");
        let cfg = &crate::site::setup::with_site_links(cfg);
        let in_volumes: Vec<&String> = cfg
            .volumes
            .iter()
            .flat_map(|v| v.members.iter().chain(&v.spares))
            .collect();
        let mut opened: Vec<Option<Arc<dyn Bdev>>> = Vec::new();
        let mut faults = Vec::new();
        for d in &cfg.devices {
            let dev = match open_device(d) {
                Ok(dev) => dev,
                // A volume can run without a member (degraded) or a spare: the target
                // starts, and the volume says what is missing.
                Err(e) if in_volumes.contains(&&d.name) => {
                    tracing::error!(device = d.name, error = %e, "device cannot be opened: its volume assembles without it");
                    opened.push(None);
                    continue;
                }
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("device '{}': {e}", d.name),
                    ))
                }
            };
            if d.fault_injection {
                let f = FaultBdev::new(dev);
                faults.push((d.name.clone(), f.control().clone()));
                opened.push(Some(Arc::new(f)));
            } else {
                opened.push(Some(dev));
            }
        }
        let mut volumes = Vec::new();
        let mut close_on_error = CloseOnError(Vec::new());
        for v in &cfg.volumes {
            let pick = |names: &[String]| {
                names
                    .iter()
                    .filter_map(|m| opened[device_index(cfg, m)].clone())
                    .collect()
            };
            let absent = v
                .members
                .iter()
                .filter(|m| opened[device_index(cfg, m)].is_none())
                .cloned()
                .collect();
            let spec = VolumeSpec {
                name: v.name.clone(),
                level: v.level,
                members: pick(&v.members),
                absent,
                spares: pick(&v.spares),
                group_size: v.group_size,
                strip_bytes: v.strip_bytes(),
                rebuild_rate: v.rebuild_rate.0,
                member_order: v.members.clone(),
                slow_policy: v.slow_policy(),
            };
            let vol = Arc::new(
                RaidBdev::new(spec)
                    .map_err(|e| std::io::Error::other(format!("volume '{}': {e}", v.name)))?,
            );
            info!(volume = v.name, level = ?v.level, members = v.members.len(), blocks = vol.num_blocks(), "volume assembled");
            vol.scrub().set_rate(v.scrub_rate.0);
            vol.set_scrub_schedule(
                (v.scrub_interval_hours > 0.0)
                    .then(|| std::time::Duration::from_secs_f64(v.scrub_interval_hours * 3600.0)),
            );
            volumes.push(vol.clone());
            close_on_error.0.push(vol.clone());
            opened.push(Some(vol));
        }
        let mut stretches = Vec::new();
        for st in &cfg.stretches {
            let local = opened[device_index(cfg, &st.volume)]
                .clone()
                .ok_or_else(|| {
                    std::io::Error::other(format!("stretch '{}': its volume is missing", st.name))
                })?;
            let parts = crate::site::setup::build(st, local)
                .map_err(|e| std::io::Error::other(format!("stretch '{}': {e}", st.name)))?;
            opened.push(Some(parts.bdev.clone()));
            opened.push(Some(Arc::new(crate::site::stretch::ReplicaView::new(
                &parts.bdev,
            ))));
            opened.push(Some(Arc::new(parts.bdev.peer_view())));
            stretches.push(parts);
        }
        // Only volume members can be absent, and namespaces never use them directly.
        let placeholder =
            |i: usize| -> Arc<dyn Bdev> { Arc::new(NullBdev::new(&format!("absent-{i}"), 512, 0)) };
        let devices: Vec<Arc<dyn Bdev>> = opened
            .into_iter()
            .enumerate()
            .map(|(i, d)| d.unwrap_or_else(|| placeholder(i)))
            .collect();
        let subsystems = build_subsystems(cfg, &devices)?;
        let mut listeners = Vec::new();
        let mut ports = Vec::new();
        for (i, l) in cfg.listeners.iter().enumerate() {
            let sock = bind_listener(&l.address)?;
            let port = Port {
                id: i as u16 + 1,
                addr: sock.local_addr()?,
            };
            ports.push(port.clone());
            listeners.push((sock, port.id));
        }
        let target = Arc::new(Target::new(
            subsystems,
            ports.clone(),
            cfg.limits.max_io_queues,
            cfg.limits.max_controllers,
        ));
        for (l, port) in cfg.listeners.iter().zip(&ports) {
            let state = l
                .initial_ana_state()
                .map_err(|e| std::io::Error::other(format!("listener {}: {e}", l.address)))?;
            target.ana.set_initial(port.id, state);
            if state != crate::nvmf::ana::AnaState::Optimized {
                info!(listener = %port.addr, ana_state = %state, "listener starts with a non-optimized ANA state");
            }
        }
        let sites = start_sites(cfg, &target, &ports, &stretches)?;
        let mut mailboxes = Vec::new();
        let mut inboxes = Vec::new();
        for _ in &cfg.reactor.cores {
            let (m, rx) = reactor::mailbox()?;
            mailboxes.push(m);
            inboxes.push(rx);
        }
        let shared = Arc::new(Shared::new(target, mailboxes));
        let (limits, pool) = limits_of(cfg);
        let per_reactor_conns = cfg.limits.max_connections.div_ceil(cfg.reactor.cores.len());
        let devices = Arc::new(devices);
        let mut threads = Vec::new();
        crate::util::clock::init();
        let (ready_tx, ready_rx) = crossbeam::channel::bounded(cfg.reactor.cores.len());
        for (i, (core, inbox)) in cfg.reactor.cores.iter().zip(inboxes).enumerate() {
            // Reactor 0 accepts; new connections are spread round-robin from there.
            let rc = ReactorConfig {
                index: i,
                core: Some(*core),
                mode: cfg.reactor.polling,
                limits,
                pool,
                max_connections: per_reactor_conns,
                handshake: HandshakeLimits {
                    timeout: std::time::Duration::from_millis(cfg.limits.handshake_timeout_ms),
                    per_source: cfg
                        .limits
                        .max_handshakes_per_source
                        .min(per_reactor_conns.div_ceil(2))
                        .max(1),
                },
                listeners: if i == 0 {
                    std::mem::take(&mut listeners)
                } else {
                    Vec::new()
                },
            };
            let (shared, devices, ready) = (shared.clone(), devices.clone(), ready_tx.clone());
            let t = std::thread::Builder::new()
                .name(format!("reactor-{i}"))
                .spawn(move || {
                    if let Err(e) = reactor::run(rc, shared.clone(), &devices, inbox, ready.clone())
                    {
                        tracing::error!(reactor = i, error = %e, "reactor failed to start");
                        let _ = ready.send(Err(e.to_string()));
                        shared.request_stop();
                    }
                })?;
            threads.push(t);
        }
        for _ in 0..threads.len() {
            if let Err(e) = ready_rx.recv().map_err(|e| e.to_string()).and_then(|r| r) {
                shared.request_stop();
                for t in threads {
                    let _ = t.join();
                }
                return Err(std::io::Error::other(format!("reactor start failed: {e}")));
            }
        }
        let mut mgmt_server = None;
        if let Some(path) = &cfg.management.socket {
            let managed = Managed {
                target: shared.target.clone(),
                shared: shared.clone(),
                volumes: volumes.clone(),
                faults: faults.clone(),
                devices: cfg
                    .devices
                    .iter()
                    .map(|d| d.name.clone())
                    .zip(devices.iter().cloned())
                    .chain(stretches.iter().flat_map(|s| {
                        [
                            (
                                s.replica.name().to_string(),
                                s.replica.clone() as Arc<dyn Bdev>,
                            ),
                            (
                                s.forward.name().to_string(),
                                s.forward.clone() as Arc<dyn Bdev>,
                            ),
                        ]
                    }))
                    .collect(),
                sites: sites.iter().map(|(h, _)| h.clone()).collect(),
                namespace_devices: cfg
                    .subsystems
                    .iter()
                    .flat_map(|s| s.namespaces.iter().map(|n| n.device.clone()))
                    .collect(),
                config_path: config_path.map(|p| p.to_path_buf()),
            };
            match mgmt::serve(path, Arc::new(managed)) {
                Ok(m) => mgmt_server = Some(m),
                Err(e) => {
                    shared.request_stop();
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("management socket {}: {e}", path.display()),
                    ));
                }
            }
            info!(socket = %path.display(), "management socket ready");
        }
        let metrics = match cfg.metrics.address.as_deref().filter(|a| !a.is_empty()) {
            Some(address) => match crate::metrics::serve(
                address,
                shared.clone(),
                volumes.clone(),
                sites.iter().map(|(h, _)| h.clone()).collect(),
            ) {
                Ok(m) => Some(m),
                Err(e) => {
                    shared.request_stop();
                    for t in threads {
                        let _ = t.join();
                    }
                    if let Some(m) = mgmt_server {
                        m.stop();
                    }
                    return Err(e);
                }
            },
            None => None,
        };
        close_on_error.disarm();
        Ok(Server {
            shared,
            ports,
            threads,
            volumes,
            faults,
            mgmt: mgmt_server,
            metrics,
            config_path: config_path.map(|p| p.to_path_buf()),
            devices,
            sites,
        })
    }

    /// The volume named `name`.
    pub fn volume(&self, name: &str) -> Option<&Arc<RaidBdev>> {
        self.volumes.iter().find(|v| v.name() == name)
    }

    /// The fault switches of a device configured with `fault_injection = true`.
    pub fn fault(&self, device: &str) -> Option<&Arc<FaultControl>> {
        self.faults
            .iter()
            .find(|(n, _)| n == device)
            .map(|(_, c)| c)
    }

    pub fn target(&self) -> &Target {
        &self.shared.target
    }

    /// Stop accepting, close every connection after in-flight I/O drains, join reactors.
    /// Reload the host allow-lists from the configuration file (SIGHUP).
    pub fn reload_hosts(&self) -> Result<Vec<String>, String> {
        reload_hosts_from(&self.shared.target, self.config_path.as_deref())
    }

    /// Where the metrics are served, if they are.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|m| m.addr)
    }

    /// Returns the volumes left with writes in flight (the drain limit passed before they
    /// completed): they stay dirty and the next start resynchronises them.
    pub fn stop(self) -> Vec<String> {
        if let Some(m) = self.mgmt {
            m.stop();
        }
        for (h, t) in self.sites {
            h.stop();
            let _ = t.join();
        }
        if let Some(m) = self.metrics {
            m.stop();
        }
        self.shared.request_stop();
        for t in self.threads {
            let _ = t.join();
        }
        // Reactors have drained: flush the devices, mark every volume clean.
        for d in self
            .devices
            .iter()
            .filter(|d| !self.volumes.iter().any(|v| v.name() == d.name()))
        {
            if let Err(e) = d.sync() {
                tracing::warn!(device = d.name(), error = %e, "flush at shutdown failed");
            }
        }
        self.volumes
            .iter()
            .filter(|v| v.close() == Closed::WritesInFlight)
            .map(|v| v.name().to_string())
            .collect()
    }
}
