//! The site controller: one thread per stretched volume that decides the site's mode.
//!
//! Every 100 ms it exchanges its state with the peer over the site link (a SITE_MESSAGE
//! admin command on the replica association) and acts:
//!
//! ```text
//! Starting --peer serves alone--> (send our dirty regions) Target
//! Starting --both clean, not serving--> Mirrored       (else the leader: Source, all dirty)
//! Starting --peer unreachable for the link timeout--> Suspended
//! Mirrored --peer lost, a peer write failed, or the peer suspended--> Suspended
//! Suspended --witness won, then the fence delay--> Solo
//! Suspended --witness lost or unreachable--> Fenced
//! Solo --peer back and reported its dirty regions--> Source
//! Source --every dirty region copied: quiesce, tell the peer--> Mirrored
//! Fenced --peer serves alone--> (send our dirty regions) Target
//! Target --peer says in sync--> Mirrored
//! ```
//!
//! The fence delay: a site that loses the link stops serving (Suspended) within the link
//! timeout, plus half of it for an exchange that hangs, plus a tick; the witness's winner
//! waits longer than that (`fence_delay`) before it acknowledges a write alone, so no host
//! can read stale data from the loser meanwhile. A site serving alone that cannot renew
//! its witness lease for two thirds of its TTL fences itself before the lease can lapse
//! and the key go to the peer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::{info, warn};

use super::{Mode, SiteShared};
use crate::bdev::remote::RemoteBdev;
use crate::nvmf::admin::SiteMessages;
use crate::nvmf::ana::AnaState;
use crate::nvmf::subsystem::Target;
use crate::witness::{Etcd, Role, Witness};

const TICK: Duration = Duration::from_millis(100);
/// Dirty regions per message.
const REGIONS_PER_MESSAGE: usize = 512;

/// How one site runs one stretched volume.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    /// The stretched volume's name (the same at both sites).
    pub volume: String,
    pub site: String,
    pub peer_site: String,
    /// The site that orders writes while mirrored.
    pub leader: String,
    pub witness: Option<SocketAddr>,
    pub witness_ttl_s: u64,
    /// No exchange with the peer for this long: the peer is lost.
    pub link_timeout: Duration,
    pub state_file: PathBuf,
    /// Host-facing (port id, subsystem NQN) pairs whose ANA state follows the mode.
    pub host_paths: Vec<(u16, String)>,
}

/// What the peer last told us, written by the message handler.
#[derive(Debug, Default)]
pub struct Inbox {
    peer_mode: AtomicU8,
    peer_seen: Mutex<Option<Instant>>,
    /// Regions the peer reported as possibly different from our copy.
    /// Reports are per round: (round, regions) of the latest one.
    peer_dirty: Mutex<(u64, Vec<u64>)>,
    /// The round of the last complete report of the peer's dirty regions, and whether it
    /// asked for a full copy.
    peer_dirty_round: AtomicU64,
    /// The round of a report that asked for a full copy (the peer started after a crash).
    peer_full_round: AtomicU64,
    /// The round for which the peer asks us to report our dirty regions (0: none).
    dirty_request: AtomicU64,
    /// The peer (resync source) says our copy is in sync, as of its round (the one we
    /// reported our dirty regions for).
    in_sync: AtomicU64,
    /// The peer hands over: it stopped serving and we may serve alone.
    handed_over: AtomicBool,
    /// The site the peer believes leads (must be ours).
    peer_leader: Mutex<String>,
    /// Whether the peer's copy holds every acknowledged write.
    peer_fresh: AtomicBool,
}

/// One stretched volume as the message handler sees it.
type SiteEntry = (Arc<SiteShared>, Arc<Inbox>);

/// Answers the peer's site messages for every stretched volume of this target.
#[derive(Debug, Default)]
pub struct SiteInbox {
    volumes: Mutex<HashMap<String, SiteEntry>>,
}

impl SiteInbox {
    pub fn add(&self, volume: &str, shared: Arc<SiteShared>, inbox: Arc<Inbox>) {
        self.volumes
            .lock()
            .unwrap()
            .insert(volume.to_string(), (shared, inbox));
    }
}

