//! Management: JSON-RPC 2.0 over a Unix socket (one request per line, mode 0600), served
//! by its own thread beside the reactors, never on the I/O path; and the client the
//! `nvmf-raid` subcommands use.

use crate::util::stopper::{accept_until_stopped, Stopper};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::{info, warn};

use crate::bdev::fault::FaultControl;
use crate::bdev::Bdev;
use crate::nvmf::subsystem::{SubsystemKind, Target};
use crate::volume::raid::RaidBdev;

mod ana;
pub mod stats;
mod volume;

/// Bytes one client may send over its connection's lifetime.
const MAX_CLIENT_BYTES: u64 = 64 << 20;
/// Concurrent management clients.
const MAX_CLIENTS: usize = 16;

/// What the management methods act on.
pub struct Managed {
    pub target: Arc<Target>,
    /// The reactors, asked for statistics through their mailboxes.
    pub shared: Arc<crate::reactor::Shared>,
    pub volumes: Vec<Arc<RaidBdev>>,
    pub faults: Vec<(String, Arc<FaultControl>)>,
    /// Every configured device by name (for adding spares).
    pub devices: Vec<(String, Arc<dyn Bdev>)>,
    /// Devices that back namespaces directly, so never spares.
    pub namespace_devices: Vec<String>,
    /// The site controllers of the stretched volumes.
    pub sites: Vec<crate::site::control::SiteHandle>,
    /// The configuration file the target was started from (for reloads).
    pub config_path: Option<PathBuf>,
}

/// A JSON-RPC error: code and a message that names what was wrong.
#[derive(Debug)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

pub(crate) fn invalid_params(msg: impl Into<String>) -> RpcError {
    RpcError {
        code: -32602,
        message: msg.into(),
    }
}
pub(crate) fn failed(msg: impl Into<String>) -> RpcError {
    RpcError {
        code: -32000,
        message: msg.into(),
    }
}

pub(crate) fn param<'a>(p: &'a Value, name: &str) -> Result<&'a str, RpcError> {
    p.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid_params(format!("missing string parameter '{name}'")))
}

/// What a JSON-RPC socket serves: the target's management, or a site-link relay's control.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, method: &str, params: &Value) -> Result<Value, RpcError>;

    /// Answer one JSON-RPC request line.
    fn handle_line(&self, line: &str) -> Value {
        let req: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                return json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": format!("parse error: {e}")}})
            }
        };
        let id = req.get("id").cloned().unwrap_or(Value::Null);
        let Some(method) = req.get("method").and_then(Value::as_str) else {
            return json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32600, "message": "request has no method"}});
        };
        match self.call(method, req.get("params").unwrap_or(&Value::Null)) {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err(e) => {
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": e.code, "message": e.message}})
            }
        }
    }
}

impl Handler for Managed {
    fn call(&self, method: &str, params: &Value) -> Result<Value, RpcError> {
        Managed::call(self, method, params)
    }
}

impl Managed {
    pub fn call(&self, method: &str, params: &Value) -> Result<Value, RpcError> {
        match method {
            m if m.starts_with("volume_") => self.volume_call(m, params),
            m if m.starts_with("ana_") => self.ana_call(m, params),
            "stats" => self.stats(params),
            "hosts_reload" => {
                crate::server::reload_hosts_from(&self.target, self.config_path.as_deref())
                    .map(|s| json!({"reloaded": s}))
                    .map_err(failed)
            }
            "stats_reset" => self.stats(&json!({"reset": true})),
            "device_fault" => self.device_fault(params),
            "subsystem_list" => Ok(self.subsystem_list()),
            "remote_status" => Ok(self.remote_status()),
            "site_status" => Ok(json!(self
                .sites
                .iter()
                .map(|s| s.status())
                .collect::<Vec<_>>())),
            "site_handover" | "site_takeover" => self.site_command(method, params),
            "controller_list" => Ok(self.controller_list()),
            "host_add" | "host_remove" => self.host_change(method == "host_add", params),
            _ => Err(RpcError {
                code: -32601,
                message: format!("unknown method '{method}'"),
            }),
        }
    }

