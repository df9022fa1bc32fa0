//! The components bound to channel paths: what each channel does with validated arguments,
//! and the CMSI answer for a send's receipt.

use super::envelope::{Code, Reply};
use super::error::EsbError;
use super::params::Params;
use super::Cmsi;
use crate::channels::manifest::{Component, Manifest};
use crate::channels::registry::Channel;
use crate::channels::settings::DeliverySettings;
use crate::clock::Zone;
use crate::core::plan::Directory;
use crate::core::receipt::{Cause, Overall};
use crate::core::service::{Known, SendService};
use crate::core::{Receipt, SendError};
use crate::domain::request::{Caller, Receivers};
use crate::sources::Source;
use crate::templates::{self, message, Template};
use serde_json::{json, Value};
use tokio::time::Instant;

/// What a component knows about the request besides its arguments.
pub struct Context<'a> {
    pub service: &'a SendService,
    pub manifest: &'a Manifest,
    pub caller: Caller,
    pub idempotency_header: Option<&'a str>,
    /// The registry as read for this request.
    pub channels: &'a [Channel],
    /// The templates the channels name, read with the registry.
    pub templates: &'a [Template],
    /// Where a template shows times.
    pub zone: &'a Zone,
    /// When the request arrived (Unix milliseconds).
    pub now_ms: i64,
    /// The directory entries of the usernames named, read with the registry.
    pub directory: Option<Directory>,
    /// The `Blueking-Language` header, when sent.
    pub language: Option<&'a str>,
    /// Until when the first attempt, and storage, are waited for.
    pub deadlines: Deadlines,
}

/// Within the ESB's time-out of the component called.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// The first attempt (and any lookup) is waited for until then.
    pub attempt: Instant,
    /// Storage is waited for until then, and then answered as unavailable.
    pub storage: Instant,
}

/// The ESB answers English labels when `Blueking-Language` is `en` or absent, and Chinese
/// for any other language (the platforms send `zh-cn`, `zh-hans`, …).
fn english(language: Option<&str>) -> bool {
    language.map(str::trim).is_none_or(|l| {
        l.is_empty()
            || l.split(['-', '_'])
                .next()
                .is_some_and(|primary| primary.eq_ignore_ascii_case("en"))
    })
}

/// Runs the channel's component.
pub async fn handle(
    ctx: Context<'_>,
    channel: &Channel,
    params: &Params,
) -> Result<Reply, EsbError> {
    let target = match channel.component {
        Component::GetMsgType => return get_msg_type(&ctx),
        Component::SendMsg => msg_type_channel(&ctx, params)?,
        Component::SendDing | Component::SendDingtalk | Component::SendDingbot => channel.clone(),
    };
    let route = target
        .route()
        .ok_or_else(|| EsbError::Internal(format!("channel {} does not send", target.name)))?;
    let mut request = Cmsi.request((route, params, ctx.idempotency_header))?;
    if let Some(t) = template(&ctx, channel, &target) {
        let msg_type = params
            .str("msg_type")?
            .unwrap_or_else(|| target.name.clone());
        let ctx_value = message::context(
            params.as_map(),
            &request.message,
            msg_type.trim(),
            receiver_names(&request.receivers),
            request.sender.as_deref(),
            ctx.now_ms,
        );
        message::apply(t, &ctx_value, ctx.zone, &mut request.message);
    }
    // The wait for the first attempt ends in time for the answer.
    let Deadlines { attempt, storage } = ctx.deadlines;
    let left = attempt.saturating_duration_since(Instant::now());
    request.route.wait = request.route.wait.min(left);
    let known = Known {
        settings: DeliverySettings::from_registry(ctx.channels),
        directory: ctx.directory,
        deadline: Some(storage),
    };
    let receipt = ctx.service.submit_with(request, &ctx.caller, known).await?;
    Ok(Cmsi.answer(&receipt))
}

/// The template of the channel called (`send_msg` itself) or else of the channel it sends by.
/// One named but gone (removed between the two reads) is logged, and the message sent as is.
fn template<'a>(ctx: &Context<'a>, called: &Channel, target: &Channel) -> Option<&'a Template> {
    let name = called
        .conf(templates::store::CONF_KEY)
        .or_else(|| target.conf(templates::store::CONF_KEY))?;
    let found = ctx.templates.iter().find(|t| t.name == name);
    if found.is_none() {
        tracing::warn!(
            template = name,
            "the channel's template is not stored; the message is sent as the caller wrote it"
        );
    }
    found
}

