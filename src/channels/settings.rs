//! The comp_conf of the channels that have settings, parsed into typed values. `channels conf`
//! refuses a value these parsers refuse, so the stored settings are valid; the senders read them
//! through [`DingtalkConf::from_channel`] and [`DingbotConf::from_channel`], which fall back to a
//! key's default (and warn once) only for values stored before this validation existed.

use super::manifest::{self, Component};
use super::registry::{self, Channel};
use crate::db::{DbConn, DbError};
use crate::dingtalk::App;
use crate::directory::classify::RobotFields;
use crate::domain::secrets::AppSecret;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

/// One bad comp_conf value: which channel and key, what is wrong with it, and how to fix it.
/// The problem quotes the value only when the key is not a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{channel} {key}: {problem}; {fix}")]
pub struct ConfError {
    pub channel: &'static str,
    pub key: &'static str,
    pub problem: String,
    pub fix: String,
}

/// `send_dingtalk`'s comp_conf: the internal app whose robot sends single-chat messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DingtalkConf {
    /// `None` until both `ding_app_key` and `ding_app_secret` are set (an admin may set them
    /// one command at a time); the robot code defaults to the app key.
    pub app: Option<App>,
    /// How people are reached: `single_chat_mode` and, for work notifications, `ding_agent_id`.
    pub single_chat: SingleChat,
}

/// The path a person's message takes (`single_chat_mode`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SingleChat {
    /// The app robot's single chat (`oToMessages/batchSend`).
    #[default]
    Robot,
    /// A work notification in the app's name (`asyncsend_v2`), under the app's AgentId.
    WorkNotice { agent_id: String },
}

/// `send_dingbot`'s comp_conf: where robot users keep their credentials, and robot pacing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DingbotConf {
    pub fields: RobotFields,
    pub robot_limits: RobotLimits,
}

impl DingtalkConf {
    const CHANNEL: &'static str = "send_dingtalk";

    pub fn from_conf(conf: &BTreeMap<String, String>) -> Result<Self, ConfError> {
        strict(|bad| Self::parse(conf, bad))
    }

    /// The settings of the stored channel; see the module doc for invalid stored values.
    pub fn from_channel(dingtalk: Option<&Channel>) -> Self {
        dingtalk.map_or_else(Self::default, |c| {
            lenient(|bad| Self::parse(&c.comp_conf, bad))
        })
    }

    fn parse(conf: &BTreeMap<String, String>, bad: &mut dyn FnMut(ConfError)) -> Self {
        // A refused value is still used when stored: DingTalk's refusal then names the
        // credentials, where dropping it would claim single chat is not configured.
        let mut credential = |key: &'static str, console_name: &str| {
            let v = value(conf, key)?;
            if let Some(problem) = credential_problem(key, v) {
                bad(ConfError {
                    channel: Self::CHANNEL,
                    key,
                    problem,
                    fix: format!(
                        "set it to the {console_name} exactly as the DingTalk developer console shows it"
                    ),
                });
            }
            Some(v.to_owned())
        };
        let key = credential("ding_app_key", "AppKey");
        let secret = credential("ding_app_secret", "AppSecret");
        let robot_code = credential("ding_robot_code", "RobotCode");
        let app = match (key, secret) {
            (Some(key), Some(secret)) => Some(App {
                robot_code: robot_code.unwrap_or_else(|| key.clone()),
                key,
                secret: AppSecret::new(secret),
            }),
            _ => None,
        };
        let single_chat = Self::single_chat(conf, bad);
        Self { app, single_chat }
    }

    fn single_chat(conf: &BTreeMap<String, String>, bad: &mut dyn FnMut(ConfError)) -> SingleChat {
        let agent_id = value(conf, "ding_agent_id");
        if let Some(v) = agent_id.filter(|v| !is_agent_id(v)) {
            bad(ConfError {
                channel: Self::CHANNEL,
                key: "ding_agent_id",
                problem: format!("'{v}' is not an AgentId (a whole number)"),
                fix: "set it to the AgentId the DingTalk developer console shows on the app's page"
                    .to_owned(),
            });
        }
        match value(conf, "single_chat_mode") {
            None | Some("robot") => SingleChat::Robot,
            Some("work_notice") => match agent_id.filter(|v| is_agent_id(v)) {
                Some(agent_id) => SingleChat::WorkNotice {
                    agent_id: agent_id.to_owned(),
                },
                None => {
                    if agent_id.is_none() {
                        bad(ConfError {
                            channel: Self::CHANNEL,
                            key: "ding_agent_id",
                            problem: "single_chat_mode=work_notice sends in the name of the app's agent, and none is set".to_owned(),
                            fix: "set ding_agent_id=… (the app's AgentId in the DingTalk developer console) in the same command".to_owned(),
                        });
                    }
                    SingleChat::Robot
                }
            },
            Some(other) => {
                bad(ConfError {
                    channel: Self::CHANNEL,
                    key: "single_chat_mode",
                    problem: format!("'{other}' is not a single-chat mode"),
                    fix: "set single_chat_mode=robot (the app robot's single chat) or single_chat_mode=work_notice (work notifications, with ding_agent_id)".to_owned(),
                });
                SingleChat::Robot
            }
        }
    }
}

