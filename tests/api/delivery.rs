//! Delivery end to end: usernames in, the right DingTalk calls out, an honest answer back.

use crate::helpers::*;
use ding_channel::simulator::{Faults, SimUser};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn a_mixed_send_reaches_people_and_robots_and_reports_the_rest() {
    let app = TestApp::spawn().await;
    app.import_users(r#"{"username":"carol","display_name":"Carol"}"#);
    let env = app
        .post(
            "send_msg",
            json!({"msg_type": "ding", "receiver__username": "alice,bob,ops-robot,ghost,carol", "title": "Disk full", "content": "host-1 /data 95%"}),
        )
        .await;
    // As the real CMSI answers a partial failure: bk-monitor reads the invalid list only on
    // `result: false`, ITSM accepts that when the message starts with "Some users failed".
    assert_eq!(env["result"], false, "{env}");
    assert_eq!(env["code"], 1306000);
    assert_eq!(
        statuses(&env),
        pairs(&[
            ("alice", "sent"),
            ("bob", "sent"),
            ("ops-robot", "sent"),
            ("ghost", "failed"),
            ("carol", "failed")
        ])
    );
    assert_eq!(
        env["data"]["username_check"]["invalid"],
        json!(["ghost", "carol"])
    );
    assert_eq!(
        env["message"],
        "Some users failed to send (2 of 5): ghost (unknown user), carol (no telephone in the profile)"
    );

    let got = app.sim.state.messages();
    assert_eq!(
        got.len(),
        2,
        "one webhook, one batchSend for both people: {got:?}"
    );
    let robot = got.iter().find(|m| m.api == "robot_send").unwrap();
    assert_eq!(robot.target, "ops-robot");
    assert_eq!(
        robot.body["text"]["content"], "Disk full\nhost-1 /data 95%",
        "title on the first line"
    );
    let batch = got.iter().find(|m| m.api == "batch_send").unwrap();
    assert_eq!(batch.user_ids, ["alice-ding", "bob-ding"]);
    assert_eq!(batch.body["msgKey"], "sampleText");
    // The simulator checked the signature; nothing was refused.
    assert!(
        app.sim.state.stats().refusals.is_empty(),
        "{:?}",
        app.sim.state.stats().refusals
    );
}

#[tokio::test]
async fn forty_five_people_take_three_calls_and_their_phones_are_looked_up_once() {
    let mut cfg = ding_channel::simulator::demo_config();
    cfg.users.extend((0..45).map(|i| SimUser {
        mobile: format!("1390000{i:04}"),
        userid: format!("u{i}"),
    }));
    // A budget this test doesn't exercise: 45 lookups in the same (frozen) second.
    let app = TestApp::spawn_full(
        TestDb::new(),
        repo_manifest(),
        &[("DING_CHANNEL_APP_QPS", "1000")],
        cfg,
        true,
    )
    .await;
    let lines: Vec<String> = (0..45)
        .map(|i| format!(r#"{{"username":"p{i}","telephone":"1390000{i:04}"}}"#))
        .collect();
    app.import_users(&lines.join("\n"));
    let names: Vec<String> = (0..45).map(|i| format!("p{i}")).collect();
    let body = json!({"receiver__username": names, "msg_key": "markdown", "title": "Deploy", "content": "## done"});
    let env = app.post("send_ding", body.clone()).await;
    assert_eq!(env["message"], "sent to 45 receiver(s)", "{env}");
    let stats = app.sim.state.stats();
    assert_eq!(stats.requests["batch_send"], 3);
    assert_eq!(stats.requests["getbymobile"], 45);

    let again = app.post("send_ding", body).await;
    assert_eq!(again["message"], "sent to 45 receiver(s)");
    let stats = app.sim.state.stats();
    assert_eq!(
        stats.requests["getbymobile"], 45,
        "phones come from the cache"
    );
    assert_eq!(stats.requests["batch_send"], 6);
    let delivered: usize = app
        .sim
        .state
        .messages()
        .iter()
        .map(|m| m.user_ids.len())
        .sum();
    assert_eq!(delivered, 90);
}

#[tokio::test]
async fn when_no_receiver_can_be_reached_the_answer_is_false_with_reasons() {
    let app = TestApp::spawn().await;
    app.import_users(r#"{"username":"nophone"}"#);
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "ghost,nophone", "content": "x"}),
        )
        .await;
    assert_refused(
        &env,
        1306404,
        "all 2 receiver(s) failed: ghost (unknown user), nophone (no telephone in the profile)",
    );
    assert_eq!(
        env["data"]["username_check"]["invalid"],
        json!(["ghost", "nophone"])
    );
    assert!(
        env["data"]["message_id"].is_string(),
        "the refusal is logged too"
    );
    assert!(app.sim.state.messages().is_empty());

    let bot = app
        .post(
            "send_dingbot",
            json!({"receiver__username": "alice", "content": "x"}),
        )
        .await;
    assert_refused(&bot, 1306404, "alice (not a robot user)");
    let single = app
        .post(
            "send_dingtalk",
            json!({"receiver__username": "ops-robot", "content": "x"}),
        )
        .await;
    assert_refused(
        &single,
        1306404,
        "ops-robot (is a robot user; send_dingtalk reaches people only",
    );
}

/// Refusals that are not about the receivers say so: DingTalk refusing the phone lookup is a
/// DingTalk error (its code kept), single chat not set up is the server's configuration.
#[tokio::test]
async fn a_refusal_by_dingtalk_or_the_configuration_is_not_an_unknown_receiver() {
    let app = TestApp::spawn().await;
    app.sim
        .state
        .set_faults(Faults::errcode(60011, &["getbymobile"]));
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "alice", "content": "x"}),
        )
        .await;
    assert_refused(&env, 1306201, "alice (");
    assert!(env["message"].as_str().unwrap().contains("60011"), "{env}");
    let id = env["data"]["message_id"].as_str().unwrap();
    let (status, log) = app
        .get(&format!(
            "/api/v1/messages/{id}?bk_app_code={APP}&bk_app_secret={APP_SECRET}"
        ))
        .await;
    assert_eq!(status, 200, "{log}");
    assert_eq!(
        log["data"]["deliveries"][0]["dingtalk_code"], "60011",
        "{log}"
    );

    let plain = TestApp::spawn_plain().await;
    plain.import_users(r#"{"username":"dave","telephone":"13800000001"}"#);
    let env = plain
        .post(
            "send_ding",
            json!({"receiver__username": "dave", "content": "x"}),
        )
        .await;
    assert_refused(
        &env,
        1306000,
        "dave (single chat is not configured: set it with",
    );
    let env = plain
        .post(
            "send_dingtalk",
            json!({"userid": "dave-ding", "content": "x"}),
        )
        .await;
    assert_refused(
        &env,
        1306000,
        "dave-ding (single chat is not configured: set it with",
    );
}

