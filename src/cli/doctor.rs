//! `doctor`: what an admin runs when a robot or the app does not work. It checks, in order,
//! what a send needs (the settings, the database, the channels and apps, the DingTalk app, each
//! robot user) and prints each check as ok / warn / FAIL / skip with what to fix. It reads and
//! asks DingTalk only; `--send` also sends test messages (a robot's taking one of its send
//! slots, as any send does). Exit code 1 when a check failed, 0 otherwise (warnings alone
//! included). No secret is printed: tokens show masked.

use crate::channels::manifest::Manifest;
use crate::channels::registry;
use crate::channels::settings::{
    DingbotConf, DingtalkConf, SingleChat, SINGLE_CHAT_NOT_CONFIGURED,
};
use crate::clock::Zone;
use crate::config::{ConfigError, DatabaseUrl, LogFormat, Settings};
use crate::db::{Conn, Db, DbError};
use crate::dingtalk::client::NoticeOutcome;
use crate::dingtalk::egress::{explain, Hold, Scope};
use crate::dingtalk::error::{Api, Kind, RobotSecurity};
use crate::dingtalk::{App, At, DingTalk, DingTalkError, Message, MobileLookup, UserOutcome};
use crate::directory::classify::{self, classify, RobotFields};
use crate::directory::pool::POOL_KEY;
use crate::directory::profile::Profile;
use crate::directory::store;
use crate::domain::mobile::Mobile;
use crate::domain::secrets::{RobotToken, SignSecret};
use crate::outbox;
use crate::senders::robot::members::{pool_of, Member, Pool};
use crate::senders::robot::{keyword, pacing, THROTTLE_PAUSE};
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// A phone registered in DingTalk: checks the lookup of people by phone (its permission,
    /// the app's IP whitelist) and, with --send, sends that person a test message.
    #[arg(long, value_name = "MOBILE")]
    phone: Option<String>,
    /// Check only this robot user (repeatable); default: every robot user.
    #[arg(long = "robot", value_name = "NAME")]
    robots: Vec<String>,
    /// Send a test message to each robot (and, with --phone, to that person).
    #[arg(long)]
    send: bool,
    /// Print the checks as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Skip,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Skip => "skip",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
        }
    }
}

/// One check: what was looked at and, unless it is fine, what to do.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub group: String,
    pub name: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(status: Status, name: &str, detail: impl Into<String>, fix: Option<String>) -> Check {
    Check {
        group: String::new(),
        name: name.to_owned(),
        status,
        detail: detail.into(),
        fix,
    }
}

fn ok(name: &str, detail: impl Into<String>) -> Check {
    check(Status::Ok, name, detail, None)
}

fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    check(Status::Warn, name, detail, Some(fix.into()))
}

fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    check(Status::Fail, name, detail, Some(fix.into()))
}

fn skip(name: &str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
    check(Status::Skip, name, detail, Some(hint.into()))
}

/// What DingTalk answered, quoted.
fn answered(e: &DingTalkError) -> String {
    if e.unanswered() {
        format!("no answer from DingTalk ({}: {})", e.code, e.message)
    } else if e.kind == Kind::Transport {
        format!(
            "an answer that is not DingTalk's JSON ({}: {})",
            e.code, e.message
        )
    } else if e.message.is_empty() {
        format!("DingTalk answered {}", e.code)
    } else {
        format!("DingTalk answered {} \"{}\"", e.code, e.message)
    }
}

/// A refused app call, named for what an admin must fix; DingTalk's slowing down (a throttle,
/// its anti-abuse pause) is a warning, with the wait it asks.
fn refused(call: &str, e: &DingTalkError) -> Check {
    let name = match e.kind {
        Kind::NoPermission => "permission",
        Kind::IpNotWhitelisted => "IP whitelist",
        Kind::AppCredentials if matches!(e.api, Api::BatchSend | Api::ReadStatus) => "robot code",
        Kind::AppCredentials => "credentials",
        _ => call,
    };
    let slow = matches!(e.kind, Kind::Throttled | Kind::AntiAbuse);
    let wait = e
        .retry_after()
        .filter(|_| slow)
        .map_or_else(String::new, |w| {
            format!(
                "; it asks to wait {}",
                crate::clock::duration(w.as_millis() as i64)
            )
        });
    check(
        if slow { Status::Warn } else { Status::Fail },
        name,
        format!("{call}: {}{wait}", answered(e)),
        Some(e.explanation.clone()),
    )
}

/// A probe DingTalk refused in a way it is not known to refuse a made-up key: nothing is proven.
fn not_proven(name: &str, e: &DingTalkError) -> Check {
    warn(
        name,
        format!("not proven: {} ({})", answered(e), e.explanation),
        "--phone 138… --send sends that person a test message, which proves it",
    )
}

#[derive(Default, Serialize)]
struct Report {
    checks: Vec<Check>,
    failed: usize,
    warnings: usize,
}

impl Report {
    fn add(&mut self, group: &str, mut c: Check) {
        c.group = group.to_owned();
        match c.status {
            Status::Fail => self.failed += 1,
            Status::Warn => self.warnings += 1,
            Status::Ok | Status::Skip => {}
        }
        self.checks.push(c);
    }

    fn add_all(&mut self, group: &str, checks: Vec<Check>) {
        for c in checks {
            self.add(group, c);
        }
    }

