//! Subsystems, namespaces, ports and the registry of live controllers.
//!
//! This state is shared by all reactors. It is touched on connect, admin commands and
//! keep-alive, never per I/O, so plain locks are fine here. The one exception is the ANA
//! state, which the I/O path reads: it is a table of atomics (`ana::AnaTable`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use super::ana::{self, AnaState, AnaTable};
use super::spec::DISCOVERY_NQN;

/// Controller IDs a subsystem hands out by default; 0xFFF0 and above are reserved.
pub const CNTLID_MIN: u16 = 1;
pub const CNTLID_MAX: u16 = 0xFFEF;

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
    /// The ANA group the namespace belongs to (Identify Namespace ANAGRPID).
    pub anagrpid: u32,
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
        let (ops, total) = if write {
            (&self.writes, &self.bytes_written)
        } else {
            (&self.reads, &self.bytes_read)
        };
        ops.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Namespace {
    /// A namespace with identifiers derived from (subsystem NQN, NSID).
    pub fn new(
        subnqn: &str,
        nsid: u32,
        device: usize,
        block_size: u32,
        num_blocks: u64,
    ) -> Namespace {
        let (nguid, uuid, eui64) = stable_ids(subnqn, nsid);
        Namespace {
            nsid,
            device,
            block_size,
            num_blocks,
            nguid,
            uuid,
            eui64,
            counters: Default::default(),
            stats_index: 0,
            anagrpid: ana::DEFAULT_GROUP,
        }
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
    /// Controller IDs this subsystem's controllers get: two targets exporting the same
    /// subsystem must use disjoint ranges, so that a host sees distinct controllers.
    pub cntlid_min: u16,
    pub cntlid_max: u16,
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
            cntlid_min: CNTLID_MIN,
            cntlid_max: CNTLID_MAX,
        }
    }

    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.allow_any_host || self.hosts.read().unwrap().iter().any(|h| h == hostnqn)
    }

    pub fn namespace(&self, nsid: u32) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.nsid == nsid)
    }

    /// The ANA group ids in use, ascending (one per NVM subsystem today).
    pub fn ana_groups(&self) -> Vec<u32> {
        let mut g: Vec<u32> = self.namespaces.iter().map(|n| n.anagrpid).collect();
        if self.kind == SubsystemKind::Nvm {
            g.push(ana::DEFAULT_GROUP);
        }
        g.sort_unstable();
        g.dedup();
        g
    }
}

/// A listener as the discovery log reports it.
#[derive(Debug, Clone)]
pub struct Port {
    pub id: u16,
    pub addr: std::net::SocketAddr,
}

/// `Controller::pending_aen` bit: an ANA change notice waits for an Asynchronous Event
/// Request.
pub const PENDING_ANA_CHANGE: u32 = 1 << 0;

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
    /// Asynchronous events waiting to be reported, one bit per kind (`PENDING_*`).
    pub pending_aen: AtomicU32,
    /// Event kinds reported (or waiting) and not yet cleared by reading their log page:
    /// no new event of such a kind is raised until then, as the specification asks.
    aen_masked: AtomicU32,
    /// This controller's (port, subsystem) cell in the target's ANA table.
    ana_slot: Option<usize>,
    /// Number of I/O queues granted (1-based), fixed by Set Features Number of Queues.
    pub io_queues_granted: AtomicU16,
    /// Bitmap of connected queue ids; bit 0 is the admin queue.
    connected: Mutex<Vec<bool>>,
    keepalive_ms: AtomicU64,
    epoch: Instant,
    dead: AtomicBool,
}

impl Controller {
    pub fn new(
        cntlid: u16,
        subsys: Arc<Subsystem>,
        hostnqn: String,
        hostid: [u8; 16],
        port_id: u16,
        kato_ms: u32,
        max_queues: u16,
    ) -> Self {
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
            pending_aen: AtomicU32::new(0),
            aen_masked: AtomicU32::new(0),
            ana_slot: None,
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
        self.connected
            .lock()
            .unwrap()
            .iter()
            .skip(1)
            .filter(|c| **c)
            .count()
    }