impl SiteMessages for SiteInbox {
    fn message(&self, data: &[u8]) -> Result<(u32, u32), u16> {
        let invalid = crate::nvmf::spec::status::INVALID_FIELD | crate::nvmf::spec::status::DNR;
        let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
        let m: Value = serde_json::from_slice(&data[..end]).map_err(|_| invalid)?;
        let volume = m["volume"].as_str().ok_or(invalid)?;
        let (shared, inbox) = self
            .volumes
            .lock()
            .unwrap()
            .get(volume)
            .cloned()
            .ok_or(invalid)?;
        inbox
            .peer_mode
            .store(m["mode"].as_u64().unwrap_or(0) as u8, Ordering::Release);
        *inbox.peer_seen.lock().unwrap() = Some(Instant::now());
        if let (Some(regions), Some(round)) = (m["dirty"].as_array(), m["round"].as_u64()) {
            let mut d = inbox.peer_dirty.lock().unwrap();
            if d.0 != round {
                *d = (round, Vec::new());
            }
            d.1.extend(regions.iter().filter_map(Value::as_u64));
        }
        if let Some(f) = m["fresh"].as_bool() {
            inbox.peer_fresh.store(f, Ordering::Release);
        }
        if let Some(l) = m["leader"].as_str() {
            *inbox.peer_leader.lock().unwrap() = l.to_string();
        }
        if m["full"].as_bool() == Some(true) {
            inbox
                .peer_full_round
                .store(m["dirty_done"].as_u64().unwrap_or(0), Ordering::Release);
        }
        if let Some(round) = m["want_dirty"].as_u64() {
            inbox.dirty_request.store(round, Ordering::Release);
        }
        if let Some(round) = m["dirty_done"].as_u64() {
            inbox.peer_dirty_round.store(round, Ordering::Release);
        }
        if let Some(round) = m["in_sync"].as_u64() {
            inbox.in_sync.store(round, Ordering::Release);
        }
        if m["handover"].as_bool() == Some(true) {
            inbox.handed_over.store(true, Ordering::Release);
        }
        Ok((shared.mode() as u32, shared.dirty.count() as u32))
    }
}

/// What `site_status` reports.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SiteStatus {
    pub volume: String,
    pub site: String,
    pub peer_site: String,
    pub mode: String,
    pub leader: bool,
    pub peer_reachable: bool,
    pub peer_mode: String,
    pub link_rtt_us: u64,
    pub witness: String,
    pub witness_role: String,
    pub dirty_regions: u64,
    pub resync_bytes: u64,
    pub resync_eta_secs: Option<u64>,
    pub mirrored_writes: u64,
    pub mirrored_write_avg_us: u64,
    pub solo_writes: u64,
    pub refused: u64,
    pub last_change: String,
}

/// Operator requests to the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Planned maintenance: stop serving, hand the volume to the peer.
    Handover,
    /// Serve alone without the witness (the witness is gone too): the operator vouches
    /// that the peer does not serve.
    ForceTakeover,
}

pub struct SiteController {
    cfg: SiteConfig,
    pub shared: Arc<SiteShared>,
    inbox: Arc<Inbox>,
    replica: Arc<RemoteBdev>,
    target: Arc<Target>,
    witness: Option<Witness>,
    status: Arc<Mutex<SiteStatus>>,
    commands: crossbeam::channel::Receiver<Command>,
    stop: Arc<AtomicBool>,
    started: Instant,
    /// Last successful exchange with the peer, and the peer's mode then.
    last_exchange: Option<Instant>,
    peer_mode: Mode,
    /// Since when the peer has been in `peer_mode` (by our exchanges).
    peer_mode_since: Instant,
    last_witness_beat: Instant,
    last_witness_ok: Instant,
    rtt_us: Arc<AtomicU64>,
    /// Whether this start followed a clean stop (the state file said so).
    clean_start: bool,
    /// Whether this copy holds every acknowledged write: false once the peer went on
    /// without this site (it lost the witness, handed over, or is being resynced), true
    /// again once in sync. A stale copy never serves alone and is never a resync source.
    fresh: bool,
    /// Handed over for maintenance: stay fenced until restarted (then rejoin by itself).
    maintenance: bool,
    /// The current round of asking the peer for its dirty regions (serving alone, or
    /// leading a start), and the last round this site answered.
    round: u64,
    dirty_answered: u64,
    resync_started: Option<(Instant, u64)>,
}

/// The handle the server keeps: status, operator commands, stop.
#[derive(Clone)]
pub struct SiteHandle {
    pub volume: String,
    pub shared: Arc<SiteShared>,
    status: Arc<Mutex<SiteStatus>>,
    commands: crossbeam::channel::Sender<Command>,
    stop: Arc<AtomicBool>,
}

