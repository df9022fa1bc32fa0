//! `POST /api/v1/alertmanager/{receivers}`, and the handling every webhook source shares
//! (Grafana's too, [`Origin`]): HTTP basic with an app's code and secret or a bearer token, the
//! payload, `send_ding` from the registry, then the send, all within the webhook timeout.
//! Alertmanager retries a 5xx and drops a notification on a 4xx, so a 4xx is kept for what no
//! retry can fix.

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
use crate::domain::secrets::BearerToken;
use crate::domain::username::Username;
use crate::http::request_id;
use crate::sources::esb::args::MAX_RECEIVERS;
use crate::sources::esb::auth::Credentials;
use crate::sources::esb::error::EsbError;
use crate::sources::{tokens, Source};
use actix_web::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde_json::json;
use std::time::Duration;

/// How long the answer waits for DingTalk's first attempt, at most half the webhook timeout.
const FIRST_ATTEMPT_WAIT: Duration = Duration::from_secs(2);

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
    cfg.route(
        &format!("{}/{{receivers}}", ALERTMANAGER.path),
        web::post().to(webhook),
    );
}

/// Why a notification is not taken, as its sender should hear it.
enum Problem {
    Unauthorized(&'static str),
    Invalid(Refusal),
    /// An admin (or time) can fix it: Alertmanager retries, Grafana sends it again later.
    Unavailable(String),
}

async fn webhook(
    req: HttpRequest,
    body: web::Bytes,
    am: web::Data<Alertmanager>,
    service: web::Data<SendService>,
) -> HttpResponse {
    handle(&ALERTMANAGER, &req, &body, &am, &service).await
}

/// A webhook source's request, answered within `am.timeout` whatever storage does: a 503 in
/// time gets the sender's retry (a notification stored meanwhile is then a replay).
pub async fn handle(
    origin: &Origin,
    req: &HttpRequest,
    body: &[u8],
    am: &Alertmanager,
    service: &SendService,
) -> HttpResponse {
    let rid = request_id(req);
    let served = tokio::time::timeout(am.timeout, serve(origin, req, body, am, service, &rid))
        .await
        .unwrap_or_else(|_| {
            Err(Problem::Unavailable(format!(
                "the notification was not confirmed stored within {} ms; if it was, the same notification sent again is taken once",
                am.timeout.as_millis(),
            )))
        });
    let source = origin.name;
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
        Err(Problem::Invalid(r)) => {
            tracing::info!(source, field = %r.field, error = %r, "webhook request refused");
            HttpResponse::BadRequest().json(json!({
                "status": "error", "field": r.field, "error": r.to_string(), "request_id": rid,
            }))
        }
        Err(Problem::Unavailable(why)) => {
            tracing::warn!(source, error = %why, "webhook notification not stored");
            HttpResponse::ServiceUnavailable().json(json!({
                "status": "error", "error": why, "request_id": rid,
            }))
        }
    }
}

async fn serve(
    origin: &Origin,
    req: &HttpRequest,
    body: &[u8],
    am: &Alertmanager,
    service: &SendService,
    rid: &str,
) -> Result<(StatusCode, serde_json::Value), Problem> {
    let mut auth = authorization(req, origin)?;
    let receivers =
        receivers(req.match_info().query("receivers"), origin).map_err(Problem::Invalid)?;
    let notification = (origin.parse)(body).map_err(Problem::Invalid)?;
    let names: Vec<String> = receivers.iter().map(ToString::to_string).collect();
    let now = am.clock.now_ms();
    let read = am
        .db
        .run(move |conn| {
            read_tx(conn, |conn| {
                let app = auth.verify(conn, now)?;
                let channels = registry::list(conn)?;
                let settings = DeliverySettings::from_registry(&channels);
                let directory = Directory::read(conn, names, &[], &settings, now)?;
                Ok::<_, EsbError>((app, channels, settings, directory))
            })
            .map(|read| (read, auth))
        })
        .await;
    let ((app_code, channels, settings, directory), auth) = match read {
        Ok(read) => read,
        Err(EsbError::AppAuth(why)) => return Err(Problem::Unauthorized(why)),
        Err(e) => return Err(Problem::Unavailable(format!("storage: {e}"))),
    };
    if let Auth::Bearer { token, touch: true } = auth {
        // Only the admin's `apps show` reads it: a failure costs the figure, not the alert.
        if let Err(e) = am
            .db
            .write(move |conn| tokens::touch(conn, &token, now))
            .await
        {
            tracing::warn!(error = %e, "a bearer token's last use was not recorded");
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
    route.wait = route.wait.min(FIRST_ATTEMPT_WAIT).min(am.timeout / 2);
    let source = Webhook {
        utc_offset_min: am.utc_offset_min,
        now_ms: now,
    };
    let request = source
        .request((route, &notification, &receivers))
        .map_err(Problem::Invalid)?;
    let caller = Caller {
        app_code,
        username: None,
        request_id: rid.to_owned(),
        tenant_id: None,
    };
    let known = Known {
        settings,
        directory: Some(directory),
    };
    match service.submit_with(request, &caller, known).await {
        Ok(receipt) => Ok(source.answer(&receipt)),
        Err(SendError::QueueFull(why)) => Err(Problem::Unavailable(why)),
        Err(SendError::Storage(e)) => Err(Problem::Unavailable(format!("storage: {e}"))),
    }
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

/// `alice,ops-robot`: the usernames the notification goes to, as `send_ding` reads them.
fn receivers(raw: &str, origin: &Origin) -> Result<Vec<Username>, Refusal> {
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
        return Err(refuse(format!(
            "no username in the path; use {}/alice,ops-robot",
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
