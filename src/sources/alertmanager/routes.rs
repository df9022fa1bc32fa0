//! `POST /api/v1/alertmanager/{receivers}`: HTTP basic with an app's code and secret, the
//! payload, `send_ding` from the registry, then the send. Alertmanager retries a 5xx and
//! drops a notification on a 4xx, so a 4xx is kept for what no retry can fix. `POST /-/reload`
//! reads the routes by label again, by the same credentials.

use super::mentions;
use super::payload::{self, Refusal};
use super::routing::{self, ReloadError};
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
    cfg.route("/api/v1/alertmanager/{receivers}", web::post().to(webhook))
        // With routes by label, the path may name no receivers: the routes name them.
        .route("/api/v1/alertmanager", web::post().to(webhook))
        .route("/api/v1/alertmanager/", web::post().to(webhook))
        .route("/-/reload", web::post().to(reload));
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
    respond(serve(&req, &body, &am, &service, &rid).await, &rid)
}

/// `POST /-/reload`: the routes file read again (as on SIGHUP), by an app's basic auth.
async fn reload(req: HttpRequest, am: web::Data<Alertmanager>) -> HttpResponse {
    let rid = request_id(&req);
    let reloaded = match verify(&req, &am).await {
        Ok(()) => am
            .routes
            .reload("POST /-/reload")
            .map(|n| (StatusCode::OK, json!({"status": "reloaded", "routes": n})))
            .map_err(|e| {
                Problem::Invalid(Refusal {
                    field: routing::KEY.into(),
                    problem: match e {
                        ReloadError::Invalid(e) => {
                            format!("{e}; the routes loaded before stay in force")
                        }
                        e => e.to_string(),
                    },
                })
            }),
        Err(p) => Err(p),
    };
    respond(reloaded, &rid)
}

/// The caller is an app, by its code and secret.
async fn verify(req: &HttpRequest, am: &Alertmanager) -> Result<(), Problem> {
    let creds = basic(req)?;
    match am
        .db
        .run(move |conn| read_tx(conn, |conn| creds.verify(conn)))
        .await
    {
        Ok(_) => Ok(()),
        Err(EsbError::AppAuth(why)) => Err(Problem::Unauthorized(why)),
        Err(e) => Err(Problem::Unavailable(format!("storage: {e}"))),
    }
}

