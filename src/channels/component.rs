//! The components bound to channel paths: what each channel does with validated arguments.

use super::manifest::Component;
use super::registry::Channel;
use super::send;
use crate::db::models::DeliveryRow;
use crate::dispatch;
use crate::esb::envelope::{Code, Reply};
use crate::esb::error::EsbError;
use crate::esb::params::Params;
use crate::outbox::store::{self, Accepted, NewMessage, Outcome, FAILED, QUEUED, SENT};
use crate::outbox::worker::{
    Batch, DeliverySettings, MOBILE_NOT_FOUND, SINGLE_CHAT_NOT_CONFIGURED,
};
use crate::outbox::Outbox;
use crate::startup::AppState;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// What a component knows about the request besides its arguments.
pub struct Context<'a> {
    pub state: &'a AppState,
    pub app_code: &'a str,
    /// `bk_username` of the caller, when given.
    pub username: Option<&'a str>,
    pub idempotency_header: Option<&'a str>,
    pub request_id: &'a str,
    /// The registry as read for this request.
    pub channels: &'a [Channel],
    /// The directory entries of the usernames named, read with the registry.
    pub directory: Option<dispatch::Directory>,
}

/// Who sends, as the answer and the delivery log record it.
pub struct Caller<'a> {
    pub app_code: &'a str,
    /// `bk_username`, when given.
    pub username: Option<&'a str>,
    pub request_id: &'a str,
    /// Read already for the receivers, or `None` (read when planning).
    pub directory: Option<dispatch::Directory>,
}

impl Context<'_> {
    fn caller(&mut self) -> Caller<'_> {
        Caller {
            app_code: self.app_code,
            username: self.username,
            request_id: self.request_id,
            directory: self.directory.take(),
        }
    }
}

/// Runs the channel's component.
pub async fn handle(
    mut ctx: Context<'_>,
    channel: &Channel,
    params: &Params,
) -> Result<Reply, EsbError> {
    match channel.component {
        Component::GetMsgType => get_msg_type(&ctx).await,
        Component::SendMsg => {
            let target = msg_type_channel(&ctx, params)?;
            let request = send::parse(target.component, params, ctx.idempotency_header)?;
            send(
                &ctx.state.outbox,
                ctx.channels,
                &target,
                request,
                ctx.caller(),
            )
            .await
        }
        Component::SendDing | Component::SendDingtalk | Component::SendDingbot => {
            let request = send::parse(channel.component, params, ctx.idempotency_header)?;
            send(
                &ctx.state.outbox,
                ctx.channels,
                channel,
                request,
                ctx.caller(),
            )
            .await
        }
    }
}

