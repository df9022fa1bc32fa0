//! `POST /api/v1/alertmanager/{receivers}`: HTTP basic with an app's code and secret, the
//! payload, `send_ding` from the registry, then the send. Alertmanager retries a 5xx and
//! drops a notification on a 4xx, so a 4xx is kept for what no retry can fix.

use super::payload::{self, Refusal};
use super::{Alertmanager, Webhook};
use crate::channels::manifest::Component;
use crate::channels::registry;
use crate::channels::settings::DeliverySettings;
use crate::core::plan::Directory;
use crate::core::service::Known;
use crate::core::{SendError, SendService};
use crate::db::read_tx;
use crate::domain::request::Caller;
use crate::domain::username::Username;
use crate::http::request_id;
use crate::sources::esb::args::MAX_RECEIVERS;
use crate::sources::esb::auth::Credentials;
use crate::sources::esb::error::EsbError;
use crate::sources::Source;
use crate::templates;
use actix_web::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde_json::json;
use std::time::Duration;

/// However storage behaves, Alertmanager hears back within this long (its own timeout is
/// longer), so it retries instead of piling up.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the answer waits for DingTalk's first attempt: well within [`SUBMIT_TIMEOUT`].
const FIRST_ATTEMPT_WAIT: Duration = Duration::from_secs(2);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/alertmanager/{receivers}", web::post().to(webhook));
}

/// Why a notification is not taken, as Alertmanager should hear it.
enum Problem {
    Unauthorized(&'static str),
    Invalid(Refusal),
    /// An admin (or time) can fix it: Alertmanager keeps retrying.
    Unavailable(String),
}

async fn webhook(
    req: HttpRequest,
    body: web::Bytes,
    am: web::Data<Alertmanager>,
    service: web::Data<SendService>,
) -> HttpResponse {
    let rid = request_id(&req);
    match serve(&req, &body, &am, &service, &rid).await {
        Ok((status, body)) => HttpResponse::build(status).json(body),
        Err(Problem::Unauthorized(why)) => {
            tracing::info!(error = why, "alertmanager request refused");
            HttpResponse::Unauthorized()
                .insert_header((WWW_AUTHENTICATE, "Basic realm=\"ding-channel\""))
                .json(json!({"status": "error", "error": why, "request_id": rid}))
        }
        Err(Problem::Invalid(r)) => {
            tracing::info!(field = %r.field, error = %r, "alertmanager request refused");
            HttpResponse::BadRequest().json(json!({
                "status": "error", "field": r.field, "error": r.to_string(), "request_id": rid,
            }))
        }
        Err(Problem::Unavailable(why)) => {
            tracing::warn!(error = %why, "alertmanager notification not stored");
            HttpResponse::ServiceUnavailable().json(json!({
                "status": "error", "error": why, "request_id": rid,
            }))
        }
    }
}

async fn serve(
    req: &HttpRequest,
    body: &[u8],
    am: &Alertmanager,
    service: &SendService,
    rid: &str,
) -> Result<(StatusCode, serde_json::Value), Problem> {
    let creds = basic(req)?;
    let receivers = receivers(req.match_info().query("receivers")).map_err(Problem::Invalid)?;
    let notification = payload::parse(body).map_err(Problem::Invalid)?;
    let template_name = template_name(req.query_string()).map_err(Problem::Invalid)?;
    let names: Vec<String> = receivers.iter().map(ToString::to_string).collect();
    let now = am.clock.now_ms();
    let read = am
        .db
        .run(move |conn| {
            read_tx(conn, |conn| {
                creds.verify(conn)?;
                let channels = registry::list(conn)?;
                let settings = DeliverySettings::from_registry(&channels);
                let directory = Directory::read(conn, names, &[], &settings, now)?;
                // `Err(name)`: the URL names a template that is not stored.
                let template = match template_name {
                    Some(name) => templates::store::get(conn, &name)?.map(Some).ok_or(name),
                    None => Ok(None),
                };
                Ok::<_, EsbError>((channels, settings, directory, template))
            })
            .map(|read| (read, creds))
        })
        .await;
    let ((channels, settings, directory, template), creds) = match read {
        Ok(read) => read,
        Err(EsbError::AppAuth(why)) => return Err(Problem::Unauthorized(why)),
        Err(e) => return Err(Problem::Unavailable(format!("storage: {e}"))),
    };
    let template = template.map_err(|name| {
        Problem::Invalid(Refusal {
            field: "template".into(),
            problem: format!(
                "no template named '{name}'; store it with `ding-channel templates set {name} --file FILE`"
            ),
        })
    })?;
    let channel = channels
        .iter()
        .find(|c| c.component == Component::SendDing && !c.is_hidden)
        .ok_or_else(|| {
            Problem::Unavailable("no send_ding channel is registered; an admin must add it".into())
        })?;
    if !channel.is_active {
        return Err(Problem::Unavailable(format!(
            "channel {} is disabled; an admin can enable it with `ding-channel channels enable {}`",
            channel.name, channel.name
        )));
    }
    let mut route = channel
        .route()
        .ok_or_else(|| Problem::Unavailable(format!("channel {} does not send", channel.name)))?;
    route.wait = route.wait.min(FIRST_ATTEMPT_WAIT);
    let source = Webhook {
        zone: am.zone.clone(),
        now_ms: now,
        // The payload parsed above is valid JSON: the template sees it as posted.
        template: template.map(|t| (t, serde_json::from_slice(body).unwrap_or_default())),
    };
    let request = source
        .request((route, &notification, &receivers))
        .map_err(Problem::Invalid)?;
    let caller = Caller {
        app_code: creds.app_code.clone(),
        username: None,
        request_id: rid.to_owned(),
        tenant_id: None,
    };
    let known = Known {
        settings,
        directory: Some(directory),
    };
    let submitted =
        tokio::time::timeout(SUBMIT_TIMEOUT, service.submit_with(request, &caller, known)).await;
    match submitted {
        Ok(Ok(receipt)) => Ok(source.answer(&receipt)),
        Ok(Err(SendError::QueueFull(why))) => Err(Problem::Unavailable(why)),
        Ok(Err(SendError::Storage(e))) => Err(Problem::Unavailable(format!("storage: {e}"))),
        Err(_) => Err(Problem::Unavailable(format!(
            "the notification was not confirmed stored within {}s; Alertmanager's retry is sent once",
            SUBMIT_TIMEOUT.as_secs()
        ))),
    }
}

/// `Authorization: Basic base64(app_code:app_secret)`.
fn basic(req: &HttpRequest) -> Result<Credentials, Problem> {
    const MISSING: &str = "send the app's code and secret by HTTP basic auth (http_config.basic_auth in the webhook_config)";
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(Problem::Unauthorized(MISSING))?;
    let encoded = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))
        .ok_or(Problem::Unauthorized(MISSING))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(Problem::Unauthorized(MISSING))?;
    let (code, secret) = decoded
        .split_once(':')
        .filter(|(c, s)| !c.is_empty() && !s.is_empty())
        .ok_or(Problem::Unauthorized(MISSING))?;
    Ok(Credentials::new(code.to_owned(), secret.to_owned()))
}

