//! Routing by label (`DING_CHANNEL_ALERT_ROUTES`): an ordered list of routes, each with
//! Alertmanager's label matchers, its receivers, an optional template and `continue` /
//! `send_resolved`. A notification's alerts are split into dispatches, one per (receivers,
//! template), each a notification of its own with its own dedup key. The path's receivers are
//! the default route: they get the alerts no route matches.
//!
//! The routes are read at start (a bad file refuses start), and again on SIGHUP and
//! `POST /-/reload`; a bad file then keeps the routes loaded before.

use super::payload::{Alert, Labels, Notification, Status};
use crate::domain::username::Username;
use crate::sources::esb::args::MAX_RECEIVERS;
use crate::sources::grafana::payload::GrafanaNotification;
use actix_web::http::StatusCode;
use regex::Regex;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use toml::Spanned;

/// The key naming the routes file, for error messages.
pub const KEY: &str = "DING_CHANNEL_ALERT_ROUTES";

/// One label matcher, as Alertmanager's `matchers` write it: `name="value"`, `!=`, `=~`, `!~`.
#[derive(Debug, Clone)]
pub struct Matcher {
    name: String,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Equal(String),
    NotEqual(String),
    Matches(Regex),
    NotMatches(Regex),
}

impl Matcher {
    /// Alertmanager's classic syntax: a label name, the operator, and the value, bare or in
    /// double quotes (with `\"`, `\\` and `\n` escaped), spaces around each ignored.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let name_end = s
            .char_indices()
            .find(|&(i, c)| {
                !(c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
            })
            .map_or(s.len(), |(i, _)| i);
        let name = &s[..name_end];
        if name.is_empty() {
            return Err(format!(
                "'{s}' does not start with a label name; write e.g. severity=\"critical\""
            ));
        }
        let rest = s[name_end..].trim_start();
        let (op, raw) = ["=~", "!~", "!=", "="]
            .iter()
            .find_map(|op| rest.strip_prefix(op).map(|raw| (*op, raw.trim())))
            .ok_or_else(|| format!("'{s}' has no operator after '{name}'; use =, !=, =~ or !~"))?;
        let value = unquote(raw).map_err(|why| format!("'{s}': {why}"))?;
        let op = match op {
            "=" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            regex_op => {
                // Anchored as Alertmanager anchors it: the whole value must match.
                let re = Regex::new(&format!("^(?:{value})$")).map_err(|e| {
                    let why = e.to_string();
                    let why = why.lines().last().unwrap_or_default().trim();
                    format!("'{s}': the regular expression '{value}' is invalid ({why})")
                })?;
                if regex_op == "=~" {
                    Op::Matches(re)
                } else {
                    Op::NotMatches(re)
                }
            }
        };
        Ok(Self {
            name: name.to_owned(),
            op,
        })
    }

    /// A label the alert does not carry matches as the empty value, as in Alertmanager.
    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.name).map_or("", String::as_str);
        match &self.op {
            Op::Equal(want) => v == want,
            Op::NotEqual(want) => v != want,
            Op::Matches(re) => re.is_match(v),
            Op::NotMatches(re) => !re.is_match(v),
        }
    }
}

/// A matcher's value: bare or in double quotes, OpenMetrics escapes undone.
fn unquote(raw: &str) -> Result<String, String> {
    let (body, quoted) = match raw.strip_prefix('"') {
        Some(rest) => (
            rest.strip_suffix('"')
                .filter(|b| !b.ends_with('\\') || b.ends_with("\\\\"))
                .ok_or("the value's closing double quote is missing")?,
            true,
        ),
        None => (raw, false),
    };
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some('n') => {
                    out.push('\n');
                    chars.next();
                }
                Some(&e @ ('"' | '\\')) => {
                    out.push(e);
                    chars.next();
                }
                // A lone backslash is itself, as in Alertmanager (regexes keep their `\d`).
                _ => out.push('\\'),
            },
            '"' => {
                return Err(if quoted {
                    "a double quote inside the value must be written \\\"; write one matcher per entry".into()
                } else {
                    "an unquoted value holds a double quote; quote the whole value".into()
                });
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// One route of the file.
#[derive(Debug, Clone)]
struct AlertRoute {
    matchers: Vec<Matcher>,
    receivers: Vec<Username>,
    template: Option<String>,
    /// Matching goes on with the next route after this one matched.
    keep_matching: bool,
    send_resolved: bool,
}

impl AlertRoute {
    fn matches(&self, labels: &Labels) -> bool {
        self.matchers.iter().all(|m| m.matches(labels))
    }
}

/// The routes of one file, in its order.
#[derive(Debug, Clone, Default)]
pub struct AlertRoutes {
    routes: Vec<AlertRoute>,
}

/// The file as written, with where each value is so an error can name its line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default)]
    matchers: Vec<Spanned<String>>,
    #[serde(default)]
    receivers: Vec<Spanned<String>>,
    template: Option<Spanned<String>>,
    #[serde(default, rename = "continue")]
    keep_matching: bool,
    #[serde(default = "yes")]
    send_resolved: bool,
}

