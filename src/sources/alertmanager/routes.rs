//! `POST /api/v1/alertmanager/{receivers}`, and the handling every webhook source shares
//! (Grafana's too, [`Origin`]): HTTP basic with an app's code and secret or a bearer token, the
//! payload, `send_ding` from the registry, then the send, all within the webhook timeout.
//! Alertmanager retries a 5xx and drops a notification on a 4xx, so a 4xx is kept for what no
//! retry can fix. `POST /-/reload` reads the routes by label again, by the same credentials.

use super::mentions;
use super::payload::{self, refuse, Refusal};
use super::routing::{self, ReloadError};
use super::{Alertmanager, Webhook, DEDUP_WINDOW_MS};
use crate::channels::manifest::Component;
use crate::channels::registry;
use crate::channels::settings::DeliverySettings;
use crate::core::plan::Directory;
use crate::core::service::Known;
use crate::core::{SendError, SendService};
use crate::db::read_tx;
use crate::domain::request::Caller;
use crate::domain::secrets::BearerToken;
use crate::domain::username::Username;
use crate::http::{self, request_id};
use crate::outbox;
use crate::sources::esb::args::MAX_RECEIVERS;
use crate::sources::esb::auth::Credentials;
use crate::sources::esb::error::EsbError;
use crate::sources::{tokens, Source};
use crate::templates;
use actix_web::http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// How long the answer waits for DingTalk's first attempt, at most half the webhook timeout.
const FIRST_ATTEMPT_WAIT: Duration = Duration::from_secs(2);

const POST: &[actix_web::http::Method] = &[actix_web::http::Method::POST];

/// What differs between the webhook sources that share this handling.
pub struct Origin {
    /// The sender as its admins know it, in answers and logs.
    pub name: &'static str,
    /// The route, without `/{receivers}`.
    pub path: &'static str,
    pub parse: fn(&[u8]) -> Result<payload::Notification, Refusal>,
    /// Where the sender's admin sets the credentials.
    pub credentials: &'static str,
}

pub const ALERTMANAGER: Origin = Origin {
    name: "Alertmanager",
    path: "/api/v1/alertmanager",
    parse: payload::parse,
    credentials: "set http_config.basic_auth of the webhook_config to the app's code and secret, or http_config.authorization.credentials to a token of `ding-channel apps token CODE`",
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    routes(cfg, &ALERTMANAGER, webhook);
    http::serve(cfg, "/-/reload", POST, reload);
}

/// A webhook source's routes: with routes by label, the path may name no receivers.
pub fn routes<F, Args>(cfg: &mut web::ServiceConfig, origin: &Origin, handler: F)
where
    F: actix_web::Handler<Args> + Clone,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    for path in [
        format!("{}/{{receivers}}", origin.path),
        origin.path.to_owned(),
        format!("{}/", origin.path),
    ] {
        http::serve(cfg, &path, POST, handler.clone());
    }
}

/// Why a notification is not taken, as its sender should hear it.
enum Problem {
    Unauthorized(&'static str),
    Invalid(Refusal),
    /// A body beyond `DING_CHANNEL_MAX_BODY`: answered 413.
    TooLarge(Refusal),
    /// An admin (or time) can fix it: Alertmanager retries, Grafana sends it again later.
    Unavailable(String),
    /// The storage could not take it now (the database unreachable, the disk full): retried
    /// soon, answered as a replay if it was stored after all.
    Storage(String),
}

/// The `Retry-After` of a 503: soon for storage, which comes back by itself; later for what
/// an admin must fix, or a full queue.
const STORAGE_RETRY_AFTER_S: u32 = 5;
const RETRY_AFTER_S: u32 = 30;

/// What a webhook's sender is told of a storage error.
fn storage(e: &crate::db::DbError) -> Problem {
    match e.for_caller() {
        Some(answer) => Problem::Storage(answer),
        None => Problem::Unavailable(format!("storage: {e}")),
    }
}

/// A storage error met while reading for the request, as its sender is told.
fn unreadable_storage(e: EsbError) -> Problem {
    match e {
        EsbError::AppAuth(why) => Problem::Unauthorized(why),
        EsbError::Storage { answer, .. } => Problem::Storage(answer),
        e => Problem::Unavailable(format!("storage: {e}")),
    }
}

async fn webhook(
    req: HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
    am: web::Data<Alertmanager>,
    service: web::Data<SendService>,
) -> HttpResponse {
    handle(&ALERTMANAGER, &req, body, &am, &service).await
}

/// `POST /-/reload`: the routes file read again (as on SIGHUP), by an app's credentials.
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
    respond(&ALERTMANAGER, reloaded, &rid)
}

