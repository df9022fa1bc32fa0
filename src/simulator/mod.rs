//! A strict DingTalk stand-in for tests, the sandbox and benchmarks. It validates requests as
//! the real service does (tokens, signatures, timestamps, body limits, required fields, the
//! 20-per-minute robot throttle), records every accepted message, and injects faults on demand.
//! Nothing in the client knows it is not DingTalk.

pub mod bkuser;
mod routes;
mod work_notice;

use crate::clock::SharedClock;
use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, Semaphore};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    pub apps: Vec<SimApp>,
    /// The organisation's directory: who getbymobile finds, and which userIds batchSend knows.
    pub users: Vec<SimUser>,
    /// The departments under the root (department 1), for `department/listsub`.
    pub departments: Vec<SimDepartment>,
    /// People as the directory lists them (`user/list`), each in one or more departments;
    /// getbymobile and batchSend know them as they know `users`.
    pub members: Vec<SimMember>,
    pub robots: Vec<SimRobot>,
    /// Messages a robot takes per window before DingTalk throttles it.
    pub throttle_limit: usize,
    pub throttle_window_ms: i64,
    /// How long a throttled robot stays silenced (DingTalk: about 10 minutes).
    pub throttle_penalty_ms: i64,
    pub token_ttl_s: i64,
    /// Work notifications one person takes from one app a day (DingTalk: 500), then 143105.
    pub notice_daily_cap: usize,
    /// The organisation's security settings and clock, which refuse calls as DingTalk does.
    pub security: SimSecurity,
}

/// What DingTalk refuses beyond credentials: an app's IP whitelist and missing permissions,
/// IP-secured robots, and its clock (what signed timestamps are checked against). A robot's
/// signature (`secret`) and keyword are its own fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimSecurity {
    /// How far DingTalk's clock is ahead of the simulator's (negative: behind): the `Date` of
    /// its answers, and what a signed webhook call's timestamp must be within an hour of.
    pub clock_offset_ms: i64,
    /// The apps' server IP whitelist (服务器出口IP): when set, the oapi calls of an app from
    /// another address are refused with 60020, naming the address.
    pub app_ips: Vec<String>,
    /// Permissions the apps were not granted (e.g. `qyapi_robot_sendmsg`): a call that needs
    /// one is refused naming it (see `routes::scope_of`).
    pub app_lacks: Vec<String>,
    /// IP-secured robots, by name: the addresses their webhook takes calls from (others: 310000).
    pub robot_ips: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimApp {
    pub key: String,
    pub secret: String,
    pub robot_code: String,
    /// The app's AgentId, for work notifications (none: asyncsend_v2 is refused).
    #[serde(default)]
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimUser {
    pub mobile: String,
    pub userid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimDepartment {
    pub dept_id: i64,
    pub name: String,
    pub parent_id: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SimMember {
    pub userid: String,
    pub name: String,
    pub mobile: Option<String>,
    pub email: Option<String>,
    pub job_number: Option<String>,
    /// The departments listing them (1 is the root).
    pub departments: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimRobot {
    /// A label for records and stats (the token itself is never shown).
    pub name: String,
    pub token: String,
    pub secret: Option<String>,
    /// A keyword-secured robot: a message whose text lacks it is refused (310000).
    #[serde(default)]
    pub keyword: Option<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            apps: vec![],
            users: vec![],
            departments: vec![],
            members: vec![],
            robots: vec![],
            throttle_limit: 20,
            throttle_window_ms: 60_000,
            throttle_penalty_ms: 600_000,
            token_ttl_s: 7200,
            notice_daily_cap: 500,
            security: SimSecurity::default(),
        }
    }
}

/// Fault injection (`POST /_sim/faults`). Faults apply to the DingTalk endpoints, not `/_sim`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Fraction of requests (0..=1) that fail.
    pub error_rate: f64,
    /// How a failing request fails: an HTTP status (e.g. 503) …
    pub http_status: Option<u16>,
    /// … or, with HTTP 200, this oapi errcode (e.g. -1, 410100). Default: HTTP 503.
    pub errcode: Option<i64>,
    /// … or one of DingTalk's less polite answers (an HTML page with `http_status`).
    pub impolite: Option<Impolite>,
    /// Fail only the next N requests, then heal.
    pub count: Option<u64>,
    /// Let this many requests the fault applies to through first (e.g. fail the second page).
    pub skip: u64,
    /// Only these endpoints: "token", "getbymobile", "batch_send", "read_status",
    /// "batch_recall", "robot_send", "department_listsub", "user_list", "asyncsend_v2",
    /// "getsendresult", "work_notice_recall" (all if empty).
    pub apis: Vec<String>,
    pub latency_ms: u64,
    /// userIds that the next batchSend naming them reports as flow-controlled (once each).
    pub flow_controlled: Vec<String>,
    /// Invalidate every issued token now.
    pub expire_tokens: bool,
    /// Fraction of requests (0..=1) carried out but answered only after `timeout_ms`: past the
    /// caller's timeout, it cannot know that the message went out.
    pub timeout_rate: f64,
    pub timeout_ms: u64,
    /// Fraction of requests whose connection is closed without an answer before they are
    /// looked at: nothing is done.
    pub drop_before_rate: f64,
    /// Fraction of requests carried out, then their connection closed without an answer.
    pub drop_after_rate: f64,
}

/// What DingTalk answers beyond its APIs' documented errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Impolite {
    /// The gateway's anti-abuse answer, HTTP 200: `{"status":1111,"wait":N,"punish":"deny"}`.
    AntiAbuse { wait_s: u64 },
    /// An HTML page (HTTP 200 unless `http_status` says otherwise).
    Html,
    /// The organisation's monthly API quota: errcode 90020 (oapi) or 403
    /// `Forbidden.AccessDenied.ApiCountLimitForOrg` (the new API). Never the custom robots'
    /// webhook, which is not metered.
    Quota,
}

