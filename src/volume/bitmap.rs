//! Write-intent bitmap: one bit per region of member rows, set on disk before any write
//! to the region starts and cleared once the region has been idle for a while. After a
//! crash only the regions whose bit is set can hold stripes (or mirror copies) that
//! disagree, so only they are resynchronised.
//!
//! On disk (every member, 4 KiB after the superblock): magic, CRC32C, rows per region,
//! region count, volume UUID, then the bits. A torn or missing bitmap means "resync all".
//!
//! In memory each region is Clean, Pending (a writer asked for the bit; not yet durable)
//! or Dirty (durable). Writers count themselves in `inflight` before looking at the state,
//! and the sweeper marks a region Clean before looking at `inflight`; with sequentially
//! consistent accesses at least one of them sees the other, so a region is never cleared
//! on disk under a write.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering::SeqCst};

use crate::util::le::u32_at;

/// Byte offset of the bitmap block on every member.
pub const BITMAP_OFFSET: u64 = 4096;
pub const BITMAP_BYTES: usize = 4096;
const MAGIC: [u8; 8] = *b"NVMFBMAP";
const HEADER: usize = 64;
/// Regions one bitmap block can describe.
pub const MAX_REGIONS: usize = (BITMAP_BYTES - HEADER) * 8;
/// Smallest region: a bit set on disk covers at least this many bytes of each member.
/// Large regions keep bitmap writes (a synchronous write per member) rare; the price is
/// resynchronising whole regions after a crash.
const MIN_REGION_BYTES: u64 = 64 << 20;

const CLEAN: u8 = 0;
const PENDING: u8 = 1;
const DIRTY: u8 = 2;

#[derive(Debug)]
pub struct WriteIntent {
    region_rows: u64,
    state: Box<[AtomicU8]>,
    inflight: Box<[AtomicU32]>,
    /// Written since the last sweep.
    touched: Box<[AtomicBool]>,
}