fn yes() -> bool {
    true
}

/// Why a routes file is not taken: the file, the line (when known) and what to change.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutesError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub problem: String,
}

impl std::fmt::Display for RoutesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{KEY} {}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for RoutesError {}

impl AlertRoutes {
    /// Reads `text` (the file's content). An error carries the 1-based line it is on.
    pub fn parse(text: &str) -> Result<Self, (Option<usize>, String)> {
        let line = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            (
                e.span().map(|s| line(s.start)),
                format!(
                    "{}; each route is a [[route]] table with matchers, receivers, and optionally template, continue and send_resolved",
                    e.message().trim_end()
                ),
            )
        })?;
        let routes = raw
            .route
            .into_iter()
            .map(|r| {
                let at = line(r.span().start);
                let r = r.into_inner();
                let matchers = r
                    .matchers
                    .iter()
                    .map(|m| {
                        Matcher::parse(m.get_ref()).map_err(|why| (Some(line(m.span().start)), why))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let mut receivers: Vec<Username> = Vec::new();
                for name in &r.receivers {
                    let u = Username::parse(name.get_ref().trim()).map_err(|p| {
                        (
                            Some(line(name.span().start)),
                            format!("receiver '{}' {p}", name.get_ref()),
                        )
                    })?;
                    if !receivers.contains(&u) {
                        receivers.push(u);
                    }
                }
                if receivers.is_empty() {
                    return Err((
                        Some(at),
                        "the route has no receivers; add receivers = [\"ops-robot\"] (usernames, as in the webhook's path)".into(),
                    ));
                }
                if receivers.len() > MAX_RECEIVERS {
                    return Err((
                        Some(at),
                        format!(
                            "the route names {} receivers; at most {MAX_RECEIVERS}",
                            receivers.len()
                        ),
                    ));
                }
                let template = match r.template {
                    Some(t) if t.get_ref().trim().is_empty() => {
                        return Err((
                            Some(line(t.span().start)),
                            "template is empty; name a template or leave the key out".into(),
                        ))
                    }
                    t => t.map(|t| t.into_inner().trim().to_owned()),
                };
                Ok(AlertRoute {
                    matchers,
                    receivers,
                    template,
                    keep_matching: r.keep_matching,
                    send_resolved: r.send_resolved,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { routes })
    }

    /// Reads and parses `file`.
    pub fn read(file: &Path) -> Result<Self, RoutesError> {
        let fail = |line, problem| RoutesError {
            file: file.to_owned(),
            line,
            problem,
        };
        let text = std::fs::read_to_string(file).map_err(|e| {
            fail(
                None,
                format!("cannot be read ({e}); fix the path or unset {KEY}"),
            )
        })?;
        Self::parse(&text).map_err(|(line, problem)| fail(line, problem))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The routes every request reads, swapped whole on reload.
pub struct RouteTable {
    file: Option<PathBuf>,
    current: RwLock<Arc<AlertRoutes>>,
}

/// Why a reload did not happen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReloadError {
    #[error("no routes file is configured; set DING_CHANNEL_ALERT_ROUTES to a TOML file of [[route]] tables and restart")]
    NotConfigured,
    #[error(transparent)]
    Invalid(#[from] RoutesError),
}

impl RouteTable {
    /// The routes of `file`, or none without one: at start, where a bad file refuses start.
    pub fn load(file: Option<PathBuf>) -> Result<Self, RoutesError> {
        let routes = match &file {
            Some(f) => AlertRoutes::read(f)?,
            None => AlertRoutes::default(),
        };
        if let Some(f) = &file {
            tracing::info!(file = %f.display(), routes = routes.len(), "alert routes loaded");
        }
        Ok(Self {
            file,
            current: RwLock::new(Arc::new(routes)),
        })
    }

    /// Whether a routes file is configured (its routes may be none until it is fixed).
    pub fn configured(&self) -> bool {
        self.file.is_some()
    }

    pub fn current(&self) -> Arc<AlertRoutes> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the file again; a bad one keeps the routes loaded before. `by` says what asked
    /// (the log tells which).
    pub fn reload(&self, by: &str) -> Result<usize, ReloadError> {
        let Some(file) = &self.file else {
            tracing::warn!(
                by,
                "alert routes not reloaded: {}",
                ReloadError::NotConfigured
            );
            return Err(ReloadError::NotConfigured);
        };
        match AlertRoutes::read(file) {
            Ok(routes) => {
                let n = routes.len();
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(routes);
                tracing::info!(by, file = %file.display(), routes = n, "alert routes reloaded");
                Ok(n)
            }
            Err(e) => {
                tracing::warn!(
                    by,
                    error = %e,
                    kept = self.current().len(),
                    "alert routes not reloaded; the routes loaded before stay in force"
                );
                Err(e.into())
            }
        }
    }

    /// Reloads on every SIGHUP, as Alertmanager does, for the process's life.
    #[cfg(unix)]
    pub async fn reload_on_hangup(self: Arc<Self>) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload the alert routes with POST /-/reload");
                return;
            }
        };
        while hup.recv().await.is_some() {
            let _ = self.reload("SIGHUP");
        }
    }
}

/// Alerts of one notification going to the same receivers with the same template.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatch {
    pub receivers: Vec<Username>,
    /// The template the route names; `None`: the built-in layout.
    pub template: Option<String>,
    /// The alerts of this dispatch, with what depends on them (status, common labels).
    pub notification: Notification,
    /// Tells this dispatch's dedup key from the others'; `None` for the path's receivers.
    identity: Option<String>,
}

impl Dispatch {
    /// The whole notification to `receivers`: what a webhook without routes sends.
    pub fn whole(notification: Notification, receivers: Vec<Username>) -> Self {
        Self {
            receivers,
            template: None,
            notification,
            identity: None,
        }
    }

    /// The notification's key over this dispatch's alerts, and the route's identity, so a
    /// copy of the notification (HA pair, retry) is still sent once per dispatch.
    pub fn dedup_key(&self, now_ms: i64) -> String {
        let key = super::dedup_key(&self.notification, now_ms);
        match &self.identity {
            None => key,
            Some(id) => {
                let h = Sha256::digest(id.as_bytes());
                let hex: String = h[..8].iter().map(|b| format!("{b:02x}")).collect();
                format!("{key}:{hex}")
            }
        }
    }
}

/// A notification split by the routes.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub dispatches: Vec<Dispatch>,
    /// Alerts no route matched, when the path names no receivers.
    pub not_routed: Vec<Alert>,
}

