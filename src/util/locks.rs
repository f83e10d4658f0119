//! Range locks without a lock: a table of atomic flags indexed by a hashed key, shared by
//! every reactor. A key range is taken all or none, so holders never deadlock; a caller
//! that fails keeps its request queued and retries on a later loop turn.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug)]
pub struct RangeLocks(Box<[AtomicBool]>);

impl RangeLocks {
    pub fn new(buckets: usize) -> Self {
        RangeLocks((0..buckets).map(|_| AtomicBool::new(false)).collect())
    }

    pub fn try_lock(&self, key: usize) -> bool {
        self.0[key]
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    pub fn unlock(&self, key: usize) {
        let was = self.0[key].swap(false, Ordering::Release);
        debug_assert!(was, "unlocking a free range lock");
    }

    pub fn buckets(&self) -> usize {
        self.0.len()
    }

    /// Lock keys `first .. first + count` (mod the bucket count), all or none.
    pub fn try_lock_range(&self, first: u64, count: u32) -> bool {
        debug_assert!(
            (count as usize) < self.buckets(),
            "a range never wraps onto itself"
        );
        let key = |i: u32| ((first + i as u64) % self.buckets() as u64) as usize;
        for i in 0..count {
            if !self.try_lock(key(i)) {
                (0..i).for_each(|j| self.unlock(key(j)));
                return false;
            }
        }
        true
    }

    pub fn unlock_range(&self, first: u64, count: u32) {
        (0..count).for_each(|i| self.unlock(((first + i as u64) % self.buckets() as u64) as usize));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_taken_all_or_none() {
        let l = RangeLocks::new(8);
        assert!(l.try_lock_range(6, 3)); // 6, 7, 0
        assert!(!l.try_lock_range(0, 2), "0 is held");
        assert!(l.try_lock(1), "a failed range releases what it took");
        l.unlock(1);
        l.unlock_range(6, 3);
        assert!(l.try_lock_range(0, 7));
    }
}
