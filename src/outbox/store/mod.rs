//! The outbox tables: a message and its deliveries are written in one transaction before
//! anything is sent; workers claim due deliveries with a lease and record each attempt.

mod accept;
mod claim;
mod log;
mod record;

pub use accept::*;
pub use claim::*;
pub use log::*;
pub use record::*;

use crate::db::models::DeliveryRow;
use crate::domain::delivery::{DeliveryKind, DeliveryStatus, Target};
use crate::domain::request::Caller;

// The stored forms, for the queries (the status column is text).
pub const QUEUED: &str = DeliveryStatus::Queued.as_str();
pub const SENT: &str = DeliveryStatus::Sent.as_str();
pub const FAILED: &str = DeliveryStatus::Failed.as_str();

pub struct NewDelivery {
    pub receiver: String,
    pub kind: DeliveryKind,
    /// `None` when it failed before it had one.
    pub target: Option<Target>,
    /// `Some(reason)`: failed before any attempt (unknown user, no telephone, …).
    pub failed: Option<String>,
    /// DingTalk's code, when DingTalk refused it before any attempt (a phone lookup).
    pub code: Option<String>,
    /// `Some((at, reason))`: its robot can't send before `at`; it is queued for then, not
    /// attempted now.
    pub wait: Option<(i64, String)>,
}

impl NewDelivery {
    pub fn attempt_now(&self) -> bool {
        self.failed.is_none() && self.wait.is_none()
    }
}

pub struct NewMessage {
    /// The app that sent it and the request that carried it.
    pub caller: Caller,
    pub idempotency_key: Option<String>,
    pub channel: String,
    pub sender: Option<String>,
    /// The validated message, as JSON.
    pub body: String,
    pub deliveries: Vec<NewDelivery>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    New(String),
    /// The same (app, idempotency key) was accepted before, within the window.
    Replay(String),
}

impl Accepted {
    pub fn id(&self) -> &str {
        match self {
            Self::New(id) | Self::Replay(id) => id,
        }
    }
}

/// An accepted message and its deliveries as stored.
pub type AcceptedMessage = (Accepted, Vec<DeliveryRow>);

/// What accepting a message needs besides the message.
#[derive(Debug, Clone)]
pub struct Acceptance {
    pub now: i64,
    pub give_up_at: i64,
    pub idempotency_window_ms: i64,
    /// The claim token and lease end the deliveries are created with (the accepting process
    /// attempts them at once).
    pub claim: (String, i64),
}

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// `digest_id`: the digest send that carried it, when merged with others; `sent_by`: the
    /// member of a robot pool that sent it (kept in the attempt's note).
    Sent {
        request_id: Option<String>,
        digest_id: Option<String>,
        sent_by: Option<String>,
    },
    Retry {
        at: i64,
        code: String,
        error: String,
        parts_sent: Option<i32>,
    },
    Failed {
        code: Option<String>,
        error: String,
    },
    /// Not attempted (or only partly, for a message in parts): it waits for a send slot or a
    /// pause DingTalk imposed. Not counted as an attempt.
    Deferred {
        at: i64,
        reason: String,
        parts_sent: Option<i32>,
    },
}

impl Outcome {
    /// How the delivery log and the metrics name it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sent { .. } => "sent",
            Self::Retry { .. } => "retry",
            Self::Failed { .. } => "failed",
            Self::Deferred { .. } => "deferred",
        }
    }
}

/// Rows recorded in one statement at most (well under SQLite's limit on parameters).
const RECORD_CHUNK: usize = 400;

/// A row's id, as raw SQL answers it.
#[derive(diesel::QueryableByName)]
struct IdRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

pub fn claim_of(row: &DeliveryRow) -> &str {
    row.claimed_by.as_deref().unwrap_or("")
}
