//! One error type for every DingTalk answer that is not a success, classified once, here:
//! `Permanent` (retrying cannot help; the explanation says what an admin must change) or
//! `Retryable` (try again, not before `after` when DingTalk imposes a pause). The callers
//! decide retries from the class, never from strings. No secret is ever put in an error.

use serde_json::Value;
use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Token,
    GetByMobile,
    BatchSend,
    ReadStatus,
    BatchRecall,
    Webhook,
    /// `topapi/v2/department/listsub`: one level of the organisation's departments.
    DepartmentList,
    /// `topapi/v2/user/list`: one page of a department's own members.
    UserList,
    /// Work notifications: `asyncsend_v2`, `getsendresult` and `corpconversation/recall`.
    WorkNotice,
    WorkNoticeResult,
    WorkNoticeRecall,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::GetByMobile => "getbymobile",
            Self::BatchSend => "batch_send",
            Self::ReadStatus => "read_status",
            Self::BatchRecall => "batch_recall",
            Self::Webhook => "robot_send",
            Self::DepartmentList => "department_listsub",
            Self::UserList => "user_list",
            Self::WorkNotice => "asyncsend_v2",
            Self::WorkNoticeResult => "getsendresult",
            Self::WorkNoticeRecall => "work_notice_recall",
        }
    }

    /// Whether DingTalk counts the call against the organisation's monthly API quota: every
    /// call with the app's access token is an OpenAPI call (and the token serves only those);
    /// a custom robot's webhook is not.
    pub fn metered(self) -> bool {
        self != Self::Webhook
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Permanent,
    Retryable { after: Option<Duration> },
}

/// What kind of refusal an answer is, whatever DingTalk's code for it: what the callers
/// decide from, never the code's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The app's key or secret, or its robot code.
    AppCredentials,
    /// The access token expired or is not valid (a new one is fetched).
    InvalidToken,
    /// No DingTalk user has the mobile.
    UnknownMobile,
    /// The app lacks a permission for the call.
    NoPermission,
    /// This server's IP is not in the app's whitelist.
    IpNotWhitelisted,
    /// The group robot itself: its security check, its token, or it is disabled.
    RobotRefused,
    /// The message: its type, body, content or size.
    MessageRefused,
    /// Too fast for a robot's or the app's limits.
    Throttled,
    /// DingTalk is busy or had a server error.
    Busy,
    /// DingTalk's gateway refused the call as abuse or per-IP flow control (its
    /// `{"status":1111,"wait":…}` answer, or an HTML page): every call of this egress waits,
    /// robots included.
    AntiAbuse,
    /// The organisation used up its monthly API call quota: the metered calls wait for the
    /// next month.
    QuotaExhausted,
    /// The exchange failed on the way: connect, timeout, an answer that is not DingTalk's.
    Transport,
    /// Anything else DingTalk refused.
    Other,
}

/// A group robot's security setting that refused a call ([`DingTalkError::robot_security`]),
/// read from DingTalk's errmsg in its old English wording or its current
/// `description:…;solution:…` one (docs/dingtalk.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RobotSecurity {
    /// "keywords not in content" / "关键词不匹配": the text holds none of its custom keywords.
    Keyword,
    /// "sign not match" / "签名不匹配": the signature is not the robot's secret's (or there is none).
    Signature,
    /// "invalid timestamp" / "签名过期": the signed timestamp is over an hour off DingTalk's clock.
    Timestamp,
    /// "ip … not in whitelist" / "不在白名单": the caller's address (as DingTalk names it) is
    /// outside its ranges.
    Ip(Option<String>),
    /// Another 310000 message.
    Other,
}

