//! DingTalk's limits under load: robot pacing and digests, numbered parts, throttles, app
//! budgets. Time is moved with the shared manual clock; nothing sleeps.

use crate::helpers::*;
use ding_channel::clock::Clock;
use ding_channel::simulator::{demo_config, Faults, SimUser};
use serde_json::{json, Value};

fn robot_texts(app: &TestApp) -> Vec<String> {
    app.sim
        .state
        .messages()
        .iter()
        .filter(|m| m.api == "robot_send")
        .map(|m| {
            let body = &m.body;
            match body["msgtype"].as_str() {
                Some("markdown") => format!(
                    "{}\n{}",
                    body["markdown"]["title"].as_str().unwrap(),
                    body["markdown"]["text"].as_str().unwrap()
                ),
                _ => body["text"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            }
        })
        .collect()
}

/// Moves time in steps, delivering what is due, until nothing is queued.
async fn drain_over_time(app: &TestApp, step_ms: i64, max_steps: usize) -> usize {
    for step in 0..max_steps {
        app.drain().await;
        let depth = ding_channel::outbox::store::queue_depth(&mut app.db.get().unwrap()).unwrap();
        if depth == 0 {
            return step;
        }
        app.clock.advance_ms(step_ms);
    }
    let left: Vec<_> = ding_channel::outbox::store::recent_messages(
        &mut app.db.get().unwrap(),
        Some("queued"),
        10,
    )
    .unwrap()
    .into_iter()
    .flat_map(|(_, ds)| {
        ds.into_iter().filter(|d| d.status == "queued").map(|d| {
            (
                d.receiver,
                d.target,
                d.next_attempt_at - app.clock.now_ms(),
                d.last_error,
            )
        })
    })
    .collect();
    panic!("the queue did not drain in {max_steps} steps: {left:?}");
}

#[tokio::test]
async fn an_alert_storm_reaches_the_group_in_digests_without_ever_being_throttled() {
    // The simulator enforces DingTalk's real limit: 20 per 60 s, then 10 minutes of silence.
    let app = TestApp::spawn().await;
    let mut queued = 0;
    for i in 0..200 {
        let env = app
            .post("send_dingbot", json!({"receiver__username": "ops-robot", "msg_key": "markdown", "title": format!("alert-{i}"), "content": format!("host-{i} disk 9{}%", i % 10)}))
            .await;
        assert_eq!(env["result"], true, "{env}");
        queued += usize::from(env["data"]["deliveries"][0]["status"] == "queued");
        if i == 199 {
            let why = env["data"]["deliveries"][0]["error"]
                .as_str()
                .unwrap_or_default();
            assert!(why.starts_with("waiting for a send slot"), "{env}");
        }
    }
    assert!(
        queued >= 190,
        "beyond the burst, alerts are answered queued at once: {queued}"
    );

    let steps = drain_over_time(&app, 3_000, 100).await;
    let stats = app.sim.state.stats();
    assert_eq!(stats.throttled, 0, "{stats:?}");
    let texts = robot_texts(&app);
    let all = texts.join("\n");
    for i in 0..200 {
        let whole_word = all
            .match_indices(&format!("alert-{i}"))
            .any(|(at, w)| !all[at + w.len()..].starts_with(|c: char| c.is_ascii_digit()));
        assert!(whole_word, "alert-{i} missing");
        assert!(
            all.contains(&format!("host-{i} disk")),
            "content of alert-{i} missing"
        );
    }
    // Sends: the burst of 5, then one digest per freed slot, carrying everything waiting.
    assert!(
        texts.len() <= 5 + steps + 1,
        "{} sends in {steps} steps",
        texts.len()
    );
    assert!(
        texts.iter().any(|t| t.contains(" alerts — ")),
        "digests were sent"
    );
    // Never more than 20 in any 60 s.
    let times: Vec<i64> = app.sim.state.messages().iter().map(|m| m.at_ms).collect();
    for (k, t) in times.iter().enumerate() {
        assert!(times[k..].iter().take_while(|u| **u < t + 60_000).count() <= 20);
    }
    // The log shows which digest carried a merged alert.
    let digests = {
        use diesel::prelude::*;
        use ding_channel::db::schema::deliveries::dsl::*;
        deliveries
            .filter(digest_id.is_not_null())
            .count()
            .get_result::<i64>(&mut *app.db.get().unwrap())
            .unwrap()
    };
    assert!(digests >= 150, "{digests}");
}

#[tokio::test]
async fn a_60_kb_markdown_goes_out_in_parts_that_fit_and_reassemble() {
    let app = TestApp::spawn().await;
    let mut content = String::new();
    let mut i = 0;
    while content.len() < 60_000 {
        content.push_str(&format!(
            "- 第{i}项 磁盘 /data 已用 9{}% \"quoted\" \\ path\n",
            i % 10
        ));
        if i % 150 == 0 {
            content.push_str("```sh\ndf -h /data\nuptime\n```\n");
        }
        i += 1;
    }
    let env = app.post("send_dingbot", json!({"receiver__username": "ops-robot", "msg_key": "markdown", "title": "Daily report", "content": content})).await;
    assert_eq!(env["result"], true, "{env}");
    drain_over_time(&app, 3_000, 20).await;
    let msgs: Vec<Value> = app
        .sim
        .state
        .messages()
        .iter()
        .map(|m| m.body.clone())
        .collect();
    assert!(msgs.len() >= 3, "{}", msgs.len());
    let mut parts = vec![];
    for (k, m) in msgs.iter().enumerate() {
        assert!(
            m.to_string().len() <= 20_000,
            "part {k} is {} bytes",
            m.to_string().len()
        );
        assert_eq!(
            m["markdown"]["title"],
            format!("({}/{}) Daily report", k + 1, msgs.len())
        );
        parts.push(m["markdown"]["text"].as_str().unwrap().to_owned());
    }
    assert_eq!(ding_channel::senders::split::join_markdown(&parts), content);
    assert_eq!(app.sim.state.stats().refusals.len(), 0);
}

#[tokio::test]
async fn a_throttled_robot_is_paused_then_resumes_with_everything_merged() {
    let app = TestApp::spawn().await;
    app.sim
        .state
        .set_faults(Faults::errcode(410100, &["robot_send"]).times(1));
    let first = app
        .post(
            "send_dingbot",
            json!({"receiver__username": "ops-robot", "content": "first"}),
        )
        .await;
    assert_eq!(
        first["data"]["deliveries"][0]["status"], "queued",
        "{first}"
    );
    assert!(
        first["data"]["deliveries"][0]["error"]
            .as_str()
            .unwrap()
            .contains("throttled"),
        "{first}"
    );
    for i in 0..3 {
        let env = app
            .post(
                "send_dingbot",
                json!({"receiver__username": "ops-robot", "content": format!("later-{i}")}),
            )
            .await;
        assert_eq!(
            env["data"]["deliveries"][0]["status"], "queued",
            "paused: answered at once: {env}"
        );
    }
    app.clock.advance_ms(60_000);
    app.drain().await;
    assert!(
        app.sim.state.messages().is_empty(),
        "still paused after a minute"
    );
    app.clock.advance_ms(10 * 60_000);
    app.drain().await;
    let texts = robot_texts(&app);
    assert_eq!(texts.len(), 1, "one digest after the pause: {texts:?}");
    for word in ["first", "later-0", "later-1", "later-2"] {
        assert!(texts[0].contains(word), "{word} in {}", texts[0]);
    }
    let (_, log) = app
        .get(&format!(
            "/api/v1/messages/{}?bk_app_code={APP}&bk_app_secret={APP_SECRET}",
            first["data"]["message_id"].as_str().unwrap()
        ))
        .await;
    assert!(
        log["data"]["deliveries"][0]["digest_id"].is_string(),
        "{log}"
    );
}

#[tokio::test]
async fn per_robot_overrides_in_comp_conf_apply() {
    let app = TestApp::spawn().await;
    let o = app.cli(&[
        "channels",
        "conf",
        "send_dingbot",
        "robot_limits=ops-robot:2/60/1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for i in 0..4 {
        app.post(
            "send_dingbot",
            json!({"receiver__username": "ops-robot", "content": format!("m{i}")}),
        )
        .await;
    }
    // Burst 1: the first goes at once; a pacing interval (30 s) later one digest carries the
    // three that waited.
    assert_eq!(robot_texts(&app).len(), 1);
    app.clock.advance_ms(30_000);
    app.drain().await;
    let texts = robot_texts(&app);
    assert_eq!(texts.len(), 2);
    assert!(texts[1].starts_with("3 alerts"), "{}", texts[1]);
    app.clock.advance_ms(1_000);
    let env = app
        .post(
            "send_dingbot",
            json!({"receiver__username": "ops-robot", "content": "m4"}),
        )
        .await;
    assert_eq!(env["data"]["deliveries"][0]["status"], "queued");
    assert!(
        env["data"]["deliveries"][0]["error"]
            .as_str()
            .unwrap()
            .contains("window is full (2 per 60 s)"),
        "{env}"
    );
    app.clock.advance_ms(28_000);
    app.drain().await;
    assert_eq!(robot_texts(&app).len(), 2, "never more than 2 in 60 s");
    app.clock.advance_ms(2_000);
    app.drain().await;
    assert_eq!(robot_texts(&app).len(), 3);
}

#[tokio::test]
async fn the_app_call_budget_defers_single_chat_instead_of_failing() {
    let mut cfg = demo_config();
    cfg.users.extend((0..12).map(|i| SimUser {
        mobile: format!("1370000{i:04}"),
        userid: format!("q{i}"),
    }));
    let app = TestApp::spawn_full(
        TestDb::new(),
        repo_manifest(),
        &[("DING_CHANNEL_APP_QPS", "5")],
        cfg,
        true,
    )
    .await;
    let lines: Vec<String> = (0..12)
        .map(|i| format!(r#"{{"username":"q{i}","telephone":"1370000{i:04}"}}"#))
        .collect();
    app.import_users(&lines.join("\n"));
    let names: Vec<String> = (0..12).map(|i| format!("q{i}")).collect();
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": names, "content": "budget"}),
        )
        .await;
    assert_eq!(env["result"], true, "{env}");
    assert_eq!(
        app.sim.state.stats().requests["getbymobile"],
        5,
        "5 calls in this second"
    );
    drain_over_time(&app, 1_000, 20).await;
    let delivered: usize = app
        .sim
        .state
        .messages()
        .iter()
        .map(|m| m.user_ids.len())
        .sum();
    assert_eq!(delivered, 12);
    // DingTalk's own QPS answer pauses the app; the message waits instead of failing.
    app.sim
        .state
        .set_faults(Faults::errcode(90018, &["batch_send"]).times(1));
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "q1", "content": "qps"}),
        )
        .await;
    assert_eq!(env["data"]["deliveries"][0]["status"], "queued", "{env}");
    drain_over_time(&app, 1_000, 5).await;
    assert_eq!(app.sim.state.messages().last().unwrap().user_ids, ["q1"]);
}

