//! A token bucket for background work (rebuild, scrub): credit accrues at the rate, up to a
//! small burst, and each unit of work spends its cost.

use std::time::Instant;

#[derive(Debug, Default)]
pub struct TokenBucket {
    credit: f64,
    at: Option<Instant>,
}

impl TokenBucket {
    /// Spend `cost` bytes at `rate` bytes per second (0: unlimited) if that much credit is
    /// there; credit beyond `burst_secs` of the rate (or one cost) is not kept.
    pub fn take(&mut self, rate: f64, cost: f64, burst_secs: f64) -> bool {
        if rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        let elapsed = self.at.map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        self.credit = (self.credit + elapsed * rate).min((rate * burst_secs).max(cost));
        self.at = Some(now);
        if self.credit < cost {
            return false;
        }
        self.credit -= cost;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_always_and_limited_within_the_burst() {
        let mut b = TokenBucket::default();
        assert!(b.take(0.0, 1e9, 0.05));
        // The first take finds no credit yet; the burst then bounds what accrues.
        assert!(!b.take(1000.0, 10.0, 0.05));
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            b.take(1000.0, 50.0, 0.05),
            "50 bytes of credit after 100 ms at 1000 B/s"
        );
        assert!(
            !b.take(1000.0, 50.0, 0.05),
            "the burst holds no more than 50 ms of the rate"
        );
    }
}
