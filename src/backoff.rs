//! Bounded waiting: exponential backoff with full jitter inside an overall deadline, for
//! every retry haimg makes itself (the SDK retries throttling and 5xx on its own).
//!
//! Hundreds of nodes may wait for the same SSM parameter at once, and SSM's GetParameter
//! throughput is limited per account (tens of calls per second by default). Full jitter
//! (sleep a uniform random time in [0, cap]) spreads them so the account-wide rate stays
//! about `nodes / mean delay`, while the cap keeps the time from publication to the
//! last join short.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub deadline: Instant,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, timeout: Duration) -> Self {
        Self {
            initial,
            max,
            deadline: Instant::now() + timeout,
            attempt: 0,
        }
    }

    /// The next delay, or `None` when the deadline has passed.
    pub fn next_delay(&mut self) -> Option<Duration> {
        let now = Instant::now();
        if now >= self.deadline {
            return None;
        }
        let cap = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt += 1;
        let jittered = cap.mul_f64(unit_random());
        // Never sleep less than a tenth of the cap (no hot loop), nor past the deadline.
        Some(jittered.max(cap / 10).min(self.deadline - now))
    }

    /// Sleeps the next delay; `false` when the deadline has passed.
    pub async fn wait(&mut self) -> bool {
        match self.next_delay() {
            Some(d) => {
                tokio::time::sleep(d).await;
                true
            }
            None => false,
        }
    }
}

/// A uniform random number in [0, 1).
pub fn unit_random() -> f64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the kernel's random source is available");
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_stop_at_the_deadline() {
        let mut b = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(2),
            Duration::from_secs(3600),
        );
        for _ in 0..50 {
            let d = b.next_delay().unwrap();
            assert!(d <= Duration::from_secs(2), "{d:?}");
            assert!(d >= Duration::from_millis(10), "{d:?}");
        }
        let mut done = Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(1),
            Duration::ZERO,
        );
        assert!(done.next_delay().is_none());
    }
}