    fn device_fault(&self, p: &Value) -> Result<Value, RpcError> {
        let dev = param(p, "device")?;
        let c = self
            .faults
            .iter()
            .find(|(n, _)| n == dev)
            .map(|(_, c)| c)
            .ok_or_else(|| {
                failed(format!(
                    "device '{dev}' does not exist or has no fault_injection"
                ))
            })?;
        let num = |k: &str| {
            p.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| invalid_params(format!("missing number parameter '{k}'")))
        };
        match param(p, "action")? {
            "fail" => c.fail_device(true),
            "heal" => c.heal(),
            "fail_reads" => c.fail_reads(true),
            "fail_writes" => c.fail_writes(true),
            "fail_range" => c.fail_range(num("start")?, num("end")?),
            "fail_after" => c.fail_after(num("ios")?),
            "delay" => c.set_delay(Duration::from_micros(num("us")?)),
            other => return Err(invalid_params(format!("unknown action '{other}' (fail, heal, fail_reads, fail_writes, fail_range, fail_after, delay)"))),
        }
        Ok(json!({"device": dev, "injected": c.injected()}))
    }

    /// Planned hand-over to the peer, or a forced takeover (only with `force: true`).
    fn site_command(&self, method: &str, p: &Value) -> Result<Value, RpcError> {
        use crate::site::control::Command;
        let name = param(p, "volume")?;
        let site = self
            .sites
            .iter()
            .find(|s| s.volume == name)
            .ok_or_else(|| invalid_params(format!("no stretched volume '{name}'")))?;
        let cmd = if method == "site_handover" {
            Command::Handover
        } else if p.get("force").and_then(Value::as_bool) == Some(true) {
            Command::ForceTakeover
        } else {
            return Err(invalid_params("a takeover without the witness needs force: true (make sure the peer site does not serve)"));
        };
        site.command(cmd);
        Ok(json!({"volume": name, "requested": method}))
    }

    /// Every device that is a namespace on another target: link state, round trip, failures.
    fn remote_status(&self) -> Value {
        let devices: Vec<Value> = self
            .devices
            .iter()
            .filter_map(|(name, d)| d.remote().map(|r| (name, r.status())))
            .map(|(name, s)| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                v["name"] = json!(name);
                v
            })
            .collect();
        json!({ "devices": devices })
    }

    fn subsystem_list(&self) -> Value {
        let subs: Vec<Value> = self
            .target
            .subsystems
            .iter()
            .filter(|s| s.kind == SubsystemKind::Nvm)
            .map(|s| {
                let ns: Vec<Value> = s.namespaces.iter().map(|n| json!({"nsid": n.nsid, "blocks": n.num_blocks, "block_size": n.block_size})).collect();
                json!({"nqn": s.nqn, "serial": s.serial, "allow_any_host": s.allow_any_host, "hosts": *s.hosts.read().unwrap(), "namespaces": ns})
            })
            .collect();
        Value::Array(subs)
    }

    fn controller_list(&self) -> Value {
        let mut ctrls: Vec<Value> = self
            .target
            .controllers()
            .iter()
            .map(|c| json!({"cntlid": c.cntlid, "subsystem": c.subsys.nqn, "host": c.hostnqn, "io_queues": c.connected_io_queues()}))
            .collect();
        ctrls.sort_by_key(|c| c["cntlid"].as_u64());
        Value::Array(ctrls)
    }

    fn host_change(&self, add: bool, p: &Value) -> Result<Value, RpcError> {
        let (nqn, host) = (param(p, "subsystem")?, param(p, "host")?);
        if !crate::config::valid_nqn(host) {
            return Err(invalid_params(format!("'{host}' is not a valid host NQN")));
        }
        let s = self
            .target
            .subsystem(nqn)
            .filter(|s| s.kind == SubsystemKind::Nvm)
            .ok_or_else(|| failed(format!("unknown subsystem '{nqn}'")))?;
        let mut hosts = s.hosts.write().unwrap();
        let present = hosts.iter().any(|h| h == host);
        match (add, present) {
            (true, false) => hosts.push(host.to_string()),
            (false, true) => hosts.retain(|h| h != host),
            (true, true) => return Err(failed(format!("'{host}' is already allowed"))),
            (false, false) => return Err(failed(format!("'{host}' is not on the list"))),
        }
        info!(subsystem = nqn, host, add, "host allow-list changed");
        Ok(json!({"subsystem": nqn, "hosts": *hosts}))
    }
}

/// Serve JSON-RPC on `path` until the process exits. The socket is created mode 0600.
/// A running management socket; `stop` closes it.
pub struct MgmtServer {
    path: PathBuf,
    stopper: Arc<Stopper>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MgmtServer {
    /// Stop accepting clients and remove the socket (clients being served finish alone).
    pub fn stop(mut self) {
        self.stopper.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn serve(path: &Path, managed: Arc<dyn Handler>) -> std::io::Result<MgmtServer> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by another target", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stopper = Arc::new(Stopper::new()?);
    let stopping = stopper.clone();
    let thread = std::thread::Builder::new()
        .name("mgmt".into())
        .spawn(move || {
            accept_until_stopped(
                &listener,
                &stopping,
                |l| l.accept().map(|(c, _)| c),
                |conn| {
                    if active.load(std::sync::atomic::Ordering::Relaxed) >= MAX_CLIENTS {
                        warn!("management client limit reached");
                        return;
                    }
                    let (m, active) = (managed.clone(), active.clone());
                    active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = std::thread::Builder::new()
                        .name("mgmt-client".into())
                        .spawn(move || {
                            serve_client(conn, m.as_ref());
                            active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        });
                },
            );
        })?;
    Ok(MgmtServer {
        path: path.to_path_buf(),
        stopper,
        thread: Some(thread),
    })
}

fn serve_client(conn: UnixStream, m: &dyn Handler) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(std::io::Read::take(conn, MAX_CLIENT_BYTES));
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        let reply = m.handle_line(line.trim());
        if writeln!(out, "{reply}").is_err() {
            return;
        }
        line.clear();
    }
}

/// Client side: one call, one answer.
pub fn call(socket: &Path, method: &str, params: Value) -> Result<Value, String> {
    let mut s = UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach the target at {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    writeln!(s, "{req}").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&line).map_err(|e| format!("bad answer: {e}"))?;
    match v.get("error") {
        Some(e) => Err(e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("unknown error")
            .to_string()),
        None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
    }
}

pub const DEFAULT_SOCKET: &str = "/run/nvmf-raid.sock";

pub fn default_socket() -> PathBuf {
    std::env::var_os("NVMF_RAID_SOCKET")
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from)
}
