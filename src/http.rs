//! The HTTP server's own routes and the per-request context (request id, tracing span);
//! the sources ([`crate::sources`]) add theirs in [`crate::startup`], every path through
//! [`serve`], so that a method a path does not take is answered 405 naming the ones it does.

use crate::db::Db;
use crate::outbox::Outbox;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, Handler, HttpMessage, HttpRequest, HttpResponse, Responder};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

pub const REQUEST_ID: &str = "x-request-id";

#[derive(Clone)]
pub struct RequestId(pub String);

/// Health, readiness and metrics (the sources add their own routes).
pub fn configure(cfg: &mut web::ServiceConfig) {
    serve(cfg, "/healthz", READ, healthz);
    serve(cfg, "/readyz", READ, readyz);
    serve(cfg, "/metrics", READ, metrics);
}

/// A read-only GET route: HEAD is answered as GET is, without the body (RFC 9110 §9.3.2).
pub const READ: &[Method] = &[Method::GET, Method::HEAD];

/// Serves `path` by `handler` for `methods`, and any other method with a 405 whose `Allow`
/// names them: the one place routes are added, so the answer cannot drift from the routes.
/// (actix-web's `App::route` guards the whole resource by its method, so a wrong method fell
/// through to [`not_found`].)
pub fn serve<F, Args>(
    cfg: &mut web::ServiceConfig,
    path: &str,
    methods: &'static [Method],
    handler: F,
) where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    let resource = methods.iter().fold(web::resource(path), |r, m| {
        r.route(web::method(m.clone()).to(handler.clone()))
    });
    cfg.service(resource.default_service(web::to(move |req: HttpRequest| {
        method_not_allowed(req, methods)
    })));
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

/// A path no route serves: the path and method named, as they go into the answer.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    HttpResponse::NotFound().json(json!({
        "status": "error",
        "error": format!("path: nothing is served for {} {}; see the README for the routes and their methods", req.method(), shown_path(&req)),
        "request_id": request_id(&req),
    }))
}

/// A method the path does not take (see [`serve`]).
async fn method_not_allowed(req: HttpRequest, allowed: &[Method]) -> HttpResponse {
    let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    HttpResponse::MethodNotAllowed()
        .insert_header(header::Allow(allowed.to_vec()))
        .json(json!({
            "status": "error",
            "error": format!("method: {} is not served at {}; use {} (the Allow header)", req.method(), shown_path(&req), names.join(" or ")),
            "request_id": request_id(&req),
        }))
}

/// The request's path escaped and cut short, for an answer.
fn shown_path(req: &HttpRequest) -> String {
    let mut path: String = req.path().escape_debug().take(200).collect();
    if path.len() < req.path().escape_debug().count() {
        path.push('…');
    }
    path
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

async fn metrics(outbox: web::Data<Arc<Outbox>>) -> HttpResponse {
    let depth = outbox.db.run(crate::outbox::store::queue_depth).await.ok();
    let egress = outbox.egress_gauges().await;
    let mut body = outbox.metrics.render(depth);
    body.push_str(&outbox.metrics.render_egress(&egress));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}