    fn text(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        let mut group = None;
        for c in &self.checks {
            if group != Some(&c.group) {
                out.push_str(&format!("{}\n", c.group));
                group = Some(&c.group);
            }
            out.push_str(&format!(
                "  {:<4}  {:<width$}  {}\n",
                c.status.label(),
                c.name,
                c.detail
            ));
            if let Some(fix) = &c.fix {
                let label = if c.status == Status::Skip {
                    "hint"
                } else {
                    "fix"
                };
                out.push_str(&format!("  {:<4}  {:<width$}  {label}: {fix}\n", "", ""));
            }
        }
        let count = |s| self.checks.iter().filter(|c| c.status == s).count();
        out.push_str(&format!(
            "\n{} failed, {} warning(s), {} ok, {} skipped{}\n",
            self.failed,
            self.warnings,
            count(Status::Ok),
            count(Status::Skip),
            if self.failed > 0 {
                ": fix the FAIL lines first"
            } else {
                ""
            }
        ));
        out
    }
}

const SETUP: &str = "config and database";
const APP: &str = "DingTalk app";
const ROBOTS: &str = "robots";
const HOUR_MS: i64 = 3_600_000;

/// Runs every check and prints them; `settings` is what `serve` would have loaded, or why it
/// could not. Fails when a check failed.
pub fn run(args: &DoctorArgs, settings: Result<Settings, ConfigError>) -> anyhow::Result<()> {
    // main has set logging up when the settings loaded; without them, warnings only.
    crate::telemetry::init("warn", LogFormat::Text);
    let report = checks(args, settings);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("JSON serializes")
        );
    } else {
        print!("{}", report.text());
    }
    match report.failed {
        0 => Ok(()),
        n => anyhow::bail!("doctor: {n} check(s) failed"),
    }
}

fn checks(args: &DoctorArgs, settings: Result<Settings, ConfigError>) -> Report {
    let mut report = Report::default();
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            report.add(
                SETUP,
                fail(
                    "settings",
                    e.to_string(),
                    "fix the key named, in the environment or the config file (DING_CHANNEL_CONFIG)",
                ),
            );
            return report;
        }
    };
    let dt = &settings.dingtalk;
    let proxy = dt
        .proxy
        .as_ref()
        .map_or_else(String::new, |p| format!(" through the proxy {}", origin(p)));
    report.add(
        SETUP,
        ok(
            "settings",
            format!(
                "loaded: database {}, DingTalk {} and {}{proxy}",
                settings.storage.database,
                origin(&dt.oapi_base),
                origin(&dt.api_base)
            ),
        ),
    );
    let Some(db) = database(&settings, &mut report) else {
        return report;
    };
    let mut conn = match db.get() {
        Ok(c) => c,
        Err(e) => {
            report.add(
                SETUP,
                fail(
                    "database",
                    e.to_string(),
                    "try again; check the database server",
                ),
            );
            return report;
        }
    };
    registry_checks(&settings, &mut conn, &mut report);
    let clock = crate::clock::system();
    let client = match DingTalk::new(settings.dingtalk.clone(), clock.clone()) {
        Ok(c) => c,
        Err(e) => {
            report.add(APP, fail("client", e.to_string(), "check DINGTALK_PROXY"));
            return report;
        }
    };
    // DingTalk's holds on every process's calls hold the doctor's too, and one its calls start
    // is kept for the others, as the server's client does.
    let egress = client.egress();
    match outbox::egress::holds(&mut conn) {
        Ok(kept) => egress.adopt(kept, clock.now_ms()),
        Err(e) => report.add(SETUP, db_failed(&e)),
    }
    egress.keep_in(Arc::new(outbox::egress::Store {
        db: db.clone(),
        clock: clock.clone(),
    }));
    report.add_all(
        SETUP,
        holds(&egress.holds(clock.now_ms()), &settings.outbox.zone),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime starts");
    let mut doctor = Doctor {
        args,
        settings: &settings,
        conn,
        client,
        report,
        clock_checked: false,
    };
    runtime.block_on(async {
        if let Err(e) = doctor.app().await {
            doctor.report.add(APP, db_failed(&e));
        }
        if let Err(e) = doctor.robots().await {
            doctor.report.add(ROBOTS, db_failed(&e));
        }
    });
    // Its calls count against the month's quota like any other (`ding-channel dingtalk usage`).
    let counts = doctor.client.egress().take_counts();
    if let Err(e) = outbox::egress::add_calls(&mut doctor.conn, &counts) {
        doctor.report.add(
            SETUP,
            warn(
                "calls counted",
                format!("the doctor's calls to DingTalk are not counted: {e}"),
                "nothing to do: `ding-channel dingtalk usage` shows a few calls fewer",
            ),
        );
    }
    doctor.report
}

/// What DingTalk holds back now, kept by any process: its anti-abuse pause, the monthly quota.
fn holds(holds: &[Hold], zone: &Zone) -> Vec<Check> {
    if holds.is_empty() {
        return vec![ok(
            "DingTalk holds",
            "none: DingTalk holds back no call of this server",
        )];
    }
    holds
        .iter()
        .map(|h| {
            let fix = match h.scope {
                Scope::Pause => "wait: the doctor does not call DingTalk meanwhile, since asking prolongs the pause; run it again once the pause ends",
                Scope::Quota => "once the organisation's quota is raised: ding-channel dingtalk resume",
            };
            let detail = format!("{} (DingTalk answered {} \"{}\")", explain(h, zone), h.code, h.message);
            warn("DingTalk holds", detail, fix)
        })
        .collect()
}

