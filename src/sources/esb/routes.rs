//! The ESB routes: every channel at `/api/c/compapi/(v2/)cmsi/<name>/`, and the delivery log
//! of one message for the app that sent it. Handlers read, parse and authenticate, and pass
//! what ding-channel does not serve to the upstream CMSI; components do the work.

use super::components::Deadlines;
use super::envelope::{Envelope, Reply};
use super::error::{EsbError, Surface};
use super::gateway::Authenticated;
use super::params::Params;
use super::upstream::{self, Upstream};
use super::{args::MAX_RECEIVERS, components, Esb};
use crate::channels::manifest::Component;
use crate::channels::registry;
use crate::channels::settings::DeliverySettings;
use crate::core::plan::Directory;
use crate::core::SendService;
use crate::db::read_tx;
use crate::directory::profile::Username;
use crate::domain::request::Caller;
use crate::domain::tenant::TenantId;
use crate::http::{self, request_id};
use crate::templates;
use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

/// A body beyond the limit is still read (and thrown away) up to this size so the client
/// receives the answer instead of a reset connection.
const DRAIN_CAP: usize = 64 << 20;

pub fn configure(cfg: &mut web::ServiceConfig) {
    use actix_web::http::Method;
    http::serve(cfg, "/api/v1/messages/{id}", http::READ, message);
    // A GET sends (the ESB's own convention), so HEAD is refused rather than sending unseen.
    http::serve(
        cfg,
        "/api/c/compapi/{tail:.*}",
        &[Method::GET, Method::POST],
        esb,
    );
}

/// One message's delivery log, for the app that sent it, with who read it.
async fn message(
    req: HttpRequest,
    esb: web::Data<Esb>,
    service: web::Data<SendService>,
    path: web::Path<String>,
) -> HttpResponse {
    let rid = request_id(&req);
    let id = path.into_inner();
    let answer = async {
        let params = Params::from_request(req.query_string(), None, b"")?;
        let creds =
            Authenticated::from_request(req.headers(), &params, &esb.gateway, esb.clock.now_ms())?;
        esb.db
            .run(move |conn| {
                creds.verify(conn)?;
                let view = crate::outbox::view::message_view(conn, &id)?;
                Ok::<_, EsbError>(view.filter(|v| v.app_code == creds.app_code()))
            })
            .await
    };
    match answer.await {
        Ok(Some(mut view)) => {
            if let Err(e) = crate::outbox::readback::fill_reads(service.outbox(), &mut view).await {
                tracing::warn!(error = %e, "cannot read the read status of the message; answered without it");
            }
            HttpResponse::Ok().json(Envelope::ok(
                serde_json::to_value(view).unwrap_or(Value::Null),
                "ok",
                &rid,
            ))
        }
        Ok(None) => EsbError::NotFound("no such message for this app").respond(&rid, Surface::Rest),
        Err(e) => e.respond(&rid, Surface::Rest),
    }
}

/// What a component path answers: our envelope, or the upstream CMSI's answer as it came.
enum Answer {
    Reply(Reply),
    Upstream(HttpResponse),
}

async fn esb(
    req: HttpRequest,
    payload: web::Payload,
    esb: web::Data<Esb>,
    service: web::Data<SendService>,
    upstream: Option<web::Data<Upstream>>,
) -> HttpResponse {
    let rid = request_id(&req);
    // The ESB gives up on a component after its time-out: the answer must come before. The
    // first attempt is waited for until 8/10 of it, storage until 9/10, the rest is the way
    // back.
    let path = channel_path(req.match_info().query("tail"));
    let wait = esb
        .manifest
        .channels
        .iter()
        .find(|c| c.path == path)
        .map_or(DEFAULT_WAIT_S, |c| c.timeout_s.max(1)) as u64;
    let now = Instant::now();
    let deadlines = Deadlines {
        attempt: now + Duration::from_millis(wait * 800),
        storage: now + Duration::from_millis(wait * 900),
    };
    match serve_esb(
        &req,
        payload,
        &esb,
        &service,
        upstream.as_ref().map(|u| u.get_ref()),
        &rid,
        deadlines,
    )
    .await
    {
        Ok(Answer::Reply(reply)) => HttpResponse::Ok().json(reply.into_envelope(&rid)),
        Ok(Answer::Upstream(res)) => res,
        Err(e) => e.respond(&rid, Surface::Esb),
    }
}

/// The ESB's time-out of a component the manifest does not list (the manifest's default).
const DEFAULT_WAIT_S: i32 = 10;

/// `cmsi/send_ding/` or `v2/cmsi/send_ding` → `/cmsi/send_ding/`.
fn channel_path(tail: &str) -> String {
    let tail = tail.trim_matches('/');
    let tail = tail.strip_prefix("v2/").unwrap_or(tail);
    format!("/{}/", tail.trim_matches('/'))
}