/// The queue is bounded: a send that would queue more than `DING_CHANNEL_MAX_QUEUE` deliveries
/// is refused whole with 1306429 (nothing is accepted, so nothing is lost), and accepted again
/// once the queue drains.
#[tokio::test]
async fn a_full_queue_refuses_new_sends_until_it_drains() {
    let app = TestApp::spawn_with(
        TestDb::new(),
        repo_manifest(),
        &[("DING_CHANNEL_MAX_QUEUE", "2")],
    )
    .await;
    app.sim.state.set_faults(Faults::http(503, &["batch_send"]));
    let send = |to: &'static str| {
        app.post(
            "send_ding",
            json!({"receiver__username": to, "content": "x"}),
        )
    };
    assert_eq!(
        statuses(&send("alice").await),
        pairs(&[("alice", "queued")])
    );
    let refused = send("alice,bob").await;
    assert_refused(&refused, 1306429, "the outbox is full: 1 deliveries wait to be sent (DING_CHANNEL_MAX_QUEUE=2); nothing was accepted, retry later");
    assert!(refused["data"].is_null(), "{refused}");
    assert_eq!(statuses(&send("bob").await), pairs(&[("bob", "queued")]));

    app.sim.state.set_faults(Faults::default());
    app.clock.advance_ms(60_000);
    assert_eq!(app.drain().await, 2);
    let env = send("alice,bob").await;
    assert_eq!(
        statuses(&env),
        pairs(&[("alice", "sent"), ("bob", "sent")]),
        "{env}"
    );
}

#[tokio::test]
async fn a_dingtalk_outage_delays_delivery_but_delivers_exactly_once() {
    let app = TestApp::spawn().await;
    app.sim
        .state
        .set_faults(Faults::http(503, &["robot_send", "batch_send"]));
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "alice,ops-robot", "content": "outage"}),
        )
        .await;
    assert_eq!(env["result"], true, "queued is accepted: {env}");
    assert_eq!(
        statuses(&env),
        pairs(&[("alice", "queued"), ("ops-robot", "queued")])
    );
    assert_eq!(env["message"], "0 sent, 2 queued for delivery");

    // Still down at the next attempt.
    app.clock.advance_ms(60_000);
    assert_eq!(app.drain().await, 2);
    assert!(app.sim.state.messages().is_empty());
    // Nothing is due before its backoff ends.
    assert_eq!(app.drain().await, 0);

    app.sim.state.set_faults(Faults::default());
    app.clock.advance_ms(600_000);
    assert_eq!(app.drain().await, 2);
    assert_eq!(app.drain().await, 0);
    assert_eq!(
        app.sim.state.messages().len(),
        2,
        "each receiver exactly once"
    );

    let id = env["data"]["message_id"].as_str().unwrap();
    let (status, log) = app
        .get(&format!(
            "/api/v1/messages/{id}?bk_app_code={APP}&bk_app_secret={APP_SECRET}"
        ))
        .await;
    assert_eq!(status, 200, "{log}");
    for d in log["data"]["deliveries"].as_array().unwrap() {
        assert_eq!(d["status"], "sent");
        let outcomes: Vec<&str> = d["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes, ["retry", "retry", "sent"], "{d}");
    }
}

