//! The regions of a stretched volume the peer site misses: one bit per region, set by
//! writes made without the peer, cleared as the resync copies them. Shared by every
//! reactor without a lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes per region: the unit the resync copies.
pub const REGION: u64 = 1 << 20;

/// When each region last received a write from the peer, in 10 ms ticks since start
/// (0: never): the writes a peer that dies in the middle may have sent to this copy only.
#[derive(Debug)]
pub struct RecentWrites {
    ticks: Box<[std::sync::atomic::AtomicU32]>,
    start: std::time::Instant,
}

impl RecentWrites {
    pub fn new(bytes: u64) -> RecentWrites {
        RecentWrites {
            ticks: (0..bytes.div_ceil(REGION))
                .map(|_| std::sync::atomic::AtomicU32::new(0))
                .collect(),
            start: std::time::Instant::now(),
        }
    }

    fn now(&self) -> u32 {
        (self.start.elapsed().as_millis() / 10) as u32 + 1
    }

    pub fn note(&self, offset: u64, len: u64) {
        let now = self.now();
        for r in DirtyMap::span(offset, len) {
            if let Some(t) = self.ticks.get(r as usize) {
                t.store(now, Ordering::Relaxed);
            }
        }
    }

    /// Regions written within the last `window`.
    pub fn since(&self, window: std::time::Duration) -> Vec<u64> {
        let from = self
            .now()
            .saturating_sub((window.as_millis() / 10) as u32 + 1)
            .max(1);
        (0..self.ticks.len() as u64)
            .filter(|&r| self.ticks[r as usize].load(Ordering::Relaxed) >= from)
            .collect()
    }

    pub fn clear(&self) {
        for t in self.ticks.iter() {
            t.store(0, Ordering::Relaxed);
        }
    }
}

#[derive(Debug)]
pub struct DirtyMap {
    words: Box<[AtomicU64]>,
    regions: u64,
}

impl DirtyMap {
    pub fn new(bytes: u64) -> DirtyMap {
        let regions = bytes.div_ceil(REGION);
        DirtyMap {
            words: (0..regions.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            regions,
        }
    }

    pub fn regions(&self) -> u64 {
        self.regions
    }

    /// Regions touched by `len` bytes at `offset`.
    pub fn span(offset: u64, len: u64) -> std::ops::Range<u64> {
        offset / REGION..(offset + len.max(1)).div_ceil(REGION)
    }

    pub fn mark(&self, offset: u64, len: u64) {
        for r in Self::span(offset, len) {
            self.set(r);
        }
    }

    pub fn set(&self, region: u64) {
        if region < self.regions {
            self.words[(region / 64) as usize].fetch_or(1 << (region % 64), Ordering::AcqRel);
        }
    }

    pub fn is_set(&self, region: u64) -> bool {
        region < self.regions
            && self.words[(region / 64) as usize].load(Ordering::Acquire) & (1 << (region % 64))
                != 0
    }

    pub fn clear_all(&self) {
        for w in self.words.iter() {
            w.store(0, Ordering::Release);
        }
    }

    pub fn set_all(&self) {
        for r in 0..self.regions {
            self.set(r);
        }
    }

    /// Clear and return the first set region at or after `from` (wrapping), if any.
    pub fn take_next(&self, from: u64) -> Option<u64> {
        let n = self.words.len() as u64;
        for i in 0..=n {
            let w = ((from / 64) + i) % n.max(1);
            let mut bits = self.words[w as usize].load(Ordering::Acquire);
            if i == 0 {
                bits &= !0u64 << (from % 64);
            }
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                let mask = 1 << b;
                if self.words[w as usize].fetch_and(!mask, Ordering::AcqRel) & mask != 0 {
                    return Some(w * 64 + b);
                }
                bits &= !mask;
            }
        }
        None
    }

    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Acquire).count_ones() as u64)
            .sum()
    }

    /// The set regions (for handing them to the peer).
    pub fn list(&self) -> Vec<u64> {
        (0..self.regions).filter(|&r| self.is_set(r)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_spans_and_takes_each_region_once() {
        let m = DirtyMap::new(10 * REGION + 5);
        assert_eq!(m.regions(), 11);
        m.mark(REGION - 512, 1024); // regions 0 and 1
        m.mark(10 * REGION, 5);
        assert_eq!(m.list(), vec![0, 1, 10]);
        assert_eq!(m.take_next(2), Some(10), "from region 2 on");
        assert_eq!(m.take_next(2), Some(0), "wraps around");
        assert_eq!(m.take_next(0), Some(1));
        assert_eq!(m.take_next(0), None);
        assert_eq!(m.count(), 0);
        m.set_all();
        assert_eq!(m.count(), 11);
        m.set(11); // beyond the end: ignored
        assert_eq!(m.count(), 11);
    }

    #[test]
    fn recent_writes_are_found_within_their_window() {
        let r = RecentWrites::new(4 * REGION);
        r.note(REGION + 5, 10);
        assert_eq!(r.since(std::time::Duration::from_secs(1)), vec![1]);
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert!(
            r.since(std::time::Duration::from_millis(20)).is_empty(),
            "older than the window"
        );
        r.note(3 * REGION, 1);
        r.clear();
        assert!(r.since(std::time::Duration::from_secs(10)).is_empty());
    }

    #[test]
    fn spans_cover_exactly_the_touched_regions() {
        assert_eq!(DirtyMap::span(0, REGION), 0..1);
        assert_eq!(DirtyMap::span(1, REGION), 0..2);
        assert_eq!(
            DirtyMap::span(3 * REGION, 0),
            3..4,
            "a zero-length write still names its region"
        );
    }
}
