//! The outbound seam: one sender per DingTalk path, behind [`Sender`]. The outbox engine claims
//! deliveries, hands each sender the ones of its kind and records what the sender says of each
//! ([`Verdict`]); retry timing and giving up are the engine's. A sender knows its path: how to
//! group, pace, render and call DingTalk, and what each answer means for a delivery.
//!
//! To add a path (an upstream CMSI): implement [`Sender`] in a file of its
//! own and map its `DeliveryKind` to it in `Outbox::sender` (src/outbox/engine.rs), built in `Outbox::from_settings`.

pub mod app_robot;
pub mod digest;
pub mod markdown;
pub mod render;
pub mod robot;
pub mod sends;
pub mod split;
pub mod work_notice;

use crate::channels::settings::DeliverySettings;
use crate::db::models::DeliveryRow;
use crate::dingtalk::egress::Scope;
use crate::dingtalk::DingTalkError;
use crate::directory::profile::Profile;
use crate::domain::message::Message;
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::time::Duration;

pub use app_robot::AppRobotSender;
pub use robot::RobotSender;
pub use work_notice::WorkNoticeSender;

/// What a sender says of one delivery after its turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// DingTalk took it (`request_id`: its processQueryKey; `digest_id`: the digest that
    /// carried it with others; `sent_by`: the member of a robot pool that sent it).
    Sent {
        request_id: Option<String>,
        digest_id: Option<String>,
        sent_by: Option<String>,
    },
    /// Retrying cannot help; `error` says what an admin must change.
    Failed { code: Option<String>, error: String },
    /// Worth another attempt, after the engine's backoff and not before `at_least`.
    Retry {
        code: String,
        error: String,
        at_least: Option<Duration>,
        /// Parts of a message in parts that reached the receiver.
        parts_sent: Option<i32>,
    },
    /// Not attempted now (pacing, a pause, a budget, the process stopping): no attempt is
    /// counted. `held`: DingTalk's hold on the egress it waits for (lifted early by `ding-channel
    /// dingtalk resume`).
    Wait {
        until: Until,
        reason: String,
        parts_sent: Option<i32>,
        held: Option<Scope>,
    },
}

impl Verdict {
    pub fn failed(code: Option<String>, error: impl Into<String>) -> Self {
        Self::Failed {
            code,
            error: error.into(),
        }
    }

    pub fn wait(at: i64, reason: impl Into<String>, parts_sent: Option<i32>) -> Self {
        Self::Wait {
            until: Until::At(at),
            reason: reason.into(),
            parts_sent,
            held: None,
        }
    }

    /// The same verdict, with how many parts of the message reached the receiver.
    pub fn with_progress(mut self, parts: Option<i32>) -> Self {
        if let Self::Retry { parts_sent, .. } | Self::Wait { parts_sent, .. } = &mut self {
            *parts_sent = parts;
        }
        self
    }
}

/// The longest a held delivery waits before it is looked at again: a hold may be lifted early
/// (a quota raised) in a way this process missed.
const HELD_RECHECK_MS: i64 = 300_000;
/// The wait of a hold that names no end.
const HELD_FLOOR_MS: i64 = 60_000;
/// The most that held deliveries are spread by after a hold ends (at most a tenth of the wait),
/// so they don't all go at its last millisecond.
const HELD_SPREAD_MS: i64 = 30_000;

/// A delivery DingTalk's hold on the egress (`e`: its anti-abuse pause, the organisation's
/// monthly quota) keeps from going now: it waits for the hold to end, no attempt counted, but
/// not past its maximum age, where it fails with the hold's reason — never before it, as a
/// hold may be lifted early (a quota raised).
pub fn held(row: &DeliveryRow, e: &DingTalkError, now: i64) -> Verdict {
    held_spread(row, e, now, crate::clock::jitter_unit())
}

/// [`held`], spread by `unit` ∈ [0, 1) of the allowed spread.
fn held_spread(row: &DeliveryRow, e: &DingTalkError, now: i64, unit: f64) -> Verdict {
    if now >= row.give_up_at {
        return Verdict::failed(
            Some(e.code.clone()),
            format!("gave up at its maximum age (DING_CHANNEL_MAX_AGE_S): {e}"),
        );
    }
    let wait = e
        .retry_after()
        .map_or(HELD_FLOOR_MS, |d| d.as_millis() as i64)
        .min(HELD_RECHECK_MS);
    let spread = ((wait / 10).min(HELD_SPREAD_MS) as f64 * unit) as i64;
    Verdict::Wait {
        until: Until::At((now + wait + spread).min(row.give_up_at)),
        reason: e.to_string(),
        parts_sent: None,
        held: Scope::of(e),
    }
}

/// Every row [`held`] by `e`.
pub fn hold_all(rows: Vec<DeliveryRow>, e: &DingTalkError, now: i64) -> Verdicts {
    rows.into_iter()
        .map(|r| {
            let v = held(&r, e, now);
            (r, v)
        })
        .collect()
}