#[tokio::test]
async fn a_permanent_error_fails_with_a_reason_an_admin_can_act_on() {
    let app = TestApp::spawn().await;
    let token = "d".repeat(64);
    app.import_users(&format!(
        r#"{{"username":"bad-robot","qq":"{token}","wx_userid":"SECthisisnotthesecret0000"}}"#
    ));
    app.sim.state.configure(|c| {
        c.robots.push(ding_channel::simulator::SimRobot {
            name: "bad-robot".into(),
            token: token.clone(),
            secret: Some("SECtherealsecret00000000".into()),
            keyword: None,
        })
    });
    let env = app
        .post(
            "send_dingbot",
            json!({"receiver__username": "bad-robot", "content": "x"}),
        )
        .await;
    assert_refused(
        &env,
        1306201,
        "check the SEC secret stored in field wx_userid of user bad-robot",
    );
    assert!(
        !env.to_string().contains("SECthisisnotthesecret"),
        "secret leaked: {env}"
    );
    app.clock.advance_ms(3_600_000);
    assert_eq!(app.drain().await, 0, "not retried");
}

#[tokio::test]
async fn queued_deliveries_survive_a_restart_and_a_crash_mid_claim() {
    let test_db = TestDb::new();
    let url = test_db.url.clone();
    let first = TestApp::spawn_with(test_db, repo_manifest(), &[]).await;
    first.sim.state.set_faults(Faults::http(503, &[]));
    let env = first
        .post(
            "send_ding",
            json!({"receiver__username": "alice,ops-robot", "content": "survive"}),
        )
        .await;
    assert_eq!(
        statuses(&env),
        pairs(&[("alice", "queued"), ("ops-robot", "queued")])
    );
    // The process dies holding a claim (as with kill -9 between claim and record).
    let held = ding_channel::outbox::store::claim(
        &mut first.db.get().unwrap(),
        "dead-process",
        i64::MAX / 4,
        30_000,
        10,
        None,
    )
    .unwrap();
    assert_eq!(held.len(), 2);

    // A new process on the same database, with DingTalk healthy again.
    let second = TestApp::spawn_on(&url).await;
    second.clock.set_ms(i64::MAX / 4 + 31_000); // past the dead process's lease (PostgreSQL); SQLite releases at start-up
    assert_eq!(second.drain().await, 2);
    let got = second.sim.state.messages();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(first.sim.state.messages().is_empty());
}

