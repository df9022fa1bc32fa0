//! The DingTalk client: one pooled HTTP client per process, a single-flight token cache per
//! app key, and the calls ding-channel makes (getbymobile, batchSend, robot webhook, and for
//! the directory department listsub and user list).
//! Base URLs come from config, so tests, the sandbox and benchmarks point it at the simulator.
//! Every call goes through the [`Egress`]: not made while DingTalk holds it, counted when
//! answered, and a gateway or quota refusal starts a hold.

use super::egress::Egress;
use super::error::{self, Api, Context, DingTalkError, Kind};
use super::message::{At, ConversionError, Message};
use super::sign;
use crate::clock::SharedClock;
use crate::domain::secrets::{AppSecret, RobotToken, SignSecret};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, DATE, RETRY_AFTER};
use reqwest::{RequestBuilder, Url};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub const BATCH_MAX_IDS: usize = 20;
/// batchRecall takes at most this many processQueryKeys a call.
pub const RECALL_MAX_KEYS: usize = 20;
/// The most members `topapi/v2/user/list` answers in one page.
pub const MEMBERS_PAGE_MAX: usize = 100;
pub const WEBHOOK_MAX_BODY: usize = 20_000;
/// Chunks of one batch_send in flight at once: fast for large sends, gentle on the app's QPS.
pub const BATCH_CONCURRENCY: usize = 4;
/// A token is refreshed this long before DingTalk says it expires.
const TOKEN_REFRESH_EARLY_MS: i64 = 5 * 60 * 1000;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub oapi_base: Url,
    pub api_base: Url,
    pub proxy: Option<Url>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

/// The internal app whose robot sends single-chat messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub key: String,
    pub secret: AppSecret,
    pub robot_code: String,
}

/// A group custom robot, as stored on a robot user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Robot {
    /// The robot user's username, for messages and logs.
    pub name: String,
    pub token: RobotToken,
    /// The `SEC…` signing secret; `None` for keyword/IP-secured robots.
    pub secret: Option<SignSecret>,
    /// Profile fields the credentials came from, so errors say where to fix them.
    pub token_field: String,
    pub sign_field: String,
}

/// What getbymobile said about one mobile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MobileLookup {
    Found(String),
    NotFound,
    NoPermission(DingTalkError),
    IpNotWhitelisted(DingTalkError),
    /// Worth another try later (network, throttling, DingTalk busy).
    Transient(DingTalkError),
    /// Any other refusal (e.g. bad app credentials).
    Failed(DingTalkError),
}

/// The outcome of a batch send for one userId.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserOutcome {
    Sent {
        process_query_key: String,
    },
    /// In `invalidStaffIdList`: failed for good.
    Invalid,
    /// In `flowControlledStaffIdList`: retry later.
    FlowControlled,
    /// In `filteredStaffIdList`: DingTalk dropped it (e.g. the user muted the robot).
    Filtered,
    /// The whole call for this id's chunk failed.
    Failed(DingTalkError),
}

/// One person of a batchSend, as readStatus lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadInfo {
    pub user_id: String,
    /// When they read it (DingTalk's `readTimestamp`, ms); `None`: not yet.
    pub read_at: Option<i64>,
}

/// What batchRecall answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecallAnswer {
    pub recalled: Vec<String>,
    /// Keys not recalled, with DingTalk's reason.
    pub failed: Vec<(String, String)>,
}

/// An answer with DingTalk's clock when it gave it (its `Date` header; `None` when the
/// exchange failed or the answer had none): what tells a clock skew apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dated<T> {
    pub answer: T,
    pub date_ms: Option<i64>,
}

/// One department, as `topapi/v2/department/listsub` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Department {
    pub dept_id: i64,
    pub name: String,
}

/// One member of a department, as `topapi/v2/user/list` lists them: the fields the directory
/// uses (the phone for the cache, the fields a username may come from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub userid: String,
    pub name: Option<String>,
    /// The national number; its country is `state_code` (DingTalk leaves it out for 86).
    pub mobile: Option<String>,
    pub state_code: Option<String>,
    pub email: Option<String>,
    pub job_number: Option<String>,
}

/// One page of a department's members; `next_cursor` is where the next page starts, `None`
/// on the last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberPage {
    pub members: Vec<Member>,
    pub next_cursor: Option<i64>,
}

/// What getsendresult says of one person of a work-notification task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoticeOutcome {
    /// In `read_user_id_list` or `unread_user_id_list`: it reached them.
    Delivered { read: bool },
    /// In `invalid_user_id_list`.
    Invalid,
    /// In `forbidden_user_id_list` / `forbidden_list`, with the code DingTalk gave, if any.
    Forbidden { code: Option<String> },
    /// In `failed_user_id_list`.
    Failed,
    /// In no list yet: DingTalk is still sending.
    Pending,
}

