//! The TOML configuration: listeners, reactors, limits, devices, subsystems, namespaces
//! and hosts. Every check names the field it rejects.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::nvmf::ana::AnaState;
use crate::nvmf::subsystem::{CNTLID_MAX, CNTLID_MIN};
use crate::reactor::PollMode;
use crate::volume::layout::{Layout, Level};
use crate::volume::level::StripWidth;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub reactor: ReactorSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerSection>,
    #[serde(rename = "device", default)]
    pub devices: Vec<DeviceSection>,
    #[serde(rename = "volume", default)]
    pub volumes: Vec<VolumeSection>,
    #[serde(rename = "subsystem", default)]
    pub subsystems: Vec<SubsystemSection>,
    #[serde(default)]
    pub management: ManagementSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    /// Volumes served from two sites (synchronous mirroring between them).
    #[serde(rename = "stretch", default)]
    pub stretches: Vec<StretchSection>,
}

/// One site's half of a stretched volume.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StretchSection {
    /// The stretched volume's name: the device namespaces use, the same at both sites.
    pub name: String,
    /// The local volume (or device) holding this site's copy.
    pub volume: String,
    pub site: String,
    pub peer_site: String,
    /// The site that orders writes while both are in sync (the same at both sites).
    pub leader: String,
    /// Where this site accepts its peer's link ("ip:port"); not a host path.
    pub link_listener: String,
    /// The peer site's link listener (or a relay in front of it).
    pub peer_link: String,
    /// The witness: an etcd endpoint ("ip:port") at a third site.
    pub witness: Option<String>,
    #[serde(default = "default_witness_ttl")]
    pub witness_ttl_s: u64,
    /// Without an exchange with the peer for this long, the peer is lost.
    #[serde(default = "default_link_timeout")]
    pub link_timeout_ms: u64,
    /// Background copy to a returning peer, bytes per second (0: unlimited).
    #[serde(default = "default_rebuild_rate")]
    pub resync_rate: Size,
    /// Where the site keeps its state across restarts (mode, dirty regions).
    pub state_file: PathBuf,
}

fn default_witness_ttl() -> u64 {
    5
}
fn default_link_timeout() -> u64 {
    2000
}

impl StretchSection {
    /// The link subsystem: the local copy (nsid 1, the replica the peer writes) and the
    /// stretched volume (nsid 2, where the peer forwards writes this site orders).
    pub fn link_nqn(&self) -> String {
        format!("nqn.2026-01.io.nvmf-raid:link:{}", self.name)
    }
}

/// Prometheus metrics over HTTP; off unless an address is given.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// e.g. "127.0.0.1:9464".
    pub address: Option<String>,
}

/// Where the default target serves its metrics.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9464";

/// The JSON-RPC management socket; off unless a path is given.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagementSection {
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactorSection {
    /// One reactor per listed core.
    #[serde(default = "default_cores")]
    pub cores: Vec<usize>,
    #[serde(default = "default_polling")]
    pub polling: PollMode,
}

fn default_cores() -> Vec<usize> {
    vec![0]
}
fn default_polling() -> PollMode {
    PollMode::Adaptive
}

