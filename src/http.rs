//! The HTTP server's own routes and the per-request context (request id, tracing span);
//! the sources ([`crate::sources`]) add theirs in [`crate::startup`].

use crate::db::Db;
use crate::metrics::Metrics;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

pub const REQUEST_ID: &str = "x-request-id";

#[derive(Clone)]
pub struct RequestId(pub String);

/// Health, readiness and metrics (the sources add their own routes).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
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

/// The id [`request_context`] gave the request.
pub fn request_id(req: &HttpRequest) -> String {
    req.extensions()
        .get::<RequestId>()
        .map_or_else(String::new, |r| r.0.clone())
}

/// What no route serves (an unknown path, or a method the path does not take): the path and
/// method named, escaped and cut short, as they go into the answer.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    let mut path: String = req.path().escape_debug().take(200).collect();
    if path.len() < req.path().escape_debug().count() {
        path.push('…');
    }
    HttpResponse::NotFound().json(json!({
        "status": "error",
        "error": format!("path: nothing is served for {} {path}; see the README for the routes and their methods", req.method()),
        "request_id": request_id(&req),
    }))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// A readiness probe's answer comes within this, inside the usual probe time-out (1 s).
const READY_WAIT: Duration = Duration::from_millis(800);

/// Ready while the database answers and takes writes; 503 with the reason while it does not
/// (the log has the details, once per outage).
async fn readyz(db: web::Data<Db>) -> HttpResponse {
    let backend = db.backend();
    let reason = match db.ping(READY_WAIT).await {
        Err(_) => "the database cannot be reached".to_owned(),
        Ok(()) => match db.health().refusing() {
            Some(why) => format!("the database refuses writes: {why}"),
            None => {
                return HttpResponse::Ok().json(json!({"status": "ready", "database": backend}))
            }
        },
    };
    HttpResponse::ServiceUnavailable()
        .json(json!({"status": "unavailable", "database": backend, "reason": reason}))
}

async fn metrics(db: web::Data<Db>, metrics: web::Data<Arc<Metrics>>) -> HttpResponse {
    let depth = db.run(crate::outbox::store::queue_depth).await.ok();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics.render(depth))
}
