//! The platform's own CMSI behind ding-channel (`DING_CHANNEL_UPSTREAM_CMSI`). With the
//! `cmsi/` paths routed here, what ding-channel does not serve (another `msg_type` of
//! `send_msg`, `send_mail`, `send_sms`, …) is passed on as it came and answered as the upstream
//! answered, and `get_msg_type` lists the upstream's types beside ours. The upstream
//! authenticates what it is passed: the caller's credentials go with the request, unread here.

use super::auth::{self, Credentials};
use super::envelope::{Code, Envelope, Reply};
use super::error::EsbError;
use super::gateway;
use super::params::Params;
use crate::channels::manifest::{Component, Manifest};
use crate::config::UpstreamSettings;
use crate::metrics::Metrics;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Request headers passed on: the app's authentication, how the body is encoded, the caller's
/// language, time zone and tenant, and the trace. `X-Request-Id` is ours (the caller's when
/// it sent a sane one). Nothing hop-by-hop (`Connection`, `Keep-Alive`, `TE`,
/// `Transfer-Encoding`, `Upgrade`, `Proxy-*`), no `Host` or `Content-Length` (the client's own
/// connection sets them), and no `Cookie`: a browser session is not the calling app's.
pub const FORWARDED_HEADERS: &[&str] = &[
    "x-bkapi-authorization",
    "content-type",
    "blueking-language",
    "blueking-timezone",
    "x-bk-tenant-id",
    "traceparent",
];

/// Marks what ding-channel passed on. A request that carries it came back: the upstream is
/// an address routed to ding-channel, and passing it on again would loop until the timeout.
pub const LOOP_HEADER: &str = "x-ding-channel-passed";

/// The CMSI components of the ESB; any other name is counted as `other`, so a caller cannot
/// grow the metric's series.
const COMPONENTS: &[&str] = &[
    "get_msg_type",
    "send_mail",
    "send_mp_weixin",
    "send_msg",
    "send_qy_weixin",
    "send_sms",
    "send_voice_msg",
    "send_weixin",
];

/// A CMSI component path as platforms call it: `cmsi/<name>` or `v2/cmsi/<name>`, with or
/// without the trailing slash. The upstream URL is built from these checked parts alone, never
/// from the caller's path: the HTTP client reads `\` as `/` and resolves `..`, so a raw tail
/// such as `cmsi/x/..\..\admin/` would reach any path of the ESB's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub name: &'a str,
    v2: bool,
    slash: bool,
}

impl<'a> Target<'a> {
    /// `tail` is the path after `/api/c/compapi/`, as decoded. Only one segment of
    /// `[a-z][a-z0-9_]*` after `cmsi/` is a component: nothing else is passed on.
    pub fn parse(tail: &'a str) -> Option<Self> {
        let (v2, rest) = match tail.strip_prefix("v2/") {
            Some(rest) => (true, rest),
            None => (false, tail),
        };
        let rest = rest.strip_prefix("cmsi/")?;
        let (name, slash) = match rest.strip_suffix('/') {
            Some(name) => (name, true),
            None => (rest, false),
        };
        let mut chars = name.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        valid.then_some(Self { name, v2, slash })
    }

    /// The same version and slash as the caller's path, for another component.
    pub fn with_name(self, name: &'a str) -> Self {
        Self { name, ..self }
    }

    /// Where the manifest would declare a channel for this component.
    fn channel_path(&self) -> String {
        format!("/cmsi/{}/", self.name)
    }

    /// The path on the upstream, from `/api/c/compapi/` on.
    fn upstream_path(&self) -> String {
        format!(
            "/api/c/compapi/{}cmsi/{}{}",
            if self.v2 { "v2/" } else { "" },
            self.name,
            if self.slash { "/" } else { "" }
        )
    }
}

/// The component a path names, to go upstream when the manifest declares no channel there.
pub fn foreign_path<'t>(manifest: &Manifest, tail: &'t str) -> Option<Target<'t>> {
    Target::parse(tail).filter(|t| {
        let path = t.channel_path();
        !manifest.channels.iter().any(|c| c.path == path)
    })
}

