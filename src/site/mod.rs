//! Site protection: one volume served from two sites with synchronous mirroring.
//!
//! - `stretch`: the stretched volume as a block device. Its channel routes every host I/O
//!   by the site's mode: ordered writes (this site orders: region locks, then the local
//!   copy and the peer's replica together), forwarded writes (the peer orders), solo
//!   writes (the peer is lost: local copy, region marked dirty), and the background copy
//!   of dirty regions to a returning peer.
//! - `control`: the site controller thread: watches the link, exchanges state with the
//!   peer, asks the witness when the peer is lost, sets the mode and the ANA states.
//! - `dirty`: the regions the peer misses.

pub mod control;
pub mod dirty;
pub mod setup;
pub mod stretch;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use crate::util::locks::RangeLocks;

/// What a site does with its stretched volume right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum Mode {
    /// Just started: serves nothing until it knows where it stands with the peer.
    Starting = 0,
    /// Both copies in sync: every write reaches both sites before it is acknowledged.
    Mirrored = 1,
    /// The peer was just lost: host I/O waits while the witness decides.
    Suspended = 2,
    /// The peer is lost and this site won the witness: it serves alone and records what
    /// the peer misses.
    Solo = 3,
    /// This site may not serve (lost the witness, reached neither peer nor witness, or
    /// handed over): host I/O is refused with an ANA status, the peer's writes accepted.
    Fenced = 4,
    /// The peer is back and behind: this site orders every write, to both copies, and
    /// copies the dirty regions to the peer.
    Source = 5,
    /// This site is behind: it receives the peer's resync and serves nothing.
    Target = 6,
}

impl Mode {
    pub fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Mirrored,
            2 => Mode::Suspended,
            3 => Mode::Solo,
            4 => Mode::Fenced,
            5 => Mode::Source,
            6 => Mode::Target,
            _ => Mode::Starting,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Starting => "starting",
            Mode::Mirrored => "mirrored",
            Mode::Suspended => "suspended",
            Mode::Solo => "solo",
            Mode::Fenced => "fenced",
            Mode::Source => "source",
            Mode::Target => "target",
        }
    }

    /// Whether hosts may use this site's paths (its ANA state is optimized).
    pub fn serves_hosts(self) -> bool {
        matches!(
            self,
            Mode::Mirrored | Mode::Solo | Mode::Source | Mode::Suspended
        )
    }
}

/// Bytes under one region lock: writes to different lock units of a volume go on in
/// parallel; overlapping ones are ordered.
pub const LOCK_UNIT: u64 = 64 * 1024;
const LOCK_BUCKETS: usize = 1 << 16;

/// Latencies counted in the metrics' buckets (`metrics::BUCKETS_S`), from any thread.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; 20],
    pub sum_us: AtomicU64,
    pub count: AtomicU64,
}

impl LatencyHistogram {
    pub fn record(&self, us: u64) {
        let secs = us as f64 / 1e6;
        if let Some(i) = crate::metrics::BUCKETS_S.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Per-bucket counts (not cumulative), the sum in microseconds and the count.
    pub fn snapshot(&self) -> ([u64; 20], u64, u64) {
        (
            self.buckets.each_ref().map(|b| b.load(Ordering::Relaxed)),
            self.sum_us.load(Ordering::Relaxed),
            self.count.load(Ordering::Relaxed),
        )
    }
}

/// State of one stretched volume shared by its channels (one per reactor) and its site
/// controller.
#[derive(Debug)]
pub struct SiteShared {
    pub name: String,
    mode: AtomicU8,
    /// Whether this site orders the writes while mirrored (the other forwards to it).
    leader: AtomicBool,
    /// Hold new writes (a hand-over in progress) until released.
    quiesce: AtomicBool,
    /// Writes that involve the peer (ordered or forwarded) in flight, on every reactor.
    pub peer_writes_in_flight: AtomicU64,
    /// A write or copy to the peer failed: the controller treats the peer as lost.
    pub peer_failed: AtomicBool,
    pub locks: RangeLocks,
    pub dirty: dirty::DirtyMap,
    /// Writes the peer made to this copy lately (for the regions to resync if it dies).
    pub recent: dirty::RecentWrites,
    /// Background copy: bytes per second (0: unlimited), bytes copied, one driver.
    pub resync_rate: AtomicU64,
    pub resync_bytes: AtomicU64,
    pub copy_driver: AtomicBool,
    /// A region copy is in flight (its bit is clear but it is not at the peer yet).
    pub copying: AtomicBool,
    /// Writes acknowledged once both sites had them: their latency at this site.
    pub mirrored_writes: LatencyHistogram,
    /// Round trips of the state exchanges with the peer over the site link.
    pub link_rtt: LatencyHistogram,
    pub solo_writes: AtomicU64,
    pub refused: AtomicU64,
}

impl SiteShared {
    pub fn new(name: &str, bytes: u64, leader: bool, resync_rate: u64) -> SiteShared {
        SiteShared {
            name: name.to_string(),
            mode: AtomicU8::new(Mode::Starting as u8),
            leader: AtomicBool::new(leader),
            quiesce: AtomicBool::new(false),
            peer_writes_in_flight: AtomicU64::new(0),
            peer_failed: AtomicBool::new(false),
            locks: RangeLocks::new(LOCK_BUCKETS),
            dirty: dirty::DirtyMap::new(bytes),
            recent: dirty::RecentWrites::new(bytes),
            resync_rate: AtomicU64::new(resync_rate),
            resync_bytes: AtomicU64::new(0),
            copy_driver: AtomicBool::new(false),
            copying: AtomicBool::new(false),
            mirrored_writes: LatencyHistogram::default(),
            link_rtt: LatencyHistogram::default(),
            solo_writes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::Acquire))
    }

    pub fn set_mode(&self, m: Mode) {
        self.mode.store(m as u8, Ordering::Release);
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    pub fn set_leader(&self, v: bool) {
        self.leader.store(v, Ordering::Release);
    }

    pub fn quiesced(&self) -> bool {
        self.quiesce.load(Ordering::Acquire)
    }

    pub fn set_quiesce(&self, v: bool) {
        self.quiesce.store(v, Ordering::Release);
    }
}