/// When a waiting delivery is due again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    At(i64),
    /// With the retry of the deliveries of the same task that failed (what waits for one
    /// robot goes out together), or at `or` when none of them is retried (all gave up).
    TheRetry {
        or: i64,
    },
}

/// A sender's outcome for each delivery it was given.
pub type Verdicts = Vec<(DeliveryRow, Verdict)>;

/// The sends of a batch, as independent tasks.
pub type Tasks<'a> = Vec<BoxFuture<'a, Verdicts>>;

/// `rows` grouped by `key` (a robot, a message), in key order.
pub fn group_by(
    rows: Vec<DeliveryRow>,
    key: impl Fn(&DeliveryRow) -> &str,
) -> std::collections::BTreeMap<String, Vec<DeliveryRow>> {
    let mut groups = std::collections::BTreeMap::<String, Vec<DeliveryRow>>::new();
    for row in rows {
        groups.entry(key(&row).to_owned()).or_default().push(row);
    }
    groups
}

/// What a sender may ask of the batch it works for.
pub trait Gate: Send + Sync {
    /// Why no new DingTalk call may start now, if it may not (the process is stopping, or
    /// the batch's lease is too short for another round of calls).
    fn closed(&self) -> Option<&'static str>;

    /// Claims, under the batch's lease, the other deliveries due for `target` (its stored
    /// form), each with its message (`None`: stored but unreadable).
    fn claim_more<'a>(
        &'a self,
        target: &'a str,
    ) -> BoxFuture<'a, Vec<(DeliveryRow, Option<Message>)>>;
}

/// One DingTalk path.
pub trait Sender: Send + Sync {
    /// The sends that deliver `rows` (all of this sender's kind, their messages in `work`),
    /// as tasks the engine runs together, recording each task's verdicts as it finishes.
    fn tasks<'a>(&'a self, rows: Vec<DeliveryRow>, work: &Work, gate: &'a dyn Gate) -> Tasks<'a>;
}

/// What the deliveries of a batch need besides their rows, loaded once.
#[derive(Clone)]
pub struct Work {
    /// Message id → the message.
    pub messages: HashMap<String, Message>,
    /// Robot username → profile.
    pub robots: HashMap<String, Profile>,
    pub settings: std::sync::Arc<DeliverySettings>,
}

/// The error code of a delivery this server is not set up to make (kept with the delivery
/// where DingTalk's own codes are).
pub const NOT_CONFIGURED: &str = "not_configured";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dingtalk::error::{classify_oapi, Api, Context};

    #[test]
    fn a_held_delivery_waits_for_the_hold_but_fails_only_at_its_maximum_age() {
        let now = 1_700_000_000_000;
        let row = DeliveryRow {
            id: 1,
            message_id: "m".into(),
            receiver: "alice".into(),
            kind: "user".into(),
            target: "alice-ding".into(),
            status: "queued".into(),
            attempts: 0,
            next_attempt_at: now,
            give_up_at: now + 60_000,
            sent_at: None,
            parts_sent: 0,
            claimed_until: None,
            claimed_by: None,
            last_error: None,
            dingtalk_code: None,
            dingtalk_request_id: None,
            digest_id: None,
            created_at: now,
            updated_at: now,
        };
        let mut e = classify_oapi(Api::BatchSend, 90020, "quota", Context::default());
        let at = |v: Verdict| match v {
            Verdict::Wait {
                until: Until::At(at),
                held,
                ..
            } => {
                assert_eq!(held, Some(Scope::Quota), "marked for `dingtalk resume`");
                at - now
            }
            other => panic!("{other:?}"),
        };
        let far = DeliveryRow {
            give_up_at: now + 86_400_000,
            ..row.clone()
        };
        assert_eq!(
            at(held_spread(&far, &e, now, 0.0)),
            HELD_FLOOR_MS,
            "a hold naming no end is not a wait of nothing"
        );
        e.class = crate::dingtalk::Class::Retryable {
            after: Some(Duration::from_secs(10)),
        };
        assert_eq!(at(held_spread(&row, &e, now, 0.0)), 10_000);
        assert_eq!(
            at(held_spread(&row, &e, now, 0.999)),
            10_999,
            "spread by a tenth of the wait"
        );
        e.class = crate::dingtalk::Class::Retryable {
            after: Some(Duration::from_secs(3600)),
        };
        assert_eq!(at(held(&row, &e, now)), 60_000, "not past its maximum age");
        assert_eq!(
            at(held_spread(&far, &e, now, 0.0)),
            HELD_RECHECK_MS,
            "a long hold is looked at again"
        );
        assert_eq!(
            at(held_spread(&far, &e, now, 0.999)),
            HELD_RECHECK_MS + 29_970,
            "spread by 30 s at most"
        );
        match held(&row, &e, now + 60_000) {
            Verdict::Failed { code, error } => {
                assert_eq!(code.as_deref(), Some("90020"));
                assert!(error.starts_with("gave up at its maximum age (DING_CHANNEL_MAX_AGE_S): the organisation's monthly"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }
}
