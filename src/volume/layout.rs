//! RAID layout: where each volume block lives, and where each stripe keeps its parity.
//! Pure arithmetic, no I/O.
//!
//! Terms: a *strip* is `strip_blocks` consecutive blocks on one member; a *stripe* is the
//! row of strips at the same member offset across one group. Striped levels hand volume
//! space to groups round-robin (RAID 0 treats every member as a group of one, RAID 10 a
//! mirror set, RAID 50/60 a RAID-5/6 set): a strip at a time, or for RAID 50/60 a whole
//! data stripe at a time. Parity rotates left-symmetrically as in md:
//! for stripe s of an n-member group, P sits on member n-1-(s mod n), Q (RAID 6) on the
//! next member, and data strip i on member (P + 1 + i) mod n, or (P + 2 + i) with Q.

pub use super::level::Level;
use super::level::{Placement, StripWidth};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("{level} needs at least {min} members, got {got}")]
    TooFewMembers {
        level: Level,
        min: usize,
        got: usize,
    },
    #[error("{members} members cannot be split into groups of {group}: need a multiple of {group} and at least two groups")]
    BadGrouping { members: usize, group: usize },
    #[error("{level} needs groups of at least {min} members, got {got}")]
    GroupTooSmall {
        level: Level,
        min: usize,
        got: usize,
    },
    #[error("parity groups hold at most {max} members, got {got}")]
    GroupTooLarge { max: usize, got: usize },
    #[error("strip size must be a power of two number of blocks, got {0}")]
    BadStrip(u64),
    #[error("members are smaller than one strip")]
    MembersTooSmall,
    #[error("{level} spreads each volume block over its data members: their number must be a power of two (the volume's block size), got {data}")]
    SpreadWidth { level: Level, data: usize },
}

/// Where one volume block (or a run within one strip) lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    pub member: usize,
    pub member_lba: u64,
}

impl Location {
    /// Mirror copy `c` of a block whose first copy is here: the same offset on the next
    /// members of the group.
    pub fn copy(self, c: usize) -> Location {
        Location {
            member: self.member + c,
            ..self
        }
    }
}

/// Position of a data strip inside its parity group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StripPos {
    pub group: usize,
    pub stripe: u64,
    /// Index among the stripe's data strips (0..k).
    pub data_index: usize,
    /// Block offset inside the strip.
    pub offset: u64,
}

#[derive(Debug, Clone)]
pub struct Layout {
    pub level: Level,
    pub members: usize,
    /// Members per group: mirror copies (RAID 1/10) or parity-set width (RAID 4/5/6/50/60).
    pub group_size: usize,
    pub strip_blocks: u64,
    /// Blocks per member the layout uses (the smallest member, whole strips).
    pub member_blocks: u64,
    /// Concat only: blocks of each member.
    concat_sizes: Vec<u64>,
}

impl Layout {
    /// `group_size` matters for RAID 10/50/60 (members per group) and is ignored elsewhere.
    pub fn new(
        level: Level,
        member_sizes: &[u64],
        group_size: usize,
        strip_blocks: u64,
    ) -> Result<Layout, LayoutError> {
        let members = member_sizes.len();
        // RAID 3: a strip is one member block, whatever was configured.
        let strip_blocks = match level.spec().strip {
            StripWidth::MemberBlock => 1,
            StripWidth::Configured => strip_blocks,
        };
        if !strip_blocks.is_power_of_two() {
            return Err(LayoutError::BadStrip(strip_blocks));
        }
        let group = match level {
            _ if level.is_grouped() => group_size,
            Level::Raid0 | Level::Concat => 1,
            _ => members,
        };
        if level.is_grouped()
            && (group == 0 || !members.is_multiple_of(group) || members / group < 2)
        {
            return Err(LayoutError::BadGrouping { members, group });
        }
        let max_data = level
            .parity_code()
            .map_or(super::plan::MAX_DATA, |c| c.max_data());
        if level.parity_count() > 0 && group - level.parity_count() > max_data {
            return Err(LayoutError::GroupTooLarge {
                max: max_data + level.parity_count(),
                got: group,
            });
        }
        if level.is_grouped() && group < level.min_group() {
            return Err(LayoutError::GroupTooSmall {
                level,
                min: level.min_group(),
                got: group,
            });
        }
        if !level.is_grouped() && members < level.min_group() {
            return Err(LayoutError::TooFewMembers {
                level,
                min: level.min_group(),
                got: members,
            });
        }
        let data = group - level.parity_count();
        if level.spec().strip == StripWidth::MemberBlock && !data.is_power_of_two() {
            return Err(LayoutError::SpreadWidth { level, data });
        }
        let smallest = member_sizes.iter().copied().min().unwrap_or(0);
        let member_blocks = if level == Level::Concat {
            smallest
        } else {
            smallest / strip_blocks * strip_blocks
        };
        if member_blocks == 0 {
            return Err(LayoutError::MembersTooSmall);
        }
        let concat_sizes = if level == Level::Concat {
            member_sizes.to_vec()
        } else {
            Vec::new()
        };
        Ok(Layout {
            level,
            members,
            group_size: group,
            strip_blocks,
            member_blocks,
            concat_sizes,
        })
    }