/// Per alert, the first route that matches, and the routes after it while they `continue`;
/// none matching, the path's receivers (`path`, possibly empty). A route with
/// `send_resolved = false` takes its resolved alerts and sends nothing of them.
pub fn split(routes: &AlertRoutes, n: &Notification, path: &[Username]) -> Split {
    let default_key = group_key(path, &None);
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut not_routed = Vec::new();
    for (i, alert) in n.alerts.iter().enumerate() {
        let mut matched = false;
        for route in routes.routes.iter().filter(|r| r.matches(&alert.labels)) {
            matched = true;
            if alert.status == Status::Firing || route.send_resolved {
                add(&mut groups, &route.receivers, &route.template, i);
            }
            if !route.keep_matching {
                break;
            }
        }
        if !matched {
            if path.is_empty() {
                not_routed.push(alert.clone());
            } else {
                add(&mut groups, path, &None, i);
            }
        }
    }
    let dispatches = groups
        .into_iter()
        .map(|g| {
            let identity = (g.key != default_key).then(|| {
                let names: Vec<&str> = g.key.0.iter().map(String::as_str).collect();
                format!("{}\0{}", names.join(","), g.key.1.as_deref().unwrap_or(""))
            });
            Dispatch {
                receivers: g.receivers.to_vec(),
                template: g.key.1.clone(),
                notification: subset(n, &g.alerts),
                identity,
            }
        })
        .collect();
    Split {
        dispatches,
        not_routed,
    }
}

/// What makes two routes one dispatch: the same receivers (in any order), the same template.
type GroupKey = (BTreeSet<String>, Option<String>);