#[tokio::test]
async fn the_same_idempotency_key_sends_once_even_when_requests_race() {
    let app = TestApp::spawn().await;
    let body =
        json!({"receiver__username": "alice", "content": "once", "idempotency_key": "alert-42"});
    let first = app.post("send_ding", body.clone()).await;
    let second = app.post("send_ding", body.clone()).await;
    assert_eq!(first["data"]["message_id"], second["data"]["message_id"]);
    assert_eq!(second["data"]["idempotent_replay"], true);
    assert_eq!(statuses(&second), pairs(&[("alice", "sent")]));
    assert_eq!(app.sim.state.messages().len(), 1);

    let racing: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url("send_ding"));
            tokio::spawn(async move {
                let res = client
                    .post(url)
                    .header("Idempotency-Key", "race-1")
                    .json(&json!({"bk_app_code": APP, "bk_app_secret": APP_SECRET, "receiver__username": "bob", "content": "race"}))
                    .send()
                    .await
                    .unwrap();
                res.json::<Value>().await.unwrap()
            })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for r in racing {
        let env = r.await.unwrap();
        assert_eq!(env["result"], true, "{env}");
        ids.insert(env["data"]["message_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "one message for one key");
    app.drain().await;
    let to_bob = app
        .sim
        .state
        .messages()
        .iter()
        .filter(|m| m.user_ids == ["bob-ding"])
        .count();
    assert_eq!(to_bob, 1);

    // A key is remembered for 24 hours, then names a new message (authenticated by header).
    app.clock.advance_ms(24 * 3_600_000 + 1_000);
    let later: Value = app
        .client
        .post(app.url("send_ding"))
        .header(
            "X-Bkapi-Authorization",
            json!({"bk_app_code": APP, "bk_app_secret": APP_SECRET}).to_string(),
        )
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(statuses(&later), pairs(&[("alice", "sent")]), "{later}");
    assert_ne!(later["data"]["message_id"], first["data"]["message_id"]);
    assert!(later["data"]["idempotent_replay"].is_null(), "{later}");
}

#[tokio::test]
async fn the_retry_and_idempotency_settings_reach_the_outbox() {
    let app = TestApp::spawn_with(
        TestDb::new(),
        repo_manifest(),
        &[
            ("DING_CHANNEL_RETRY_BASE_MS", "500"),
            ("DING_CHANNEL_RETRY_CAP_S", "30"),
            ("DING_CHANNEL_IDEMPOTENCY_S", "3600"),
        ],
    )
    .await;
    assert_eq!(app.outbox.policy.retry.base, Duration::from_millis(500));
    assert_eq!(app.outbox.policy.retry.cap, Duration::from_secs(30));

    let body = json!({"receiver__username": "alice", "content": "x", "idempotency_key": "k1"});
    let first = app.post("send_ding", body.clone()).await;
    app.clock.advance_ms(3_600_000 - 1_000);
    let replay = app.post("send_ding", body.clone()).await;
    assert_eq!(replay["data"]["idempotent_replay"], true, "{replay}");
    app.clock.advance_ms(2_000);
    let later = app.post("send_ding", body).await;
    assert_ne!(later["data"]["message_id"], first["data"]["message_id"]);
    assert!(later["data"]["idempotent_replay"].is_null(), "{later}");
}

#[tokio::test]
async fn single_chat_by_userid_or_mobile_and_group_mentions() {
    let app = TestApp::spawn().await;
    let env = app
        .post(
            "send_dingtalk",
            json!({"userid": "bob-ding", "content": "by id", "msg_key": "markdown", "title": "T"}),
        )
        .await;
    assert_eq!(statuses(&env), pairs(&[("bob-ding", "sent")]), "{env}");
    let env = app
        .post(
            "send_dingtalk",
            json!({"mobile": "13800000001,13700000000", "content": "by phone"}),
        )
        .await;
    assert_eq!(
        statuses(&env),
        pairs(&[("13800000001", "sent"), ("13700000000", "failed")]),
        "{env}"
    );
    assert_eq!(
        env["data"]["username_check"]["invalid"],
        json!(["13700000000"])
    );
    assert_refused(
        &env,
        1306000,
        "Some users failed to send (1 of 2): 13700000000",
    );

    let env = app
        .post("send_dingbot", json!({"receiver__username": "ops-robot", "msg_key": "markdown", "title": "Oncall", "content": "## page @manager4220", "at_mobiles": "13800000001,+852-9123-4567", "at_user_ids": ["manager4220", "u-2"], "at_all": "0"}))
        .await;
    assert_eq!(env["code"], 0, "{env}");
    let m = app.sim.state.messages().into_iter().last().unwrap();
    assert_eq!(
        m.body["markdown"]["text"],
        "## page @manager4220\n\n@13800000001 @+852-91234567 @u-2"
    );
    assert_eq!(
        m.body["at"]["atMobiles"],
        json!(["13800000001", "+852-91234567"])
    );
    assert_eq!(m.body["at"]["atUserIds"], json!(["manager4220", "u-2"]));
    assert_eq!(m.body["at"]["isAtAll"], false);

    let env = app.post("send_ding", json!({"receiver__username": "ops-robot", "msg_key": "action_card", "title": "Approve", "content": "ticket 7", "url": "https://itsm.example.com/7"})).await;
    assert_eq!(env["code"], 0, "{env}");
    let m = app.sim.state.messages().into_iter().last().unwrap();
    assert_eq!(
        m.body["actionCard"]["singleURL"],
        "https://itsm.example.com/7"
    );
}

/// What a caller asks of a send reaches DingTalk as asked: single chat by username, base64
/// content, @all, links; robots kept in the profile fields comp_conf names; a malformed
/// signing secret is reported with the field to fix.
#[tokio::test]
async fn the_options_of_a_send_reach_dingtalk_as_asked() {
    let app = TestApp::spawn().await;
    let last = || app.sim.state.messages().into_iter().last().unwrap();
    let env = app
        .post(
            "send_dingtalk",
            json!({"receiver__username": "alice", "content": "hi"}),
        )
        .await;
    assert_eq!(statuses(&env), pairs(&[("alice", "sent")]), "{env}");
    assert_eq!(
        (last().api, last().user_ids),
        ("batch_send", vec!["alice-ding".to_owned()])
    );

    let env = app
        .post("send_dingbot", json!({"receiver__username": "ops-robot", "content": "ZGlzayA5NSUg56OB55uY", "is_content_base64": "1", "at_all": "1"}))
        .await;
    assert_eq!(statuses(&env), pairs(&[("ops-robot", "sent")]), "{env}");
    let m = last();
    assert!(
        m.body["text"]["content"]
            .as_str()
            .unwrap()
            .starts_with("disk 95% 磁盘"),
        "{}",
        m.body
    );
    assert_eq!(m.body["at"]["isAtAll"], true);

    let url = "https://wiki.example.com/disk";
    let env = app
        .post("send_dingbot", json!({"receiver__username": "ops-robot", "msg_key": "link", "title": "Runbook", "content": "Disk full on host-1", "url": url}))
        .await;
    assert_eq!(statuses(&env), pairs(&[("ops-robot", "sent")]), "{env}");
    let m = last();
    assert_eq!(
        (
            m.body["msgtype"].as_str(),
            m.body["link"]["messageUrl"].as_str()
        ),
        (Some("link"), Some(url))
    );

    let out = app.cli(&[
        "channels",
        "conf",
        "send_dingbot",
        "token_field=robot_token",
        "sign_field=robot_sign",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let robot = &ding_channel::simulator::demo_config().robots[0];
    let (token, secret) = (&robot.token, robot.secret.as_deref().unwrap());
    app.import_users(&format!(
        "{{\"username\":\"dev-robot\",\"extras\":{{\"robot_token\":\"{token}\",\"robot_sign\":\"{secret}\"}}}}\n\
         {{\"username\":\"bad-robot\",\"extras\":{{\"robot_token\":\"{token}\",\"robot_sign\":\"SEC-not-valid!\"}}}}"
    ));
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "dev-robot,bad-robot,ops-robot", "content": "x"}),
        )
        .await;
    assert_eq!(
        statuses(&env),
        pairs(&[
            ("dev-robot", "sent"),
            ("bad-robot", "failed"),
            ("ops-robot", "failed")
        ]),
        "{env}"
    );
    let msg = env["message"].as_str().unwrap();
    assert!(
        msg.contains("bad-robot (malformed signing secret in field robot_sign"),
        "{msg}"
    );
    assert!(
        msg.contains("ops-robot (no telephone in the profile)"),
        "{msg}"
    );
    app.import_users(
        r#"{"username":"half-robot","extras":{"robot_token":"abc123def456ghi789","robot_sign":"notsec"}}"#,
    );
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "half-robot", "content": "x"}),
        )
        .await;
    assert_refused(&env, 1306404, "half-robot (no telephone in the profile, and its robot_token does not make it a robot user (the signing secret in robot_sign must start with SEC");
}