impl RobotSecurity {
    fn read(errmsg: &str) -> Self {
        // Matched on the description's own words: the signature message's solution mentions
        // the timestamp (时间戳), so that word alone tells nothing.
        let has = |phrases: &[&str]| phrases.iter().any(|p| errmsg.contains(p));
        if has(&["keywords not in content", "关键词不匹配"]) {
            Self::Keyword
        } else if has(&["invalid timestamp", "签名过期"]) {
            Self::Timestamp
        } else if has(&["sign not match", "签名不匹配"]) {
            Self::Signature
        } else if has(&["not in whitelist", "不在白名单"]) {
            // "ip 203.0.113.9 not in whitelist"; the current wording names no address.
            let ip = errmsg
                .split_whitespace()
                .skip_while(|w| *w != "ip")
                .nth(1)
                .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok());
            Self::Ip(ip.map(str::to_owned))
        } else {
            Self::Other
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DingTalkError {
    pub api: Api,
    pub class: Class,
    pub kind: Kind,
    /// DingTalk's own code (`errcode`, or the new API's `code` / HTTP status); ours for
    /// failures that never reached DingTalk (`timeout`, `network`, `bad_answer`, …).
    pub code: String,
    /// DingTalk's own message, quoted as it came.
    pub message: String,
    /// What it means and what to do, in words an admin can act on.
    pub explanation: String,
    /// DingTalk's request id, when the answer had one.
    pub request_id: Option<String>,
}

impl fmt::Display for DingTalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", self.explanation, self.code)?;
        if !self.message.is_empty() {
            write!(f, " \"{}\"", self.message)?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for DingTalkError {}

impl DingTalkError {
    pub fn is_retryable(&self) -> bool {
        matches!(self.class, Class::Retryable { .. })
    }

    /// DingTalk said "too fast" (robot or app limits): pause that robot or app, don't count an
    /// attempt against the message.
    pub fn is_throttle(&self) -> bool {
        self.kind == Kind::Throttled
    }

    /// DingTalk holds back the egress (its anti-abuse pause, the organisation's monthly quota):
    /// neither the call nor the message is at fault. Wait for the hold to end (`retry_after`),
    /// don't count an attempt.
    pub fn holds_egress(&self) -> bool {
        matches!(self.kind, Kind::AntiAbuse | Kind::QuotaExhausted)
    }

    /// No answer came (connect, timeout, broken off), as opposed to one that is not the
    /// documented JSON ([`Self::bad_answer`], also `Kind::Transport`).
    pub fn unanswered(&self) -> bool {
        self.kind == Kind::Transport && matches!(self.code.as_str(), TIMEOUT | NETWORK)
    }

    /// Whether DingTalk refused only the value of the call's parameter `name` (none such, or
    /// out of date): oapi's `40035` "不合法的参数" naming it, or the new API's
    /// `InvalidParameter.<name>…` code.
    pub fn refuses_only(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        match self.code.to_ascii_lowercase() {
            code if code == "40035" => self.message.to_ascii_lowercase().contains(&name),
            code => code.starts_with("invalidparameter.") && code.contains(&name),
        }
    }

    /// A refusal of the robot itself (signature, token, disabled): every message to it fails
    /// alike until an admin fixes the robot user.
    pub fn dooms_robot(&self) -> bool {
        self.api == Api::Webhook && self.kind == Kind::RobotRefused
    }

    /// Which of a group robot's security settings refused a webhook call (310000), as
    /// DingTalk's errmsg says (its custom-robot guide lists the messages; docs/dingtalk.md).
    pub fn robot_security(&self) -> Option<RobotSecurity> {
        (self.api == Api::Webhook && self.code == "310000")
            .then(|| RobotSecurity::read(&self.message))
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self.class {
            Class::Retryable { after } => after,
            Class::Permanent => None,
        }
    }

    pub(crate) fn new(
        api: Api,
        (class, kind): (Class, Kind),
        code: impl Into<String>,
        message: impl Into<String>,
        explanation: impl Into<String>,
    ) -> Self {
        Self {
            api,
            class,
            kind,
            code: code.into(),
            message: message.into(),
            explanation: explanation.into(),
            request_id: None,
        }
    }

    /// A failure on the way (connect, timeout, broken body): always worth another try.
    pub(crate) fn transport(api: Api, e: reqwest::Error) -> Self {
        let (code, what) = if e.is_timeout() {
            (TIMEOUT, "DingTalk did not answer in time")
        } else if e.is_connect() {
            (
                NETWORK,
                "cannot connect to DingTalk (check the network, DINGTALK_PROXY and the base URLs)",
            )
        } else {
            (NETWORK, "the exchange with DingTalk broke off")
        };
        // `without_url`: the URL may carry an access_token.
        let e = e.without_url();
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail = format!("{detail}: {s}");
            source = s.source();
        }
        Self::new(api, (RETRY, Kind::Transport), code, detail, what)
    }

    /// A missing permission as DingTalk names it, in place of the one the call is assumed to
    /// need (DingTalk knows; our table may be out of date).
    pub(crate) fn lacking(mut self, scopes: &[String]) -> Self {
        if self.kind == Kind::NoPermission && !scopes.is_empty() {
            self.explanation = format!(
                "the DingTalk app lacks the permission {} (as DingTalk names it): grant it in the DingTalk developer console (权限管理), then have an admin authorise the app again if DingTalk asks",
                scopes.join(", ")
            );
        }
        self
    }

    pub(crate) fn bad_answer(api: Api, status: u16, why: &str) -> Self {
        let class = match status {
            429 => (RETRY, Kind::Throttled),
            s if s >= 500 => (RETRY, Kind::Busy),
            _ => (
                Class::Retryable {
                    after: Some(Duration::from_secs(30)),
                },
                Kind::Transport,
            ),
        };
        Self::new(api, class, format!("http_{status}"), why, "DingTalk gave an answer that is not the documented JSON (a proxy or gateway error page?)")
    }
}

/// The longest pause taken from DingTalk's anti-abuse `wait` (a longer one is asked again
/// then), and the one taken when the answer names none (an HTML page).
pub const GATEWAY_WAIT_MAX: Duration = Duration::from_secs(600);
pub const GATEWAY_WAIT_DEFAULT: Duration = Duration::from_secs(60);

const QUOTA: &str = "the organisation's monthly DingTalk API call quota is used up: the app's calls wait for the next month";
/// The quota's code on a custom robot's webhook, which DingTalk does not meter: not a hold of
/// the app's calls, an ordinary retry.
const WEBHOOK_QUOTA: &str = "DingTalk answered the robot's webhook with the monthly API quota's code, though it does not meter custom robots; retried";

/// Whether `v`, DingTalk's JSON answer to a call of `api`, says the monthly quota is used up
/// (as [`classify_oapi`] and [`classify_api`] read it).
pub fn is_quota_answer(api: Api, v: &Value) -> bool {
    api.metered()
        && (v["errcode"].as_i64() == Some(90020)
            || v["code"].as_str() == Some("Forbidden.AccessDenied.ApiCountLimitForOrg"))
}

/// The quota's classification for `api` (its webhook is not metered).
fn quota(api: Api) -> (Class, Kind, String) {
    if api.metered() {
        (RETRY, Kind::QuotaExhausted, QUOTA.to_owned())
    } else {
        (RETRY_1M, Kind::Busy, WEBHOOK_QUOTA.to_owned())
    }
}

/// DingTalk's gateway refuses abuse and per-IP flow control in shapes of its own, not an API's
/// errcode JSON: `{"status":1111,"wait":5,"punish":"deny",…}` (sometimes beside an errcode),
/// or an HTML page. Answers the error when `body` is one of those (`html`: the answer said
/// `text/html`). Only an HTML page with a status DingTalk's gateway refuses with (200, 403,
/// 405, 429) is taken for one; a 401/407 page is a proxy asking for credentials, and any other
/// (a 5xx during an outage, a proxy's error page) is no reason to pause every process: it is
/// the ordinary answer that is not DingTalk's JSON.
pub fn gateway_refusal(api: Api, status: u16, html: bool, body: &[u8]) -> Option<DingTalkError> {
    let wait_for = |wait: Duration| Class::Retryable { after: Some(wait) };
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => {
            let code = v["status"].as_i64().filter(|s| *s == 1111);
            if code.is_none() && v.get("punish").is_none() {
                return None;
            }
            let wait = gateway_wait(&v["wait"]);
            let message = format!("punish {}, wait {}", short(&v["punish"]), short(&v["wait"]));
            let explanation = "DingTalk's gateway refused the call as too many (anti-abuse, per-IP flow control): every call to DingTalk from this server, robots included, waits as it asks, then sending resumes";
            let code = code.map_or_else(|| "punish".to_owned(), |c| c.to_string());
            Some(DingTalkError::new(
                api,
                (wait_for(wait), Kind::AntiAbuse),
                code,
                message,
                explanation,
            ))
        }
        Ok(_) => None,
        Err(_) if html || body.trim_ascii_start().starts_with(b"<") => {
            let (class, explanation) = match status {
                200 | 403 | 405 | 429 => ((wait_for(GATEWAY_WAIT_DEFAULT), Kind::AntiAbuse), "DingTalk (or a proxy on the way) answered an HTML page instead of its JSON, as its gateway does for abuse and flow control: every call to DingTalk from this server, robots included, waits a minute, then sending resumes; if this repeats, check the proxy (DINGTALK_PROXY) and this server's egress IP"),
                401 | 407 => ((wait_for(GATEWAY_WAIT_DEFAULT), Kind::Transport), "a proxy on the way answered with an HTML page asking for credentials (HTTP 401/407), not DingTalk: set the proxy's user and password in DINGTALK_PROXY (http://user:password@host:port), or let this server through it; retried"),
                _ => return None,
            };
            Some(DingTalkError::new(
                api,
                class,
                format!("html_{status}"),
                html_title(body),
                explanation,
            ))
        }
        Err(_) => None,
    }
}

/// The anti-abuse answer's `wait` (seconds, a number or a string), bounded.
fn gateway_wait(v: &Value) -> Duration {
    let secs = v
        .as_f64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .filter(|s| s.is_finite() && *s > 0.0);
    secs.map_or(GATEWAY_WAIT_DEFAULT, |s| {
        Duration::from_secs_f64(s.max(1.0)).min(GATEWAY_WAIT_MAX)
    })
}

/// A JSON value as a short text for a message.
fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    s.chars().take(40).collect()
}

