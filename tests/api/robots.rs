//! Robot users beyond one signed robot: keyword-secured robots (every call carries the
//! keyword, as DingTalk checks) and robot pools (sends spread over more robots of the group,
//! a throttled or refused one skipped). Time is the shared manual clock; nothing sleeps.

use crate::helpers::*;
use ding_channel::clock::Clock;
use ding_channel::simulator::{Faults, SimMessage, SimRobot};
use serde_json::{json, Value};

const KEYWORD: &str = "告警";

fn token(c: char) -> String {
    c.to_string().repeat(64)
}

/// Registers unsigned (keyword/IP-secured) robots with the simulator.
fn sim_robots(app: &TestApp, robots: &[(&str, String, Option<&str>)]) {
    app.sim.state.configure(|c| {
        for (name, token, keyword) in robots {
            c.robots.push(SimRobot {
                name: name.to_string(),
                token: token.clone(),
                secret: None,
                keyword: keyword.map(str::to_owned),
            });
        }
    });
}

fn conf(app: &TestApp, pairs: &[&str]) {
    let mut args = vec!["channels", "conf", "send_dingbot"];
    args.extend_from_slice(pairs);
    let out = app.cli(&args);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The text a robot's keyword check reads in a webhook body.
fn text_of(m: &SimMessage) -> &str {
    let kind = m.body["msgtype"].as_str().unwrap();
    let part = &m.body[kind];
    part["text"]
        .as_str()
        .or(part["content"].as_str())
        .unwrap_or_default()
}

fn robot_sends(app: &TestApp) -> Vec<SimMessage> {
    app.sim
        .state
        .messages()
        .into_iter()
        .filter(|m| m.api == "robot_send")
        .collect()
}

async fn send(app: &TestApp, robot: &str, content: &str) -> Value {
    let env = app
        .post(
            "send_dingbot",
            json!({"receiver__username": robot, "content": content}),
        )
        .await;
    assert_eq!(env["result"], true, "{env}");
    env
}

fn status(env: &Value) -> (&str, &str) {
    let d = &env["data"]["deliveries"][0];
    (
        d["status"].as_str().unwrap(),
        d["error"].as_str().unwrap_or_default(),
    )
}

/// Moves time in steps of 3 s, delivering what is due, until nothing is queued.
async fn drain_over_time(app: &TestApp, max_steps: usize) {
    for _ in 0..max_steps {
        app.drain().await;
        let depth = ding_channel::outbox::store::queue_depth(&mut app.db.get().unwrap()).unwrap();
        if depth == 0 {
            return;
        }
        app.clock.advance_ms(3_000);
    }
    panic!("the queue did not drain in {max_steps} steps");
}

/// The delivery log's attempts of the message `env` answered for.
async fn history(app: &TestApp, env: &Value) -> Vec<Value> {
    let id = env["data"]["message_id"].as_str().unwrap();
    let (code, log) = app
        .get(&format!(
            "/api/v1/messages/{id}?bk_app_code={APP}&bk_app_secret={APP_SECRET}"
        ))
        .await;
    assert_eq!(code, 200, "{log}");
    log["data"]["deliveries"][0]["history"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_keyword_robot_gets_its_keyword_in_every_message_digest_and_part() {
    let app = TestApp::spawn().await;
    let kw_token = token('e');
    sim_robots(&app, &[("kw-robot", kw_token.clone(), Some(KEYWORD))]);
    app.import_users(&format!(
        "{{\"username\":\"kw-robot\",\"qq\":\"{kw_token}\",\"extras\":{{\"keyword\":\"{KEYWORD}\"}}}}\n\
         {{\"username\":\"no-keyword\",\"qq\":\"{kw_token}\"}}"
    ));
    // The simulator refuses a message without the keyword, as DingTalk does.
    let env = app
        .post(
            "send_dingbot",
            json!({"receiver__username": "no-keyword", "content": "disk full"}),
        )
        .await;
    assert_refused(
        &env,
        1306201,
        "robot of user no-keyword is secured by keywords and the message holds none of them",
    );
    assert_eq!(app.sim.state.stats().refusals["robot_send:310000"], 1);
    // One send at a time, so what waits goes in digests.
    conf(&app, &["robot_limits=kw-robot:20/60/1"]);

    assert_eq!(status(&send(&app, "kw-robot", "disk full").await).0, "sent");
    assert_eq!(
        text_of(robot_sends(&app).last().unwrap()),
        format!("disk full\n\n{KEYWORD}")
    );
    app.clock.advance_ms(3_000);
    let has_it = format!("[{KEYWORD}] cpu high");
    assert_eq!(status(&send(&app, "kw-robot", &has_it).await).0, "sent");
    assert_eq!(
        text_of(robot_sends(&app).last().unwrap()),
        has_it,
        "added only when missing"
    );

    for i in 0..3 {
        assert_eq!(
            status(&send(&app, "kw-robot", &format!("queued-{i}")).await).0,
            "queued"
        );
    }
    // A text whose body is just under the limit: with the keyword it no longer fits, so it
    // goes in parts, each with the keyword.
    let base = ding_channel::dingtalk::Message::Text {
        content: String::new(),
    }
    .to_webhook(&Default::default())
    .unwrap()
    .to_string()
    .len();
    let near_limit = "x".repeat(20_000 - base - 2);
    assert_eq!(
        status(&send(&app, "kw-robot", &near_limit).await).0,
        "queued"
    );
    drain_over_time(&app, 20).await;

    let sends = robot_sends(&app);
    let later = &sends[2..];
    let digest = &later[0];
    assert!(
        digest.body["markdown"]["title"]
            .as_str()
            .unwrap()
            .starts_with("3 alerts — "),
        "{:?}",
        digest.body
    );
    let parts = &later[1..];
    assert_eq!(parts.len(), 2, "the near-limit text in parts");
    for (k, part) in parts.iter().enumerate() {
        assert!(text_of(part).starts_with(&format!("({}/2)", k + 1)));
        assert!(part.body.to_string().len() <= 20_000);
    }
    for m in later {
        assert!(text_of(m).contains(KEYWORD), "{:?}", m.body);
    }
    assert_eq!(
        app.sim.state.stats().refusals.len(),
        1,
        "only the robot user without the keyword was refused"
    );
}

/// A robot user with its own robot `pool-0` and pool members `pool-1`, `pool-2`.
fn pool_of_three(app: &TestApp) {
    let tokens = [token('1'), token('2'), token('3')];
    sim_robots(
        app,
        &[
            ("pool-0", tokens[0].clone(), None),
            ("pool-1", tokens[1].clone(), None),
            ("pool-2", tokens[2].clone(), Some(KEYWORD)),
        ],
    );
    app.import_users(&format!(
        "{{\"username\":\"pool-robot\",\"qq\":\"{}\",\"extras\":{{\"robots\":[{{\"token\":\"{}\"}},{{\"token\":\"{}\",\"keyword\":\"{KEYWORD}\"}}]}}}}",
        tokens[0], tokens[1], tokens[2]
    ));
}

fn count_by(sends: &[SimMessage], robot: &str) -> usize {
    sends.iter().filter(|m| m.target == robot).count()
}

#[tokio::test]
async fn a_pool_of_three_sends_60_messages_in_one_minute_without_waiting() {
    let app = TestApp::spawn().await;
    pool_of_three(&app);
    // Each robot may send its 20 of the minute at once.
    conf(&app, &["robot_burst=20"]);
    let mut envs = vec![];
    for i in 0..60 {
        let env = send(&app, "pool-robot", &format!("alert-{i}")).await;
        assert_eq!(status(&env), ("sent", ""), "message {i}: {env}");
        envs.push(env);
    }
    let sends = robot_sends(&app);
    assert_eq!(sends.len(), 60);
    for robot in ["pool-0", "pool-1", "pool-2"] {
        assert_eq!(count_by(&sends, robot), 20, "{robot}");
    }
    assert_eq!(app.sim.state.stats().throttled, 0);
    assert!(sends
        .iter()
        .filter(|m| m.target == "pool-2")
        .all(|m| text_of(m).contains(KEYWORD)));
    // The delivery log says which robot of the pool sent each message.
    let mut by: Vec<String> = vec![];
    for env in &envs[..3] {
        by.push(
            history(&app, env).await[0]["error"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    by.sort();
    assert_eq!(by, ["by pool-robot", "by pool-robot#1", "by pool-robot#2"]);
    // Every robot's minute is full: the next one waits for a slot, as a lone robot's does.
    let more = send(&app, "pool-robot", "one more").await;
    let (state, why) = status(&more);
    assert_eq!(state, "queued");
    assert!(why.starts_with("waiting for a send slot"), "{why}");
}

#[tokio::test]
async fn a_throttled_pool_member_is_skipped_and_the_others_keep_sending() {
    let app = TestApp::spawn().await;
    pool_of_three(&app);
    app.sim
        .state
        .set_faults(Faults::errcode(410100, &["robot_send"]).times(1));
    let first = send(&app, "pool-robot", "first").await;
    assert_eq!(status(&first), ("sent", ""), "{first}");
    assert_eq!(
        robot_sends(&app)[0].target,
        "pool-1",
        "sent by the next robot: {:?}",
        app.sim.state.stats()
    );
    let notes: Vec<&str> = vec!["by pool-robot#1"];
    let h = history(&app, &first).await;
    assert_eq!(
        h.iter()
            .map(|a| a["error"].as_str().unwrap())
            .collect::<Vec<_>>(),
        notes
    );
    for i in 0..6 {
        let env = send(&app, "pool-robot", &format!("later-{i}")).await;
        assert_eq!(status(&env).0, "sent", "{env}");
    }
    let sends = robot_sends(&app);
    assert_eq!(
        count_by(&sends, "pool-0"),
        0,
        "the throttled robot is paused"
    );
    assert!(count_by(&sends, "pool-1") >= 3 && count_by(&sends, "pool-2") >= 3);
    // Its pause is in the database, for every process.
    let paused: i64 = {
        use diesel::prelude::*;
        use ding_channel::db::schema::robot_state::dsl::*;
        robot_state
            .find("pool-robot")
            .select(paused_until)
            .get_result(&mut *app.db.get().unwrap())
            .unwrap()
    };
    assert!(paused >= app.clock.now_ms() + 590_000, "{paused}");
}

#[tokio::test]
async fn a_pool_member_with_a_bad_token_is_skipped() {
    let app = TestApp::spawn().await;
    let tokens = [token('4'), token('5'), token('6')];
    // The robot user's own token is not a robot DingTalk knows (300001).
    sim_robots(
        &app,
        &[
            ("pool-1", tokens[1].clone(), None),
            ("pool-2", tokens[2].clone(), None),
        ],
    );
    app.import_users(&format!(
        "{{\"username\":\"pool-robot\",\"qq\":\"{}\",\"extras\":{{\"robots\":[{{\"token\":\"{}\"}},{{\"token\":\"{}\"}}]}}}}",
        tokens[0], tokens[1], tokens[2]
    ));
    for i in 0..4 {
        let env = send(&app, "pool-robot", &format!("alert-{i}")).await;
        assert_eq!(status(&env).0, "sent", "{env}");
    }
    let stats = app.sim.state.stats();
    assert_eq!(
        stats.refusals["robot_send:300001"], 1,
        "tried once, then left out: {stats:?}"
    );
    let sends = robot_sends(&app);
    assert_eq!(count_by(&sends, "pool-1") + count_by(&sends, "pool-2"), 4);
}

#[tokio::test]
async fn when_every_pool_member_is_paused_deliveries_wait_as_for_one_robot() {
    let app = TestApp::spawn().await;
    pool_of_three(&app);
    app.sim
        .state
        .set_faults(Faults::errcode(410100, &["robot_send"]).times(3));
    let env = send(&app, "pool-robot", "first").await;
    let (state, why) = status(&env);
    assert_eq!(state, "queued", "{env}");
    assert!(why.contains("throttled"), "{why}");
    assert!(robot_sends(&app).is_empty());
    let again = send(&app, "pool-robot", "second").await;
    assert_eq!(status(&again).0, "queued", "known to be paused: {again}");
    // Nothing goes before the pause ends; then both go, merged.
    app.clock.advance_ms(300_000);
    app.drain().await;
    assert!(robot_sends(&app).is_empty());
    app.clock.advance_ms(301_000);
    drain_over_time(&app, 5).await;
    let sends = robot_sends(&app);
    assert_eq!(sends.len(), 1, "one digest");
    assert!(text_of(&sends[0]).contains("first") && text_of(&sends[0]).contains("second"));
}

#[tokio::test]
async fn a_pool_is_checked_at_import_and_its_credentials_are_masked() {
    let app = TestApp::spawn_plain().await;
    let (own, member) = (token('7'), token('8'));
    let secret = "SEC0123456789abcdef0123456789abcdef";
    let file = |name: &str, robots: Value| {
        let p = app.test_db.dir.path().join(name);
        let row = json!({"username": "pool-robot", "qq": own, "extras": {"robots": robots}});
        std::fs::write(&p, format!("{row}\n")).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let bad = file(
        "bad.jsonl",
        json!([{"token": member, "secret": secret}, {"token": "not a token", "secret": secret}]),
    );
    let out = app.cli(&["users", "import", &bad]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("row 1: extras: robots entry 2: malformed token (expected the access_token= value of the webhook URL)"),
        "{err}"
    );
    assert!(
        !err.contains("not a token") && !err.contains(secret),
        "{err}"
    );

    let good = file(
        "good.jsonl",
        json!([{"token": member, "secret": secret, "keyword": KEYWORD}]),
    );
    assert!(app.cli(&["users", "import", &good]).status.success());
    let shown = stdout(&app.cli(&["users", "show", "pool-robot"]));
    assert!(
        !shown.contains(&member) && !shown.contains(secret),
        "{shown}"
    );
    assert!(
        shown.contains("88****88") && shown.contains(KEYWORD),
        "{shown}"
    );
}

#[tokio::test]
async fn the_real_binary_logs_why_a_pool_member_is_left_out_never_its_token() {
    let db = TestDb::new();
    let sim = real_time_simulator();
    let (own, member) = (token('4'), token('5'));
    // The robot user's own token is not a robot DingTalk knows (300001).
    sim.state.configure(|c| {
        c.robots.push(SimRobot {
            name: "pool-1".into(),
            token: member.clone(),
            secret: None,
            keyword: None,
        })
    });
    let server = serve(&db.url, &sim.base_url(), &[]);
    seeded(&db);
    let users = db.dir.path().join("pool.jsonl");
    let row =
        json!({"username": "pool-robot", "qq": own, "extras": {"robots": [{"token": member}]}});
    std::fs::write(&users, format!("{row}\n")).unwrap();
    let out = cli(
        &db.url,
        &repo_manifest(),
        &["users", "import", users.to_str().unwrap()],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/send_dingbot/", server.url))
        .json(&json!({"bk_app_code": APP, "bk_app_secret": APP_SECRET, "receiver__username": "pool-robot", "content": "disk full"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["data"]["deliveries"][0]["status"], "sent",
        "{answer}"
    );
    wait_until(
        "the refusal is logged",
        std::time::Duration::from_secs(10),
        || server.logged("DingTalk refused a robot of the pool"),
    )
    .await;
    let log = server.stop();
    let line = log
        .lines()
        .find(|l| l.contains("DingTalk refused a robot of the pool"))
        .unwrap();
    assert!(
        line.contains("pool-robot") && line.contains("300001") && line.contains("field qq"),
        "{line}"
    );
    assert!(
        !log.contains(&own) && !log.contains(&member),
        "a token in the log:\n{log}"
    );
    assert_eq!(sim.state.messages()[0].target, "pool-1");
}