#[tokio::test]
async fn flow_control_and_slow_lookups_are_retried_by_the_worker() {
    let app = TestApp::spawn().await;
    app.sim.state.set_faults(Faults {
        flow_controlled: vec!["alice-ding".into()],
        ..Faults::default()
    });
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "alice,bob", "content": "x"}),
        )
        .await;
    assert_eq!(
        statuses(&env),
        pairs(&[("alice", "queued"), ("bob", "sent")]),
        "{env}"
    );
    app.clock.advance_ms(120_000);
    assert_eq!(app.drain().await, 1);

    // getbymobile failing transiently: accepted, queued, resolved later by the worker.
    app.import_users(r#"{"username":"dave","telephone":"13800000003"}"#);
    app.sim.state.configure(|c| {
        c.users.push(SimUser {
            mobile: "13800000003".into(),
            userid: "dave-ding".into(),
        })
    });
    app.sim
        .state
        .set_faults(Faults::errcode(-1, &["getbymobile"]));
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "dave", "content": "y"}),
        )
        .await;
    assert_eq!(statuses(&env), pairs(&[("dave", "queued")]), "{env}");
    app.sim.state.set_faults(Faults::default());
    app.clock.advance_ms(120_000);
    app.drain().await;
    let to: Vec<Vec<String>> = app
        .sim
        .state
        .messages()
        .iter()
        .map(|m| m.user_ids.clone())
        .collect();
    assert_eq!(
        to,
        [
            vec!["bob-ding".to_owned()],
            vec!["alice-ding".to_owned()],
            vec!["dave-ding".to_owned()]
        ]
    );
}

