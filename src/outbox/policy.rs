//! What a sender's verdict means for a delivery's next step: when a retry is due, when a wait
//! ends, and when a delivery has waited or failed long enough to be failed for good.

use super::retry::RetryPolicy;
use super::store::Outcome;
use crate::clock::jitter_unit;
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
    /// ends with the latest retry of the same task (or at its fallback, if there is none).
    pub fn outcomes(&self, verdicts: Verdicts) -> Vec<(DeliveryRow, Outcome)> {
        let now = self.clock.now_ms();
        let mut outcomes: Vec<(DeliveryRow, Option<Outcome>, Verdict)> = verdicts
            .into_iter()
            .map(|(row, v)| {
                let o = match &v {
                    Verdict::Wait {
                        until: Until::TheRetry { .. },
                        ..
                    } => None,
                    other => Some(self.outcome(&row, other.clone(), None, now)),
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
            .max();
        outcomes
            .drain(..)
            .map(|(row, o, v)| {
                let o = o.unwrap_or_else(|| self.outcome(&row, v, retry_at, now));
                (row, o)
            })
            .collect()
    }

    /// `retry_at`: the task's latest retry, if any.
    fn outcome(&self, row: &DeliveryRow, v: Verdict, retry_at: Option<i64>, now: i64) -> Outcome {
        match v {
            Verdict::Sent {
                request_id,
                digest_id,
                sent_by,
            } => Outcome::Sent {
                request_id,
                digest_id,
                sent_by,
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
                held,
            } => {
                let at = match until {
                    Until::At(at) => at,
                    Until::TheRetry { or } => retry_at.unwrap_or(or),
                };
                match self.defer(row, at.max(now), reason, parts_sent, now) {
                    Outcome::Deferred {
                        at,
                        reason,
                        parts_sent,
                        ..
                    } => Outcome::Deferred {
                        at,
                        reason,
                        parts_sent,
                        held,
                    },
                    failed => failed,
                }
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
            held: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const NOW: i64 = 1_700_000_000_000;

    fn row(id: i64, attempts: i32, give_up_in_ms: i64) -> DeliveryRow {
        DeliveryRow {
            id,
            message_id: "m".into(),
            receiver: "r".into(),
            kind: "robot".into(),
            target: "ops-robot".into(),
            status: "queued".into(),
            attempts,
            next_attempt_at: NOW,
            give_up_at: NOW + give_up_in_ms,
            sent_at: None,
            parts_sent: 0,
            claimed_until: None,
            claimed_by: None,
            last_error: None,
            dingtalk_code: None,
            dingtalk_request_id: None,
            digest_id: None,
            created_at: NOW - 60_000,
            updated_at: NOW,
        }
    }

    fn policy() -> Policy {
        let retry = RetryPolicy {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(300),
            max_age: Duration::from_secs(86_400),
        };
        Policy::new(retry, ManualClock::new(NOW))
    }

    fn retry(at_least: Option<Duration>) -> Verdict {
        Verdict::Retry {
            code: "-1".into(),
            error: "busy".into(),
            at_least,
            parts_sent: Some(1),
        }
    }

    #[test]
    fn a_retry_waits_at_least_what_dingtalk_asks_and_gives_up_past_the_maximum_age() {
        let day = 86_400_000;
        let out = policy().outcomes(vec![(row(1, 0, day), retry(Some(Duration::from_secs(60))))]);
        match &out[0].1 {
            Outcome::Retry { at, parts_sent, .. } => {
                assert!(*at >= NOW + 60_000, "{at}");
                assert_eq!(*parts_sent, Some(1));
            }
            other => panic!("{other:?}"),
        }
        let out = policy().outcomes(vec![(row(1, 4, 1_000), retry(None))]);
        match &out[0].1 {
            Outcome::Failed { code, error } => {
                assert_eq!(code.as_deref(), Some("-1"));
                assert!(
                    error.starts_with("gave up after 5 attempt(s) over 60 s"),
                    "{error}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_wait_is_not_an_attempt_and_fails_only_past_the_maximum_age() {
        let out = policy().outcomes(vec![
            (row(1, 0, 10_000), Verdict::wait(NOW + 5_000, "slot", None)),
            (row(2, 0, 10_000), Verdict::wait(NOW + 20_000, "slot", None)),
            (
                row(3, 0, 10_000),
                Verdict::wait(NOW - 5_000, "stopping", None),
            ),
        ]);
        assert!(matches!(&out[0].1, Outcome::Deferred { at, .. } if *at == NOW + 5_000));
        assert!(
            matches!(&out[1].1, Outcome::Failed { error, .. } if error == "gave up after waiting 60 s: slot")
        );
        assert!(
            matches!(&out[2].1, Outcome::Deferred { at, .. } if *at == NOW),
            "a wait never lies in the past"
        );
    }

    #[test]
    fn waiting_for_the_retry_ends_with_the_latest_retry_of_the_task() {
        let day = 86_400_000;
        let with_retry = |until| Verdict::Wait {
            until,
            reason: "retrying".into(),
            parts_sent: None,
            held: None,
        };
        let out = policy().outcomes(vec![
            (
                row(1, 0, day),
                with_retry(Until::TheRetry { or: NOW + 3_000 }),
            ),
            (row(2, 0, day), retry(Some(Duration::from_secs(90)))),
        ]);
        let retry_at = match &out[1].1 {
            Outcome::Retry { at, .. } => *at,
            other => panic!("{other:?}"),
        };
        assert!(matches!(&out[0].1, Outcome::Deferred { at, .. } if *at == retry_at));
        let alone = policy().outcomes(vec![(
            row(1, 0, day),
            with_retry(Until::TheRetry { or: NOW + 3_000 }),
        )]);
        assert!(
            matches!(&alone[0].1, Outcome::Deferred { at, .. } if *at == NOW + 3_000),
            "no retry: the fallback"
        );
    }
}
