//! The Prometheus Alertmanager source: its webhook (`POST /api/v1/alertmanager/{receivers}`)
//! sent as markdown through `send_ding` to the usernames in the path. Answers follow
//! Alertmanager's retry rules: 2xx once stored, 5xx to retry, 4xx only when no retry can help.

pub mod payload;
pub mod render;
pub mod routes;
pub mod templated;
pub mod time;

use crate::clock::{SharedClock, Zone};
use crate::core::Receipt;
use crate::db::Db;
use crate::domain::message::{Message, MsgKey};
use crate::domain::request::{Receivers, Route, SendRequest};
use crate::domain::username::Username;
use crate::templates::Template;
use actix_web::http::StatusCode;
use payload::{Notification, Refusal};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// What the Alertmanager route shares (the send service is injected beside it).
pub struct Alertmanager {
    pub db: Db,
    pub clock: SharedClock,
    /// Where the message's times are shown (`DING_CHANNEL_UTC_OFFSET`).
    pub zone: Zone,
}

/// A notification, the receivers named in the path, and the answer Alertmanager reads.
pub struct Webhook {
    pub zone: Zone,
    /// When the notification arrived (Unix milliseconds): the dedup key's time slot.
    pub now_ms: i64,
    /// The template the URL names (`?template=NAME`), and the payload as posted, its context.
    pub template: Option<(Template, Value)>,
}

impl super::Source for Webhook {
    type Input<'a> = (Route, &'a Notification, &'a [Username]);
    type Error = Refusal;
    type Answer = (StatusCode, Value);

    fn request(
        &self,
        (route, notification, receivers): Self::Input<'_>,
    ) -> Result<SendRequest, Self::Error> {
        let template = self.template.as_ref();
        let (title, content) = templated::render(
            template.map(|(t, _)| t),
            template.map_or(&Value::Null, |(_, raw)| raw),
            notification,
            &self.zone,
        );
        Ok(SendRequest {
            route,
            receivers: Receivers::Usernames(receivers.to_vec()),
            message: Message {
                msg_key: MsgKey::Markdown,
                title: Some(title),
                content,
                url: None,
                pic_url: None,
                at_mobiles: Vec::new(),
                at_all: false,
            },
            idempotency_key: Some(dedup_key(notification, self.now_ms)),
            sender: None,
        })
    }

    /// Stored is success: a receiver that failed (unknown user, DingTalk refused) is reported
    /// but retrying the notification cannot change it.
    fn answer(&self, receipt: &Receipt) -> Self::Answer {
        let deliveries: Vec<Value> = receipt
            .receivers
            .iter()
            .map(|r| {
                json!({
                    "receiver": r.receiver,
                    "kind": r.kind.as_str(),
                    "status": r.status.as_str(),
                    "error": r.error,
                })
            })
            .collect();
        (
            StatusCode::OK,
            json!({
                "status": "accepted",
                "message_id": receipt.message_id.as_str(),
                "idempotent_replay": receipt.replay,
                "summary": receipt.summary(),
                "deliveries": deliveries,
            }),
        )
    }
}

/// How long copies of one notification are taken as one. The copies of an HA pair arrive
/// seconds apart and retries within minutes; Alertmanager's `repeat_interval` reminder (hours
/// by default) carries the same payload and must still be sent, so the key holds the time slot.
const DEDUP_SLOT_MS: i64 = 10 * 60 * 1000;

/// The same group notification (from both members of an HA pair, or retried) gets the same
/// key: the group, its status, each alert's state and the time slot it arrived in.
pub fn dedup_key(n: &Notification, now_ms: i64) -> String {
    let mut alerts: Vec<(&str, &str)> = n
        .alerts
        .iter()
        .map(|a| (a.fingerprint.as_str(), a.status.as_str()))
        .collect();
    alerts.sort_unstable();
    let mut h = Sha256::new();
    h.update(now_ms.div_euclid(DEDUP_SLOT_MS).to_be_bytes());
    h.update(n.group_key.as_bytes());
    h.update([0]);
    h.update(n.status.as_str().as_bytes());
    for (fp, status) in alerts {
        h.update([0]);
        h.update(fp.as_bytes());
        h.update([1]);
        h.update(status.as_bytes());
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("alertmanager:{hex}")
}
