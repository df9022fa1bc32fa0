//! The simulator's endpoints. Each checks what the real endpoint checks, in the same shape of
//! answer (oapi: HTTP 200 + errcode; api: HTTP status + `{code, message}`).

use super::{
    Faults, Impolite, Injected, Inner, LostAnswer, OtoSend, SimMessage, SimState, OTO_WINDOW_MS,
};
use crate::dingtalk::sign;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};
use std::cell::Cell;
use std::collections::HashMap;
use std::time::Duration;

type State = web::Data<SimState>;
type Query = web::Query<HashMap<String, String>>;

const MAX_ROBOT_BODY: usize = 20_000;

/// How the robot API refuses a robotCode that is not the calling app's robot (docs/dingtalk.md).
const ROBOT_CODE_REFUSED: (&str, &str) = (
    "invalidParameter.robotCode.auth",
    "该应用的appkey和机器人的robotCode不匹配，请使用机器人所属应用的appkey",
);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(4 << 20))
        .route("/gettoken", web::get().to(gettoken))
        .route("/v1.0/oauth2/accessToken", web::post().to(oauth2_token))
        .route("/topapi/v2/user/getbymobile", web::post().to(getbymobile))
        .route("/topapi/v2/department/listsub", web::post().to(listsub))
        .route("/topapi/v2/user/list", web::post().to(user_list))
        .route(
            "/v1.0/robot/oToMessages/batchSend",
            web::post().to(batch_send),
        )
        .route(
            "/v1.0/robot/oToMessages/readStatus",
            web::get().to(read_status),
        )
        .route(
            "/v1.0/robot/otoMessages/batchRecall",
            web::post().to(batch_recall),
        )
        .route("/robot/send", web::post().to(robot_send))
        .route("/_sim/read", web::post().to(read))
        .route(
            "/topapi/message/corpconversation/asyncsend_v2",
            web::post().to(super::work_notice::asyncsend_v2),
        )
        .route(
            "/topapi/message/corpconversation/getsendresult",
            web::post().to(super::work_notice::getsendresult),
        )
        .route(
            "/topapi/message/corpconversation/recall",
            web::post().to(super::work_notice::recall),
        )
        .route("/_sim/messages", web::get().to(messages))
        .route("/_sim/stats", web::get().to(stats))
        .route("/_sim/reset", web::post().to(reset))
        .route("/_sim/faults", web::post().to(faults));
}

pub(super) fn oapi(errcode: i64, errmsg: &str) -> HttpResponse {
    HttpResponse::Ok().json(json!({"errcode": errcode, "errmsg": errmsg}))
}

fn api_error(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("valid status"))
        .json(json!({"code": code, "message": message, "requestid": "sim"}))
}

fn unauthorized() -> HttpResponse {
    api_error(401, "InvalidAuthentication", "不合法的access_token")
}

/// The permission a call needs, as the developer console names it.
fn scope_of(api: &str) -> Option<&'static str> {
    Some(match api {
        "getbymobile" => "qyapi_get_member_by_mobile",
        "department_listsub" => "qyapi_get_department_list",
        "user_list" => "qyapi_get_department_member",
        "batch_send" | "read_status" | "batch_recall" => "qyapi_robot_sendmsg",
        "asyncsend_v2" | "getsendresult" | "work_notice_recall" => "qyapi_base",
        _ => return None,
    })
}

/// `res` dated by DingTalk's clock (actix would stamp the host's): what a client compares
/// its own clock with.
pub(super) fn dated(mut res: HttpResponse, dingtalk_ms: i64) -> HttpResponse {
    let text = jiff::Timestamp::from_millisecond(dingtalk_ms)
        .ok()
        .and_then(|ts| {
            jiff::fmt::rfc2822::DateTimePrinter::new()
                .timestamp_to_rfc9110_string(&ts)
                .ok()
        });
    if let Some(value) = text.and_then(|t| actix_web::http::header::HeaderValue::from_str(&t).ok())
    {
        res.headers_mut()
            .insert(actix_web::http::header::DATE, value);
    }
    res
}

pub(super) fn peer_ip(req: &HttpRequest) -> String {
    req.peer_addr()
        .map_or_else(String::new, |a| a.ip().to_string())
}

impl Inner {
    pub(super) fn next_random(&mut self) -> f64 {
        // xorshift64: deterministic, good enough to pick which requests fail.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(super) fn refuse(&mut self, api: &str, code: impl std::fmt::Display) {
        *self
            .stats
            .refusals
            .entry(format!("{api}:{code}"))
            .or_default() += 1;
    }

    pub(super) fn new_id(&mut self) -> String {
        self.seq += 1;
        format!(
            "sim{:016x}{:08x}",
            self.rng.wrapping_mul(self.seq),
            self.seq
        )
    }

