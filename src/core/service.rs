//! [`SendService`]: accepts a send durably and answers what happened per receiver.

use super::plan::{self, Directory};
use super::receipt::Receipt;
use crate::channels::settings::DeliverySettings;
use crate::db::models::DeliveryRow;
use crate::db::{within, DbError};
use crate::directory::lookup::UserLookup;
use crate::domain::delivery::DeliveryStatus;
use crate::domain::ids::{ClaimToken, MessageId};
use crate::domain::request::{Caller, SendRequest};
use crate::outbox::engine::Batch;
use crate::outbox::store::{self, Accepted, NewMessage, Outcome};
use crate::outbox::Outbox;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Nothing was stored: the caller should retry later.
    #[error("{0}")]
    QueueFull(String),
    #[error("storage: {0}")]
    Storage(#[from] DbError),
}

/// What a source read already with its other reads (one database read per request).
pub struct Known {
    /// The delivery settings, from the registry as read for the request.
    pub settings: DeliverySettings,
    /// The directory entries of the usernames named, if read.
    pub directory: Option<Directory>,
    /// When the caller stops waiting (the ESB's time-out of the component, the webhook's):
    /// storage that has not answered by then is answered as unavailable. The route's wait
    /// should end before it. `None`: storage is waited for.
    pub deadline: Option<Instant>,
}

pub struct SendService {
    outbox: Arc<Outbox>,
    /// An idempotency key is honoured for this long.
    idempotency_window: Duration,
    /// Where usernames the directory does not know are looked up (bk-user), if anywhere.
    lookup: Option<Arc<dyn UserLookup>>,
}

impl SendService {
    pub fn new(outbox: Arc<Outbox>, idempotency_window: Duration) -> Self {
        Self {
            outbox,
            idempotency_window,
            lookup: None,
        }
    }

    /// The engine it hands messages to (the delivery log asks its senders for read status).
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Looks usernames the directory does not know up in `lookup` before refusing them.
    pub fn with_lookup(self, lookup: Option<Arc<dyn UserLookup>>) -> Self {
        Self { lookup, ..self }
    }

    /// [`Self::submit_with`], reading the delivery settings first.
    pub async fn submit(
        &self,
        request: SendRequest,
        caller: &Caller,
    ) -> Result<Receipt, SendError> {
        let settings = self.outbox.db.run(DeliverySettings::load).await?;
        let known = Known {
            settings,
            directory: None,
            deadline: None,
        };
        self.submit_with(request, caller, known).await
    }

    /// Resolves the receivers, persists the message with one delivery per target, hands it to
    /// the outbox and waits (up to the route's wait) for the first attempt; then answers with
    /// what is known per receiver. Storage that does not answer by the caller's deadline is
    /// an error naming it, which says whether the message may have been stored.
    #[tracing::instrument(skip_all, fields(channel = %request.route.channel, app = %caller.app_code))]
    pub async fn submit_with(
        &self,
        request: SendRequest,
        caller: &Caller,
        known: Known,
    ) -> Result<Receipt, SendError> {
        let outbox = &*self.outbox;
        // Lookups and the first attempt end by the route's wait; the source leaves storage the
        // rest of its caller's wait, if the caller has one.
        let answer_by = known.deadline;
        let waited = Instant::now() + request.route.wait;
        let deadline = answer_by.map_or(waited, |by| waited.min(by));
        let window_ms = self.idempotency_window.as_millis() as i64;
        if let Some(key) = request.idempotency_key.clone() {
            let (app, since) = (caller.app_code.clone(), outbox.clock.now_ms() - window_ms);
            let seen = outbox
                .db
                .run_by(answer_by, move |conn| {
                    store::find_recent_by_key(conn, &app, &key, since)
                })
                .await?;
            if let Some(id) = seen {
                return self.current(MessageId::from_stored(id), true).await;
            }
        }

        let plan = within(
            answer_by,
            plan::plan(
                outbox,
                request.route.reach,
                &request.receivers,
                known.settings,
                known.directory,
                self.lookup.as_deref(),
                deadline,
            ),
        )
        .await?;
        let queued = plan
            .deliveries
            .iter()
            .filter(|d| d.failed.is_none())
            .count();
        outbox
            .queue_room(queued, answer_by)
            .await
            .map_err(SendError::QueueFull)?;
        let now = outbox.clock.now_ms();
        let give_up_at = now + outbox.policy.retry.max_age.as_millis() as i64;
        let claim = (
            ClaimToken::new().as_str().to_owned(),
            now + outbox.lease.as_millis() as i64,
        );
        let message = request.message;
        let waiting = plan.deliveries.iter().filter(|d| d.wait.is_some()).count();
        let new = NewMessage {
            caller: caller.clone(),
            idempotency_key: request.idempotency_key,
            channel: request.route.channel.clone(),
            sender: request.sender.or_else(|| caller.username.clone()),
            body: serde_json::to_string(&message).expect("a message serializes"),
            deliveries: plan.deliveries,
        };
        let acceptance = store::Acceptance {
            now,
            give_up_at,
            idempotency_window_ms: window_ms,
            claim,
        };
        let (accepted, mut rows) = outbox.accept(new, acceptance, answer_by).await?;
        let id = match accepted {
            Accepted::New(id) => MessageId::from_stored(id),
            Accepted::Replay(id) => {
                return Ok(Receipt::from_rows(MessageId::from_stored(id), &rows, true))
            }
        };
        let claimed: Vec<DeliveryRow> = rows
            .iter()
            .filter(|r| r.claimed_by.is_some())
            .cloned()
            .collect();
        tracing::info!(message_id = %id, deliveries = rows.len(), "message accepted");
        outbox.metrics.deferred("robot", waiting as u64);
        if claimed.is_empty() {
            return Ok(Receipt::from_rows(id, &rows, false));
        }
        let batch = Batch {
            rows: claimed,
            messages: HashMap::from([(id.to_string(), Some(message))]),
            robots: plan.robots,
            settings: plan.settings,
        };
        if let Some(first_attempt) = outbox.submit(batch).await {
            if let Ok(Ok(outcomes)) = tokio::time::timeout_at(deadline, first_attempt).await {
                for (delivery, outcome) in outcomes {
                    if let Some(row) = rows.iter_mut().find(|r| r.id == delivery) {
                        apply(row, &outcome);
                    }
                }
            }
        }
        Ok(Receipt::from_rows(id, &rows, false))
    }

    /// A message's current state per receiver.
    pub async fn current(&self, id: MessageId, replay: bool) -> Result<Receipt, SendError> {
        let key = id.to_string();
        let rows = self
            .outbox
            .db
            .run(move |conn| store::deliveries_of(conn, &key))
            .await?;
        Ok(Receipt::from_rows(id, &rows, replay))
    }
}

/// The row as the recorded outcome left it, so the answer needs no second read.
fn apply(row: &mut DeliveryRow, outcome: &Outcome) {
    match outcome {
        Outcome::Sent { .. } => {
            row.status = DeliveryStatus::Sent.as_str().into();
            row.last_error = None;
        }
        Outcome::Retry { error, code, .. } => {
            row.last_error = Some(error.clone());
            row.dingtalk_code = Some(code.clone());
        }
        Outcome::Failed { error, code } => {
            row.status = DeliveryStatus::Failed.as_str().into();
            row.last_error = Some(error.clone());
            row.dingtalk_code = code.clone();
        }
        Outcome::Deferred { reason, .. } => {
            row.last_error = Some(reason.clone());
            return; // not an attempt
        }
    }
    row.attempts += 1;
}