impl Faults {
    /// Every request to `apis` (all when empty) gets the `answer`.
    pub fn impolite(answer: Impolite, apis: &[&str]) -> Self {
        Self {
            error_rate: 1.0,
            impolite: Some(answer),
            apis: apis.iter().map(|a| a.to_string()).collect(),
            ..Self::default()
        }
    }

    /// Every request to `apis` (all when empty) fails with HTTP `status`.
    pub fn http(status: u16, apis: &[&str]) -> Self {
        Self {
            error_rate: 1.0,
            http_status: Some(status),
            apis: apis.iter().map(|a| a.to_string()).collect(),
            ..Self::default()
        }
    }

    /// Every request to `apis` (all when empty) is answered with DingTalk's `errcode`.
    pub fn errcode(code: i64, apis: &[&str]) -> Self {
        Self {
            error_rate: 1.0,
            errcode: Some(code),
            apis: apis.iter().map(|a| a.to_string()).collect(),
            ..Self::default()
        }
    }

    /// The first `n` requests the fault applies to pass; the later ones fail.
    pub fn after(self, n: u64) -> Self {
        Self { skip: n, ..self }
    }

    /// The kind of fault `u` (uniform in 0..1) picks, if any: each rate takes its share.
    fn pick(&self, u: f64) -> Option<Injected> {
        let mut edge = 0.0;
        [
            (self.error_rate, Injected::Error),
            (self.timeout_rate, Injected::Timeout),
            (self.drop_before_rate, Injected::DropBefore),
            (self.drop_after_rate, Injected::DropAfter),
        ]
        .into_iter()
        .find_map(|(rate, kind)| {
            edge += rate;
            (u < edge).then_some(kind)
        })
    }

    /// What is wrong with these faults, naming the key and the fix.
    pub fn check(&self) -> Result<(), String> {
        let rates = [
            ("error_rate", self.error_rate),
            ("timeout_rate", self.timeout_rate),
            ("drop_before_rate", self.drop_before_rate),
            ("drop_after_rate", self.drop_after_rate),
        ];
        if let Some((key, rate)) = rates.iter().find(|(_, r)| !(0.0..=1.0).contains(r)) {
            return Err(format!(
                "{key} is {rate}: a fraction of the requests, 0 to 1"
            ));
        }
        let sum: f64 = rates.iter().map(|(_, r)| r).sum();
        if sum > 1.0 {
            return Err(format!(
                "error_rate, timeout_rate, drop_before_rate and drop_after_rate add up to {sum}: each is a share of the requests, together at most 1"
            ));
        }
        if self.timeout_rate > 0.0 && self.timeout_ms == 0 {
            return Err("timeout_rate needs timeout_ms: how long the answer is held, longer than the caller's timeout".into());
        }
        Ok(())
    }

    fn any(&self) -> bool {
        self.error_rate + self.timeout_rate + self.drop_before_rate + self.drop_after_rate > 0.0
    }

    /// Only the next `n` requests fail; then the fault heals.
    pub fn times(self, n: u64) -> Self {
        Self {
            count: Some(n),
            ..self
        }
    }
}

/// The kinds of injected fault, as `SimStats::faults` counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Injected {
    Error,
    Timeout,
    DropBefore,
    DropAfter,
}

impl Injected {
    fn name(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::DropBefore => "drop_before",
            Self::DropAfter => "drop_after",
        }
    }
}

/// Why the caller of a request that was carried out never saw the answer: the cases where
/// DingTalk delivered a message its sender must count as not sent, and may send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LostAnswer {
    /// Answered after the caller's timeout.
    Timeout,
    /// The connection closed without an answer.
    Dropped,
}

