//! The agent's wall clock, with a seam for tests: `HAIMG_CLOCK_SKEW_SECONDS` (a signed
//! number of seconds) shifts every time the agent writes into or judges against the shared
//! documents (leases, material issue and expiry times, membership checks), so a test can
//! run nodes whose clocks disagree, as real nodes' do. Unset (production): the system clock.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

fn skew() -> i64 {
    static SKEW: OnceLock<i64> = OnceLock::new();
    *SKEW.get_or_init(|| {
        std::env::var("HAIMG_CLOCK_SKEW_SECONDS")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// Now, by this node's clock.
pub fn now() -> SystemTime {
    shifted(SystemTime::now(), skew())
}

fn shifted(t: SystemTime, by: i64) -> SystemTime {
    let d = Duration::from_secs(by.unsigned_abs());
    if by >= 0 {
        t + d
    } else {
        t - d
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn skew_moves_the_clock_both_ways() {
        let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        assert_eq!(
            super::shifted(t, 30).duration_since(t).unwrap().as_secs(),
            30
        );
        assert_eq!(
            t.duration_since(super::shifted(t, -30)).unwrap().as_secs(),
            30
        );
    }
}
