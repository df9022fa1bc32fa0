//! A strict bk-user stand-in, as BlueKing's ESB exposes its usermanage API
//! (`/api/c/compapi/v2/usermanage/list_users/` and `retrieve_user/`; docs/blueking.md,
//! "bk-user"). It checks the app's credentials, the parameters bk-user checks (known
//! `fields`, whole-number `page` / `page_size`, a page within range), lowers a `page_size`
//! above its cap to the cap as bk-user's paginator does, orders by `ordering` as its list view
//! does, records every request (without the secret), and fails chosen pages or removes a
//! profile between two pages on demand.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, MutexGuard};

pub const LIST_USERS: &str = "/api/c/compapi/v2/usermanage/list_users/";
pub const RETRIEVE_USER: &str = "/api/c/compapi/v2/usermanage/retrieve_user/";

/// The profile fields bk-user's `fields` parameter may name (its model's fields).
const KNOWN_FIELDS: &[&str] = &[
    "id",
    "username",
    "display_name",
    "email",
    "telephone",
    "country_code",
    "iso_code",
    "wx_userid",
    "wx_openid",
    "qq",
    "extras",
    "status",
    "staff_status",
    "enabled",
    "domain",
    "category_id",
    "position",
    "time_zone",
    "language",
    "logo",
    "create_time",
    "update_time",
    "departments",
    "leader",
];

/// What bk-user's paginator uses when the caller names no `page_size`.
const DEFAULT_PAGE_SIZE: usize = 50;

#[derive(Debug, Clone)]
pub struct BkUserConfig {
    pub app_code: String,
    pub app_secret: String,
    /// bk-user's `MAX_PAGE_SIZE`.
    pub max_page_size: usize,
    /// Profiles as bk-user stores them, in `id` order; served as they are (not validated), so
    /// a test can serve a bad one. `enabled: false` is a soft-deleted profile.
    pub users: Vec<Map<String, Value>>,
}

/// One request the simulator answered, its query without `bk_app_secret`.
#[derive(Debug, Clone)]
pub struct BkUserRequest {
    /// `list_users` or `retrieve_user`.
    pub api: &'static str,
    pub query: BTreeMap<String, String>,
}

struct Inner {
    config: BkUserConfig,
    requests: Vec<BkUserRequest>,
    /// list_users pages answered with HTTP 503 until healed.
    failing_pages: HashSet<u64>,
    /// Page → the username removed right after that list_users page is answered.
    removals: HashMap<u64, String>,
    /// list_users requests are held unanswered until healed (a bk-user that hangs).
    stalled: bool,
}

pub struct BkUserState {
    inner: Mutex<Inner>,
    /// Wakes the requests held by [`BkUserState::stall`].
    unstalled: tokio::sync::Notify,
}

impl BkUserState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn requests(&self) -> Vec<BkUserRequest> {
        self.lock().requests.clone()
    }

    pub fn configure(&self, f: impl FnOnce(&mut BkUserConfig)) {
        f(&mut self.lock().config);
    }

    /// list_users asked for `page` answers HTTP 503 from now on (until [`Self::heal`]).
    pub fn fail_page(&self, page: u64) {
        self.lock().failing_pages.insert(page);
    }

    /// list_users answers nothing from now on (until [`Self::heal`]): a hung bk-user.
    pub fn stall(&self) {
        self.lock().stalled = true;
    }

    pub fn heal(&self) {
        let mut g = self.lock();
        g.failing_pages.clear();
        g.stalled = false;
        self.unstalled.notify_waiters();
    }

    async fn unstalled(&self) {
        loop {
            // Made before the check, so a heal between the two still wakes it.
            let woken = self.unstalled.notified();
            if !self.lock().stalled {
                return;
            }
            woken.await;
        }
    }

    /// Right after answering list_users page `page`, `username` leaves bk-user (once): as
    /// when someone is deleted in the middle of a sync.
    pub fn remove_after_page(&self, page: u64, username: &str) {
        self.lock().removals.insert(page, username.to_owned());
    }
}

/// The sandbox's bk-user: people the sandbox does not seed, so a send to them shows the sync
/// that `serve` runs at start, and one who has left, so it shows the refusal. Their phones are in the
/// DingTalk simulator's demo set.
pub fn demo_bkuser() -> BkUserConfig {
    let person = |id: u64, username: &str, telephone: &str, staff_status: &str| {
        let p = serde_json::json!({
            "id": id, "username": username, "display_name": username, "telephone": telephone,
            "country_code": "86", "email": format!("{username}@example.com"), "wx_userid": "",
            "qq": "", "extras": {}, "status": "NORMAL", "staff_status": staff_status,
            "enabled": true, "departments": [], "iso_code": "CN"
        });
        p.as_object().expect("an object").clone()
    };
    BkUserConfig {
        app_code: DEMO_APP.into(),
        app_secret: DEMO_SECRET.into(),
        max_page_size: 100,
        users: vec![
            person(1, "carol", "13800000031", "IN"),
            person(2, "dave", "13800000041", "OUT"),
        ],
    }
}

