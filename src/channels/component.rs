//! The components bound to channel paths: what each channel does with validated arguments.

use super::manifest::Component;
use super::registry::{self, Channel};
use super::send;
use crate::esb::error::EsbError;
use crate::esb::params::Params;
use crate::startup::AppState;
use serde_json::{json, Value};

/// What a component knows about the request besides its arguments.
pub struct Context<'a> {
    pub state: &'a AppState,
    pub app_code: &'a str,
    /// `bk_username` of the caller, when given.
    pub username: Option<&'a str>,
    pub idempotency_header: Option<&'a str>,
    pub request_id: &'a str,
}

/// Runs the channel's component; answers `(data, message)` for the envelope.
pub async fn handle(
    ctx: &Context<'_>,
    channel: &Channel,
    params: &Params,
) -> Result<(Value, String), EsbError> {
    match channel.component {
        Component::GetMsgType => get_msg_type(ctx).await,
        Component::SendMsg => {
            let target = msg_type_channel(ctx, params).await?;
            send(ctx, &target, params)
        }
        Component::SendDing | Component::SendDingtalk | Component::SendDingbot => {
            send(ctx, channel, params)
        }
    }
}

fn send(
    ctx: &Context<'_>,
    channel: &Channel,
    params: &Params,
) -> Result<(Value, String), EsbError> {
    let request = send::parse(channel.component, params, ctx.idempotency_header)?;
    tracing::info!(
        channel = %channel.name,
        app = ctx.app_code,
        receivers = request.receivers.len(),
        msg_key = ?request.message.msg_key,
        "send validated"
    );
    Err(EsbError::NotAvailable(format!(
        "the request is valid, but delivery is not available yet in ding-channel {}: nothing was sent to {} receiver(s)",
        env!("CARGO_PKG_VERSION"),
        request.receivers.len()
    )))
}

/// `send_msg` routes by `msg_type` through the manifest's message types to an active channel.
async fn msg_type_channel(ctx: &Context<'_>, params: &Params) -> Result<Channel, EsbError> {
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
    let name = decl.channel.clone();
    let channel = ctx
        .state
        .db
        .run(move |conn| registry::find(conn, &name))
        .await?
        .filter(|c| c.is_active)
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

async fn get_msg_type(ctx: &Context<'_>) -> Result<(Value, String), EsbError> {
    let channels = ctx.state.db.run(registry::list).await?;
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
    Ok((Value::Array(data), "ok".to_owned()))
}