    /// The userid of whoever has `mobile`, in `users` or among the directory's members.
    fn userid_of(&self, mobile: &str) -> Option<String> {
        let c = &self.config;
        c.users
            .iter()
            .find(|u| u.mobile == mobile)
            .map(|u| u.userid.clone())
            .or_else(|| {
                c.members
                    .iter()
                    .find(|m| m.mobile.as_deref() == Some(mobile))
                    .map(|m| m.userid.clone())
            })
    }

    fn knows(&self, userid: &str) -> bool {
        let c = &self.config;
        c.users.iter().any(|u| u.userid == userid) || c.members.iter().any(|m| m.userid == userid)
    }

    /// DingTalk's refusal of an oapi call: 88 unless `q` carries a live token, then the app's
    /// security settings ([`Inner::oapi_refusal`]).
    fn bad_token(
        &mut self,
        api: &str,
        q: &Query,
        req: &HttpRequest,
        now: i64,
    ) -> Option<HttpResponse> {
        let Some(app) = self.token_app(q.get("access_token").map_or("", String::as_str), now)
        else {
            self.refuse(api, 88);
            return Some(HttpResponse::Ok().json(json!({"errcode": 88, "sub_code": "40014", "errmsg": "不合法的access_token", "sub_msg": "不合法的access_token"})));
        };
        self.oapi_refusal(api, &app, &peer_ip(req))
    }

    /// DingTalk's clock at the simulator's `now`.
    pub(super) fn dingtalk_now(&self, now: i64) -> i64 {
        now + self.config.security.clock_offset_ms
    }

    /// How DingTalk refuses an oapi call of `app` from `peer` for the app's security settings:
    /// not from a whitelisted IP (60020, naming it), or lacking the call's permission (88 with
    /// sub_code 60011, naming it, as topapi answers).
    pub(super) fn oapi_refusal(
        &mut self,
        api: &str,
        app: &str,
        peer: &str,
    ) -> Option<HttpResponse> {
        let ips = &self.config.security.app_ips;
        if !ips.is_empty() && !ips.iter().any(|ip| ip == peer) {
            self.refuse(api, 60020);
            return Some(oapi(60020, &format!("访问ip不在白名单之中，请参考FAQ：https://open.dingtalk.com/document/org-faq/app-faq,request ip={peer} appKey({app})")));
        }
        let scope = self.lacked(api)?;
        self.refuse(api, 60011);
        let sub_msg = format!("应用尚未开通所需的权限：[{scope}]，点击链接申请并开通即可：https://open-dev.dingtalk.com/appscope/apply?content={app}%23{scope}");
        Some(HttpResponse::Ok().json(json!({
            "errcode": 88, "sub_code": "60011", "sub_msg": sub_msg,
            "errmsg": format!("ding talk error[subcode=60011,submsg={sub_msg}, {{requiredScopes=[{scope}]}}]"),
        })))
    }

    /// How DingTalk refuses a new-API call lacking its permission: 403, naming it.
    fn api_refusal(&mut self, api: &str) -> Option<HttpResponse> {
        let scope = self.lacked(api)?;
        self.refuse(api, 403);
        Some(HttpResponse::Forbidden().json(json!({
            "code": "Forbidden.AccessDenied.AccessTokenPermissionDenied",
            "message": "没有调用该接口的权限，接口权限申请参考：https://open.dingtalk.com/document/orgapp-server/add-api-permission",
            "requestid": "sim",
            "accessdenieddetail": {"requiredScopes": [scope]},
        })))
    }