/// Scheme, host and port only: a URL may carry a user and password, or a token in its query.
fn origin(u: &reqwest::Url) -> String {
    format!(
        "{}://{}:{}",
        u.scheme(),
        u.host_str().unwrap_or_default(),
        u.port_or_known_default().unwrap_or_default()
    )
}

fn db_failed(e: &DbError) -> Check {
    fail(
        "database",
        e.to_string(),
        "check the database (`ding-channel doctor` again once it answers)",
    )
}

/// The database answers and is migrated; `None` when the checks that read it cannot run.
fn database(settings: &Settings, report: &mut Report) -> Option<Db> {
    let url = &settings.storage.database;
    if let DatabaseUrl::Sqlite(path) = url {
        // Opening it would create an empty database, and hide a wrong path.
        if !path.exists() {
            report.add(
                SETUP,
                fail(
                    "database",
                    format!("{url}: no such file"),
                    "set DATABASE_URL to the server's database, or create it with `ding-channel migrate`",
                ),
            );
            return None;
        }
    }
    let fix = |e: &DbError| match e {
        DbError::PostgresNotBuilt => "rebuild with `cargo build --release --features postgres`",
        _ => "check DATABASE_URL and that the database server is up and lets this user in",
    };
    // Looked at read-only first: a database that is not ding-channel's is left as it is.
    let mut probe = match crate::db::open_read_only(url) {
        Ok(c) => c,
        Err(e) => {
            report.add(SETUP, fail("database", e.to_string(), fix(&e)));
            return None;
        }
    };
    report.add(
        SETUP,
        ok("database", format!("{url} answers ({})", url.backend())),
    );
    let c = match crate::db::pending_migrations(&mut probe) {
        Ok(None) => fail(
            "migrations",
            format!("{url} is not a ding-channel database: it has no table of migrations (__diesel_schema_migrations)"),
            "set DATABASE_URL to the server's database; a new database is set up by `ding-channel migrate`",
        ),
        Ok(Some(pending)) if pending.is_empty() => ok("migrations", "up to date"),
        Ok(Some(pending)) => fail(
            "migrations",
            format!("{} not applied: {}", pending.len(), pending.join(", ")),
            "run `ding-channel migrate` (`serve` applies them when it starts); the other checks need them",
        ),
        Err(e) => fail("migrations", e.to_string(), "check the database"),
    };
    let migrated = c.status == Status::Ok;
    report.add(SETUP, c);
    if !migrated {
        return None;
    }
    match Db::connect(url, 1) {
        Ok(db) => Some(db),
        Err(e) => {
            report.add(SETUP, fail("database", e.to_string(), fix(&e)));
            None
        }
    }
}