/// One accepted message, as DingTalk would deliver it.
#[derive(Debug, Clone, Serialize)]
pub struct SimMessage {
    pub seq: u64,
    pub at_ms: i64,
    /// "robot_send", "batch_send" or "work_notice".
    pub api: &'static str,
    /// Robot name (robot_send), robotCode (batch_send) or agent id (work_notice).
    pub target: String,
    /// batch_send, work_notice: the ids the message reached; batch_send: the processQueryKey
    /// answered for it.
    pub user_ids: Vec<String>,
    pub process_query_key: Option<String>,
    /// robot_send: the webhook body; batch_send: `{"msgKey", "msgParam"}` with msgParam parsed;
    /// work_notice: asyncsend_v2's `msg`.
    pub body: Value,
    /// Set when the request that delivered it was not answered (a fault): its sender cannot
    /// know it arrived.
    pub lost_answer: Option<LostAnswer>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SimStats {
    /// Requests per endpoint.
    pub requests: HashMap<String, u64>,
    /// Refusals per endpoint and code, e.g. `robot_send:310000`.
    pub refusals: HashMap<String, u64>,
    pub tokens_issued: u64,
    pub messages: u64,
    pub throttled: u64,
    pub faults_injected: u64,
    /// Injected faults per kind: "error", "timeout", "drop_before", "drop_after".
    pub faults: HashMap<String, u64>,
}

#[derive(Default)]
struct Inner {
    config: SimConfig,
    tokens: HashMap<String, (String, i64)>,
    sends: HashMap<String, VecDeque<i64>>,
    silenced_until: HashMap<String, i64>,
    messages: Vec<SimMessage>,
    stats: SimStats,
    faults: Faults,
    flow_controlled: HashSet<String>,
    /// batchSend's accepted calls by processQueryKey, for readStatus and batchRecall.
    oto: HashMap<String, OtoSend>,
    gates: HashMap<String, Arc<Gate>>,
    notices: work_notice::Notices,
    rng: u64,
    seq: u64,
}

/// One accepted batchSend call: who it reached, who read it, whether it was recalled.
struct OtoSend {
    app_key: String,
    at_ms: i64,
    user_ids: Vec<String>,
    read: HashMap<String, i64>,
    recalled: bool,
}

/// How long after a batchSend DingTalk answers readStatus and batchRecall for it.
pub const OTO_WINDOW_MS: i64 = 24 * 3600 * 1000;

pub struct SimState {
    inner: Mutex<Inner>,
    clock: SharedClock,
}

impl SimState {
    pub fn new(config: SimConfig, clock: SharedClock) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                config,
                rng: 0x9E37_79B9_7F4A_7C15,
                ..Inner::default()
            }),
            clock,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn messages(&self) -> Vec<SimMessage> {
        self.lock().messages.clone()
    }

    pub fn stats(&self) -> SimStats {
        self.lock().stats.clone()
    }

    /// Forgets messages, stats, tokens, throttles and faults; keeps the configuration.
    pub fn reset(&self) {
        let mut g = self.lock();
        let config = std::mem::take(&mut g.config);
        *g = Inner {
            config,
            rng: g.rng,
            ..Inner::default()
        };
    }

    pub fn set_faults(&self, faults: Faults) {
        let mut g = self.lock();
        if faults.expire_tokens {
            g.tokens.clear();
        }
        g.flow_controlled = faults.flow_controlled.iter().cloned().collect();
        g.faults = faults;
    }

    /// Holds the next `n` requests to `api` (a name as [`Faults::apis`] takes them) in flight until the gate opens: a test acts while a call is under way.
    pub fn hold(&self, api: &str, n: usize) -> Arc<Gate> {
        let gate = Arc::new(Gate {
            hold: n,
            arrived: AtomicUsize::new(0),
            arrival: Notify::new(),
            open: Semaphore::new(0),
        });
        self.lock().gates.insert(api.to_owned(), gate.clone());
        gate
    }

    /// `user_id` opens the robot's chat and their work notifications: every message they have
    /// there (not recalled) is read now. Answers how many batchSend calls and work-notification
    /// tasks that marks.
    pub fn mark_read(&self, user_id: &str) -> usize {
        let now = self.clock.now_ms();
        let mut g = self.lock();
        let mut marked = g.notices.mark_read(user_id);
        for send in g.oto.values_mut() {
            if !send.recalled && send.user_ids.iter().any(|u| u == user_id) {
                send.read.entry(user_id.to_owned()).or_insert(now);
                marked += 1;
            }
        }
        marked
    }

    pub fn configure(&self, f: impl FnOnce(&mut SimConfig)) {
        f(&mut self.lock().config);
    }

    pub fn config(&self) -> SimConfig {
        self.lock().config.clone()
    }
}