#[tokio::test]
async fn a_delivery_that_keeps_failing_is_given_up_after_the_maximum_age() {
    let app = TestApp::spawn_with(
        TestDb::new(),
        repo_manifest(),
        &[("DING_CHANNEL_MAX_AGE_S", "600")],
    )
    .await;
    app.sim.state.set_faults(Faults::http(502, &["robot_send"]));
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "ops-robot", "content": "x"}),
        )
        .await;
    let id = env["data"]["message_id"].as_str().unwrap().to_owned();
    for _ in 0..20 {
        app.clock.advance_ms(120_000);
        app.drain().await;
    }
    let (_, log) = app
        .get(&format!(
            "/api/v1/messages/{id}?bk_app_code={APP}&bk_app_secret={APP_SECRET}"
        ))
        .await;
    let d = &log["data"]["deliveries"][0];
    assert_eq!(d["status"], "failed", "{log}");
    assert!(
        d["error"].as_str().unwrap().starts_with("gave up after"),
        "{d}"
    );
}

#[tokio::test]
async fn the_message_log_is_private_to_its_app() {
    let app = TestApp::spawn().await;
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "alice", "content": "x"}),
        )
        .await;
    let id = env["data"]["message_id"].as_str().unwrap();
    assert!(app
        .cli(&["apps", "add", "other", "--secret", "other-secret"])
        .status
        .success());
    let (status, _) = app
        .get(&format!(
            "/api/v1/messages/{id}?bk_app_code=other&bk_app_secret=other-secret"
        ))
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .get(&format!(
            "/api/v1/messages/{id}?bk_app_code={APP}&bk_app_secret=wrong"
        ))
        .await;
    assert_eq!(status, 401);
    let res = app
        .client
        .get(format!("{}/api/v1/messages/{id}", app.address))
        .header(
            "X-Bkapi-Authorization",
            format!(r#"{{"bk_app_code":"{APP}","bk_app_secret":"{APP_SECRET}"}}"#),
        )
        .send()
        .await
        .unwrap();
    let log: Value = res.json().await.unwrap();
    assert_eq!(
        log["data"]["deliveries"][0]["history"][0]["outcome"], "sent",
        "{log}"
    );
    assert_eq!(log["data"]["message"]["content"], "x");
}

#[tokio::test]
async fn the_send_command_and_the_delivery_log_work_from_the_cli() {
    let app = TestApp::spawn().await;
    let base = app.sim.base_url();
    // The simulator lives on this test's runtime: run the binary off it so it keeps serving.
    let run = |args: &[&str]| {
        let (db, manifest, base) = (app.test_db.url.clone(), app.manifest.clone(), base.clone());
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let blocking = move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(
                &db,
                &manifest,
                &args,
                &[
                    ("DINGTALK_OAPI_BASE", base.as_str()),
                    ("DINGTALK_API_BASE", base.as_str()),
                ],
            )
        };
        async move { tokio::task::spawn_blocking(blocking).await.unwrap() }
    };

    let o = run(&[
        "send",
        "--to",
        "alice,ops-robot,ghost",
        "--title",
        "Disk",
        "--content",
        "host-1 95%",
        "--msg-key",
        "markdown",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "a partial failure exits 1");
    assert!(
        stderr(&o).contains("1 of 3 receivers failed; the others are sent or queued"),
        "{}",
        stderr(&o)
    );
    let out = stdout(&o);
    assert!(
        out.contains("1 of 3 receivers failed: ghost (unknown user)"),
        "{out}"
    );
    let id = out
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    assert_eq!(app.sim.state.messages().len(), 2);

    let o = run(&["send", "--to", "ghost", "--content", "x"]).await;
    assert_eq!(o.status.code(), Some(1), "all failed exits 1");
    let o = run(&[
        "send",
        "--to",
        "alice",
        "--content",
        "x",
        "--msg-key",
        "markdown",
    ])
    .await;
    assert!(
        stderr(&o).contains("title: is required for msg_key=markdown"),
        "{}",
        stderr(&o)
    );

    let list = stdout(&run(&["deliveries", "list", "--status", "failed"]).await);
    assert!(
        list.contains(&id) && list.contains("alice,ops-robot,ghost"),
        "{list}"
    );
    let show = stdout(&run(&["deliveries", "show", &id]).await);
    assert!(
        show.contains("alice (user) → uid:alice-ding  sent  attempts 1"),
        "{show}"
    );
    assert!(
        show.contains("ghost (user) → -  failed  attempts 0") && show.contains("unknown user"),
        "{show}"
    );

    // A robot that was disabled in DingTalk, then re-enabled: retried by hand.
    app.sim
        .state
        .set_faults(Faults::errcode(400102, &["robot_send"]));
    let env_json = app
        .post(
            "send_dingbot",
            json!({"receiver__username": "ops-robot", "content": "retry me"}),
        )
        .await;
    assert_refused(&env_json, 1306201, "is disabled");
    let failed_id = env_json["data"]["message_id"].as_str().unwrap();
    app.sim.state.set_faults(Faults::default());
    let o = run(&["deliveries", "retry", failed_id]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("ops-robot                sent"),
        "{}",
        stdout(&o)
    );
    let history = stdout(&run(&["deliveries", "show", failed_id]).await);
    assert!(
        history.contains("#1")
            && history.contains("failed")
            && history.contains("#2")
            && history.contains("sent"),
        "{history}"
    );
    let o = run(&["deliveries", "retry", failed_id]).await;
    assert!(stderr(&o).contains("no failed delivery"), "{}", stderr(&o));
}

