//! Latency histograms and I/O counters. Each reactor records into its own histograms with
//! no lock and no allocation (HdrHistogram, 1 us to 60 s, 3 significant digits); the
//! management thread asks every reactor for a copy and merges them on demand.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::bdev::BdevOp;

/// Lowest and highest latency recorded, in microseconds.
pub const LOWEST_US: u64 = 1;
pub const HIGHEST_US: u64 = 60_000_000;
const SIGFIG: u8 = 3;

/// Operation classes reported separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    Read = 0,
    Write = 1,
    Flush = 2,
    /// Write Zeroes, Dataset Management and other namespace commands.
    Other = 3,
}

pub const OP_CLASSES: [OpClass; 4] = [
    OpClass::Read,
    OpClass::Write,
    OpClass::Flush,
    OpClass::Other,
];

impl OpClass {
    pub fn name(self) -> &'static str {
        ["read", "write", "flush", "other"][self as usize]
    }

    pub fn of(op: BdevOp) -> OpClass {
        match op {
            BdevOp::Read => OpClass::Read,
            BdevOp::Write => OpClass::Write,
            BdevOp::Flush => OpClass::Flush,
            BdevOp::WriteZeroes | BdevOp::Discard => OpClass::Other,
        }
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIG).expect("valid histogram bounds")
}

/// One operation class of one object: latency histogram, I/Os and bytes.
#[derive(Clone)]
pub struct OpStats {
    pub latency: Histogram<u64>,
    pub ios: u64,
    pub bytes: u64,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            latency: histogram(),
            ios: 0,
            bytes: 0,
        }
    }
}

impl OpStats {
    pub fn record(&mut self, us: u64, bytes: u64) {
        self.latency
            .saturating_record(us.clamp(LOWEST_US, HIGHEST_US));
        self.ios += 1;
        self.bytes += bytes;
    }

    pub fn add(&mut self, other: &OpStats) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.ios += other.ios;
        self.bytes += other.bytes;
    }

    pub fn reset(&mut self) {
        self.latency.reset();
        self.ios = 0;
        self.bytes = 0;
    }

    /// Counters and percentiles (microseconds); with `buckets`, every recorded value.
    pub fn to_json(&self, buckets: bool) -> Value {
        let h = &self.latency;
        let q = |p: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(p)
            }
        };
        let mut v = json!({
            "ios": self.ios,
            "bytes": self.bytes,
            "latency_us": {
                "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "p99.9": q(0.999), "p99.99": q(0.9999),
                "max": h.max(), "mean": (h.mean() * 10.0).round() / 10.0,
            },
        });
        if buckets {
            let b: Vec<Value> = h
                .iter_recorded()
                .map(|x| {
                    json!([
                        h.highest_equivalent(x.value_iterated_to()),
                        x.count_at_value()
                    ])
                })
                .collect();
            v["latency_us"]["buckets"] = Value::Array(b);
        }
        v
    }
}

/// The four operation classes of one object.
#[derive(Clone, Default)]
pub struct OpSet(pub [OpStats; 4]);

impl OpSet {
    pub fn record(&mut self, class: OpClass, us: u64, bytes: u64) {
        self.0[class as usize].record(us, bytes);
    }

    pub fn get(&self, class: OpClass) -> &OpStats {
        &self.0[class as usize]
    }

    pub fn add(&mut self, other: &OpSet) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            a.add(b);
        }
    }

    pub fn reset(&mut self) {
        self.0.iter_mut().for_each(OpStats::reset);
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|s| s.ios == 0)
    }

    /// {"read": {...}, ...} for the classes that saw I/O.
    pub fn to_json(&self, buckets: bool) -> Value {
        let mut m = serde_json::Map::new();
        for c in OP_CLASSES {
            if self.get(c).ios > 0 {
                m.insert(c.name().into(), self.get(c).to_json(buckets));
            }
        }
        Value::Object(m)
    }
}

/// A member device's statistics as a volume channel reports them.
#[derive(Clone)]
pub struct MemberStats {
    pub volume: String,
    pub device: String,
    pub ops: OpSet,
}

/// What a reactor sends back when asked: copies of everything it recorded.
#[derive(Clone, Default)]
pub struct Snapshot {
    /// By namespace statistics index (see `Namespace::stats_index`).
    pub namespaces: Vec<OpSet>,
    pub members: Vec<MemberStats>,
    /// Every namespace I/O this reactor completed.
    pub reactor: OpSet,
}

impl Snapshot {
    /// Fold another reactor's snapshot into this one.
    pub fn merge(&mut self, other: &Snapshot) {
        if self.namespaces.len() < other.namespaces.len() {
            self.namespaces
                .resize_with(other.namespaces.len(), OpSet::default);
        }
        for (a, b) in self.namespaces.iter_mut().zip(&other.namespaces) {
            a.add(b);
        }
        for m in &other.members {
            match self
                .members
                .iter_mut()
                .find(|x| x.volume == m.volume && x.device == m.device)
            {
                Some(x) => x.ops.add(&m.ops),
                None => self.members.push(m.clone()),
            }
        }
        self.reactor.add(&other.reactor);
    }
}

/// The per-reactor recorder the connections write into. The reactor's own totals are
/// the sum of its namespaces, formed when a snapshot is taken (one record per I/O).
pub struct ReactorRecorder {
    pub namespaces: Vec<OpSet>,
}

impl ReactorRecorder {
    pub fn new(namespaces: usize) -> Self {
        ReactorRecorder {
            namespaces: (0..namespaces).map(|_| OpSet::default()).collect(),
        }
    }

    /// A namespace command finished after `us` microseconds.
    pub fn record(&mut self, ns: usize, class: OpClass, us: u64, bytes: u64) {
        if let Some(set) = self.namespaces.get_mut(ns) {
            set.record(class, us, bytes);
        }
    }

    /// Every namespace of this reactor together.
    pub fn reactor_total(&self) -> OpSet {
        let mut all = OpSet::default();
        self.namespaces.iter().for_each(|n| all.add(n));
        all
    }

    pub fn reset(&mut self) {
        self.namespaces.iter_mut().for_each(OpSet::reset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_percentiles_cover_both_reactors() {
        let mut a = ReactorRecorder::new(1);
        let mut b = ReactorRecorder::new(1);
        for us in 1..=1000 {
            a.record(0, OpClass::Read, us, 4096);
            b.record(0, OpClass::Read, us + 1000, 4096);
        }
        let mut s = Snapshot {
            namespaces: a.namespaces.clone(),
            members: vec![],
            reactor: a.reactor_total(),
        };
        s.merge(&Snapshot {
            namespaces: b.namespaces.clone(),
            members: vec![],
            reactor: b.reactor_total(),
        });
        assert_eq!(s.reactor.get(OpClass::Read).ios, 2000);
        let r = s.namespaces[0].get(OpClass::Read);
        assert_eq!(r.ios, 2000);
        assert_eq!(r.bytes, 2000 * 4096);
        let p50 = r.latency.value_at_quantile(0.5);
        assert!((995..=1005).contains(&p50), "p50 {p50}");
        assert!(r.latency.max() >= 1999);
        let j = r.to_json(true);
        assert!(j["latency_us"]["buckets"].as_array().unwrap().len() > 100);
        a.reset();
        assert!(a.namespaces[0].is_empty() && a.reactor_total().is_empty());
    }

    #[test]
    fn out_of_range_latencies_are_clamped_not_lost() {
        let mut s = OpStats::default();
        s.record(0, 0);
        s.record(u64::MAX, 0);
        assert_eq!(s.ios, 2);
        assert_eq!(s.latency.len(), 2);
    }
}