/// The caller is an app, by its code and secret or a bearer token.
async fn verify(req: &HttpRequest, am: &Alertmanager) -> Result<(), Problem> {
    let mut auth = authorization(req, &ALERTMANAGER)?;
    let now = am.clock.now_ms();
    let deadline = Instant::now() + am.timeout;
    am.db
        .run_by(Some(deadline), move |conn| {
            read_tx(conn, |conn| auth.verify(conn, now))
        })
        .await
        .map(drop)
        .map_err(unreadable_storage)
}

/// A webhook source's request, answered within `am.timeout` whatever storage does: a 503 in
/// time gets the sender's retry (a notification stored meanwhile is then a replay).
pub async fn handle(
    origin: &Origin,
    req: &HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
    am: &Alertmanager,
    service: &SendService,
) -> HttpResponse {
    let rid = request_id(req);
    let body = match body {
        Ok(body) => body,
        Err(e) => return respond(origin, Err(unreadable(&e)), &rid),
    };
    // Storage gives its answer (not stored, or may be) a tenth of the time-out before it
    // ends; the time-out itself is the last resort.
    let deadline = Instant::now() + am.timeout * 9 / 10;
    let served = tokio::time::timeout(
        am.timeout,
        serve(origin, req, &body, am, service, &rid, deadline),
    )
    .await
    .unwrap_or_else(|_| {
        Err(Problem::Storage(format!(
            "storage unavailable, retry: the notification was not confirmed stored within {} ms; if it was, the same notification sent again is taken once",
            am.timeout.as_millis(),
        )))
    });
    respond(origin, served, &rid)
}

/// Why the body could not be read, naming the setting when it is the size limit.
fn unreadable(e: &actix_web::Error) -> Problem {
    if e.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::TooLarge(refuse(
            "body",
            "is larger than DING_CHANNEL_MAX_BODY allows; raise it, or send fewer alerts per notification (max_alerts)",
        ))
    } else {
        Problem::Invalid(refuse("body", format!("cannot be read ({e})")))
    }
}

fn respond(
    origin: &Origin,
    served: Result<(StatusCode, serde_json::Value), Problem>,
    rid: &str,
) -> HttpResponse {
    let source = origin.name;
    let refused = |status: StatusCode, r: Refusal| {
        tracing::info!(source, field = %r.field, error = %r, "webhook request refused");
        HttpResponse::build(status).json(json!({
            "status": "error", "field": r.field, "error": r.to_string(), "request_id": rid,
        }))
    };
    match served {
        Ok((status, body)) => HttpResponse::build(status).json(body),
        Err(Problem::Unauthorized(why)) => {
            tracing::info!(source, error = why, "webhook request refused");
            HttpResponse::Unauthorized()
                .insert_header((
                    WWW_AUTHENTICATE,
                    "Basic realm=\"ding-channel\", Bearer realm=\"ding-channel\"",
                ))
                .json(json!({"status": "error", "error": why, "request_id": rid}))
        }
        Err(Problem::Invalid(r)) => refused(StatusCode::BAD_REQUEST, r),
        Err(Problem::TooLarge(r)) => refused(StatusCode::PAYLOAD_TOO_LARGE, r),
        Err(Problem::Unavailable(why)) => unavailable(source, &why, RETRY_AFTER_S, rid),
        Err(Problem::Storage(why)) => unavailable(source, &why, STORAGE_RETRY_AFTER_S, rid),
    }
}

/// 503, with when to try again.
fn unavailable(source: &str, why: &str, retry_after_s: u32, rid: &str) -> HttpResponse {
    tracing::warn!(source, error = %why, "webhook notification not stored");
    HttpResponse::ServiceUnavailable()
        .insert_header((RETRY_AFTER, retry_after_s.to_string()))
        .json(json!({"status": "error", "error": why, "request_id": rid}))
}