#[tokio::test]
async fn the_sandbox_delivers_the_printed_example() {
    sandbox_delivers_the_printed_example(&TestDb::new()).await;
}

/// Robots kept in other profile fields (send_dingbot's comp_conf) work in the sandbox: the demo
/// robot is stored where robots are.
#[tokio::test]
async fn the_sandbox_stores_its_robot_where_the_configuration_says() {
    let db = TestDb::new();
    configure(
        &db,
        &[
            "send_dingbot",
            "token_field=robot_token",
            "sign_field=robot_sign",
        ],
    );
    sandbox_delivers_the_printed_example(&db).await;
}

/// A database set up for a real DingTalk app is refused: the sandbox would add a demo app with
/// a public secret to it. Nothing is written.
#[tokio::test]
async fn the_sandbox_refuses_a_database_set_up_for_production() {
    let db = TestDb::new();
    configure(
        &db,
        &[
            "send_dingtalk",
            "ding_app_key=corp-app",
            "ding_app_secret=corp-secret-0123456789",
        ],
    );
    let out = sandbox(&db).output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "this database is set up for DingTalk app corp-app: --sandbox would add the demo app"
        ),
        "{}",
        stderr(&out)
    );
    let apps = cli(&db.url, &repo_manifest(), &["apps", "list"], &[]);
    assert!(!stdout(&apps).contains(APP), "{}", stdout(&apps));
}