impl DingbotConf {
    const CHANNEL: &'static str = "send_dingbot";

    pub fn from_conf(conf: &BTreeMap<String, String>) -> Result<Self, ConfError> {
        strict(|bad| Self::parse(conf, bad))
    }

    /// The settings of the stored channel; see the module doc for invalid stored values.
    pub fn from_channel(dingbot: Option<&Channel>) -> Self {
        dingbot.map_or_else(Self::default, |c| {
            lenient(|bad| Self::parse(&c.comp_conf, bad))
        })
    }

    fn parse(conf: &BTreeMap<String, String>, bad: &mut dyn FnMut(ConfError)) -> Self {
        let defaults = RobotFields::default();
        let mut fields = RobotFields {
            token_field: field_name(conf, "token_field", &defaults.token_field, bad),
            sign_field: field_name(conf, "sign_field", &defaults.sign_field, bad),
            keyword_field: field_name(conf, "keyword_field", &defaults.keyword_field, bad),
        };
        if [&fields.token_field, &fields.sign_field].contains(&&fields.keyword_field) {
            bad(ConfError {
                channel: Self::CHANNEL,
                key: "keyword_field",
                problem: format!(
                    "'{}' already holds the robot's token or signing secret",
                    fields.keyword_field
                ),
                fix: format!(
                    "the keyword needs a field of its own, e.g. keyword_field={}",
                    defaults.keyword_field
                ),
            });
            fields.keyword_field = defaults.keyword_field.clone();
        }
        if fields.sign_field == fields.token_field {
            bad(ConfError {
                channel: Self::CHANNEL,
                key: "sign_field",
                problem: format!("'{}' is token_field too", fields.sign_field),
                fix: format!(
                    "the signing secret needs a field of its own, e.g. token_field={} sign_field={}",
                    defaults.token_field, defaults.sign_field
                ),
            });
            fields = defaults;
        }
        let default = RobotLimit {
            limit: positive(conf, "robot_rate_limit", DEFAULT.limit, bad),
            window_ms: i64::from(positive(
                conf,
                "robot_rate_window_s",
                (DEFAULT.window_ms / 1000) as u32,
                bad,
            )) * 1000,
            burst: positive(conf, "robot_burst", DEFAULT.burst, bad),
        };
        let mut overrides = HashMap::new();
        for item in value(conf, "robot_limits")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match parse_override(item, default) {
                Some((name, limit)) => {
                    overrides.insert(name, limit);
                }
                None => bad(ConfError {
                    channel: Self::CHANNEL,
                    key: "robot_limits",
                    problem: format!(
                        "'{item}' is not name:limit/window_s[/burst] with positive whole numbers"
                    ),
                    fix: "set e.g. robot_limits=ops-robot:10/60,noisy-bot:20/60/2".to_owned(),
                }),
            }
        }
        Self {
            fields,
            robot_limits: RobotLimits::new(default, overrides),
        }
    }
}

