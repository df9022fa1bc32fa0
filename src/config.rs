//! Layered settings: built-in defaults < TOML file < environment. Every value is parsed here,
//! once, so the rest of the program only sees valid settings; a bad value stops start-up with
//! one line naming the key, where it came from, and what would be accepted.

use crate::clock::Zone;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod gateway;
mod mentions;
mod upstream;
pub use gateway::{GatewaySettings, PublicKey};
pub use mentions::MentionSettings;
pub use upstream::UpstreamSettings;

const DEFAULT_FILE: &str = "ding-channel.toml";

/// DingTalk calls one round may make: a token fetch and the call, and both again when DingTalk
/// refuses the token.
const CALLS_PER_ROUND: u32 = 4;

/// The longest one round of DingTalk calls may take; a send starts only with this much lease
/// left, and a stopping server waits this long for the calls in flight.
pub fn call_round(dingtalk_timeout: Duration) -> Duration {
    dingtalk_timeout * CALLS_PER_ROUND
}

/// Keys of DESIGN.md §2. The TOML file uses the same names in lower case.
const KEYS: &[&str] = &[
    "DING_CHANNEL_BIND",
    "DATABASE_URL",
    "DING_CHANNEL_MANIFEST",
    "DINGTALK_OAPI_BASE",
    "DINGTALK_API_BASE",
    "DINGTALK_PROXY",
    "DING_CHANNEL_WORKERS",
    "DING_CHANNEL_HTTP_WORKERS",
    "DING_CHANNEL_LOG",
    "DING_CHANNEL_LOG_FORMAT",
    "DING_CHANNEL_MAX_BODY",
    "DING_CHANNEL_WEBHOOK_TIMEOUT_MS",
    "DING_CHANNEL_LEASE_S",
    "DING_CHANNEL_DB_POOL",
    "DINGTALK_CONNECT_TIMEOUT_MS",
    "DINGTALK_TIMEOUT_MS",
    "DING_CHANNEL_USERID_TTL_S",
    "DING_CHANNEL_USERID_MISS_TTL_S",
    "DING_CHANNEL_MAX_AGE_S",
    "DING_CHANNEL_MAX_QUEUE",
    "DING_CHANNEL_UTC_OFFSET",
    "DING_CHANNEL_APP_QPS",
    "DING_CHANNEL_APP_QPM",
    "DING_CHANNEL_RETRY_BASE_MS",
    "DING_CHANNEL_RETRY_CAP_S",
    "DING_CHANNEL_IDEMPOTENCY_S",
    "DING_CHANNEL_UPSTREAM_CMSI",
    "DING_CHANNEL_UPSTREAM_TIMEOUT_MS",
    "DING_CHANNEL_APIGW_PUBLIC_KEY",
    "DING_CHANNEL_APIGW_ISSUER",
    "DING_CHANNEL_APIGW_APPS",
    "DING_CHANNEL_BKUSER_URL",
    "DING_CHANNEL_BKUSER_APP_CODE",
    "DING_CHANNEL_BKUSER_APP_SECRET",
    "DING_CHANNEL_BKUSER_SYNC_S",
    "DING_CHANNEL_DINGTALK_SYNC_S",
    "DING_CHANNEL_ALERT_ROUTES",
    "DING_CHANNEL_MENTION_KEYS",
];

/// The settings, by the part of the server they concern. Each is read from one flat key (the
/// environment variable, or the same name in lower case in the TOML file).
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub storage: StorageSettings,
    /// How to reach DingTalk: base URLs, proxy, timeouts.
    pub dingtalk: crate::dingtalk::ClientConfig,
    pub outbox: OutboxSettings,
    pub directory: DirectorySettings,
    /// Where profiles are synced from and unknown usernames looked up; `None` without
    /// `DING_CHANNEL_BKUSER_URL`.
    pub bkuser: Option<BkUserSettings>,
    pub log: LogSettings,
    /// The platform's own CMSI, for what ding-channel does not serve; `None`: not passed on.
    pub upstream: Option<UpstreamSettings>,
    /// The BlueKing API gateway whose `X-Bkapi-JWT` authenticates callers.
    pub gateway: GatewaySettings,
    /// Which alert labels name the people a notification mentions.
    pub mentions: MentionSettings,
}

