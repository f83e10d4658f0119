//! Asymmetric Namespace Access (ANA): the state of each ANA group as reported through each
//! port, the change counts, and what the I/O path and asynchronous events derive from them.
//!
//! Every NVM subsystem has one ANA group (`DEFAULT_GROUP`) holding all its namespaces. The
//! state of a group is kept per port, so two sites that export the same subsystem can each
//! report their own path: the host's multipath follows the optimized one. States are
//! atomics, read without a lock; changes are serialised by the management path.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use super::spec::{log, status};

/// ANA state of a group as seen through one port (the ANA log page's encoding).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnaState {
    Optimized = 0x1,
    NonOptimized = 0x2,
    Inaccessible = 0x3,
    PersistentLoss = 0x4,
    Change = 0xF,
}

impl AnaState {
    pub const ALL: [AnaState; 5] = [
        AnaState::Optimized,
        AnaState::NonOptimized,
        AnaState::Inaccessible,
        AnaState::PersistentLoss,
        AnaState::Change,
    ];
    /// The states a listener may start in (`[[listener]] ana_state`).
    pub const INITIAL: [AnaState; 3] = [
        AnaState::Optimized,
        AnaState::NonOptimized,
        AnaState::Inaccessible,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<AnaState> {
        AnaState::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The name used in configuration, management and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            AnaState::Optimized => "optimized",
            AnaState::NonOptimized => "non-optimized",
            AnaState::Inaccessible => "inaccessible",
            AnaState::PersistentLoss => "persistent-loss",
            AnaState::Change => "change",
        }
    }

    /// A state by name ("non-optimized"; "non_optimized" and any case are accepted too).
    pub fn parse(name: &str) -> Option<AnaState> {
        let n = name.trim().to_ascii_lowercase().replace('_', "-");
        AnaState::ALL.into_iter().find(|s| s.name() == n)
    }

    /// Names of `states`, for error messages: "optimized, non-optimized, inaccessible".
    pub fn names(states: &[AnaState]) -> String {
        states
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for AnaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for AnaState {
    type Err = String;
    fn from_str(s: &str) -> Result<AnaState, String> {
        AnaState::parse(s).ok_or_else(|| {
            format!(
                "'{s}' is not an ANA state ({})",
                AnaState::names(&AnaState::ALL)
            )
        })
    }
}

/// The status an I/O command gets on a path in `state`, or None when it may proceed
/// (optimized and non-optimized). These are path-related statuses (SCT 3) without DNR:
/// the host retries the command on another path and re-reads the ANA log page.
pub fn io_status(state: AnaState) -> Option<u16> {
    match state {
        AnaState::Optimized | AnaState::NonOptimized => None,
        AnaState::Inaccessible => Some(status::ANA_INACCESSIBLE),
        AnaState::PersistentLoss => Some(status::ANA_PERSISTENT_LOSS),
        AnaState::Change => Some(status::ANA_TRANSITION),
    }
}

/// Asynchronous Event Type "notice" (CQE dw0 bits 2:0).
pub const AEN_TYPE_NOTICE: u32 = 0x2;
/// Asynchronous Event Information "ANA change" of a notice (dw0 bits 15:8).
pub const AEN_INFO_ANA_CHANGE: u32 = 0x03;
/// Asynchronous Event Configuration (Set Features 0Bh) bit: ANA change notices; the same
/// bit in Identify Controller OAES says they are supported.
pub const AEC_ANA_CHANGE: u32 = 1 << 11;

/// CQE dw0 of the Asynchronous Event Request completed for an ANA change: a notice, ANA
/// change, the ANA log page (0Ch) in bits 23:16.
pub fn aen_completion_dw0() -> u32 {
    AEN_TYPE_NOTICE | AEN_INFO_ANA_CHANGE << 8 | (log::ANA as u32) << 16
}

/// The ANA group id of every namespace of an NVM subsystem.
pub const DEFAULT_GROUP: u32 = 1;
/// ANA groups per subsystem (ANAGRPMAX and NANAGRPID).
pub const GROUPS_PER_SUBSYSTEM: u32 = 1;
/// ANA Transition Time in seconds (ANATT): how long a group may stay in the change state.
pub const ANATT_SECS: u8 = 10;
/// ANACAP: every state reportable (bits 0-4), ANAGRPID constant while attached (bit 6),
/// non-zero ANAGRPID (bit 7).
pub const ANACAP: u8 = 0x1F | 1 << 6 | 1 << 7;

#[derive(Debug)]
struct Cell {
    state: AtomicU8,
    /// The global change count at this group's last change on this port (0: never).
    change_count: AtomicU64,
}

/// One ANA group's state through one port, as status and metrics report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupState {
    pub state: AnaState,
    pub change_count: u64,
}

/// The state of every (port, subsystem, group), flat: `slot(port, subsystem)` gives the
/// first group's cell of that pair, and the I/O path adds the group id to it.
#[derive(Debug)]
pub struct AnaTable {
    port_ids: Vec<u16>,
    subsystems: usize,
    cells: Box<[Cell]>,
    change_count: AtomicU64,
    /// Serialises changes (the management path), never taken by readers.
    writer: Mutex<()>,
}

impl AnaTable {
    /// Every group optimized on every port, change count 0.
    pub fn new(port_ids: &[u16], subsystems: usize) -> AnaTable {
        let n = port_ids.len() * subsystems * GROUPS_PER_SUBSYSTEM as usize;
        let cells = (0..n)
            .map(|_| Cell {
                state: AtomicU8::new(AnaState::Optimized.code()),
                change_count: AtomicU64::new(0),
            })
            .collect();
        AnaTable {
            port_ids: port_ids.to_vec(),
            subsystems,
            cells,
            change_count: AtomicU64::new(0),
            writer: Mutex::new(()),
        }
    }