fn receiver_names(receivers: &Receivers) -> Vec<String> {
    match receivers {
        Receivers::Usernames(u) => u.iter().map(ToString::to_string).collect(),
        Receivers::UserIds(ids) => ids.iter().map(|i| i.as_str().to_owned()).collect(),
        Receivers::Mobiles(m) => m.clone(),
    }
}

impl From<SendError> for EsbError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::QueueFull(why) => Self::Throttled(why),
            SendError::Storage(e) => e.into(),
        }
    }
}

/// The CMSI answer for a send: `data.deliveries` per receiver, the failed ones also in
/// `username_check.invalid`. Some receivers failed → `result: false` with the real CMSI's
/// code and message prefix: bk-monitor reads the invalid list only when `result` is false,
/// and ITSM accepts a false result whose message starts with `Some users failed`.
pub fn answer(receipt: &Receipt) -> Reply {
    let invalid: Vec<&str> = receipt.failed().map(|r| r.receiver.as_str()).collect();
    let mut data = json!({
        "message_id": receipt.message_id.as_str(),
        "deliveries": receipt.receivers.iter().map(|r| json!({
            "receiver": r.receiver,
            "kind": r.kind.as_str(),
            "status": r.status.as_str(),
            "error": r.error,
        })).collect::<Vec<_>>(),
        "username_check": {"invalid": invalid},
    });
    if receipt.replay {
        data["idempotent_replay"] = Value::Bool(true);
    }
    let (code, message) = match receipt.overall() {
        Overall::Accepted => (Code::Ok, receipt.summary()),
        // The ESB gives a component's `result: false` without a code 1306000.
        Overall::Partial => (Code::Generic, partial_message(receipt)),
        Overall::Refused(Cause::NotConfigured) => (Code::Generic, receipt.summary()),
        Overall::Refused(Cause::DingTalk | Cause::DirectoryUnavailable) => {
            (Code::ThirdParty, receipt.summary())
        }
        Overall::Refused(Cause::Directory | Cause::NotInDingTalk) => {
            (Code::UnknownReceivers, receipt.summary())
        }
    };
    Reply {
        code,
        message,
        data,
    }
}

/// "Some users failed to send (2 of 5): ghost (unknown user), carol (no telephone …)".
fn partial_message(receipt: &Receipt) -> String {
    format!(
        "{PARTIAL_PREFIX} ({} of {}): {}",
        receipt.failed().count(),
        receipt.receivers.len(),
        receipt.reasons()
    )
}

/// What CMSI callers test a partial failure by.
const PARTIAL_PREFIX: &str = "Some users failed to send";

/// `send_msg` routes by `msg_type` through the manifest's message types to an active channel.
fn msg_type_channel(ctx: &Context<'_>, params: &Params) -> Result<Channel, EsbError> {
    let manifest = ctx.manifest;
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

fn get_msg_type(ctx: &Context<'_>) -> Result<Reply, EsbError> {
    let channels = ctx.channels;
    let english = english(ctx.language);
    let data: Vec<Value> = ctx
        .manifest
        .msg_types
        .iter()
        .map(|t| {
            let active = channels
                .iter()
                .any(|c| c.name == t.channel && c.is_active && !c.is_hidden);
            let label = if english { &t.label_en } else { &t.label };
            // `name` and `enabled` are the bk-cmsi gateway's `v1/channels` names for the
            // label and the state; bk-monitor reads either.
            json!({
                "type": t.kind,
                "label": label,
                "name": label,
                "label_en": t.label_en,
                "icon": t.icon,
                "is_active": active,
                "enabled": active,
            })
        })
        .collect();
    Ok(Reply::ok(Value::Array(data), "ok"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels_are_english_for_en_or_no_language_and_chinese_otherwise() {
        for en in [None, Some("en"), Some("EN"), Some("en-US"), Some(" ")] {
            assert!(super::english(en), "{en:?}");
        }
        for zh in [Some("zh-cn"), Some("zh-hans"), Some("zh"), Some("ja")] {
            assert!(!super::english(zh), "{zh:?}");
        }
    }
}