    fn lacked(&self, api: &str) -> Option<&'static str> {
        scope_of(api).filter(|scope| self.config.security.app_lacks.iter().any(|l| l == scope))
    }

    fn department_exists(&self, dept_id: i64) -> bool {
        dept_id == 1 || self.config.departments.iter().any(|d| d.dept_id == dept_id)
    }

    pub(super) fn token_app(&self, token: &str, now: i64) -> Option<String> {
        self.tokens
            .get(token)
            .filter(|(_, exp)| *exp > now)
            .map(|(app, _)| app.clone())
    }

    fn issue_token(&mut self, app: &str, now: i64) -> String {
        let token = self.new_id();
        let ttl = self.config.token_ttl_s;
        self.tokens
            .insert(token.clone(), (app.to_owned(), now + ttl * 1000));
        self.stats.tokens_issued += 1;
        token
    }

    /// A processQueryKey as DingTalk's look: base64, so with `+`, `/` and `=` in it.
    fn new_query_key(&mut self) -> String {
        let id = self.new_id();
        format!("{}+{}/{}==", &id[..8], &id[8..16], &id[16..])
    }

    /// The app whose token a new-API request carries; `None` (refusal counted): answer
    /// [`unauthorized`].
    fn api_token(&mut self, api: &str, req: &HttpRequest, now: i64) -> Option<String> {
        let token = req
            .headers()
            .get("x-acs-dingtalk-access-token")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let app = self.token_app(token, now);
        if app.is_none() {
            self.refuse(api, 401);
        }
        app
    }

    /// Whether `robot_code` is the robot of the app `app_key`.
    fn is_robot_of(&self, app_key: &str, robot_code: Option<&str>) -> bool {
        self.config
            .apps
            .iter()
            .any(|a| a.key == app_key && Some(a.robot_code.as_str()) == robot_code)
    }

    pub(super) fn record(
        &mut self,
        api: &'static str,
        target: String,
        user_ids: Vec<String>,
        process_query_key: Option<String>,
        body: Value,
        now: i64,
    ) {
        self.seq += 1;
        self.stats.messages += 1;
        let seq = self.seq;
        tracing::info!(target: "simulator", api, to = %target, user_ids = ?user_ids, "DingTalk simulator received a message");
        self.messages.push(SimMessage {
            seq,
            at_ms: now,
            api,
            target,
            user_ids,
            process_query_key,
            body,
            lost_answer: LOSE.try_with(Cell::get).ok().flatten().map(|(how, _)| how),
        });
    }
}

tokio::task_local! {
    /// How the answer of the request being handled is to be lost, set by [`fault`] for
    /// [`lose_answers`] (and [`Inner::record`], which marks the message).
    static LOSE: Cell<Option<(LostAnswer, Duration)>>;
}

/// Loses the answer of a request [`fault`] picked for it, once it was carried out: holds it
/// past the caller's timeout, or closes the connection without it.
pub(super) async fn lose_answers(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    LOSE.scope(Cell::new(None), async move {
        let res = next.call(req).await?.map_into_boxed_body();
        Ok(match LOSE.with(Cell::get) {
            None => res,
            Some((LostAnswer::Timeout, after)) => {
                tokio::time::sleep(after).await;
                res
            }
            Some((LostAnswer::Dropped, _)) => res.into_response(dropped()),
        })
    })
    .await
}

/// A response whose body fails before its first byte: the server closes the connection
/// without writing anything (the head waits in its buffer until the body's first bytes).
fn dropped() -> HttpResponse {
    HttpResponse::Ok().streaming(futures_util::stream::once(async {
        Err::<web::Bytes, _>(std::io::Error::other("connection dropped (injected fault)"))
    }))
}

/// Counts the request and, when a fault applies, answers for the endpoint (or arranges for
/// its answer to be lost once it is carried out).
pub(super) async fn fault(state: &SimState, api: &str, oapi_style: bool) -> Option<HttpResponse> {
    let (gate, latency, injected) = {
        let mut g = state.lock();
        *g.stats.requests.entry(api.to_owned()).or_default() += 1;
        let gate = g.gates.get(api).cloned();
        let f: &Faults = &g.faults;
        let applies = f.any()
            && (f.apis.is_empty() || f.apis.iter().any(|a| a == api))
            && f.count != Some(0)
            && !(f.impolite == Some(Impolite::Quota) && api == "robot_send");
        let latency = f.latency_ms;
        let skipped = applies && g.faults.skip > 0;
        if skipped {
            g.faults.skip -= 1;
        }
        let injected = if applies && !skipped {
            let u = g.next_random();
            g.faults.pick(u)
        } else {
            None
        };
        if let Some(kind) = injected {
            g.stats.faults_injected += 1;
            *g.stats.faults.entry(kind.name().to_owned()).or_default() += 1;
            if let Some(n) = g.faults.count.as_mut() {
                *n -= 1;
            }
        }
        let f = &g.faults;
        let how = injected.map(|kind| (kind, f.http_status, f.errcode, f.timeout_ms, f.impolite));
        (gate, latency, how)
    };
    if let Some(gate) = gate {
        gate.pass().await;
    }
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let (kind, status, errcode, timeout_ms, impolite) = injected?;
    let lose = |how: LostAnswer| {
        let after = Duration::from_millis(timeout_ms);
        // Outside `lose_answers` (a handler called directly) the answer is not lost.
        let _ = LOSE.try_with(|l| l.set(Some((how, after))));
        None
    };
    if let (Injected::Error, Some(answer)) = (kind, impolite) {
        return Some(impolite_answer(answer, status, oapi_style));
    }
    Some(match (kind, status, errcode) {
        (Injected::Timeout, ..) => return lose(LostAnswer::Timeout),
        (Injected::DropAfter, ..) => return lose(LostAnswer::Dropped),
        (Injected::DropBefore, ..) => dropped(),
        (_, None, Some(code)) if oapi_style => oapi(code, "injected fault"),
        (_, None, Some(code)) => api_error(
            if code == -1 { 503 } else { 429 },
            &code.to_string(),
            "injected fault",
        ),
        (_, Some(s), _) => api_error(s, "InjectedFault", "injected fault"),
        (_, None, None) => api_error(503, "ServiceUnavailable", "injected fault"),
    })
}