    /// The cell of group 1 of (port, subsystem index), or None for an unknown port.
    pub fn slot(&self, port_id: u16, subsystem: usize) -> Option<usize> {
        let p = self.port_ids.iter().position(|&id| id == port_id)?;
        (subsystem < self.subsystems)
            .then(|| (p * self.subsystems + subsystem) * GROUPS_PER_SUBSYSTEM as usize)
    }

    fn cell(&self, slot: usize, anagrpid: u32) -> Option<&Cell> {
        if anagrpid == 0 || anagrpid > GROUPS_PER_SUBSYSTEM {
            return None;
        }
        self.cells.get(slot + anagrpid as usize - 1)
    }

    /// The state of group `anagrpid` at `slot`: one atomic load. A group the table does
    /// not know is reported inaccessible.
    pub fn state(&self, slot: usize, anagrpid: u32) -> AnaState {
        self.group(slot, anagrpid)
            .map_or(AnaState::Inaccessible, |g| g.state)
    }

    pub fn group(&self, slot: usize, anagrpid: u32) -> Option<GroupState> {
        let c = self.cell(slot, anagrpid)?;
        let state =
            AnaState::from_code(c.state.load(Ordering::Acquire)).unwrap_or(AnaState::Inaccessible);
        Some(GroupState {
            state,
            change_count: c.change_count.load(Ordering::Relaxed),
        })
    }

    /// The global ANA change count: incremented by every state change.
    pub fn change_count(&self) -> u64 {
        self.change_count.load(Ordering::Acquire)
    }

    /// Set every group of `port_id` to `state` before any host connects: not a change.
    pub fn set_initial(&self, port_id: u16, state: AnaState) {
        let Some(first) = self.slot(port_id, 0) else {
            return;
        };
        let n = self.subsystems * GROUPS_PER_SUBSYSTEM as usize;
        for c in &self.cells[first..first + n] {
            c.state.store(state.code(), Ordering::Release);
        }
    }