#[tokio::test]
async fn a_long_single_chat_message_goes_out_in_parts_and_resumes_where_it_stopped() {
    let app = TestApp::spawn().await;
    let content = "第一行 disk \"full\" on /data\n".repeat(700);
    let env = app.post("send_ding", json!({"receiver__username": "alice,bob", "msg_key": "markdown", "title": "Report", "content": content})).await;
    assert_eq!(env["message"], "sent to 2 receiver(s)", "{env}");
    let batches: Vec<_> = app
        .sim
        .state
        .messages()
        .into_iter()
        .filter(|m| m.api == "batch_send")
        .collect();
    assert!(batches.len() >= 3, "{}", batches.len());
    let mut texts = vec![];
    for (k, b) in batches.iter().enumerate() {
        assert_eq!(b.user_ids, ["alice-ding", "bob-ding"]);
        assert_eq!(
            b.body["msgParam"]["title"],
            format!("({}/{}) Report", k + 1, batches.len())
        );
        texts.push(b.body["msgParam"]["text"].as_str().unwrap().to_owned());
    }
    assert_eq!(ding_channel::senders::split::join_markdown(&texts), content);

    // Alice is flow-controlled: bob gets every part at once, alice all of them later, once.
    app.sim.state.reset();
    let n = batches.len();
    app.sim.state.set_faults(Faults {
        flow_controlled: vec!["alice-ding".into()],
        ..Faults::default()
    });
    let env = app.post("send_ding", json!({"receiver__username": "alice,bob", "msg_key": "markdown", "title": "Report", "content": content})).await;
    assert_eq!(env["data"]["deliveries"][0]["status"], "queued", "{env}");
    assert_eq!(env["data"]["deliveries"][1]["status"], "sent", "{env}");
    app.clock.advance_ms(120_000);
    app.drain().await;
    let to_alice: Vec<String> = app
        .sim
        .state
        .messages()
        .iter()
        .filter(|m| m.user_ids.contains(&"alice-ding".to_owned()))
        .map(|m| m.body["msgParam"]["title"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (1..=n).map(|k| format!("({k}/{n}) Report")).collect();
    assert_eq!(to_alice, expected, "each part once, in order");
}