/// The page's `<title>`, to quote: left out when it looks like it holds a URL (a proxy may
/// echo the request's, with its access_token).
fn html_title(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let lower = text.to_ascii_lowercase();
    let title = lower
        .find("<title")
        .and_then(|i| Some(i + lower[i..].find('>')? + 1))
        .and_then(|start| Some(&text[start..start + lower[start..].find("</title")?]))
        .map(str::trim)
        .unwrap_or("");
    if title.contains(['/', '?', '=', '&']) {
        return String::new();
    }
    title.chars().take(80).collect()
}

/// Our codes of a failure on the way ([`DingTalkError::transport`]).
const TIMEOUT: &str = "timeout";
const NETWORK: &str = "network";

pub(crate) const RETRY: Class = Class::Retryable { after: None };
const RETRY_1S: Class = Class::Retryable {
    after: Some(Duration::from_secs(1)),
};
const RETRY_1M: Class = Class::Retryable {
    after: Some(Duration::from_secs(60)),
};
const RETRY_10M: Class = Class::Retryable {
    after: Some(Duration::from_secs(600)),
};
const PERMANENT: Class = Class::Permanent;

/// Context that turns a code into advice naming the thing to fix.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    /// The robot user and the profile fields its credentials are read from.
    pub robot: Option<(&'a str, &'a str, &'a str)>,
    pub mobile: Option<&'a str>,
}

/// Whether an answer means "this access token is no longer valid": refresh and retry once.
pub fn is_invalid_token(
    errcode: Option<i64>,
    sub_code: Option<&str>,
    status: u16,
    code: Option<&str>,
) -> bool {
    matches!(errcode, Some(40014))
        || (errcode == Some(88) && sub_code == Some("40014"))
        || status == 401
        || code == Some("InvalidAuthentication")
}