    pub fn touch_keepalive(&self) {
        self.keepalive_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
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

    /// An ANA state this controller reports changed: raise an ANA change notice if the
    /// host enabled them (Asynchronous Event Configuration bit 11) and none is already
    /// outstanding. Returns whether a notice is now pending because of this change.
    pub fn notify_ana_change(&self) -> bool {
        if self.is_dead() || self.aen_config.load(Ordering::Relaxed) & ana::AEC_ANA_CHANGE == 0 {
            return false;
        }
        if self
            .aen_masked
            .fetch_or(PENDING_ANA_CHANGE, Ordering::AcqRel)
            & PENDING_ANA_CHANGE
            != 0
        {
            return false;
        }
        self.pending_aen
            .fetch_or(PENDING_ANA_CHANGE, Ordering::AcqRel);
        true
    }

    /// Take the pending ANA change notice, if there is one: the caller completes a parked
    /// Asynchronous Event Request with `ana::aen_completion_dw0()`. Call it only with an
    /// AER to complete, or the notice is lost until the next change.
    pub fn take_ana_change_event(&self) -> bool {
        self.pending_aen
            .fetch_and(!PENDING_ANA_CHANGE, Ordering::AcqRel)
            & PENDING_ANA_CHANGE
            != 0
    }

    /// The host read the ANA log page without Retain Asynchronous Event: later changes
    /// raise notices again.
    pub fn ana_log_read(&self) {
        self.aen_masked
            .fetch_and(!PENDING_ANA_CHANGE, Ordering::AcqRel);
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

/// Why an ANA state change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnaError {
    UnknownPort(u16),
    UnknownSubsystem(String),
}

impl std::fmt::Display for AnaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnaError::UnknownPort(id) => write!(f, "no listener with port id {id}"),
            AnaError::UnknownSubsystem(nqn) => write!(f, "unknown subsystem '{nqn}'"),
        }
    }
}

/// One ANA group whose state changed on one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnaChange {
    pub port_id: u16,
    pub subsystem: String,
    pub anagrpid: u32,
    pub from: AnaState,
    pub to: AnaState,
    /// The global change count this change produced.
    pub change_count: u64,
    /// Controllers that now have an ANA change notice pending.
    pub notified: usize,
}

/// The state of one ANA group on one port, for status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnaGroupReport {
    pub port_id: u16,
    pub addr: std::net::SocketAddr,
    pub subsystem: String,
    pub anagrpid: u32,
    pub state: AnaState,
    pub change_count: u64,
    pub nsids: Vec<u32>,
    /// Live controllers of the subsystem connected through this port.
    pub controllers: usize,
}

/// Everything the reactors share: subsystems, ports and live controllers.
#[derive(Debug)]
pub struct Target {
    pub subsystems: Vec<Arc<Subsystem>>,
    pub ports: Vec<Port>,
    pub max_io_queues: u16,
    pub max_controllers: usize,
    /// ANA state per (port, subsystem, group) and the change count.
    pub ana: AnaTable,
    controllers: Mutex<HashMap<u16, Arc<Controller>>>,
    /// Per subsystem (same index): offset in its cntlid range where the search for a free
    /// controller ID starts, so IDs are not reused at once.
    cntlid_cursors: Vec<AtomicU32>,
    /// Bumped whenever the discovery log's content changes.
    pub discovery_genctr: AtomicU64,
    /// Where messages from a peer site go (stretched volumes), once set up.
    pub site_messages: std::sync::OnceLock<Arc<dyn super::admin::SiteMessages>>,
}