/// bk-user through the ESB's usermanage components (docs/blueking.md, "bk-user").
#[derive(Debug, Clone)]
pub struct BkUserSettings {
    /// The ESB's base URL; the usermanage paths are added to it.
    pub url: Url,
    /// The app ding-channel calls bk-user as.
    pub app_code: String,
    pub app_secret: crate::domain::secrets::AppSecret,
    /// How often `serve` syncs every profile.
    pub sync_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub bind: SocketAddr,
    /// Threads serving HTTP. The handlers do little on them (database work and deliveries
    /// run elsewhere), so more threads than needed only compete with those.
    pub http_workers: usize,
    pub max_body: usize,
    /// A webhook source (Alertmanager, Grafana) answers within this long however storage
    /// behaves: a 503 in time gets a retry, a late answer gets none.
    pub webhook_timeout: Duration,
    /// `channel_manifest.json`, synced at start.
    pub manifest: PathBuf,
    /// The Alertmanager webhook's routes by label (a TOML file), read at start and on reload.
    pub alert_routes: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub database: DatabaseUrl,
    /// Connections per process.
    pub pool: u32,
}

#[derive(Debug, Clone)]
pub struct OutboxSettings {
    /// Batches delivered at once.
    pub workers: usize,
    /// How long a claim holds unless renewed; at least [`Settings::round_budget`] and a call.
    pub lease: Duration,
    /// A delivery still failing this long after acceptance is failed for good.
    pub max_age: Duration,
    /// Deliveries waiting at most; a send that would queue more is refused (`1306429`).
    pub max_queue: i64,
    /// The first retry's delay, doubled for each attempt after it up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Single-chat calls per second / per minute per DingTalk app key, in this process.
    pub app_qps: u32,
    pub app_qpm: u32,
    /// Where times shown in messages (digests, alert layouts, templates) are read.
    pub zone: Zone,
    /// How long an idempotency key is honoured.
    pub idempotency_window: Duration,
}

#[derive(Debug, Clone)]
pub struct DirectorySettings {
    /// How long a phone → userid answer is trusted.
    pub userid_ttl: Duration,
    /// How long "no DingTalk user has this phone" is trusted.
    pub userid_miss_ttl: Duration,
    /// How often `serve` syncs the directory from DingTalk (`DING_CHANNEL_DINGTALK_SYNC_S`);
    /// `None`: never (the default).
    pub dingtalk_sync: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub filter: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the data lives; the scheme of `DATABASE_URL` picks the backend.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if let Some(path) = raw
            .strip_prefix("sqlite://")
            .or_else(|| raw.strip_prefix("sqlite:"))
        {
            if path.is_empty() || path.contains(":memory:") {
                return Err(format!(
                    "'{raw}' names no database file (use sqlite://PATH, e.g. sqlite://ding-channel.db)"
                ));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return Ok(Self::Postgres(raw.to_owned()));
        }
        let scheme = raw.split_once("://").map_or(raw, |(s, _)| s);
        Err(format!(
            "unknown scheme '{scheme}' (use sqlite://PATH or postgres://USER@HOST:PORT/DB)"
        ))
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// Shown in logs and errors: the PostgreSQL password is masked.
impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            Self::Postgres(url) => f.write_str(&redact_url_password(url)),
        }
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:****@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

pub use reqwest::Url;

/// One bad setting: which key, where it came from, what is wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{key} {source_desc}: {problem}")]
pub struct ConfigError {
    pub key: String,
    source_desc: String,
    problem: String,
}

/// Reads one key: its value (trimmed, or the default), once `check` accepts it.
type Parse<'a> = dyn Fn(&'static str, &str, &dyn Fn(&str) -> Result<(), String>) -> Result<String, ConfigError>
    + 'a;

/// Where a raw value came from, for error messages.
#[derive(Debug, Clone)]
enum Origin {
    Env,
    File(PathBuf),
}

impl Settings {
    /// Loads from the process environment (and the file it points to).
    pub fn load() -> Result<Self, ConfigError> {
        Self::from_env_map(std::env::vars().collect())
    }

