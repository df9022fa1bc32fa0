//! HTTP routes: the ESB channel paths, health probes, and the per-request context (request id,
//! tracing span). Handlers only parse and authenticate; components do the work.

use super::auth::{self, Credentials};
use super::envelope::{Envelope, Reply};
use super::error::EsbError;
use super::params::Params;
use crate::channels::send::MAX_RECEIVERS;
use crate::channels::{component, registry};
use crate::db::read_tx;
use crate::directory::profile::Username;
use crate::dispatch::Directory;
use crate::senders::DeliverySettings;
use crate::startup::AppState;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::Instant;
use tracing::Instrument;

pub const REQUEST_ID: &str = "x-request-id";
/// A body beyond the limit is still read (and thrown away) up to this size so the client
/// receives the answer instead of a reset connection.
const DRAIN_CAP: usize = 64 << 20;

#[derive(Clone)]
pub struct RequestId(pub String);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/api/v1/messages/{id}", web::get().to(message))
        .route("/api/c/compapi/{tail:.*}", web::get().to(esb))
        .route("/api/c/compapi/{tail:.*}", web::post().to(esb));
}

/// Gives every request an id (the caller's `X-Request-Id` when it is sane), a tracing span
/// that carries it, and the id on the response.
pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let rid = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| crate::secret::random_hex(16), str::to_owned);
    req.extensions_mut().insert(RequestId(rid.clone()));
    let span = tracing::info_span!("request", request_id = %rid, method = %req.method(), path = %req.path());
    let started = Instant::now();
    let mut res = next.call(req).instrument(span.clone()).await?;
    if let Ok(v) = HeaderValue::from_str(&rid) {
        res.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID), v);
    }
    span.in_scope(|| {
        tracing::info!(
            status = res.status().as_u16(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request done"
        )
    });
    Ok(res)
}

fn request_id(req: &HttpRequest) -> String {
    req.extensions()
        .get::<RequestId>()
        .map_or_else(String::new, |r| r.0.clone())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let db = state.db.clone();
    match web::block(move || db.ping()).await {
        Ok(Ok(())) => {
            HttpResponse::Ok().json(json!({"status": "ready", "database": state.db.backend()}))
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database unreachable");
            HttpResponse::ServiceUnavailable()
                .json(json!({"status": "unavailable", "reason": "database unreachable"}))
        }
        Err(_) => HttpResponse::ServiceUnavailable().json(json!({"status": "unavailable"})),
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let depth = state.db.run(crate::outbox::store::queue_depth).await.ok();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.outbox.metrics.render(depth))
}

/// One message's delivery log, for the app that sent it.
async fn message(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    let rid = request_id(&req);
    let id = path.into_inner();
    let answer = async {
        let params = Params::from_request(req.query_string(), None, b"")?;
        let creds = Credentials::from_request(
            req.headers().get(auth::HEADER).map(HeaderValue::as_bytes),
            &params,
        )?;
        state
            .db
            .run(move |conn| {
                creds.verify(conn)?;
                let view = crate::outbox::view::message_view(conn, &id)?;
                Ok::<_, EsbError>(view.filter(|v| v.app_code == creds.app_code))
            })
            .await
    };
    match answer.await {
        Ok(Some(view)) => HttpResponse::Ok().json(Envelope::ok(
            serde_json::to_value(view).unwrap_or(Value::Null),
            "ok",
            &rid,
        )),
        Ok(None) => HttpResponse::NotFound().json(Envelope::err(
            super::envelope::Code::Generic,
            "no such message for this app",
            Value::Null,
            &rid,
        )),
        Err(e) => {
            let status = if matches!(e, EsbError::AppAuth(_)) {
                401
            } else {
                400
            };
            HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("valid"))
                .json(Envelope::err(e.code(), e.to_string(), Value::Null, &rid))
        }
    }
}

async fn esb(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    let rid = request_id(&req);
    match serve_esb(&req, payload, &state, &rid).await {
        Ok(reply) => HttpResponse::Ok().json(reply.into_envelope(&rid)),
        Err(e) => {
            match &e {
                EsbError::Internal(cause) => tracing::error!(cause = %cause, "request failed"),
                other => {
                    tracing::info!(code = other.code().value(), error = %other, "request refused")
                }
            }
            let mut res = if matches!(e, EsbError::NoChannel(_)) {
                HttpResponse::NotFound()
            } else {
                HttpResponse::Ok()
            };
            res.json(Envelope::err(e.code(), e.to_string(), Value::Null, &rid))
        }
    }
}

/// `cmsi/send_ding/` or `v2/cmsi/send_ding` → `/cmsi/send_ding/`.
fn channel_path(tail: &str) -> String {
    let tail = tail.trim_matches('/');
    let tail = tail.strip_prefix("v2/").unwrap_or(tail);
    format!("/{}/", tail.trim_matches('/'))
}

async fn serve_esb(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    rid: &str,
) -> Result<Reply, EsbError> {
    let body = read_body(req, payload, state.settings.max_body).await?;
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let params = Params::from_request(req.query_string(), content_type, &body)?;
    let creds = Credentials::from_request(
        req.headers().get(auth::HEADER).map(HeaderValue::as_bytes),
        &params,
    )?;
    let path = channel_path(req.match_info().query("tail"));
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
    let now = state.outbox.clock.now_ms();
    let (channels, creds, directory) = state
        .db
        .run(move |conn| {
            read_tx(conn, |conn| {
                creds.verify(conn)?;
                let channels = registry::list(conn)?;
                let directory = if names.is_empty() {
                    None
                } else {
                    let settings = DeliverySettings::from_registry(&channels);
                    Some(Directory::read(conn, names, &[], &settings, now)?)
                };
                Ok::<_, EsbError>((channels, directory))
            })
            .map(|(channels, directory)| (channels, creds, directory))
        })
        .await?;
    let channel = channels
        .iter()
        .find(|c| c.path == path && !c.is_hidden)
        .cloned()
        .ok_or(EsbError::NoChannel(path))?;
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
    let ctx = component::Context {
        state,
        app_code: &creds.app_code,
        username: creds.username.as_deref(),
        idempotency_header: req
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok()),
        request_id: rid,
        channels: &channels,
        directory,
    };
    component::handle(ctx, &channel, &params).await
}

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
