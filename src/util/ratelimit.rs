//! Rate-limited warnings. A failing volume or a flood of bad connections can raise the
//! same warning thousands of times a second; each call site logs at most `BURST` lines per
//! `WINDOW` and then one line saying how many it suppressed.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Lines a call site may log per window.
pub const BURST: u64 = 5;
/// Window length in nanoseconds.
pub const WINDOW_NS: u64 = 10_000_000_000;

/// The state of one call site.
pub struct RateLimit {
    window_start: AtomicU64,
    in_window: AtomicU64,
    suppressed: AtomicU64,
}

/// What a call site should do with its line.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` lines were dropped since the last one logged.
    Log {
        suppressed: u64,
    },
    Drop,
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; the coarse clock costs no system call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl RateLimit {
    pub const fn new() -> RateLimit {
        RateLimit {
            window_start: AtomicU64::new(0),
            in_window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    pub fn check(&self) -> Verdict {
        self.check_at(now_ns())
    }

    /// Racy between threads by a line or two, which is fine for logging.
    pub fn check_at(&self, now: u64) -> Verdict {
        let start = self.window_start.load(Relaxed);
        if start == 0 || now.saturating_sub(start) >= WINDOW_NS {
            self.window_start.store(now.max(1), Relaxed);
            self.in_window.store(0, Relaxed);
        }
        if self.in_window.fetch_add(1, Relaxed) < BURST {
            Verdict::Log {
                suppressed: self.suppressed.swap(0, Relaxed),
            }
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            Verdict::Drop
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new()
    }
}

/// `tracing::warn!` limited per call site; adds `suppressed = N` when lines were dropped.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::util::ratelimit::RateLimit = $crate::util::ratelimit::RateLimit::new();
        if let $crate::util::ratelimit::Verdict::Log { suppressed } = LIMIT.check() {
            if suppressed == 0 {
                tracing::warn!($($arg)+);
            } else {
                tracing::warn!(suppressed, $($arg)+);
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_silence_then_the_count_of_what_was_dropped() {
        let r = RateLimit::new();
        let t0 = 5_000_000_000;
        for _ in 0..BURST {
            assert_eq!(r.check_at(t0), Verdict::Log { suppressed: 0 });
        }
        for _ in 0..1000 {
            assert_eq!(r.check_at(t0 + 1), Verdict::Drop);
        }
        assert_eq!(
            r.check_at(t0 + WINDOW_NS),
            Verdict::Log { suppressed: 1000 }
        );
        assert_eq!(
            r.check_at(t0 + WINDOW_NS + 1),
            Verdict::Log { suppressed: 0 }
        );
    }
}