/// The app the sandbox calls its bk-user as (public: a demo's, like `demo`/`demo-secret`).
pub const DEMO_APP: &str = "ding-channel-sandbox";
pub const DEMO_SECRET: &str = "sandbox-bkuser-secret-0123456789";

/// The bk-user simulator.
pub type BkUserSimulator = super::Served<BkUserState>;

impl BkUserSimulator {
    /// Serves on `listener` (bind 127.0.0.1:0 for a free port) on the current runtime.
    pub fn start(listener: TcpListener, config: BkUserConfig) -> std::io::Result<Self> {
        let port = listener.local_addr()?.port();
        let state = Arc::new(BkUserState {
            inner: Mutex::new(Inner {
                config,
                requests: vec![],
                failing_pages: HashSet::new(),
                removals: HashMap::new(),
                stalled: false,
            }),
            unstalled: tokio::sync::Notify::new(),
        });
        let handle = super::serve(listener, 1, web::Data::from(state.clone()), routes)?;
        Ok(Self::new(state, port, handle))
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(LIST_USERS, web::get().to(list_users))
        .route(RETRIEVE_USER, web::get().to(retrieve_user));
}

type Query = web::Query<HashMap<String, String>>;

/// The ESB's envelope.
fn answer(data: Value) -> HttpResponse {
    HttpResponse::Ok().json(
        json!({"result": true, "code": 0, "message": "Success", "data": data, "request_id": "sim"}),
    )
}

/// A `result: false` answer.
struct Refusal(i64, String);

fn refuse(code: i64, message: String) -> Refusal {
    Refusal(code, message)
}

impl Refusal {
    fn respond(self) -> HttpResponse {
        let Refusal(code, message) = self;
        HttpResponse::Ok().json(
            json!({"result": false, "code": code, "message": message, "data": null, "request_id": "sim"}),
        )
    }
}

/// The ESB's app check: `X-Bkapi-Authorization` (a JSON object) or the query's
/// `bk_app_code` / `bk_app_secret`.
fn authenticate(req: &HttpRequest, q: &HashMap<String, String>, config: &BkUserConfig) -> bool {
    let header: Option<Map<String, Value>> = req
        .headers()
        .get("X-Bkapi-Authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| serde_json::from_str(h).ok());
    let (code, secret) = match &header {
        Some(h) => (
            h.get("bk_app_code").and_then(Value::as_str),
            h.get("bk_app_secret").and_then(Value::as_str),
        ),
        None => (
            q.get("bk_app_code").map(String::as_str),
            q.get("bk_app_secret").map(String::as_str),
        ),
    };
    code == Some(config.app_code.as_str()) && secret == Some(config.app_secret.as_str())
}

/// Records the request; answers for it when the app is not the configured one.
fn admit(
    state: &BkUserState,
    api: &'static str,
    req: &HttpRequest,
    q: &HashMap<String, String>,
) -> Result<BkUserConfig, Refusal> {
    let mut g = state.lock();
    let query = q
        .iter()
        .filter(|(k, _)| k.as_str() != "bk_app_secret")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    g.requests.push(BkUserRequest { api, query });
    if !authenticate(req, q, &g.config) {
        return Err(refuse(
            1306401,
            "App authentication failed: bk_app_code or bk_app_secret is wrong".into(),
        ));
    }
    Ok(g.config.clone())
}

fn list_param(q: &HashMap<String, String>, name: &str) -> Vec<String> {
    q.get(name)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn whole(q: &HashMap<String, String>, name: &str) -> Result<Option<usize>, Refusal> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(refuse(
                1640001,
                format!("{name}: '{v}' is not a whole number of at least 1"),
            )),
        },
    }
}

fn truthy(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name)
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

fn fields(q: &HashMap<String, String>) -> Result<Vec<String>, Refusal> {
    let fields = list_param(q, "fields");
    let unknown: Vec<&str> = fields
        .iter()
        .map(String::as_str)
        .filter(|f| !KNOWN_FIELDS.contains(f))
        .collect();
    if unknown.is_empty() {
        Ok(fields)
    } else {
        Err(refuse(
            1640001,
            format!("fields not supported yet: {}", unknown.join(",")),
        ))
    }
}

