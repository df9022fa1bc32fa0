//! `ding-channel doctor`, the real binary against the simulator set up to fail each way: each
//! run names the check that failed, the fix, and exits 1 on a failure (0 on warnings alone).
//! No run prints a secret.

use crate::helpers::*;
use ding_channel::simulator::{demo_config, Faults, SimRobot};
use serde_json::{json, Value};

const PHONE: &str = "13800000001";
const SETUP: &str = "config and database";
const APP_GROUP: &str = "DingTalk app";
const ROBOT: &str = "robot ops-robot";

struct Run {
    code: Option<i32>,
    checks: Vec<Value>,
}

impl Run {
    fn find(&self, group: &str, name: &str) -> Vec<&Value> {
        self.checks
            .iter()
            .filter(|c| c["group"] == group && c["name"] == name)
            .collect()
    }

    /// The check `group`/`name` with `status` whose detail holds `detail` and fix holds `fix`.
    #[track_caller]
    fn has(&self, group: &str, name: &str, status: &str, detail: &str, fix: &str) {
        let found = self.find(group, name);
        assert!(
            found.iter().any(|c| c["status"] == status
                && c["detail"].as_str().unwrap().contains(detail)
                && c["fix"].as_str().unwrap_or("").contains(fix)),
            "no {status} check {group}/{name} with {detail:?} and fix {fix:?} in {:#?}",
            self.checks
        );
    }

    fn failed(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| c["status"] == "fail")
            .map(|c| format!("{}/{}", c["group"], c["name"]))
            .collect()
    }
}

/// Runs `doctor --json ARGS` against the app's database and simulator.
async fn doctor(app: &TestApp, args: &[&str]) -> Run {
    let mut all = vec!["doctor", "--json"];
    all.extend_from_slice(args);
    read(app.cli_at_sim(&all).await)
}

/// Fails if a piece of a secret (any 12 characters of one, as a prefix shown would be) is in
/// the output.
fn no_secret(o: &std::process::Output) {
    let (out, err) = (stdout(o), stderr(o));
    let demo = demo_config();
    let robot = &demo.robots[0];
    for secret in [
        demo.apps[0].secret.as_str(),
        robot.token.as_str(),
        robot.secret.as_deref().unwrap(),
        APP_SECRET,
    ] {
        let chars: Vec<char> = secret.chars().collect();
        for piece in chars.windows(chars.len().min(12)) {
            let piece: String = piece.iter().collect();
            assert!(
                !out.contains(&piece) && !err.contains(&piece),
                "a piece ({piece}) of a secret printed:\n{out}\n{err}"
            );
        }
    }
}

fn read(o: std::process::Output) -> Run {
    no_secret(&o);
    let (out, err) = (stdout(&o), stderr(&o));
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let checks = report["checks"].as_array().unwrap().clone();
    assert_eq!(
        report["failed"].as_u64().unwrap() as usize,
        checks.iter().filter(|c| c["status"] == "fail").count()
    );
    let code = o.status.code();
    if code == Some(1) {
        assert!(err.contains("check(s) failed"), "{err}");
    }
    Run { code, checks }
}

fn conf(app: &TestApp, channel: &str, pairs: &[&str]) {
    let mut args = vec!["channels", "conf", channel];
    args.extend_from_slice(pairs);
    let out = app.cli(&args);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test]