    pub fn groups(&self) -> usize {
        self.members / self.group_size
    }

    /// Data strips per stripe of one group (k).
    pub fn data_per_stripe(&self) -> usize {
        self.group_size - self.level.parity_count()
    }

    pub fn stripes_per_group(&self) -> u64 {
        self.member_blocks / self.strip_blocks
    }

    /// Blocks the volume exposes.
    pub fn capacity(&self) -> u64 {
        match self.level {
            Level::Concat => self.concat_sizes.iter().sum(),
            Level::Raid1 => self.member_blocks,
            Level::Raid0 => self.member_blocks * self.members as u64,
            Level::Raid10 => self.member_blocks * self.groups() as u64,
            _ => self.member_blocks * (self.groups() * self.data_per_stripe()) as u64,
        }
    }

    /// The volume blocks `[start, end)` stored in member strip rows `r0..r1` (every level
    /// but concat lays rows out in volume order: row r holds the same number of volume
    /// blocks as every other row, one after the other).
    pub fn volume_blocks_of_rows(&self, r0: u64, r1: u64) -> (u64, u64) {
        debug_assert!(self.level != Level::Concat, "concat is not row-major");
        let per_row = self.capacity() / self.stripes_per_group().max(1);
        (r0 * per_row, (r1 * per_row).min(self.capacity()))
    }

    /// Blocks from `lba` to the end of its strip (the largest run that stays on one member).
    pub fn run_in_strip(&self, lba: u64) -> u64 {
        match self.level {
            Level::Raid1 => self.capacity() - lba,
            Level::Concat => {
                let (m, off) = self.concat_member(lba);
                self.concat_sizes[m] - off
            }
            _ => self.strip_blocks - lba % self.strip_blocks,
        }
    }

    fn concat_member(&self, mut lba: u64) -> (usize, u64) {
        for (m, size) in self.concat_sizes.iter().enumerate() {
            if lba < *size {
                return (m, lba);
            }
            lba -= size;
        }
        panic!("lba beyond concat capacity");
    }

    /// (group, strip index within the group, offset in the strip) of volume block `lba`.
    /// Groups take turns by units: one strip for RAID 0/10, one whole data stripe (k
    /// strips) for RAID 50/60, so a parity stripe is contiguous in the volume and large
    /// sequential writes fill whole stripes.
    fn strip_of(&self, lba: u64) -> (usize, u64, u64) {
        let strip = lba / self.strip_blocks;
        let groups = self.groups() as u64;
        let unit = if self.level.parity_count() > 0 {
            self.data_per_stripe() as u64
        } else {
            1
        };
        let group = (strip / unit) % groups;
        let group_strip = strip / (unit * groups) * unit + strip % unit;
        (group as usize, group_strip, lba % self.strip_blocks)
    }

    /// Where a parity level keeps data block `lba`.
    pub fn strip_pos(&self, lba: u64) -> StripPos {
        debug_assert!(self.level.parity_count() > 0);
        let (group, group_strip, offset) = self.strip_of(lba);
        let k = self.data_per_stripe() as u64;
        StripPos {
            group,
            stripe: group_strip / k,
            data_index: (group_strip % k) as usize,
            offset,
        }
    }