/// Classifies an oapi answer (`errcode` ≠ 0).
pub fn classify_oapi(api: Api, errcode: i64, errmsg: &str, ctx: Context<'_>) -> DingTalkError {
    let found = known(api, errcode, errmsg, ctx).unwrap_or_else(|| {
        let what = format!("DingTalk refused the {} call", api.name());
        (PERMANENT, Kind::Other, what)
    });
    refusal(api, errcode.to_string(), found, errmsg)
}

/// Classifies a topapi answer (`errcode` ≠ 0), which wraps many refusals in errcode 88 with
/// the real code as `sub_code` (and in the errmsg, "ding talk error[subcode=60011,submsg=…]"):
/// that code is classified, so a missing permission is not taken for an expired token, and
/// the code kept shows both ("88/60011"). A sub code this table does not know stays
/// retryable, as 88 is.
pub fn classify_topapi(
    api: Api,
    errcode: i64,
    sub_code: Option<&str>,
    errmsg: &str,
    ctx: Context<'_>,
) -> DingTalkError {
    let Some(sub) = wrapped(errcode, sub_code, errmsg) else {
        return classify_oapi(api, errcode, errmsg, ctx);
    };
    let found = known(api, sub, errmsg, ctx)
        .or_else(|| known(api, errcode, errmsg, ctx))
        .expect("88 is in the table");
    refusal(api, format!("{errcode}/{sub}"), found, errmsg)
}

fn refusal(
    api: Api,
    code: String,
    (class, kind, explanation): (Class, Kind, String),
    errmsg: &str,
) -> DingTalkError {
    DingTalkError::new(api, (class, kind), code, errmsg, explanation).lacking(&named_scopes(errmsg))
}

/// What a code DingTalk documents means; `None` for one this table does not know.
fn known(api: Api, errcode: i64, errmsg: &str, ctx: Context<'_>) -> Option<(Class, Kind, String)> {
    let robot = ctx
        .robot
        .map_or_else(String::new, |(user, _, _)| format!(" of user {user}"));
    let token_field = ctx.robot.map_or("the token field", |(_, t, _)| t);
    let sign_field = ctx.robot.map_or("the sign field", |(_, _, s)| s);
    let (class, kind, explanation) = match errcode {
        40089 | 40096 => (PERMANENT, Kind::AppCredentials, "DingTalk rejected the app credentials: check ding_app_key and ding_app_secret in the send_dingtalk channel's comp_conf".to_owned()),
        40014 => (RETRY, Kind::InvalidToken, "the access token expired or is invalid; a new one is fetched".to_owned()),
        88 => (RETRY, Kind::Other, format!("DingTalk refused the {} call with errcode 88, which wraps the reason (its message names it); retried", api.name())),
        60121 => (PERMANENT, Kind::UnknownMobile, format!("no DingTalk user has the mobile {}: the telephone in the profile must equal the phone registered in DingTalk", ctx.mobile.unwrap_or("given"))),
        60011 if matches!(api, Api::WorkNotice | Api::WorkNoticeResult | Api::WorkNoticeRecall) => (PERMANENT, Kind::NoPermission, "the DingTalk app lacks the permission for work notifications (qyapi_base), or ding_agent_id is not this app's AgentId: grant it in the DingTalk developer console, or fix ding_agent_id in the send_dingtalk channel's comp_conf".to_owned()),
        60011 => (PERMANENT, Kind::NoPermission, format!("the DingTalk app lacks the permission {}: grant it in the DingTalk developer console", permission(api))),
        60003 => (PERMANENT, Kind::Other, "the department is not in the organisation (deleted while the directory was read?); run the sync again".to_owned()),
        60020 => (PERMANENT, Kind::IpNotWhitelisted, format!("this server's IP{} is not in the DingTalk app's IP whitelist: add it in the developer console, or set DINGTALK_PROXY to egress from a whitelisted IP", request_ip(errmsg).map_or_else(String::new, |ip| format!(" {ip} (as DingTalk saw it)")))),
        310000 => (PERMANENT, Kind::RobotRefused, match RobotSecurity::read(errmsg) {
            RobotSecurity::Keyword => format!("the group robot{robot} is secured by keywords and the message holds none of them: store one of its keywords in the robot user's keyword field (send_dingbot's keyword_field)"),
            RobotSecurity::Timestamp => "DingTalk refused the signature's timestamp: this server's clock is over an hour off DingTalk's; set it right (NTP)".to_owned(),
            RobotSecurity::Ip(ip) => format!("the group robot{robot} is secured by IP ranges and this server's address{} is not in them: add it to the robot's security settings, or send through DINGTALK_PROXY", ip.map_or_else(String::new, |ip| format!(" {ip}"))),
            RobotSecurity::Signature | RobotSecurity::Other => format!("robot security check failed (signature, keyword or IP — DingTalk's message says which): check the SEC secret stored in field {sign_field}{robot} and the robot's security settings"),
        }),
        300001 | 300005 | 400101 => (PERMANENT, Kind::RobotRefused, format!("the robot's access_token is not valid: check field {token_field}{robot} (the access_token= value of the webhook URL)")),
        400102 => (PERMANENT, Kind::RobotRefused, format!("the group robot{robot} is disabled: re-enable it in the group's robot settings")),
        400105 => (PERMANENT, Kind::MessageRefused, "DingTalk does not support this message type for custom robots".to_owned()),
        400106 | 400013 => (PERMANENT, Kind::MessageRefused, "DingTalk refused the message body as malformed".to_owned()),
        430101..=430104 => (PERMANENT, Kind::MessageRefused, "DingTalk refused the content (not allowed in this group)".to_owned()),
        460101 => (PERMANENT, Kind::MessageRefused, "the message is larger than the 20000 bytes a robot takes".to_owned()),
        410100 | 130101 | 660026 => (RETRY_10M, Kind::Throttled, format!("DingTalk throttled the group robot{robot} (over 20 messages a minute); it stays silent for about 10 minutes, then sending resumes")),
        90018 => (RETRY_1S, Kind::Throttled, "the DingTalk app is over its calls-per-second limit; retried shortly".to_owned()),
        90006 => (RETRY_1M, Kind::Throttled, "the DingTalk app is over its calls-per-minute limit; retried after a minute".to_owned()),
        90020 => quota(api),
        -1 => (RETRY, Kind::Busy, "DingTalk is busy; retried".to_owned()),
        _ => return None,
    };
    Some((class, kind, explanation))
}