/// Resolves the receivers, persists the message with one delivery per target, hands it to the
/// workers and waits (up to the channel's timeout) for the first attempt; then answers with
/// what is known per receiver. Used by the HTTP API and the `send` command alike.
pub async fn send(
    outbox: &Outbox,
    channels: &[Channel],
    channel: &Channel,
    request: send::SendRequest,
    caller: Caller<'_>,
) -> Result<Reply, EsbError> {
    let Caller {
        app_code,
        username,
        request_id,
        directory,
    } = caller;
    let deadline = Instant::now() + Duration::from_secs(channel.timeout_s.max(1) as u64);
    if let Some(key) = request.idempotency_key.clone() {
        let (app, since) = (
            app_code.to_owned(),
            outbox.clock.now_ms() - outbox.idempotency_window.as_millis() as i64,
        );
        let seen = outbox
            .db
            .run(move |conn| Ok::<_, EsbError>(store::find_recent_by_key(conn, &app, &key, since)?))
            .await?;
        if let Some(id) = seen {
            return answer(outbox, &id, true).await;
        }
    }

    let settings = DeliverySettings::from_registry(channels);
    let plan = dispatch::plan(
        outbox,
        channel.component,
        &request.receivers,
        settings,
        directory,
        deadline,
    )
    .await?;
    let queued = plan
        .deliveries
        .iter()
        .filter(|d| d.failed.is_none())
        .count();
    outbox
        .queue_room(queued)
        .await
        .map_err(EsbError::Throttled)?;
    let now = outbox.clock.now_ms();
    let give_up_at = now + outbox.policy.max_age.as_millis() as i64;
    let claim = (store::new_claim(), now + outbox.lease.as_millis() as i64);
    let message = request.message;
    let waiting = plan.deliveries.iter().filter(|d| d.wait.is_some()).count();
    let new = NewMessage {
        app_code: app_code.to_owned(),
        idempotency_key: request.idempotency_key,
        channel: channel.name.clone(),
        sender: request.sender.or(username.map(str::to_owned)),
        request_id: request_id.to_owned(),
        body: serde_json::to_string(&message).expect("a message serializes"),
        deliveries: plan.deliveries,
    };
    let acceptance = store::Acceptance {
        now,
        give_up_at,
        idempotency_window_ms: outbox.idempotency_window.as_millis() as i64,
        claim,
    };
    let (accepted, mut rows) = outbox.accept(new, acceptance).await?;
    let Accepted::New(id) = &accepted else {
        return Ok(reply(accepted.id(), &rows, true));
    };
    let claimed: Vec<DeliveryRow> = rows
        .iter()
        .filter(|r| r.claimed_by.is_some())
        .cloned()
        .collect();
    tracing::info!(message_id = %id, channel = %channel.name, deliveries = rows.len(), "message accepted");
    outbox.metrics.deferred("robot", waiting as u64);
    if claimed.is_empty() {
        return Ok(reply(id, &rows, false));
    }
    let batch = Batch {
        rows: claimed,
        messages: HashMap::from([(id.clone(), Some(message))]),
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
    Ok(reply(id, &rows, false))
}

/// The row as the recorded outcome left it, so the answer needs no second read.
fn apply(row: &mut DeliveryRow, outcome: &Outcome) {
    match outcome {
        Outcome::Sent { .. } => {
            row.status = SENT.into();
            row.last_error = None;
        }
        Outcome::Retry { error, .. } => row.last_error = Some(error.clone()),
        Outcome::Failed { error, .. } => {
            row.status = FAILED.into();
            row.last_error = Some(error.clone());
        }
        Outcome::Deferred { reason, .. } => {
            row.last_error = Some(reason.clone());
            return; // not an attempt
        }
    }
    row.attempts += 1;
}

/// The per-receiver answer for a message, from its deliveries' current state.
async fn answer(outbox: &Outbox, message_id: &str, replay: bool) -> Result<Reply, EsbError> {
    let id = message_id.to_owned();
    let rows = outbox
        .db
        .run(move |conn| Ok::<_, EsbError>(store::deliveries_of(conn, &id)?))
        .await?;
    Ok(reply(message_id, &rows, replay))
}

fn reply(message_id: &str, rows: &[DeliveryRow], replay: bool) -> Reply {
    let failed: Vec<&DeliveryRow> = rows.iter().filter(|r| r.status == FAILED).collect();
    let count = |s: &str| rows.iter().filter(|r| r.status == s).count();
    let (sent, queued) = (count(SENT), count(QUEUED));
    let reasons = failed
        .iter()
        .map(|r| {
            format!(
                "{} ({})",
                r.receiver,
                r.last_error.as_deref().unwrap_or("failed")
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut data = json!({
        "message_id": message_id,
        "deliveries": rows.iter().map(|r| json!({
            "receiver": r.receiver,
            "kind": r.kind,
            "status": r.status,
            "error": r.last_error,
        })).collect::<Vec<_>>(),
        "username_check": {"invalid": failed.iter().map(|r| r.receiver.as_str()).collect::<Vec<_>>()},
    });
    if replay {
        data["idempotent_replay"] = Value::Bool(true);
    }
    let (code, message) = if !rows.is_empty() && failed.len() == rows.len() {
        // Single chat is not set up; or DingTalk said no (to a send, or to a phone lookup) but
        // for not knowing the person; else the receivers are unknown.
        let refused_by_dingtalk = |r: &&DeliveryRow| {
            (r.attempts > 0 || r.dingtalk_code.is_some())
                && r.dingtalk_code.as_deref() != Some(MOBILE_NOT_FOUND)
        };
        let code = if failed
            .iter()
            .any(|r| r.last_error.as_deref() == Some(SINGLE_CHAT_NOT_CONFIGURED))
        {
            Code::Generic
        } else if failed.iter().any(refused_by_dingtalk) {
            Code::ThirdParty
        } else {
            Code::UnknownReceivers
        };
        (
            code,
            format!("all {} receiver(s) failed: {reasons}", rows.len()),
        )
    } else if !failed.is_empty() {
        (
            Code::Ok,
            format!(
                "{} of {} receivers failed: {reasons}",
                failed.len(),
                rows.len()
            ),
        )
    } else if queued > 0 {
        (
            Code::Ok,
            format!("{sent} sent, {queued} queued for delivery"),
        )
    } else {
        (Code::Ok, format!("sent to {sent} receiver(s)"))
    };
    Reply {
        code,
        message,
        data,
    }
}

/// `send_msg` routes by `msg_type` through the manifest's message types to an active channel.
fn msg_type_channel(ctx: &Context<'_>, params: &Params) -> Result<Channel, EsbError> {
    let manifest = &ctx.state.manifest;
    let kinds = || {
        manifest
            .msg_types
            .iter()
            .map(|t| t.kind.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let kind = params
        .str("msg_type")?
        .ok_or_else(|| EsbError::bad("msg_type", format!("is required (one of: {})", kinds())))?;
    let decl = manifest
        .msg_types
        .iter()
        .find(|t| t.kind == kind.trim())
        .ok_or_else(|| {
            EsbError::Inactive(format!(
                "msg_type '{kind}' is not served here (available: {})",
                kinds()
            ))
        })?;
    let channel = ctx
        .channels
        .iter()
        .find(|c| c.name == decl.channel && c.is_active)
        .cloned()
        .ok_or_else(|| {
            EsbError::Inactive(format!(
                "msg_type '{kind}' is disabled (its channel {} is not active)",
                decl.channel
            ))
        })?;
    if matches!(
        channel.component,
        Component::SendMsg | Component::GetMsgType
    ) {
        return Err(EsbError::Internal(format!(
            "manifest maps msg_type '{kind}' to {}, which does not send",
            channel.name
        )));
    }
    Ok(channel)
}

async fn get_msg_type(ctx: &Context<'_>) -> Result<Reply, EsbError> {
    let channels = ctx.channels;
    let data: Vec<Value> = ctx
        .state
        .manifest
        .msg_types
        .iter()
        .map(|t| {
            let active = channels
                .iter()
                .any(|c| c.name == t.channel && c.is_active && !c.is_hidden);
            json!({
                "type": t.kind,
                "label": t.label,
                "label_en": t.label_en,
                "icon": t.icon,
                "is_active": active,
            })
        })
        .collect();
    Ok(Reply::ok(Value::Array(data), "ok"))
}