async fn serve_esb(
    req: &HttpRequest,
    payload: web::Payload,
    esb: &Esb,
    service: &SendService,
    upstream: Option<&Upstream>,
    rid: &str,
    deadlines: Deadlines,
) -> Result<Answer, EsbError> {
    // Kept as received: what is not ours is passed on byte for byte.
    let body = web::Bytes::from(read_body(req, payload, esb.max_body).await?);
    let tail = req.match_info().query("tail");
    let path = channel_path(tail);
    let call = upstream.map(|up| up.call(req, &body, rid));
    if let Some(call) = &call {
        // Decided before the body is parsed or the caller authenticated: the upstream does both
        // (only a request carrying the gateway's token is read, for a secret beside it).
        if let Some(target) = upstream::foreign_path(&esb.manifest, tail) {
            call.passable(target, None)?;
            return Ok(Answer::Upstream(call.pass(target).await));
        }
    }
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let params = Params::from_request(req.query_string(), content_type, &body)?;
    if let Some(call) = &call {
        if let Some(target) = upstream::foreign_msg_type(&esb.manifest, tail, &params) {
            call.passable(target, Some(&params))?;
            return Ok(Answer::Upstream(call.pass(target).await));
        }
    }
    let tenant_id = tenant(req)?;
    let creds =
        Authenticated::from_request(req.headers(), &params, &esb.gateway, esb.clock.now_ms())?;
    // One read serves the request: the app, the registry (a handful of rows: the path,
    // send_msg's routing, the delivery settings) and the directory entries of the usernames
    // named. Those are taken as given here; the component validates them.
    let names: Vec<String> = params
        .list("receiver__username")
        .unwrap_or_default()
        .iter()
        .filter_map(|n| Username::parse(n).ok().map(|u| u.to_string()))
        .take(MAX_RECEIVERS)
        .collect();
    let now = esb.clock.now_ms();
    let (channels, templates, creds, directory) = esb
        .db
        .run_by(Some(deadlines.storage), move |conn| {
            read_tx(conn, |conn| {
                creds.verify(conn)?;
                let channels = registry::list(conn)?;
                let templates = templates::store::named_by(conn, &channels)?;
                let directory = if names.is_empty() {
                    None
                } else {
                    let settings = DeliverySettings::from_registry(&channels);
                    Some(Directory::read(conn, names, &[], &settings, now)?)
                };
                Ok::<_, EsbError>((channels, templates, directory))
            })
            .map(|(channels, templates, directory)| (channels, templates, creds, directory))
        })
        .await?;
    let channel = channels
        .iter()
        .find(|c| c.path == path && !c.is_hidden)
        .cloned()
        .ok_or_else(|| EsbError::no_channel(&path))?;
    if !channel.is_active {
        return Err(EsbError::Inactive(format!(
            "channel {} is disabled; an admin can enable it with `ding-channel channels enable {}`",
            channel.name, channel.name
        )));
    }
    let method = req.method().as_str();
    if !channel.methods.allows(method) {
        return Err(EsbError::bad(
            "method",
            format!(
                "{method} is not accepted by {}; use {}",
                channel.name, channel.methods
            ),
        ));
    }
    let (app_code, username) = creds.into_parts();
    let ctx = components::Context {
        service,
        manifest: &esb.manifest,
        caller: Caller {
            app_code,
            username,
            request_id: rid.to_owned(),
            tenant_id,
        },
        idempotency_header: req
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok()),
        channels: &channels,
        templates: &templates,
        zone: &esb.zone,
        now_ms: now,
        directory,
        language: req
            .headers()
            .get("blueking-language")
            .and_then(|v| v.to_str().ok()),
        deadlines,
    };
    let reply = components::handle(ctx, &channel, &params).await?;
    Ok(Answer::Reply(match &call {
        Some(call) if channel.component == Component::GetMsgType => {
            call.with_msg_types(reply, tail, &params).await
        }
        _ => reply,
    }))
}

/// `X-Bk-Tenant-Id`, when a multi-tenant platform sends it.
fn tenant(req: &HttpRequest) -> Result<Option<TenantId>, EsbError> {
    let Some(raw) = req.headers().get(TENANT_HEADER) else {
        return Ok(None);
    };
    let raw = raw.to_str().map_err(|_| {
        EsbError::bad(
            TENANT_HEADER,
            "must be printable ASCII without spaces (a tenant id such as `default`)",
        )
    })?;
    if raw.trim().is_empty() {
        return Ok(None);
    }
    TenantId::parse(raw)
        .map(Some)
        .map_err(|problem| EsbError::bad(TENANT_HEADER, problem))
}

const TENANT_HEADER: &str = "X-Bk-Tenant-Id";

async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Vec<u8>, EsbError> {
    let too_big = || {
        EsbError::bad(
            "body",
            format!("is larger than {limit} bytes (DING_CHANNEL_MAX_BODY); long content is split for DingTalk, but a request must stay within the limit"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    let mut total = 0usize;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| EsbError::bad("body", format!("could not be read ({e})")))?;
        total += chunk.len();
        if total > DRAIN_CAP {
            return Err(too_big());
        }
        if total <= limit {
            body.extend_from_slice(&chunk);
        }
    }
    if total > limit {
        return Err(too_big());
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn channel_paths_are_normalised() {
        assert_eq!(super::channel_path("cmsi/send_ding/"), "/cmsi/send_ding/");
        assert_eq!(super::channel_path("v2/cmsi/send_ding"), "/cmsi/send_ding/");
        assert_eq!(
            super::channel_path("/cmsi/get_msg_type//"),
            "/cmsi/get_msg_type/"
        );
    }
}