/// Checks `comp_conf` with the parser of `component`, for `channels conf`: components without
/// settings accept anything (the manifest's key guard is the CLI's).
pub fn check(component: Component, comp_conf: &BTreeMap<String, String>) -> Result<(), ConfError> {
    match component {
        Component::SendDingtalk => DingtalkConf::from_conf(comp_conf).map(drop),
        Component::SendDingbot => DingbotConf::from_conf(comp_conf).map(drop),
        Component::SendDing | Component::SendMsg | Component::GetMsgType => Ok(()),
    }
}

/// Runs a parser and answers its first complaint.
fn strict<T>(parse: impl FnOnce(&mut dyn FnMut(ConfError)) -> T) -> Result<T, ConfError> {
    let mut first = None;
    let parsed = parse(&mut |e| {
        first.get_or_insert(e);
    });
    first.map_or(Ok(parsed), Err)
}

/// Runs a parser on stored settings and warns about what it complains of, once per process
/// each (the settings are read for every batch). Stored values that can be used as they are
/// (field names, credentials) are kept as they were stored before validation existed;
/// numbers that cannot be read fall back to their defaults.
fn lenient<T>(parse: impl FnOnce(&mut dyn FnMut(ConfError)) -> T) -> T {
    static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut problems = vec![];
    let parsed = parse(&mut |e| problems.push(e.to_string()));
    if !problems.is_empty() {
        let all = problems.join("; ");
        let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
        if warned.insert(all.clone()) {
            tracing::warn!(
                "stored comp_conf is invalid, using the defaults of these keys until fixed with `ding-channel channels conf`: {all}"
            );
        }
    }
    parsed
}

/// DingTalk's AgentId: a positive whole number (an int64 on the wire).
fn is_agent_id(v: &str) -> bool {
    v.parse::<i64>().is_ok_and(|n| n > 0)
}

/// A set value; empty means unset, as the manifest declares keys with empty defaults.
fn value<'a>(conf: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    conf.get(key).map(String::as_str).filter(|v| !v.is_empty())
}

/// What is wrong with a DingTalk credential as pasted, in words that quote it only when it is
/// not a secret.
fn credential_problem(key: &str, v: &str) -> Option<String> {
    if !v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let what = if manifest::is_secret_key(key) {
        "the value".to_owned()
    } else {
        format!("'{v}'")
    };
    Some(format!(
        "{what} contains spaces or control characters (a copy-paste slip?)"
    ))
}

/// A profile field name: a profile column or an `extras` key (any JSON key, so only blanks
/// and control characters are refused). A stored value refused here is still used, as it
/// was before this check existed.
fn field_name(
    conf: &BTreeMap<String, String>,
    key: &'static str,
    default: &str,
    bad: &mut dyn FnMut(ConfError),
) -> String {
    let Some(v) = value(conf, key) else {
        return default.to_owned();
    };
    if v.chars().count() > 64 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bad(ConfError {
            channel: DingbotConf::CHANNEL,
            key,
            problem: format!(
                "'{v}' is not a profile field name (up to 64 characters, no spaces or control characters)"
            ),
            fix: format!("name a profile field or extras key, e.g. {key}={default}"),
        });
    }
    v.to_owned()
}

fn positive(
    conf: &BTreeMap<String, String>,
    key: &'static str,
    default: u32,
    bad: &mut dyn FnMut(ConfError),
) -> u32 {
    let Some(v) = value(conf, key) else {
        return default;
    };
    match v.trim().parse::<u32>() {
        Ok(n) if n > 0 => n,
        _ => {
            bad(ConfError {
                channel: DingbotConf::CHANNEL,
                key,
                problem: format!("'{v}' is not a positive whole number"),
                fix: format!("set e.g. {key}={default}"),
            });
            default
        }
    }
}

