//! A cheap monotonic clock for per-I/O latency stamps. Every I/O takes two stamps (and a
//! member I/O two more), so the clock is read millions of times a second: the invariant
//! TSC costs about a third of `Instant::now()` here. Where the TSC is not invariant (or
//! not x86-64) the stamps come from `Instant`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A point in time, in clock units (TSC ticks or nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

impl Stamp {
    pub fn now() -> Stamp {
        Stamp(read(clock()))
    }

    /// Microseconds from `self` until now (0 if the clock went backwards).
    pub fn elapsed_micros(self) -> u64 {
        Stamp::now().nanos_since(self) / 1000
    }

    /// Nanoseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn nanos_since(self, earlier: Stamp) -> u64 {
        (self.0.saturating_sub(earlier.0) as f64 * clock().nanos_per_tick) as u64
    }
}

struct Clock {
    tsc: bool,
    nanos_per_tick: f64,
    origin: Instant,
}

fn clock() -> &'static Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    CLOCK.get_or_init(calibrate)
}

#[inline]
fn read(c: &Clock) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if c.tsc {
        // SAFETY: rdtsc has no preconditions; `tsc` is set only on x86-64 with an
        // invariant TSC.
        return unsafe { core::arch::x86_64::_rdtsc() };
    }
    c.origin.elapsed().as_nanos() as u64
}

/// An invariant TSC (constant rate, runs in every C-state) is measured against the
/// monotonic clock once, over 20 ms.
fn calibrate() -> Clock {
    let origin = Instant::now();
    if !invariant_tsc() {
        return Clock {
            tsc: false,
            nanos_per_tick: 1.0,
            origin,
        };
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: as in `read`.
        let t0 = unsafe { core::arch::x86_64::_rdtsc() };
        let i0 = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let t1 = unsafe { core::arch::x86_64::_rdtsc() };
        let nanos = i0.elapsed().as_nanos() as f64;
        if t1 > t0 {
            return Clock {
                tsc: true,
                nanos_per_tick: nanos / (t1 - t0) as f64,
                origin,
            };
        }
    }
    Clock {
        tsc: false,
        nanos_per_tick: 1.0,
        origin,
    }
}

fn invariant_tsc() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = info.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    has("constant_tsc") && has("nonstop_tsc")
}

/// Calibrate now (at start-up) rather than on the first I/O.
pub fn init() {
    clock();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_measure_a_sleep() {
        let s = Stamp::now();
        std::thread::sleep(Duration::from_millis(30));
        let us = s.elapsed_micros();
        // A sleep lasts at least as long as asked; the upper bound only guards against a
        // unit error (ticks or nanoseconds taken for microseconds).
        assert!(
            (29_000..2_000_000).contains(&us),
            "{us} us for a 30 ms sleep"
        );
        assert!(Stamp::now() >= s);
    }
}