impl SiteHandle {
    pub fn status(&self) -> SiteStatus {
        let mut s = self.status.lock().unwrap().clone();
        let sh = &self.shared;
        s.mode = sh.mode().name().into();
        s.dirty_regions = sh.dirty.count();
        s.resync_bytes = sh.resync_bytes.load(Ordering::Relaxed);
        let (_, sum, writes) = sh.mirrored_writes.snapshot();
        s.mirrored_writes = writes;
        s.mirrored_write_avg_us = sum.checked_div(writes).unwrap_or(0);
        s.solo_writes = sh.solo_writes.load(Ordering::Relaxed);
        s.refused = sh.refused.load(Ordering::Relaxed);
        s
    }

    pub fn command(&self, c: Command) {
        let _ = self.commands.send(c);
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// What the state file keeps across restarts.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct SavedState {
    /// The site stopped in order: `dirty` is complete.
    clean: bool,
    mode: String,
    dirty: Vec<u64>,
    /// This copy holds every acknowledged write (see `SiteController::fresh`). Written at
    /// every mode change, so a crash keeps it.
    #[serde(default = "yes")]
    fresh: bool,
}

fn yes() -> bool {
    true
}

impl SiteController {
    pub fn start(
        cfg: SiteConfig,
        shared: Arc<SiteShared>,
        replica: Arc<RemoteBdev>,
        target: Arc<Target>,
        inbox: Arc<Inbox>,
        crash_ranges: Option<Vec<(u64, u64)>>,
    ) -> std::io::Result<(SiteHandle, std::thread::JoinHandle<()>)> {
        // No state yet: a new site, whose copy is as good as any (the first resync sets it).
        let new_site = SavedState {
            fresh: true,
            ..SavedState::default()
        };
        let saved: SavedState = std::fs::read(&cfg.state_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(new_site);
        let mut clean_start = saved.clean;
        if saved.clean {
            for r in &saved.dirty {
                shared.dirty.set(*r);
            }
        } else if let (true, Some(ranges)) = (saved.mode == Mode::Mirrored.name(), &crash_ranges) {
            // A crash while mirrored: the copies can differ only where writes were in
            // flight, which the local volume's write-intent bitmap recorded.
            for &(offset, len) in ranges {
                shared.dirty.mark(offset, len);
            }
            clean_start = true;
            info!(
                volume = cfg.volume,
                regions = shared.dirty.count(),
                "restart after a crash while mirrored: the regions written at the crash are dirty"
            );
        }
        // Until the next clean stop, a crash leaves the file saying "unknown".
        write_state(
            &cfg.state_file,
            &SavedState {
                clean: false,
                mode: "starting".into(),
                dirty: vec![],
                fresh: saved.fresh,
            },
        )?;
        let witness = cfg
            .witness
            .map(|w| Witness::new(Etcd::new(w), &cfg.site, &cfg.volume, cfg.witness_ttl_s));
        let status = SiteStatus {
            volume: cfg.volume.clone(),
            site: cfg.site.clone(),
            peer_site: cfg.peer_site.clone(),
            leader: shared.is_leader(),
            witness: cfg
                .witness
                .map(|w| w.to_string())
                .unwrap_or_else(|| "none".into()),
            ..SiteStatus::default()
        };
        let status = Arc::new(Mutex::new(status));
        let (tx, rx) = crossbeam::channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = SiteHandle {
            volume: cfg.volume.clone(),
            shared: shared.clone(),
            status: status.clone(),
            commands: tx,
            stop: stop.clone(),
        };
        info!(
            volume = cfg.volume,
            site = cfg.site,
            peer = cfg.peer_site,
            leader = shared.is_leader(),
            clean_start,
            "site controller starting"
        );
        let c = SiteController {
            cfg,
            shared,
            inbox,
            replica,
            target,
            witness,
            status,
            commands: rx,
            stop,
            started: Instant::now(),
            last_exchange: None,
            peer_mode: Mode::Starting,
            peer_mode_since: Instant::now(),
            last_witness_beat: Instant::now(),
            last_witness_ok: Instant::now(),
            rtt_us: Arc::new(AtomicU64::new(0)),
            clean_start,
            maintenance: false,
            fresh: saved.fresh,
            round: new_round(0),
            dirty_answered: 0,
            resync_started: None,
        };
        c.apply_ana();
        let t = std::thread::Builder::new()
            .name(format!("site-{}", c.cfg.volume))
            .spawn(move || c.run())?;
        Ok((handle, t))
    }

    fn run(mut self) {
        while !self.stop.load(Ordering::Acquire) {
            let t = Instant::now();
            self.exchange(json!({}));
            while let Ok(cmd) = self.commands.try_recv() {
                self.on_command(cmd);
            }
            self.step();
            self.heartbeat_witness();
            self.publish();
            std::thread::sleep(TICK.saturating_sub(t.elapsed()));
        }
        self.save_on_stop();
    }

    fn mode(&self) -> Mode {
        self.shared.mode()
    }

    fn set_mode(&mut self, m: Mode, why: &str) {
        let old = self.mode();
        if old == m {
            return;
        }
        self.shared.set_mode(m);
        info!(
            volume = self.cfg.volume,
            site = self.cfg.site,
            from = old.name(),
            to = m.name(),
            why,
            "site mode changed"
        );
        if matches!(m, Mode::Fenced | Mode::Starting) {
            // A new round of agreeing with the peer on who resyncs whom.
            self.round = new_round(self.round);
        }
        if m == Mode::Mirrored {
            // What the resync wrote here is in both copies now.
            self.shared.recent.clear();
        }
        match m {
            // From here on this copy is known: only what changes later needs copying.
            Mode::Mirrored | Mode::Solo | Mode::Source => {
                self.clean_start |= m == Mode::Mirrored;
                self.fresh = true;
            }
            // Fenced after serving alone (the lease could not be renewed) keeps the newest
            // data; fenced after losing the witness or handing over does not.
            Mode::Fenced if matches!(old, Mode::Solo | Mode::Source) => {}
            Mode::Fenced | Mode::Target => self.fresh = false,
            Mode::Starting | Mode::Suspended => {}
        }
        let state = SavedState {
            clean: false,
            mode: m.name().into(),
            dirty: vec![],
            fresh: self.fresh,
        };
        if let Err(e) = write_state(&self.cfg.state_file, &state) {
            warn!(volume = self.cfg.volume, error = %e, "cannot save the site state");
        }
        self.status.lock().unwrap().last_change = format!("{} -> {}: {why}", old.name(), m.name());
        self.apply_ana();
    }

    /// Host paths are optimized while this site serves, inaccessible otherwise.
    fn apply_ana(&self) {
        let state = if self.mode().serves_hosts() {
            AnaState::Optimized
        } else {
            AnaState::Inaccessible
        };
        for (port, nqn) in &self.cfg.host_paths {
            if let Err(e) = self.target.set_ana_state(*port, Some(nqn), state) {
                warn!(volume = self.cfg.volume, port, error = %e, "cannot set the ANA state");
            }
        }
    }

    fn peer_reachable(&self) -> bool {
        self.last_exchange
            .is_some_and(|t| t.elapsed() < self.cfg.link_timeout)
    }

    /// Send our state (plus `extra` fields) to the peer; note its answer.
    fn exchange(&mut self, extra: Value) -> bool {
        let mut m = json!({"volume": self.cfg.volume, "site": self.cfg.site, "mode": self.mode() as u8, "leader": self.cfg.leader, "fresh": self.fresh});
        if self.mode() == Mode::Solo
            || (matches!(self.mode(), Mode::Starting | Mode::Fenced) && self.fresh)
        {
            m["want_dirty"] = json!(self.round);
        }
        if let (Some(o), Some(e)) = (m.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        let t = Instant::now();
        match self
            .replica
            .site_message(m.to_string().as_bytes(), self.cfg.link_timeout / 2)
        {
            Ok((mode, _dirty)) if t.elapsed() < self.cfg.link_timeout => {
                self.rtt_us
                    .store(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                self.shared.link_rtt.record(t.elapsed().as_micros() as u64);
                self.last_exchange = Some(Instant::now());
                let mode = Mode::from_u8(mode as u8);
                if mode != self.peer_mode {
                    self.peer_mode = mode;
                    self.peer_mode_since = Instant::now();
                }
                true
            }
            _ => false,
        }
    }

    fn step(&mut self) {
        if self.mode() != Mode::Mirrored {
            // A hand-over counts only while mirrored; a late one is void.
            self.inbox.handed_over.store(false, Ordering::Release);
        }
        let in_sync = self.inbox.in_sync.swap(0, Ordering::AcqRel);
        if matches!(self.mode(), Mode::Starting | Mode::Fenced | Mode::Target)
            && in_sync != 0
            && in_sync == self.dirty_answered
        {
            self.shared.dirty.clear_all();
            self.shared.peer_failed.store(false, Ordering::Release);
            return self.set_mode(Mode::Mirrored, "the peer resynchronised this site");
        }
        let asked = self.inbox.dirty_request.load(Ordering::Acquire);
        if asked != 0
            && asked != self.dirty_answered
            && matches!(self.mode(), Mode::Starting | Mode::Fenced | Mode::Target)
        {
            self.send_dirty(asked);
        }
        let reachable = self.peer_reachable();
        let peer = self.peer_mode;
        match self.mode() {
            Mode::Starting => self.step_starting(reachable, peer),
            Mode::Mirrored => {
                let seen = PeerView {
                    reachable,
                    peer,
                    peer_for: self.peer_mode_since.elapsed(),
                    peer_failed: self.shared.peer_failed.load(Ordering::Acquire),
                };
                match mirrored_step(
                    self.inbox.handed_over.swap(false, Ordering::AcqRel),
                    &seen,
                    self.cfg.link_timeout,
                ) {
                    MirroredStep::Stay => {}
                    MirroredStep::TakeOver => self.take_over_from_peer(),
                    MirroredStep::LosePeer(why) => self.lose_peer(why),
                    MirroredStep::BecomeTarget => self.become_target("the peer serves alone"),
                }
            }
            Mode::Suspended => self.decide(),
            Mode::Solo => {
                if reachable
                    && self.inbox.peer_dirty_round.load(Ordering::Acquire) == self.round
                    && matches!(peer, Mode::Target)
                {
                    self.start_resync();
                }
            }
            Mode::Source => {
                if !reachable || self.shared.peer_failed.load(Ordering::Acquire) {
                    self.lose_peer("the peer was lost during the resync");
                } else {
                    self.merge_peer_dirty();
                    let copying = self.shared.copying.load(Ordering::Acquire);
                    // The peer is Mirrored already if it took our in-sync notice but the
                    // answer was lost: say it again, and mirror too.
                    if self.shared.dirty.count() == 0
                        && !copying
                        && matches!(peer, Mode::Target | Mode::Mirrored)
                    {
                        self.finish_resync();
                    }
                }
            }
            Mode::Fenced => self.negotiate(reachable, peer),
            Mode::Target => {
                if !reachable {
                    self.set_mode(Mode::Fenced, "the peer was lost during the resync");
                }
            }
        }
    }

    fn step_starting(&mut self, reachable: bool, peer: Mode) {
        let peer_leader = self.inbox.peer_leader.lock().unwrap().clone();
        if reachable && !peer_leader.is_empty() && peer_leader != self.cfg.leader {
            // Two sites that both order (or both forward) would corrupt or loop: refuse.
            crate::warn_limited!(
                volume = self.cfg.volume,
                ours = self.cfg.leader,
                peer = peer_leader,
                "the sites disagree on the leader: fix the configuration"
            );
            self.status.lock().unwrap().last_change = format!(
                "waiting: the peer says the leader is '{peer_leader}', this site says '{}'",
                self.cfg.leader
            );
            return;
        }
        if !reachable {
            if self.started.elapsed() > self.cfg.link_timeout * 2 {
                if !self.fresh {
                    // The peer went on without this copy: it must not serve alone.
                    self.status.lock().unwrap().last_change =
                        "waiting for the peer: this copy is behind it".into();
                    return;
                }
                if !self.clean_start {
                    self.shared.dirty.set_all();
                }
                self.lose_peer("the peer is unreachable at start");
            }
            return;
        }
        self.negotiate(reachable, peer);
    }

    /// Neither this site nor, maybe, the peer serves: agree who resyncs whom. The fresh
    /// copy is the source (the leader if both are); the other reports its dirty regions
    /// and becomes the target.
    fn negotiate(&mut self, reachable: bool, peer: Mode) {
        if self.maintenance {
            return;
        }
        // Both directions must work: the peer's own messages tell whether its copy is fresh.
        if !reachable
            || self
                .inbox
                .peer_seen
                .lock()
                .unwrap()
                .is_none_or(|t| t.elapsed() > self.cfg.link_timeout)
        {
            return;
        }
        match peer {
            Mode::Solo | Mode::Source => self.become_target("the peer serves alone"),
            Mode::Mirrored | Mode::Suspended => {} // it will notice it lost us
            Mode::Starting | Mode::Fenced | Mode::Target => {
                let peer_fresh = self.inbox.peer_fresh.load(Ordering::Acquire);
                let source = if self.fresh != peer_fresh {
                    self.fresh
                } else {
                    self.fresh && self.shared.is_leader()
                };
                if !self.fresh && !peer_fresh {
                    self.status.lock().unwrap().last_change = "neither copy is known to hold every write: `site takeover --force` at the site to keep".into();
                    return;
                }
                if source {
                    if peer == Mode::Target
                        && self.inbox.peer_dirty_round.load(Ordering::Acquire) == self.round
                    {
                        if !self.clean_start {
                            self.shared.dirty.set_all();
                        }
                        self.start_resync();
                    }
                } else if self.dirty_answered != 0
                    && self.dirty_answered == self.inbox.dirty_request.load(Ordering::Acquire)
                    && self.mode() != Mode::Target
                {
                    self.become_target("the peer will resynchronise this site");
                }
            }
        }
    }

    /// Report to the peer, for its `round`, which regions of our copy may differ from its
    /// own (all of them after a crash).
    fn send_dirty(&mut self, round: u64) {
        let regions = self.shared.dirty.list();
        for chunk in regions.chunks(REGIONS_PER_MESSAGE) {
            if !self.exchange(json!({"dirty": chunk, "round": round})) {
                return;
            }
        }
        if self.exchange(json!({"dirty_done": round, "full": !self.clean_start})) {
            self.dirty_answered = round;
        }
    }

    /// The peer serves alone: receive its resync (it asks for our dirty regions first).
    fn become_target(&mut self, why: &str) {
        self.set_mode(Mode::Target, why);
    }

    fn merge_peer_dirty(&mut self) {
        if self
            .inbox
            .peer_full_round
            .compare_exchange(self.round, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.shared.dirty.set_all();
        }
        let (round, regions) = std::mem::take(&mut *self.inbox.peer_dirty.lock().unwrap());
        for r in regions.into_iter().filter(|_| round == self.round) {
            self.shared.dirty.set(r);
        }
    }

    fn start_resync(&mut self) {
        self.merge_peer_dirty();
        self.shared.peer_failed.store(false, Ordering::Release);
        self.resync_started = Some((
            Instant::now(),
            self.shared.resync_bytes.load(Ordering::Relaxed),
        ));
        let dirty = self.shared.dirty.count();
        self.set_mode(
            Mode::Source,
            &format!("the peer is back: copying {dirty} dirty regions"),
        );
    }

    /// The peer stopped serving and handed the volume over (planned maintenance): serve
    /// alone at once, no fence delay to wait.
    fn take_over_from_peer(&mut self) {
        if let Some(w) = self.witness.as_mut() {
            if let Role::Fenced { why } = w.peer_lost().clone() {
                warn!(
                    volume = self.cfg.volume,
                    why, "the witness refused the hand-over"
                );
                return self.set_mode(Mode::Fenced, &why);
            }
        }
        self.round = new_round(self.round);
        self.set_mode(Mode::Solo, "the peer handed over");
    }

    /// Every dirty region is copied: stop new writes, let the ordered ones finish, tell
    /// the peer, and go back to mirroring with the configured leader.
    fn finish_resync(&mut self) {
        self.shared.set_quiesce(true);
        let deadline = Instant::now() + self.cfg.link_timeout;
        while self.shared.peer_writes_in_flight.load(Ordering::Acquire) > 0
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let ok = self.shared.peer_writes_in_flight.load(Ordering::Acquire) == 0
            && self.shared.dirty.count() == 0
            && self.exchange(json!({"in_sync": self.round}));
        if ok {
            if !self.shared.is_leader() {
                // Mirrored, this site forwards its writes to the leader, whose forward
                // namespace refuses them until it has left Target (at its next tick): keep
                // them held until it says it mirrors.
                let deadline = Instant::now() + self.cfg.link_timeout;
                while self.peer_mode != Mode::Mirrored && Instant::now() < deadline {
                    std::thread::sleep(TICK / 10);
                    self.exchange(json!({}));
                }
            }
            if let Some(w) = self.witness.as_mut() {
                let _ = w.peer_back();
            }
            self.set_mode(Mode::Mirrored, "the peer is in sync");
        }
        self.shared.set_quiesce(false);
    }

    /// The peer is lost: hold host I/O and ask the witness.
    fn lose_peer(&mut self, why: &str) {
        warn!(
            volume = self.cfg.volume,
            site = self.cfg.site,
            why,
            "peer site lost"
        );
        // Writes the peer ordered and sent here just before: the peer may not have them
        // (it crashed before its own local write), so they go back to it at the rejoin.
        for r in self.shared.recent.since(self.cfg.link_timeout * 3) {
            self.shared.dirty.set(r);
        }
        self.set_mode(Mode::Suspended, why);
        self.decide();
    }

    fn decide(&mut self) {
        let role = match self.witness.as_mut() {
            Some(w) => w.peer_lost().clone(),
            None => Role::Fenced {
                why: "no witness is configured".into(),
            },
        };
        self.status.lock().unwrap().witness_role = format!("{role:?}");
        match role {
            Role::Sole => {
                // The loser stops serving within the link timeout: wait it out.
                std::thread::sleep(self.fence_delay());
                self.round = new_round(self.round);
                self.set_mode(Mode::Solo, "won the witness");
            }
            Role::Fenced { why } => {
                self.set_mode(Mode::Fenced, &why);
            }
            Role::Mirrored => {}
        }
    }

    /// How long the loser of the witness may still serve after losing the link.
    fn fence_delay(&self) -> Duration {
        self.cfg.link_timeout * 3 / 2 + TICK * 3
    }

    /// Keep the lease that holds the volume's claim alive while serving alone. Not while
    /// mirrored: nothing is held then, and the link watch must never wait on the witness.
    fn heartbeat_witness(&mut self) {
        let ttl = Duration::from_secs(self.cfg.witness_ttl_s.max(1));
        if !matches!(self.mode(), Mode::Solo | Mode::Source) {
            self.last_witness_ok = Instant::now();
            return;
        }
        if self.last_witness_beat.elapsed() < ttl / 3 {
            return;
        }
        self.last_witness_beat = Instant::now();
        let Some(w) = self.witness.as_mut() else {
            return;
        };
        let r = w.heartbeat();
        let role = w.role.clone();
        match r {
            Ok(()) => self.last_witness_ok = Instant::now(),
            Err(e) => {
                crate::warn_limited!(volume = self.cfg.volume, error = %e, "witness unreachable")
            }
        }
        if matches!(self.mode(), Mode::Solo | Mode::Source)
            && self.last_witness_ok.elapsed() > ttl * 2 / 3
        {
            return self.set_mode(Mode::Fenced, "the witness lease could not be renewed");
        }
        if let (Role::Fenced { why }, Mode::Solo | Mode::Source) = (&role, self.mode()) {
            let why = why.clone();
            self.set_mode(Mode::Fenced, &why);
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Handover => {
                // Hold host I/O, let the writes involving the peer finish, tell the peer
                // (it serves alone from then on), then refuse what was held: the hosts
                // retry it on the peer's paths.
                self.shared.set_quiesce(true);
                let deadline = Instant::now() + self.cfg.link_timeout;
                while self.shared.peer_writes_in_flight.load(Ordering::Acquire) > 0
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                self.shared.set_mode(Mode::Suspended);
                let told = self.exchange(json!({"handover": true}));
                self.shared.set_quiesce(false);
                self.maintenance = true;
                self.set_mode(
                    Mode::Fenced,
                    if told {
                        "handed over to the peer: in maintenance until restarted"
                    } else {
                        "handed over (the peer did not answer)"
                    },
                );
            }
            Command::ForceTakeover => {
                warn!(
                    volume = self.cfg.volume,
                    "forced takeover: serving alone without the witness"
                );
                self.witness = None;
                self.set_mode(Mode::Solo, "forced takeover");
            }
        }
    }

    fn publish(&mut self) {
        let reachable = self.peer_reachable();
        let eta = self.resync_started.and_then(|(t, base)| {
            let done = self
                .shared
                .resync_bytes
                .load(Ordering::Relaxed)
                .saturating_sub(base);
            let left = self.shared.dirty.count() * super::dirty::REGION;
            (done > 0 && self.mode() == Mode::Source)
                .then(|| (left as f64 / (done as f64 / t.elapsed().as_secs_f64().max(1e-3))) as u64)
        });
        let mut s = self.status.lock().unwrap();
        s.peer_reachable = reachable;
        s.peer_mode = if reachable {
            self.peer_mode.name().into()
        } else {
            "unknown".into()
        };
        s.link_rtt_us = self.rtt_us.load(Ordering::Relaxed);
        s.resync_eta_secs = eta;
        if let Some(w) = &self.witness {
            s.witness_role = format!("{:?}", w.role);
        }
    }

    fn save_on_stop(&mut self) {
        let mode = self.mode();
        let state = SavedState {
            clean: true,
            mode: mode.name().into(),
            dirty: self.shared.dirty.list(),
            fresh: self.fresh,
        };
        if let Err(e) = write_state(&self.cfg.state_file, &state) {
            warn!(volume = self.cfg.volume, error = %e, "cannot save the site state");
        }
        if let Some(w) = self.witness.as_mut() {
            let _ = w.shutdown();
        }
        info!(
            volume = self.cfg.volume,
            mode = mode.name(),
            dirty = state.dirty.len(),
            "site controller stopped"
        );
    }
}

/// What a mirrored site saw of its peer at its last exchange.
#[derive(Debug, Clone, Copy)]
struct PeerView {
    reachable: bool,
    peer: Mode,
    /// How long the peer has been in `peer`.
    peer_for: Duration,
    /// A write to the peer failed (ordered, forwarded or copied).
    peer_failed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MirroredStep {
    Stay,
    /// The peer handed the volume over for maintenance.
    TakeOver,
    /// Stop serving (reads too) and ask the witness.
    LosePeer(&'static str),
    BecomeTarget,
}

/// What a mirrored site does next. Both sites must stop serving when either one stops
/// mirroring: a site whose write to the peer failed asks the witness and, if it wins,
/// serves alone after the fence delay; the peer, still reachable, must not go on serving
/// reads from a copy that will miss those writes. So a peer seen suspended for a tick
/// (a hand-over passes through suspended for one exchange only) makes this site suspend
/// too, well within the fence delay. A peer that stays out of mirroring (restarted,
/// fenced, stuck as a target) for a link timeout counts as lost.
fn mirrored_step(handed_over: bool, seen: &PeerView, link_timeout: Duration) -> MirroredStep {
    match seen.peer {
        _ if handed_over => MirroredStep::TakeOver,
        _ if !seen.reachable => MirroredStep::LosePeer("the peer is unreachable"),
        _ if seen.peer_failed => MirroredStep::LosePeer("a write to the peer failed"),
        Mode::Solo | Mode::Source => MirroredStep::BecomeTarget,
        Mode::Suspended if seen.peer_for >= TICK => {
            MirroredStep::LosePeer("the peer suspended mirroring")
        }
        Mode::Starting | Mode::Fenced | Mode::Target if seen.peer_for >= link_timeout => {
            MirroredStep::LosePeer("the peer stopped mirroring")
        }
        _ => MirroredStep::Stay,
    }
}

/// A round number not used before: milliseconds since the epoch, always increasing.
fn new_round(previous: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now.max(previous + 1)
}

fn write_state(path: &std::path::Path, s: &SavedState) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(s).map_err(std::io::Error::other)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(peer: Mode, ms: u64) -> PeerView {
        PeerView {
            reachable: true,
            peer,
            peer_for: Duration::from_millis(ms),
            peer_failed: false,
        }
    }

    #[test]
    fn a_mirrored_site_stops_serving_when_its_peer_stops_mirroring() {
        let link = Duration::from_secs(1);
        assert_eq!(
            mirrored_step(false, &view(Mode::Mirrored, 5000), link),
            MirroredStep::Stay
        );
        assert!(matches!(
            mirrored_step(
                false,
                &PeerView {
                    reachable: false,
                    ..view(Mode::Mirrored, 0)
                },
                link
            ),
            MirroredStep::LosePeer(_)
        ));
        assert!(matches!(
            mirrored_step(
                false,
                &PeerView {
                    peer_failed: true,
                    ..view(Mode::Mirrored, 0)
                },
                link
            ),
            MirroredStep::LosePeer(_)
        ));
        // The peer's write to us failed and it asks the witness: we must not serve reads
        // it may no longer mirror here.
        assert!(matches!(
            mirrored_step(false, &view(Mode::Suspended, 150), link),
            MirroredStep::LosePeer(_)
        ));
        assert_eq!(
            mirrored_step(false, &view(Mode::Suspended, 20), link),
            MirroredStep::Stay,
            "one exchange's grace for a hand-over"
        );
        assert_eq!(
            mirrored_step(true, &view(Mode::Suspended, 20), link),
            MirroredStep::TakeOver
        );
        assert_eq!(
            mirrored_step(true, &view(Mode::Fenced, 5000), link),
            MirroredStep::TakeOver,
            "the hand-over comes first"
        );
        assert_eq!(
            mirrored_step(false, &view(Mode::Solo, 0), link),
            MirroredStep::BecomeTarget
        );
        assert_eq!(
            mirrored_step(false, &view(Mode::Source, 0), link),
            MirroredStep::BecomeTarget
        );
        for m in [Mode::Starting, Mode::Fenced, Mode::Target] {
            assert_eq!(
                mirrored_step(false, &view(m, 300), link),
                MirroredStep::Stay,
                "{m:?}: the peer may be leaving a resync"
            );
            assert!(
                matches!(
                    mirrored_step(false, &view(m, 1500), link),
                    MirroredStep::LosePeer(_)
                ),
                "{m:?}"
            );
        }
    }
}