fn impolite_answer(answer: Impolite, status: Option<u16>, oapi_style: bool) -> HttpResponse {
    const QUOTA: &str = "您的企业本月api调用量已超过限制,调用量:10001次,额度:10000次,请登录开发者后台-资源管理-查看用量明细";
    match answer {
        Impolite::AntiAbuse { wait_s } => {
            HttpResponse::Ok().json(json!({"status": 1111, "wait": wait_s, "punish": "deny"}))
        }
        Impolite::Html => HttpResponse::build(
            actix_web::http::StatusCode::from_u16(status.unwrap_or(200)).expect("valid status"),
        )
        .content_type("text/html; charset=utf-8")
        .body("<!DOCTYPE html><html><head><title>访问受限</title></head><body><p>您的访问过于频繁，请稍后再试。</p></body></html>"),
        Impolite::Quota if oapi_style => oapi(90020, QUOTA),
        Impolite::Quota => api_error(403, "Forbidden.AccessDenied.ApiCountLimitForOrg", QUOTA),
    }
}

async fn gettoken(state: State, q: Query) -> HttpResponse {
    let res = gettoken_answer(&state, q).await;
    let now = state.lock().dingtalk_now(state.clock.now_ms());
    dated(res, now)
}

async fn gettoken_answer(state: &SimState, q: Query) -> HttpResponse {
    if let Some(r) = fault(state, "token", true).await {
        return r;
    }
    let now = state.clock.now_ms();
    let mut g = state.lock();
    let known = g
        .config
        .apps
        .iter()
        .any(|a| Some(&a.key) == q.get("appkey") && Some(&a.secret) == q.get("appsecret"));
    if !known {
        g.refuse("token", 40089);
        return oapi(40089, "invalid appkey or appsecret");
    }
    let token = g.issue_token(&q["appkey"], now);
    let ttl = g.config.token_ttl_s;
    HttpResponse::Ok()
        .json(json!({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": ttl}))
}

async fn oauth2_token(state: State, body: web::Bytes) -> HttpResponse {
    let res = oauth2_token_answer(&state, body).await;
    let now = state.lock().dingtalk_now(state.clock.now_ms());
    dated(res, now)
}

async fn oauth2_token_answer(state: &SimState, body: web::Bytes) -> HttpResponse {
    if let Some(r) = fault(state, "token", false).await {
        return r;
    }
    let now = state.clock.now_ms();
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut g = state.lock();
    let key = v["appKey"].as_str().unwrap_or_default().to_owned();
    let known = g
        .config
        .apps
        .iter()
        .any(|a| a.key == key && Some(a.secret.as_str()) == v["appSecret"].as_str());
    if !known {
        g.refuse("token", "invalidClientIdOrSecret");
        return api_error(
            400,
            "invalidClientIdOrSecret",
            "无效的clientId或者clientSecret",
        );
    }
    let token = g.issue_token(&key, now);
    let ttl = g.config.token_ttl_s;
    HttpResponse::Ok().json(json!({"accessToken": token, "expireIn": ttl}))
}

async fn getbymobile(state: State, req: HttpRequest, q: Query, body: web::Bytes) -> HttpResponse {
    if let Some(r) = fault(&state, "getbymobile", true).await {
        return r;
    }
    let now = state.clock.now_ms();
    let mut g = state.lock();
    if let Some(r) = g.bad_token("getbymobile", &q, &req, now) {
        return r;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let Some(mobile) = v["mobile"].as_str().filter(|m| !m.is_empty()) else {
        g.refuse("getbymobile", 400002);
        return oapi(400002, "参数错误: mobile");
    };
    let request_id = g.new_id();
    match g.userid_of(mobile) {
        Some(userid) => HttpResponse::Ok().json(json!({"errcode": 0, "errmsg": "ok", "result": {"userid": userid}, "request_id": request_id})),
        None => {
            g.refuse("getbymobile", 60121);
            HttpResponse::Ok().json(json!({"errcode": 60121, "errmsg": "找不到该用户", "request_id": request_id}))
        }
    }
}

/// `dept_id` of an oapi directory body, or the errcode and message DingTalk refuses it with
/// (60003 for a department it does not have).
fn dept_id(g: &mut Inner, api: &str, body: &[u8]) -> Result<(i64, Value), (i64, &'static str)> {
    let v: Value = serde_json::from_slice(body).unwrap_or_default();
    let refusal = match v["dept_id"].as_i64() {
        Some(id) if g.department_exists(id) => return Ok((id, v)),
        Some(_) => (60003, "部门不存在"),
        None => (400002, "参数错误: dept_id"),
    };
    g.refuse(api, refusal.0);
    Err(refusal)
}

/// One level of departments, whole.
async fn listsub(state: State, req: HttpRequest, q: Query, body: web::Bytes) -> HttpResponse {
    const API: &str = "department_listsub";
    if let Some(r) = fault(&state, API, true).await {
        return r;
    }
    let now = state.clock.now_ms();
    let mut g = state.lock();
    if let Some(r) = g.bad_token(API, &q, &req, now) {
        return r;
    }
    let (parent, _) = match dept_id(&mut g, API, &body) {
        Ok(v) => v,
        Err((code, msg)) => return oapi(code, msg),
    };
    let result: Vec<Value> = g
        .config
        .departments
        .iter()
        .filter(|d| d.parent_id == parent)
        .map(|d| json!({"dept_id": d.dept_id, "name": d.name, "parent_id": d.parent_id, "auto_add_user": true, "create_dept_group": false}))
        .collect();
    let request_id = g.new_id();
    HttpResponse::Ok()
        .json(json!({"errcode": 0, "errmsg": "ok", "result": result, "request_id": request_id}))
}

/// A department's own members, paged by cursor (an offset) and size (1 to 100).
async fn user_list(state: State, req: HttpRequest, q: Query, body: web::Bytes) -> HttpResponse {
    const API: &str = "user_list";
    if let Some(r) = fault(&state, API, true).await {
        return r;
    }
    let now = state.clock.now_ms();
    let mut g = state.lock();
    if let Some(r) = g.bad_token(API, &q, &req, now) {
        return r;
    }
    let (dept, v) = match dept_id(&mut g, API, &body) {
        Ok(v) => v,
        Err((code, msg)) => return oapi(code, msg),
    };
    let (Some(cursor), Some(size)) = (
        v["cursor"].as_u64(),
        v["size"].as_u64().filter(|s| (1..=100).contains(s)),
    ) else {
        g.refuse(API, 40035);
        return oapi(40035, "不合法的参数: cursor, size (1 to 100)");
    };
    let own: Vec<Value> = g
        .config
        .members
        .iter()
        .filter(|m| m.departments.contains(&dept))
        .map(|m| {
            json!({"userid": m.userid, "name": m.name, "mobile": m.mobile, "state_code": "86",
                   "email": m.email, "job_number": m.job_number, "dept_id_list": m.departments,
                   "active": true})
        })
        .collect();
    let (start, end) = (cursor as usize, (cursor + size) as usize);
    let page: Vec<Value> = own
        .iter()
        .skip(start)
        .take(size as usize)
        .cloned()
        .collect();
    let more = end < own.len();
    let mut result = json!({"has_more": more, "list": page});
    if more {
        result["next_cursor"] = end.into();
    }
    let request_id = g.new_id();
    HttpResponse::Ok()
        .json(json!({"errcode": 0, "errmsg": "ok", "result": result, "request_id": request_id}))
}

/// Required msgParam keys per msgKey.
fn msg_param_keys(msg_key: &str) -> Option<Vec<String>> {
    let fixed: &[&str] = match msg_key {
        "sampleText" => &["content"],
        "sampleMarkdown" => &["title", "text"],
        "sampleLink" => &["text", "title", "picUrl", "messageUrl"],
        "sampleActionCard" => &["title", "text", "singleTitle", "singleURL"],
        "sampleImageMsg" => &["photoURL"],
        "sampleFile" => &["mediaId", "fileName", "fileType"],
        "sampleAudio" => &["mediaId", "duration"],
        "sampleVideo" => &["duration", "videoMediaId", "videoType"],
        _ => {
            let n: usize = msg_key
                .strip_prefix("sampleActionCard")?
                .parse()
                .ok()
                .filter(|n| (2..=5).contains(n))?;
            let mut keys = vec!["title".to_owned(), "text".to_owned()];
            for i in 1..=n {
                keys.push(format!("actionTitle{i}"));
                keys.push(format!("actionURL{i}"));
            }
            return Some(keys);
        }
    };
    Some(fixed.iter().map(|k| k.to_string()).collect())
}

async fn batch_send(state: State, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if let Some(r) = fault(&state, "batch_send", false).await {
        return r;
    }
    let now = state.clock.now_ms();
    let mut g = state.lock();
    let Some(app_key) = g.api_token("batch_send", &req, now) else {
        return unauthorized();
    };
    if let Some(r) = g.api_refusal("batch_send") {
        return r;
    }
    let bad = |g: &mut Inner, code: &str, msg: &str| {
        g.refuse("batch_send", code);
        api_error(400, code, msg)
    };
    let Ok(Value::Object(v)) = serde_json::from_slice::<Value>(&body) else {
        return bad(&mut g, "InvalidParameter", "body must be a JSON object");
    };
    let robot_code = g
        .config
        .apps
        .iter()
        .find(|a| a.key == app_key)
        .map(|a| a.robot_code.clone());
    if v.get("robotCode").and_then(Value::as_str) != robot_code.as_deref() {
        return bad(&mut g, ROBOT_CODE_REFUSED.0, ROBOT_CODE_REFUSED.1);
    }
    let ids: Option<Vec<String>> = v
        .get("userIds")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(|x| x.as_str().map(str::to_owned)).collect());
    let Some(ids) = ids.filter(|ids| (1..=20).contains(&ids.len())) else {
        return bad(
            &mut g,
            "InvalidParameter.userIds",
            "userIds must hold 1 to 20 ids",
        );
    };
    let msg_key = v.get("msgKey").and_then(Value::as_str).unwrap_or("");
    let Some(required) = msg_param_keys(msg_key) else {
        return bad(&mut g, "InvalidParameter.msgKey", "unknown msgKey");
    };
    let param: Option<Map<String, Value>> = v
        .get("msgParam")
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok());
    let Some(param) = param.filter(|p| {
        required
            .iter()
            .all(|k| p.get(k).is_some_and(Value::is_string))
    }) else {
        return bad(
            &mut g,
            "InvalidParameter.msgParam",
            "msgParam must be a JSON string holding the msgKey's keys",
        );
    };

    let (mut invalid, mut flow, mut sent) = (vec![], vec![], vec![]);
    for id in ids {
        if !g.knows(&id) {
            invalid.push(id);
        } else if g.flow_controlled.remove(&id) {
            flow.push(id);
        } else {
            sent.push(id);
        }
    }
    let key = g.new_query_key();
    if !sent.is_empty() {
        let target = robot_code.unwrap_or_default();
        g.oto.insert(
            key.clone(),
            OtoSend {
                app_key,
                at_ms: now,
                user_ids: sent.clone(),
                read: HashMap::new(),
                recalled: false,
            },
        );
        g.record(
            "batch_send",
            target,
            sent,
            Some(key.clone()),
            json!({"msgKey": msg_key, "msgParam": param}),
            now,
        );
    }
    HttpResponse::Ok().json(json!({
        "processQueryKey": key,
        "invalidStaffIdList": invalid,
        "flowControlledStaffIdList": flow,
        "filteredStaffIdList": [],
    }))
}

fn nonempty(v: &Value, key: &str) -> bool {
    v.get(key)
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
}

/// What is wrong with a webhook body, as DingTalk's errcode and message.
fn check_robot_body(v: &Value) -> Result<(), (i64, String)> {
    let msgtype = v["msgtype"].as_str().unwrap_or("");
    let part = &v[msgtype];
    let (ok, what) = match msgtype {
        "text" => (nonempty(part, "content"), "text.content"),
        "markdown" => (
            nonempty(part, "title") && nonempty(part, "text"),
            "markdown.title/text",
        ),
        "link" => (
            nonempty(part, "title") && nonempty(part, "text") && nonempty(part, "messageUrl"),
            "link.title/text/messageUrl",
        ),
        "actionCard" => {
            let single = nonempty(part, "singleTitle") && nonempty(part, "singleURL");
            let btns = part["btns"].as_array().is_some_and(|b| {
                !b.is_empty()
                    && b.iter()
                        .all(|b| nonempty(b, "title") && nonempty(b, "actionURL"))
            });
            (
                nonempty(part, "title") && nonempty(part, "text") && (single || btns),
                "actionCard title/text and singleTitle+singleURL or btns",
            )
        }
        "feedCard" => (
            part["links"].as_array().is_some_and(|l| {
                !l.is_empty()
                    && l.iter().all(|l| {
                        nonempty(l, "title") && nonempty(l, "messageURL") && nonempty(l, "picURL")
                    })
            }),
            "feedCard.links",
        ),
        "" => return Err((400106, "missing msgtype".into())),
        other => return Err((400105, format!("unsupported msgtype {other}"))),
    };
    if !ok {
        return Err((400106, format!("missing or empty {what}")));
    }
    if let Some(at) = v.get("at") {
        let list_ok = |k: &str| {
            at.get(k)
                .is_none_or(|x| x.as_array().is_some_and(|a| a.iter().all(Value::is_string)))
        };
        if !at.is_object()
            || !list_ok("atMobiles")
            || !list_ok("atUserIds")
            || at.get("isAtAll").is_some_and(|b| !b.is_boolean())
        {
            return Err((400106, "malformed at".into()));
        }
    }
    Ok(())
}

/// The texts of a webhook body a keyword-secured robot looks in (not the titles, but a feed
/// card's, which has no other text).
fn robot_texts(v: &Value) -> Vec<&str> {
    let msgtype = v["msgtype"].as_str().unwrap_or("");
    let part = &v[msgtype];
    let texts = match msgtype {
        "text" => vec![&part["content"]],
        "feedCard" => part["links"]
            .as_array()
            .map(|l| l.iter().map(|l| &l["title"]).collect())
            .unwrap_or_default(),
        _ => vec![&part["text"]],
    };
    texts.into_iter().filter_map(Value::as_str).collect()
}

async fn robot_send(state: State, req: HttpRequest, q: Query, body: web::Bytes) -> HttpResponse {
    let res = robot_answer(&state, &req, &q, &body).await;
    let now = state.lock().dingtalk_now(state.clock.now_ms());
    dated(res, now)
}

// A robot's security refusals (310000) in DingTalk's current wording (docs/dingtalk.md); the
// client reads its older English ones too.
const KEYWORD_NOT_MATCH: &str = "description:关键词不匹配;solution:请联系群管理员查看此机器人的关键词，并在发送的信息中包含此关键词;";
const SIGN_NOT_MATCH: &str = "description:机器人发送签名不匹配;solution:请确认签名和生成签名的时间戳必须都放在调用的网址中，请确认机器人的密钥加密和填写正确;";
const SIGN_EXPIRED: &str =
    "description:机器人发送签名过期;solution:签名生成时间和发送时间请保持在 timestampms 以内;";
const IP_NOT_ALLOWED: &str =
    "description:ip 不在白名单中;solution:请联系对应群的管理员，设置机器人安全ip地址段;";

/// A custom robot's webhook: the robot's security settings (signature with a timestamp within
/// an hour of DingTalk's clock, IP ranges, keyword) in DingTalk's current words, then the body
/// and the throttle.
async fn robot_answer(state: &SimState, req: &HttpRequest, q: &Query, body: &[u8]) -> HttpResponse {
    if let Some(r) = fault(state, "robot_send", true).await {
        return r;
    }
    let now = state.clock.now_ms();
    let mut g = state.lock();
    let refuse = |g: &mut Inner, code: i64, msg: &str| {
        g.refuse("robot_send", code);
        oapi(code, msg)
    };
    let token = q.get("access_token").map_or("", String::as_str);
    let Some(robot) = g.config.robots.iter().find(|r| r.token == token).cloned() else {
        return refuse(&mut g, 300001, "token is not exist");
    };
    if let Some(secret) = &robot.secret {
        let Some(ts) = q.get("timestamp").and_then(|t| t.parse::<i64>().ok()) else {
            return refuse(&mut g, 310000, SIGN_NOT_MATCH);
        };
        if (g.dingtalk_now(now) - ts).abs() > 3_600_000 {
            return refuse(&mut g, 310000, SIGN_EXPIRED);
        }
        if q.get("sign").map(String::as_str) != Some(sign::signature(secret, ts).as_str()) {
            return refuse(&mut g, 310000, SIGN_NOT_MATCH);
        }
    }
    let peer = peer_ip(req);
    let ips = g.config.security.robot_ips.get(&robot.name);
    if ips.is_some_and(|ips| !ips.contains(&peer)) {
        return refuse(&mut g, 310000, IP_NOT_ALLOWED);
    }
    if body.len() > MAX_ROBOT_BODY {
        return refuse(&mut g, 460101, "message too long, exceed 20000 bytes");
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return refuse(&mut g, 400013, "invalid json body");
    };
    if let Err((code, msg)) = check_robot_body(&v) {
        return refuse(&mut g, code, &msg);
    }
    if let Some(keyword) = &robot.keyword {
        if !robot_texts(&v).iter().any(|t| t.contains(keyword.as_str())) {
            return refuse(&mut g, 310000, KEYWORD_NOT_MATCH);
        }
    }
    let (limit, window, penalty) = (
        g.config.throttle_limit,
        g.config.throttle_window_ms,
        g.config.throttle_penalty_ms,
    );
    if g.silenced_until
        .get(&robot.name)
        .is_some_and(|until| *until > now)
    {
        g.stats.throttled += 1;
        return refuse(&mut g, 410100, "send too fast, exceed 20 times per minute");
    }
    let sends = g.sends.entry(robot.name.clone()).or_default();
    while sends.front().is_some_and(|t| *t <= now - window) {
        sends.pop_front();
    }
    if sends.len() >= limit {
        g.silenced_until.insert(robot.name.clone(), now + penalty);
        g.stats.throttled += 1;
        return refuse(&mut g, 410100, "send too fast, exceed 20 times per minute");
    }
    sends.push_back(now);
    g.record("robot_send", robot.name, vec![], None, v, now);
    oapi(0, "ok")
}

/// readStatus: who of a batchSend's people read it, within 24 h of the send, for the app that
/// sent it.
async fn read_status(state: State, req: HttpRequest, q: Query) -> HttpResponse {
    if let Some(r) = fault(&state, "read_status", false).await {
        return r;
    }
    let now = state.clock.now_ms();
    let mut g = state.lock();
    let Some(app_key) = g.api_token("read_status", &req, now) else {
        return unauthorized();
    };
    if let Some(r) = g.api_refusal("read_status") {
        return r;
    }
    if !g.is_robot_of(&app_key, q.get("robotCode").map(String::as_str)) {
        g.refuse("read_status", ROBOT_CODE_REFUSED.0);
        return api_error(400, ROBOT_CODE_REFUSED.0, ROBOT_CODE_REFUSED.1);
    }
    let key = q.get("processQueryKey").map_or("", String::as_str);
    let Some(send) = g
        .oto
        .get(key)
        .filter(|s| s.app_key == app_key && now - s.at_ms <= OTO_WINDOW_MS)
    else {
        g.refuse("read_status", "InvalidParameter.processQueryKey");
        return api_error(
            400,
            "InvalidParameter.processQueryKey",
            "no message with this processQueryKey in the last 24 hours",
        );
    };
    let list: Vec<Value> = send
        .user_ids
        .iter()
        .map(|u| match send.read.get(u) {
            Some(at) => json!({"userId": u, "name": u, "readStatus": "READ", "readTimestamp": at}),
            None => json!({"userId": u, "name": u, "readStatus": "UNREAD"}),
        })
        .collect();
    HttpResponse::Ok().json(json!({"sendStatus": "SUCCESS", "messageReadInfoList": list}))
}

/// batchRecall: removes the messages of up to 20 keys from the chats, within 24 h of the send.
async fn batch_recall(state: State, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if let Some(r) = fault(&state, "batch_recall", false).await {
        return r;
    }
    let now = state.clock.now_ms();
    let mut g = state.lock();
    let Some(app_key) = g.api_token("batch_recall", &req, now) else {
        return unauthorized();
    };
    if let Some(r) = g.api_refusal("batch_recall") {
        return r;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    if !g.is_robot_of(&app_key, v["robotCode"].as_str()) {
        g.refuse("batch_recall", ROBOT_CODE_REFUSED.0);
        return api_error(400, ROBOT_CODE_REFUSED.0, ROBOT_CODE_REFUSED.1);
    }
    let keys: Option<Vec<String>> = v["processQueryKeys"]
        .as_array()
        .and_then(|a| a.iter().map(|k| k.as_str().map(str::to_owned)).collect());
    let Some(keys) = keys.filter(|k| (1..=20).contains(&k.len())) else {
        g.refuse("batch_recall", "InvalidParameter.processQueryKeys");
        return api_error(
            400,
            "InvalidParameter.processQueryKeys",
            "processQueryKeys must hold 1 to 20 keys",
        );
    };
    let (mut recalled, mut failed) = (vec![], Map::new());
    for key in keys {
        match g.oto.get_mut(&key).filter(|s| s.app_key == app_key) {
            Some(send) if now - send.at_ms > OTO_WINDOW_MS => {
                failed.insert(key, "exceed 24 hours, cannot recall".into());
            }
            Some(send) => {
                send.recalled = true;
                recalled.push(key);
            }
            None => {
                failed.insert(key, "message not found".into());
            }
        }
    }
    g.messages.retain(|m| {
        m.process_query_key
            .as_ref()
            .is_none_or(|k| !recalled.contains(k))
    });
    HttpResponse::Ok().json(json!({"successResult": recalled, "failedResult": failed}))
}

#[derive(serde::Deserialize)]
struct ReadBody {
    user_id: String,
}

/// Test hook: the person opens the robot's chat and their work notifications and reads what
/// is there.
async fn read(state: State, body: web::Json<ReadBody>) -> HttpResponse {
    let marked = state.mark_read(&body.user_id);
    HttpResponse::Ok().json(json!({"marked": marked}))
}

async fn messages(state: State) -> HttpResponse {
    HttpResponse::Ok().json(state.messages())
}

async fn stats(state: State) -> HttpResponse {
    HttpResponse::Ok().json(state.stats())
}

async fn reset(state: State) -> HttpResponse {
    state.reset();
    HttpResponse::Ok().json(json!({"reset": true}))
}

async fn faults(state: State, body: web::Json<Faults>) -> HttpResponse {
    if let Err(why) = body.check() {
        return HttpResponse::BadRequest().json(json!({"error": why}));
    }
    state.set_faults(body.into_inner());
    HttpResponse::Ok().json(json!({"faults": state.lock().faults}))
}