fn group_key(receivers: &[Username], template: &Option<String>) -> GroupKey {
    (
        receivers.iter().map(ToString::to_string).collect(),
        template.clone(),
    )
}

/// The alerts (indices, in the notification's order) going one way.
struct Group<'a> {
    key: GroupKey,
    receivers: &'a [Username],
    alerts: Vec<usize>,
}

fn add<'a>(
    groups: &mut Vec<Group<'a>>,
    receivers: &'a [Username],
    template: &Option<String>,
    alert: usize,
) {
    let key = group_key(receivers, template);
    match groups.iter_mut().find(|g| g.key == key) {
        // Reached again through another route of the same group: once.
        Some(g) if g.alerts.last() == Some(&alert) => {}
        Some(g) => g.alerts.push(alert),
        None => groups.push(Group {
            key,
            receivers,
            alerts: vec![alert],
        }),
    }
}

/// The notification with only the alerts at `indices`: its status and common labels and
/// annotations recomputed as Alertmanager computes them for a group. The truncated alerts
/// were never sent, so no route can be told for them: every dispatch mentions them.
fn subset(n: &Notification, indices: &[usize]) -> Notification {
    if indices.len() == n.alerts.len() {
        return n.clone();
    }
    let alerts: Vec<Alert> = indices.iter().map(|&i| n.alerts[i].clone()).collect();
    let common = |pick: fn(&Alert) -> &Labels| -> Labels {
        let mut out = pick(&alerts[0]).clone();
        for a in &alerts[1..] {
            out.retain(|k, v| pick(a).get(k) == Some(v));
        }
        out
    };
    let status = if alerts.iter().any(|a| a.status == Status::Firing) {
        Status::Firing
    } else {
        Status::Resolved
    };
    // Grafana's title and message were written for all the alerts: the layout's own title
    // (counted over this subset) takes their place.
    let grafana = n.grafana.clone().map(|g| GrafanaNotification {
        title: String::new(),
        message: String::new(),
        state: match status {
            Status::Firing => "alerting",
            Status::Resolved => "ok",
        }
        .into(),
        ..g
    });
    Notification {
        status,
        common_labels: common(|a| &a.labels),
        common_annotations: common(|a| &a.annotations),
        alerts,
        grafana,
        ..n.clone()
    }
}

/// The answer to a split notification: one dispatch's answer as it is; otherwise each
/// dispatch's answer with its receivers and template.
pub fn answer(split: &Split, mut answers: Vec<(StatusCode, Value)>) -> (StatusCode, Value) {
    if split.dispatches.len() == 1 && answers.len() == 1 {
        return answers.remove(0);
    }
    let dispatches: Vec<Value> = split
        .dispatches
        .iter()
        .zip(answers)
        .map(|(d, (_, mut a))| {
            a["receivers"] = d.receivers.iter().map(ToString::to_string).collect();
            a["template"] = d.template.clone().into();
            a["alerts"] = d.notification.alerts.len().into();
            a
        })
        .collect();
    (
        StatusCode::OK,
        json!({
            "status": "accepted",
            "dispatches": dispatches,
        }),
    )
}

