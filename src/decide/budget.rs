//! The node's budget of live-output bytes written to the API server: a token bucket that fills at
//! the budget per minute and holds at most one minute's worth.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Budget {
    per_minute: u64,
    tokens: f64,
    at: Instant,
}

impl Budget {
    /// A full budget of `per_minute` bytes.
    pub fn new(per_minute: u64, now: Instant) -> Budget {
        Budget {
            per_minute,
            tokens: per_minute as f64,
            at: now,
        }
    }

    /// Spends `bytes` if the budget has them now (a write larger than a minute's worth needs a
    /// full budget). False: the write waits.
    pub fn spend(&mut self, bytes: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at);
        self.at = now;
        let refill = elapsed.as_secs_f64() / Duration::from_secs(60).as_secs_f64();
        self.tokens = (self.tokens + refill * self.per_minute as f64).min(self.per_minute as f64);
        let need = bytes.min(self.per_minute) as f64;
        if self.per_minute == 0 || self.tokens < need {
            return false;
        }
        self.tokens -= need;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spends_up_to_a_minutes_worth_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Budget::new(60_000, t0);
        assert!(b.spend(40_000, t0));
        assert!(b.spend(20_000, t0));
        assert!(!b.spend(1, t0), "spent");
        // 1 000 bytes a second come back.
        assert!(!b.spend(2_000, t0 + Duration::from_secs(1)));
        assert!(b.spend(2_000, t0 + Duration::from_secs(2)));
        // Never more than a minute's worth, however long it waits.
        let later = t0 + Duration::from_secs(3600);
        assert!(b.spend(60_000, later));
        assert!(!b.spend(1, later));
    }

    #[test]
    fn a_write_larger_than_the_budget_needs_a_full_one_and_zero_allows_nothing() {
        let t0 = Instant::now();
        let mut b = Budget::new(1_000, t0);
        assert!(b.spend(5_000, t0));
        assert!(!b.spend(5_000, t0 + Duration::from_secs(30)));
        assert!(b.spend(5_000, t0 + Duration::from_secs(90)));
        assert!(!Budget::new(0, t0).spend(1, t0));
    }
}