impl WriteIntent {
    /// Regions for `rows` member rows of `row_bytes` each.
    pub fn new(rows: u64, row_bytes: u64) -> Self {
        let mut region_rows = (MIN_REGION_BYTES / row_bytes.max(1))
            .max(1)
            .next_power_of_two();
        while rows.div_ceil(region_rows) > MAX_REGIONS as u64 {
            region_rows *= 2;
        }
        let n = rows.div_ceil(region_rows).max(1) as usize;
        WriteIntent {
            region_rows,
            state: (0..n).map(|_| AtomicU8::new(CLEAN)).collect(),
            inflight: (0..n).map(|_| AtomicU32::new(0)).collect(),
            touched: (0..n).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    pub fn region_rows(&self) -> u64 {
        self.region_rows
    }

    pub fn regions(&self) -> usize {
        self.state.len()
    }

    /// Regions holding member rows `first..=last`.
    pub fn regions_of(&self, first_row: u64, last_row: u64) -> (u32, u32) {
        (
            (first_row / self.region_rows) as u32,
            (last_row / self.region_rows) as u32,
        )
    }

    /// A write to regions `r0..=r1` begins. Returns true when their bits are durable, so
    /// the write may start; otherwise the bits are requested (`needs_flush`) and the
    /// caller asks again with `ready`.
    pub fn begin(&self, r0: u32, r1: u32) -> bool {
        for r in r0 as usize..=r1 as usize {
            self.inflight[r].fetch_add(1, SeqCst);
            if !self.touched[r].load(SeqCst) {
                self.touched[r].store(true, SeqCst);
            }
        }
        self.ready(r0, r1)
    }

    /// Whether every bit of `r0..=r1` is durable; requests the missing ones.
    pub fn ready(&self, r0: u32, r1: u32) -> bool {
        let mut ready = true;
        for r in r0 as usize..=r1 as usize {
            match self.state[r].load(SeqCst) {
                DIRTY => {}
                CLEAN => {
                    let _ = self.state[r].compare_exchange(CLEAN, PENDING, SeqCst, SeqCst);
                    ready = false;
                }
                _ => ready = false,
            }
        }
        ready
    }

    /// The write to `r0..=r1` has finished.
    pub fn end(&self, r0: u32, r1: u32) {
        for r in r0 as usize..=r1 as usize {
            let was = self.inflight[r].fetch_sub(1, SeqCst);
            debug_assert!(was > 0, "write-intent region ended more often than begun");
        }
    }

    /// Writes begun and not yet ended on every member: non-zero after a stop that did
    /// not drain, and then the volume is not clean.
    pub fn writes_in_flight(&self) -> u64 {
        self.inflight.iter().map(|n| n.load(SeqCst) as u64).sum()
    }

    pub fn needs_flush(&self) -> bool {
        self.state.iter().any(|s| s.load(SeqCst) == PENDING)
    }

    /// The bitmap block as it should be on disk now, and the regions it makes durable.
    pub fn encode(&self, volume_uuid: &[u8; 16]) -> (Box<[u8; BITMAP_BYTES]>, Vec<usize>) {
        let mut b = Box::new([0u8; BITMAP_BYTES]);
        b[0..8].copy_from_slice(&MAGIC);
        b[16..20].copy_from_slice(&(self.region_rows as u32).to_le_bytes());
        b[20..24].copy_from_slice(&(self.regions() as u32).to_le_bytes());
        b[24..40].copy_from_slice(volume_uuid);
        let mut pending = Vec::new();
        for (r, s) in self.state.iter().enumerate() {
            match s.load(SeqCst) {
                CLEAN => continue,
                PENDING => pending.push(r),
                _ => {}
            }
            b[HEADER + r / 8] |= 1 << (r % 8);
        }
        let crc = crc32c::crc32c(&b[..]);
        b[8..12].copy_from_slice(&crc.to_le_bytes());
        (b, pending)
    }

    /// The block carrying `pending` is durable on every member.
    pub fn flushed(&self, pending: &[usize]) {
        for &r in pending {
            let _ = self.state[r].compare_exchange(PENDING, DIRTY, SeqCst, SeqCst);
        }
    }

    /// Mark regions idle since the last sweep clean, while `may_clear` says so; returns
    /// whether any bit went clear (the caller then writes the block).
    ///
    /// `may_clear` is false while a member is out: the bits then record every region the
    /// member misses, for its re-add. It is asked after a region is seen idle, and a
    /// member fails before the write that failed on it ends, so a write that missed a
    /// member never has its bit cleared by a sweep that began before the failure.
    pub fn sweep(&self, may_clear: &dyn Fn() -> bool) -> bool {
        let mut cleared = false;
        for r in 0..self.regions() {
            if self.touched[r].swap(false, SeqCst)
                || self.state[r].load(SeqCst) != DIRTY
                || self.inflight[r].load(SeqCst) != 0
            {
                continue;
            }
            self.state[r].store(CLEAN, SeqCst);
            if self.inflight[r].load(SeqCst) != 0 || !may_clear() {
                // A writer arrived in between (it may have asked for the bit), or a
                // member went out: the bit stays.
                self.state[r].store(DIRTY, SeqCst);
            } else {
                cleared = true;
            }
        }
        cleared
    }

    /// Regions whose bit is set or requested, or with a write in flight: every region a
    /// member that is out may have missed a write in (bits are not swept meanwhile).
    pub fn possibly_dirty(&self) -> Vec<bool> {
        (0..self.regions())
            .map(|r| self.inflight[r].load(SeqCst) != 0 || self.state[r].load(SeqCst) != CLEAN)
            .collect()
    }

    /// Regions found dirty on disk at start: they stay set until resynchronised.
    pub fn mark_dirty(&self, regions: &[u32]) {
        for &r in regions {
            if let Some(s) = self.state.get(r as usize) {
                s.store(DIRTY, SeqCst);
            }
        }
    }
}

/// The dirty regions a bitmap block records, if it is intact and belongs to this volume
/// and geometry; None means nothing is known (resync everything).
pub fn decode(
    b: &[u8],
    volume_uuid: &[u8; 16],
    region_rows: u64,
    regions: usize,
) -> Option<Vec<u32>> {
    if b.len() < BITMAP_BYTES || b[0..8] != MAGIC || b[24..40] != volume_uuid[..] {
        return None;
    }
    let mut copy = [0u8; BITMAP_BYTES];
    copy.copy_from_slice(&b[..BITMAP_BYTES]);
    copy[8..12].fill(0);
    if crc32c::crc32c(&copy) != u32_at(b, 8)
        || u32_at(b, 16) as u64 != region_rows
        || u32_at(b, 20) as usize != regions
    {
        return None;
    }
    Some(
        (0..regions)
            .filter(|r| b[HEADER + r / 8] & (1 << (r % 8)) != 0)
            .map(|r| r as u32)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_cover_the_member_within_one_block() {
        let w = WriteIntent::new(1 << 30, 4096);
        assert!(w.regions() <= MAX_REGIONS);
        assert!(w.region_rows() * w.regions() as u64 >= 1 << 30);
        let small = WriteIntent::new(1500, 65536);
        assert_eq!(small.region_rows(), 1024);
        assert_eq!(small.regions(), 2);
    }

    #[test]
    fn a_write_waits_for_its_bit_and_the_sweeper_never_clears_under_it() {
        let w = WriteIntent::new(4096, 65536);
        assert!(!w.begin(0, 1), "bits not yet durable");
        assert!(w.needs_flush());
        let (block, pending) = w.encode(&[7; 16]);
        assert_eq!(pending, vec![0, 1]);
        assert_eq!(
            decode(&block[..], &[7; 16], w.region_rows(), w.regions()),
            Some(vec![0, 1])
        );
        w.flushed(&pending);
        assert!(w.ready(0, 1));
        // In flight: a sweep clears nothing.
        let yes = || true;
        assert!(!w.sweep(&yes));
        assert!(!w.sweep(&yes));
        w.end(0, 1);
        // Touched since the last sweep: kept once more, then cleared.
        assert!(w.begin(1, 1));
        w.end(1, 1);
        assert!(w.sweep(&yes), "region 0 was idle over a whole sweep");
        assert!(w.sweep(&yes), "region 1 is idle now");
        let (block, _) = w.encode(&[7; 16]);
        assert_eq!(
            decode(&block[..], &[7; 16], w.region_rows(), w.regions()),
            Some(vec![])
        );
    }

    #[test]
    fn while_a_member_is_out_the_bits_stay_and_name_what_it_missed() {
        let w = WriteIntent::new(4096, 65536);
        assert_eq!(w.regions(), 4);
        for r in [0, 2] {
            w.begin(r, r);
            w.flushed(&[r as usize]);
            w.end(r, r);
        }
        w.begin(3, 3); // in flight, bit not yet durable
        let out = || false;
        for _ in 0..3 {
            assert!(!w.sweep(&out), "no bit is cleared while a member is out");
        }
        assert_eq!(w.possibly_dirty(), vec![true, false, true, true]);
        w.end(3, 3);
        w.flushed(&[3]);
        let yes = || true;
        assert!(w.sweep(&yes));
        assert_eq!(
            w.possibly_dirty(),
            vec![false; 4],
            "swept once every member is back"
        );
    }

    #[test]
    fn torn_or_foreign_blocks_are_not_trusted() {
        let w = WriteIntent::new(4096, 65536);
        w.begin(3, 3);
        let (mut block, _) = w.encode(&[7; 16]);
        assert_eq!(
            decode(&block[..], &[8; 16], w.region_rows(), w.regions()),
            None
        );
        block[HEADER] ^= 1;
        assert_eq!(
            decode(&block[..], &[7; 16], w.region_rows(), w.regions()),
            None
        );
        assert_eq!(
            decode(&[0u8; BITMAP_BYTES], &[7; 16], w.region_rows(), w.regions()),
            None
        );
    }
}
