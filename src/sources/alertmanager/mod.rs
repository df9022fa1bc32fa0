//! The Prometheus Alertmanager source: its webhook (`POST /api/v1/alertmanager/{receivers}`)
//! sent as markdown through `send_ding` to the usernames in the path, or where the routes by
//! label (`routing.rs`) send each alert. Answers follow
//! Alertmanager's retry rules: 2xx once stored, 5xx to retry, 4xx only when no retry can help.

pub mod mentions;
pub mod payload;
pub mod render;
pub mod routes;
pub mod routing;
pub mod templated;
pub mod time;

use crate::clock::{SharedClock, Zone};
use crate::core::Receipt;
use crate::db::Db;
use crate::domain::message::{Message, MsgKey};
use crate::domain::request::{Receivers, Route, SendRequest};
use crate::templates::Template;
use actix_web::http::StatusCode;
use payload::{Notification, Refusal};
use routing::{Dispatch, RouteTable};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// What the webhook routes (Alertmanager's and Grafana's) share; the send service is injected
/// beside it.
pub struct Alertmanager {
    pub db: Db,
    pub clock: SharedClock,
    /// Where the message's times are shown (`DING_CHANNEL_UTC_OFFSET`).
    pub zone: Zone,
    /// The routes by label (`DING_CHANNEL_ALERT_ROUTES`), swapped on reload.
    pub routes: Arc<RouteTable>,
    /// The labels naming who a notification mentions (`DING_CHANNEL_MENTION_KEYS`).
    pub mention_keys: Vec<String>,
    /// Every request is answered within this long (`DING_CHANNEL_WEBHOOK_TIMEOUT_MS`).
    pub timeout: std::time::Duration,
}

/// A notification, the receivers named in the path, and the answer Alertmanager reads.
pub struct Webhook {
    pub zone: Zone,
    /// When the notification arrived (Unix milliseconds): the dedup key's time slot.
    pub now_ms: i64,
    /// The payload as posted: what a template sees (`Null` when no template is used).
    pub raw: Value,
}

impl super::Source for Webhook {
    /// One dispatch of the notification (all of it without routes), and the template it is
    /// rendered in (the route's, or the URL's `?template=NAME`).
    type Input<'a> = (Route, &'a Dispatch, Option<&'a Template>);
    type Error = Refusal;
    type Answer = (StatusCode, Value);

    fn request(
        &self,
        (route, dispatch, template): Self::Input<'_>,
    ) -> Result<SendRequest, Self::Error> {
        let (title, content) =
            templated::render(template, &self.raw, &dispatch.notification, &self.zone);
        Ok(SendRequest {
            route,
            receivers: Receivers::Usernames(dispatch.receivers.clone()),
            message: Message {
                msg_key: MsgKey::Markdown,
                title: Some(title),
                content,
                url: None,
                pic_url: None,
                at_mobiles: Vec::new(),
                at_user_ids: Vec::new(),
                at_all: false,
            },
            idempotency_key: Some(dispatch.dedup_key(self.now_ms)),
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
pub const DEDUP_WINDOW_MS: i64 = 10 * 60 * 1000;

/// The same group notification (from both members of an HA pair, or retried) gets the same
/// key: the group, its status, each alert's state and the time slot it arrived in; for
/// Grafana also the organisation, as each has its own group keys.
pub fn dedup_key(n: &Notification, now_ms: i64) -> String {
    let mut alerts: Vec<(&str, &str)> = n
        .alerts
        .iter()
        .map(|a| (a.fingerprint.as_str(), a.status.as_str()))
        .collect();
    alerts.sort_unstable();
    let mut h = Sha256::new();
    h.update(now_ms.div_euclid(DEDUP_WINDOW_MS).to_be_bytes());
    if let Some(g) = &n.grafana {
        h.update(g.org_id.to_be_bytes());
    }
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
    let source = if n.grafana.is_some() {
        "grafana"
    } else {
        "alertmanager"
    };
    format!("{source}:{hex}")
}