/// Whether a `send_msg` names a `msg_type` the manifest does not declare. A missing one is
/// still ours to refuse (the upstream would refuse it too, less clearly).
pub fn foreign_msg_type<'t>(
    manifest: &Manifest,
    tail: &'t str,
    params: &Params,
) -> Option<Target<'t>> {
    let target = Target::parse(tail)?;
    let path = target.channel_path();
    let send_msg = manifest
        .channels
        .iter()
        .any(|c| c.path == path && c.component == Component::SendMsg);
    let foreign = send_msg
        && matches!(params.str("msg_type"), Ok(Some(kind))
            if !manifest.msg_types.iter().any(|t| t.kind == kind.trim()));
    foreign.then_some(target)
}

pub struct Upstream {
    /// The base URL without its trailing `/`.
    base: String,
    http: reqwest::Client,
    timeout: Duration,
    /// The largest answer read (`DING_CHANNEL_MAX_BODY`, as for requests).
    max_body: usize,
    metrics: Arc<Metrics>,
}

impl Upstream {
    pub fn new(
        settings: &UpstreamSettings,
        max_body: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("ding-channel/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout)
            // The ESB is reached directly, and a redirect is its answer to pass back, not to follow.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            base: settings.cmsi.as_str().trim_end_matches('/').to_owned(),
            http,
            timeout: settings.timeout,
            max_body,
            metrics,
        })
    }

    /// The request as received, ready to be passed on.
    pub fn call<'a>(
        &'a self,
        req: &'a HttpRequest,
        body: &'a Bytes,
        request_id: &'a str,
    ) -> Call<'a> {
        Call {
            upstream: self,
            req,
            body,
            request_id,
        }
    }
}

pub struct Call<'a> {
    upstream: &'a Upstream,
    req: &'a HttpRequest,
    body: &'a Bytes,
    request_id: &'a str,
}

/// What the upstream answered.
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// Why the upstream gave no usable answer.
#[derive(Debug)]
enum Failure {
    Timeout,
    Connect(String),
    Transport(String),
    TooLarge,
    NotJson {
        status: u16,
    },
    /// `get_msg_type` answered `result: false`.
    Refused(String),
    /// `get_msg_type`'s `data` is not a list of types.
    Shape,
}

impl Failure {
    fn outcome(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect(_) | Self::Transport(_) => "unreachable",
            Self::TooLarge | Self::NotJson { .. } | Self::Shape => "bad_answer",
            Self::Refused(_) => "refused",
        }
    }

    fn describe(&self, up: &Upstream) -> String {
        match self {
            Self::Timeout => format!(
                "no answer within {} ms (DING_CHANNEL_UPSTREAM_TIMEOUT_MS)",
                up.timeout.as_millis()
            ),
            Self::Connect(e) => format!("cannot connect ({e})"),
            Self::Transport(e) => format!("the request failed ({e})"),
            Self::TooLarge => format!(
                "the answer is larger than {} bytes (DING_CHANNEL_MAX_BODY)",
                up.max_body
            ),
            Self::NotJson { status } => {
                format!("answered HTTP {status} with a body that is not JSON")
            }
            Self::Refused(why) => format!("refused: {why}"),
            Self::Shape => "its data is not a list of message types".to_owned(),
        }
    }
}

