//! The delivery log as callers and admins read it: a message with each delivery's current
//! state and its attempt history (`deliveries show`, `GET /api/v1/messages/{id}`).

use super::store;
use crate::db::models::AttemptRow;
use crate::db::{DbConn, DbError};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct MessageView {
    pub message_id: String,
    pub app_code: String,
    pub channel: String,
    pub sender: Option<String>,
    pub request_id: String,
    /// The BlueKing tenant it was sent for (`X-Bk-Tenant-Id`), when given.
    pub tenant_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub created_at: i64,
    pub message: serde_json::Value,
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Serialize)]
pub struct DeliveryView {
    pub id: i64,
    pub receiver: String,
    pub kind: String,
    pub target: String,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<i64>,
    pub sent_at: Option<i64>,
    pub error: Option<String>,
    pub dingtalk_code: Option<String>,
    pub dingtalk_request_id: Option<String>,
    pub digest_id: Option<String>,
    /// Whether the person read it (single chat, within DingTalk's 24 h), or it was recalled;
    /// filled by `outbox::readback::fill_reads`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<crate::senders::sends::Reading>,
    pub history: Vec<AttemptRow>,
}

pub fn message_view(conn: &mut DbConn, id: &str) -> Result<Option<MessageView>, DbError> {
    let Some(m) = store::message(conn, id)? else {
        return Ok(None);
    };
    let rows = store::deliveries_of(conn, id)?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let attempts = store::attempts_of(conn, &ids)?;
    Ok(Some(MessageView {
        message_id: m.id,
        app_code: m.app_code,
        channel: m.channel,
        sender: m.sender,
        request_id: m.request_id,
        tenant_id: m.tenant_id,
        idempotency_key: m.idempotency_key,
        created_at: m.created_at,
        message: serde_json::from_str(&m.body).unwrap_or(serde_json::Value::Null),
        deliveries: rows
            .into_iter()
            .map(|r| DeliveryView {
                history: attempts
                    .iter()
                    .filter(|a| a.delivery_id == r.id)
                    .cloned()
                    .collect(),
                id: r.id,
                receiver: r.receiver,
                kind: r.kind,
                target: r.target,
                next_attempt_at: (r.status == store::QUEUED).then_some(r.next_attempt_at),
                status: r.status,
                attempts: r.attempts,
                sent_at: r.sent_at,
                error: r.last_error,
                dingtalk_code: r.dingtalk_code,
                dingtalk_request_id: r.dingtalk_request_id,
                digest_id: r.digest_id,
                read: None,
            })
            .collect(),
    }))
}