/// The manifest's channels are registered and enabled, and some app may call.
fn registry_checks(settings: &Settings, conn: &mut Conn, report: &mut Report) {
    let path = &settings.server.manifest;
    match (Manifest::load(path), registry::list(conn)) {
        (Err(e), _) => report.add(
            SETUP,
            fail(
                "channels",
                e.to_string(),
                "fix DING_CHANNEL_MANIFEST or the file it names",
            ),
        ),
        (_, Err(e)) => report.add(SETUP, db_failed(&e)),
        (Ok(manifest), Ok(registered)) => {
            let find = |name: &str| registered.iter().find(|c| c.name == name);
            let names = |pick: &dyn Fn(Option<&registry::Channel>) -> bool| {
                manifest
                    .channels
                    .iter()
                    .filter(|c| pick(find(&c.name)))
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
            };
            let missing = names(&|c| c.is_none());
            let disabled = names(&|c| c.is_some_and(|c| !c.is_active));
            report.add(
                SETUP,
                if !missing.is_empty() {
                    fail(
                        "channels",
                        format!("not registered: {} (in {})", missing.join(", "), path.display()),
                        "run `ding-channel channels sync` (`serve` syncs the manifest when it starts)",
                    )
                } else if !disabled.is_empty() {
                    warn(
                        "channels",
                        format!("disabled, calls to them are refused: {}", disabled.join(", ")),
                        format!("if that is not meant: ding-channel channels enable {}", disabled[0]),
                    )
                } else {
                    ok(
                        "channels",
                        format!(
                            "{} channels of {} registered and enabled",
                            manifest.channels.len(),
                            path.display()
                        ),
                    )
                },
            );
        }
    }
    report.add(
        SETUP,
        match crate::sources::esb::auth::list_apps(conn) {
            Err(e) => db_failed(&e),
            Ok(apps) if apps.is_empty() => fail(
                "apps",
                "no app may call ding-channel: every ESB call is refused",
                "ding-channel apps add CODE (CODE is the caller's bk_app_code; it prints the secret once)",
            ),
            Ok(apps) => ok(
                "apps",
                format!(
                    "{} may call: {}",
                    apps.len(),
                    apps.iter().map(|a| a.code.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ),
        },
    );
}

struct Doctor<'a> {
    args: &'a DoctorArgs,
    settings: &'a Settings,
    conn: Conn,
    client: DingTalk,
    report: Report,
    clock_checked: bool,
}

impl Doctor<'_> {
    /// The app of `send_dingtalk`: its settings, a token, DingTalk's clock, the path people's
    /// messages take, the phone lookup and, when the directory syncs from DingTalk, its reads.
    async fn app(&mut self) -> Result<(), DbError> {
        let Some(channel) = registry::find(&mut self.conn, "send_dingtalk")? else {
            self.report.add(
                APP,
                skip(
                    "settings",
                    "send_dingtalk is not registered",
                    "see the channels check",
                ),
            );
            return Ok(());
        };
        let conf = match DingtalkConf::from_conf(&channel.comp_conf) {
            Ok(conf) => conf,
            Err(e) => {
                let detail = format!("{} {}: {}", e.channel, e.key, e.problem);
                self.report.add(APP, fail("settings", detail, e.fix));
                DingtalkConf::from_channel(Some(&channel))
            }
        };
        let Some(app) = conf.app else {
            self.report.add(
                APP,
                warn(
                    "settings",
                    "no app configured: people (send_dingtalk, and the people of send_msg and send_ding) cannot be reached; robots can",
                    SINGLE_CHAT_NOT_CONFIGURED,
                ),
            );
            return Ok(());
        };
        let path = match &conf.single_chat {
            SingleChat::Robot => {
                format!("the app robot's single chat, robot code {}", app.robot_code)
            }
            SingleChat::WorkNotice { agent_id } => {
                format!("work notifications of AgentId {agent_id}")
            }
        };
        self.report.add(
            APP,
            ok(
                "settings",
                format!("app key {}; people reached by {path}", app.key),
            ),
        );
        if let Some(e) = self
            .client
            .egress()
            .held(Api::Token, crate::clock::now_ms())
        {
            self.report.add(
                APP,
                skip(
                    "token",
                    format!("not asked: DingTalk holds the app's calls ({})", e.code),
                    "see DingTalk's hold above; run doctor again once it ends",
                ),
            );
            return Ok(());
        }
        match self.client.check_token(&app).await {
            Ok(dated) => {
                self.report.add(
                    APP,
                    ok(
                        "token",
                        "DingTalk issued an access token for the app key and secret",
                    ),
                );
                self.clock(APP, dated.date_ms);
            }
            Err(e) => {
                self.report.add(APP, refused("token", &e));
                return Ok(());
            }
        }
        match &conf.single_chat {
            SingleChat::Robot => self.robot_code(&app).await,
            SingleChat::WorkNotice { agent_id } => self.agent(&app, agent_id).await,
        }
        if let Some(userid) = self.phone(&app).await {
            if self.args.send {
                let c = self.send_person(&app, &conf.single_chat, &userid).await;
                self.report.add(APP, c);
            }
        }
        if self.settings.directory.dingtalk_sync.is_some() {
            self.directory(&app).await;
        }
        Ok(())
    }

    /// Our clock against DingTalk's `Date`: a signed robot call is refused when its timestamp
    /// is over an hour off DingTalk's clock.
    fn clock(&mut self, group: &str, date_ms: Option<i64>) {
        let Some(date_ms) = date_ms else {
            return;
        };
        self.clock_checked = true;
        let skew = crate::clock::now_ms() - date_ms;
        let c = if skew.abs() > HOUR_MS {
            fail(
                "clock",
                format!("this server's clock is {}", skew_words(skew)),
                "set the clock right (NTP, chrony): DingTalk refuses signed robot messages whose timestamp is over an hour off its own",
            )
        } else if skew.abs() > 60_000 {
            warn(
                "clock",
                format!("this server's clock is {}", skew_words(skew)),
                "keep the clock synchronised (NTP, chrony): an hour off, DingTalk refuses signed robot messages",
            )
        } else {
            ok("clock", "within a minute of DingTalk's (its Date header)")
        };
        self.report.add(group, c);
    }

    /// Whether DingTalk takes the robot code (and the app's permission for the robot API),
    /// without sending: readStatus of a message key that does not exist. DingTalk refuses a
    /// robot code of another app (`invalidParameter.robotCode.*`) or a missing permission
    /// (403) before it looks the key up (docs/dingtalk.md).
    async fn robot_code(&mut self, app: &App) {
        const PROBE_KEY: &str = "ding-channel-doctor-probe";
        let c = match self.client.read_status(app, PROBE_KEY).await {
            Ok(_) => ok("robot code", format!("DingTalk took robot code {} for the app", app.robot_code)),
            Err(e) if e.kind == Kind::AppCredentials => fail(
                "robot code",
                format!("{} is not this app's robot: {}", app.robot_code, answered(&e)),
                "set ding_robot_code to the RobotCode of the app's robot (developer console, the app's robot page; usually the AppKey): ding-channel channels conf send_dingtalk ding_robot_code=…",
            ),
            Err(e) if e.refuses_only("processQueryKey") => ok(
                "robot code",
                format!(
                    "DingTalk took robot code {} and the permission qyapi_robot_sendmsg (it refused only the made-up message key of the probe); a real send (--phone --send) proves it",
                    app.robot_code
                ),
            ),
            Err(e) if !e.is_retryable() && matches!(e.kind, Kind::MessageRefused | Kind::Other) => not_proven("robot code", &e),
            Err(e) => refused("robot code", &e),
        };
        self.report.add(APP, c);
    }

    /// Whether DingTalk takes the AgentId of work notifications, without sending:
    /// getsendresult of a task that does not exist.
    async fn agent(&mut self, app: &App, agent_id: &str) {
        let c = match self.client.work_notice_result(app, agent_id, "0").await {
            Ok(_) => ok("agent id", format!("DingTalk took AgentId {agent_id}")),
            Err(e) if e.refuses_only("task_id") => ok(
                "agent id",
                format!("DingTalk took AgentId {agent_id} for the app (it refused only the made-up task id of the probe)"),
            ),
            Err(e) if e.kind == Kind::NoPermission => fail("agent id", answered(&e), e.explanation),
            Err(e) if !e.is_retryable() && matches!(e.kind, Kind::MessageRefused | Kind::Other) => not_proven("agent id", &e),
            Err(e) => refused("agent id", &e),
        };
        self.report.add(APP, c);
    }

    /// getbymobile on the test phone: its DingTalk userid, or why not.
    async fn phone(&mut self, app: &App) -> Option<String> {
        let Some(raw) = &self.args.phone else {
            self.report.add(
                APP,
                skip(
                    "getbymobile",
                    "no test phone given",
                    "pass --phone 138… (a phone registered in DingTalk) to check the lookup of people by phone: its permission (qyapi_get_member_by_mobile) and the app's IP whitelist",
                ),
            );
            return None;
        };
        let mobile = match Mobile::parse(raw) {
            Ok(m) => m,
            Err(e) => {
                self.report.add(
                    APP,
                    fail(
                        "getbymobile",
                        format!("--phone: {e}"),
                        "give the phone as DingTalk has it, e.g. 13800000001 or +852-51234567",
                    ),
                );
                return None;
            }
        };
        let (c, userid) = match self.client.get_by_mobile(app, &mobile.to_string()).await {
            MobileLookup::Found(userid) => (ok("getbymobile", format!("{mobile} is DingTalk user {userid}")), Some(userid)),
            MobileLookup::NotFound => (
                fail(
                    "getbymobile",
                    format!("no DingTalk user has the mobile {mobile}"),
                    "give the phone of someone in the organisation, exactly as registered in DingTalk",
                ),
                None,
            ),
            MobileLookup::NoPermission(e)
            | MobileLookup::IpNotWhitelisted(e)
            | MobileLookup::Transient(e)
            | MobileLookup::Failed(e) => (refused("getbymobile", &e), None),
        };
        self.report.add(APP, c);
        userid
    }

    /// A test message to the person, by the path people's messages take.
    async fn send_person(&mut self, app: &App, path: &SingleChat, userid: &str) -> Check {
        const NAME: &str = "test message";
        let msg = Message::Text {
            content: test_text(),
        };
        let ids = [userid.to_owned()];
        match path {
            SingleChat::Robot => {
                let outcome = match self.client.batch_send(app, &ids, &msg).await {
                    Ok(mut outcomes) => outcomes.pop().map(|(_, o)| o),
                    Err(e) => {
                        return fail(
                            NAME,
                            e.to_string(),
                            "report this: a plain text always converts",
                        )
                    }
                };
                match outcome {
                    Some(UserOutcome::Sent { .. }) => ok(NAME, format!("sent to {userid} by the app robot's single chat")),
                    Some(UserOutcome::Invalid) => fail(
                        NAME,
                        format!("DingTalk listed {userid} as invalid"),
                        "the person must be in the organisation and in the app's visible range (可见范围)",
                    ),
                    Some(UserOutcome::FlowControlled) => warn(NAME, format!("DingTalk flow-controlled {userid}"), "try again in a minute"),
                    Some(UserOutcome::Filtered) => warn(
                        NAME,
                        format!("DingTalk filtered the message to {userid}"),
                        "the person may have muted the app's robot",
                    ),
                    Some(UserOutcome::Failed(e)) => refused(NAME, &e),
                    None => fail(NAME, "no answer for the person", "report this"),
                }
            }
            SingleChat::WorkNotice { agent_id } => {
                let body = match msg.to_work_notice() {
                    Ok(b) => b,
                    Err(e) => {
                        return fail(
                            NAME,
                            e.to_string(),
                            "report this: a plain text always converts",
                        )
                    }
                };
                let task = match self
                    .client
                    .work_notice_send(app, agent_id, &ids, &body)
                    .await
                {
                    Ok(task) => task,
                    Err(e) => return refused(NAME, &e),
                };
                match self.client.work_notice_result(app, agent_id, &task).await.map(|r| r.of(userid)) {
                    Ok(NoticeOutcome::Delivered { .. }) => ok(NAME, format!("work notification task {task} reached {userid}")),
                    Ok(NoticeOutcome::Pending) => ok(NAME, format!("work notification task {task} accepted; DingTalk had not delivered it yet")),
                    Ok(NoticeOutcome::Invalid) => fail(
                        NAME,
                        format!("task {task}: DingTalk listed {userid} as invalid"),
                        "the person must be in the app's visible range (可见范围)",
                    ),
                    Ok(NoticeOutcome::Forbidden { code }) => warn(
                        NAME,
                        format!("task {task}: DingTalk held it back ({})", code.as_deref().unwrap_or("no code")),
                        "143105: the person's 500 a day from this app are used up; 143106: the same text today; else try again in a minute",
                    ),
                    Ok(NoticeOutcome::Failed) => warn(NAME, format!("task {task}: DingTalk failed to deliver it"), "try again"),
                    Err(e) => refused(NAME, &e),
                }
            }
        }
    }

    /// The reads of the DingTalk directory sync (DING_CHANNEL_DINGTALK_SYNC_S): its
    /// permissions.
    async fn directory(&mut self, app: &App) {
        let c = match self.client.list_departments(app, 1).await {
            Err(e) => refused("directory", &e),
            Ok(_) => match self.client.list_members(app, 1, 0, 1).await {
                Err(e) => refused("directory", &e),
                Ok(_) => ok(
                    "directory",
                    "the app may list departments and their members",
                ),
            },
        };
        self.report.add(APP, c);
    }

    /// Each robot user named (or every one): its credentials, keyword, pool and throttling,
    /// and with `--send` a test message through each of its robots.
    async fn robots(&mut self) -> Result<(), DbError> {
        let dingbot = registry::find(&mut self.conn, "send_dingbot")?;
        let conf = match dingbot
            .as_ref()
            .map(|c| DingbotConf::from_conf(&c.comp_conf))
        {
            Some(Err(e)) => {
                let detail = format!("{} {}: {}", e.channel, e.key, e.problem);
                self.report.add(ROBOTS, fail("settings", detail, e.fix));
                DingbotConf::from_channel(dingbot.as_ref())
            }
            Some(Ok(conf)) => conf,
            None => DingbotConf::default(),
        };
        let fields = &conf.fields;
        let profiles = if self.args.robots.is_empty() {
            let all: Vec<Profile> = store::list(&mut self.conn)?
                .into_iter()
                .filter(|p| matches!(classify(p, fields), classify::Kind::Robot { .. }))
                .collect();
            if all.is_empty() {
                self.report.add(
                    ROBOTS,
                    skip(
                        "robot users",
                        "none in the directory",
                        format!("a robot user keeps its webhook's access_token in field {} (README, Going live)", fields.token_field),
                    ),
                );
            }
            all
        } else {
            let mut named = vec![];
            for name in &self.args.robots {
                match store::get(&mut self.conn, name)? {
                    Some(p) => named.push(p),
                    None => self.report.add(
                        &format!("robot {name}"),
                        fail(
                            "robot user",
                            format!("no user named {name}"),
                            "see `ding-channel users list`",
                        ),
                    ),
                }
            }
            named
        };
        for p in &profiles {
            self.robot(p, &conf).await?;
        }
        Ok(())
    }

    async fn robot(&mut self, p: &Profile, conf: &DingbotConf) -> Result<(), DbError> {
        let fields = &conf.fields;
        let name = p.username.to_string();
        let group = format!("robot {name}");
        let checks = credentials(p, fields);
        let usable = checks.iter().all(|c| c.status != Status::Fail);
        for c in checks {
            self.report.add(&group, c);
        }
        if !usable {
            return Ok(());
        }
        let Ok(pool) = pool_of(&name, Some(p), fields) else {
            return Ok(());
        };
        if let Some(c) = pool_check(p, &pool) {
            self.report.add(&group, c);
        }
        let members = pool.members;
        let now = crate::clock::now_ms();
        for m in &members {
            let state = pacing::throttling(&mut self.conn, &m.id)?;
            self.report.add(&group, throttling(&m.id, state, now));
        }
        if !self.args.send {
            self.report.add(
                &group,
                skip(
                    "test message",
                    "none sent",
                    "add --send to send each of its robots a test message: it proves the token, the signature, the keyword and the robot's IP rule",
                ),
            );
            return Ok(());
        }
        let limit = conf.robot_limits.for_robot(&name);
        for m in &members {
            // Not a word while DingTalk holds this server's calls: asking would prolong it.
            if let Some(e) = self
                .client
                .egress()
                .held(Api::Webhook, crate::clock::now_ms())
            {
                self.report.add(
                    &group,
                    skip(
                        "test message",
                        format!("{}: not sent, DingTalk holds every call ({})", m.id, e.code),
                        "see DingTalk's hold above; run doctor again once it ends",
                    ),
                );
                continue;
            }
            // A slot of its own, as any send takes: a test never pushes a robot over DingTalk's
            // limit, nor speaks during DingTalk's pause of the robot.
            let slots =
                pacing::take_slots(&mut self.conn, &m.id, 1, crate::clock::now_ms(), limit)?;
            if slots.granted == 0 {
                self.report.add(
                    &group,
                    warn(
                        "test message",
                        format!("{}: not sent, {}", m.id, slots.reason()),
                        "run it again once the robot has a free slot",
                    ),
                );
                continue;
            }
            let msg = Message::Text {
                content: test_text(),
            };
            let msg = m
                .keyword
                .as_deref()
                .map_or_else(|| msg.clone(), |k| keyword::ensure(&msg, k));
            let dated = self
                .client
                .send_webhook_dated(&m.robot, &msg, &At::default())
                .await;
            if !self.clock_checked {
                self.clock(&group, dated.date_ms);
            }
            let skew = dated.date_ms.map(|d| crate::clock::now_ms() - d);
            let c = match dated.answer {
                Ok(()) => ok(
                    "test message",
                    format!(
                        "{}: sent{}",
                        m.id,
                        if m.robot.secret.is_some() {
                            ", signed"
                        } else {
                            ", unsigned"
                        }
                    ),
                ),
                Err(e) => {
                    if e.is_throttle() {
                        // Paused as the sender pauses it, so queued sends wait too.
                        let now = crate::clock::now_ms();
                        let wait = e.retry_after().unwrap_or(THROTTLE_PAUSE);
                        pacing::pause(&mut self.conn, &m.id, now, now + wait.as_millis() as i64)?;
                    }
                    robot_refused(m, fields, &e, skew)
                }
            };
            self.report.add(&group, c);
        }
        Ok(())
    }
}