async fn serve(
    origin: &Origin,
    req: &HttpRequest,
    body: &[u8],
    am: &Alertmanager,
    service: &SendService,
    rid: &str,
    deadline: Instant,
) -> Result<(StatusCode, serde_json::Value), Problem> {
    let mut auth = authorization(req, origin)?;
    let routes = am.routes.current();
    let receivers = receivers(
        req.match_info().query("receivers"),
        origin,
        am.routes.configured(),
    )
    .map_err(Problem::Invalid)?;
    let single_chat = mention_single_chat(req.query_string()).map_err(Problem::Invalid)?;
    let notification = (origin.parse)(body).map_err(Problem::Invalid)?;
    let url_template = template_name(req.query_string()).map_err(Problem::Invalid)?;
    let mut split = routing::split(&routes, &notification, &receivers);
    let now = am.clock.now_ms();
    // Each dispatch mentions whom its own alerts name (and, opted in, sends them the message).
    // Its dedup key is this time slot's, or the previous slot's when a copy took that one
    // within the window: copies on both sides of a slot's end are one notification.
    let wanted: Vec<(Vec<String>, Vec<Username>, [String; 2])> = split
        .dispatches
        .iter()
        .map(|d| {
            let tokens = mentions::tokens(&d.notification, &am.mention_keys);
            let keys = [d.dedup_key(now), d.dedup_key(now - DEDUP_WINDOW_MS)];
            (tokens, d.receivers.clone(), keys)
        })
        .collect();
    // The templates named: the URL's (for the path's receivers) and the routes'.
    let mut template_names: Vec<String> = split
        .dispatches
        .iter()
        .filter_map(|d| d.template.clone())
        .chain(url_template.clone())
        .collect();
    template_names.sort_unstable();
    template_names.dedup();
    let read = am
        .db
        .run_by(Some(deadline), move |conn| {
            read_tx(conn, |conn| {
                let app = auth.verify(conn, now)?;
                let channels = registry::list(conn)?;
                let settings = DeliverySettings::from_registry(&channels);
                let mut per_dispatch = Vec::with_capacity(wanted.len());
                for (tokens, mut receivers, [key, earlier]) in wanted {
                    let since = now - DEDUP_WINDOW_MS;
                    let key = match outbox::store::find_recent_by_key(conn, &app, &earlier, since)?
                    {
                        Some(_) => earlier,
                        None => key,
                    };
                    let mentioned = mentions::read(conn, &tokens, &settings.fields)?;
                    if single_chat {
                        mentioned.add_people(&mut receivers);
                    }
                    let names = receivers.iter().map(ToString::to_string).collect();
                    let directory = Directory::read(conn, names, &[], &settings, now)?;
                    per_dispatch.push((mentioned, receivers, directory, key));
                }
                let mut stored = HashMap::new();
                for name in template_names {
                    if let Some(t) = templates::store::get(conn, &name)? {
                        stored.insert(name, t);
                    }
                }
                Ok::<_, EsbError>((app, channels, settings, per_dispatch, stored))
            })
            .map(|read| (read, auth))
        })
        .await;
    let ((app_code, channels, settings, per_dispatch, stored), auth) =
        read.map_err(unreadable_storage)?;
    if let Auth::Bearer { token, touch: true } = auth {
        // Only the admin's `apps show` reads it: a failure costs the figure, not the alert,
        // and the answer does not wait for it.
        let db = am.db.clone();
        tokio::spawn(async move {
            if let Err(e) = db.write(move |conn| tokens::touch(conn, &token, now)).await {
                tracing::warn!(error = %e, "a bearer token's last use was not recorded");
            }
        });
    }
    let per_dispatch: Vec<_> = split
        .dispatches
        .iter_mut()
        .zip(per_dispatch)
        .map(|(dispatch, (mentioned, receivers, directory, key))| {
            dispatch.receivers = receivers;
            (mentioned, directory, key)
        })
        .collect();
    if !split.not_routed.is_empty() {
        tracing::warn!(
            source = origin.name,
            alerts = %serde_json::Value::from(routing::not_routed(&split.not_routed)),
            "alerts not routed: no route matches them and the path names no receivers"
        );
    }
    if let Some(name) = url_template.as_ref().filter(|n| !stored.contains_key(*n)) {
        return Err(Problem::Invalid(Refusal {
            field: "template".into(),
            problem: format!(
                "no template named '{name}'; store it with `ding-channel templates set {name} --file FILE`"
            ),
        }));
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
    // The dispatches share one wait for DingTalk's first attempts, so however many there
    // are, the answer comes well within the webhook timeout.
    route.wait = route
        .wait
        .min(FIRST_ATTEMPT_WAIT)
        .min(am.timeout / 2)
        .checked_div(split.dispatches.len().max(1) as u32)
        .unwrap_or_default();
    let source = Webhook {
        zone: am.zone.clone(),
        now_ms: now,
        // Parsed above, so valid JSON: a template sees the payload as posted.
        raw: if stored.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(body).unwrap_or_default()
        },
    };
    let caller = Caller {
        app_code,
        username: None,
        request_id: rid.to_owned(),
        tenant_id: None,
    };
    // One dispatch after the other: when one is not stored, the sender's retry sends the
    // notification again, and the dispatches stored already are answered from their keys.
    let mut answers = Vec::with_capacity(split.dispatches.len());
    for (dispatch, (mentioned, directory, key)) in split.dispatches.iter().zip(per_dispatch) {
        let named = dispatch.template.as_ref().or(url_template.as_ref());
        let template = named.and_then(|name| stored.get(name));
        if let (Some(name), None) = (named, template) {
            tracing::warn!(
                source = origin.name,
                template = %name,
                "a route names a template that is not stored; the built-in layout is sent"
            );
        }
        let mut request = source
            .request((route.clone(), dispatch, template))
            .map_err(Problem::Invalid)?;
        mentioned.apply(&mut request.message);
        request.idempotency_key = Some(key);
        let known = Known {
            settings: settings.clone(),
            directory: Some(directory),
            deadline: Some(deadline),
        };
        let receipt = service
            .submit_with(request, &caller, known)
            .await
            .map_err(|e| match e {
                SendError::QueueFull(why) => Problem::Unavailable(why),
                SendError::Storage(e) => storage(&e),
            })?;
        answers.push(source.answer(&receipt));
    }
    // The payload is fine; the routes are not yet. What was routed is stored (a retry replays
    // it); the rest is answered 503, so the sender retries while an admin adds a route (and
    // reloads), where a 2xx or 4xx would drop those alerts.
    if !split.not_routed.is_empty() {
        let fingerprints: Vec<&str> = split
            .not_routed
            .iter()
            .map(|a| a.fingerprint.as_str())
            .collect();
        return Err(Problem::Unavailable(format!(
            "{} alert(s) match no route and the path names no receivers (fingerprints {}); add a route without matchers at the end of the routes file (then reload), or name receivers in the path",
            fingerprints.len(),
            fingerprints.join(", ")
        )));
    }
    Ok(routing::answer(&split, answers))
}