async fn all_green_with_a_test_message_to_each_robot_and_the_person() {
    let app = TestApp::spawn().await;
    let run = doctor(&app, &["--phone", PHONE, "--send"]).await;
    assert_eq!(run.code, Some(0));
    let not_ok: Vec<&Value> = run.checks.iter().filter(|c| c["status"] != "ok").collect();
    assert!(not_ok.is_empty(), "{not_ok:#?}");
    for (group, name) in [
        (SETUP, "settings"),
        (SETUP, "database"),
        (SETUP, "migrations"),
        (SETUP, "channels"),
        (SETUP, "apps"),
        (SETUP, "DingTalk holds"),
        (APP_GROUP, "token"),
        (APP_GROUP, "clock"),
        (APP_GROUP, "robot code"),
        (APP_GROUP, "getbymobile"),
        (APP_GROUP, "test message"),
        (ROBOT, "token"),
        (ROBOT, "signing secret"),
        (ROBOT, "keyword"),
        (ROBOT, "throttling"),
        (ROBOT, "test message"),
    ] {
        assert_eq!(run.find(group, name).len(), 1, "{group}/{name}");
    }
    run.has(
        APP_GROUP,
        "getbymobile",
        "ok",
        "is DingTalk user alice-ding",
        "",
    );
    run.has(ROBOT, "test message", "ok", "ops-robot: sent, signed", "");
    let sent: Vec<(&str, String)> = app
        .sim
        .state
        .messages()
        .iter()
        .map(|m| (m.api, m.body.to_string()))
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(
        sent.iter()
            .all(|(_, body)| body.contains("ding-channel doctor")),
        "{sent:?}"
    );

    // The text report: one line per check, the summary, exit code 0.
    let o = app.cli_at_sim(&["doctor"]).await;
    no_secret(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.starts_with("config and database\n  ok    settings"),
        "{text}"
    );
    assert!(
        text.contains("  skip  getbymobile")
            && text.contains("hint: pass --phone")
            && text.contains("hint: add --send"),
        "{text}"
    );
    assert!(
        text.trim_end()
            .ends_with("0 failed, 0 warning(s), 14 ok, 2 skipped"),
        "{text}"
    );
}

#[test]
fn settings_that_do_not_load_are_a_failed_check() {
    let db = TestDb::new();
    let o = cli(
        &db.url,
        &repo_manifest(),
        &["doctor", "--json"],
        &[("DING_CHANNEL_BIND", "localhost")],
    );
    let run = read(o);
    assert_eq!(run.code, Some(1));
    run.has(
        SETUP,
        "settings",
        "fail",
        "DING_CHANNEL_BIND (environment): 'localhost' is not a socket address",
        "fix the key named",
    );
    assert_eq!(run.checks.len(), 1);
}

#[cfg(not(feature = "postgres"))]
#[test]
fn a_database_file_that_is_not_there_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.db");
    let url = format!("sqlite://{}", path.display());
    let run = read(cli(&url, &repo_manifest(), &["doctor", "--json"], &[]));
    assert_eq!(run.code, Some(1));
    run.has(
        SETUP,
        "database",
        "fail",
        "typo.db: no such file",
        "set DATABASE_URL",
    );
    assert!(!path.exists());
}