fn respond(result: Result<(StatusCode, serde_json::Value), Problem>, rid: &str) -> HttpResponse {
    match result {
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
    let routes = am.routes.current();
    let receivers = receivers(req.match_info().query("receivers"), !routes.is_empty())
        .map_err(Problem::Invalid)?;
    let single_chat = mention_single_chat(req.query_string()).map_err(Problem::Invalid)?;
    let notification = payload::parse(body).map_err(Problem::Invalid)?;
    let mut split = routing::split(&routes, &notification, &receivers);
    // Each dispatch mentions whom its own alerts name (and, opted in, sends them the message).
    let wanted: Vec<(Vec<String>, Vec<Username>)> = split
        .dispatches
        .iter()
        .map(|d| {
            let tokens = mentions::tokens(&d.notification, &am.mention_keys);
            (tokens, d.receivers.clone())
        })
        .collect();
    let now = am.clock.now_ms();
    let read = am
        .db
        .run(move |conn| {
            read_tx(conn, |conn| {
                creds.verify(conn)?;
                let channels = registry::list(conn)?;
                let settings = DeliverySettings::from_registry(&channels);
                let mut per_dispatch = Vec::with_capacity(wanted.len());
                for (tokens, mut receivers) in wanted {
                    let mentioned = mentions::read(conn, &tokens, &settings.fields)?;
                    if single_chat {
                        mentioned.add_people(&mut receivers);
                    }
                    let names = receivers.iter().map(ToString::to_string).collect();
                    let directory = Directory::read(conn, names, &[], &settings, now)?;
                    per_dispatch.push((mentioned, receivers, directory));
                }
                Ok::<_, EsbError>((channels, settings, per_dispatch))
            })
            .map(|read| (read, creds))
        })
        .await;
    let ((channels, settings, per_dispatch), creds) = match read {
        Ok(read) => read,
        Err(EsbError::AppAuth(why)) => return Err(Problem::Unauthorized(why)),
        Err(e) => return Err(Problem::Unavailable(format!("storage: {e}"))),
    };
    let per_dispatch: Vec<_> = split
        .dispatches
        .iter_mut()
        .zip(per_dispatch)
        .map(|(dispatch, (mentioned, receivers, directory))| {
            dispatch.receivers = receivers;
            (mentioned, directory)
        })
        .collect();
    if !split.not_routed.is_empty() {
        tracing::warn!(
            alerts = %serde_json::Value::from(routing::not_routed(&split.not_routed)),
            "alerts not routed: no route matches them and the path names no receivers"
        );
        // The payload is fine; the routes are not yet: Alertmanager retries while an admin
        // adds the route (and reloads), where a 4xx would drop the notification.
        if split.dispatches.is_empty() {
            return Err(Problem::Unavailable(
                "no route matches the alerts and the path names no receivers; add a route without matchers at the end of the routes file (then reload), or name receivers in the path".into(),
            ));
        }
    }
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
        utc_offset_min: am.utc_offset_min,
        now_ms: now,
    };
    let caller = Caller {
        app_code: creds.app_code.clone(),
        username: None,
        request_id: rid.to_owned(),
        tenant_id: None,
    };
    // One dispatch after the other: when one is not stored, Alertmanager's retry sends the
    // notification again, and the dispatches stored already are answered from their keys.
    let submit_all = async {
        let mut answers = Vec::with_capacity(split.dispatches.len());
        for (dispatch, (mentioned, directory)) in split.dispatches.iter().zip(per_dispatch) {
            let mut request = source
                .request((route.clone(), dispatch))
                .map_err(Problem::Invalid)?;
            mentioned.apply(&mut request.message);
            let known = Known {
                settings: settings.clone(),
                directory: Some(directory),
            };
            let receipt =
                service
                    .submit_with(request, &caller, known)
                    .await
                    .map_err(|e| match e {
                        SendError::QueueFull(why) => Problem::Unavailable(why),
                        SendError::Storage(e) => Problem::Unavailable(format!("storage: {e}")),
                    })?;
            answers.push(source.answer(&receipt));
        }
        Ok(answers)
    };
    match tokio::time::timeout(SUBMIT_TIMEOUT, submit_all).await {
        Ok(Ok(answers)) => Ok(routing::answer(&split, answers)),
        Ok(Err(problem)) => Err(problem),
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

/// `?mention_single_chat=true`: the people the alerts mention are sent the message by single
/// chat too. Other query parameters are left to the rest of the route.
fn mention_single_chat(query: &str) -> Result<bool, Refusal> {
    const NAME: &str = "mention_single_chat";
    let query = web::Query::<Vec<(String, String)>>::from_query(query).map_err(|e| Refusal {
        field: "query".into(),
        problem: format!("is not a URL query ({e})"),
    })?;
    let mut value = None;
    for (_, v) in query.0.into_iter().filter(|(k, _)| k == NAME) {
        let parsed = match v.as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(Refusal {
                    field: NAME.into(),
                    problem: format!("'{v}' is not a boolean; use true or false"),
                })
            }
        };
        if value.is_some_and(|prev| prev != parsed) {
            return Err(Refusal {
                field: NAME.into(),
                problem: "is given twice with different values; give it once".into(),
            });
        }
        value = Some(parsed);
    }
    Ok(value.unwrap_or(false))
}

/// `alice,ops-robot`: the usernames the notification goes to, as `send_ding` reads them; none
/// only when `routed` (routes by label are loaded): the routes name the receivers.
fn receivers(raw: &str, routed: bool) -> Result<Vec<Username>, Refusal> {
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
    if out.is_empty() && !routed {
        return Err(refuse(
            "no username in the path; use /api/v1/alertmanager/alice,ops-robot, or route by label with DING_CHANNEL_ALERT_ROUTES".into(),
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