/// The innermost cause of a client error: the OS's reason, without the URL (whose query may
/// hold the caller's `bk_app_secret`).
fn cause(e: &reqwest::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

impl Call<'_> {
    /// Passes the request on and answers as the upstream answered (status, content type,
    /// body); a JSON answer of any status is the upstream's to give. No answer, or one that
    /// is not JSON: the envelope `1306201` naming the upstream and what went wrong, as the ESB
    /// answers a third-party system that fails.
    pub async fn pass(&self, target: Target<'_>) -> HttpResponse {
        let component = target.name;
        if self.came_back() {
            let up = self.upstream;
            tracing::error!(upstream = %up.base, "a request passed upstream came back: DING_CHANNEL_UPSTREAM_CMSI must be the ESB's own address, not one routed to ding-channel");
            return HttpResponse::Ok().json(Envelope::err(
                Code::Generic,
                format!(
                    "{component} came back from the upstream CMSI at {} (DING_CHANNEL_UPSTREAM_CMSI): it must be the ESB's own address, not one whose cmsi/ paths are routed to ding-channel",
                    up.base
                ),
                Value::Null,
                self.request_id,
            ));
        }
        let json = |answer: Answer| {
            if serde_json::from_slice::<serde::de::IgnoredAny>(&answer.body).is_ok() {
                Ok(answer)
            } else {
                Err(Failure::NotJson {
                    status: answer.status,
                })
            }
        };
        match self.send(target, json).await {
            Ok(answer) => {
                let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
                let mut res = HttpResponse::build(status);
                if let Some(ct) = answer.content_type {
                    res.insert_header((CONTENT_TYPE, ct));
                }
                res.body(answer.body)
            }
            Err(failure) => {
                let up = self.upstream;
                let outcome = match failure {
                    Failure::Connect(_) => "it was not passed on",
                    _ => "it may have been carried out there",
                };
                let message = format!(
                    "the upstream CMSI at {} (DING_CHANNEL_UPSTREAM_CMSI) failed on {component}: {}; {outcome}",
                    up.base,
                    failure.describe(up),
                );
                HttpResponse::Ok().json(Envelope::err(
                    Code::ThirdParty,
                    message,
                    Value::Null,
                    self.request_id,
                ))
            }
        }
    }

    /// Our `get_msg_type` answer with the upstream's types added (ours win on a `type` both
    /// list). Upstream down, slow or answering anything but a list of types: ours alone, and
    /// the message says why.
    /// A caller the API gateway vouched for gets ours alone, without a word: the upstream
    /// would refuse it every time (see [`Call::passable`]).
    pub async fn with_msg_types(&self, mut reply: Reply, tail: &str, params: &Params) -> Reply {
        if reply.code != Code::Ok || self.vouched_only(Some(params)) {
            return reply;
        }
        let Value::Array(ours) = &mut reply.data else {
            return reply;
        };
        if self.came_back() {
            return reply;
        }
        let target = match Target::parse(tail) {
            Some(t) => t.with_name("get_msg_type"),
            None => Target {
                name: "get_msg_type",
                v2: false,
                slash: true,
            },
        };
        match self.send(target, |a| msg_types(&a)).await {
            Ok(theirs) => *ours = merge(std::mem::take(ours), theirs),
            Err(failure) => {
                reply.message = format!(
                    "{}; only ding-channel's types are listed (the upstream CMSI at {}: {})",
                    reply.message,
                    self.upstream.base,
                    failure.describe(self.upstream)
                );
            }
        }
        reply
    }

    fn came_back(&self) -> bool {
        self.req.headers().contains_key(LOOP_HEADER)
    }

    /// Refuses to pass on a call whose only credential is the API gateway's `X-Bkapi-JWT`:
    /// the gateway removed `bk_app_secret`, and the ESB cannot verify a token the gateway signed
    /// for ding-channel, so the upstream could only answer its own unexplained `1306401`.
    /// `params` are the request's when they were parsed; a call without the token is not
    /// parsed here (the upstream reads it).
    pub fn passable(&self, target: Target<'_>, params: Option<&Params>) -> Result<(), EsbError> {
        if !self.vouched_only(params) {
            return Ok(());
        }
        Err(EsbError::GatewayJwt(format!(
            "authenticates calls to ding-channel only, and {} is passed to the upstream CMSI at {} (DING_CHANNEL_UPSTREAM_CMSI), which cannot verify it; the pass-through needs the caller's bk_app_code and bk_app_secret: route the components ding-channel does not serve through the API gateway to the ESB directly",
            target.name, self.upstream.base
        )))
    }

    /// Whether the request carries `X-Bkapi-JWT` and no app secret of its own.
    fn vouched_only(&self, params: Option<&Params>) -> bool {
        let headers = self.req.headers();
        if !headers.contains_key(gateway::HEADER) {
            return false;
        }
        let parsed;
        let params = match params {
            Some(p) => p,
            None => {
                let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
                match Params::from_request(self.req.query_string(), content_type, self.body) {
                    Ok(p) => {
                        parsed = p;
                        &parsed
                    }
                    // No secret can be read from it, and the token cannot stand in for one.
                    Err(_) => return true,
                }
            }
        };
        Credentials::from_request(headers.get(auth::HEADER).map(|v| v.as_bytes()), params).is_err()
    }

    /// One call upstream, its answer judged by `check`; counted and logged once (never its
    /// headers or body).
    async fn send<T>(
        &self,
        target: Target<'_>,
        check: impl FnOnce(Answer) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let started = Instant::now();
        let mut status = None;
        let result = match self.exchange(target).await {
            Ok(answer) => {
                status = Some(answer.status);
                check(answer)
            }
            Err(failure) => Err(failure),
        };
        let label = COMPONENTS
            .iter()
            .find(|c| **c == target.name)
            .copied()
            .unwrap_or("other");
        let up = self.upstream;
        match &result {
            Ok(_) => {
                up.metrics.upstream(label, "answered");
                tracing::info!(
                    component = label,
                    upstream = %up.base,
                    status,
                    elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "passed to the upstream CMSI"
                );
            }
            Err(failure) => {
                up.metrics.upstream(label, failure.outcome());
                tracing::warn!(
                    component = label,
                    upstream = %up.base,
                    status,
                    error = %failure.describe(up),
                    "upstream CMSI failed"
                );
            }
        }
        result
    }

    async fn exchange(&self, target: Target<'_>) -> Result<Answer, Failure> {
        let up = self.upstream;
        let req = self.req;
        let mut url = format!("{}{}", up.base, target.upstream_path());
        if !req.query_string().is_empty() {
            url.push('?');
            url.push_str(req.query_string());
        }
        let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
            .map_err(|e| Failure::Transport(e.to_string()))?;
        let mut out = up
            .http
            .request(method, url)
            .header("x-request-id", self.request_id)
            .header(LOOP_HEADER, "1");
        for name in FORWARDED_HEADERS {
            for value in req.headers().get_all(*name) {
                out = out.header(*name, value.as_bytes());
            }
        }
        if !self.body.is_empty() {
            out = out.body(self.body.clone());
        }
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                Failure::Timeout
            } else if e.is_connect() {
                Failure::Connect(cause(&e))
            } else {
                Failure::Transport(cause(&e))
            }
        };
        let mut res = out.send().await.map_err(failed)?;
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > up.max_body {
                return Err(Failure::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            content_type,
            body,
        })
    }
}

