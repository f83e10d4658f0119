//! One place per RAID level. Everything that tells one level from another (its name in the
//! configuration, its code in the superblock, how it protects data, how its members group,
//! where its parity goes, how wide its strips are) is its [`LevelSpec`] in [`SPECS`]; the
//! layout, the write planner, the stripe engine, the superblocks and the configuration read
//! the spec and never match on levels themselves. A new level is a new `Level` variant and
//! its row in `SPECS`; a new kind of parity is a new [`ParityCode`] with its kernels.

use serde::{Deserialize, Serialize};

use crate::parity::{self, Update};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Concat,
    Raid0,
    Raid1,
    Raid3,
    Raid4,
    Raid5,
    Raid6,
    Raid10,
    Raid50,
    Raid60,
    #[serde(rename = "raid6-dp")]
    Raid6Dp,
}

/// How a level keeps data when members fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// Nothing: a failed member loses its data (concat, RAID 0).
    None,
    /// Every member of a group holds the same data (RAID 1, 10).
    Mirror,
    /// Data strips plus parity strips computed by a code (RAID 3, 4, 5, 6, 50, 60).
    Parity(ParityCode),
}

/// The parity a stripe carries, and the kernels that compute and use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParityCode {
    /// P = XOR of the data strips: any one strip of a stripe can be lost.
    Xor,
    /// P and Q (Reed-Solomon over GF(2^8), md's and ISA-L's RAID 6): any two.
    PQ,
    /// Row parity and diagonal parity over a prime (RAID-6 DP, XOR only): any two. A
    /// diagonal crosses the cells of a strip, so a row's parity depends on the whole
    /// strip: stripe ops cover whole strips.
    RowDiagonal,
}

/// Where a parity level puts its parity strips within a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On the group's last member(s), every stripe (RAID 3, 4).
    Dedicated,
    /// Rotating left-symmetrically from stripe to stripe, as md does (RAID 5, 6, 50, 60).
    Rotating,
}

/// How wide a strip is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StripWidth {
    /// As configured (`strip_size`).
    Configured,
    /// One member block: every volume block is spread over all data members, and the
    /// volume's block is the data members' blocks together (RAID 3).
    MemberBlock,
}

/// Everything level-specific about one level.
#[derive(Debug)]
pub struct LevelSpec {
    pub level: Level,
    /// The configuration's name for it (`level = "raid5"`).
    pub name: &'static str,
    /// Its code in the superblock (never reused: superblocks on disk keep it).
    pub code: u8,
    pub protection: Protection,
    pub placement: Placement,
    pub strip: StripWidth,
    /// Members form several groups of `group_size` (RAID 10, 50, 60); otherwise the
    /// volume is one group of every member.
    pub grouped: bool,
    /// The smallest group (or member count) the level can be built from.
    pub min_group: usize,
}

/// Every level, in superblock-code order.
pub static SPECS: [LevelSpec; 11] = [
    spec(Level::Concat, "concat", 0, Protection::None, 1),
    spec(Level::Raid0, "raid0", 1, Protection::None, 1),
    spec(Level::Raid1, "raid1", 2, Protection::Mirror, 2),
    LevelSpec {
        placement: Placement::Dedicated,
        ..spec(
            Level::Raid4,
            "raid4",
            3,
            Protection::Parity(ParityCode::Xor),
            3,
        )
    },
    spec(
        Level::Raid5,
        "raid5",
        4,
        Protection::Parity(ParityCode::Xor),
        3,
    ),
    spec(
        Level::Raid6,
        "raid6",
        5,
        Protection::Parity(ParityCode::PQ),
        4,
    ),
    LevelSpec {
        grouped: true,
        ..spec(Level::Raid10, "raid10", 6, Protection::Mirror, 2)
    },
    LevelSpec {
        grouped: true,
        ..spec(
            Level::Raid50,
            "raid50",
            7,
            Protection::Parity(ParityCode::Xor),
            3,
        )
    },
    LevelSpec {
        grouped: true,
        ..spec(
            Level::Raid60,
            "raid60",
            8,
            Protection::Parity(ParityCode::PQ),
            4,
        )
    },
    LevelSpec {
        placement: Placement::Dedicated,
        strip: StripWidth::MemberBlock,
        ..spec(
            Level::Raid3,
            "raid3",
            9,
            Protection::Parity(ParityCode::Xor),
            3,
        )
    },
    LevelSpec {
        placement: Placement::Dedicated,
        ..spec(
            Level::Raid6Dp,
            "raid6-dp",
            10,
            Protection::Parity(ParityCode::RowDiagonal),
            4,
        )
    },
];

const fn spec(
    level: Level,
    name: &'static str,
    code: u8,
    protection: Protection,
    min_group: usize,
) -> LevelSpec {
    LevelSpec {
        level,
        name,
        code,
        protection,
        placement: Placement::Rotating,
        strip: StripWidth::Configured,
        grouped: false,
        min_group,
    }
}

/// The configuration's name (`raid6-dp`), as users write it.
impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.spec().name)
    }
}

