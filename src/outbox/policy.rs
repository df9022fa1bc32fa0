//! What a sender's verdict means for a delivery's next step: when a retry is due, when a wait
//! ends, and when a delivery has waited or failed long enough to be failed for good.

use super::retry::{jitter_unit, RetryPolicy};
use super::store::Outcome;
use crate::clock::SharedClock;
use crate::db::models::DeliveryRow;
use crate::senders::{Until, Verdict, Verdicts};
use std::time::Duration;

pub struct Policy {
    pub retry: RetryPolicy,
    clock: SharedClock,
}

impl Policy {
    pub fn new(retry: RetryPolicy, clock: SharedClock) -> Self {
        Self { retry, clock }
    }

    /// The outcome to record for each verdict of one sender task. A wait "until the retry"
    /// ends with the latest retry of the same task (or now, if there is none).
    pub fn outcomes(&self, verdicts: Verdicts) -> Vec<(DeliveryRow, Outcome)> {
        let now = self.clock.now_ms();
        let mut outcomes: Vec<(DeliveryRow, Option<Outcome>, Verdict)> = verdicts
            .into_iter()
            .map(|(row, v)| {
                let o = match &v {
                    Verdict::Wait {
                        until: Until::TheRetry,
                        ..
                    } => None,
                    other => Some(self.outcome(&row, other.clone(), now, now)),
                };
                (row, o, v)
            })
            .collect();
        let retry_at = outcomes
            .iter()
            .filter_map(|(_, o, _)| match o {
                Some(Outcome::Retry { at, .. }) => Some(*at),
                _ => None,
            })
            .max()
            .unwrap_or(now);
        outcomes
            .drain(..)
            .map(|(row, o, v)| {
                let o = o.unwrap_or_else(|| self.outcome(&row, v, retry_at, now));
                (row, o)
            })
            .collect()
    }

    /// `retry_at`: when a wait for the task's retry ends.
    fn outcome(&self, row: &DeliveryRow, v: Verdict, retry_at: i64, now: i64) -> Outcome {
        match v {
            Verdict::Sent {
                request_id,
                digest_id,
            } => Outcome::Sent {
                request_id,
                digest_id,
            },
            Verdict::Failed { code, error } => Outcome::Failed { code, error },
            Verdict::Retry {
                code,
                error,
                at_least,
                parts_sent,
            } => self.retry(row, code, error, at_least, parts_sent, now),
            Verdict::Wait {
                until,
                reason,
                parts_sent,
            } => {
                let at = match until {
                    Until::At(at) => at,
                    Until::TheRetry => retry_at,
                };
                self.defer(row, at.max(now), reason, parts_sent, now)
            }
        }
    }

    fn retry(
        &self,
        row: &DeliveryRow,
        code: String,
        error: String,
        at_least: Option<Duration>,
        parts_sent: Option<i32>,
        now: i64,
    ) -> Outcome {
        let attempts = row.attempts + 1;
        let at = now
            + self
                .retry
                .delay(attempts, at_least, jitter_unit())
                .as_millis() as i64;
        if at > row.give_up_at {
            return Outcome::Failed {
                code: Some(code),
                error: format!(
                    "gave up after {attempts} attempt(s) over {}; last error: {error}",
                    human_ms(now - row.created_at)
                ),
            };
        }
        Outcome::Retry {
            at,
            code,
            error,
            parts_sent,
        }
    }

    /// Not attempted now: waits until `at` — unless that is past the delivery's maximum age.
    fn defer(
        &self,
        row: &DeliveryRow,
        at: i64,
        reason: String,
        parts_sent: Option<i32>,
        now: i64,
    ) -> Outcome {
        if at > row.give_up_at {
            let waited = human_ms(now - row.created_at);
            return Outcome::Failed {
                code: None,
                error: format!("gave up after waiting {waited}: {reason}"),
            };
        }
        Outcome::Deferred {
            at,
            reason,
            parts_sent,
        }
    }
}

fn human_ms(ms: i64) -> String {
    let s = ms / 1000;
    if s < 120 {
        format!("{s} s")
    } else if s < 7200 {
        format!("{} min", s / 60)
    } else {
        format!("{} h", s / 3600)
    }
}
