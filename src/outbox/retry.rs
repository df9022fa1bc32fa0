//! When to try again: exponential backoff with jitter, never sooner than DingTalk asks.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// After this long since acceptance, a delivery that still fails is failed for good.
    pub max_age: Duration,
}

impl RetryPolicy {
    /// Delay before attempt `attempts + 1`: base·2^(attempts-1), capped, ±20 % jitter, and at
    /// least `at_least` (DingTalk's Retry-After or a throttle pause).
    pub fn delay(&self, attempts: i32, at_least: Option<Duration>, jitter_unit: f64) -> Duration {
        let exp = self.base.as_millis() as f64 * 2f64.powi(attempts.clamp(1, 30) - 1);
        let capped = exp.min(self.cap.as_millis() as f64);
        let jittered = capped * (0.8 + 0.4 * jitter_unit.clamp(0.0, 1.0));
        Duration::from_millis(jittered as u64).max(at_least.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_with_bounded_jitter_and_respects_a_floor() {
        let p = RetryPolicy {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(300),
            max_age: Duration::from_secs(86_400),
        };
        assert_eq!(p.delay(1, None, 0.5), Duration::from_secs(2));
        assert_eq!(p.delay(2, None, 0.5), Duration::from_secs(4));
        assert_eq!(p.delay(3, None, 0.0), Duration::from_millis(6400));
        assert_eq!(p.delay(3, None, 1.0), Duration::from_millis(9600));
        assert_eq!(p.delay(20, None, 0.5), Duration::from_secs(300), "capped");
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(60)), 0.5),
            Duration::from_secs(60)
        );
    }
}