/// The permissions a refusal names, in order: the first bracketed list of permission names
/// ("应用尚未开通所需的权限：[qyapi_get_member_by_mobile]…{requiredScopes=[…]}").
pub(crate) fn named_scopes(text: &str) -> Vec<String> {
    let scope_like = |s: &&str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    };
    text.split('[')
        .skip(1)
        .filter_map(|after| after.split_once(']').map(|(list, _)| list))
        .map(|list| list.split(',').map(str::trim).collect::<Vec<_>>())
        .find(|items| items.iter().all(scope_like))
        .map(|items| items.into_iter().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The code an errcode 88 wraps, from its `sub_code` or its errmsg; never 0 (success) nor 88.
fn wrapped(errcode: i64, sub_code: Option<&str>, errmsg: &str) -> Option<i64> {
    if errcode != 88 {
        return None;
    }
    let in_msg = || {
        let (_, rest) = errmsg.split_once("subcode=")?;
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        Some(&rest[..end])
    };
    sub_code
        .or_else(in_msg)
        .and_then(|c| c.trim().parse().ok())
        .filter(|c| ![0, 88].contains(c))
}

/// The caller's IP a 60020 names ("…,request ip=203.0.113.9 appKey(…)").
fn request_ip(errmsg: &str) -> Option<&str> {
    let (_, rest) = errmsg.split_once("request ip=")?;
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    Some(&rest[..end]).filter(|ip| !ip.is_empty())
}

/// The permission an oapi call needs, as the developer console names it.
fn permission(api: Api) -> &'static str {
    match api {
        Api::DepartmentList => "通讯录部门信息读权限 (qyapi_get_department_list)",
        Api::UserList => "通讯录部门成员读权限 (qyapi_get_department_member)",
        _ => "根据手机号获取成员基本信息 (qyapi_get_member_by_mobile)",
    }
}