/// One `robot_limits` entry, `name:limit/window_s[/burst]`; the burst defaults to the channel's.
fn parse_override(item: &str, default: RobotLimit) -> Option<(String, RobotLimit)> {
    let (name, spec) = item.split_once(':')?;
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    let mut nums = spec
        .split('/')
        .map(|n| n.trim().parse::<u32>().ok().filter(|n| *n > 0));
    let limit = nums.next()??;
    let window_s = nums.next()??;
    let burst = nums.next().map_or(Some(default.burst), |b| b)?;
    if nums.next().is_some() {
        return None;
    }
    Some((
        name.to_owned(),
        RobotLimit {
            limit,
            window_ms: i64::from(window_s) * 1000,
            burst,
        },
    ))
}

/// DingTalk's own limit: 20 messages a minute per robot.
pub const DEFAULT: RobotLimit = RobotLimit {
    limit: 20,
    window_ms: 60_000,
    burst: 5,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RobotLimit {
    pub limit: u32,
    pub window_ms: i64,
    pub burst: u32,
}

impl RobotLimit {
    /// One send per this long, on average.
    pub fn interval_ms(&self) -> i64 {
        (self.window_ms / i64::from(self.limit.max(1))).max(1)
    }

    pub fn describe(&self) -> String {
        format!("{} per {} s", self.limit, self.window_ms / 1000)
    }
}

/// The limits of `send_dingbot`'s comp_conf: `robot_rate_limit`, `robot_rate_window_s`,
/// `robot_burst`, and per robot `robot_limits` = `name:limit/window_s[/burst],…`.
#[derive(Debug, Clone, PartialEq)]
pub struct RobotLimits {
    default: RobotLimit,
    overrides: HashMap<String, RobotLimit>,
}

impl Default for RobotLimits {
    fn default() -> Self {
        Self {
            default: DEFAULT,
            overrides: HashMap::new(),
        }
    }
}

impl RobotLimits {
    pub fn new(default: RobotLimit, overrides: HashMap<String, RobotLimit>) -> Self {
        Self { default, overrides }
    }

    pub fn for_robot(&self, robot: &str) -> RobotLimit {
        self.overrides.get(robot).copied().unwrap_or(self.default)
    }
}

pub const SINGLE_CHAT_NOT_CONFIGURED: &str =
    "single chat is not configured: set it with `ding-channel channels conf send_dingtalk ding_app_key=… ding_app_secret=… ding_robot_code=…`";

/// The DingTalk settings a delivery needs, read from the registry per batch so an admin's
/// `channels conf` applies to the next attempt, even for queued messages.
#[derive(Clone)]
pub struct DeliverySettings {
    pub app: Result<App, String>,
    pub single_chat: SingleChat,
    pub fields: RobotFields,
    pub robot_limits: RobotLimits,
}

impl DeliverySettings {
    /// From the registry as read for a request.
    pub fn from_registry(channels: &[Channel]) -> Self {
        let named = |name: &str| channels.iter().find(|c| c.name == name);
        Self::from_channels(named("send_dingtalk"), named("send_dingbot"))
    }

    pub fn from_channels(dingtalk: Option<&Channel>, dingbot: Option<&Channel>) -> Self {
        let DingbotConf {
            fields,
            robot_limits,
        } = DingbotConf::from_channel(dingbot);
        let DingtalkConf { app, single_chat } = DingtalkConf::from_channel(dingtalk);
        Self {
            app: app.ok_or_else(|| SINGLE_CHAT_NOT_CONFIGURED.to_owned()),
            single_chat,
            fields,
            robot_limits,
        }
    }

    pub fn load(conn: &mut DbConn) -> Result<Self, DbError> {
        Ok(Self::from_channels(
            registry::find(conn, "send_dingtalk")?.as_ref(),
            registry::find(conn, "send_dingbot")?.as_ref(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn dingbot_err(pairs: &[(&str, &str)]) -> String {
        DingbotConf::from_conf(&conf(pairs))
            .unwrap_err()
            .to_string()
    }

    fn channel(component: Component, pairs: &[(&str, &str)]) -> Channel {
        Channel {
            name: component.name().into(),
            path: format!("/cmsi/{}/", component.name()),
            methods: Default::default(),
            component,
            label: String::new(),
            label_en: String::new(),
            timeout_s: 10,
            is_active: true,
            is_hidden: false,
            comp_conf: conf(pairs),
            admin_set: Default::default(),
        }
    }

    #[test]
    fn dingtalk_app_needs_key_and_secret_and_the_robot_code_defaults_to_the_key() {
        let app = |pairs: &[(&str, &str)]| DingtalkConf::from_conf(&conf(pairs)).unwrap().app;
        assert_eq!(
            app(&[
                ("ding_app_key", ""),
                ("ding_app_secret", ""),
                ("ding_robot_code", "")
            ]),
            None,
            "the manifest's empty defaults"
        );
        assert_eq!(app(&[("ding_app_key", "dingk")]), None, "no secret yet");
        assert_eq!(app(&[("ding_app_secret", "s3cret")]), None, "no key yet");
        assert_eq!(
            app(&[("ding_app_key", "dingk"), ("ding_app_secret", "s3cret")]),
            Some(App {
                key: "dingk".into(),
                secret: AppSecret::new("s3cret"),
                robot_code: "dingk".into()
            })
        );
        assert_eq!(
            app(&[
                ("ding_app_key", "dingk"),
                ("ding_app_secret", "s3cret"),
                ("ding_robot_code", "robot1")
            ])
            .unwrap()
            .robot_code,
            "robot1"
        );
    }

    #[test]
    fn dingtalk_credentials_with_spaces_are_refused_and_a_secret_is_never_quoted() {
        let err = |pairs: &[(&str, &str)]| {
            DingtalkConf::from_conf(&conf(pairs))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&[("ding_app_key", "ding k")]),
            "send_dingtalk ding_app_key: 'ding k' contains spaces or control characters (a copy-paste slip?); set it to the AppKey exactly as the DingTalk developer console shows it"
        );
        let e = err(&[
            ("ding_app_key", "dingk"),
            ("ding_app_secret", "top-secret\n"),
        ]);
        assert_eq!(
            e,
            "send_dingtalk ding_app_secret: the value contains spaces or control characters (a copy-paste slip?); set it to the AppSecret exactly as the DingTalk developer console shows it"
        );
        assert!(!e.contains("top-secret"));
        assert!(err(&[("ding_robot_code", "\trobot")])
            .starts_with("send_dingtalk ding_robot_code: '\trobot' contains"));
    }

    #[test]
    fn work_notice_mode_needs_an_agent_id_and_says_how_to_set_it() {
        let mode =
            |pairs: &[(&str, &str)]| DingtalkConf::from_conf(&conf(pairs)).map(|c| c.single_chat);
        assert_eq!(mode(&[]), Ok(SingleChat::Robot));
        assert_eq!(
            mode(&[("single_chat_mode", "robot"), ("ding_agent_id", "")]),
            Ok(SingleChat::Robot)
        );
        assert_eq!(
            mode(&[
                ("single_chat_mode", "work_notice"),
                ("ding_agent_id", "3000001")
            ]),
            Ok(SingleChat::WorkNotice {
                agent_id: "3000001".into()
            })
        );
        let err = |pairs: &[(&str, &str)]| mode(pairs).unwrap_err().to_string();
        assert_eq!(
            err(&[("single_chat_mode", "work_notice")]),
            "send_dingtalk ding_agent_id: single_chat_mode=work_notice sends in the name of the app's agent, and none is set; set ding_agent_id=… (the app's AgentId in the DingTalk developer console) in the same command"
        );
        assert!(err(&[
            ("single_chat_mode", "work_notice"),
            ("ding_agent_id", "abc")
        ])
        .starts_with("send_dingtalk ding_agent_id: 'abc' is not an AgentId"));
        assert!(err(&[("single_chat_mode", "notice")])
            .contains("set single_chat_mode=robot (the app robot's single chat) or single_chat_mode=work_notice"));
        // Stored before the check: the robot path, with one warning.
        let stored = channel(
            Component::SendDingtalk,
            &[("single_chat_mode", "work_notice")],
        );
        assert_eq!(
            DingtalkConf::from_channel(Some(&stored)).single_chat,
            SingleChat::Robot
        );
    }

    #[test]
    fn robot_fields_default_parse_and_refuse() {
        let fields = |pairs: &[(&str, &str)]| DingbotConf::from_conf(&conf(pairs)).unwrap().fields;
        assert_eq!(fields(&[]), RobotFields::default());
        assert_eq!(
            fields(&[("token_field", ""), ("sign_field", "")]),
            RobotFields::default()
        );
        assert_eq!(
            fields(&[("token_field", "robot_token"), ("sign_field", "robot-sign")]),
            RobotFields {
                token_field: "robot_token".into(),
                sign_field: "robot-sign".into(),
                keyword_field: "extras.keyword".into()
            }
        );
        assert_eq!(
            dingbot_err(&[("token_field", "robot token")]),
            "send_dingbot token_field: 'robot token' is not a profile field name (up to 64 characters, no spaces or control characters); name a profile field or extras key, e.g. token_field=qq"
        );
        assert_eq!(
            fields(&[
                ("token_field", "机器人.token"),
                ("sign_field", "sign.field"),
                ("keyword_field", "email")
            ]),
            RobotFields {
                token_field: "机器人.token".into(),
                sign_field: "sign.field".into(),
                keyword_field: "email".into()
            },
            "any extras key names a field"
        );
        assert_eq!(
            dingbot_err(&[("token_field", "email"), ("sign_field", "email")]),
            "send_dingbot sign_field: 'email' is token_field too; the signing secret needs a field of its own, e.g. token_field=qq sign_field=wx_userid"
        );
        assert!(dingbot_err(&[("token_field", "wx_userid")]).contains("is token_field too"));
        assert_eq!(
            dingbot_err(&[("keyword_field", "qq")]),
            "send_dingbot keyword_field: 'qq' already holds the robot's token or signing secret; the keyword needs a field of its own, e.g. keyword_field=extras.keyword"
        );
        assert!(dingbot_err(&[("keyword_field", "key word")]).contains("not a profile field name"));
    }

    #[test]
    fn robot_rates_default_parse_and_refuse() {
        let limits =
            |pairs: &[(&str, &str)]| DingbotConf::from_conf(&conf(pairs)).unwrap().robot_limits;
        assert_eq!(limits(&[]).for_robot("any"), DEFAULT);
        assert_eq!(
            limits(&[
                ("robot_rate_limit", "10"),
                ("robot_rate_window_s", " 30 "),
                ("robot_burst", "2")
            ])
            .for_robot("any"),
            RobotLimit {
                limit: 10,
                window_ms: 30_000,
                burst: 2
            }
        );
        for key in ["robot_rate_limit", "robot_rate_window_s", "robot_burst"] {
            for bad in ["x", "0", "-1", "1.5", "99999999999"] {
                let e = dingbot_err(&[(key, bad)]);
                assert!(
                    e.starts_with(&format!(
                        "send_dingbot {key}: '{bad}' is not a positive whole number; set e.g. {key}="
                    )),
                    "{e}"
                );
            }
        }
        assert_eq!(
            dingbot_err(&[("robot_burst", "x")]),
            "send_dingbot robot_burst: 'x' is not a positive whole number; set e.g. robot_burst=5"
        );
        assert!(dingbot_err(&[("robot_rate_window_s", "x")]).ends_with("robot_rate_window_s=60"));
        assert!(dingbot_err(&[("robot_rate_limit", "x")]).ends_with("robot_rate_limit=20"));
    }

    #[test]
    fn robot_limits_per_robot_parse_and_refuse() {
        let limits = DingbotConf::from_conf(&conf(&[
            ("robot_burst", "3"),
            ("robot_limits", "ops:10/30, noisy : 4/60/1,"),
        ]))
        .unwrap()
        .robot_limits;
        assert_eq!(
            limits.for_robot("ops"),
            RobotLimit {
                limit: 10,
                window_ms: 30_000,
                burst: 3
            },
            "the burst defaults to the channel's"
        );
        assert_eq!(limits.for_robot("noisy").burst, 1);
        assert_eq!(
            limits.for_robot("other").limit,
            20,
            "others keep the default"
        );
        assert_eq!(
            DingbotConf::from_conf(&conf(&[("robot_limits", "")])).unwrap(),
            DingbotConf::default()
        );
        for bad in [
            "ops:10",
            "ops:0/30",
            ":10/30",
            "ops",
            "ops:10/30/2/9",
            "ops:x/30",
        ] {
            assert_eq!(
                dingbot_err(&[("robot_limits", &format!("good:1/1,{bad}"))]),
                format!("send_dingbot robot_limits: '{bad}' is not name:limit/window_s[/burst] with positive whole numbers; set e.g. robot_limits=ops-robot:10/60,noisy-bot:20/60/2")
            );
        }
    }

    #[test]
    fn stored_values_are_kept_and_unreadable_numbers_fall_back_to_their_defaults() {
        let bot = channel(
            Component::SendDingbot,
            &[
                ("token_field", "robot_token"),
                ("robot_burst", "x"),
                ("robot_rate_limit", "10"),
                ("robot_limits", "ops:oops,vip:40/60"),
            ],
        );
        let c = DingbotConf::from_channel(Some(&bot));
        assert_eq!(c.fields.token_field, "robot_token");
        assert_eq!(c.robot_limits.for_robot("any").burst, DEFAULT.burst);
        assert_eq!(c.robot_limits.for_robot("any").limit, 10);
        assert_eq!(c.robot_limits.for_robot("vip").limit, 40);
        assert_eq!(c.robot_limits.for_robot("ops").limit, 10);
        assert_eq!(DingbotConf::from_channel(None), DingbotConf::default());

        let spaced = channel(Component::SendDingbot, &[("token_field", "robot token")]);
        assert_eq!(
            DingbotConf::from_channel(Some(&spaced)).fields.token_field,
            "robot token",
            "a stored field name is used as it was before validation existed"
        );
        let app = channel(
            Component::SendDingtalk,
            &[("ding_app_key", "dingk"), ("ding_app_secret", "bad secret")],
        );
        let shown = format!("{app:?}");
        assert!(
            !shown.contains("bad secret") && shown.contains("ding_app_secret"),
            "{shown}"
        );
        let app = DingtalkConf::from_channel(Some(&app)).app.unwrap();
        assert_eq!(
            app.secret.expose(),
            "bad secret",
            "kept, so DingTalk's refusal names the credentials"
        );
    }

    #[test]
    fn check_uses_the_components_parser() {
        let bad = conf(&[("robot_burst", "x"), ("ding_app_key", "a b")]);
        assert_eq!(
            check(Component::SendDingbot, &bad).unwrap_err().key,
            "robot_burst"
        );
        assert_eq!(
            check(Component::SendDingtalk, &bad).unwrap_err().key,
            "ding_app_key"
        );
        for c in [
            Component::SendDing,
            Component::SendMsg,
            Component::GetMsgType,
        ] {
            assert_eq!(check(c, &bad), Ok(()));
        }
    }
}
