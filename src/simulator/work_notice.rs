//! Work notifications as DingTalk treats them: asyncsend_v2 answers a task id for whoever it
//! names, and decides per person, silently, what getsendresult then reports: delivered
//! (unread), an unknown userid (invalid), or held back (forbidden, with a code: 143105 past the
//! daily cap per person and app, 143106 for the same content to the same person the same day).
//! Tasks are answered for 24 hours, and only for tasks of at most 100 people. A person who
//! opens their notifications (`POST /_sim/read`) moves to the read list; `recall` takes a
//! task's message back from everyone it reached, within the same 24 hours.

use super::routes::{fault, oapi, peer_ip};
use super::SimState;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};

type State = web::Data<SimState>;
type Query = web::Query<HashMap<String, String>>;

/// DingTalk's days for its limits: calendar days in China (+08:00).
const DAY_MS: i64 = 86_400_000;
const CHINA_MS: i64 = 8 * 3_600_000;
/// How long getsendresult and recall answer for a task.
const RESULT_WINDOW_MS: i64 = DAY_MS;
/// getsendresult times out for larger tasks.
const RESULT_MAX_IDS: usize = 100;
const MAX_IDS: usize = 5_000;
/// The `msg` sizes DingTalk takes, about 2048 bytes.
const MAX_MSG: usize = 2_048;

#[derive(Default)]
pub(super) struct Notices {
    last_task: i64,
    tasks: HashMap<i64, Task>,
    /// (app key, userid, day) → notifications delivered.
    per_day: HashMap<(String, String, i64), usize>,
    /// (userid, day, msg) delivered.
    contents: HashSet<(String, i64, String)>,
}

struct Task {
    app: String,
    agent_id: String,
    at_ms: i64,
    ids: usize,
    unread: Vec<String>,
    read: Vec<String>,
    /// The message it left in `/_sim/messages`, while not recalled.
    seq: Option<u64>,
    invalid: Vec<String>,
    forbidden: Vec<(String, &'static str)>,
}

impl Notices {
    /// `user_id` opens their work notifications: each task that reached them, not recalled,
    /// lists them as read. Answers how many tasks that marks.
    pub(super) fn mark_read(&mut self, user_id: &str) -> usize {
        let mut marked = 0;
        for task in self.tasks.values_mut().filter(|t| t.seq.is_some()) {
            if let Some(i) = task.unread.iter().position(|u| u == user_id) {
                let id = task.unread.remove(i);
                task.read.push(id);
                marked += 1;
            }
        }
        marked
    }
}

/// The app of a valid token (`None`: refused as DingTalk refuses it, [`invalid_token`]).
fn app_of(g: &mut super::Inner, api: &str, q: &Query, now: i64) -> Option<String> {
    let app = g.token_app(q.get("access_token").map_or("", String::as_str), now);
    if app.is_none() {
        g.refuse(api, 88);
    }
    app
}

fn invalid_token() -> HttpResponse {
    HttpResponse::Ok()
        .json(json!({"errcode": 88, "sub_code": "40014", "errmsg": "不合法的access_token"}))
}

/// The body's `agent_id`, if it is the app's.
fn agent_of(g: &super::Inner, app: &str, v: &Value) -> Option<String> {
    let given = match &v["agent_id"] {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return None,
    };
    g.config
        .apps
        .iter()
        .find(|a| a.key == app)
        .and_then(|a| a.agent_id.clone())
        .filter(|a| *a == given)
}

/// Fields each `msgtype` needs.
fn msg_fields(msgtype: &str) -> Option<&'static [&'static str]> {
    Some(match msgtype {
        "text" => &["content"],
        "markdown" => &["title", "text"],
        "link" => &["messageUrl", "picUrl", "title", "text"],
        "action_card" => &["title", "markdown"],
        "oa" => &["head", "body"],
        _ => return None,
    })
}

/// The app of the token, the agent the body names (the app's own) and the body; or DingTalk's
/// refusal.
fn caller(
    g: &mut super::Inner,
    api: &str,
    (q, req): (&Query, &HttpRequest),
    body: &[u8],
    now: i64,
) -> Result<(String, String, Value), Box<HttpResponse>> {
    let app = app_of(g, api, q, now).ok_or_else(|| Box::new(invalid_token()))?;
    if let Some(refused) = g.oapi_refusal(api, &app, &peer_ip(req)) {
        return Err(Box::new(refused));
    }
    let v: Value = serde_json::from_slice(body).unwrap_or_default();
    let Some(agent_id) = agent_of(g, &app, &v) else {
        g.refuse(api, 60011);
        return Err(Box::new(oapi(
            60011,
            "没有调用该接口的权限: agent_id 不属于该应用",
        )));
    };
    Ok((app, agent_id, v))
}