impl Target {
    pub fn new(
        mut subsystems: Vec<Arc<Subsystem>>,
        ports: Vec<Port>,
        max_io_queues: u16,
        max_controllers: usize,
    ) -> Target {
        if !subsystems
            .iter()
            .any(|s| s.kind == SubsystemKind::Discovery)
        {
            subsystems.insert(0, Arc::new(Subsystem::discovery()));
        }
        let port_ids: Vec<u16> = ports.iter().map(|p| p.id).collect();
        Target {
            ana: AnaTable::new(&port_ids, subsystems.len()),
            cntlid_cursors: subsystems.iter().map(|_| AtomicU32::new(0)).collect(),
            subsystems,
            ports,
            max_io_queues,
            max_controllers,
            controllers: Mutex::new(HashMap::new()),
            discovery_genctr: AtomicU64::new(1),
            site_messages: std::sync::OnceLock::new(),
        }
    }

    pub fn subsystem(&self, nqn: &str) -> Option<&Arc<Subsystem>> {
        self.subsystems.iter().find(|s| s.nqn == nqn)
    }

    /// Admin queue Connect: create a controller with a fresh cntlid from the subsystem's
    /// range.
    pub fn create_controller(
        &self,
        subnqn: &str,
        hostnqn: &str,
        hostid: [u8; 16],
        port_id: u16,
        kato_ms: u32,
    ) -> Result<Arc<Controller>, ConnectError> {
        let index = self
            .subsystems
            .iter()
            .position(|s| s.nqn == subnqn)
            .ok_or(ConnectError::UnknownSubsystem)?;
        let subsys = &self.subsystems[index];
        if !subsys.host_allowed(hostnqn) {
            return Err(ConnectError::HostNotAllowed);
        }
        let mut ctrls = self.controllers.lock().unwrap();
        if ctrls.len() >= self.max_controllers {
            return Err(ConnectError::TooManyControllers);
        }
        let cntlid = free_cntlid(
            subsys.cntlid_min,
            subsys.cntlid_max,
            &self.cntlid_cursors[index],
            |id| ctrls.contains_key(&id),
        )
        .ok_or(ConnectError::TooManyControllers)?;
        let queues = if subsys.kind == SubsystemKind::Discovery {
            0
        } else {
            self.max_io_queues
        };
        let mut ctrl = Controller::new(
            cntlid,
            subsys.clone(),
            hostnqn.to_string(),
            hostid,
            port_id,
            kato_ms,
            queues,
        );
        ctrl.ana_slot = self.ana.slot(port_id, index);
        let ctrl = Arc::new(ctrl);
        ctrl.touch_keepalive();
        ctrls.insert(cntlid, ctrl.clone());
        Ok(ctrl)
    }

