//! The single-chat call budget per DingTalk app key (about 40 calls/s and 1500 calls/min):
//! every getbymobile and batchSend call takes from it, and a throttle answer from DingTalk
//! pauses the app. Shared by the workers of this process and the DingTalk directory sync (a
//! clone shares the same windows); with several processes, give each a share
//! (`DING_CHANNEL_APP_QPS` / `DING_CHANNEL_APP_QPM`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Window {
    second: i64,
    in_second: u32,
    minute: i64,
    in_minute: u32,
    paused_until: i64,
}

#[derive(Debug, Clone)]
pub struct AppBudgets {
    qps: u32,
    qpm: u32,
    apps: Arc<Mutex<HashMap<String, Window>>>,
}

impl AppBudgets {
    pub fn new(qps: u32, qpm: u32) -> Self {
        Self {
            qps: qps.max(1),
            qpm: qpm.max(1),
            apps: Arc::default(),
        }
    }

    /// A limiter of its own at `1/part` of these rates: a background job takes from it and
    /// from this one, so it never has more than its part, and sends keep the rest.
    pub fn share(&self, part: u32) -> Self {
        Self::new(self.qps / part.max(1), self.qpm / part.max(1))
    }

    /// Takes `calls` from the app's budget, or answers when enough will be free.
    pub fn take(&self, app_key: &str, calls: u32, now_ms: i64) -> Result<(), i64> {
        let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        let w = apps.entry(app_key.to_owned()).or_default();
        if w.paused_until > now_ms {
            return Err(w.paused_until);
        }
        let (second, minute) = (now_ms.div_euclid(1000), now_ms.div_euclid(60_000));
        if w.second != second {
            (w.second, w.in_second) = (second, 0);
        }
        if w.minute != minute {
            (w.minute, w.in_minute) = (minute, 0);
        }
        // A request larger than a whole second's budget may start in a fresh second.
        let per_second_ok =
            w.in_second + calls <= self.qps || (w.in_second == 0 && calls > self.qps);
        if w.in_minute + calls > self.qpm && w.in_minute > 0 {
            return Err((minute + 1) * 60_000);
        }
        if !per_second_ok {
            return Err((second + 1) * 1000);
        }
        w.in_second += calls;
        w.in_minute += calls;
        Ok(())
    }

    /// DingTalk throttled the app: no call until `until`.
    /// Pauses the app as DingTalk's "too fast" answer `e` asks (a second when it does not
    /// say); answers until when.
    pub fn pause_for(&self, app_key: &str, e: &super::DingTalkError, now_ms: i64) -> i64 {
        let wait = e.retry_after().unwrap_or(std::time::Duration::from_secs(1));
        let until = now_ms + wait.as_millis() as i64;
        self.pause(app_key, until);
        until
    }

    pub fn pause(&self, app_key: &str, until_ms: i64) {
        let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        let w = apps.entry(app_key.to_owned()).or_default();
        w.paused_until = w.paused_until.max(until_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_second_and_per_minute_limits_and_pauses() {
        let b = AppBudgets::new(40, 100);
        let t = 1_700_000_000_000;
        assert_eq!(b.take("k", 30, t), Ok(()));
        assert_eq!(
            b.take("k", 11, t + 10),
            Err(t - t % 1000 + 1000),
            "41 > 40 in one second"
        );
        assert_eq!(b.take("other", 40, t), Ok(()), "per app key");
        assert_eq!(b.take("k", 40, t + 1000), Ok(()));
        assert_eq!(
            b.take("k", 40, t + 2000),
            Err((t / 60_000 + 1) * 60_000),
            "110 > 100 in one minute"
        );
        b.pause("other", t + 5000);
        assert_eq!(b.take("other", 1, t + 4000), Err(t + 5000));
        assert_eq!(b.take("other", 1, t + 6000), Ok(()));
    }
}