pub(super) async fn asyncsend_v2(
    state: State,
    req: HttpRequest,
    q: Query,
    body: web::Bytes,
) -> HttpResponse {
    const API: &str = "asyncsend_v2";
    if let Some(r) = fault(&state, API, true).await {
        return r;
    }
    let now = state.clock.now_ms();
    let mut g = state.lock();
    let (app, agent_id, v) = match caller(&mut g, API, (&q, &req), &body, now) {
        Ok(c) => c,
        Err(refused) => return *refused,
    };
    let ids: Vec<String> = v["userid_list"]
        .as_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if ids.is_empty() || ids.len() > MAX_IDS {
        g.refuse(API, 40035);
        return oapi(40035, "不合法的参数: userid_list 须有 1 到 5000 个 userid");
    }
    let msg = &v["msg"];
    let msgtype = msg["msgtype"].as_str().unwrap_or("");
    let complete = msg_fields(msgtype)
        .is_some_and(|fields| fields.iter().all(|f| msg[msgtype][*f].is_string()));
    if !complete {
        g.refuse(API, 40035);
        return oapi(40035, "不合法的参数: msg");
    }
    let content = msg.to_string();
    if content.len() > MAX_MSG {
        g.refuse(API, 40035);
        return oapi(40035, "不合法的参数: msg 内容过长");
    }
    let day = (now + CHINA_MS).div_euclid(DAY_MS);
    let cap = g.config.notice_daily_cap;
    let known: HashSet<String> = (g.config.users.iter().map(|u| u.userid.clone()))
        .chain(g.config.members.iter().map(|m| m.userid.clone()))
        .collect();
    let n = &mut g.notices;
    let mut task = Task {
        app: app.clone(),
        agent_id: agent_id.clone(),
        at_ms: now,
        ids: ids.len(),
        unread: vec![],
        read: vec![],
        seq: None,
        invalid: vec![],
        forbidden: vec![],
    };
    for id in ids {
        let counted = (app.clone(), id.clone(), day);
        let same = (id.clone(), day, content.clone());
        if !known.contains(&id) {
            task.invalid.push(id);
        } else if n.per_day.get(&counted).copied().unwrap_or(0) >= cap {
            task.forbidden.push((id, "143105"));
        } else if n.contents.contains(&same) {
            task.forbidden.push((id, "143106"));
        } else {
            *n.per_day.entry(counted).or_default() += 1;
            n.contents.insert(same);
            task.unread.push(id);
        }
    }
    n.last_task += 1;
    let task_id = n.last_task;
    let delivered = task.unread.clone();
    if !delivered.is_empty() {
        g.record("work_notice", agent_id, delivered, None, msg.clone(), now);
        task.seq = Some(g.seq);
    }
    g.notices.tasks.insert(task_id, task);
    let request_id = g.new_id();
    HttpResponse::Ok()
        .json(json!({"errcode": 0, "errmsg": "ok", "task_id": task_id, "request_id": request_id}))
}

pub(super) async fn getsendresult(
    state: State,
    req: HttpRequest,
    q: Query,
    body: web::Bytes,
) -> HttpResponse {
    const API: &str = "getsendresult";
    if let Some(r) = fault(&state, API, true).await {
        return r;
    }
    let now = state.clock.now_ms();
    let mut g = state.lock();
    let (app, agent_id, v) = match caller(&mut g, API, (&q, &req), &body, now) {
        Ok(c) => c,
        Err(refused) => return *refused,
    };
    let task = v["task_id"]
        .as_i64()
        .and_then(|id| g.notices.tasks.get(&id));
    let Some(task) = task
        .filter(|t| t.app == app && t.agent_id == agent_id && now - t.at_ms <= RESULT_WINDOW_MS)
    else {
        g.refuse(API, 40035);
        return oapi(40035, "不合法的参数: task_id 不存在或已超过 24 小时");
    };
    if task.ids > RESULT_MAX_IDS {
        g.refuse(API, -1);
        return oapi(-1, "系统繁忙: 任务接收人超过 100 个, 查询超时");
    }
    let forbidden: Vec<&str> = task.forbidden.iter().map(|(id, _)| id.as_str()).collect();
    let forbidden_list: Vec<Value> = task
        .forbidden
        .iter()
        .map(|(id, code)| json!({"code": code, "count": 1, "userid": id}))
        .collect();
    HttpResponse::Ok().json(json!({
        "errcode": 0, "errmsg": "ok",
        "send_result": {
            "unread_user_id_list": task.unread,
            "read_user_id_list": task.read,
            "invalid_user_id_list": task.invalid,
            "forbidden_user_id_list": forbidden,
            "failed_user_id_list": [],
            "invalid_dept_id_list": [],
            "forbidden_list": forbidden_list,
        },
    }))
}

pub(super) async fn recall(
    state: State,
    req: HttpRequest,
    q: Query,
    body: web::Bytes,
) -> HttpResponse {
    const API: &str = "work_notice_recall";
    if let Some(r) = fault(&state, API, true).await {
        return r;
    }
    let now = state.clock.now_ms();
    let mut g = state.lock();
    let (app, agent_id, v) = match caller(&mut g, API, (&q, &req), &body, now) {
        Ok(c) => c,
        Err(refused) => return *refused,
    };
    let task = v["msg_task_id"]
        .as_i64()
        .and_then(|id| g.notices.tasks.get_mut(&id))
        .filter(|t| t.app == app && t.agent_id == agent_id);
    let Some(task) = task else {
        g.refuse(API, 40035);
        return oapi(40035, "不合法的参数: msg_task_id 不存在");
    };
    if now - task.at_ms > RESULT_WINDOW_MS {
        g.refuse(API, 40035);
        return oapi(40035, "不合法的参数: 消息已超过 24 小时, 不能撤回");
    }
    if let Some(seq) = task.seq.take() {
        g.messages.retain(|m| m.seq != seq);
    }
    oapi(0, "ok")
}