/// `alice,ops-robot`: the usernames the notification goes to, as `send_ding` reads them.
fn receivers(raw: &str) -> Result<Vec<Username>, Refusal> {
    let refuse = |problem: String| Refusal {
        field: "receivers".into(),
        problem,
    };
    let mut out: Vec<Username> = Vec::new();
    for name in raw.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let u = Username::parse(name).map_err(|p| refuse(format!("'{name}' {p}")))?;
        if !out.contains(&u) {
            out.push(u);
        }
    }
    if out.is_empty() {
        return Err(refuse(
            "no username in the path; use /api/v1/alertmanager/alice,ops-robot".into(),
        ));
    }
    if out.len() > MAX_RECEIVERS {
        return Err(refuse(format!(
            "names {} usernames; at most {MAX_RECEIVERS}",
            out.len()
        )));
    }
    Ok(out)
}

/// `?template=NAME`: the stored template the notification is rendered in.
fn template_name(query: &str) -> Result<Option<String>, Refusal> {
    let refuse = |problem: String| Refusal {
        field: "template".into(),
        problem,
    };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| refuse(format!("the query string cannot be decoded ({e})")))?;
    let Some((_, name)) = pairs.into_iter().find(|(k, _)| k == "template") else {
        return Ok(None);
    };
    templates::check_name(&name).map_err(refuse)?;
    Ok(Some(name))
}