    /// Hold while changing states, so that concurrent changes get distinct counts.
    pub fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Change one group (with the writer lock held): returns the old state and the new
    /// change count, or None when the group is already in `state` (nothing changes).
    pub fn change(
        &self,
        _writer: &std::sync::MutexGuard<'_, ()>,
        slot: usize,
        anagrpid: u32,
        state: AnaState,
    ) -> Option<(AnaState, u64)> {
        let c = self.cell(slot, anagrpid)?;
        let old =
            AnaState::from_code(c.state.load(Ordering::Acquire)).unwrap_or(AnaState::Inaccessible);
        if old == state {
            return None;
        }
        let count = self.change_count.fetch_add(1, Ordering::AcqRel) + 1;
        c.change_count.store(count, Ordering::Relaxed);
        c.state.store(state.code(), Ordering::Release);
        Some((old, count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_status_lets_only_usable_paths_through() {
        assert_eq!(io_status(AnaState::Optimized), None);
        assert_eq!(io_status(AnaState::NonOptimized), None);
        assert_eq!(io_status(AnaState::Inaccessible), Some(0x0302));
        assert_eq!(io_status(AnaState::PersistentLoss), Some(0x0301));
        assert_eq!(io_status(AnaState::Change), Some(0x0303));
        for s in AnaState::ALL {
            if let Some(st) = io_status(s) {
                assert_eq!(st >> 8 & 0x7, 3, "{s}: status code type 3 (path related)");
                assert_eq!(
                    st & status::DNR,
                    0,
                    "{s}: the host must be free to retry elsewhere"
                );
            }
        }
    }

    #[test]
    fn aen_dw0_is_an_ana_change_notice_for_log_0c() {
        let dw0 = aen_completion_dw0();
        assert_eq!(dw0, 0x000C_0302);
        assert_eq!(dw0 & 0x7, 2, "type notice");
        assert_eq!(dw0 >> 8 & 0xFF, 3, "info ANA change");
        assert_eq!(dw0 >> 16 & 0xFF, 0x0C, "log page");
    }

    #[test]
    fn names_round_trip() {
        for s in AnaState::ALL {
            assert_eq!(AnaState::parse(s.name()), Some(s));
            assert_eq!(AnaState::from_code(s.code()), Some(s));
            assert_eq!(s.to_string().parse::<AnaState>(), Ok(s));
        }
        assert_eq!(
            AnaState::parse("Non_Optimized"),
            Some(AnaState::NonOptimized)
        );
        assert_eq!(AnaState::parse("up"), None);
        assert_eq!(AnaState::from_code(0), None);
        assert!("up"
            .parse::<AnaState>()
            .unwrap_err()
            .contains("persistent-loss"));
    }

    #[test]
    fn table_keeps_ports_apart_and_counts_changes() {
        let t = AnaTable::new(&[1, 2], 3);
        let (a, b) = (t.slot(1, 2).unwrap(), t.slot(2, 2).unwrap());
        assert_ne!(a, b);
        assert_eq!(t.slot(9, 0), None);
        assert_eq!(t.slot(1, 3), None);
        t.set_initial(2, AnaState::NonOptimized);
        assert_eq!(t.state(a, 1), AnaState::Optimized);
        assert_eq!(t.state(b, 1), AnaState::NonOptimized);
        assert_eq!(t.state(t.slot(2, 0).unwrap(), 1), AnaState::NonOptimized);
        assert_eq!(t.change_count(), 0, "the initial state is not a change");
        let w = t.lock_writer();
        assert_eq!(
            t.change(&w, a, 1, AnaState::Inaccessible),
            Some((AnaState::Optimized, 1))
        );
        assert_eq!(
            t.change(&w, a, 1, AnaState::Inaccessible),
            None,
            "same state: no change"
        );
        assert_eq!(
            t.change(&w, b, 1, AnaState::Optimized),
            Some((AnaState::NonOptimized, 2))
        );
        assert_eq!(t.change(&w, a, 2, AnaState::Optimized), None, "no group 2");
        drop(w);
        assert_eq!(
            t.group(a, 1),
            Some(GroupState {
                state: AnaState::Inaccessible,
                change_count: 1
            })
        );
        assert_eq!(
            t.group(b, 1),
            Some(GroupState {
                state: AnaState::Optimized,
                change_count: 2
            })
        );
        assert_eq!(
            t.group(t.slot(1, 0).unwrap(), 1).unwrap().change_count,
            0,
            "other subsystems untouched"
        );
        assert_eq!(t.change_count(), 2);
        assert_eq!(
            t.state(a, 0),
            AnaState::Inaccessible,
            "group 0 does not exist"
        );
    }
}