    /// I/O queue Connect: find the controller the admin queue created.
    pub fn attach_io_queue(
        &self,
        cntlid: u16,
        subnqn: &str,
        hostnqn: &str,
        qid: u16,
    ) -> Result<Arc<Controller>, ConnectError> {
        let ctrl = self
            .controllers
            .lock()
            .unwrap()
            .get(&cntlid)
            .cloned()
            .ok_or(ConnectError::UnknownController)?;
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

    /// The ANA state of group `anagrpid` as `ctrl` reports it (the state of its port).
    /// Lock-free: one atomic load, for the I/O path. A controller on a port the table
    /// does not know reports optimized.
    pub fn ana_state(&self, ctrl: &Controller, anagrpid: u32) -> AnaState {
        ctrl.ana_slot
            .map_or(AnaState::Optimized, |slot| self.ana.state(slot, anagrpid))
    }

    /// The status an I/O command on namespace `ns` gets from `ctrl` because of the path's
    /// ANA state, or None when it may proceed (see `ana::io_status`).
    pub fn ana_io_status(&self, ctrl: &Controller, ns: &Namespace) -> Option<u16> {
        ana::io_status(self.ana_state(ctrl, ns.anagrpid))
    }

    /// State and change count of group `anagrpid` as `ctrl` reports it (ANA log page).
    pub fn ana_group(&self, ctrl: &Controller, anagrpid: u32) -> ana::GroupState {
        let unknown = ana::GroupState {
            state: AnaState::Optimized,
            change_count: 0,
        };
        ctrl.ana_slot
            .and_then(|slot| self.ana.group(slot, anagrpid))
            .unwrap_or(unknown)
    }

    /// Set the ANA state of every group of one NVM subsystem (or of all, `subnqn` None)
    /// on port `port_id`. Each group that changes bumps the change count and raises an
    /// ANA change notice on the live controllers of its subsystem connected through that
    /// port (those that enabled the notices). Groups already in `state` are left alone.
    pub fn set_ana_state(
        &self,
        port_id: u16,
        subnqn: Option<&str>,
        state: AnaState,
    ) -> Result<Vec<AnaChange>, AnaError> {
        if !self.ports.iter().any(|p| p.id == port_id) {
            return Err(AnaError::UnknownPort(port_id));
        }
        let chosen: Vec<usize> = (0..self.subsystems.len())
            .filter(|&i| {
                self.subsystems[i].kind == SubsystemKind::Nvm
                    && subnqn.is_none_or(|n| self.subsystems[i].nqn == n)
            })
            .collect();
        if let (Some(n), true) = (subnqn, chosen.is_empty()) {
            return Err(AnaError::UnknownSubsystem(n.to_string()));
        }
        let writer = self.ana.lock_writer();
        let mut changes = Vec::new();
        for i in chosen {
            let s = &self.subsystems[i];
            let slot = self
                .ana
                .slot(port_id, i)
                .expect("every port and subsystem has cells");
            for g in s.ana_groups() {
                if let Some((from, change_count)) = self.ana.change(&writer, slot, g, state) {
                    changes.push(AnaChange {
                        port_id,
                        subsystem: s.nqn.clone(),
                        anagrpid: g,
                        from,
                        to: state,
                        change_count,
                        notified: 0,
                    });
                }
            }
        }
        if !changes.is_empty() {
            for c in self.controllers().iter().filter(|c| c.port_id == port_id) {
                if let Some(ch) = changes.iter_mut().find(|ch| ch.subsystem == c.subsys.nqn) {
                    ch.notified += c.notify_ana_change() as usize;
                }
            }
        }
        Ok(changes)
    }

    /// Every (port, NVM subsystem, group) with its state, in port then subsystem order.
    pub fn ana_report(&self) -> Vec<AnaGroupReport> {
        let ctrls = self.controllers();
        let mut out = Vec::new();
        for p in &self.ports {
            for (i, s) in self
                .subsystems
                .iter()
                .enumerate()
                .filter(|(_, s)| s.kind == SubsystemKind::Nvm)
            {
                let Some(slot) = self.ana.slot(p.id, i) else {
                    continue;
                };
                let controllers = ctrls
                    .iter()
                    .filter(|c| c.port_id == p.id && Arc::ptr_eq(&c.subsys, s) && !c.is_dead())
                    .count();
                for g in s.ana_groups() {
                    let st = self.ana.group(slot, g).unwrap_or(ana::GroupState {
                        state: AnaState::Inaccessible,
                        change_count: 0,
                    });
                    let nsids = s
                        .namespaces
                        .iter()
                        .filter(|n| n.anagrpid == g)
                        .map(|n| n.nsid)
                        .collect();
                    out.push(AnaGroupReport {
                        port_id: p.id,
                        addr: p.addr,
                        subsystem: s.nqn.clone(),
                        anagrpid: g,
                        state: st.state,
                        change_count: st.change_count,
                        nsids,
                        controllers,
                    });
                }
            }
        }
        out
    }
}

/// A controller ID in `min..=max` for which `used` is false, searching from the cursor's
/// offset and moving the cursor past the ID found; None when the whole range is in use.
fn free_cntlid(min: u16, max: u16, cursor: &AtomicU32, used: impl Fn(u16) -> bool) -> Option<u16> {
    if min == 0 || min > max {
        return None;
    }
    let span = (max - min) as u32 + 1;
    let start = cursor.load(Ordering::Relaxed) % span;
    (0..span)
        .map(|i| (start + i) % span)
        .find(|&off| !used(min + off as u16))
        .map(|off| {
            cursor.store((off + 1) % span, Ordering::Relaxed);
            min + off as u16
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nvm(nqn: &str, min: u16, max: u16) -> Arc<Subsystem> {
        Arc::new(Subsystem {
            nqn: nqn.into(),
            kind: SubsystemKind::Nvm,
            serial: "SN".into(),
            model: "M".into(),
            allow_any_host: true,
            hosts: RwLock::new(vec![]),
            namespaces: vec![
                Namespace::new(nqn, 1, 0, 512, 1024),
                Namespace::new(nqn, 2, 0, 512, 1024),
            ],
            cntlid_min: min,
            cntlid_max: max,
        })
    }

    fn ports() -> Vec<Port> {
        vec![
            Port {
                id: 1,
                addr: "127.0.0.1:4420".parse().unwrap(),
            },
            Port {
                id: 2,
                addr: "127.0.0.1:4421".parse().unwrap(),
            },
        ]
    }

    fn connect(t: &Target, nqn: &str, port: u16) -> Result<Arc<Controller>, ConnectError> {
        t.create_controller(nqn, "nqn.host:1", [0; 16], port, 0)
    }

    #[test]
    fn controller_ids_stay_in_the_subsystem_range() {
        let t = Target::new(
            vec![nvm("nqn.t:a", 100, 102), nvm("nqn.t:b", 200, 0xFFEF)],
            ports(),
            4,
            64,
        );
        let a: Vec<u16> = (0..3)
            .map(|_| connect(&t, "nqn.t:a", 1).unwrap().cntlid)
            .collect();
        assert_eq!(a, [100, 101, 102]);
        assert_eq!(
            connect(&t, "nqn.t:a", 2).unwrap_err(),
            ConnectError::TooManyControllers,
            "range full"
        );
        assert_eq!(
            connect(&t, "nqn.t:b", 1).unwrap().cntlid,
            200,
            "other subsystem, other range"
        );
        t.remove_controller(101);
        assert_eq!(
            connect(&t, "nqn.t:a", 1).unwrap().cntlid,
            101,
            "a freed ID is handed out again"
        );
        // The discovery subsystem keeps the full range.
        let d = t
            .create_controller(DISCOVERY_NQN, "nqn.host:1", [0; 16], 1, 0)
            .unwrap();
        assert!((CNTLID_MIN..=CNTLID_MAX).contains(&d.cntlid));
    }

    #[test]
    fn free_cntlid_rotates_and_refuses_bad_ranges() {
        let cursor = AtomicU32::new(0);
        assert_eq!(free_cntlid(5, 7, &cursor, |_| false), Some(5));
        assert_eq!(
            free_cntlid(5, 7, &cursor, |_| false),
            Some(6),
            "not the one just handed out"
        );
        assert_eq!(
            free_cntlid(5, 7, &cursor, |id| id == 7),
            Some(5),
            "wraps and skips used IDs"
        );
        assert_eq!(free_cntlid(5, 7, &cursor, |_| true), None);
        assert_eq!(free_cntlid(0, 7, &cursor, |_| false), None);
        assert_eq!(free_cntlid(9, 7, &cursor, |_| false), None);
        assert_eq!(
            free_cntlid(0xFFEF, 0xFFEF, &AtomicU32::new(0), |_| false),
            Some(0xFFEF)
        );
    }

    #[test]
    fn ana_changes_notify_the_controllers_of_that_port_only() {
        let t = Target::new(
            vec![nvm("nqn.t:a", 1, 100), nvm("nqn.t:b", 101, 200)],
            ports(),
            4,
            64,
        );
        t.ana.set_initial(2, AnaState::NonOptimized);
        let a1 = connect(&t, "nqn.t:a", 1).unwrap();
        let a2 = connect(&t, "nqn.t:a", 2).unwrap();
        let b1 = connect(&t, "nqn.t:b", 1).unwrap();
        let quiet = connect(&t, "nqn.t:a", 1).unwrap();
        for c in [&a1, &a2, &b1] {
            c.aen_config
                .store(ana::AEC_ANA_CHANGE | 0x100, Ordering::Relaxed);
        }
        let ns = &t.subsystems[1].namespaces[0];
        assert_eq!(t.subsystems[1].nqn, "nqn.t:a");
        assert_eq!(t.ana_state(&a1, 1), AnaState::Optimized);
        assert_eq!(t.ana_state(&a2, 1), AnaState::NonOptimized);
        assert_eq!(t.ana_io_status(&a1, ns), None);

        let ch = t
            .set_ana_state(1, Some("nqn.t:a"), AnaState::Inaccessible)
            .unwrap();
        assert_eq!(ch.len(), 1);
        assert_eq!(
            (ch[0].from, ch[0].to, ch[0].change_count, ch[0].notified),
            (AnaState::Optimized, AnaState::Inaccessible, 1, 1)
        );
        assert_eq!(
            t.ana_io_status(&a1, ns),
            Some(super::super::spec::status::ANA_INACCESSIBLE)
        );
        assert_eq!(
            t.ana_state(&a2, 1),
            AnaState::NonOptimized,
            "the other port keeps its state"
        );
        assert_eq!(
            t.ana_state(&b1, 1),
            AnaState::Optimized,
            "the other subsystem keeps its state"
        );
        assert!(a1.take_ana_change_event());
        assert!(!a1.take_ana_change_event(), "taken once");
        assert!(!a2.take_ana_change_event() && !b1.take_ana_change_event());
        assert!(!quiet.take_ana_change_event(), "notices not enabled");

        // Reported and not yet read: the next change raises no new notice...
        t.set_ana_state(1, Some("nqn.t:a"), AnaState::Change)
            .unwrap();
        assert!(!a1.take_ana_change_event());
        // ...until the host read the log page.
        a1.ana_log_read();
        t.set_ana_state(1, Some("nqn.t:a"), AnaState::Optimized)
            .unwrap();
        assert!(a1.take_ana_change_event());

        // No subsystem named: every subsystem on the port; nothing changes twice.
        let ch = t.set_ana_state(1, None, AnaState::Optimized).unwrap();
        assert!(ch.is_empty(), "{ch:?}");
        let ch = t.set_ana_state(1, None, AnaState::NonOptimized).unwrap();
        assert_eq!(
            ch.iter().map(|c| c.subsystem.as_str()).collect::<Vec<_>>(),
            ["nqn.t:a", "nqn.t:b"]
        );
        assert_eq!(t.ana.change_count(), 5);
        assert!(b1.take_ana_change_event());
        assert_eq!(
            t.set_ana_state(9, None, AnaState::Optimized).unwrap_err(),
            AnaError::UnknownPort(9)
        );
        assert_eq!(
            t.set_ana_state(1, Some(DISCOVERY_NQN), AnaState::Optimized)
                .unwrap_err(),
            AnaError::UnknownSubsystem(DISCOVERY_NQN.into())
        );

        let r = t.ana_report();
        assert_eq!(r.len(), 4, "two ports x two subsystems");
        let a_on_2 = r
            .iter()
            .find(|g| g.port_id == 2 && g.subsystem == "nqn.t:a")
            .unwrap();
        assert_eq!(
            (
                a_on_2.state,
                a_on_2.change_count,
                a_on_2.controllers,
                a_on_2.nsids.clone()
            ),
            (AnaState::NonOptimized, 0, 1, vec![1, 2])
        );
        let a_on_1 = r
            .iter()
            .find(|g| g.port_id == 1 && g.subsystem == "nqn.t:a")
            .unwrap();
        assert_eq!(
            (a_on_1.state, a_on_1.change_count, a_on_1.controllers),
            (AnaState::NonOptimized, 4, 2)
        );
    }
}