#[tokio::test]
async fn a_new_database_lacks_channels_apps_and_then_a_migration() {
    let db = TestDb::new();
    let o = cli(&db.url, &repo_manifest(), &["migrate"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = read(cli(&db.url, &repo_manifest(), &["doctor", "--json"], &[]));
    assert_eq!(run.code, Some(1));
    run.has(
        SETUP,
        "channels",
        "fail",
        "not registered: send_ding, send_dingtalk, send_dingbot, send_msg, get_msg_type",
        "ding-channel channels sync",
    );
    run.has(
        SETUP,
        "apps",
        "fail",
        "no app may call",
        "ding-channel apps add CODE",
    );
    run.has(
        ROBOTS_GROUP,
        "robot users",
        "skip",
        "none in the directory",
        "field qq",
    );

    for args in [
        &["channels", "sync"][..],
        &["channels", "disable", "send_ding"],
        &["apps", "add", "bk_monitor"],
    ] {
        let o = cli(&db.url, &repo_manifest(), args, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let run = read(cli(&db.url, &repo_manifest(), &["doctor", "--json"], &[]));
    run.has(
        SETUP,
        "channels",
        "warn",
        "disabled, calls to them are refused: send_ding",
        "channels enable send_ding",
    );
    run.has(SETUP, "apps", "ok", "1 may call: bk_monitor", "");
    run.has(
        APP_GROUP,
        "settings",
        "warn",
        "no app configured",
        "channels conf send_dingtalk ding_app_key=",
    );
    assert_eq!(run.code, Some(0), "warnings alone: {:?}", run.failed());

    // A migration this binary has that the database lacks.
    {
        use diesel::RunQueryDsl;
        let url = settings(&db.url, &repo_manifest(), &[]).storage.database;
        let store = ding_channel::db::Db::connect(&url, 1).unwrap();
        diesel::sql_query("DELETE FROM __diesel_schema_migrations WHERE version = (SELECT MAX(version) FROM __diesel_schema_migrations)")
            .execute(&mut *store.get().unwrap())
            .unwrap();
    }
    let run = read(cli(&db.url, &repo_manifest(), &["doctor", "--json"], &[]));
    assert_eq!(run.code, Some(1));
    run.has(
        SETUP,
        "migrations",
        "fail",
        "1 not applied: 2026-",
        "run `ding-channel migrate`",
    );
    assert!(
        run.find(SETUP, "channels").is_empty(),
        "the checks that read tables wait for it"
    );
}

const ROBOTS_GROUP: &str = "robots";

#[tokio::test]
async fn wrong_app_credentials_and_robot_code() {
    let app = TestApp::spawn().await;
    conf(&app, "send_dingtalk", &["ding_robot_code=dingsomeoneelse"]);
    let run = doctor(&app, &[]).await;
    assert_eq!(run.code, Some(1));
    run.has(
        APP_GROUP,
        "robot code",
        "fail",
        "dingsomeoneelse is not this app's robot: DingTalk answered invalidParameter.robotCode.auth",
        "set ding_robot_code to the RobotCode of the app's robot",
    );

    conf(&app, "send_dingtalk", &["ding_app_secret=not-the-secret"]);
    let run = doctor(&app, &[]).await;
    run.has(
        APP_GROUP,
        "credentials",
        "fail",
        "token: DingTalk answered invalidClientIdOrSecret",
        "check ding_app_key and ding_app_secret",
    );
    assert!(
        run.find(APP_GROUP, "robot code").is_empty(),
        "nothing more is asked without a token"
    );
}

#[tokio::test]
async fn permissions_the_app_lacks_are_named_as_dingtalk_names_them() {
    let app = TestApp::spawn().await;
    app.sim.state.configure(|c| {
        c.security.app_lacks = vec![
            "qyapi_robot_sendmsg".into(),
            "qyapi_get_member_by_mobile".into(),
        ];
    });
    let run = doctor(&app, &["--phone", PHONE]).await;
    assert_eq!(run.code, Some(1));
    run.has(
        APP_GROUP,
        "permission",
        "fail",
        "robot code: DingTalk answered Forbidden.AccessDenied.AccessTokenPermissionDenied",
        "lacks the permission qyapi_robot_sendmsg (as DingTalk names it)",
    );
    run.has(
        APP_GROUP,
        "permission",
        "fail",
        "getbymobile: DingTalk answered 88/60011",
        "lacks the permission qyapi_get_member_by_mobile (as DingTalk names it)",
    );
}

#[tokio::test]
async fn this_servers_ip_outside_the_apps_whitelist_is_named() {
    let app = TestApp::spawn().await;
    app.sim
        .state
        .configure(|c| c.security.app_ips = vec!["203.0.113.9".into()]);
    let run = doctor(&app, &["--phone", PHONE]).await;
    assert_eq!(run.code, Some(1));
    run.has(
        APP_GROUP,
        "IP whitelist",
        "fail",
        "getbymobile: DingTalk answered 60020",
        "this server's IP 127.0.0.1 (as DingTalk saw it) is not in the DingTalk app's IP whitelist",
    );

    let run = doctor(&app, &[]).await;
    run.has(
        APP_GROUP,
        "getbymobile",
        "skip",
        "no test phone given",
        "the app's IP whitelist",
    );
}

#[tokio::test]
async fn work_notifications_check_the_agent_id_and_send_as_work_notices() {
    let app = TestApp::spawn().await;
    conf(
        &app,
        "send_dingtalk",
        &["single_chat_mode=work_notice", "ding_agent_id=3000000001"],
    );
    let run = doctor(&app, &["--phone", PHONE, "--send", "--robot", "ops-robot"]).await;
    assert_eq!(run.code, Some(0), "{:?}", run.failed());
    run.has(
        APP_GROUP,
        "agent id",
        "ok",
        "DingTalk took AgentId 3000000001",
        "",
    );
    run.has(APP_GROUP, "test message", "ok", "reached alice-ding", "");
    assert!(run.find(APP_GROUP, "robot code").is_empty());
    assert!(app
        .sim
        .state
        .messages()
        .iter()
        .any(|m| m.api == "work_notice"));

    conf(&app, "send_dingtalk", &["ding_agent_id=42"]);
    let run = doctor(&app, &[]).await;
    assert_eq!(run.code, Some(1));
    run.has(
        APP_GROUP,
        "agent id",
        "fail",
        "DingTalk answered 60011",
        "fix ding_agent_id",
    );
}

/// A robot user of its own with a robot the simulator knows.
fn robot_user(app: &TestApp, name: &str, profile: Value, sim_robot: SimRobot) {
    app.sim.state.configure(|c| c.robots.push(sim_robot));
    let mut row = profile;
    row["username"] = name.into();
    app.import_users(&format!("{row}\n"));
}

fn hex(c: char) -> String {
    c.to_string().repeat(64)
}

#[tokio::test]
async fn a_keyword_secured_robot_without_its_keyword() {
    let app = TestApp::spawn().await;
    let group = "robot kw-robot";
    robot_user(
        &app,
        "kw-robot",
        json!({"qq": hex('a'), "wx_userid": format!("SEC{}", hex('f'))}),
        SimRobot {
            name: "kw".into(),
            token: hex('a'),
            secret: None,
            keyword: Some("告警".into()),
        },
    );
    let run = doctor(&app, &["--robot", "kw-robot", "--send"]).await;
    assert_eq!(run.code, Some(1));
    // DingTalk's current wording.
    run.has(
        group,
        "security mode",
        "fail",
        "kw-robot: DingTalk answered 310000 \"description:关键词不匹配;",
        "",
    );
    run.has(group, "security mode", "fail", "\": the robot is secured by keywords (自定义关键词) and none is stored (the signature sent does not stand in for one)", "store one of its keywords in extras.keyword");
    assert!(run.find(ROBOT, "token").is_empty(), "only the robot named");

    app.import_users(&format!(
        "{}\n",
        json!({"username": "kw-robot", "qq": hex('a'), "extras": {"keyword": "alert"}})
    ));
    let run = doctor(&app, &["--robot", "kw-robot", "--send"]).await;
    run.has(
        group,
        "keyword",
        "fail",
        "'alert' is not one of the robot's keywords",
        "set extras.keyword to one of the keywords",
    );

    app.import_users(&format!(
        "{}\n",
        json!({"username": "kw-robot", "qq": hex('a'), "extras": {"keyword": "告警"}})
    ));
    let run = doctor(&app, &["--robot", "kw-robot", "--send"]).await;
    assert_eq!(run.code, Some(0), "{:?}", run.failed());
    run.has(group, "keyword", "ok", "'告警' (field extras.keyword)", "");
    run.has(group, "test message", "ok", "kw-robot: sent, unsigned", "");
}

#[tokio::test]
async fn a_signed_robot_with_no_secret_or_a_wrong_one_stored() {
    let app = TestApp::spawn().await;
    let group = "robot signed-robot";
    let secret = format!("SEC{}", hex('c'));
    robot_user(
        &app,
        "signed-robot",
        json!({"qq": hex('b')}),
        SimRobot {
            name: "signed".into(),
            token: hex('b'),
            secret: Some(secret.clone()),
            keyword: None,
        },
    );
    let run = doctor(&app, &["--robot", "signed-robot", "--send"]).await;
    assert_eq!(run.code, Some(1));
    run.has(
        group,
        "security mode",
        "fail",
        "the robot is secured by a signature (加签) and no secret is stored",
        "store the robot's SEC… secret in wx_userid",
    );

    let wrong = format!("SEC{}", hex('d'));
    app.import_users(&format!(
        "{}\n",
        json!({"username": "signed-robot", "qq": hex('b'), "wx_userid": wrong})
    ));
    let run = doctor(&app, &["--robot", "signed-robot", "--send"]).await;
    run.has(
        group,
        "signing secret",
        "fail",
        "签名不匹配;solution:请确认签名和生成签名的时间戳必须都放在调用的网址中，请确认机器人的密钥加密和填写正确;\": the signature is not the robot's",
        "copy the robot's current secret (加签, SEC…; it changes when reset) into wx_userid",
    );
    for c in &run.checks {
        assert!(
            !c.to_string().contains(&wrong[3..20]),
            "the secret printed: {c}"
        );
    }
}

#[tokio::test]
async fn an_ip_secured_robot_refuses_this_servers_address() {
    let app = TestApp::spawn().await;
    app.sim.state.configure(|c| {
        c.security
            .robot_ips
            .insert("ops-robot".into(), vec!["203.0.113.9".into()]);
    });
    let run = doctor(&app, &["--robot", "ops-robot", "--send"]).await;
    assert_eq!(run.code, Some(1));
    run.has(
        ROBOT,
        "IP rule",
        "fail",
        "secured by IP ranges (IP地址段) and this server's address is not in them",
        "add this server's egress address to the robot's IP ranges",
    );
}

#[tokio::test]
async fn a_clock_two_hours_off_dingtalks() {
    let app = TestApp::spawn().await;
    app.sim
        .state
        .configure(|c| c.security.clock_offset_ms = -2 * 3_600_000);
    let run = doctor(&app, &["--robot", "ops-robot", "--send"]).await;
    assert_eq!(run.code, Some(1));
    run.has(
        APP_GROUP,
        "clock",
        "fail",
        "this server's clock is 2h 0m ahead of DingTalk's",
        "set the clock right (NTP, chrony)",
    );
    run.has(ROBOT, "clock", "fail", "签名过期;solution:签名生成时间和发送时间请保持在 timestampms 以内;\": the signed timestamp is over an hour off DingTalk's clock (this server's clock is 2h 0m ahead of DingTalk's)", "NTP");

    app.sim
        .state
        .configure(|c| c.security.clock_offset_ms = 5 * 60_000);
    let run = doctor(&app, &["--robot", "ops-robot", "--send"]).await;
    assert_eq!(run.code, Some(0), "{:?}", run.failed());
    run.has(
        APP_GROUP,
        "clock",
        "warn",
        "behind DingTalk's",
        "keep the clock synchronised",
    );
}

#[tokio::test]
async fn a_throttled_robot_shows_its_pause_as_a_warning() {
    let app = TestApp::spawn().await;
    app.sim
        .state
        .set_faults(Faults::errcode(410100, &["robot_send"]).times(1));
    let env = app
        .post(
            "send_dingbot",
            json!({"receiver__username": "ops-robot", "content": "disk full"}),
        )
        .await;
    assert_eq!(env["data"]["deliveries"][0]["status"], "queued", "{env}");
    let run = doctor(&app, &["--robot", "ops-robot"]).await;
    assert_eq!(
        run.code,
        Some(0),
        "a pause alone is a warning: {:?}",
        run.failed()
    );
    run.has(
        ROBOT,
        "throttling",
        "warn",
        "ops-robot: paused by DingTalk for another 9m",
        "lower robot_rate_limit of send_dingbot or add robots of the group to its pool",
    );
    run.has(ROBOT, "throttling", "warn", "(last throttled ", "");

    let sent = app.sim.state.messages().len();
    let run = doctor(&app, &["--robot", "ops-robot", "--send"]).await;
    assert_eq!(run.code, Some(0), "{:?}", run.failed());
    run.has(
        ROBOT,
        "test message",
        "warn",
        "ops-robot: not sent, waiting for a send slot: DingTalk paused this robot after throttling it",
        "once the robot has a free slot",
    );
    assert_eq!(
        app.sim.state.messages().len(),
        sent,
        "nothing sent during the pause"
    );
}

#[tokio::test]
async fn malformed_robot_users_name_the_field() {
    let app = TestApp::spawn().await;
    let mut bad = ding_channel::directory::store::get(&mut app.db.get().unwrap(), "ops-robot")
        .unwrap()
        .unwrap();
    bad.wx_userid = Some("SEC-short".into());
    bad.extras.insert("robots".into(), json!([{"token": "x"}]));
    ding_channel::directory::store::upsert(
        &mut app.db.get().unwrap(),
        &[bad],
        ding_channel::directory::profile::ProfileSource::File,
    )
    .unwrap();
    let run = doctor(&app, &["--robot", "ops-robot", "--robot", "ghost"]).await;
    assert_eq!(run.code, Some(1));
    run.has(
        ROBOT,
        "signing secret",
        "fail",
        "field wx_userid: malformed (expected SEC followed by letters and digits)",
        "copy the robot's secret (加签, SEC…) into field wx_userid",
    );
    run.has(
        "robot ghost",
        "robot user",
        "fail",
        "no user named ghost",
        "ding-channel users list",
    );

    let mut odd = ding_channel::directory::store::get(&mut app.db.get().unwrap(), "ops-robot")
        .unwrap()
        .unwrap();
    odd.qq = Some("not-hex-but-a-token-0123".into());
    odd.wx_userid = demo_config().robots[0].secret.clone();
    ding_channel::directory::store::upsert(
        &mut app.db.get().unwrap(),
        &[odd],
        ding_channel::directory::profile::ProfileSource::File,
    )
    .unwrap();
    let run = doctor(&app, &["--robot", "ops-robot"]).await;
    run.has(
        ROBOT,
        "token",
        "warn",
        "no****23 is not the 64 hex characters DingTalk issues",
        "field qq holds the whole access_token= value",
    );
    run.has(
        ROBOT,
        "pool",
        "warn",
        "left out of the pool: extras.robots entry 1: malformed token (expected the access_token= value of the webhook URL); sending by ops-robot",
        "fix or remove what is left out of extras.robots",
    );
    assert_eq!(run.code, Some(0), "{:?}", run.failed());
}

/// Now in Unix milliseconds: the doctor reads the real clock.
fn real_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn during_dingtalks_pause_nothing_is_asked_of_dingtalk() {
    use ding_channel::dingtalk::egress::{Hold, Scope};
    let app = TestApp::spawn().await;
    let pause = Hold {
        scope: Scope::Pause,
        until: real_now() + 600_000,
        code: "1111".into(),
        message: "punish deny, wait 600".into(),
    };
    ding_channel::outbox::egress::keep(&mut app.db.get().unwrap(), &pause, 0, real_now()).unwrap();
    let run = doctor(&app, &["--phone", PHONE, "--send"]).await;
    assert_eq!(
        run.code,
        Some(0),
        "a pause is a warning: {:?}",
        run.failed()
    );
    run.has(
        SETUP,
        "DingTalk holds",
        "warn",
        "asked this server to slow down (anti-abuse",
        "the doctor does not call DingTalk meanwhile",
    );
    run.has(
        SETUP,
        "DingTalk holds",
        "warn",
        "(DingTalk answered 1111",
        "",
    );
    run.has(APP_GROUP, "token", "skip", "not asked: DingTalk holds", "");
    run.has(
        ROBOT,
        "test message",
        "skip",
        "ops-robot: not sent, DingTalk holds every call",
        "",
    );
    assert!(
        app.sim.state.stats().requests.is_empty(),
        "{:?}",
        app.sim.state.stats().requests
    );
}

#[tokio::test]
async fn dingtalks_anti_abuse_answer_is_a_warning_kept_for_every_process() {
    use ding_channel::simulator::Impolite;
    let app = TestApp::spawn().await;
    app.sim.state.set_faults(Faults::impolite(
        Impolite::AntiAbuse { wait_s: 30 },
        &["token"],
    ));
    let run = doctor(&app, &["--robot", "ops-robot", "--send"]).await;
    assert_eq!(run.code, Some(0), "{:?}", run.failed());
    run.has(
        APP_GROUP,
        "token",
        "warn",
        "token: DingTalk answered 1111 \"punish deny, wait 30\"; it asks to wait 30s",
        "anti-abuse",
    );
    run.has(
        ROBOT,
        "test message",
        "skip",
        "DingTalk holds every call",
        "",
    );
    assert_eq!(app.sim.state.stats().requests.get("robot_send"), None);
    let kept = ding_channel::outbox::egress::holds(&mut app.db.get().unwrap()).unwrap();
    assert!(
        kept.iter()
            .any(|h| h.hold.code == "1111" && h.hold.until > real_now()),
        "{kept:?}"
    );
}

#[tokio::test]
async fn the_doctors_calls_are_counted() {
    let app = TestApp::spawn().await;
    let run = doctor(&app, &["--robot", "ops-robot", "--send"]).await;
    assert_eq!(run.code, Some(0), "{:?}", run.failed());
    let calls = ding_channel::outbox::egress::calls_since(&mut app.db.get().unwrap(), "").unwrap();
    let of = |api: &str| {
        calls
            .iter()
            .filter(|c| c.1 == api)
            .map(|c| c.2)
            .sum::<i64>()
    };
    assert_eq!(
        (of("token"), of("read_status"), of("robot_send")),
        (1, 1, 1),
        "{calls:?}"
    );
}

#[tokio::test]
async fn an_unmigrated_database_is_named_and_left_as_it_is() {
    use ding_channel::config::DatabaseUrl;
    let db = TestDb::new();
    let url = settings(&db.url, &repo_manifest(), &[]).storage.database;
    if let DatabaseUrl::Sqlite(path) = &url {
        std::fs::write(path, b"").unwrap();
    }
    // A base URL with a password: shown without it.
    let base = "http://doctor:s3cr3t-pass@127.0.0.1:9/";
    let env = [("DINGTALK_OAPI_BASE", base)];
    let o = cli(&db.url, &repo_manifest(), &["doctor"], &env);
    assert!(!stdout(&o).contains("s3cr3t"), "{}", stdout(&o));
    let run = read(cli(&db.url, &repo_manifest(), &["doctor", "--json"], &env));
    assert_eq!(run.code, Some(1));
    run.has(
        SETUP,
        "settings",
        "ok",
        "DingTalk http://127.0.0.1:9 and",
        "",
    );
    run.has(
        SETUP,
        "migrations",
        "fail",
        "is not a ding-channel database: it has no table of migrations",
        "`ding-channel migrate`",
    );
    assert!(run.find(SETUP, "channels").is_empty());
    match &url {
        DatabaseUrl::Sqlite(path) => {
            assert_eq!(std::fs::metadata(path).unwrap().len(), 0, "nothing written");
            let wal = path.with_extension("db-wal");
            assert!(!wal.exists(), "not switched to WAL");
        }
        DatabaseUrl::Postgres(_) => {
            use diesel::RunQueryDsl;
            #[derive(diesel::QueryableByName)]
            struct Count {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                n: i64,
            }
            let store = ding_channel::db::Db::connect(&url, 1).unwrap();
            let tables: Count = diesel::sql_query(
                "SELECT count(*) AS n FROM pg_catalog.pg_tables WHERE schemaname = 'public'",
            )
            .get_result(&mut *store.get().unwrap())
            .unwrap();
            assert_eq!(tables.n, 0, "no table created");
        }
    }
}

#[tokio::test]
async fn a_probe_refused_otherwise_than_for_its_made_up_key_proves_nothing() {
    let app = TestApp::spawn().await;
    app.sim
        .state
        .set_faults(Faults::http(400, &["read_status"]));
    let run = doctor(&app, &[]).await;
    assert_eq!(run.code, Some(0), "{:?}", run.failed());
    run.has(
        APP_GROUP,
        "robot code",
        "warn",
        "not proven: DingTalk answered InjectedFault",
        "--send sends that person a test message",
    );

    conf(
        &app,
        "send_dingtalk",
        &["single_chat_mode=work_notice", "ding_agent_id=3000000001"],
    );
    app.sim
        .state
        .set_faults(Faults::errcode(400002, &["getsendresult"]));
    let run = doctor(&app, &[]).await;
    assert_eq!(run.code, Some(0), "{:?}", run.failed());
    run.has(
        APP_GROUP,
        "agent id",
        "warn",
        "not proven: DingTalk answered 400002",
        "proves it",
    );
}

#[tokio::test]
async fn a_robot_throttled_by_the_test_message_is_paused_as_the_sender_pauses_it() {
    let app = TestApp::spawn().await;
    app.sim
        .state
        .set_faults(Faults::errcode(410100, &["robot_send"]).times(1));
    let before = real_now();
    let run = doctor(&app, &["--robot", "ops-robot", "--send"]).await;
    run.has(
        ROBOT,
        "test message",
        "warn",
        "DingTalk answered 410100",
        "throttled",
    );
    let state =
        ding_channel::senders::robot::pacing::throttling(&mut app.db.get().unwrap(), "ops-robot")
            .unwrap();
    assert!(state.last_at.is_some_and(|at| at >= before), "{state:?}");
    assert!(
        state.paused_until.is_some_and(|u| u >= before + 590_000),
        "{state:?}"
    );
}

#[tokio::test]
async fn a_pool_is_reported_as_the_robot_sender_reads_it() {
    let app = TestApp::spawn().await;
    let set_pool = |pool: Value| {
        let mut p = ding_channel::directory::store::get(&mut app.db.get().unwrap(), "ops-robot")
            .unwrap()
            .unwrap();
        p.extras.insert("robots".into(), pool);
        ding_channel::directory::store::upsert(
            &mut app.db.get().unwrap(),
            &[p],
            ding_channel::directory::profile::ProfileSource::File,
        )
        .unwrap();
    };
    set_pool(json!([{"token": demo_config().robots[0].token}]));
    let run = doctor(&app, &["--robot", "ops-robot"]).await;
    run.has(
        ROBOT,
        "pool",
        "warn",
        "extras.robots entry 1: the same robot (token) as ops-robot; sending by ops-robot",
        "",
    );

    // A pool that is not a list is left out; the robot's own robot still sends.
    set_pool(json!("oops"));
    let run = doctor(&app, &["--robot", "ops-robot", "--send"]).await;
    assert_eq!(run.code, Some(0), "{:?}", run.failed());
    run.has(ROBOT, "pool", "warn", "extras.robots is not a list", "");
    run.has(ROBOT, "throttling", "ok", "ops-robot: never throttled", "");
    run.has(ROBOT, "test message", "ok", "ops-robot: sent, signed", "");
}