/// How the caller says who it is.
enum Auth {
    /// `Authorization: Basic base64(app_code:app_secret)`.
    Basic(Credentials),
    /// `Authorization: Bearer dct_…`; `touch` is set by [`Auth::verify`] when its recorded
    /// last use is stale.
    Bearer { token: BearerToken, touch: bool },
}

const REJECTED: &str = "the app's code and secret, or the bearer token, are not accepted";

impl Auth {
    /// The app it authenticates. Unknown app, wrong secret, unknown or revoked token: one answer.
    fn verify(&mut self, conn: &mut crate::db::DbConn, now: i64) -> Result<String, EsbError> {
        match self {
            Self::Basic(creds) => {
                creds
                    .verify(conn)
                    .map(|()| creds.app_code.clone())
                    .map_err(|e| match e {
                        EsbError::AppAuth(_) => EsbError::AppAuth(REJECTED),
                        other => other,
                    })
            }
            Self::Bearer { token, touch } => {
                let holder =
                    tokens::verify(conn, token, now)?.ok_or(EsbError::AppAuth(REJECTED))?;
                *touch = holder.stale;
                Ok(holder.app_code)
            }
        }
    }
}

fn authorization(req: &HttpRequest, origin: &Origin) -> Result<Auth, Problem> {
    let missing = || Problem::Unauthorized(origin.credentials);
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing)?;
    let (scheme, value) = header.trim().split_once(' ').ok_or_else(missing)?;
    if scheme.eq_ignore_ascii_case("bearer") {
        // A malformed token is refused as an unknown one would be, without a lookup.
        return BearerToken::parse(value.trim())
            .map(|token| Auth::Bearer {
                token,
                touch: false,
            })
            .ok_or(Problem::Unauthorized(REJECTED));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(missing());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(missing)?;
    let (code, secret) = decoded
        .split_once(':')
        .filter(|(c, s)| !c.is_empty() && !s.is_empty())
        .ok_or_else(missing)?;
    Ok(Auth::Basic(Credentials::new(
        code.to_owned(),
        secret.to_owned(),
    )))
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
fn receivers(raw: &str, origin: &Origin, routed: bool) -> Result<Vec<Username>, Refusal> {
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
        return Err(refuse(format!(
            "no username in the path; use {}/alice,ops-robot, or route by label with DING_CHANNEL_ALERT_ROUTES",
            origin.path
        )));
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
