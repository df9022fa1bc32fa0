//! `channel_manifest.json`: the declaration of the CMSI system, its channels and the message
//! types `get_msg_type` lists. Parsed by hand over `serde_json::Value` so every problem is
//! reported with its JSON path (`channels[2].timeout: …`) before anything is written.

use super::registry::Channel;
use crate::domain::request::Reach;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The implementations a channel can be bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    SendDing,
    SendDingtalk,
    SendDingbot,
    SendMsg,
    GetMsgType,
}

impl Component {
    pub const ALL: [Component; 5] = [
        Self::SendDing,
        Self::SendDingtalk,
        Self::SendDingbot,
        Self::SendMsg,
        Self::GetMsgType,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::SendDing => "send_ding",
            Self::SendDingtalk => "send_dingtalk",
            Self::SendDingbot => "send_dingbot",
            Self::SendMsg => "send_msg",
            Self::GetMsgType => "get_msg_type",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    /// Whom the component's sends may reach; `None` for components that do not send.
    pub fn reach(self) -> Option<Reach> {
        match self {
            Self::SendDing => Some(Reach::Any),
            Self::SendDingtalk => Some(Reach::People),
            Self::SendDingbot => Some(Reach::Robots),
            Self::SendMsg | Self::GetMsgType => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Methods {
    pub get: bool,
    pub post: bool,
}

impl Methods {
    pub fn parse(s: &str) -> Option<Self> {
        let mut m = Self::default();
        for part in s.split(',').map(str::trim) {
            match part.to_ascii_uppercase().as_str() {
                "GET" => m.get = true,
                "POST" => m.post = true,
                _ => return None,
            }
        }
        Some(m)
    }

    pub fn allows(&self, method: &str) -> bool {
        match method {
            "GET" => self.get,
            "POST" => self.post,
            _ => false,
        }
    }
}

impl std::fmt::Display for Methods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match (self.get, self.post) {
            (true, true) => "GET,POST",
            (true, false) => "GET",
            _ => "POST",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MsgTypeDecl {
    pub kind: String,
    pub channel: String,
    pub label: String,
    pub label_en: String,
    pub icon: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub system: String,
    pub channels: Vec<Channel>,
    pub msg_types: Vec<MsgTypeDecl>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("manifest {path} is not valid JSON: {reason}")]
    Syntax { path: String, reason: String },
    #[error("manifest {path}: {at}: {problem}")]
    Invalid {
        path: String,
        at: String,
        problem: String,
    },
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|e| match e {
            ManifestError::Syntax { reason, .. } => ManifestError::Syntax {
                path: shown,
                reason,
            },
            ManifestError::Invalid { at, problem, .. } => ManifestError::Invalid {
                path: shown,
                at,
                problem,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let root: Value = serde_json::from_str(text).map_err(|e| ManifestError::Syntax {
            path: String::new(),
            reason: e.to_string(),
        })?;
        parse_root(&root).map_err(|(at, problem)| ManifestError::Invalid {
            path: String::new(),
            at,
            problem,
        })
    }

    pub fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }
}

type Problem = (String, String);

fn problem(at: &str, what: impl Into<String>) -> Problem {
    (at.to_owned(), what.into())
}

fn object<'a>(v: &'a Value, at: &str) -> Result<&'a Map<String, Value>, Problem> {
    v.as_object()
        .ok_or_else(|| problem(at, "must be an object"))
}

fn string(obj: &Map<String, Value>, at: &str, key: &str) -> Result<String, Problem> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Some(Value::String(_)) => Err(problem(&format!("{at}.{key}"), "must not be empty")),
        Some(_) => Err(problem(&format!("{at}.{key}"), "must be a string")),
        None => Err(problem(&format!("{at}.{key}"), "is required")),
    }
}

fn opt_string(obj: &Map<String, Value>, at: &str, key: &str) -> Result<Option<String>, Problem> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => string(obj, at, key).map(Some),
    }
}

fn boolean(obj: &Map<String, Value>, at: &str, key: &str, default: bool) -> Result<bool, Problem> {
    match obj.get(key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(problem(&format!("{at}.{key}"), "must be true or false")),
    }
}