/// Classifies a new-API (api.dingtalk.com) failure: HTTP status plus `{code, message}`.
pub fn classify_api(
    api: Api,
    status: u16,
    code: &str,
    message: &str,
    retry_after: Option<Duration>,
) -> DingTalkError {
    let qps =
        code.contains("QpsLimit") || code.contains("Throttling") || code.contains("FlowControl");
    let retry_soon = Class::Retryable {
        after: retry_after.or(Some(Duration::from_secs(1))),
    };
    let (class, kind, explanation) = match status {
        _ if code == "Forbidden.AccessDenied.ApiCountLimitForOrg" => quota(api),
        401 => (RETRY, Kind::InvalidToken, "the access token expired or is invalid; a new one is fetched".to_owned()),
        400 if code == "invalidClientIdOrSecret" => (PERMANENT, Kind::AppCredentials, "DingTalk rejected the app credentials: check ding_app_key and ding_app_secret in the send_dingtalk channel's comp_conf".to_owned()),
        400 if code.contains("robot") || code.contains("Robot") => (PERMANENT, Kind::AppCredentials, "DingTalk refused the robot: check ding_robot_code in the send_dingtalk channel's comp_conf (usually the app key)".to_owned()),
        400 => (PERMANENT, Kind::MessageRefused, format!("DingTalk refused a parameter of the {} call", api.name())),
        403 if qps => (retry_soon, Kind::Throttled, "the DingTalk app is over its QPS limit; retried shortly".to_owned()),
        403 => (PERMANENT, Kind::NoPermission, "the DingTalk app lacks a permission for this call (for single chat: qyapi_robot_sendmsg): grant it in the developer console".to_owned()),
        429 => (retry_soon, Kind::Throttled, "DingTalk asks to slow down; retried".to_owned()),
        s if s >= 500 => (Class::Retryable { after: retry_after }, Kind::Busy, "DingTalk had a server error; retried".to_owned()),
        _ => (PERMANENT, Kind::Other, format!("DingTalk refused the {} call", api.name())),
    };
    let code = if code.is_empty() {
        format!("http_{status}")
    } else {
        code.to_owned()
    };
    DingTalkError::new(api, (class, kind), code, message, explanation)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code DINGTALK_API.md names, with the class it must get.
    #[test]
    fn every_documented_oapi_code_is_classified() {
        let permanent = [
            40089, 40096, 60121, 60011, 60003, 60020, 310000, 300001, 300005, 400101, 400102,
            400105, 400106, 400013, 430101, 430102, 430103, 430104, 460101,
        ];
        let retryable = [40014, 88, 410100, 130101, 660026, 90018, 90006, -1];
        for code in permanent {
            let e = classify_oapi(Api::Webhook, code, "m", Context::default());
            assert_eq!(e.class, Class::Permanent, "{code}");
            assert!(!e.explanation.is_empty());
        }
        for code in retryable {
            assert!(
                classify_oapi(Api::Webhook, code, "m", Context::default()).is_retryable(),
                "{code}"
            );
        }
        assert_eq!(
            classify_oapi(Api::Webhook, 410100, "", Context::default()).retry_after(),
            Some(Duration::from_secs(600))
        );
    }

    #[test]
    fn callers_decide_from_the_kind() {
        let oapi = |code| classify_oapi(Api::Webhook, code, "m", Context::default());
        for code in [410100, 130101, 660026, 90018, 90006] {
            assert!(oapi(code).is_throttle(), "{code}");
        }
        for code in [310000, 300001, 300005, 400101, 400102] {
            assert!(oapi(code).dooms_robot(), "{code}");
        }
        for code in [400105, 460101, -1, 60121] {
            assert!(
                !oapi(code).dooms_robot() && !oapi(code).is_throttle(),
                "{code}"
            );
        }
        assert!(!classify_oapi(Api::BatchSend, 310000, "m", Context::default()).dooms_robot());
        let api = |status, code| classify_api(Api::BatchSend, status, code, "m", None);
        assert!(api(403, "Forbidden.AccessDenied.QpsLimitForApi").is_throttle());
        assert!(api(429, "Throttling").is_throttle());
        assert!(!api(403, "Forbidden.AccessDenied.AccessTokenPermissionDenied").is_throttle());
        assert_eq!(oapi(60121).kind, Kind::UnknownMobile);
    }

    #[test]
    fn every_documented_api_status_is_classified() {
        let cases: [(u16, &str, bool); 9] = [
            (400, "invalidClientIdOrSecret", false),
            (400, "InvalidParameter.userIds", false),
            (401, "InvalidAuthentication", true),
            (
                403,
                "Forbidden.AccessDenied.AccessTokenPermissionDenied",
                false,
            ),
            (403, "Forbidden.AccessDenied.QpsLimitForApi", true),
            (403, "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi", true),
            (429, "Throttling", true),
            (500, "InternalError", true),
            (503, "", true),
        ];
        for (status, code, retry) in cases {
            assert_eq!(
                classify_api(Api::BatchSend, status, code, "m", None).is_retryable(),
                retry,
                "{status} {code}"
            );
        }
        assert_eq!(
            classify_api(Api::BatchSend, 503, "", "", None).code,
            "http_503"
        );
    }

    #[test]
    fn the_gateways_answers_hold_the_egress_for_a_bounded_wait() {
        let refusal = |body: &str| gateway_refusal(Api::BatchSend, 200, false, body.as_bytes());
        let e = refusal(r#"{"status":1111,"wait":5,"punish":"deny","rgv587_flag":"sm"}"#).unwrap();
        assert_eq!((e.kind, e.code.as_str()), (Kind::AntiAbuse, "1111"));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
        assert!(e.holds_egress() && e.is_retryable() && !e.is_throttle());
        assert_eq!(e.message, "punish deny, wait 5");
        let beside =
            refusal(r#"{"errcode":130101,"errmsg":"send too fast","status":1111,"wait":"12"}"#);
        assert_eq!(beside.unwrap().retry_after(), Some(Duration::from_secs(12)));
        let no_wait = refusal(r#"{"punish":"deny"}"#).unwrap();
        assert_eq!(no_wait.retry_after(), Some(GATEWAY_WAIT_DEFAULT));
        let a_day = refusal(r#"{"status":1111,"wait":86400}"#).unwrap();
        assert_eq!(a_day.retry_after(), Some(GATEWAY_WAIT_MAX));

        let page = "<html><head><title> 访问受限 </title></head></html>";
        let e = gateway_refusal(Api::Webhook, 405, true, page.as_bytes()).unwrap();
        assert_eq!(
            (e.kind, e.code.as_str(), e.message.as_str()),
            (Kind::AntiAbuse, "html_405", "访问受限")
        );
        assert_eq!(e.retry_after(), Some(GATEWAY_WAIT_DEFAULT));
        assert!(
            e.to_string().contains("if this repeats, check the proxy"),
            "{e}"
        );
        let page = |status| gateway_refusal(Api::BatchSend, status, true, page.as_bytes());
        for status in [200, 403, 429] {
            assert_eq!(page(status).unwrap().kind, Kind::AntiAbuse, "{status}");
        }
        for status in [401, 407] {
            let e = page(status).unwrap();
            assert!(!e.holds_egress() && e.is_retryable(), "{status}");
            assert!(e.to_string().contains("DINGTALK_PROXY"), "{e}");
        }
        for status in [404, 500, 502, 503] {
            assert!(
                page(status).is_none(),
                "{status}: DingTalk's own JSON is missing, no pause"
            );
        }
        let echo = refusal(
            " <!DOCTYPE html><TITLE>502: GET https://oapi.dingtalk.com/robot/send?access_token=abc</TITLE>",
        );
        assert_eq!(
            echo.unwrap().message,
            "",
            "a title with a URL is not quoted"
        );

        for body in [
            r#"{"errcode":0}"#,
            r#"{"status":200}"#,
            "gateway timeout",
            "[1]",
        ] {
            assert!(refusal(body).is_none(), "{body}");
        }
    }

    #[test]
    fn the_monthly_quota_is_retryable_and_holds_the_egress() {
        let oapi = classify_oapi(
            Api::GetByMobile,
            90020,
            "本月api调用量已超过限制",
            Context::default(),
        );
        let api = classify_api(
            Api::BatchSend,
            403,
            "Forbidden.AccessDenied.ApiCountLimitForOrg",
            "m",
            None,
        );
        for e in [oapi, api] {
            assert_eq!(e.kind, Kind::QuotaExhausted);
            assert!(e.is_retryable() && e.holds_egress() && !e.is_throttle());
        }
        assert!(!classify_api(
            Api::BatchSend,
            403,
            "Forbidden.AccessDenied.QpsLimitForApi",
            "m",
            None
        )
        .holds_egress());
        assert!(Api::BatchSend.metered() && Api::Token.metered() && !Api::Webhook.metered());
        // The webhook is not metered: the quota's code there is an ordinary retry, after a
        // while (not at once).
        let webhook = [
            classify_oapi(Api::Webhook, 90020, "m", Context::default()),
            classify_api(
                Api::Webhook,
                403,
                "Forbidden.AccessDenied.ApiCountLimitForOrg",
                "m",
                None,
            ),
        ];
        for e in webhook {
            assert!(!e.holds_egress(), "{e}");
            assert_eq!(e.retry_after(), Some(Duration::from_secs(60)), "{e}");
        }
    }

    #[test]
    fn an_answer_that_is_not_json_is_not_taken_for_no_answer() {
        let e = DingTalkError::bad_answer(Api::Token, 200, "the body is not a JSON object");
        assert_eq!(e.kind, Kind::Transport);
        assert!(!e.unanswered());
        let e = DingTalkError::new(Api::Token, (RETRY, Kind::Transport), TIMEOUT, "", "");
        assert!(e.unanswered());
    }

    #[test]
    fn a_refusal_of_one_parameter_names_it() {
        let oapi = classify_oapi(
            Api::WorkNoticeResult,
            40035,
            "不合法的参数: task_id 不存在或已超过 24 小时",
            Context::default(),
        );
        assert!(oapi.refuses_only("task_id"));
        assert!(!oapi.refuses_only("agent_id"));
        let other = classify_oapi(Api::WorkNoticeResult, 400002, "task_id", Context::default());
        assert!(!other.refuses_only("task_id"), "another code");
        let api = DingTalkError::new(
            Api::ReadStatus,
            (PERMANENT, Kind::MessageRefused),
            "InvalidParameter.processQueryKey",
            "",
            "",
        );
        assert!(api.refuses_only("processQueryKey"));
        assert!(!api.refuses_only("robotCode"));
    }

    #[test]
    fn errcode_88_is_read_by_its_sub_code_and_both_codes_kept() {
        let topapi = |sub| {
            classify_topapi(
                Api::GetByMobile,
                88,
                sub,
                "ding talk error",
                Context::default(),
            )
        };
        let e = topapi(Some("60011"));
        assert_eq!(
            (e.kind, e.code.as_str(), e.is_retryable()),
            (Kind::NoPermission, "88/60011", false)
        );
        assert!(
            e.to_string().contains("(88/60011 \"ding talk error\")"),
            "{e}"
        );
        // A sub code the table does not know is as retryable as 88 itself.
        let e = topapi(Some("12345"));
        assert_eq!(
            (e.kind, e.code.as_str(), e.is_retryable()),
            (Kind::Other, "88/12345", true)
        );
        // Neither a sub code of 0 nor one that is not a number is taken for anything else.
        for sub in [Some("0"), Some("oops"), None] {
            let e = topapi(sub);
            assert_eq!(
                (e.kind, e.code.as_str(), e.is_retryable()),
                (Kind::Other, "88", true),
                "{sub:?}"
            );
            assert!(!e.explanation.contains("access token"), "{e}");
        }
        let e = classify_topapi(Api::GetByMobile, 60121, Some("1"), "", Context::default());
        assert_eq!((e.kind, e.code.as_str()), (Kind::UnknownMobile, "60121"));
    }

    #[test]
    fn a_robot_security_refusal_says_which_setting() {
        let refusal = |msg| classify_oapi(Api::Webhook, 310000, msg, Context::default());
        let cases = [
            ("keywords not in content", RobotSecurity::Keyword),
            ("sign not match", RobotSecurity::Signature),
            ("invalid timestamp", RobotSecurity::Timestamp),
            (
                "ip 203.0.113.9 not in whitelist",
                RobotSecurity::Ip(Some("203.0.113.9".into())),
            ),
            ("ip X.X.X.X not in whitelist", RobotSecurity::Ip(None)),
            ("something new", RobotSecurity::Other),
            // DingTalk's current wording (public reports: BiliBiliToolPro#271, qd#510,
            // air780e-forwarder#51, TrendRadar#70).
            (
                "description:关键词不匹配;solution:请联系群管理员查看此机器人的关键词，并在发送的信息中包含此关键词;",
                RobotSecurity::Keyword,
            ),
            (
                "错误描述:关键词不匹配;解决方案:请联系群管理员查看此机器人的关键词，并在发送的信息中包含此关键词;",
                RobotSecurity::Keyword,
            ),
            (
                "description:机器人发送签名不匹配;solution:请确认签名和生成签名的时间戳必须都放在调用的网址中，请确认机器人的密钥加密和填写正确;link:请参考本接口对应文档获得具体要求，或者在https://open.dingtalk.com/document/  搜索相关文档;",
                RobotSecurity::Signature,
            ),
            (
                "description:机器人发送签名过期;solution:签名生成时间和发送时间请保持在 timestampms 以内;",
                RobotSecurity::Timestamp,
            ),
            (
                "description:ip 不在白名单中;solution:请联系对应群的管理员，设置机器人安全ip地址段",
                RobotSecurity::Ip(None),
            ),
            ("description:时间戳;solution:", RobotSecurity::Other),
        ];
        for (msg, security) in cases {
            assert_eq!(refusal(msg).robot_security(), Some(security), "{msg}");
        }
        assert!(refusal("invalid timestamp")
            .explanation
            .contains("clock is over an hour off"));
        assert!(refusal("keywords not in content")
            .explanation
            .contains("keyword_field"));
        assert!(refusal("ip 203.0.113.9 not in whitelist")
            .explanation
            .contains("address 203.0.113.9 is not in them"));
        let other = classify_oapi(
            Api::Webhook,
            300001,
            "token is not exist",
            Context::default(),
        );
        assert_eq!(other.robot_security(), None);
    }

    #[test]
    fn explanations_name_what_to_fix() {
        let ctx = Context {
            robot: Some(("ops-robot", "qq", "wx_userid")),
            mobile: None,
        };
        let e = classify_oapi(Api::Webhook, 310000, "sign not match", ctx);
        assert_eq!(
            e.to_string(),
            "robot security check failed (signature, keyword or IP — DingTalk's message says which): check the SEC secret stored in field wx_userid of user ops-robot and the robot's security settings (310000 \"sign not match\")"
        );
        let e = classify_oapi(Api::Webhook, 300001, "token is not exist", ctx);
        assert!(
            e.to_string().contains("check field qq of user ops-robot"),
            "{e}"
        );
        let e = classify_oapi(Api::UserList, 60011, "no permission", ctx);
        assert!(e.to_string().contains("qyapi_get_department_member"), "{e}");
        let e = classify_oapi(Api::DepartmentList, 60011, "no permission", ctx);
        assert!(e.to_string().contains("qyapi_get_department_list"), "{e}");
        let e = classify_oapi(Api::GetByMobile, 60011, "no permission", ctx);
        assert!(e.to_string().contains("qyapi_get_member_by_mobile"), "{e}");
        let e = classify_oapi(
            Api::GetByMobile,
            60011,
            "应用尚未开通所需的权限：[qyapi_get_member_by_mobile]，请参考文档",
            ctx,
        );
        assert!(
            e.explanation
                .starts_with("the DingTalk app lacks the permission qyapi_get_member_by_mobile (as DingTalk names it)"),
            "{e}"
        );
        let e = classify_oapi(
            Api::WorkNotice,
            60011,
            "应用尚未开通所需的权限：[a.b, c_d]",
            ctx,
        );
        assert!(e.explanation.contains("permission a.b, c_d "), "{e}");
        let e = classify_oapi(
            Api::GetByMobile,
            60020,
            "访问ip不在白名单之中，请参考FAQ：https://open.dingtalk.com/document/org-faq/app-faq,request ip=203.0.113.9 appKey(dingkey)",
            ctx,
        );
        assert!(
            e.explanation
                .starts_with("this server's IP 203.0.113.9 (as DingTalk saw it) is not in"),
            "{e}"
        );
        let e = classify_oapi(Api::GetByMobile, 60020, "访问ip不在白名单之中", ctx);
        assert!(
            e.explanation.starts_with("this server's IP is not in"),
            "{e}"
        );
        let real = "ding talk error[subcode=60011,submsg=应用尚未开通所需的权限：[qyapi_get_member_by_mobile]，点击链接申请并开通即可：https://open-dev.dingtalk.com/appscope/apply?content=dingkey%23qyapi_get_member_by_mobile, {requiredScopes=[qyapi_get_member_by_mobile]}]";
        assert_eq!(named_scopes(real), ["qyapi_get_member_by_mobile"]);
        assert_eq!(wrapped(88, None, real), Some(60011));
        assert_eq!(wrapped(88, Some("60020"), ""), Some(60020));
        assert_eq!(wrapped(88, Some("40014"), ""), Some(40014));
        assert_eq!(wrapped(88, None, "系统繁忙"), None);
        assert_eq!(wrapped(60121, Some("1"), ""), None);
        assert_eq!(named_scopes("no list [here"), Vec::<String>::new());
        assert_eq!(named_scopes("[not a scope!]"), Vec::<String>::new());
        assert!(is_invalid_token(Some(88), Some("40014"), 200, None));
        assert!(!is_invalid_token(Some(88), Some("60011"), 200, None));
        assert!(is_invalid_token(None, None, 401, None));
    }
}