    /// Member slot (within its group) of P for a stripe.
    pub fn p_slot(&self, stripe: u64) -> usize {
        let n = self.group_size as u64;
        match self.level.spec().placement {
            Placement::Dedicated => self.group_size - self.level.parity_count(),
            Placement::Rotating => (n - 1 - stripe % n) as usize,
        }
    }

    /// Member slot (within its group) of Q for a stripe (RAID 6/60).
    pub fn q_slot(&self, stripe: u64) -> Option<usize> {
        (self.level.parity_count() == 2).then(|| (self.p_slot(stripe) + 1) % self.group_size)
    }

    /// Member slot (within its group) of data strip `i` of a stripe.
    pub fn data_slot(&self, stripe: u64, i: usize) -> usize {
        match self.level.spec().placement {
            Placement::Dedicated => i,
            Placement::Rotating => {
                (self.p_slot(stripe) + self.level.parity_count() + i) % self.group_size
            }
        }
    }

    /// Absolute member index of a slot in a group.
    pub fn member_of(&self, group: usize, slot: usize) -> usize {
        group * self.group_size + slot
    }

    /// The primary location of volume block `lba` (the first copy for mirrors).
    pub fn locate(&self, lba: u64) -> Location {
        debug_assert!(lba < self.capacity());
        match self.level {
            Level::Concat => {
                let (member, member_lba) = self.concat_member(lba);
                Location { member, member_lba }
            }
            Level::Raid1 => Location {
                member: 0,
                member_lba: lba,
            },
            Level::Raid0 | Level::Raid10 => {
                let (group, group_strip, offset) = self.strip_of(lba);
                Location {
                    member: self.member_of(group, 0),
                    member_lba: group_strip * self.strip_blocks + offset,
                }
            }
            _ => {
                let p = self.strip_pos(lba);
                let slot = self.data_slot(p.stripe, p.data_index);
                Location {
                    member: self.member_of(p.group, slot),
                    member_lba: p.stripe * self.strip_blocks + p.offset,
                }
            }
        }
    }

    /// Member strip row holding volume block `lba` (the same row index on every member of
    /// its group).
    pub fn member_row(&self, lba: u64) -> u64 {
        match self.level {
            Level::Concat => self.locate(lba).member_lba / self.strip_blocks.max(1),
            Level::Raid1 => lba / self.strip_blocks,
            Level::Raid0 | Level::Raid10 => self.strip_of(lba).1,
            _ => self.strip_pos(lba).stripe,
        }
    }