fn parse_root(root: &Value) -> Result<Manifest, Problem> {
    let root = object(root, "$")?;
    let system = object(root.get("system").unwrap_or(&Value::Null), "$.system")?;
    let system_name = string(system, "$.system", "name")?;
    // The label is the ESB's to show; checked for its type, not kept.
    opt_string(system, "$.system", "label")?;
    let prefix = format!("/{}/", system_name.to_ascii_lowercase());

    let list = root
        .get("channels")
        .and_then(Value::as_array)
        .ok_or_else(|| problem("$.channels", "must be an array of channels"))?;
    if list.is_empty() {
        return Err(problem("$.channels", "declares no channel"));
    }
    let mut channels: Vec<Channel> = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let at = format!("$.channels[{i}]");
        let c = parse_channel(v, &at, &prefix)?;
        if channels.iter().any(|o| o.name == c.name) {
            return Err(problem(
                &format!("{at}.name"),
                format!("'{}' is declared twice", c.name),
            ));
        }
        if channels.iter().any(|o| o.path == c.path) {
            return Err(problem(
                &format!("{at}.path"),
                format!("'{}' is declared twice", c.path),
            ));
        }
        channels.push(c);
    }

    let mut msg_types: Vec<MsgTypeDecl> = Vec::new();
    let types = match root.get("msg_types") {
        None => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err(problem("$.msg_types", "must be an array")),
    };
    for (i, v) in types.iter().enumerate() {
        let at = format!("$.msg_types[{i}]");
        let obj = object(v, &at)?;
        let kind = string(obj, &at, "type")?;
        if msg_types.iter().any(|t| t.kind == kind) {
            return Err(problem(
                &format!("{at}.type"),
                format!("'{kind}' is declared twice"),
            ));
        }
        let channel = string(obj, &at, "channel")?;
        if !channels.iter().any(|c| c.name == channel) {
            return Err(problem(
                &format!("{at}.channel"),
                format!("'{channel}' is not a channel of this manifest"),
            ));
        }
        let label = string(obj, &at, "label")?;
        let label_en = opt_string(obj, &at, "label_en")?.unwrap_or_else(|| label.clone());
        let icon = string(obj, &at, "icon")?;
        if !is_base64_png(&icon) {
            return Err(problem(
                &format!("{at}.icon"),
                "must be a base64-encoded PNG image",
            ));
        }
        msg_types.push(MsgTypeDecl {
            kind,
            channel,
            label,
            label_en,
            icon,
        });
    }

    Ok(Manifest {
        system: system_name,
        channels,
        msg_types,
    })
}

fn parse_channel(v: &Value, at: &str, prefix: &str) -> Result<Channel, Problem> {
    let obj = object(v, at)?;
    let name = string(obj, at, "name")?;
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(problem(
            &format!("{at}.name"),
            format!("'{name}' may hold only a-z, 0-9 and _"),
        ));
    }
    let path = string(obj, at, "path")?;
    if !path.starts_with(prefix) || !path.ends_with('/') || path.len() <= prefix.len() + 1 {
        return Err(problem(
            &format!("{at}.path"),
            format!("'{path}' must look like {prefix}<name>/"),
        ));
    }
    let method = opt_string(obj, at, "method")?.unwrap_or_else(|| "POST".into());
    let methods = Methods::parse(&method).ok_or_else(|| {
        problem(
            &format!("{at}.method"),
            format!("'{method}' is not GET, POST or GET,POST"),
        )
    })?;
    let component_name = opt_string(obj, at, "component")?.unwrap_or_else(|| name.clone());
    let component = Component::parse(&component_name).ok_or_else(|| {
        problem(
            &format!("{at}.component"),
            format!(
                "unknown component '{component_name}' (known: {})",
                Component::ALL.map(Component::name).join(", ")
            ),
        )
    })?;
    let label = string(obj, at, "label")?;
    let label_en = opt_string(obj, at, "label_en")?.unwrap_or_else(|| name.clone());
    let timeout_s = match obj.get("timeout") {
        None => 10,
        Some(v) => v
            .as_i64()
            .filter(|t| (1..=600).contains(t))
            .ok_or_else(|| {
                problem(
                    &format!("{at}.timeout"),
                    "must be a whole number of seconds from 1 to 600",
                )
            })? as i32,
    };
    let mut comp_conf = BTreeMap::new();
    match obj.get("comp_conf") {
        None | Some(Value::Null) => {}
        Some(Value::Object(conf)) => {
            for (k, v) in conf {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => {
                        return Err(problem(
                            &format!("{at}.comp_conf.{k}"),
                            "must be a string, number or boolean",
                        ))
                    }
                };
                comp_conf.insert(k.clone(), value);
            }
        }
        Some(_) => return Err(problem(&format!("{at}.comp_conf"), "must be an object")),
    }
    Ok(Channel {
        name,
        path,
        methods,
        component,
        label,
        label_en,
        timeout_s,
        is_active: boolean(obj, at, "is_active", true)?,
        is_hidden: boolean(obj, at, "is_hidden", false)?,
        comp_conf,
        admin_set: BTreeSet::new(),
    })
}

