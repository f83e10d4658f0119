//! Planning parity writes: split a host write into per-stripe pieces and choose, for each,
//! read-modify-write or reconstruct-write, whichever reads fewer blocks. Pure.

use super::layout::Layout;

/// Most data strips in one stripe.
pub const MAX_DATA: usize = 32;

/// Rows `[start, end)` of a strip, in blocks from the start of the strip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rows {
    pub start: u64,
    pub end: u64,
}

impl Rows {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// One stripe's share of a host write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StripeWrite {
    pub group: usize,
    pub stripe: u64,
    /// Data strips in this stripe (k).
    pub k: usize,
    /// Per data index: rows written (empty when the strip is untouched).
    pub written: [Rows; MAX_DATA],
    /// Per data index: the host I/O's block (counted from its first) that lands on the
    /// strip's first written row.
    pub host_block: [u64; MAX_DATA],
    /// The union of written rows: the rows whose parity changes.
    pub rows: Rows,
}

impl StripeWrite {
    pub fn written_blocks(&self) -> u64 {
        self.written[..self.k].iter().map(|r| r.len()).sum()
    }

    /// Every data strip is written over all of `rows`: parity needs no reads.
    pub fn is_full(&self) -> bool {
        self.written[..self.k].iter().all(|r| *r == self.rows)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Read old data of the written rows and old parity; update parity by the difference.
    ReadModifyWrite,
    /// Read the rows not being written; compute parity from the whole stripe.
    ReconstructWrite,
    /// A member of the group has failed: read every survivor over the rows, rebuild the
    /// missing data, then (for writes) recompute parity from complete data.
    Degraded,
}

/// Blocks each strategy reads for this stripe write, with `parity` parity strips.
pub fn read_costs(w: &StripeWrite, parity: usize) -> (u64, u64) {
    let written = w.written_blocks();
    let rmw = written + parity as u64 * w.rows.len();
    let rcw = w.k as u64 * w.rows.len() - written;
    (rmw, rcw)
}

/// The cheaper strategy in blocks read; ties go to reconstruct-write (no parity read).
pub fn choose(w: &StripeWrite, parity: usize) -> Strategy {
    let (rmw, rcw) = read_costs(w, parity);
    if rmw < rcw {
        Strategy::ReadModifyWrite
    } else {
        Strategy::ReconstructWrite
    }
}

/// The part of a write `[lba, end)` that falls in the stripe holding `lba`, and the
/// volume block where the next stripe's part starts. `io_start` is the write's first
/// block (host blocks are counted from it). Stripes are contiguous in the volume, so
/// walking with this visits each stripe once, in order.
pub fn next_stripe(layout: &Layout, io_start: u64, lba: u64, end: u64) -> (StripeWrite, u64) {
    let k = layout.data_per_stripe();
    assert!(
        k <= MAX_DATA,
        "layout validated at most {MAX_DATA} data strips"
    );
    let first = layout.strip_pos(lba);
    let mut w = StripeWrite {
        group: first.group,
        stripe: first.stripe,
        k,
        written: [Rows::default(); MAX_DATA],
        host_block: [0; MAX_DATA],
        rows: Rows {
            start: first.offset,
            end: first.offset,
        },
    };
    let mut at = lba;
    while at < end {
        let pos = layout.strip_pos(at);
        if pos.group != w.group || pos.stripe != w.stripe {
            break;
        }
        let n = layout.run_in_strip(at).min(end - at);
        w.written[pos.data_index] = Rows {
            start: pos.offset,
            end: pos.offset + n,
        };
        w.host_block[pos.data_index] = at - io_start;
        w.rows.start = w.rows.start.min(pos.offset);
        w.rows.end = w.rows.end.max(pos.offset + n);
        at += n;
    }
    (w, at)
}

/// Split the write of `nblocks` at volume block `lba` into stripe writes, in order.
pub fn split(layout: &Layout, lba: u64, nblocks: u64, mut f: impl FnMut(StripeWrite)) {
    let end = lba + nblocks;
    let mut at = lba;
    while at < end {
        let (w, next) = next_stripe(layout, lba, at, end);
        f(w);
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::layout::Level;

    fn collect(l: &Layout, lba: u64, n: u64) -> Vec<StripeWrite> {
        let mut v = Vec::new();
        split(l, lba, n, |w| v.push(w));
        v
    }

    #[test]
    fn split_covers_every_block_once_and_in_order() {
        for (level, members, group) in [
            (Level::Raid5, 5, 0),
            (Level::Raid6, 6, 0),
            (Level::Raid4, 4, 0),
            (Level::Raid50, 6, 3),
            (Level::Raid60, 8, 4),
        ] {
            let l = Layout::new(level, &vec![512; members], group, 8).unwrap();
            for (lba, n) in [(0, 1), (3, 9), (5, 64), (0, l.capacity()), (17, 200)] {
                let n = n.min(l.capacity() - lba);
                let ws = collect(&l, lba, n);
                let mut covered = 0;
                let mut seen = std::collections::HashSet::new();
                for w in &ws {
                    assert!(
                        seen.insert((w.group, w.stripe)),
                        "{level:?}: stripe split twice"
                    );
                    for i in 0..w.k {
                        let r = w.written[i];
                        if r.is_empty() {
                            continue;
                        }
                        assert!(r.start >= w.rows.start && r.end <= w.rows.end);
                        // The host block of each written strip maps back to the same place.
                        let vlba = lba + w.host_block[i];
                        let p = l.strip_pos(vlba);
                        assert_eq!(
                            (p.group, p.stripe, p.data_index, p.offset),
                            (w.group, w.stripe, i, r.start)
                        );
                        covered += r.len();
                    }
                }
                assert_eq!(covered, n, "{level:?} lba {lba} n {n}");
            }
        }
    }

    #[test]
    fn full_stripes_need_no_reads() {
        let l = Layout::new(Level::Raid5, &[512; 5], 0, 8).unwrap();
        let ws = collect(&l, 0, 32 * 2);
        assert_eq!(ws.len(), 2);
        for w in ws {
            assert!(w.is_full());
            assert_eq!(read_costs(&w, 1).1, 0);
            assert_eq!(choose(&w, 1), Strategy::ReconstructWrite);
        }
    }

    #[test]
    fn small_write_prefers_read_modify_write() {
        let l = Layout::new(Level::Raid6, &[512; 8], 0, 8).unwrap();
        let w = collect(&l, 2, 1)[0];
        assert_eq!(read_costs(&w, 2), (3, 5));
        assert_eq!(choose(&w, 2), Strategy::ReadModifyWrite);
    }

    #[test]
    fn most_of_a_stripe_prefers_reconstruct_write() {
        let l = Layout::new(Level::Raid5, &[512; 5], 0, 8).unwrap();
        // Three of four strips fully written: RCW reads one strip, RMW reads four.
        let w = collect(&l, 0, 24)[0];
        assert_eq!(read_costs(&w, 1), (32, 8));
        assert_eq!(choose(&w, 1), Strategy::ReconstructWrite);
    }
}