impl Level {
    pub fn spec(self) -> &'static LevelSpec {
        SPECS
            .iter()
            .find(|s| s.level == self)
            .expect("every level has a spec")
    }

    /// The level a superblock's code names.
    pub fn from_code(code: u8) -> Option<Level> {
        SPECS.iter().find(|s| s.code == code).map(|s| s.level)
    }

    /// The parity code of a parity level.
    pub fn parity_code(self) -> Option<ParityCode> {
        match self.spec().protection {
            Protection::Parity(c) => Some(c),
            _ => None,
        }
    }

    /// Parity strips per stripe of a group.
    pub fn parity_count(self) -> usize {
        self.parity_code().map_or(0, ParityCode::strips)
    }

    /// Members that may fail (per group) before data is lost.
    pub fn tolerance(self, group_size: usize) -> usize {
        match self.spec().protection {
            Protection::None => 0,
            Protection::Mirror => group_size - 1,
            Protection::Parity(c) => c.strips(),
        }
    }

    pub fn is_grouped(self) -> bool {
        self.spec().grouped
    }

    pub fn is_mirror(self) -> bool {
        self.spec().protection == Protection::Mirror
    }

    /// Smallest group a level can be built from.
    pub fn min_group(self) -> usize {
        self.spec().min_group
    }
}

impl ParityCode {
    /// Parity strips per stripe.
    pub fn strips(self) -> usize {
        match self {
            ParityCode::Xor => 1,
            ParityCode::PQ | ParityCode::RowDiagonal => 2,
        }
    }

    /// Most data strips a stripe of this code holds.
    pub fn max_data(self) -> usize {
        match self {
            ParityCode::RowDiagonal => parity::rdp::MAX_PRIME - 1,
            _ => crate::volume::plan::MAX_DATA,
        }
    }

    /// A row's parity depends on the strip's other rows: stripe ops read, compute and
    /// write whole strips.
    pub fn whole_strips(self) -> bool {
        self == ParityCode::RowDiagonal
    }

    /// The parity of `data` into `p` (and `q` for two-strip codes).
    pub fn generate(self, data: &[&[u8]], p: &mut [u8], q: Option<&mut [u8]>) {
        match (self, q) {
            (ParityCode::PQ, Some(q)) => parity::pq_gen(data, p, q),
            (ParityCode::Xor, None) => parity::xor_gen(data, p),
            (ParityCode::RowDiagonal, Some(d)) => {
                parity::rdp_gen(parity::rdp::prime_for(data.len()), data, p, d)
            }
            (code, q) => panic!(
                "{code:?} parity takes {} output(s), got {}",
                code.strips(),
                1 + q.is_some() as usize
            ),
        }
    }

    /// Read-modify-write: fold rewritten data strips into the parity (row-aligned codes;
    /// RAID-6 DP updates go through `Kernels::rdp_update` with the strip offset).
    pub fn update(self, updates: &[Update<'_>], p: &mut [u8], q: Option<&mut [u8]>) {
        match (self, q) {
            (ParityCode::PQ, Some(q)) => parity::pq_update(updates, p, q),
            (ParityCode::Xor, None) => parity::p_update(updates, p),
            (ParityCode::RowDiagonal, _) => {
                panic!("RAID-6 DP updates need the strip offset: see Kernels::rdp_update")
            }
            (code, q) => panic!(
                "{code:?} parity takes {} output(s), got {}",
                code.strips(),
                1 + q.is_some() as usize
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_names_and_levels_are_one_to_one() {
        for (i, s) in SPECS.iter().enumerate() {
            assert_eq!(Level::from_code(s.code), Some(s.level));
            assert_eq!(s.level.spec().name, s.name);
            let parsed: Level = serde_json::from_value(serde_json::json!(s.name)).unwrap();
            assert_eq!(
                parsed, s.level,
                "the configuration name parses to the level"
            );
            for o in &SPECS[i + 1..] {
                assert!(o.code != s.code && o.name != s.name && o.level != s.level);
            }
        }
        // Codes on disk before the table existed.
        for (level, code) in [
            (Level::Concat, 0),
            (Level::Raid0, 1),
            (Level::Raid1, 2),
            (Level::Raid4, 3),
            (Level::Raid5, 4),
            (Level::Raid6, 5),
            (Level::Raid10, 6),
            (Level::Raid50, 7),
            (Level::Raid60, 8),
        ] {
            assert_eq!(level.spec().code, code, "{level:?}");
        }
    }

    #[test]
    fn protection_decides_tolerance() {
        assert_eq!(Level::Raid0.tolerance(1), 0);
        assert_eq!(Level::Raid1.tolerance(3), 2);
        assert_eq!(Level::Raid10.tolerance(2), 1);
        assert_eq!(Level::Raid3.tolerance(9), 1);
        assert_eq!(Level::Raid5.tolerance(4), 1);
        assert_eq!(Level::Raid60.tolerance(6), 2);
        assert_eq!(Level::Raid6Dp.tolerance(6), 2);
    }
}