fn is_base64_png(s: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

/// Keys whose values are secrets: shown masked, never logged.
pub fn is_secret_key(key: &str) -> bool {
    key.contains("secret") || key.contains("password")
}

/// Declared comp_conf keys of a channel, for the `channels conf` typo guard.
pub fn declared_keys(decl: &Channel) -> BTreeSet<&str> {
    decl.comp_conf.keys().map(String::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_manifest() -> Manifest {
        Manifest::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/channel_manifest.json"
        )))
        .unwrap()
    }

    #[test]
    fn repo_manifest_declares_the_five_channels() {
        let m = repo_manifest();
        assert_eq!(m.system, "CMSI");
        let names: Vec<_> = m.channels.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "send_ding",
                "send_dingtalk",
                "send_dingbot",
                "send_msg",
                "get_msg_type"
            ]
        );
        let bot = m.channel("send_dingbot").unwrap();
        assert_eq!(bot.comp_conf["token_field"], "qq");
        assert_eq!(bot.comp_conf["sign_field"], "wx_userid");
        let app = m.channel("send_dingtalk").unwrap();
        assert!(app.comp_conf.contains_key("ding_app_secret"));
        assert_eq!(m.msg_types[0].kind, "ding");
    }

    fn invalid(text: &str) -> (String, String) {
        match Manifest::parse(text).unwrap_err() {
            ManifestError::Invalid { at, problem, .. } => (at, problem),
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn problems_carry_their_json_path() {
        let base = |ch: &str| format!(r#"{{"system":{{"name":"CMSI"}},"channels":[{ch}]}}"#);
        let ok = r#"{"name":"send_ding","path":"/cmsi/send_ding/","label":"x"}"#;
        assert!(Manifest::parse(&base(ok)).is_ok());
        assert_eq!(
            invalid(&base(&format!(
                r#"{ok},{{"name":"b","path":"/cmsi/b/","label":"x","component":"send_ding","timeout":"10"}}"#
            ))),
            (
                "$.channels[1].timeout".into(),
                "must be a whole number of seconds from 1 to 600".into()
            )
        );
        assert_eq!(
            invalid(&base(
                r#"{"name":"x","path":"/other/x/","label":"l","component":"send_ding"}"#
            ))
            .0,
            "$.channels[0].path"
        );
        assert_eq!(
            invalid(&base(r#"{"name":"x","path":"/cmsi/x/","label":"l"}"#)).0,
            "$.channels[0].component"
        );
        assert_eq!(
            invalid(&base(&format!(r#"{ok},{ok}"#))),
            (
                "$.channels[1].name".into(),
                "'send_ding' is declared twice".into()
            )
        );
        assert_eq!(
            invalid(&base(r#"{"name":"send_ding","path":"/cmsi/send_ding/","label":"x","comp_conf":{"k":[1]}}"#)).0,
            "$.channels[0].comp_conf.k"
        );
        assert_eq!(invalid(r#"{"channels":[]}"#).0, "$.system");
        assert!(matches!(
            Manifest::parse("{").unwrap_err(),
            ManifestError::Syntax { .. }
        ));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzz::{bytes, config, json_text, mutated, odd_string};
    use proptest::prelude::*;

    const SECRET: &str = "fuzz-secret-9b1d";

    /// The shipped manifest, each channel's comp_conf holding a secret.
    fn shipped() -> Value {
        let mut doc: Value =
            serde_json::from_str(include_str!("../../channel_manifest.json")).unwrap();
        for c in doc["channels"].as_array_mut().unwrap() {
            c["comp_conf"]["ding_app_secret"] = SECRET.into();
        }
        doc
    }

    /// Loaded with what every reader relies on, or refused naming where, never quoting a
    /// secret.
    fn check(text: &str) {
        match Manifest::parse(text) {
            Ok(m) => {
                let prefix = format!("/{}/", m.system.to_ascii_lowercase());
                for (i, c) in m.channels.iter().enumerate() {
                    let others = &m.channels[..i];
                    assert!(others.iter().all(|o| o.name != c.name && o.path != c.path));
                    assert!(c.path.starts_with(&prefix) && c.path.ends_with('/'));
                    assert!(!c.name.is_empty() && !c.label.is_empty());
                    assert!((1..=600).contains(&c.timeout_s));
                    assert!(Component::parse(c.component.name()) == Some(c.component));
                }
                for (i, t) in m.msg_types.iter().enumerate() {
                    assert!(m.msg_types[..i].iter().all(|o| o.kind != t.kind));
                    assert!(m.channel(&t.channel).is_some());
                }
            }
            Err(e) => {
                if let ManifestError::Invalid { at, problem, .. } = &e {
                    assert!(at.starts_with('$') && !problem.is_empty(), "{e}");
                }
                assert!(!e.to_string().contains(SECRET), "{e}");
            }
        }
    }

    proptest! {
        #![proptest_config(config(300))]

        #[test]
        fn fuzz_manifest_any_text(text in prop_oneof![
            json_text(),
            odd_string(300),
            bytes(300).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ]) {
            check(&text);
        }

        #[test]
        fn fuzz_manifest_hostile_values(doc in mutated(shipped())) {
            check(&doc.to_string());
        }
    }
}