    /// Loads with an explicit environment, so tests don't touch the process's.
    pub fn from_env_map(env: BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut raw: BTreeMap<&'static str, (String, Origin)> = BTreeMap::new();

        let (file, explicit) = match env.get("DING_CHANNEL_CONFIG") {
            Some(p) if !p.is_empty() => (PathBuf::from(p), true),
            _ => (PathBuf::from(DEFAULT_FILE), false),
        };
        if explicit || file.exists() {
            for (k, v) in read_file(&file)? {
                raw.insert(k, (v, Origin::File(file.clone())));
            }
        }
        for key in KEYS {
            if let Some(v) = env.get(*key) {
                raw.insert(key, (v.clone(), Origin::Env));
            }
        }
        if !raw.contains_key("DING_CHANNEL_LOG") {
            if let Some(v) = env.get("RUST_LOG") {
                raw.insert("DING_CHANNEL_LOG", (v.clone(), Origin::Env));
            }
        }
        Self::from_raw(&raw)
    }

    fn from_raw(raw: &BTreeMap<&'static str, (String, Origin)>) -> Result<Self, ConfigError> {
        let get = |key: &'static str, default: &str| -> (String, Option<Origin>) {
            raw.get(key).map_or((default.to_owned(), None), |(v, o)| {
                (v.trim().to_owned(), Some(o.clone()))
            })
        };
        let parse = |key: &'static str,
                     default: &str,
                     f: &dyn Fn(&str) -> Result<(), String>|
         -> Result<String, ConfigError> {
            let (v, origin) = get(key, default);
            f(&v).map_err(|problem| ConfigError {
                key: key.to_owned(),
                source_desc: match origin {
                    Some(Origin::Env) => "(environment)".to_owned(),
                    Some(Origin::File(p)) => format!("(in {})", p.display()),
                    None => "(default)".to_owned(),
                },
                problem,
            })?;
            Ok(v)
        };