/// The alerts no route took, as the log names them.
pub fn not_routed(alerts: &[Alert]) -> Vec<Value> {
    alerts
        .iter()
        .map(|a| {
            json!({
                "fingerprint": a.fingerprint,
                "alertname": a.labels.get("alertname"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn m(s: &str) -> Matcher {
        Matcher::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn each_operator_matches_as_alertmanager_does() {
        let l = labels(&[("severity", "critical"), ("team", "db")]);
        assert!(m(r#"severity="critical""#).matches(&l));
        assert!(!m(r#"severity="warning""#).matches(&l));
        assert!(m(r#"severity!="warning""#).matches(&l));
        assert!(!m(r#"severity!="critical""#).matches(&l));
        assert!(m(r#"team=~"db|infra""#).matches(&l));
        assert!(!m(r#"team=~"web|infra""#).matches(&l));
        assert!(m(r#"team!~"web|infra""#).matches(&l));
        assert!(!m(r#"team!~"d.""#).matches(&l));
        // Bare values and spaces around the tokens, as Alertmanager's parser takes them.
        assert!(m("  severity = critical ").matches(&l));
        assert!(m("team=~db").matches(&l));
    }

    #[test]
    fn a_missing_label_matches_as_the_empty_value() {
        let l = labels(&[("severity", "critical")]);
        assert!(m(r#"team="""#).matches(&l));
        assert!(!m(r#"team!="""#).matches(&l));
        assert!(m(r#"team=~".*""#).matches(&l));
        assert!(m(r#"team!~".+""#).matches(&l));
    }

    #[test]
    fn regexes_are_anchored_at_both_ends() {
        let l = labels(&[("instance", "db-1.prod")]);
        assert!(!m(r#"instance=~"db""#).matches(&l));
        assert!(!m(r#"instance=~"prod""#).matches(&l));
        assert!(m(r#"instance=~"db.*""#).matches(&l));
        // The alternation is grouped inside the anchors: `a|b` is `^(?:a|b)$`.
        assert!(!m(r#"instance=~"db|x""#).matches(&l));
        assert!(m(r#"instance=~"x|db-1\\.prod""#).matches(&l));
        assert!(m(r#"instance!~"db""#).matches(&l));
    }

    #[test]
    fn quoted_values_undo_openmetrics_escapes() {
        let l = labels(&[("msg", "say \"hi\"\n"), ("path", "C:\\x")]);
        assert!(m(r#"msg="say \"hi\"\n""#).matches(&l));
        assert!(m(r#"path="C:\\x""#).matches(&l));
        // A lone backslash stays, so regex classes need no doubling.
        assert!(m(r#"path=~"C:\\\\\w""#).matches(&l));
        assert!(m(r"n=~\d*").matches(&labels(&[("n", "42")])));
    }

    #[test]
    fn bad_matchers_are_refused_with_the_fix() {
        for (s, needle) in [
            (r#"="x""#, "does not start with a label name"),
            ("severity", "has no operator"),
            (r#"severity=="x""#, "unquoted value holds a double quote"),
            (r#"severity="x"#, "closing double quote is missing"),
            (r#"a="x", b="y""#, "one matcher per entry"),
            (r#"team=~"(db""#, "the regular expression '(db' is invalid"),
        ] {
            let e = Matcher::parse(s).expect_err(s);
            assert!(e.contains(needle), "{s}: {e}");
        }
    }

    const FILE: &str = r#"
# critical to the on-call robot, and on to the default
[[route]]
matchers = ['severity="critical"']
receivers = ["oncall-robot"]
continue = true

[[route]]
matchers = ['team=~"db|infra"']
receivers = ["dba", "dba"]
template = "short"
send_resolved = false
"#;

    #[test]
    fn a_file_is_read_in_order_with_its_defaults() {
        let r = AlertRoutes::parse(FILE).unwrap();
        assert_eq!(r.len(), 2);
        let (a, b) = (&r.routes[0], &r.routes[1]);
        assert_eq!((a.keep_matching, a.send_resolved), (true, true));
        assert_eq!(a.template, None);
        assert_eq!((b.keep_matching, b.send_resolved), (false, false));
        assert_eq!(b.template.as_deref(), Some("short"));
        assert_eq!(b.receivers.len(), 1, "named twice, kept once");
        assert!(AlertRoutes::parse("").unwrap().is_empty());
    }

    #[test]
    fn a_bad_file_names_the_line() {
        for (text, line, needle) in [
            (
                "[[route]]\nreceivers = [\"a\"]\nmatchers = ['team=~\"(db\"']\n",
                3,
                "invalid",
            ),
            ("[[route]]\nmatchers = []\n", 1, "no receivers"),
            (
                "[[route]]\nreceivers = [\"a\"]\n\n[[route]]\nreceivers = [\"b c\"]\n",
                5,
                "receiver 'b c'",
            ),
            (
                "[[route]]\nreceivers = [\"a\"]\nrecievers = 1\n",
                3,
                "recievers",
            ),
            ("[[route]]\nreceivers = [\"a\"\n", 2, "[[route]]"),
            (
                "[[route]]\nreceivers = [\"a\"]\ntemplate = \" \"\n",
                3,
                "template is empty",
            ),
        ] {
            let (at, why) = AlertRoutes::parse(text).map(|_| ()).expect_err(text);
            assert_eq!(at, Some(line), "{text}: {why}");
            assert!(why.contains(needle), "{text}: {why}");
        }
    }

    #[test]
    fn a_routes_error_names_the_key_the_file_and_the_line() {
        let e = RoutesError {
            file: "/etc/routes.toml".into(),
            line: Some(3),
            problem: "bad".into(),
        };
        assert_eq!(
            e.to_string(),
            "DING_CHANNEL_ALERT_ROUTES /etc/routes.toml:3: bad"
        );
    }

    fn alert(fp: &str, status: Status, pairs: &[(&str, &str)]) -> Alert {
        Alert {
            status,
            labels: labels(pairs),
            annotations: labels(&[("summary", fp)]),
            starts_at: 0,
            ends_at: None,
            generator_url: String::new(),
            fingerprint: fp.into(),
            grafana: None,
        }
    }

    fn notification(alerts: Vec<Alert>) -> Notification {
        Notification {
            receiver: "ding".into(),
            status: Status::Firing,
            group_labels: labels(&[("alertname", "X")]),
            common_labels: labels(&[("alertname", "X")]),
            common_annotations: Labels::new(),
            external_url: String::new(),
            group_key: "{}:{alertname=\"X\"}".into(),
            truncated_alerts: 3,
            grafana: None,
            alerts,
        }
    }

    fn users(names: &[&str]) -> Vec<Username> {
        names.iter().map(|n| Username::parse(n).unwrap()).collect()
    }

    fn fingerprints(d: &Dispatch) -> Vec<&str> {
        d.notification
            .alerts
            .iter()
            .map(|a| a.fingerprint.as_str())
            .collect()
    }

    fn receivers(d: &Dispatch) -> Vec<String> {
        d.receivers.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_first_match_wins_and_continue_goes_on() {
        let routes = AlertRoutes::parse(FILE).unwrap();
        let n = notification(vec![
            alert(
                "c",
                Status::Firing,
                &[("alertname", "X"), ("severity", "critical")],
            ),
            alert(
                "cd",
                Status::Firing,
                &[("alertname", "X"), ("severity", "critical"), ("team", "db")],
            ),
            alert(
                "d",
                Status::Firing,
                &[("alertname", "X"), ("team", "infra")],
            ),
            alert(
                "w",
                Status::Firing,
                &[("alertname", "X"), ("severity", "warning")],
            ),
        ]);
        let s = split(&routes, &n, &users(&["alice"]));
        let got: Vec<(Vec<String>, Option<&str>, Vec<&str>)> = s
            .dispatches
            .iter()
            .map(|d| (receivers(d), d.template.as_deref(), fingerprints(d)))
            .collect();
        assert_eq!(
            got,
            [
                (vec!["oncall-robot".to_owned()], None, vec!["c", "cd"]),
                (vec!["dba".to_owned()], Some("short"), vec!["cd", "d"]),
                (vec!["alice".to_owned()], None, vec!["w"]),
            ],
            "c matched a continuing route and nothing after it: not the default"
        );
        assert!(s.not_routed.is_empty());
    }

    #[test]
    fn send_resolved_false_drops_the_routes_resolved_alerts_only() {
        let routes = AlertRoutes::parse(FILE).unwrap();
        let n = notification(vec![
            alert("d1", Status::Resolved, &[("team", "db")]),
            alert("d2", Status::Firing, &[("team", "db")]),
            alert("c1", Status::Resolved, &[("severity", "critical")]),
        ]);
        let s = split(&routes, &n, &users(&["alice"]));
        let got: Vec<(Vec<String>, Vec<&str>)> = s
            .dispatches
            .iter()
            .map(|d| (receivers(d), fingerprints(d)))
            .collect();
        assert_eq!(
            got,
            [
                (vec!["dba".to_owned()], vec!["d2"]),
                (vec!["oncall-robot".to_owned()], vec!["c1"]),
            ],
            "d1 was taken by its route and not sent; it does not fall to the default"
        );
        let only_resolved = notification(vec![alert("d1", Status::Resolved, &[("team", "db")])]);
        let s = split(&routes, &only_resolved, &users(&["alice"]));
        assert!(s.dispatches.is_empty() && s.not_routed.is_empty(), "{s:?}");
    }

    #[test]
    fn a_dispatch_recomputes_what_depends_on_its_alerts() {
        let routes = AlertRoutes::parse(FILE).unwrap();
        let n = notification(vec![
            alert(
                "c",
                Status::Resolved,
                &[
                    ("alertname", "X"),
                    ("severity", "critical"),
                    ("env", "prod"),
                ],
            ),
            alert(
                "w",
                Status::Firing,
                &[("alertname", "X"), ("severity", "warning"), ("env", "prod")],
            ),
            alert(
                "w2",
                Status::Firing,
                &[("alertname", "X"), ("severity", "warning"), ("env", "dev")],
            ),
        ]);
        let s = split(&routes, &n, &users(&["alice"]));
        let (critical, rest) = (&s.dispatches[0].notification, &s.dispatches[1].notification);
        assert_eq!(critical.status, Status::Resolved);
        assert_eq!(
            critical.common_labels,
            labels(&[
                ("alertname", "X"),
                ("severity", "critical"),
                ("env", "prod")
            ])
        );
        assert_eq!(critical.common_annotations, labels(&[("summary", "c")]));
        assert_eq!(rest.status, Status::Firing);
        assert_eq!(
            rest.common_labels,
            labels(&[("alertname", "X"), ("severity", "warning")])
        );
        assert!(rest.common_annotations.is_empty());
        // The truncated alerts' labels were never sent: each dispatch says they exist.
        assert_eq!((critical.truncated_alerts, rest.truncated_alerts), (3, 3));
        assert_eq!(critical.group_key, n.group_key);
    }

    #[test]
    fn without_routes_the_whole_notification_goes_to_the_path_with_its_own_key() {
        let n = notification(vec![alert("a", Status::Firing, &[("x", "1")])]);
        let s = split(&AlertRoutes::default(), &n, &users(&["alice"]));
        assert_eq!(
            s.dispatches,
            [Dispatch::whole(n.clone(), users(&["alice"]))]
        );
        assert_eq!(
            s.dispatches[0].dedup_key(0),
            super::super::dedup_key(&n, 0),
            "the key is the one sent before routes existed"
        );
    }

    #[test]
    fn each_dispatch_has_a_key_of_its_own_that_copies_share() {
        let routes = AlertRoutes::parse(FILE).unwrap();
        let n = notification(vec![alert(
            "c",
            Status::Firing,
            &[("severity", "critical"), ("team", "db")],
        )]);
        let s = split(&routes, &n, &users(&["alice"]));
        let keys: Vec<String> = s.dispatches.iter().map(|d| d.dedup_key(0)).collect();
        assert_eq!(keys.len(), 2);
        assert_ne!(
            keys[0], keys[1],
            "same alerts, other receivers: another key"
        );
        let again = split(&routes, &n.clone(), &users(&["alice"]));
        let same: Vec<String> = again.dispatches.iter().map(|d| d.dedup_key(0)).collect();
        assert_eq!(keys, same);
    }

    #[test]
    fn an_alert_nothing_matches_is_not_routed_without_path_receivers() {
        let routes = AlertRoutes::parse(FILE).unwrap();
        let n = notification(vec![
            alert("c", Status::Firing, &[("severity", "critical")]),
            alert(
                "w",
                Status::Firing,
                &[("alertname", "Y"), ("severity", "warning")],
            ),
        ]);
        let s = split(&routes, &n, &[]);
        assert_eq!(s.dispatches.len(), 1);
        assert_eq!(fingerprints(&s.dispatches[0]), ["c"]);
        assert_eq!(s.not_routed, [n.alerts[1].clone()]);
        assert_eq!(
            not_routed(&s.not_routed),
            [json!({"fingerprint": "w", "alertname": "Y"})]
        );
    }

    #[test]
    fn the_answer_keeps_one_dispatchs_shape_and_lists_several() {
        let routes = AlertRoutes::parse(FILE).unwrap();
        let one = split(
            &routes,
            &notification(vec![alert("w", Status::Firing, &[])]),
            &users(&["alice"]),
        );
        let single = json!({"status": "accepted", "message_id": "m1"});
        assert_eq!(
            answer(&one, vec![(StatusCode::OK, single.clone())]),
            (StatusCode::OK, single)
        );
        let two = split(
            &routes,
            &notification(vec![
                alert("c", Status::Firing, &[("severity", "critical")]),
                alert("w", Status::Firing, &[]),
            ]),
            &users(&["alice"]),
        );
        let (status, body) = answer(
            &two,
            vec![
                (StatusCode::OK, json!({"message_id": "m1"})),
                (StatusCode::OK, json!({"message_id": "m2"})),
            ],
        );
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["dispatches"][0]["receivers"], json!(["oncall-robot"]));
        assert_eq!(body["dispatches"][1]["message_id"], "m2");
        assert_eq!(body["dispatches"][1]["alerts"], 1);
    }
}
