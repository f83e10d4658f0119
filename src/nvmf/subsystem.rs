//! Subsystems, namespaces, ports and the registry of live controllers.
//!
//! This state is shared by all reactors. It is touched on connect, admin commands and
//! keep-alive, never per I/O, so plain locks are fine here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use super::spec::DISCOVERY_NQN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubsystemKind {
    Discovery,
    Nvm,
}

/// A namespace: a block device exposed under an NSID, with identifiers stable across
/// restarts (derived from the subsystem NQN and NSID unless configured).
#[derive(Debug, Clone)]
pub struct Namespace {
    pub nsid: u32,
    /// Index into the target's device table (same index on every reactor).
    pub device: usize,
    pub block_size: u32,
    pub num_blocks: u64,
    pub nguid: [u8; 16],
    pub uuid: [u8; 16],
    pub eui64: [u8; 8],
    pub counters: Arc<NsCounters>,
    /// Position of this namespace in the reactors' statistics tables.
    pub stats_index: usize,
}

/// I/O counters of a namespace, reported by the SMART log.
#[derive(Debug, Default)]
pub struct NsCounters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
}

impl NsCounters {
    pub fn record(&self, write: bool, bytes: u64) {
        let (ops, total) = if write { (&self.writes, &self.bytes_written) } else { (&self.reads, &self.bytes_read) };
        ops.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Namespace {
    /// A namespace with identifiers derived from (subsystem NQN, NSID).
    pub fn new(subnqn: &str, nsid: u32, device: usize, block_size: u32, num_blocks: u64) -> Namespace {
        let (nguid, uuid, eui64) = stable_ids(subnqn, nsid);
        Namespace { nsid, device, block_size, num_blocks, nguid, uuid, eui64, counters: Default::default(), stats_index: 0 }
    }

    pub fn lba_shift(&self) -> u32 {
        self.block_size.trailing_zeros()
    }
}

/// Derive a stable UUID for (subsystem, nsid): the same inputs give the same identifiers
/// after every restart, which multipath and udev rules rely on.
pub fn stable_ids(subnqn: &str, nsid: u32) -> ([u8; 16], [u8; 16], [u8; 8]) {
    let name = format!("{subnqn}/ns/{nsid}");
    let uuid = *uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).as_bytes();
    let nguid = *uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes()).as_bytes();
    let mut eui64 = [0u8; 8];
    eui64.copy_from_slice(&nguid[8..]);
    (nguid, uuid, eui64)
}

#[derive(Debug)]
pub struct Subsystem {
    pub nqn: String,
    pub kind: SubsystemKind,
    pub serial: String,
    pub model: String,
    pub allow_any_host: bool,
    pub hosts: RwLock<Vec<String>>,
    pub namespaces: Vec<Namespace>,
}

impl Subsystem {
    pub fn discovery() -> Subsystem {
        Subsystem {
            nqn: DISCOVERY_NQN.to_string(),
            kind: SubsystemKind::Discovery,
            serial: "nvmf-raid-discovery".into(),
            model: "nvmf-raid discovery".into(),
            allow_any_host: true,
            hosts: RwLock::new(Vec::new()),
            namespaces: Vec::new(),
        }
    }

    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.allow_any_host || self.hosts.read().unwrap().iter().any(|h| h == hostnqn)
    }

    pub fn namespace(&self, nsid: u32) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.nsid == nsid)
    }
}

/// A listener as the discovery log reports it.
#[derive(Debug, Clone)]
pub struct Port {
    pub id: u16,
    pub addr: std::net::SocketAddr,
}

/// One controller: an admin queue plus the I/O queues connected to it.
#[derive(Debug)]
pub struct Controller {
    pub cntlid: u16,
    pub subsys: Arc<Subsystem>,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub port_id: u16,
    pub kato_ms: AtomicU32,
    pub cc: AtomicU32,
    pub csts: AtomicU32,
    pub aen_config: AtomicU32,
    /// Number of I/O queues granted (1-based), fixed by Set Features Number of Queues.
    pub io_queues_granted: AtomicU16,
    /// Bitmap of connected queue ids; bit 0 is the admin queue.
    connected: Mutex<Vec<bool>>,
    keepalive_ms: AtomicU64,
    epoch: Instant,
    dead: AtomicBool,
}

impl Controller {
    pub fn new(cntlid: u16, subsys: Arc<Subsystem>, hostnqn: String, hostid: [u8; 16], port_id: u16, kato_ms: u32, max_queues: u16) -> Self {
        let mut connected = vec![false; max_queues as usize + 1];
        connected[0] = true;
        Controller {
            cntlid,
            subsys,
            hostnqn,
            hostid,
            port_id,
            kato_ms: AtomicU32::new(kato_ms),
            cc: AtomicU32::new(0),
            csts: AtomicU32::new(0),
            aen_config: AtomicU32::new(0),
            io_queues_granted: AtomicU16::new(max_queues),
            connected: Mutex::new(connected),
            keepalive_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            dead: AtomicBool::new(false),
        }
    }

