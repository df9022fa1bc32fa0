//! Rows as stored.

use super::schema::*;
use crate::domain::delivery::{DeliveryKind, DeliveryStatus};
use diesel::prelude::*;

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = apps)]
pub struct AppRow {
    pub code: String,
    pub secret_hash: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = app_tokens)]
pub struct AppTokenRow {
    pub token_hash: String,
    pub app_code: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = channels)]
pub struct ChannelRow {
    pub name: String,
    pub path: String,
    pub method: String,
    pub component: String,
    pub label: String,
    pub label_en: String,
    pub timeout_s: i32,
    pub is_active: bool,
    pub is_hidden: bool,
    pub comp_conf: String,
    pub admin_set: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = users, treat_none_as_null = true)]
pub struct UserRow {
    pub username: String,
    pub display_name: Option<String>,
    pub telephone: Option<String>,
    pub country_code: String,
    pub email: Option<String>,
    pub wx_userid: Option<String>,
    pub qq: Option<String>,
    pub extras: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// A `ProfileSource`'s text.
    pub source: String,
    /// bk-user's `status` / `staff_status`; NULL for other sources.
    pub bk_status: Option<String>,
    pub bk_staff_status: Option<String>,
    pub gone_since: Option<i64>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = messages)]
pub struct MessageRow {
    pub id: String,
    pub app_code: String,
    pub idempotency_key: Option<String>,
    pub channel: String,
    pub sender: Option<String>,
    pub request_id: String,
    pub body: String,
    pub created_at: i64,
    pub tenant_id: Option<String>,
}

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = deliveries)]
pub struct DeliveryRow {
    pub id: i64,
    pub message_id: String,
    pub receiver: String,
    pub kind: String,
    pub target: String,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: i64,
    pub give_up_at: i64,
    pub sent_at: Option<i64>,
    pub parts_sent: i32,
    pub claimed_until: Option<i64>,
    pub claimed_by: Option<String>,
    pub last_error: Option<String>,
    pub dingtalk_code: Option<String>,
    pub dingtalk_request_id: Option<String>,
    pub digest_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Also how the delivery log shows an attempt.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = delivery_attempts)]
pub struct AttemptRow {
    #[serde(skip)]
    pub id: i64,
    #[serde(skip)]
    pub delivery_id: i64,
    pub attempt: i32,
    pub at: i64,
    pub outcome: String,
    pub code: Option<String>,
    pub error: Option<String>,
    pub dingtalk_request_id: Option<String>,
}

impl DeliveryRow {
    /// `None` for a kind this version does not know (written by a newer one).
    pub fn delivery_kind(&self) -> Option<DeliveryKind> {
        DeliveryKind::parse(&self.kind)
    }

    pub fn delivery_status(&self) -> Option<DeliveryStatus> {
        DeliveryStatus::parse(&self.status)
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = templates)]
pub struct TemplateRow {
    pub name: String,
    pub title: String,
    pub body: String,
    pub updated_at: i64,
}

/// A DingTalk send that reached a person: what read status and recall ask about.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = dingtalk_sends)]
pub struct SendRow {
    pub delivery_id: i64,
    pub send_key: String,
    pub path: String,
    pub user_id: String,
    pub sent_at: i64,
    pub read_at: Option<i64>,
    pub recalled_at: Option<i64>,
}