/// See [`SimState::hold`].
pub struct Gate {
    hold: usize,
    arrived: AtomicUsize,
    arrival: Notify,
    open: Semaphore,
}

impl Gate {
    /// Waits until `n` requests reached the gate.
    pub async fn arrived(&self, n: usize) {
        while self.arrived.load(Ordering::SeqCst) < n {
            self.arrival.notified().await;
        }
    }

    /// Lets the held requests (and every later one) through.
    pub fn open(&self) {
        self.open.close();
    }

    async fn pass(&self) {
        if self.arrived.fetch_add(1, Ordering::SeqCst) < self.hold {
            self.arrival.notify_one();
            let _ = self.open.acquire().await; // fails once closed: the gate is open
        }
    }
}

/// A running simulator.
/// A simulator serving on its own port: its state (what it received, its faults) and the
/// server's handle.
pub struct Served<S> {
    pub state: Arc<S>,
    pub port: u16,
    handle: ServerHandle,
}

impl<S> Served<S> {
    fn new(state: Arc<S>, port: u16, handle: ServerHandle) -> Self {
        Self {
            state,
            port,
            handle,
        }
    }

    /// Its base URL, as the DingTalk or bk-user settings take it.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

/// The DingTalk simulator.
pub type Simulator = Served<SimState>;

impl Simulator {
    /// Serves on `listener` (bind 127.0.0.1:0 for a free port) on the current runtime.
    pub fn start(
        listener: TcpListener,
        config: SimConfig,
        clock: SharedClock,
    ) -> std::io::Result<Self> {
        let port = listener.local_addr()?.port();
        let state = SimState::new(config, clock);
        let handle = serve(
            listener,
            2,
            web::Data::from(state.clone()),
            routes::configure,
        )?;
        Ok(Self::new(state, port, handle))
    }
}

/// Serves `routes` with `data` on `listener` on the current runtime (the simulators' servers:
/// no signal handling of their own, stopped with the handle).
pub(crate) fn serve<T: ?Sized + Send + Sync + 'static>(
    listener: TcpListener,
    workers: usize,
    data: web::Data<T>,
    routes: fn(&mut web::ServiceConfig),
) -> std::io::Result<ServerHandle> {
    let server = HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(routes::lose_answers))
            .app_data(data.clone())
            .configure(routes)
    })
    .workers(workers)
    .disable_signals()
    .listen(listener)?
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok(handle)
}

/// The AgentId of the sandbox's app, for `single_chat_mode=work_notice`.
pub const DEMO_AGENT_ID: &str = "3000000001";

/// The sandbox's DingTalk: one app, four people, one signed robot, and a small organisation
/// (Engineering with its Platform team, and Operations; bob is in two departments).
pub fn demo_config() -> SimConfig {
    SimConfig {
        apps: vec![SimApp {
            key: "dingsandboxappkey".into(),
            secret: "sandbox-app-secret-0123456789".into(),
            robot_code: "dingsandboxappkey".into(),
            agent_id: Some(DEMO_AGENT_ID.into()),
        }],
        users: vec![
            SimUser {
                mobile: "13800000001".into(),
                userid: "alice-ding".into(),
            },
            SimUser {
                mobile: "13800000002".into(),
                userid: "bob-ding".into(),
            },
            SimUser {
                mobile: "13800000031".into(),
                userid: "carol-ding".into(),
            },
            SimUser {
                mobile: "13800000041".into(),
                userid: "dave-ding".into(),
            },
        ],
        robots: vec![SimRobot {
            name: "ops-robot".into(),
            token: "5a1d0b3c9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b".into(),
            secret: Some(
                "SEC5a1d0b3c9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b".into(),
            ),
            keyword: None,
        }],
        departments: vec![
            department(2, "Engineering", 1),
            department(3, "Platform", 2),
            department(4, "Operations", 1),
        ],
        members: vec![
            member("alice-ding", "Alice", "13800000001", "alice", &[3]),
            member("bob-ding", "Bob", "13800000002", "bob", &[3, 4]),
            member("carol-ding", "Carol", "13800000031", "carol", &[2]),
            member("dave-ding", "Dave", "13800000041", "dave", &[4]),
        ],
        ..SimConfig::default()
    }
}

fn department(dept_id: i64, name: &str, parent_id: i64) -> SimDepartment {
    SimDepartment {
        dept_id,
        name: name.into(),
        parent_id,
    }
}

fn member(userid: &str, name: &str, mobile: &str, login: &str, departments: &[i64]) -> SimMember {
    SimMember {
        userid: userid.into(),
        name: name.into(),
        mobile: Some(mobile.into()),
        email: Some(format!("{login}@example.com")),
        job_number: None,
        departments: departments.to_vec(),
    }
}