    /// Claim an I/O queue id; false if out of range or already connected.
    pub fn claim_queue(&self, qid: u16) -> bool {
        let granted = self.io_queues_granted.load(Ordering::Relaxed);
        let mut c = self.connected.lock().unwrap();
        if qid == 0 || qid > granted || qid as usize >= c.len() || c[qid as usize] {
            return false;
        }
        c[qid as usize] = true;
        true
    }

    pub fn release_queue(&self, qid: u16) {
        if let Some(slot) = self.connected.lock().unwrap().get_mut(qid as usize) {
            *slot = false;
        }
    }

    pub fn connected_io_queues(&self) -> usize {
        self.connected.lock().unwrap().iter().skip(1).filter(|c| **c).count()
    }

    pub fn touch_keepalive(&self) {
        self.keepalive_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// True once the keep-alive timeout has passed without a keep-alive.
    pub fn keepalive_expired(&self) -> bool {
        let kato = self.kato_ms.load(Ordering::Relaxed) as u64;
        if kato == 0 {
            return false;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        // Like the kernel target, round the timeout up to whole seconds.
        now.saturating_sub(self.keepalive_ms.load(Ordering::Relaxed)) > kato.div_ceil(1000) * 1000
    }

    /// Mark the association over; every queue of it closes on its next timer tick.
    pub fn kill(&self) {
        self.dead.store(true, Ordering::Release);
    }
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
}

/// Why a Connect was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectError {
    UnknownSubsystem,
    HostNotAllowed,
    UnknownController,
    QueueInUse,
    TooManyControllers,
}

/// Everything the reactors share: subsystems, ports and live controllers.
#[derive(Debug)]
pub struct Target {
    pub subsystems: Vec<Arc<Subsystem>>,
    pub ports: Vec<Port>,
    pub max_io_queues: u16,
    pub max_controllers: usize,
    controllers: Mutex<HashMap<u16, Arc<Controller>>>,
    next_cntlid: AtomicU16,
    /// Bumped whenever the discovery log's content changes.
    pub discovery_genctr: AtomicU64,
}

impl Target {
    pub fn new(mut subsystems: Vec<Arc<Subsystem>>, ports: Vec<Port>, max_io_queues: u16, max_controllers: usize) -> Target {
        if !subsystems.iter().any(|s| s.kind == SubsystemKind::Discovery) {
            subsystems.insert(0, Arc::new(Subsystem::discovery()));
        }
        Target {
            subsystems,
            ports,
            max_io_queues,
            max_controllers,
            controllers: Mutex::new(HashMap::new()),
            next_cntlid: AtomicU16::new(1),
            discovery_genctr: AtomicU64::new(1),
        }
    }

    pub fn subsystem(&self, nqn: &str) -> Option<&Arc<Subsystem>> {
        self.subsystems.iter().find(|s| s.nqn == nqn)
    }

    /// Admin queue Connect: create a controller with a fresh cntlid.
    pub fn create_controller(&self, subnqn: &str, hostnqn: &str, hostid: [u8; 16], port_id: u16, kato_ms: u32) -> Result<Arc<Controller>, ConnectError> {
        let subsys = self.subsystem(subnqn).ok_or(ConnectError::UnknownSubsystem)?;
        if !subsys.host_allowed(hostnqn) {
            return Err(ConnectError::HostNotAllowed);
        }
        let mut ctrls = self.controllers.lock().unwrap();
        if ctrls.len() >= self.max_controllers {
            return Err(ConnectError::TooManyControllers);
        }
        let cntlid = loop {
            // cntlid 0xFFF0.. are reserved; wrap within 1..0xFFEF.
            let id = self.next_cntlid.fetch_add(1, Ordering::Relaxed) % 0xFFEF + 1;
            if !ctrls.contains_key(&id) {
                break id;
            }
        };
        let queues = if subsys.kind == SubsystemKind::Discovery { 0 } else { self.max_io_queues };
        let ctrl = Arc::new(Controller::new(cntlid, subsys.clone(), hostnqn.to_string(), hostid, port_id, kato_ms, queues));
        ctrl.touch_keepalive();
        ctrls.insert(cntlid, ctrl.clone());
        Ok(ctrl)
    }

    /// I/O queue Connect: find the controller the admin queue created.
    pub fn attach_io_queue(&self, cntlid: u16, subnqn: &str, hostnqn: &str, qid: u16) -> Result<Arc<Controller>, ConnectError> {
        let ctrl = self.controllers.lock().unwrap().get(&cntlid).cloned().ok_or(ConnectError::UnknownController)?;
        if ctrl.is_dead() || ctrl.subsys.nqn != subnqn || ctrl.hostnqn != hostnqn {
            return Err(ConnectError::UnknownController);
        }
        if !ctrl.claim_queue(qid) {
            return Err(ConnectError::QueueInUse);
        }
        Ok(ctrl)
    }

    pub fn remove_controller(&self, cntlid: u16) {
        if let Some(c) = self.controllers.lock().unwrap().remove(&cntlid) {
            c.kill();
        }
    }

    pub fn controller_count(&self) -> usize {
        self.controllers.lock().unwrap().len()
    }

    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        self.controllers.lock().unwrap().values().cloned().collect()
    }
}
