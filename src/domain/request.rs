//! What a source asks the send service to do, and who asks.

use super::ids::DingUserId;
use super::message::Message;
use super::tenant::TenantId;
use super::username::Username;
use serde::Serialize;
use std::time::Duration;

/// Who the caller named; `send_dingtalk` may name DingTalk ids or mobiles directly.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "by", content = "values", rename_all = "snake_case")]
pub enum Receivers {
    Usernames(Vec<Username>),
    UserIds(Vec<DingUserId>),
    Mobiles(Vec<String>),
}

impl Receivers {
    pub fn len(&self) -> usize {
        match self {
            Self::Usernames(v) => v.len(),
            Self::UserIds(v) => v.len(),
            Self::Mobiles(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which paths a send may take: the channel the caller chose decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Robot users by webhook, people by single chat (`send_ding`).
    Any,
    /// People only (`send_dingtalk`).
    People,
    /// Robot users only (`send_dingbot`).
    Robots,
}

/// The channel a send goes by: recorded with the message, and what it may reach.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub channel: String,
    pub reach: Reach,
    /// How long the caller waits for the first attempt before the answer says `queued`.
    pub wait: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SendRequest {
    pub route: Route,
    pub receivers: Receivers,
    pub message: Message,
    pub idempotency_key: Option<String>,
    pub sender: Option<String>,
}

/// Who sends, as the answer and the delivery log record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The app that authenticated (`cli` for the command line).
    pub app_code: String,
    /// The person behind it (`bk_username`), when given.
    pub username: Option<String>,
    /// Ties the log lines of the request together.
    pub request_id: String,
    /// The BlueKing tenant it sends for (`X-Bk-Tenant-Id`), on multi-tenant platforms.
    pub tenant_id: Option<TenantId>,
}