    /// Every member holding a copy of `lba` (mirrors), or just its one location.
    pub fn copies(&self, lba: u64) -> impl Iterator<Item = Location> + '_ {
        let first = self.locate(lba);
        (0..self.copy_count()).map(move |c| first.copy(c))
    }

    /// Copies of every block: the mirror width, or 1.
    pub fn copy_count(&self) -> usize {
        match self.level {
            Level::Raid1 | Level::Raid10 => self.group_size,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn raid3_strips_are_one_member_block_with_parity_on_the_last_member() {
        let l = Layout::new(Level::Raid3, &[1024; 5], 0, 128).unwrap();
        assert_eq!(
            (l.strip_blocks, l.data_per_stripe(), l.capacity()),
            (1, 4, 4096)
        );
        for row in [0u64, 1, 77] {
            assert_eq!(l.p_slot(row), 4);
            assert_eq!(
                (0..4).map(|i| l.data_slot(row, i)).collect::<Vec<_>>(),
                vec![0, 1, 2, 3]
            );
        }
        // Volume block 4r + i (in member blocks) is on member i at row r.
        assert_eq!(
            l.locate(4 * 9 + 2),
            Location {
                member: 2,
                member_lba: 9
            }
        );
        assert!(matches!(
            Layout::new(Level::Raid3, &[1024; 6], 0, 1),
            Err(LayoutError::SpreadWidth { data: 5, .. })
        ));
    }

    use super::*;
    use std::collections::HashSet;

    fn all_levels() -> Vec<(Level, usize, usize)> {
        // (level, members, group size)
        vec![
            (Level::Concat, 3, 0),
            (Level::Raid0, 1, 0),
            (Level::Raid0, 4, 0),
            (Level::Raid1, 2, 0),
            (Level::Raid1, 3, 0),
            (Level::Raid4, 3, 0),
            (Level::Raid4, 5, 0),
            (Level::Raid5, 3, 0),
            (Level::Raid5, 4, 0),
            (Level::Raid5, 7, 0),
            (Level::Raid6, 4, 0),
            (Level::Raid6, 6, 0),
            (Level::Raid10, 4, 2),
            (Level::Raid10, 6, 3),
            (Level::Raid50, 6, 3),
            (Level::Raid50, 8, 4),
            (Level::Raid60, 8, 4),
            (Level::Raid60, 10, 5),
            (Level::Raid6Dp, 4, 0),
            (Level::Raid6Dp, 7, 0),
        ]
    }

    /// Rows are in volume order: every block of a row lies in that row's volume range.
    #[test]
    fn rows_map_to_contiguous_volume_ranges() {
        for (level, members, group) in all_levels()
            .into_iter()
            .filter(|(l, _, _)| *l != Level::Concat)
        {
            for strip in [1u64, 4, 8] {
                let sizes: Vec<u64> = (0..members).map(|m| 96 + m as u64 * 5).collect();
                let l = Layout::new(level, &sizes, group, strip).unwrap();
                for lba in 0..l.capacity() {
                    let row = l.locate(lba).member_lba / strip;
                    let (start, end) = l.volume_blocks_of_rows(row, row + 1);
                    assert!(
                        (start..end).contains(&lba),
                        "{level:?} strip {strip}: lba {lba} in row {row}, outside {start}..{end}"
                    );
                }
            }
        }
    }

    /// Every volume block maps to exactly one member block, inside the member, never on a
    /// parity position of its stripe; capacity is exactly what the level promises.
    #[test]
    fn every_block_maps_to_exactly_one_data_location() {
        for (level, members, group) in all_levels() {
            for strip in [1u64, 4, 8] {
                let sizes: Vec<u64> = (0..members).map(|m| 96 + m as u64 * 5).collect();
                let l = Layout::new(level, &sizes, group, strip).unwrap();
                let mut seen = HashSet::new();
                for lba in 0..l.capacity() {
                    for loc in l.copies(lba) {
                        assert!(loc.member < members, "{level:?} lba {lba}");
                        let limit = if level == Level::Concat {
                            sizes[loc.member]
                        } else {
                            l.member_blocks
                        };
                        assert!(loc.member_lba < limit, "{level:?} lba {lba} beyond member");
                        assert!(
                            seen.insert(loc),
                            "{level:?} strip {strip}: {loc:?} used twice (lba {lba})"
                        );
                    }
                    if level.parity_count() > 0 {
                        let p = l.strip_pos(lba);
                        let loc = l.locate(lba);
                        assert_eq!(p.stripe, loc.member_lba / strip);
                        assert_ne!(loc.member, l.member_of(p.group, l.p_slot(p.stripe)));
                        if let Some(q) = l.q_slot(p.stripe) {
                            assert_ne!(loc.member, l.member_of(p.group, q));
                        }
                    }
                }
                let copies = if matches!(level, Level::Raid1 | Level::Raid10) {
                    l.group_size as u64
                } else {
                    1
                };
                let parity_blocks = (l.groups() * level.parity_count()) as u64 * l.member_blocks;
                let used: u64 = if level == Level::Concat {
                    sizes.iter().sum()
                } else {
                    l.member_blocks * members as u64
                };
                assert_eq!(seen.len() as u64, l.capacity() * copies);
                assert_eq!(
                    l.capacity() * copies + parity_blocks,
                    used,
                    "{level:?}: every member block is data or parity"
                );
            }
        }
    }

    #[test]
    fn raid5_parity_rotates_left_symmetric() {
        let l = Layout::new(Level::Raid5, &[64; 4], 0, 4).unwrap();
        let p: Vec<usize> = (0..8).map(|s| l.p_slot(s)).collect();
        assert_eq!(p, vec![3, 2, 1, 0, 3, 2, 1, 0]);
        // md left-symmetric: data follows parity.
        assert_eq!(
            (0..3).map(|i| l.data_slot(1, i)).collect::<Vec<_>>(),
            vec![3, 0, 1]
        );
    }

    #[test]
    fn raid6_q_follows_p_and_both_rotate() {
        let l = Layout::new(Level::Raid6, &[64; 5], 0, 4).unwrap();
        for s in 0..10 {
            let (p, q) = (l.p_slot(s), l.q_slot(s).unwrap());
            assert_eq!(q, (p + 1) % 5);
            let data: HashSet<usize> = (0..3).map(|i| l.data_slot(s, i)).collect();
            assert_eq!(data.len(), 3);
            assert!(!data.contains(&p) && !data.contains(&q));
        }
        let ps: HashSet<usize> = (0..5).map(|s| l.p_slot(s)).collect();
        assert_eq!(ps.len(), 5, "P visits every member once per 5 stripes");
    }

    #[test]
    fn raid4_parity_is_dedicated() {
        let l = Layout::new(Level::Raid4, &[64; 4], 0, 4).unwrap();
        assert!((0..16).all(|s| l.p_slot(s) == 3));
    }

    #[test]
    fn capacity_follows_the_smallest_member() {
        let l = Layout::new(Level::Raid5, &[100, 64, 80], 0, 8).unwrap();
        assert_eq!(l.member_blocks, 64);
        assert_eq!(l.capacity(), 128);
        let l = Layout::new(Level::Raid5, &[100, 70, 80], 0, 8).unwrap();
        assert_eq!(l.member_blocks, 64, "rounded down to whole strips");
    }

    #[test]
    fn rejects_bad_geometry() {
        assert!(matches!(
            Layout::new(Level::Raid5, &[64; 2], 0, 8),
            Err(LayoutError::TooFewMembers { .. })
        ));
        assert!(matches!(
            Layout::new(Level::Raid6, &[64; 3], 0, 8),
            Err(LayoutError::TooFewMembers { .. })
        ));
        assert!(matches!(
            Layout::new(Level::Raid10, &[64; 5], 2, 8),
            Err(LayoutError::BadGrouping { .. })
        ));
        assert!(matches!(
            Layout::new(Level::Raid50, &[64; 3], 3, 8),
            Err(LayoutError::BadGrouping { .. })
        ));
        assert!(matches!(
            Layout::new(Level::Raid60, &[64; 6], 3, 8),
            Err(LayoutError::GroupTooSmall { .. })
        ));
        assert!(matches!(
            Layout::new(Level::Raid0, &[64; 2], 0, 6),
            Err(LayoutError::BadStrip(6))
        ));
        assert!(matches!(
            Layout::new(Level::Raid6Dp, &[64; 3], 0, 8),
            Err(LayoutError::TooFewMembers { .. })
        ));
        // RAID-6 DP stops at p = 17: sixteen data members and the two parity members.
        assert!(Layout::new(Level::Raid6Dp, &[64; 18], 0, 8).is_ok());
        assert_eq!(
            Layout::new(Level::Raid6Dp, &[64; 19], 0, 8).err(),
            Some(LayoutError::GroupTooLarge { max: 18, got: 19 })
        );
        assert!(matches!(
            Layout::new(Level::Raid0, &[4; 2], 0, 8),
            Err(LayoutError::MembersTooSmall)
        ));
    }

    /// RAID-6 DP keeps its parity on dedicated members, as RAID-DP does: row parity on the
    /// next-to-last member, diagonal parity on the last, data in member order.
    #[test]
    fn raid6_dp_parity_members_are_dedicated() {
        let l = Layout::new(Level::Raid6Dp, &[64; 6], 0, 8).unwrap();
        assert_eq!(l.data_per_stripe(), 4);
        assert_eq!(l.capacity(), 4 * 64);
        for stripe in 0..l.stripes_per_group() {
            assert_eq!(l.p_slot(stripe), 4);
            assert_eq!(l.q_slot(stripe), Some(5));
            for i in 0..4 {
                assert_eq!(l.data_slot(stripe, i), i);
            }
        }
        let at = l.locate(8 * 5 + 3);
        assert_eq!((at.member, at.member_lba), (1, 8 + 3));
    }

    #[test]
    fn runs_stop_at_strip_boundaries() {
        let l = Layout::new(Level::Raid0, &[64; 2], 0, 8).unwrap();
        assert_eq!(l.run_in_strip(0), 8);
        assert_eq!(l.run_in_strip(13), 3);
        let c = Layout::new(Level::Concat, &[10, 20], 0, 8).unwrap();
        assert_eq!(c.run_in_strip(4), 6);
        assert_eq!(
            c.locate(12),
            Location {
                member: 1,
                member_lba: 2
            }
        );
    }
}