/// Syncs the manifest into `db`, then sets one channel's comp_conf (`channel key=value…`).
fn configure(db: &TestDb, conf: &[&str]) {
    for args in [
        &["channels", "sync"][..],
        &[&["channels", "conf"][..], conf].concat(),
    ] {
        let out = cli(&db.url, &repo_manifest(), args, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

/// `ding-channel serve --sandbox` on `db`, on a free port.
fn sandbox(db: &TestDb) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ding-channel"));
    cmd.args(["serve", "--sandbox"])
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .env("DING_CHANNEL_MANIFEST", repo_manifest())
        .env("DING_CHANNEL_CONFIG", "")
        .env("DING_CHANNEL_BIND", "127.0.0.1:0");
    cmd
}

async fn sandbox_delivers_the_printed_example(db: &TestDb) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = sandbox(db)
        .env("DINGTALK_OAPI_BASE", "http://must-be-ignored.invalid")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = vec![];
    let mut sends = 0;
    while banner.len() < 16 && sends < 2 {
        let line = lines.next().expect("banner").unwrap();
        sends += usize::from(line.starts_with("  -d "));
        banner.push(line);
    }
    let text = banner.join("\n");
    let url = |prefix: &str| {
        text.split(prefix)
            .nth(1)
            .unwrap()
            .split(['\'', ' ', ')'])
            .next()
            .unwrap()
            .to_owned()
    };
    let send_url = url("curl -X POST '");
    let body = |k: usize| {
        text.split("-d '")
            .nth(k)
            .unwrap()
            .split('\n')
            .next()
            .unwrap()
            .trim_end_matches('\'')
            .to_owned()
    };
    let sim = url("what it received: curl ");

    let http = reqwest::Client::new();
    let send = |body: String| {
        let request = http
            .post(&send_url)
            .header("content-type", "application/json")
            .body(body);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let answer = send(body(1)).await;
    let received: Value = http.get(&sim).send().await.unwrap().json().await.unwrap();
    let from_bkuser = send(body(2)).await;
    let types: Value = http
        .get(url("curl '"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(answer["result"], true, "{answer}");
    assert_eq!(answer["message"], "sent to 3 receiver(s)", "{answer}");
    assert_eq!(received.as_array().unwrap().len(), 2, "{received}");
    assert_eq!(types["data"][0]["type"], "ding", "{types}");
    assert!(sim.starts_with("http://127.0.0.1:"), "{text}");
    // carol is looked up in the sandbox's bk-user at send time; dave has left.
    let deliveries = &from_bkuser["data"]["deliveries"];
    assert_eq!(deliveries[0]["receiver"], "carol", "{from_bkuser}");
    assert_eq!(deliveries[0]["status"], "sent", "{from_bkuser}");
    assert_eq!(deliveries[1]["status"], "failed", "{from_bkuser}");
    assert!(
        deliveries[1]["error"]
            .as_str()
            .unwrap()
            .starts_with("has left"),
        "{from_bkuser}"
    );
    assert_eq!(
        from_bkuser["data"]["username_check"]["invalid"],
        json!(["dave"])
    );
}

fn api_calls(app: &TestApp, api: &str) -> usize {
    app.sim
        .state
        .messages()
        .iter()
        .filter(|m| m.api == api)
        .count()
}

/// A 33 KB message to ops-robot (two webhook messages) whose first part is held in flight.
async fn long_robot_send_in_flight(
    app: &std::sync::Arc<TestApp>,
) -> (
    std::sync::Arc<ding_channel::simulator::Gate>,
    tokio::task::JoinHandle<Value>,
) {
    let content = "disk at 95% on host-1\n".repeat(1500);
    let gate = app.sim.state.hold("robot_send", 1);
    let a = app.clone();
    let req = tokio::spawn(async move {
        a.post(
            "send_ding",
            json!({"receiver__username": "ops-robot", "content": content}),
        )
        .await
    });
    gate.arrived(1).await;
    (gate, req)
}

/// A claim is renewed while its call is in flight: a worker looking for due rows later does
/// not take the row over and send it again, however long DingTalk takes to answer.
#[tokio::test]
async fn a_slow_send_keeps_its_claim_and_goes_out_once() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    let (gate, req) = long_robot_send_in_flight(&app).await;
    // Well past the 60 s lease the send was accepted with, renewed on the way as the process
    // does every tick.
    for _ in 0..2 {
        app.clock.advance_ms(40_000);
        assert_eq!(app.outbox.renew_leases().await, 1);
    }
    assert_eq!(
        app.drain().await,
        0,
        "the row in flight is not claimed again"
    );
    gate.open();
    let env = req.await.unwrap();
    assert_eq!(statuses(&env), pairs(&[("ops-robot", "sent")]), "{env}");
    assert_eq!(app.drain().await, 0);
    assert_eq!(
        api_calls(&app, "robot_send"),
        2,
        "both parts, once, by the batch that kept its claim"
    );
}

/// A batch whose claim ran out (it could not renew it) sends nothing more: here, not the
/// second part of a long message, which the worker that took the row over sends.
#[tokio::test]
async fn a_batch_that_lost_its_claim_sends_no_further_part() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    let (gate, req) = long_robot_send_in_flight(&app).await;
    app.clock.advance_ms(61_000); // the lease ran out, never renewed
    assert_eq!(app.drain().await, 1, "another worker takes the row over");
    assert_eq!(api_calls(&app, "robot_send"), 2, "and sends both parts");
    gate.open();
    req.await.unwrap();
    assert_eq!(app.drain().await, 0);
    assert_eq!(
        api_calls(&app, "robot_send"),
        3,
        "the first batch stopped after its part in flight"
    );
}

/// A part DingTalk refuses for good fails its message, and the message's later parts are not
/// sent; the rest of the robot's queue goes on.
#[tokio::test]
async fn a_refused_middle_part_fails_its_message_and_sends_no_later_part() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    let content = "disk at 95% on host-1\n".repeat(2500); // three webhook messages
    let gate = app.sim.state.hold("robot_send", 1);
    let a = app.clone();
    let req = tokio::spawn(async move {
        a.post(
            "send_ding",
            json!({"receiver__username": "ops-robot", "content": content}),
        )
        .await
    });
    gate.arrived(1).await;
    // The first part is in flight; the second is refused as content not allowed.
    app.sim.state.set_faults(Faults {
        count: Some(1),
        ..Faults::errcode(430101, &["robot_send"])
    });
    gate.open();
    let env = req.await.unwrap();
    assert_eq!(statuses(&env), pairs(&[("ops-robot", "failed")]), "{env}");
    assert_eq!(api_calls(&app, "robot_send"), 1, "part 1 arrived");
    assert_eq!(
        app.sim.state.stats().requests["robot_send"],
        2,
        "part 2 was refused and part 3 not sent"
    );
    let later = app
        .post(
            "send_ding",
            json!({"receiver__username": "ops-robot", "content": "next"}),
        )
        .await;
    assert_eq!(statuses(&later), pairs(&[("ops-robot", "sent")]), "{later}");
    assert_eq!(app.drain().await, 0);
}