/// getsendresult's `send_result`, by userid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendResult {
    by_user: HashMap<String, NoticeOutcome>,
}

impl SendResult {
    pub fn read(v: &Value) -> Self {
        let ids = |key: &str| -> Vec<String> {
            v[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut by_user = HashMap::new();
        // Later lists win: a refusal outweighs a read state.
        for (key, o) in [
            (
                "unread_user_id_list",
                NoticeOutcome::Delivered { read: false },
            ),
            ("read_user_id_list", NoticeOutcome::Delivered { read: true }),
            ("failed_user_id_list", NoticeOutcome::Failed),
            (
                "forbidden_user_id_list",
                NoticeOutcome::Forbidden { code: None },
            ),
            ("invalid_user_id_list", NoticeOutcome::Invalid),
        ] {
            for id in ids(key) {
                by_user.insert(id, o.clone());
            }
        }
        for f in v["forbidden_list"].as_array().into_iter().flatten() {
            if let Some(id) = f["userid"].as_str() {
                let code = match &f["code"] {
                    Value::String(c) => Some(c.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                };
                by_user.insert(id.to_owned(), NoticeOutcome::Forbidden { code });
            }
        }
        Self { by_user }
    }

    /// The people the task reached, as read status lists them: getsendresult gives no time
    /// of reading, so a person in its read list is taken as read at `seen_at`.
    pub fn reached(&self, seen_at: i64) -> Vec<ReadInfo> {
        self.by_user
            .iter()
            .filter_map(|(user_id, o)| match o {
                NoticeOutcome::Delivered { read } => Some(ReadInfo {
                    user_id: user_id.clone(),
                    read_at: read.then_some(seen_at),
                }),
                _ => None,
            })
            .collect()
    }

    pub fn of(&self, user_id: &str) -> NoticeOutcome {
        self.by_user
            .get(user_id)
            .cloned()
            .unwrap_or(NoticeOutcome::Pending)
    }
}

/// A task id as DingTalk answered it (a number).
fn task_number(task_id: &str) -> Value {
    task_id
        .parse::<i64>()
        .map_or_else(|_| task_id.into(), Value::from)
}

/// The AgentId as DingTalk takes it (a number; validated as one in the channel settings).
fn agent_number(agent_id: &str) -> Value {
    agent_id
        .parse::<i64>()
        .map_or_else(|_| agent_id.into(), Value::from)
}

struct Token {
    value: String,
    expires_at_ms: i64,
}

/// One per app key: readers take the token without waiting; a refresh holds `refresh`, so
/// concurrent callers with a cold or stale cache make exactly one token request.
#[derive(Default)]
struct TokenSlot {
    current: RwLock<Option<Token>>,
    refresh: tokio::sync::Mutex<()>,
}

pub struct DingTalk {
    http: reqwest::Client,
    cfg: ClientConfig,
    clock: SharedClock,
    tokens: Mutex<HashMap<String, Arc<TokenSlot>>>,
    metrics: Arc<crate::metrics::Metrics>,
    egress: Arc<Egress>,
}

impl DingTalk {
    pub fn new(cfg: ClientConfig, clock: SharedClock) -> Result<Self, reqwest::Error> {
        Self::with_metrics(cfg, clock, Arc::default())
    }

    pub fn with_metrics(
        cfg: ClientConfig,
        clock: SharedClock,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("ding-channel/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(60));
        builder = match &cfg.proxy {
            Some(p) => builder.proxy(reqwest::Proxy::all(p.clone())?),
            None => builder.no_proxy(),
        };
        Ok(Self {
            http: builder.build()?,
            cfg,
            clock,
            tokens: Mutex::new(HashMap::new()),
            egress: Arc::new(Egress::new(metrics.clone(), crate::clock::Zone::utc())),
            metrics,
        })
    }

    /// The same client, its calls held and counted by `egress` (the outbox's, kept in the
    /// database).
    pub fn with_egress(self, egress: Arc<Egress>) -> Self {
        Self { egress, ..self }
    }

    pub fn egress(&self) -> &Arc<Egress> {
        &self.egress
    }

    /// `e` as the egress sees it: a quota refusal starts its hold.
    async fn refused(&self, e: DingTalkError) -> DingTalkError {
        self.egress.observe(e, self.clock.now_ms()).await
    }

    fn oapi(&self, path: &str) -> String {
        format!(
            "{}{path}",
            self.cfg.oapi_base.as_str().trim_end_matches('/')
        )
    }

    fn api(&self, path: &str) -> String {
        format!("{}{path}", self.cfg.api_base.as_str().trim_end_matches('/'))
    }

    fn slot(&self, app_key: &str) -> Arc<TokenSlot> {
        let mut map = self.tokens.lock().expect("token map lock");
        map.entry(app_key.to_owned()).or_default().clone()
    }

    /// A valid access token for `app`, from the cache when it has one.
    pub async fn access_token(&self, app: &App) -> Result<String, DingTalkError> {
        let slot = self.slot(&app.key);
        if let Some(t) = self.fresh(&slot) {
            return Ok(t);
        }
        let _refreshing = slot.refresh.lock().await;
        if let Some(t) = self.fresh(&slot) {
            return Ok(t); // another caller refreshed it while we waited
        }
        let (token, _) = self.fetch_token(app).await?;
        let value = token.value.clone();
        *slot.current.write().expect("token lock") = Some(token);
        Ok(value)
    }

    /// Fetches a new access token for `app` whatever the cache holds (and caches it): whether
    /// DingTalk takes the app's credentials now, and its clock.
    pub async fn check_token(&self, app: &App) -> Result<Dated<()>, DingTalkError> {
        let slot = self.slot(&app.key);
        let _refreshing = slot.refresh.lock().await;
        let (token, date_ms) = self.fetch_token(app).await?;
        *slot.current.write().expect("token lock") = Some(token);
        Ok(Dated {
            answer: (),
            date_ms,
        })
    }

    fn fresh(&self, slot: &TokenSlot) -> Option<String> {
        let now = self.clock.now_ms();
        slot.current
            .read()
            .expect("token lock")
            .as_ref()
            .filter(|t| t.expires_at_ms - TOKEN_REFRESH_EARLY_MS > now)
            .map(|t| t.value.clone())
    }

    /// Drops `token` from the cache if it is still the cached one (a newer one is kept).
    fn invalidate(&self, app: &App, token: &str) {
        let slot = self.slot(&app.key);
        let mut current = slot.current.write().expect("token lock");
        if current.as_ref().is_some_and(|t| t.value == token) {
            *current = None;
        }
    }

    async fn fetch_token(&self, app: &App) -> Result<(Token, Option<i64>), DingTalkError> {
        let req = self
            .http
            .post(self.api("/v1.0/oauth2/accessToken"))
            .json(&json!({"appKey": app.key, "appSecret": app.secret.expose()}));
        let (status, headers, body) = self.exchange(Api::Token, req).await?;
        if status != 200 {
            return Err(self
                .refused(api_error(Api::Token, status, &headers, &body))
                .await);
        }
        let token = body["accessToken"].as_str().filter(|t| !t.is_empty());
        let expires_in = body["expireIn"].as_i64().filter(|e| *e > 0);
        match (token, expires_in) {
            (Some(t), Some(e)) => Ok((
                Token {
                    value: t.to_owned(),
                    expires_at_ms: self.clock.now_ms() + e * 1000,
                },
                date_ms(&headers),
            )),
            _ => Err(DingTalkError::bad_answer(
                Api::Token,
                status,
                "no accessToken/expireIn in the answer",
            )),
        }
    }

    /// Sends one request, unless the egress is held; answers the status, headers and JSON body.
    /// A body that is not JSON is an error, never a success; the gateway's anti-abuse answers
    /// hold the egress.
    async fn exchange(
        &self,
        api: Api,
        req: RequestBuilder,
    ) -> Result<(u16, HeaderMap, Value), DingTalkError> {
        if let Some(held) = self.egress.held(api, self.clock.now_ms()) {
            return Err(held);
        }
        let started = Instant::now();
        let req = req.build().map_err(|e| DingTalkError::transport(api, e))?;
        let url = redact_url(req.url());
        let res = self.http.execute(req).await.map_err(|e| {
            self.metrics.dingtalk(api.name(), "network");
            DingTalkError::transport(api, e)
        })?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res
            .bytes()
            .await
            .map_err(|e| DingTalkError::transport(api, e))?;
        self.egress.count(api, self.clock.now_ms());
        tracing::debug!(api = api.name(), %url, status, elapsed_ms = started.elapsed().as_millis() as u64, "dingtalk call");
        let html = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|t| t.to_ascii_lowercase().contains("text/html"));
        let refusal = error::gateway_refusal(api, status, html, &bytes);
        let answer = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .filter(Value::is_object);
        // DingTalk's holds are told apart from the HTTP status they came with.
        let outcome = match (&refusal, &answer) {
            (Some(e), _) if e.kind == error::Kind::AntiAbuse => "anti_abuse",
            (None, Some(v)) if error::is_quota_answer(api, v) => "quota",
            _ => match status {
                200..=299 => "http_2xx",
                400..=499 => "http_4xx",
                _ => "http_5xx",
            },
        };
        self.metrics.dingtalk(api.name(), outcome);
        if let Some(e) = refusal {
            return Err(self.refused(e).await);
        }
        match answer {
            Some(v) => Ok((status, headers, v)),
            None => Err(DingTalkError::bad_answer(
                api,
                status,
                "the body is not a JSON object",
            )),
        }
    }

    /// An oapi call with the token in the query; refreshes the token and retries once when
    /// DingTalk says it is invalid.
    async fn oapi_call(
        &self,
        api: Api,
        app: &App,
        path: &str,
        body: &Value,
        ctx: Context<'_>,
    ) -> Result<Value, DingTalkError> {
        let mut retried = false;
        loop {
            let token = self.access_token(app).await?;
            let mut url = Url::parse(&self.oapi(path)).expect("base URL was validated");
            url.query_pairs_mut().append_pair("access_token", &token);
            let (status, headers, v) = self.exchange(api, self.http.post(url).json(body)).await?;
            let errmsg = v["errmsg"].as_str().unwrap_or("");
            let errcode = v["errcode"].as_i64();
            let sub_code = v["sub_code"].as_str();
            if error::is_invalid_token(errcode, sub_code, status, None) && !retried {
                self.invalidate(app, &token);
                retried = true;
                continue;
            }
            if status != 200 {
                return Err(self.refused(api_error(api, status, &headers, &v)).await);
            }
            return match errcode {
                Some(0) => Ok(v),
                Some(code) => Err(self
                    .refused(with_request_id(
                        error::classify_topapi(api, code, sub_code, errmsg, ctx),
                        &v,
                    ))
                    .await),
                None => Err(DingTalkError::bad_answer(
                    api,
                    status,
                    "no errcode in the answer",
                )),
            };
        }
    }

    /// The DingTalk userid registered with `mobile`.
    pub async fn get_by_mobile(&self, app: &App, mobile: &str) -> MobileLookup {
        let ctx = Context {
            robot: None,
            mobile: Some(mobile),
        };
        match self
            .oapi_call(
                Api::GetByMobile,
                app,
                "/topapi/v2/user/getbymobile",
                &json!({"mobile": mobile}),
                ctx,
            )
            .await
        {
            Ok(v) => match v["result"]["userid"].as_str().filter(|u| !u.is_empty()) {
                Some(u) => MobileLookup::Found(u.to_owned()),
                None => MobileLookup::Transient(DingTalkError::bad_answer(
                    Api::GetByMobile,
                    200,
                    "no result.userid in the answer",
                )),
            },
            Err(e) if e.kind == Kind::UnknownMobile => MobileLookup::NotFound,
            Err(e) if e.kind == Kind::NoPermission => MobileLookup::NoPermission(e),
            Err(e) if e.kind == Kind::IpNotWhitelisted => MobileLookup::IpNotWhitelisted(e),
            Err(e) if e.is_retryable() => MobileLookup::Transient(e),
            Err(e) => MobileLookup::Failed(e),
        }
    }

    /// The departments directly under `dept_id` (1 is the organisation's root): one level,
    /// listed whole in one call.
    pub async fn list_departments(
        &self,
        app: &App,
        dept_id: i64,
    ) -> Result<Vec<Department>, DingTalkError> {
        let v = self
            .oapi_call(
                Api::DepartmentList,
                app,
                "/topapi/v2/department/listsub",
                &json!({"dept_id": dept_id}),
                Context::default(),
            )
            .await?;
        let bad = |why| DingTalkError::bad_answer(Api::DepartmentList, 200, why);
        v["result"]
            .as_array()
            .ok_or_else(|| bad("no result list in the answer"))?
            .iter()
            .map(|d| {
                Ok(Department {
                    dept_id: d["dept_id"]
                        .as_i64()
                        .ok_or_else(|| bad("a department without a numeric dept_id"))?,
                    name: d["name"].as_str().unwrap_or_default().to_owned(),
                })
            })
            .collect()
    }

    /// One page (at most [`MEMBERS_PAGE_MAX`]) of the members directly in `dept_id`, from
    /// `cursor` (0 for the first page).
    pub async fn list_members(
        &self,
        app: &App,
        dept_id: i64,
        cursor: i64,
        size: usize,
    ) -> Result<MemberPage, DingTalkError> {
        let size = size.clamp(1, MEMBERS_PAGE_MAX);
        let v = self
            .oapi_call(
                Api::UserList,
                app,
                "/topapi/v2/user/list",
                &json!({"dept_id": dept_id, "cursor": cursor, "size": size}),
                Context::default(),
            )
            .await?;
        member_page(&v["result"])
    }

    /// Sends `msg` to every userId, in calls of at most 20 ids (a few at once), and answers
    /// one outcome per id, in the order given.
    pub async fn batch_send(
        &self,
        app: &App,
        user_ids: &[String],
        msg: &Message,
    ) -> Result<Vec<(String, UserOutcome)>, ConversionError> {
        let (msg_key, msg_param) = msg.to_batch()?;
        let (msg_key, msg_param) = (&msg_key, &msg_param);
        // Owned chunks: a closure over borrowed chunks makes the future lose `Send`.
        let calls = user_ids
            .chunks(BATCH_MAX_IDS)
            .map(<[String]>::to_vec)
            .enumerate()
            .map(|(i, chunk)| async move {
                let outcome = self.batch_chunk(app, &chunk, msg_key, msg_param).await;
                (i, chunk, outcome)
            });
        let mut results: Vec<_> = futures_util::stream::iter(calls)
            .buffer_unordered(BATCH_CONCURRENCY)
            .collect()
            .await;
        results.sort_by_key(|(i, _, _)| *i);
        Ok(results
            .into_iter()
            .flat_map(|(_, chunk, outcome)| chunk_outcomes(&chunk, outcome))
            .collect())
    }

    async fn batch_chunk(
        &self,
        app: &App,
        ids: &[String],
        msg_key: &str,
        msg_param: &str,
    ) -> Result<Value, DingTalkError> {
        let body = json!({"robotCode": app.robot_code, "userIds": ids, "msgKey": msg_key, "msgParam": msg_param});
        let url = self.api("/v1.0/robot/oToMessages/batchSend");
        let v = self
            .api_call(Api::BatchSend, app, |http| http.post(&url).json(&body))
            .await?;
        if v["processQueryKey"].is_string() {
            Ok(v)
        } else {
            Err(DingTalkError::bad_answer(
                Api::BatchSend,
                200,
                "no processQueryKey in the answer",
            ))
        }
    }

    /// Who of the people one batchSend reached has read it (`readStatus`, within DingTalk's
    /// 24 h): one entry per person DingTalk lists.
    pub async fn read_status(
        &self,
        app: &App,
        process_query_key: &str,
    ) -> Result<Vec<ReadInfo>, DingTalkError> {
        let url = read_status_url(&self.cfg.api_base, &app.robot_code, process_query_key);
        let v = self
            .api_call(Api::ReadStatus, app, |http| http.get(url.clone()))
            .await?;
        let Some(list) = v["messageReadInfoList"].as_array() else {
            return Err(DingTalkError::bad_answer(
                Api::ReadStatus,
                200,
                "no messageReadInfoList in the answer",
            ));
        };
        Ok(list
            .iter()
            .filter_map(|p| {
                let user_id = p["userId"].as_str()?.to_owned();
                // A read without its time is taken as read now rather than in 1970.
                let read_at = (p["readStatus"].as_str() == Some("READ")).then(|| {
                    p["readTimestamp"]
                        .as_i64()
                        .unwrap_or_else(crate::clock::now_ms)
                });
                Some(ReadInfo { user_id, read_at })
            })
            .collect())
    }

    /// Recalls the single-chat messages of up to [`RECALL_MAX_KEYS`] batchSend keys
    /// (`batchRecall`, within DingTalk's 24 h); answers which keys were recalled and why the
    /// others were not.
    pub async fn batch_recall(
        &self,
        app: &App,
        keys: &[String],
    ) -> Result<RecallAnswer, DingTalkError> {
        debug_assert!(
            (1..=RECALL_MAX_KEYS).contains(&keys.len()),
            "batchRecall takes 1 to {RECALL_MAX_KEYS} keys"
        );
        let body = json!({"robotCode": app.robot_code, "processQueryKeys": keys});
        let url = self.api("/v1.0/robot/otoMessages/batchRecall");
        let v = self
            .api_call(Api::BatchRecall, app, |http| http.post(&url).json(&body))
            .await?;
        let recalled: Vec<String> = v["successResult"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let failed: Vec<(String, String)> = v["failedResult"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, why)| (k.clone(), why.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(RecallAnswer { recalled, failed })
    }

    /// A new-API call (api.dingtalk.com) with the token in `x-acs-dingtalk-access-token`;
    /// refreshes the token and retries once when DingTalk says it is invalid. Answers the
    /// body of a 200.
    async fn api_call(
        &self,
        api: Api,
        app: &App,
        request: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Value, DingTalkError> {
        let mut retried = false;
        loop {
            let token = self.access_token(app).await?;
            let header = HeaderValue::from_str(&token).map_err(|_| {
                DingTalkError::bad_answer(
                    Api::Token,
                    200,
                    "the access token is not a valid header value",
                )
            })?;
            let req = request(&self.http).header("x-acs-dingtalk-access-token", header);
            let (status, headers, v) = self.exchange(api, req).await?;
            if status == 200 {
                return Ok(v);
            }
            if error::is_invalid_token(None, None, status, v["code"].as_str()) && !retried {
                self.invalidate(app, &token);
                retried = true;
                continue;
            }
            return Err(self.refused(api_error(api, status, &headers, &v)).await);
        }
    }

    /// Sends a work notification (`msg`: its `msg` object) to up to 100 people in the name of
    /// the app's agent; answers DingTalk's task id, which only [`Self::work_notice_result`]
    /// turns into what reached whom.
    pub async fn work_notice_send(
        &self,
        app: &App,
        agent_id: &str,
        user_ids: &[String],
        msg: &Value,
    ) -> Result<String, DingTalkError> {
        let body = json!({"agent_id": agent_number(agent_id), "userid_list": user_ids.join(","), "msg": msg});
        let v = self
            .oapi_call(
                Api::WorkNotice,
                app,
                "/topapi/message/corpconversation/asyncsend_v2",
                &body,
                Context::default(),
            )
            .await?;
        match &v["task_id"] {
            Value::Number(n) => Ok(n.to_string()),
            Value::String(t) if !t.is_empty() => Ok(t.clone()),
            _ => Err(DingTalkError::bad_answer(
                Api::WorkNotice,
                200,
                "no task_id in the answer",
            )),
        }
    }

    /// What became of a work-notification task (DingTalk keeps it for 24 hours).
    pub async fn work_notice_result(
        &self,
        app: &App,
        agent_id: &str,
        task_id: &str,
    ) -> Result<SendResult, DingTalkError> {
        let v = self
            .oapi_call(
                Api::WorkNoticeResult,
                app,
                "/topapi/message/corpconversation/getsendresult",
                &json!({"agent_id": agent_number(agent_id), "task_id": task_number(task_id)}),
                Context::default(),
            )
            .await?;
        // Without it every person would read as still pending, polled for a day for nothing.
        if !v["send_result"].is_object() {
            return Err(DingTalkError::bad_answer(
                Api::WorkNoticeResult,
                200,
                "no send_result in the answer",
            ));
        }
        Ok(SendResult::read(&v["send_result"]))
    }

    /// Recalls a work-notification task from everyone it reached
    /// (`topapi/message/corpconversation/recall`); DingTalk answers only `errcode`.
    pub async fn work_notice_recall(
        &self,
        app: &App,
        agent_id: &str,
        task_id: &str,
    ) -> Result<(), DingTalkError> {
        let body = json!({"agent_id": agent_number(agent_id), "msg_task_id": task_number(task_id)});
        self.oapi_call(
            Api::WorkNoticeRecall,
            app,
            "/topapi/message/corpconversation/recall",
            &body,
            Context::default(),
        )
        .await
        .map(drop)
    }

    /// Posts `msg` to a group robot's webhook, signed when the robot has a secret.
    pub async fn send_webhook(
        &self,
        robot: &Robot,
        msg: &Message,
        at: &At,
    ) -> Result<(), DingTalkError> {
        self.send_webhook_dated(robot, msg, at).await.answer
    }

    /// [`Self::send_webhook`], with DingTalk's clock when it answered (a signed call is
    /// refused when its timestamp is an hour off DingTalk's).
    pub async fn send_webhook_dated(
        &self,
        robot: &Robot,
        msg: &Message,
        at: &At,
    ) -> Dated<Result<(), DingTalkError>> {
        let (status, headers, v) = match self.post_webhook(robot, msg, at).await {
            Ok(answer) => answer,
            Err(e) => {
                return Dated {
                    answer: Err(e),
                    date_ms: None,
                }
            }
        };
        let date_ms = date_ms(&headers);
        if status != 200 {
            let answer = Err(api_error(Api::Webhook, status, &headers, &v));
            return Dated { answer, date_ms };
        }
        let ctx = Context {
            robot: Some((&robot.name, &robot.token_field, &robot.sign_field)),
            mobile: None,
        };
        let answer = match v["errcode"].as_i64() {
            Some(0) => Ok(()),
            Some(code) => Err(error::classify_oapi(
                Api::Webhook,
                code,
                v["errmsg"].as_str().unwrap_or(""),
                ctx,
            )),
            None => Err(DingTalkError::bad_answer(
                Api::Webhook,
                status,
                "no errcode in the answer",
            )),
        };
        Dated { answer, date_ms }
    }

    async fn post_webhook(
        &self,
        robot: &Robot,
        msg: &Message,
        at: &At,
    ) -> Result<(u16, HeaderMap, Value), DingTalkError> {
        let body = msg.to_webhook(at).map_err(|e| {
            DingTalkError::new(
                Api::Webhook,
                (error::Class::Permanent, error::Kind::MessageRefused),
                "conversion",
                "",
                e.to_string(),
            )
        })?;
        let bytes = serde_json::to_vec(&body).expect("JSON serializes");
        if bytes.len() > WEBHOOK_MAX_BODY {
            return Err(DingTalkError::new(
                Api::Webhook,
                (error::Class::Permanent, error::Kind::MessageRefused),
                "body_too_large",
                "",
                format!(
                    "the message body is {} bytes; a robot takes at most {WEBHOOK_MAX_BODY}",
                    bytes.len()
                ),
            ));
        }
        let mut url = format!(
            "{}?access_token={}",
            self.oapi("/robot/send"),
            sign::encode(robot.token.expose())
        );
        if let Some(secret) = &robot.secret {
            let ts = self.clock.now_ms();
            url.push_str(&format!(
                "&timestamp={ts}&sign={}",
                sign::sign(secret.expose(), ts)
            ));
        }
        let req = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(bytes);
        self.exchange(Api::Webhook, req).await
    }
}

/// readStatus's URL: the key holds `+`, `/` and `=`, so it goes through the query encoder
/// (a `+` sent as is would reach DingTalk as a space).
fn read_status_url(api_base: &Url, robot_code: &str, process_query_key: &str) -> Url {
    let mut url = Url::parse(&format!(
        "{}/v1.0/robot/oToMessages/readStatus",
        api_base.as_str().trim_end_matches('/')
    ))
    .expect("base URL was validated");
    url.query_pairs_mut()
        .append_pair("robotCode", robot_code)
        .append_pair("processQueryKey", process_query_key);
    url
}

/// The URL with the credentials in its query (`access_token`, `sign`) masked, for logs.
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if matches!(k.as_ref(), "access_token" | "sign" | "appsecret") {
                "****".into()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    if pairs.is_empty() {
        shown.set_query(None);
    } else {
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

/// A `user/list` page's `result`: an answer without its list or paging fields is an error,
/// never an empty department.
fn member_page(result: &Value) -> Result<MemberPage, DingTalkError> {
    let bad = |why| DingTalkError::bad_answer(Api::UserList, 200, why);
    let list = result["list"]
        .as_array()
        .ok_or_else(|| bad("no result.list in the answer"))?;
    let text = |m: &Value, key: &str| {
        m[key]
            .as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let members = list
        .iter()
        .map(|m| {
            Ok(Member {
                userid: text(m, "userid").ok_or_else(|| bad("a member without a userid"))?,
                name: text(m, "name"),
                mobile: text(m, "mobile"),
                state_code: text(m, "state_code"),
                email: text(m, "email").or_else(|| text(m, "org_email")),
                job_number: text(m, "job_number"),
            })
        })
        .collect::<Result<Vec<_>, DingTalkError>>()?;
    let next_cursor = match result["has_more"].as_bool() {
        Some(true) => Some(
            result["next_cursor"]
                .as_i64()
                .ok_or_else(|| bad("has_more without a numeric next_cursor"))?,
        ),
        Some(false) => None,
        None => return Err(bad("no result.has_more in the answer")),
    };
    Ok(MemberPage {
        members,
        next_cursor,
    })
}

fn chunk_outcomes(
    chunk: &[String],
    outcome: Result<Value, DingTalkError>,
) -> Vec<(String, UserOutcome)> {
    match outcome {
        Err(e) => chunk
            .iter()
            .map(|id| (id.clone(), UserOutcome::Failed(e.clone())))
            .collect(),
        Ok(v) => {
            let listed = |key: &str, id: &str| {
                v[key]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(id)))
            };
            let pqk = v["processQueryKey"].as_str().unwrap_or_default().to_owned();
            chunk
                .iter()
                .map(|id| {
                    let o = if listed("invalidStaffIdList", id) {
                        UserOutcome::Invalid
                    } else if listed("flowControlledStaffIdList", id) {
                        UserOutcome::FlowControlled
                    } else if listed("filteredStaffIdList", id) {
                        UserOutcome::Filtered
                    } else {
                        UserOutcome::Sent {
                            process_query_key: pqk.clone(),
                        }
                    };
                    (id.clone(), o)
                })
                .collect()
        }
    }
}

fn api_error(api: Api, status: u16, headers: &HeaderMap, v: &Value) -> DingTalkError {
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|h| h.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)));
    let message = v["message"].as_str().unwrap_or("");
    // A 403 for a missing permission names it in `accessdenieddetail.requiredScopes`.
    let mut scopes: Vec<String> = v["accessdenieddetail"]["requiredScopes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if scopes.is_empty() {
        scopes = error::named_scopes(message);
    }
    let e = error::classify_api(
        api,
        status,
        v["code"].as_str().unwrap_or(""),
        message,
        retry_after,
    )
    .lacking(&scopes);
    with_request_id(e, v)
}

/// DingTalk's clock when it answered: the `Date` header (RFC 9110), in ms.
fn date_ms(headers: &HeaderMap) -> Option<i64> {
    let text = headers.get(DATE)?.to_str().ok()?;
    let ts = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(text)
        .ok()?;
    Some(ts.as_millisecond())
}

fn with_request_id(mut e: DingTalkError, v: &Value) -> DingTalkError {
    e.request_id = v["requestid"]
        .as_str()
        .or(v["request_id"].as_str())
        .map(str::to_owned);
    e
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_member_page_says_where_the_next_starts_and_a_malformed_one_is_an_error() {
        let page = super::member_page(&json!({
            "has_more": true, "next_cursor": 100,
            "list": [
                {"userid": "u1", "name": "Alice", "mobile": "13800000001", "state_code": "86",
                 "org_email": "alice@corp.example", "job_number": " ", "dept_id_list": [2, 3]},
                {"userid": "u2"},
            ],
        }))
        .unwrap();
        assert_eq!(page.next_cursor, Some(100));
        assert_eq!(page.members.len(), 2);
        let alice = &page.members[0];
        assert_eq!(alice.email.as_deref(), Some("alice@corp.example"));
        assert_eq!(alice.job_number, None, "blank is absent");
        assert_eq!(page.members[1].mobile, None);
        let last = super::member_page(&json!({"has_more": false, "list": []})).unwrap();
        assert_eq!(last.next_cursor, None);

        let bad = |v| super::member_page(&v).unwrap_err().message;
        assert_eq!(
            bad(json!({"has_more": false})),
            "no result.list in the answer"
        );
        assert_eq!(bad(json!({"list": []})), "no result.has_more in the answer");
        assert_eq!(
            bad(json!({"has_more": true, "list": []})),
            "has_more without a numeric next_cursor"
        );
        assert_eq!(
            bad(json!({"has_more": false, "list": [{"name": "x"}]})),
            "a member without a userid"
        );
    }

    #[test]
    fn the_read_status_key_is_url_encoded() {
        let base = "https://api.dingtalk.com/".parse().unwrap();
        let url = super::read_status_url(&base, "dingcode", "a+b/c==");
        assert_eq!(
            url.as_str(),
            "https://api.dingtalk.com/v1.0/robot/oToMessages/readStatus?robotCode=dingcode&processQueryKey=a%2Bb%2Fc%3D%3D"
        );
        let back: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(back[1].1, "a+b/c==", "decodes to the key DingTalk gave");
    }

    #[test]
    fn a_send_result_names_each_persons_outcome() {
        use super::{NoticeOutcome as O, SendResult};
        let r = SendResult::read(&serde_json::json!({
            "read_user_id_list": ["alice"], "unread_user_id_list": ["bob"],
            "invalid_user_id_list": ["ghost"], "failed_user_id_list": ["carol"],
            "forbidden_user_id_list": ["dave", "erin"],
            "forbidden_list": [{"code": "143106", "count": 1, "userid": "dave"}],
        }));
        assert_eq!(r.of("alice"), O::Delivered { read: true });
        assert_eq!(r.of("bob"), O::Delivered { read: false });
        assert_eq!(r.of("ghost"), O::Invalid);
        assert_eq!(r.of("carol"), O::Failed);
        assert_eq!(
            r.of("dave"),
            O::Forbidden {
                code: Some("143106".into())
            }
        );
        assert_eq!(r.of("erin"), O::Forbidden { code: None });
        assert_eq!(r.of("frank"), O::Pending);
        let mut reached = r.reached(7);
        reached.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        assert_eq!(
            reached,
            [
                super::ReadInfo {
                    user_id: "alice".into(),
                    read_at: Some(7)
                },
                super::ReadInfo {
                    user_id: "bob".into(),
                    read_at: None
                },
            ],
            "only who it reached, read at when it was seen"
        );
    }

    #[test]
    fn dingtalks_clock_is_read_from_the_date_header() {
        use reqwest::header::{HeaderMap, DATE};
        let mut h = HeaderMap::new();
        assert_eq!(super::date_ms(&h), None);
        h.insert(DATE, "Tue, 14 Nov 2023 22:13:20 GMT".parse().unwrap());
        assert_eq!(super::date_ms(&h), Some(1_700_000_000_000));
        h.insert(DATE, "yesterday".parse().unwrap());
        assert_eq!(super::date_ms(&h), None);
    }

    #[test]
    fn logged_urls_hide_tokens_and_signatures() {
        let url =
            "https://oapi.dingtalk.com/robot/send?access_token=abc123&timestamp=17&sign=x%2By"
                .parse()
                .unwrap();
        assert_eq!(
            super::redact_url(&url),
            "https://oapi.dingtalk.com/robot/send?access_token=****&timestamp=17&sign=****"
        );
    }
}