        let bind = parse("DING_CHANNEL_BIND", "127.0.0.1:8080", &|v| {
            v.parse::<SocketAddr>().map(drop).map_err(|_| {
                format!("'{v}' is not a socket address (use HOST:PORT, e.g. 127.0.0.1:8080)")
            })
        })?;
        let database = parse("DATABASE_URL", "sqlite://ding-channel.db", &|v| {
            DatabaseUrl::parse(v).map(drop)
        })?;
        let manifest = parse("DING_CHANNEL_MANIFEST", "channel_manifest.json", &|v| {
            non_empty(v, "a path to channel_manifest.json")
        })?;
        // Read (and checked) by the Alertmanager source at start: a bad file refuses start.
        let alert_routes = parse("DING_CHANNEL_ALERT_ROUTES", "", &|_| Ok(()))?;
        let oapi = parse("DINGTALK_OAPI_BASE", "https://oapi.dingtalk.com", &|v| {
            http_url(v).map(drop)
        })?;
        let api = parse("DINGTALK_API_BASE", "https://api.dingtalk.com", &|v| {
            http_url(v).map(drop)
        })?;
        let proxy = parse("DINGTALK_PROXY", "", &|v| {
            if v.is_empty() {
                Ok(())
            } else {
                http_url(v).map(drop)
            }
        })?;
        let workers = parse("DING_CHANNEL_WORKERS", "4", &|v| int_in(v, 1, 256))?;
        let half_the_cores = std::thread::available_parallelism()
            .map_or(1, |n| (n.get() / 2).max(1))
            .to_string();
        let http_workers = parse("DING_CHANNEL_HTTP_WORKERS", &half_the_cores, &|v| {
            int_in(v, 1, 256)
        })?;
        let log_filter = parse("DING_CHANNEL_LOG", "info", &|v| {
            tracing_subscriber::EnvFilter::builder()
                .parse(v)
                .map(drop)
                .map_err(|e| {
                    format!("'{v}' is not a log filter ({e}); use e.g. info or ding_channel=debug")
                })
        })?;
        let log_format = parse("DING_CHANNEL_LOG_FORMAT", "text", &|v| match v {
            "text" | "json" => Ok(()),
            _ => Err(format!("'{v}' is not a log format (use text or json)")),
        })?;
        let max_body = parse("DING_CHANNEL_MAX_BODY", "1048576", &|v| {
            int_in(v, 1024, 64 << 20)
        })?;
        // Alertmanager's retries of one notification last about max(group_interval, 10 s).
        let webhook_timeout_ms = parse("DING_CHANNEL_WEBHOOK_TIMEOUT_MS", "5000", &|v| {
            int_in(v, 100, 30_000)
        })?;
        let db_pool = parse("DING_CHANNEL_DB_POOL", "10", &|v| int_in(v, 1, 200))?;
        let connect_ms = parse("DINGTALK_CONNECT_TIMEOUT_MS", "3000", &|v| {
            int_in(v, 100, 60_000)
        })?;
        let timeout_ms = parse("DINGTALK_TIMEOUT_MS", "10000", &|v| int_in(v, 100, 300_000))?;
        // A claim outlives the DingTalk calls made under it: a round of calls starts only with
        // its budget of lease left, and the lease is renewed before it gets that short; the one
        // call timeout more gives the renewal time to land before a send would be refused.
        let lease = parse("DING_CHANNEL_LEASE_S", "60", &|v| {
            int_in(v, 3, 3600)?;
            let timeout = Duration::from_millis(timeout_ms.parse().unwrap_or(0));
            let least = call_round(timeout) + timeout;
            if Duration::from_secs(v.parse().unwrap_or(0)) < least {
                return Err(format!(
                    "'{v}' is shorter than {} × DINGTALK_TIMEOUT_MS ({} s): raise it to at least {} or lower DINGTALK_TIMEOUT_MS",
                    CALLS_PER_ROUND + 1,
                    least.as_secs_f64(),
                    least.as_millis().div_ceil(1000),
                ));
            }
            Ok(())
        })?;
        let userid_ttl = parse("DING_CHANNEL_USERID_TTL_S", "259200", &|v| {
            int_in(v, 0, 90 * 86_400)
        })?;
        let userid_miss_ttl = parse("DING_CHANNEL_USERID_MISS_TTL_S", "3600", &|v| {
            int_in(v, 0, 30 * 86_400)
        })?;
        let dingtalk_sync = parse("DING_CHANNEL_DINGTALK_SYNC_S", "0", &|v| {
            int_in(v, 0, 0)
                .or_else(|_| int_in(v, 60, 7 * 86_400))
                .map_err(|_| {
                    format!("'{v}' is not 0 (off) or a whole number of seconds from 60 to 604800")
                })
        })?;
        let max_age = parse("DING_CHANNEL_MAX_AGE_S", "86400", &|v| {
            int_in(v, 60, 30 * 86_400)
        })?;
        let max_queue = parse("DING_CHANNEL_MAX_QUEUE", "500000", &|v| {
            int_in(v, 1, 100_000_000)
        })?;
        let zone = parse("DING_CHANNEL_UTC_OFFSET", "+08:00", &|v| {
            Zone::parse(v).map(drop)
        })?;
        let app_qps = parse("DING_CHANNEL_APP_QPS", "40", &|v| int_in(v, 1, 10_000))?;
        let app_qpm = parse("DING_CHANNEL_APP_QPM", "1500", &|v| int_in(v, 1, 600_000))?;
        let retry_base_ms = parse("DING_CHANNEL_RETRY_BASE_MS", "2000", &|v| {
            int_in(v, 100, 3_600_000)
        })?;
        let retry_cap = parse("DING_CHANNEL_RETRY_CAP_S", "300", &|v| {
            int_in(v, 1, 86_400)?;
            let base_ms: u64 = retry_base_ms.parse().unwrap_or(0);
            if v.parse::<u64>().unwrap_or(0) * 1000 < base_ms {
                return Err(format!(
                    "'{v}' is shorter than DING_CHANNEL_RETRY_BASE_MS ({base_ms} ms): raise it to at least {} or lower DING_CHANNEL_RETRY_BASE_MS",
                    base_ms.div_ceil(1000)
                ));
            }
            Ok(())
        })?;
        let idempotency = parse("DING_CHANNEL_IDEMPOTENCY_S", "86400", &|v| {
            int_in(v, 60, 30 * 86_400)
        })?;
        let upstream = upstream::read(&parse)?;
        let gateway = gateway::read(&parse)?;
        let mentions = mentions::read(&parse)?;
        let bkuser_url = parse("DING_CHANNEL_BKUSER_URL", "", &|v| {
            if v.is_empty() {
                Ok(())
            } else {
                http_url(v).map(drop)
            }
        })?;
        // Required with a URL, and only then: without one they are not used.
        let url_set = !bkuser_url.is_empty();
        let bkuser_needs = |what: &'static str| {
            move |v: &str| {
                if v.is_empty() && url_set {
                    Err(format!(
                        "is empty, but DING_CHANNEL_BKUSER_URL is set: set it to the {what}, or unset DING_CHANNEL_BKUSER_URL"
                    ))
                } else {
                    Ok(())
                }
            }
        };
        let bkuser_code = parse(
            "DING_CHANNEL_BKUSER_APP_CODE",
            "",
            &bkuser_needs("bk_app_code of the app ding-channel calls bk-user as"),
        )?;
        // Never quoted in an error: only its presence is checked.
        let bkuser_secret = parse(
            "DING_CHANNEL_BKUSER_APP_SECRET",
            "",
            &bkuser_needs("bk_app_secret of that app"),
        )?;
        let bkuser_sync = parse("DING_CHANNEL_BKUSER_SYNC_S", "600", &|v| {
            int_in(v, 10, 7 * 86_400)
        })?;
        let secs = |v: &str| Duration::from_secs(v.parse().expect("validated above"));
        let millis = |v: &str| Duration::from_millis(v.parse().expect("validated above"));

        Ok(Self {
            server: ServerSettings {
                bind: bind.parse().expect("validated above"),
                http_workers: http_workers.parse().expect("validated above"),
                max_body: max_body.parse().expect("validated above"),
                webhook_timeout: millis(&webhook_timeout_ms),
                manifest: PathBuf::from(manifest),
                alert_routes: (!alert_routes.is_empty()).then(|| PathBuf::from(alert_routes)),
            },
            storage: StorageSettings {
                database: DatabaseUrl::parse(&database).expect("validated above"),
                pool: db_pool.parse().expect("validated above"),
            },
            dingtalk: crate::dingtalk::ClientConfig {
                oapi_base: http_url(&oapi).expect("validated above"),
                api_base: http_url(&api).expect("validated above"),
                proxy: (!proxy.is_empty()).then(|| http_url(&proxy).expect("validated above")),
                connect_timeout: millis(&connect_ms),
                timeout: millis(&timeout_ms),
            },
            outbox: OutboxSettings {
                workers: workers.parse().expect("validated above"),
                lease: secs(&lease),
                max_age: secs(&max_age),
                max_queue: max_queue.parse().expect("validated above"),
                retry_base: millis(&retry_base_ms),
                retry_cap: secs(&retry_cap),
                app_qps: app_qps.parse().expect("validated above"),
                app_qpm: app_qpm.parse().expect("validated above"),
                zone: Zone::parse(&zone).expect("validated above"),
                idempotency_window: secs(&idempotency),
            },
            directory: DirectorySettings {
                userid_ttl: secs(&userid_ttl),
                userid_miss_ttl: secs(&userid_miss_ttl),
                dingtalk_sync: Some(secs(&dingtalk_sync)).filter(|d| !d.is_zero()),
            },
            bkuser: (!bkuser_url.is_empty()).then(|| BkUserSettings {
                url: http_url(&bkuser_url).expect("validated above"),
                app_code: bkuser_code,
                app_secret: crate::domain::secrets::AppSecret::new(bkuser_secret),
                sync_interval: secs(&bkuser_sync),
            }),
            log: LogSettings {
                filter: log_filter,
                format: if log_format == "json" {
                    LogFormat::Json
                } else {
                    LogFormat::Text
                },
            },
            upstream,
            gateway,
            mentions,
        })
    }
}