/// A robot user's stored credentials and keyword, as DingTalk issues them.
fn credentials(p: &Profile, f: &RobotFields) -> Vec<Check> {
    let classify::Kind::Robot { token, secret } = classify(p, f) else {
        return vec![fail(
            "robot user",
            format!(
                "{} is not a robot user: field {} holds no webhook token, or field {} no SEC… secret",
                p.username, f.token_field, f.sign_field
            ),
            format!(
                "store the access_token= value of the robot's webhook URL in field {} and its SEC… secret in field {} (none for a robot secured by keywords or IP ranges, whose token is 64 hex characters)",
                f.token_field, f.sign_field
            ),
        )];
    };
    let mut checks = vec![match RobotToken::parse(token) {
        Err(expected) => fail(
            "token",
            format!("field {}: malformed ({expected})", f.token_field),
            format!(
                "store the access_token= value of the webhook URL in field {}",
                f.token_field
            ),
        ),
        Ok(t) if RobotToken::is_bare_hex(token) => ok(
            "token",
            format!(
                "{} (64 hex characters, as DingTalk issues them)",
                t.masked()
            ),
        ),
        Ok(t) => warn(
            "token",
            format!(
                "{} is not the 64 hex characters DingTalk issues",
                t.masked()
            ),
            format!(
                "check that field {} holds the whole access_token= value of the webhook URL",
                f.token_field
            ),
        ),
    }];
    checks.push(match secret.map(|s| (s, SignSecret::parse(s))) {
        None => ok(
            "signing secret",
            "none: messages go unsigned (right for a robot secured by keywords or IP ranges)",
        ),
        Some((_, Err(expected))) => fail(
            "signing secret",
            format!("field {}: malformed ({expected})", f.sign_field),
            format!(
                "copy the robot's secret (加签, SEC…) into field {} again",
                f.sign_field
            ),
        ),
        Some((raw, Ok(s))) if is_sec_hex(raw) => ok(
            "signing secret",
            format!("{} (SEC and 64 hex characters)", s.masked()),
        ),
        Some((_, Ok(s))) => warn(
            "signing secret",
            format!(
                "{} is not SEC followed by the 64 hex characters DingTalk issues",
                s.masked()
            ),
            format!(
                "copy the robot's secret (加签) into field {} again, whole",
                f.sign_field
            ),
        ),
    });
    checks.push(match classify::keyword(p, f) {
        Err(problem) => fail("keyword", problem, format!("fix field {}", f.keyword_field)),
        Ok(Some(k)) => ok(
            "keyword",
            format!(
                "'{k}' (field {}), added to every message that lacks it",
                f.keyword_field
            ),
        ),
        Ok(None) => ok(
            "keyword",
            format!(
                "none in field {}: right unless the robot is secured by keywords",
                f.keyword_field
            ),
        ),
    });
    checks
}