impl Default for ReactorSection {
    fn default() -> Self {
        ReactorSection {
            cores: default_cores(),
            polling: default_polling(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub queue_depth: u16,
    pub max_io_queues: u16,
    pub max_connections: usize,
    pub max_controllers: usize,
    pub in_capsule_data: usize,
    pub max_transfer: usize,
    pub max_h2c_data: u32,
    pub buffers_128k: usize,
    pub buffers_1m: usize,
    /// Milliseconds from accepting a connection to its Fabrics Connect (ICReq included).
    pub handshake_timeout_ms: u64,
    /// Connections in their handshake from one source address (per reactor).
    pub max_handshakes_per_source: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            queue_depth: 128,
            max_io_queues: 16,
            max_connections: 128,
            max_controllers: 64,
            in_capsule_data: 8192,
            max_transfer: 1 << 20,
            max_h2c_data: 128 * 1024,
            buffers_128k: 256,
            buffers_1m: 32,
            handshake_timeout_ms: 10_000,
            max_handshakes_per_source: 32,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub address: String,
    /// The ANA state this listener reports for every subsystem at start:
    /// "optimized" (default), "non-optimized" or "inaccessible".
    #[serde(default)]
    pub ana_state: Option<String>,
}

impl ListenerSection {
    /// The validated initial ANA state (optimized when not given).
    pub fn initial_ana_state(&self) -> Result<AnaState, String> {
        let Some(name) = &self.ana_state else {
            return Ok(AnaState::Optimized);
        };
        AnaState::parse(name)
            .filter(|s| AnaState::INITIAL.contains(s))
            .ok_or_else(|| {
                format!(
                    "'{name}' is not an initial ANA state (use one of {})",
                    AnaState::names(&AnaState::INITIAL)
                )
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    File,
    Ram,
    Null,
    /// A namespace on another NVMe/TCP target (the peer site, a remote member).
    Nvmf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSection {
    pub name: String,
    pub kind: DeviceKind,
    /// File or block device path (kind = "file").
    pub path: Option<PathBuf>,
    /// Size: required for ram/null, and creates a sparse file when a file is missing.
    pub size: Option<Size>,
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// Wrap the device in a fault injector that operators and tests can switch at run time.
    #[serde(default)]
    pub fault_injection: bool,
    /// kind = "nvmf": the remote target ("host:port"), its subsystem and namespace.
    pub address: Option<String>,
    pub subnqn: Option<String>,
    #[serde(default = "default_nsid")]
    pub nsid: u32,
    /// The host NQN this target presents to the remote one (default: derived from the
    /// device name).
    pub hostnqn: Option<String>,
    /// Commands in flight per I/O queue to the remote target (one queue per reactor).
    #[serde(default = "default_remote_queue_depth")]
    pub queue_depth: u16,
    /// A remote command outstanding this long fails its queue (the device's I/O errors).
    #[serde(default = "default_remote_io_timeout_ms")]
    pub io_timeout_ms: u64,
    /// Keep-alive timeout of the association; a Keep Alive goes out every third of it.
    #[serde(default = "default_remote_keep_alive_ms")]
    pub keep_alive_ms: u64,
    /// Deadline for connecting and for each admin command.
    #[serde(default = "default_remote_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest wait between reconnection attempts (the wait doubles from 100 ms).
    #[serde(default = "default_remote_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
}

fn default_nsid() -> u32 {
    1
}
fn default_remote_queue_depth() -> u16 {
    64
}
fn default_remote_io_timeout_ms() -> u64 {
    5000
}
fn default_remote_keep_alive_ms() -> u64 {
    5000
}
fn default_remote_connect_timeout_ms() -> u64 {
    3000
}
fn default_remote_reconnect_max_ms() -> u64 {
    2000
}

fn validate_remote(d: &DeviceSection, f: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    let addr = d.address.as_deref().ok_or_else(|| {
        invalid(
            f("address"),
            "an nvmf device needs the remote target's address (host:port)",
        )
    })?;
    if addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(invalid(
            f("address"),
            format!("'{addr}' is not an IP address and port"),
        ));
    }
    match d.subnqn.as_deref() {
        Some(n) if n.starts_with("nqn.") && n.len() <= 223 => {}
        _ => {
            return Err(invalid(
                f("subnqn"),
                "an nvmf device needs the remote subsystem's NQN (nqn..., at most 223 bytes)",
            ))
        }
    }
    if d.path.is_some() {
        return Err(invalid(
            f("path"),
            "an nvmf device has an address, not a path",
        ));
    }
    if d.nsid == 0 || d.nsid == u32::MAX {
        return Err(invalid(
            f("nsid"),
            "must be a namespace ID (1 to 0xFFFFFFFE)",
        ));
    }
    if !(2..=1024).contains(&d.queue_depth) {
        return Err(invalid(f("queue_depth"), "must be 2 to 1024"));
    }
    for (name, v, min) in [
        ("io_timeout_ms", d.io_timeout_ms, 100),
        ("keep_alive_ms", d.keep_alive_ms, 1000),
        ("connect_timeout_ms", d.connect_timeout_ms, 100),
        ("reconnect_max_ms", d.reconnect_max_ms, 100),
    ] {
        if v < min || v > 3_600_000 {
            return Err(invalid(f(name), format!("must be {min} to 3600000 ms")));
        }
    }
    Ok(())
}

impl DeviceSection {
    /// A file device with every other setting at its default.
    pub fn file(name: &str, path: PathBuf, size: Size) -> DeviceSection {
        DeviceSection {
            name: name.to_string(),
            kind: DeviceKind::File,
            path: Some(path),
            size: Some(size),
            block_size: default_block_size(),
            fault_injection: false,
            address: None,
            subnqn: None,
            nsid: default_nsid(),
            hostnqn: None,
            queue_depth: default_remote_queue_depth(),
            io_timeout_ms: default_remote_io_timeout_ms(),
            keep_alive_ms: default_remote_keep_alive_ms(),
            connect_timeout_ms: default_remote_connect_timeout_ms(),
            reconnect_max_ms: default_remote_reconnect_max_ms(),
        }
    }

    /// The remote namespace of an nvmf device.
    pub fn remote_config(&self) -> Option<crate::bdev::remote::RemoteConfig> {
        let ms = std::time::Duration::from_millis;
        Some(crate::bdev::remote::RemoteConfig {
            addr: self.address.as_deref()?.parse().ok()?,
            subnqn: self.subnqn.clone()?,
            nsid: self.nsid,
            hostnqn: self
                .hostnqn
                .clone()
                .unwrap_or_else(|| format!("nqn.2026-01.io.nvmf-raid:remote:{}", self.name)),
            queue_depth: self.queue_depth,
            io_timeout: ms(self.io_timeout_ms),
            keep_alive: ms(self.keep_alive_ms),
            connect_timeout: ms(self.connect_timeout_ms),
            reconnect_max: ms(self.reconnect_max_ms),
        })
    }
}

fn default_block_size() -> u32 {
    512
}

/// A byte count written as a number or a string with K/M/G/T suffix ("1G").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SizeRepr")]
pub struct Size(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Bytes(u64),
    Text(String),
}

impl TryFrom<SizeRepr> for Size {
    type Error = String;
    fn try_from(r: SizeRepr) -> Result<Size, String> {
        match r {
            SizeRepr::Bytes(b) => Ok(Size(b)),
            SizeRepr::Text(t) => parse_size(&t).map(Size),
        }
    }
}

pub fn parse_size(t: &str) -> Result<u64, String> {
    let t = t.trim();
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("'{t}' is not a size (use bytes or a K/M/G/T suffix)"))
}

impl VolumeSection {
    /// The configured strip in bytes (the default when none is given).
    pub fn strip_bytes(&self) -> u64 {
        self.strip_size.map_or(default_strip().0, |s| s.0)
    }
}

/// A RAID volume built from devices; namespaces may use it like a device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSection {
    pub name: String,
    pub level: Level,
    /// Device names, in layout order.
    pub members: Vec<String>,
    /// Bytes per strip; RAID 3 takes none (its strip is one member block).
    #[serde(default)]
    pub strip_size: Option<Size>,
    /// Members per group for raid10 (copies), raid50 and raid60 (set width).
    #[serde(default)]
    pub group_size: usize,
    /// Hot spares: devices a rebuild starts onto as soon as a member fails.
    #[serde(default)]
    pub spares: Vec<String>,
    /// Rebuild rate limit in bytes per second ("200M"); 0 = unlimited.
    #[serde(default = "default_rebuild_rate")]
    pub rebuild_rate: Size,
    /// A member is slow when its mean latency exceeds this multiple of its peers' median...
    #[serde(default = "default_slow_factor")]
    pub slow_member_factor: f64,
    /// ...and this many milliseconds.
    #[serde(default = "default_slow_floor_ms")]
    pub slow_member_min_ms: f64,
    /// Seconds a member may stay slow before it is failed (if the volume can lose it);
    /// 0 = never fail it, only serve reads around it.
    #[serde(default = "default_slow_fail_after")]
    pub slow_member_fail_after_s: u64,
    /// Hours between scheduled scrubs (a check of every row's parity or mirror copies,
    /// reported, not repaired); 0 = none.
    #[serde(default)]
    pub scrub_interval_hours: f64,
    /// Scrub rate limit in bytes per second of member data read ("50M"); 0 = unlimited.
    #[serde(default = "default_scrub_rate")]
    pub scrub_rate: Size,
}

fn default_slow_factor() -> f64 {
    8.0
}

fn default_slow_floor_ms() -> f64 {
    5.0
}

fn default_slow_fail_after() -> u64 {
    30
}

fn default_scrub_rate() -> Size {
    Size(100 << 20)
}

impl VolumeSection {
    pub fn slow_policy(&self) -> crate::volume::slow::SlowPolicy {
        crate::volume::slow::SlowPolicy {
            factor: self.slow_member_factor,
            floor_us: (self.slow_member_min_ms * 1000.0) as u64,
            fail_after: (self.slow_member_fail_after_s > 0)
                .then(|| std::time::Duration::from_secs(self.slow_member_fail_after_s)),
        }
    }
}

fn default_rebuild_rate() -> Size {
    Size(200 << 20)
}

fn default_strip() -> Size {
    Size(64 * 1024)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsystemSection {
    pub nqn: String,
    pub serial: Option<String>,
    #[serde(default = "default_model")]
    pub model: String,
    /// Must be set explicitly to let any host connect.
    #[serde(default)]
    pub allow_any_host: bool,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(rename = "namespace", default)]
    pub namespaces: Vec<NamespaceSection>,
    /// Controller IDs handed out to this subsystem's hosts. Two targets exporting the same
    /// subsystem (one per site) must be given disjoint ranges.
    #[serde(default = "default_cntlid_min")]
    pub cntlid_min: u32,
    #[serde(default = "default_cntlid_max")]
    pub cntlid_max: u32,
}

fn default_cntlid_min() -> u32 {
    CNTLID_MIN as u32
}
fn default_cntlid_max() -> u32 {
    CNTLID_MAX as u32
}

fn default_model() -> String {
    "nvmf-raid".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSection {
    pub nsid: Option<u32>,
    pub device: String,
    /// Overrides the UUID derived from the subsystem NQN and NSID.
    pub uuid: Option<String>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// The default target: a RAID-5 volume over four 1 GiB sparse files in `data_dir`,
    /// one namespace, open to any host.
    pub fn default_target(data_dir: &Path, listen: &str) -> Config {
        let names: Vec<String> = (0..DEFAULT_MEMBERS).map(|i| format!("disk{i}")).collect();
        Config {
            reactor: ReactorSection::default(),
            limits: LimitsSection::default(),
            listeners: vec![ListenerSection {
                address: listen.into(),
                ana_state: None,
            }],
            volumes: vec![VolumeSection {
                name: "vol0".into(),
                level: Level::Raid5,
                members: names[..DEFAULT_MEMBERS - 1].to_vec(),
                strip_size: None,
                group_size: 0,
                spares: names[DEFAULT_MEMBERS - 1..].to_vec(),
                rebuild_rate: default_rebuild_rate(),
                slow_member_factor: default_slow_factor(),
                slow_member_min_ms: default_slow_floor_ms(),
                slow_member_fail_after_s: default_slow_fail_after(),
                scrub_interval_hours: 0.0,
                scrub_rate: default_scrub_rate(),
            }],
            management: ManagementSection {
                socket: Some(PathBuf::from(crate::mgmt::DEFAULT_SOCKET)),
            },
            metrics: MetricsSection {
                address: Some(DEFAULT_METRICS.into()),
            },
            stretches: vec![],
            devices: names
                .iter()
                .map(|n| DeviceSection::file(n, data_dir.join(format!("{n}.img")), Size(1 << 30)))
                .collect(),
            subsystems: vec![SubsystemSection {
                nqn: DEFAULT_NQN.into(),
                serial: None,
                model: default_model(),
                allow_any_host: true,
                hosts: vec![],
                namespaces: vec![NamespaceSection {
                    nsid: Some(1),
                    device: "vol0".into(),
                    uuid: None,
                }],
                cntlid_min: default_cntlid_min(),
                cntlid_max: default_cntlid_max(),
            }],
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_reactors()?;
        self.validate_limits()?;
        if self.listeners.is_empty() {
            return Err(invalid("listener", "at least one [[listener]] is required"));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            l.address.parse::<SocketAddr>().map_err(|e| {
                invalid(
                    format!("listener[{i}].address"),
                    format!("'{}': {e}", l.address),
                )
            })?;
            l.initial_ana_state()
                .map_err(|e| invalid(format!("listener[{i}].ana_state"), e))?;
        }
        let mut names = self.validate_devices()?;
        self.validate_volumes(&mut names)?;
        self.validate_stretches(&mut names)?;
        self.validate_subsystems(&names)
    }

    fn validate_stretches<'a>(&'a self, names: &mut HashSet<&'a str>) -> Result<(), ConfigError> {
        for (i, s) in self.stretches.iter().enumerate() {
            let f = |field: &str| format!("stretch[{i}].{field}");
            if !names.contains(s.volume.as_str()) {
                return Err(invalid(
                    f("volume"),
                    format!("'{}' is not a configured volume or device", s.volume),
                ));
            }
            if s.name.is_empty() || !names.insert(s.name.as_str()) {
                return Err(invalid(
                    f("name"),
                    format!("'{}' is empty or already names a device or volume", s.name),
                ));
            }
            if s.site.is_empty() || s.peer_site.is_empty() || s.site == s.peer_site {
                return Err(invalid(
                    f("peer_site"),
                    "site and peer_site must be two different non-empty names",
                ));
            }
            if s.leader != s.site && s.leader != s.peer_site {
                return Err(invalid(
                    f("leader"),
                    format!(
                        "'{}' is neither '{}' nor '{}'",
                        s.leader, s.site, s.peer_site
                    ),
                ));
            }
            for (field, v) in [
                ("link_listener", Some(&s.link_listener)),
                ("peer_link", Some(&s.peer_link)),
                ("witness", s.witness.as_ref()),
            ] {
                if let Some(v) = v {
                    v.parse::<SocketAddr>()
                        .map_err(|e| invalid(f(field), format!("'{v}': {e}")))?;
                }
            }
            if self.listeners.iter().any(|l| l.address == s.link_listener) {
                return Err(invalid(f("link_listener"), "must not be a host listener"));
            }
            if !(200..=60_000).contains(&s.link_timeout_ms) {
                return Err(invalid(f("link_timeout_ms"), "must be 200 to 60000"));
            }
            if !(1..=3600).contains(&s.witness_ttl_s) {
                return Err(invalid(f("witness_ttl_s"), "must be 1 to 3600"));
            }
        }
        Ok(())
    }

    fn validate_reactors(&self) -> Result<(), ConfigError> {
        let cores = &self.reactor.cores;
        if cores.is_empty() {
            return Err(invalid("reactor.cores", "list at least one core"));
        }
        // Every CPU the machine has, not only those this process may run on now (a service
        // manager's CPUAffinity or isolcpus restrict the latter).
        // SAFETY: sysconf only reads a system value.
        let configured = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
        let online = if configured > 0 {
            configured as usize
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        };
        if let Some(c) = cores.iter().find(|c| **c >= online) {
            return Err(invalid(
                "reactor.cores",
                format!("core {c} does not exist (this machine has {online})"),
            ));
        }
        if cores.iter().collect::<HashSet<_>>().len() != cores.len() {
            return Err(invalid("reactor.cores", "a core is listed twice"));
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let check = |ok: bool, field: &str, msg: &str| {
            if ok {
                Ok(())
            } else {
                Err(invalid(format!("limits.{field}"), msg))
            }
        };
        check(
            (2..=1024).contains(&l.queue_depth),
            "queue_depth",
            "must be 2..=1024",
        )?;
        check(
            (1..=1024).contains(&l.max_io_queues),
            "max_io_queues",
            "must be 1..=1024",
        )?;
        check(
            (1..=4096).contains(&l.max_connections),
            "max_connections",
            "must be 1..=4096",
        )?;
        check(
            (1..=0xFFEF).contains(&l.max_controllers),
            "max_controllers",
            "must be 1..=65519",
        )?;
        check(
            l.in_capsule_data >= 4096
                && l.in_capsule_data <= 65536
                && l.in_capsule_data.is_multiple_of(4096),
            "in_capsule_data",
            "must be a multiple of 4096 from 4096 to 65536",
        )?;
        check(
            l.max_transfer.is_power_of_two() && (128 * 1024..=1 << 20).contains(&l.max_transfer),
            "max_transfer",
            "must be a power of two from 128 KiB to 1 MiB",
        )?;
        check(
            l.max_h2c_data >= 4096
                && l.max_h2c_data.is_multiple_of(4)
                && l.max_h2c_data as usize <= l.max_transfer,
            "max_h2c_data",
            "must be a multiple of 4, at least 4096 and at most max_transfer",
        )?;
        check(l.buffers_128k >= 1, "buffers_128k", "must be at least 1")?;
        check(l.buffers_1m >= 1, "buffers_1m", "must be at least 1")?;
        check(
            (100..=600_000).contains(&l.handshake_timeout_ms),
            "handshake_timeout_ms",
            "must be 100..=600000",
        )?;
        check(
            l.max_handshakes_per_source >= l.max_io_queues as usize,
            "max_handshakes_per_source",
            "must be at least max_io_queues (a host sets up all its I/O queues at once)",
        )
    }

    fn validate_devices(&self) -> Result<HashSet<&str>, ConfigError> {
        let mut names = HashSet::new();
        for (i, d) in self.devices.iter().enumerate() {
            let f = |field: &str| format!("device[{i}].{field}");
            if d.name.is_empty() || !names.insert(d.name.as_str()) {
                return Err(invalid(
                    f("name"),
                    format!("'{}' is empty or used twice", d.name),
                ));
            }
            if !d.block_size.is_power_of_two() || !(512..=4096).contains(&d.block_size) {
                return Err(invalid(f("block_size"), "must be 512, 1024, 2048 or 4096"));
            }
            match d.kind {
                DeviceKind::File if d.path.is_none() => {
                    return Err(invalid(f("path"), "a file device needs a path"))
                }
                DeviceKind::Ram | DeviceKind::Null if d.size.is_none() => {
                    return Err(invalid(f("size"), "ram and null devices need a size"))
                }
                DeviceKind::Nvmf => validate_remote(d, &f)?,
                _ => {}
            }
            if d.kind != DeviceKind::Nvmf && (d.address.is_some() || d.subnqn.is_some()) {
                return Err(invalid(
                    f("address"),
                    "only nvmf devices have an address and subnqn",
                ));
            }
            if let Some(Size(s)) = d.size {
                if s < d.block_size as u64 || s % d.block_size as u64 != 0 {
                    return Err(invalid(
                        f("size"),
                        "must be a non-zero multiple of block_size",
                    ));
                }
            }
        }
        Ok(names)
    }

    fn validate_volumes<'a>(&'a self, names: &mut HashSet<&'a str>) -> Result<(), ConfigError> {
        let mut used = HashSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let f = |field: &str| format!("volume[{i}].{field}");
            if v.name.is_empty() || names.contains(v.name.as_str()) {
                return Err(invalid(
                    f("name"),
                    format!("'{}' is empty or already names a device or volume", v.name),
                ));
            }
            for (field, list) in [("members", &v.members), ("spares", &v.spares)] {
                for m in list {
                    let is_device = self.devices.iter().any(|d| &d.name == m);
                    if !is_device || !used.insert(m.as_str()) {
                        return Err(invalid(
                            f(field),
                            format!("'{m}' is not a [[device]] or already belongs to a volume"),
                        ));
                    }
                }
            }
            if !v.spares.is_empty() && v.level.tolerance(2) == 0 {
                return Err(invalid(
                    f("spares"),
                    format!(
                        "a {} volume has no redundancy to rebuild onto a spare",
                        v.level
                    ),
                ));
            }
            if v.level.spec().strip == StripWidth::MemberBlock && v.strip_size.is_some() {
                return Err(invalid(
                    f("strip_size"),
                    format!("{} spreads every block over all data members: its strip is one member block, not configurable", v.level.spec().name),
                ));
            }
            let strip = v.strip_bytes();
            if !strip.is_power_of_two() || !(4096..=1 << 20).contains(&strip) {
                return Err(invalid(
                    f("strip_size"),
                    "must be a power of two from 4K to 1M",
                ));
            }
            if !(v.scrub_interval_hours >= 0.0 && v.scrub_interval_hours <= 24.0 * 366.0) {
                return Err(invalid(
                    f("scrub_interval_hours"),
                    "must be from 0 (none) to 8784 (a year)",
                ));
            }
            if !(v.slow_member_factor >= 1.5 && v.slow_member_factor <= 1000.0) {
                return Err(invalid(f("slow_member_factor"), "must be from 1.5 to 1000"));
            }
            if !(v.slow_member_min_ms >= 0.0 && v.slow_member_min_ms <= 60_000.0) {
                return Err(invalid(f("slow_member_min_ms"), "must be from 0 to 60000"));
            }
            let sizes = vec![u64::MAX / 1024; v.members.len()];
            Layout::new(v.level, &sizes, v.group_size, strip / 512)
                .map_err(|e| invalid(f("members"), e.to_string()))?;
            names.insert(v.name.as_str());
        }
        for (i, s) in self.subsystems.iter().enumerate() {
            for (j, ns) in s.namespaces.iter().enumerate() {
                if used.contains(ns.device.as_str()) {
                    return Err(invalid(
                        format!("subsystem[{i}].namespace[{j}].device"),
                        format!("'{}' is a volume member", ns.device),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_subsystems(&self, devices: &HashSet<&str>) -> Result<(), ConfigError> {
        let mut nqns = HashSet::new();
        for (i, s) in self.subsystems.iter().enumerate() {
            let f = |field: &str| format!("subsystem[{i}].{field}");
            if !valid_nqn(&s.nqn)
                || s.nqn == crate::nvmf::spec::DISCOVERY_NQN
                || !nqns.insert(&s.nqn)
            {
                return Err(invalid(f("nqn"), format!("'{}' is not a valid NQN (nqn.yyyy-mm.reverse-domain:name, at most 223 bytes), is the discovery NQN, or is used twice", s.nqn)));
            }
            if s.serial
                .as_ref()
                .is_some_and(|sn| sn.len() > 20 || !sn.is_ascii())
            {
                return Err(invalid(f("serial"), "at most 20 ASCII characters"));
            }
            if s.model.len() > 40 || !s.model.is_ascii() {
                return Err(invalid(f("model"), "at most 40 ASCII characters"));
            }
            if !s.allow_any_host && s.hosts.is_empty() {
                return Err(invalid(
                    f("hosts"),
                    "no host may connect: list host NQNs or set allow_any_host = true",
                ));
            }
            if let Some(h) = s.hosts.iter().find(|h| !valid_nqn(h)) {
                return Err(invalid(f("hosts"), format!("'{h}' is not a valid NQN")));
            }
            let (lo, hi) = (CNTLID_MIN as u32, CNTLID_MAX as u32);
            if !(lo..=hi).contains(&s.cntlid_min) {
                return Err(invalid(
                    f("cntlid_min"),
                    format!("{} is outside {lo}..={hi}", s.cntlid_min),
                ));
            }
            if !(lo..=hi).contains(&s.cntlid_max) {
                return Err(invalid(
                    f("cntlid_max"),
                    format!(
                        "{} is outside {lo}..={hi} (0xFFF0 and above are reserved)",
                        s.cntlid_max
                    ),
                ));
            }
            if s.cntlid_min > s.cntlid_max {
                return Err(invalid(
                    f("cntlid_max"),
                    format!("{} is below cntlid_min {}", s.cntlid_max, s.cntlid_min),
                ));
            }
            self.validate_namespaces(i, s, devices)?;
        }
        Ok(())
    }

    fn validate_namespaces(
        &self,
        i: usize,
        s: &SubsystemSection,
        devices: &HashSet<&str>,
    ) -> Result<(), ConfigError> {
        let mut ids = HashSet::new();
        for (j, ns) in s.namespaces.iter().enumerate() {
            let f = |field: &str| format!("subsystem[{i}].namespace[{j}].{field}");
            let nsid = ns.nsid.unwrap_or(j as u32 + 1);
            if nsid == 0 || nsid == u32::MAX || !ids.insert(nsid) {
                return Err(invalid(
                    f("nsid"),
                    format!("{nsid} is reserved or used twice"),
                ));
            }
            if !devices.contains(ns.device.as_str()) {
                return Err(invalid(
                    f("device"),
                    format!("no [[device]] or [[volume]] named '{}'", ns.device),
                ));
            }
            if let Some(u) = &ns.uuid {
                uuid::Uuid::parse_str(u).map_err(|e| invalid(f("uuid"), e.to_string()))?;
            }
        }
        Ok(())
    }
}

pub const DEFAULT_NQN: &str = "nqn.2026-11.io.nvmf-raid:default";
/// Devices of the default target: four RAID-5 members and one hot spare.
const DEFAULT_MEMBERS: usize = 5;

pub fn valid_nqn(n: &str) -> bool {
    n.len() <= 223
        && n.starts_with("nqn.")
        && n.contains(':')
        && n.is_ascii()
        && !n.contains(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[reactor]
cores = [0]
polling = "adaptive"

[[listener]]
address = "127.0.0.1:4420"

[[device]]
name = "r0"
kind = "ram"
size = "64M"

[[subsystem]]
nqn = "nqn.2026-11.io.nvmf-raid:t"
hosts = ["nqn.2014-08.org.nvmexpress:uuid:1"]
[[subsystem.namespace]]
device = "r0"
"#;

    fn err_of(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_a_good_config() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.devices[0].size, Some(Size(64 << 20)));
        assert_eq!(c.reactor.polling, PollMode::Adaptive);
    }

    #[test]
    fn errors_name_the_field() {
        assert!(
            err_of(&GOOD.replace("127.0.0.1:4420", "nowhere")).starts_with("listener[0].address")
        );
        assert!(err_of(&GOOD.replace("device = \"r0\"", "device = \"r9\""))
            .starts_with("subsystem[0].namespace[0].device"));
        assert!(
            err_of(&GOOD.replace("hosts = [\"nqn.2014-08.org.nvmexpress:uuid:1\"]", ""))
                .starts_with("subsystem[0].hosts")
        );
        assert!(err_of(&GOOD.replace("size = \"64M\"", "size = \"lots\"")).contains("size"));
        assert!(err_of(&GOOD.replace("cores = [0]", "cores = [999]")).starts_with("reactor.cores"));
        assert!(
            err_of(&GOOD.replace("polling = \"adaptive\"", "polling = \"sometimes\""))
                .contains("polling")
        );
        assert!(err_of(&format!("{GOOD}\n[limits]\nqueue_depth = 1\n"))
            .starts_with("limits.queue_depth"));
        assert!(
            err_of(&GOOD.replace("nqn = \"nqn.2026-11.io.nvmf-raid:t\"", "nqn = \"bad\""))
                .starts_with("subsystem[0].nqn")
        );
        assert!(
            err_of(&GOOD.replace("kind = \"ram\"", "kind = \"ram\"\ncolour = \"red\""))
                .contains("colour")
        );
    }

    #[test]
    fn volumes_are_checked() {
        let vol = |body: &str| {
            format!("{GOOD}\n[[device]]\nname = \"a\"\nkind = \"ram\"\nsize = \"8M\"\n[[device]]\nname = \"b\"\nkind = \"ram\"\nsize = \"8M\"\n[[volume]]\nname = \"v\"\n{body}\n")
        };
        Config::parse(&vol("level = \"raid1\"\nmembers = [\"a\", \"b\"]")).unwrap();
        assert!(err_of(&vol("level = \"raid1\"\nmembers = [\"a\", \"a\"]"))
            .starts_with("volume[0].members"));
        assert!(err_of(&vol(
            "level = \"raid10\"\nmembers = [\"a\", \"b\"]\ngroup_size = 2"
        ))
        .starts_with("volume[0].members"));
        assert!(err_of(&vol(
            "level = \"raid0\"\nmembers = [\"a\", \"b\"]\nstrip_size = \"3K\""
        ))
        .starts_with("volume[0].strip_size"));
        assert!(err_of(&vol("level = \"raid0\"\nmembers = [\"a\", \"zz\"]"))
            .starts_with("volume[0].members"));
        // RAID 3: the strip is not configurable; the data members must be a power of two
        // (two members make one data member and the parity: too few).
        assert!(err_of(&vol(
            "level = \"raid3\"\nmembers = [\"a\", \"b\"]\nstrip_size = \"64K\""
        ))
        .starts_with("volume[0].strip_size"));
        assert!(err_of(&vol("level = \"raid3\"\nmembers = [\"a\", \"b\"]"))
            .starts_with("volume[0].members"));
        // RAID-6 DP needs two data members besides its two parity members.
        let dp = err_of(&vol("level = \"raid6-dp\"\nmembers = [\"a\", \"b\"]"));
        assert!(
            dp.starts_with("volume[0].members") && dp.contains("raid6-dp needs at least 4 members"),
            "{dp}"
        );
        assert!(err_of(&vol("level = \"raid7\"\nmembers = [\"a\", \"b\"]")).contains("level"));
        let used_twice = vol("level = \"raid0\"\nmembers = [\"a\", \"r0\"]");
        assert!(err_of(&used_twice).starts_with("subsystem[0].namespace[0].device"));
    }

    #[test]
    fn listener_ana_state_is_checked() {
        let with = |state: &str| {
            GOOD.replace(
                "address = \"127.0.0.1:4420\"",
                &format!("address = \"127.0.0.1:4420\"\nana_state = \"{state}\""),
            )
        };
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(
            c.listeners[0].initial_ana_state(),
            Ok(AnaState::Optimized),
            "default"
        );
        for (name, state) in [
            ("optimized", AnaState::Optimized),
            ("non-optimized", AnaState::NonOptimized),
            ("inaccessible", AnaState::Inaccessible),
        ] {
            assert_eq!(
                Config::parse(&with(name)).unwrap().listeners[0].initial_ana_state(),
                Ok(state)
            );
        }
        for bad in ["fast", "change", "persistent-loss", ""] {
            let e = err_of(&with(bad));
            assert!(
                e.starts_with("listener[0].ana_state") && e.contains("non-optimized"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn cntlid_range_is_checked() {
        let with = |extra: &str| GOOD.replace("hosts = [", &format!("{extra}\nhosts = ["));
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(
            (c.subsystems[0].cntlid_min, c.subsystems[0].cntlid_max),
            (1, 0xFFEF),
            "defaults"
        );
        let c = Config::parse(&with("cntlid_min = 100\ncntlid_max = 199")).unwrap();
        assert_eq!(
            (c.subsystems[0].cntlid_min, c.subsystems[0].cntlid_max),
            (100, 199)
        );
        Config::parse(&with("cntlid_min = 7\ncntlid_max = 7")).unwrap();
        Config::parse(&with("cntlid_max = 65519")).unwrap();
        assert!(err_of(&with("cntlid_min = 0")).starts_with("subsystem[0].cntlid_min"));
        assert!(err_of(&with("cntlid_min = 65520")).starts_with("subsystem[0].cntlid_min"));
        assert!(err_of(&with("cntlid_max = 65520")).starts_with("subsystem[0].cntlid_max"));
        assert!(err_of(&with("cntlid_max = 0")).starts_with("subsystem[0].cntlid_max"));
        let e = err_of(&with("cntlid_min = 200\ncntlid_max = 100"));
        assert!(
            e.starts_with("subsystem[0].cntlid_max") && e.contains("cntlid_min"),
            "{e}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1Q").is_err());
    }

    #[test]
    fn default_target_is_valid() {
        Config::default_target(Path::new("/tmp/x"), "127.0.0.1:4420")
            .validate()
            .unwrap();
    }
}