impl Settings {
    /// [`call_round`] of this DingTalk timeout.
    pub fn round_budget(&self) -> Duration {
        call_round(self.dingtalk.timeout)
    }
}

fn read_file(path: &PathBuf) -> Result<Vec<(&'static str, String)>, ConfigError> {
    let err = |problem: String| ConfigError {
        key: "DING_CHANNEL_CONFIG".into(),
        source_desc: format!("({})", path.display()),
        problem,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| err(format!("cannot read the file: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| err(format!("not valid TOML: {}", e.message())))?;
    table
        .into_iter()
        .map(|(k, v)| {
            let key = KEYS
                .iter()
                .find(|key| key.eq_ignore_ascii_case(&k))
                .ok_or_else(|| {
                    err(format!(
                        "unknown key '{k}' (known: {})",
                        KEYS.iter()
                            .map(|k| k.to_ascii_lowercase())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            let value = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(err(format!(
                        "'{k}' must be a string or number, not {}",
                        other.type_str()
                    )))
                }
            };
            Ok((*key, value))
        })
        .collect()
}

fn non_empty(v: &str, what: &str) -> Result<(), String> {
    if v.is_empty() {
        Err(format!("is empty (expected {what})"))
    } else {
        Ok(())
    }
}

fn int_in(v: &str, min: u64, max: u64) -> Result<(), String> {
    match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(()),
        _ => Err(format!("'{v}' is not a whole number from {min} to {max}")),
    }
}

fn http_url(v: &str) -> Result<Url, String> {
    let url = Url::parse(v).map_err(|e| format!("{} is not a URL ({e})", quoted(v)))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        s => Err(format!(
            "{} has scheme '{s}' (use http:// or https://)",
            quoted(v)
        )),
    }
}

/// A URL value for an error: quoted, unless it holds `@`, which may be `user:password@`
/// (whether or not the rest parses).
fn quoted(v: &str) -> String {
    if v.contains('@') {
        "the value (not shown: it holds '@', perhaps user:password@; give the URL without credentials)".to_owned()
    } else {
        format!("'{v}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment `pairs`, with an explicit empty config file (the sections' tests too).
    pub(super) fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // An explicit, empty file: never pick up a ding-channel.toml from the working directory.
        if !m.contains_key("DING_CHANNEL_CONFIG") {
            let file = tempfile::NamedTempFile::new()
                .unwrap()
                .into_temp_path()
                .keep()
                .unwrap();
            m.insert("DING_CHANNEL_CONFIG".into(), file.to_str().unwrap().into());
        }
        m
    }

    #[test]
    fn defaults_apply_without_file_or_env() {
        let s = Settings::from_env_map(env(&[])).unwrap();
        assert_eq!(s.server.bind, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            s.storage.database,
            DatabaseUrl::Sqlite("ding-channel.db".into())
        );
        assert_eq!(s.outbox.workers, 4);
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(s.server.http_workers, (cores / 2).max(1));
        assert_eq!(s.server.max_body, 1 << 20);
        assert_eq!(s.server.webhook_timeout, Duration::from_secs(5));
        assert_eq!(s.log.format, LogFormat::Text);
        assert!(s.dingtalk.proxy.is_none());
        assert_eq!(s.outbox.lease, Duration::from_secs(60));
        assert_eq!(s.outbox.max_queue, 500_000);
        assert_eq!(s.round_budget(), Duration::from_secs(40));
        assert_eq!(s.outbox.retry_base, Duration::from_secs(2));
        assert_eq!(s.outbox.retry_cap, Duration::from_secs(300));
        assert_eq!(s.outbox.idempotency_window, Duration::from_secs(86_400));
    }

    #[test]
    fn a_lease_must_outlast_the_dingtalk_calls_made_under_it() {
        let e = Settings::from_env_map(env(&[("DING_CHANNEL_LEASE_S", "30")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "DING_CHANNEL_LEASE_S (environment): '30' is shorter than 5 × DINGTALK_TIMEOUT_MS (50 s): raise it to at least 50 or lower DINGTALK_TIMEOUT_MS"
        );
        let s = Settings::from_env_map(env(&[
            ("DING_CHANNEL_LEASE_S", "30"),
            ("DINGTALK_TIMEOUT_MS", "5000"),
        ]))
        .unwrap();
        assert_eq!(s.outbox.lease, Duration::from_secs(30));
        assert_eq!(s.round_budget(), Duration::from_secs(20));
        let s = Settings::from_env_map(env(&[
            ("DING_CHANNEL_LEASE_S", "3"),
            ("DINGTALK_TIMEOUT_MS", "600"),
        ]))
        .unwrap();
        assert_eq!(
            s.outbox.lease,
            Duration::from_secs(3),
            "exactly a round and one call"
        );
        let e = Settings::from_env_map(env(&[
            ("DING_CHANNEL_LEASE_S", "3"),
            ("DINGTALK_TIMEOUT_MS", "601"),
        ]))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "DING_CHANNEL_LEASE_S (environment): '3' is shorter than 5 × DINGTALK_TIMEOUT_MS (3.005 s): raise it to at least 4 or lower DINGTALK_TIMEOUT_MS"
        );
    }

    #[test]
    fn retry_and_idempotency_settings_parse_and_name_the_key_and_the_fix() {
        let s = Settings::from_env_map(env(&[
            ("DING_CHANNEL_RETRY_BASE_MS", "500"),
            ("DING_CHANNEL_RETRY_CAP_S", "60"),
            ("DING_CHANNEL_IDEMPOTENCY_S", "3600"),
        ]))
        .unwrap();
        assert_eq!(s.outbox.retry_base, Duration::from_millis(500));
        assert_eq!(s.outbox.retry_cap, Duration::from_secs(60));
        assert_eq!(s.outbox.idempotency_window, Duration::from_secs(3600));

        let err =
            |pairs: &[(&str, &str)]| Settings::from_env_map(env(pairs)).unwrap_err().to_string();
        assert_eq!(
            err(&[("DING_CHANNEL_RETRY_BASE_MS", "2s")]),
            "DING_CHANNEL_RETRY_BASE_MS (environment): '2s' is not a whole number from 100 to 3600000"
        );
        assert_eq!(
            err(&[("DING_CHANNEL_RETRY_CAP_S", "0")]),
            "DING_CHANNEL_RETRY_CAP_S (environment): '0' is not a whole number from 1 to 86400"
        );
        assert_eq!(
            err(&[("DING_CHANNEL_RETRY_BASE_MS", "5500"), ("DING_CHANNEL_RETRY_CAP_S", "5")]),
            "DING_CHANNEL_RETRY_CAP_S (environment): '5' is shorter than DING_CHANNEL_RETRY_BASE_MS (5500 ms): raise it to at least 6 or lower DING_CHANNEL_RETRY_BASE_MS"
        );
        assert_eq!(
            err(&[("DING_CHANNEL_IDEMPOTENCY_S", "1d")]),
            "DING_CHANNEL_IDEMPOTENCY_S (environment): '1d' is not a whole number from 60 to 2592000"
        );
    }

    #[test]
    fn env_overrides_file_and_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "ding_channel_bind = \"0.0.0.0:9000\"\nding_channel_workers = 8\n",
        )
        .unwrap();
        let s = Settings::from_env_map(env(&[
            ("DING_CHANNEL_CONFIG", file.to_str().unwrap()),
            ("DING_CHANNEL_WORKERS", "2"),
            ("DING_CHANNEL_HTTP_WORKERS", "3"),
        ]))
        .unwrap();
        assert_eq!(s.server.bind, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(s.outbox.workers, 2);
        assert_eq!(s.server.http_workers, 3);
    }

    #[test]
    fn bad_values_name_the_key_and_the_fix() {
        let e = Settings::from_env_map(env(&[("DING_CHANNEL_BIND", "nonsense")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "DING_CHANNEL_BIND (environment): 'nonsense' is not a socket address (use HOST:PORT, e.g. 127.0.0.1:8080)"
        );
        let e = Settings::from_env_map(env(&[("DATABASE_URL", "mysql://x/y")])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("DATABASE_URL (environment): unknown scheme 'mysql'"),
            "{e}"
        );
        let e = Settings::from_env_map(env(&[("DINGTALK_PROXY", "socks9://p:1")])).unwrap_err();
        assert!(e.to_string().contains("scheme 'socks9'"), "{e}");
        let e = Settings::from_env_map(env(&[("DING_CHANNEL_WEBHOOK_TIMEOUT_MS", "60000")]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "DING_CHANNEL_WEBHOOK_TIMEOUT_MS (environment): '60000' is not a whole number from 100 to 30000"
        );
    }

    #[test]
    fn unknown_file_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "ding_chanel_bind = \"x\"\n").unwrap();
        let e = Settings::from_env_map(env(&[("DING_CHANNEL_CONFIG", file.to_str().unwrap())]))
            .unwrap_err();
        assert!(
            e.to_string().contains("unknown key 'ding_chanel_bind'"),
            "{e}"
        );
    }

    #[test]
    fn bkuser_settings_need_the_app_only_with_a_url_and_never_show_the_secret() {
        let s = Settings::from_env_map(env(&[])).unwrap();
        assert!(s.bkuser.is_none());
        let err =
            |pairs: &[(&str, &str)]| Settings::from_env_map(env(pairs)).unwrap_err().to_string();
        assert_eq!(
            err(&[("DING_CHANNEL_BKUSER_URL", "http://esb.example.com")]),
            "DING_CHANNEL_BKUSER_APP_CODE (default): is empty, but DING_CHANNEL_BKUSER_URL is set: set it to the bk_app_code of the app ding-channel calls bk-user as, or unset DING_CHANNEL_BKUSER_URL"
        );
        assert_eq!(
            err(&[("DING_CHANNEL_BKUSER_URL", "esb.example.com")]),
            "DING_CHANNEL_BKUSER_URL (environment): 'esb.example.com' is not a URL (relative URL without a base)"
        );
        let full = [
            ("DING_CHANNEL_BKUSER_URL", "http://esb.example.com"),
            ("DING_CHANNEL_BKUSER_APP_CODE", "ding-channel"),
            ("DING_CHANNEL_BKUSER_APP_SECRET", "s3cret-value"),
        ];
        let s = Settings::from_env_map(env(&full)).unwrap();
        let b = s.bkuser.as_ref().unwrap();
        assert_eq!(
            (b.app_code.as_str(), b.sync_interval),
            ("ding-channel", Duration::from_secs(600))
        );
        assert_eq!(b.app_secret.expose(), "s3cret-value");
        assert!(!format!("{s:?}").contains("s3cret-value"));
        let mut short = full.to_vec();
        short.push(("DING_CHANNEL_BKUSER_SYNC_S", "5"));
        assert_eq!(
            err(&short),
            "DING_CHANNEL_BKUSER_SYNC_S (environment): '5' is not a whole number from 10 to 604800"
        );
    }

    #[test]
    fn the_dingtalk_directory_sync_is_off_unless_an_interval_is_set() {
        let sync = |v: &str| {
            Settings::from_env_map(env(&[("DING_CHANNEL_DINGTALK_SYNC_S", v)]))
                .map(|s| s.directory.dingtalk_sync)
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            Settings::from_env_map(env(&[]))
                .unwrap()
                .directory
                .dingtalk_sync,
            None
        );
        assert_eq!(sync("0"), Ok(None));
        assert_eq!(sync("3600"), Ok(Some(Duration::from_secs(3600))));
        assert_eq!(
            sync("30").unwrap_err(),
            "DING_CHANNEL_DINGTALK_SYNC_S (environment): '30' is not 0 (off) or a whole number of seconds from 60 to 604800"
        );
        assert!(sync("hourly").is_err());
    }

    #[test]
    fn time_zone_is_an_offset_or_an_iana_name() {
        let zone = |v: &str| {
            Settings::from_env_map(env(&[("DING_CHANNEL_UTC_OFFSET", v)]))
                .unwrap()
                .outbox
                .zone
        };
        assert_eq!(zone("+08:00"), Zone::parse("+08:00").unwrap());
        assert_eq!(zone("Asia/Shanghai"), Zone::parse("Asia/Shanghai").unwrap());
        assert_eq!(
            Settings::from_env_map(env(&[("DING_CHANNEL_UTC_OFFSET", "Asia/Shanghia")]))
                .unwrap_err()
                .to_string(),
            "DING_CHANNEL_UTC_OFFSET (environment): 'Asia/Shanghia' is neither a UTC offset nor a known time zone (use +08:00 or an IANA name such as Asia/Shanghai)"
        );
    }

    #[test]
    fn postgres_password_is_masked_in_display() {
        let u = DatabaseUrl::parse("postgres://app:hunter2@db:5432/x").unwrap();
        assert_eq!(u.to_string(), "postgres://app:****@db:5432/x");
        let u = DatabaseUrl::parse("postgres://postgres@127.0.0.1:5432/test").unwrap();
        assert_eq!(u.to_string(), "postgres://postgres@127.0.0.1:5432/test");
    }
}