fn shown(user: &Map<String, Value>, fields: &[String]) -> Value {
    if fields.is_empty() {
        return Value::Object(user.clone());
    }
    Value::Object(
        user.iter()
            .filter(|(k, _)| fields.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

fn matches(user: &Map<String, Value>, field: &str, wanted: &str) -> bool {
    match user.get(field) {
        Some(Value::String(s)) => s == wanted,
        Some(Value::Number(n)) => n.to_string() == wanted,
        _ => false,
    }
}

fn enabled(user: &Map<String, Value>) -> bool {
    user.get("enabled").and_then(Value::as_bool).unwrap_or(true)
}

async fn list_users(state: web::Data<BkUserState>, req: HttpRequest, q: Query) -> HttpResponse {
    let config = match admit(&state, "list_users", &req, &q) {
        Ok(c) => c,
        Err(r) => return r.respond(),
    };
    state.unstalled().await;
    let (fields, page, page_size) = match (fields(&q), whole(&q, "page"), whole(&q, "page_size")) {
        (Ok(f), Ok(p), Ok(s)) => (f, p.unwrap_or(1), s),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r.respond(),
    };
    let lookup_field = q.get("lookup_field").map_or("username", String::as_str);
    let exact = list_param(&q, "exact_lookups");
    let fuzzy = list_param(&q, "fuzzy_lookups");
    let include_disabled = truthy(&q, "include_disabled");
    let mut hits: Vec<&Map<String, Value>> = config
        .users
        .iter()
        .filter(|u| include_disabled || enabled(u))
        .filter(|u| {
            if !exact.is_empty() {
                exact.iter().any(|w| matches(u, lookup_field, w))
            } else if !fuzzy.is_empty() {
                let text = u.get(lookup_field).and_then(Value::as_str).unwrap_or("");
                fuzzy.iter().any(|w| text.contains(w.as_str()))
            } else {
                true
            }
        })
        .collect();
    order(&mut hits, q.get("ordering").map(String::as_str));
    if truthy(&q, "no_page") {
        return answer(hits.iter().map(|u| shown(u, &fields)).collect());
    }
    if state.lock().failing_pages.contains(&(page as u64)) {
        return HttpResponse::ServiceUnavailable().body("injected fault");
    }
    let size = page_size
        .unwrap_or(DEFAULT_PAGE_SIZE)
        .min(config.max_page_size);
    let pages = hits.len().div_ceil(size).max(1);
    if page > pages {
        return refuse(
            1640001,
            format!("page: {page} is beyond the last page ({pages})"),
        )
        .respond();
    }
    let results: Vec<Value> = hits
        .iter()
        .skip((page - 1) * size)
        .take(size)
        .map(|u| shown(u, &fields))
        .collect();
    let count = hits.len();
    let mut g = state.lock();
    if let Some(gone) = g.removals.remove(&(page as u64)) {
        g.config
            .users
            .retain(|u| u.get("username").and_then(Value::as_str) != Some(&gone));
    }
    answer(json!({"count": count, "results": results}))
}

/// DRF's `OrderingFilter`: `field` or `-field`, comma-separated; a field the model does not
/// have is ignored, as is no `ordering` at all (the stored order stays).
fn order(hits: &mut [&Map<String, Value>], ordering: Option<&str>) {
    let keys: Vec<(&str, bool)> = ordering
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .map(|k| match k.strip_prefix('-') {
            Some(k) => (k, true),
            None => (k, false),
        })
        .filter(|(k, _)| KNOWN_FIELDS.contains(k))
        .collect();
    let value = |u: &Map<String, Value>, k: &str| match u.get(k) {
        Some(Value::Number(n)) => (n.as_f64().unwrap_or(0.0), String::new()),
        Some(Value::String(s)) => (0.0, s.clone()),
        _ => (0.0, String::new()),
    };
    hits.sort_by(|a, b| {
        keys.iter()
            .map(|(k, desc)| {
                let o = value(a, k)
                    .partial_cmp(&value(b, k))
                    .unwrap_or(std::cmp::Ordering::Equal);
                if *desc {
                    o.reverse()
                } else {
                    o
                }
            })
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
}

async fn retrieve_user(state: web::Data<BkUserState>, req: HttpRequest, q: Query) -> HttpResponse {
    let config = match admit(&state, "retrieve_user", &req, &q) {
        Ok(c) => c,
        Err(r) => return r.respond(),
    };
    let fields = match fields(&q) {
        Ok(f) => f,
        Err(r) => return r.respond(),
    };
    let Some(id) = q.get("id") else {
        return refuse(1640001, "id: is required".into()).respond();
    };
    let lookup_field = q.get("lookup_field").map_or("username", String::as_str);
    if !matches!(lookup_field, "username" | "id") {
        return refuse(
            1640001,
            format!("lookup_field: '{lookup_field}' is not username or id"),
        )
        .respond();
    }
    match config
        .users
        .iter()
        .find(|u| enabled(u) && matches(u, lookup_field, id))
    {
        Some(u) => answer(shown(u, &fields)),
        None => refuse(1640001, format!("profile {id} does not exist")).respond(),
    }
}