/// The robots a robot user sends by, as the robot sender reads its pool (`None` without one).
fn pool_check(p: &Profile, pool: &Pool) -> Option<Check> {
    let ids = |from: usize| {
        pool.members[from..]
            .iter()
            .map(|m| m.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if pool.left_out.is_empty() {
        let more = pool.members.len() - 1;
        return (more > 0).then(|| {
            ok(
                "pool",
                format!("{more} more robots of the group: {}", ids(1)),
            )
        });
    }
    Some(warn(
        "pool",
        format!(
            "left out of the pool: {}; sending by {}",
            pool.left_out.join("; "),
            ids(0)
        ),
        format!(
            "fix or remove what is left out of extras.{POOL_KEY} (`ding-channel users show {}`)",
            p.username
        ),
    ))
}

/// `SEC` and 64 hex characters: a secret as DingTalk shows it.
fn is_sec_hex(s: &str) -> bool {
    s.strip_prefix("SEC")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// When DingTalk last throttled the robot, and its pause if one runs.
fn throttling(id: &str, state: pacing::Throttling, now: i64) -> Check {
    let ago = |at: i64| format!("{} ago", crate::clock::duration(now - at));
    let last = match (state.last_at, state.paused_until) {
        (Some(at), _) => format!("last throttled {}", ago(at)),
        // Paused before ding-channel kept when: throttled, once at least.
        (None, Some(_)) => "when DingTalk last throttled it is not recorded".to_owned(),
        (None, None) => "never throttled".to_owned(),
    };
    match state.paused_until.filter(|until| *until > now) {
        Some(until) => warn(
            "throttling",
            format!("{id}: paused by DingTalk for another {} ({last})", crate::clock::duration(until - now)),
            format!("nothing to do now: its messages wait and go out when the pause ends; if it recurs, lower robot_rate_limit of send_dingbot or add robots of the group to its pool (extras.{POOL_KEY})"),
        ),
        None => ok("throttling", format!("{id}: {last}")),
    }
}

/// The field a member's keyword is read from.
fn keyword_field(m: &Member, f: &RobotFields) -> String {
    match m.id.rsplit_once('#') {
        Some((_, k)) => format!("extras.{POOL_KEY} (entry {k}) keyword"),
        None => f.keyword_field.clone(),
    }
}

/// A refused test message, the usual 310000 causes told apart.
fn robot_refused(m: &Member, f: &RobotFields, e: &DingTalkError, skew: Option<i64>) -> Check {
    let said = format!("{}: {}", m.id, answered(e));
    let sign_field = &m.robot.sign_field;
    match e.robot_security() {
        Some(RobotSecurity::Keyword) => match &m.keyword {
            Some(k) => fail(
                "keyword",
                format!("{said}: '{k}' is not one of the robot's keywords"),
                format!("set {} to one of the keywords in the robot's security settings (自定义关键词, case-sensitive)", keyword_field(m, f)),
            ),
            None => fail(
                "security mode",
                format!(
                    "{said}: the robot is secured by keywords (自定义关键词) and none is stored{}",
                    if m.robot.secret.is_some() {
                        " (the signature sent does not stand in for one)"
                    } else {
                        ""
                    }
                ),
                format!("store one of its keywords in {}", keyword_field(m, f)),
            ),
        },
        Some(RobotSecurity::Signature) if m.robot.secret.is_some() => fail(
            "signing secret",
            format!("{said}: the signature is not the robot's"),
            format!("copy the robot's current secret (加签, SEC…; it changes when reset) into {sign_field}"),
        ),
        Some(RobotSecurity::Signature) => fail(
            "security mode",
            format!("{said}: the robot is secured by a signature (加签) and no secret is stored, so the message went unsigned"),
            format!("store the robot's SEC… secret in {sign_field}"),
        ),
        Some(RobotSecurity::Timestamp) => fail(
            "clock",
            format!(
                "{said}: the signed timestamp is over an hour off DingTalk's clock{}",
                skew.map_or_else(String::new, |s| format!(" (this server's clock is {})", skew_words(s)))
            ),
            "set this server's clock right (NTP, chrony)",
        ),
        Some(RobotSecurity::Ip(ip)) => fail(
            "IP rule",
            format!(
                "{said}: the robot is secured by IP ranges (IP地址段) and this server's address{} is not in them",
                ip.map_or_else(String::new, |ip| format!(" {ip}"))
            ),
            "add this server's egress address to the robot's IP ranges, or send through DINGTALK_PROXY from an address they allow",
        ),
        Some(RobotSecurity::Other) | None if matches!(e.kind, Kind::Throttled | Kind::AntiAbuse) => warn("test message", said, e.explanation.clone()),
        Some(RobotSecurity::Other) | None => fail("test message", said, e.explanation.clone()),
    }
}

/// "2h 0m behind DingTalk's" for a skew of our clock minus DingTalk's.
fn skew_words(skew_ms: i64) -> String {
    let side = if skew_ms > 0 { "ahead of" } else { "behind" };
    format!(
        "{} {side} DingTalk's",
        crate::clock::duration(skew_ms.abs())
    )
}

fn test_text() -> String {
    format!(
        "ding-channel doctor: a test message, sent {}",
        super::format_ms(crate::clock::now_ms())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_each_fix_and_counts_failures() {
        let mut r = Report::default();
        r.add("g", ok("a", "fine"));
        r.add("g", fail("bb", "broken", "mend it"));
        r.add("h", warn("c", "odd", "look"));
        r.add("h", skip("d", "not asked", "pass --x"));
        assert_eq!((r.failed, r.warnings), (1, 1));
        assert_eq!(
            r.text(),
            "g\n  ok    a   fine\n  FAIL  bb  broken\n            fix: mend it\nh\n  warn  c   odd\n            fix: look\n  skip  d   not asked\n            hint: pass --x\n\n1 failed, 1 warning(s), 1 ok, 1 skipped: fix the FAIL lines first\n"
        );
    }

    #[test]
    fn a_skew_is_told_in_words_and_secrets_in_dingtalks_format() {
        assert_eq!(skew_words(-2 * HOUR_MS), "2h 0m behind DingTalk's");
        assert_eq!(skew_words(90_000), "1m 30s ahead of DingTalk's");
        assert!(is_sec_hex(&format!("SEC{}", "a1".repeat(32))));
        assert!(!is_sec_hex(&format!("SEC{}", "a1".repeat(31))));
        assert!(!is_sec_hex(&format!("SEC{}", "zz".repeat(32))));
    }

    #[test]
    fn an_answer_is_told_from_none_and_dingtalks_pause_is_a_warning() {
        let e = DingTalkError::bad_answer(Api::Token, 200, "the body is not a JSON object");
        assert_eq!(
            answered(&e),
            "an answer that is not DingTalk's JSON (http_200: the body is not a JSON object)"
        );
        let body = br#"{"status":1111,"wait":90,"punish":"deny"}"#;
        let e = crate::dingtalk::error::gateway_refusal(Api::Token, 200, false, body).unwrap();
        let c = refused("token", &e);
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.detail.ends_with("; it asks to wait 1m 30s"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn throttling_says_when_and_warns_only_during_a_pause() {
        let never = throttling("r", pacing::Throttling::default(), 1_000_000);
        assert_eq!(
            (never.status, never.detail.as_str()),
            (Status::Ok, "r: never throttled")
        );
        let past = pacing::Throttling {
            last_at: Some(0),
            paused_until: Some(600_000),
        };
        let c = throttling("r", past, 4 * HOUR_MS);
        assert_eq!(
            (c.status, c.detail.as_str()),
            (Status::Ok, "r: last throttled 4h 0m ago")
        );
        let unrecorded = pacing::Throttling {
            last_at: None,
            ..past
        };
        assert_eq!(
            throttling("r", unrecorded, 4 * HOUR_MS).detail,
            "r: when DingTalk last throttled it is not recorded"
        );
        let c = throttling("r", past, 60_000);
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            c.detail,
            "r: paused by DingTalk for another 9m 0s (last throttled 1m 0s ago)"
        );
    }
}