/// The types of an upstream `get_msg_type` answer: the envelope's `data`, each entry an object
/// with a string `type`.
fn msg_types(answer: &Answer) -> Result<Vec<Value>, Failure> {
    let envelope: Value = serde_json::from_slice(&answer.body).map_err(|_| Failure::NotJson {
        status: answer.status,
    })?;
    if envelope["result"] != Value::Bool(true) {
        let why = format!(
            "code {}, {}",
            envelope["code"],
            envelope["message"].as_str().unwrap_or("no message")
        );
        return Err(Failure::Refused(why.chars().take(200).collect()));
    }
    let Value::Array(types) = &envelope["data"] else {
        return Err(Failure::Shape);
    };
    if !types.iter().all(|t| t["type"].is_string()) {
        return Err(Failure::Shape);
    }
    Ok(types.clone())
}

/// The upstream's types in its order, then ours; a `type` both list is ours.
fn merge(ours: Vec<Value>, theirs: Vec<Value>) -> Vec<Value> {
    let mine: HashSet<String> = ours
        .iter()
        .filter_map(|t| t["type"].as_str().map(str::to_owned))
        .collect();
    theirs
        .into_iter()
        .filter(|t| !t["type"].as_str().is_some_and(|k| mine.contains(k)))
        .chain(ours)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(body: &str) -> Answer {
        Answer {
            status: 200,
            content_type: None,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn ours_win_a_type_both_list_and_come_after_the_upstreams() {
        let ours = vec![json!({"type": "ding", "label": "ours"})];
        let theirs = vec![
            json!({"type": "mail"}),
            json!({"type": "ding", "label": "theirs"}),
            json!({"type": "sms"}),
        ];
        let merged = merge(ours, theirs);
        let kinds: Vec<&str> = merged.iter().map(|t| t["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["mail", "sms", "ding"]);
        assert_eq!(merged[2]["label"], "ours");
    }

    #[test]
    fn only_a_successful_list_of_types_is_taken() {
        let ok = msg_types(&answer(r#"{"result": true, "data": [{"type": "mail"}]}"#)).unwrap();
        assert_eq!(ok, vec![json!({"type": "mail"})]);
        for (body, outcome) in [
            (
                r#"{"result": false, "code": 1306401, "message": "no"}"#,
                "refused",
            ),
            (
                r#"{"result": true, "data": {"type": "mail"}}"#,
                "bad_answer",
            ),
            (
                r#"{"result": true, "data": [{"label": "mail"}]}"#,
                "bad_answer",
            ),
            ("<html>502</html>", "bad_answer"),
        ] {
            let failure = msg_types(&answer(body)).unwrap_err();
            assert_eq!(failure.outcome(), outcome, "{body}");
        }
    }

    #[test]
    fn only_one_plain_segment_after_cmsi_is_a_component() {
        let target = |tail| Target::parse(tail).map(|t| t.upstream_path());
        assert_eq!(
            target("cmsi/send_mail/").as_deref(),
            Some("/api/c/compapi/cmsi/send_mail/")
        );
        assert_eq!(
            target("v2/cmsi/send_voice_msg").as_deref(),
            Some("/api/c/compapi/v2/cmsi/send_voice_msg")
        );
        for tail in [
            "cmsi/",
            "cmsi//",
            "cmsi//send_mail/",
            "cmsi/send_mail//",
            "v2//cmsi/send_mail/",
            "/cmsi/send_mail/",
            "cmsi/x/../../admin/",
            "cmsi/x/..\\..\\..\\admin/",
            "cmsi/..",
            "cmsi/x%2F..%2Fadmin/",
            "cmsi/Send_Mail/",
            "cmsi/1mail/",
            "cmsi/send-mail/",
            "cmsi/send_mail?x/",
            "cmsi/send_mail\n/",
            "cc/search_host/",
            "v3/cmsi/send_mail/",
        ] {
            assert_eq!(Target::parse(tail), None, "{tail:?}");
        }
    }

    #[test]
    fn a_component_is_foreign_when_the_manifest_declares_no_channel_at_its_path() {
        let manifest = Manifest::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/channel_manifest.json"
        )))
        .unwrap();
        let name = |tail| foreign_path(&manifest, tail).map(|t| t.name);
        assert_eq!(name("cmsi/send_mail/"), Some("send_mail"));
        assert_eq!(name("v2/cmsi/send_mail"), Some("send_mail"));
        assert_eq!(name("cmsi/send_msg/"), None);
        assert_eq!(name("v2/cmsi/send_ding/"), None);
        assert_eq!(name("cc/search_host/"), None);
        assert_eq!(name("cmsi/"), None);
        assert_eq!(name("cmsi/x/..\\admin/"), None);

        let params = |body: &str| {
            Params::from_request("", Some("application/json"), body.as_bytes()).unwrap()
        };
        let foreign = |tail, body| foreign_msg_type(&manifest, tail, &params(body)).map(|t| t.name);
        assert_eq!(
            foreign("v2/cmsi/send_msg/", r#"{"msg_type": "mail"}"#),
            Some("send_msg")
        );
        assert_eq!(foreign("cmsi/send_msg/", r#"{"msg_type": " ding "}"#), None);
        assert_eq!(foreign("cmsi/send_msg/", "{}"), None);
        assert_eq!(foreign("cmsi/send_ding/", r#"{"msg_type": "mail"}"#), None);
        // Served here as send_msg, but not a path to pass on.
        assert_eq!(foreign("cmsi//send_msg/", r#"{"msg_type": "mail"}"#), None);
    }
}
