//! Work notifications (`single_chat_mode=work_notice`): asyncsend_v2's task id is not a
//! delivery; getsendresult decides each person, and its per-person limits are retried.

use crate::helpers::*;
use ding_channel::simulator::{SimUser, DEMO_AGENT_ID};
use serde_json::{json, Value};
use std::collections::BTreeMap;

async fn work_notice_app() -> TestApp {
    let app = TestApp::spawn().await;
    let conf = BTreeMap::from([
        ("single_chat_mode".to_owned(), "work_notice".to_owned()),
        ("ding_agent_id".to_owned(), DEMO_AGENT_ID.to_owned()),
    ]);
    ding_channel::channels::registry::set_conf(&mut app.db.get().unwrap(), "send_dingtalk", &conf)
        .unwrap()
        .unwrap();
    app
}

async fn log(app: &TestApp, env: &Value) -> Value {
    let id = env["data"]["message_id"].as_str().unwrap();
    let (status, log) = app
        .get(&format!(
            "/api/v1/messages/{id}?bk_app_code={APP}&bk_app_secret={APP_SECRET}"
        ))
        .await;
    assert_eq!(status, 200, "{log}");
    log
}

/// Moves past the next poll and lets the worker ask getsendresult.
async fn poll(app: &TestApp) -> usize {
    app.clock.advance_ms(3_000);
    app.drain().await
}

fn notices(app: &TestApp) -> Vec<ding_channel::simulator::SimMessage> {
    app.sim
        .state
        .messages()
        .into_iter()
        .filter(|m| m.api == "work_notice")
        .collect()
}

#[tokio::test]
async fn people_are_sent_work_notifications_and_are_sent_only_once_dingtalk_reports_it() {
    let app = work_notice_app().await;
    let env = app
        .post(
            "send_dingtalk",
            json!({"receiver__username": "alice,bob", "title": "Disk full", "content": "host-1 95%"}),
        )
        .await;
    assert_eq!(env["result"], true, "{env}");
    assert_eq!(
        statuses(&env),
        pairs(&[("alice", "queued"), ("bob", "queued")]),
        "a task id is not a delivery: {env}"
    );
    let got = notices(&app);
    assert_eq!(got.len(), 1, "one asyncsend_v2 for both: {got:?}");
    assert_eq!(got[0].user_ids, ["alice-ding", "bob-ding"]);
    assert_eq!(got[0].target, DEMO_AGENT_ID);
    assert_eq!(
        got[0].body,
        json!({"msgtype": "text", "text": {"content": "Disk full\nhost-1 95%"}})
    );
    assert!(
        app.sim
            .state
            .messages()
            .iter()
            .all(|m| m.api != "batch_send"),
        "not the app robot"
    );
    let before = log(&app, &env).await;
    for d in before["data"]["deliveries"].as_array().unwrap() {
        assert_eq!(d["kind"], "work_notice", "{d}");
        assert_eq!(d["status"], "queued", "{d}");
        assert!(
            d["error"]
                .as_str()
                .unwrap()
                .contains("waiting for DingTalk to report it delivered"),
            "{d}"
        );
    }
    let id = env["data"]["message_id"].as_str().unwrap();
    let shown = stdout(&app.cli(&["deliveries", "show", id]));
    assert!(shown.contains("queued"), "{shown}");

    assert_eq!(poll(&app).await, 2);
    let after = log(&app, &env).await;
    for d in after["data"]["deliveries"].as_array().unwrap() {
        assert_eq!(d["status"], "sent", "{d}");
        assert!(
            d["dingtalk_request_id"].is_string(),
            "the task id is kept: {d}"
        );
    }
    let shown = stdout(&app.cli(&["deliveries", "show", id]));
    assert!(shown.contains("sent"), "{shown}");
    assert_eq!(notices(&app).len(), 1, "sent once");
    assert_eq!(
        app.sim.state.stats().requests["getsendresult"],
        1,
        "one poll for the task"
    );
    assert_eq!(poll(&app).await, 0, "nothing left to poll");
}

#[tokio::test]
async fn the_same_content_dropped_for_today_is_retried_with_content_that_differs() {
    let app = work_notice_app().await;
    let send = || {
        app.post(
            "send_dingtalk",
            json!({"receiver__username": "alice", "content": "deploy done"}),
        )
    };
    let first = send().await;
    poll(&app).await;
    assert_eq!(
        statuses(&log(&app, &first).await),
        pairs(&[("alice", "sent")])
    );

    // DingTalk takes the second call, then drops it silently: getsendresult says 143106.
    let second = send().await;
    assert_eq!(poll(&app).await, 1);
    let d = &log(&app, &second).await["data"]["deliveries"][0];
    assert_eq!(d["status"], "queued", "{d}");
    assert_eq!(d["dingtalk_code"], "143106", "{d}");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .contains("the same content reached them today"),
        "{d}"
    );
    assert_eq!(notices(&app).len(), 1, "the drop reached nobody");

    // The retry carries the message id and attempt, so DingTalk takes it.
    app.clock.advance_ms(600_000);
    app.drain().await;
    assert_eq!(poll(&app).await, 1);
    assert_eq!(
        statuses(&log(&app, &second).await),
        pairs(&[("alice", "sent")])
    );
    let got = notices(&app);
    assert_eq!(got.len(), 2, "{got:?}");
    let retried = got[1].body["text"]["content"].as_str().unwrap();
    let id = second["data"]["message_id"].as_str().unwrap();
    assert_eq!(retried, format!("deploy done\n\n(retry 1 · {id})"));
}

#[tokio::test]
async fn a_person_over_the_daily_cap_is_retried_after_midnight() {
    let app = work_notice_app().await;
    app.sim.state.configure(|c| c.notice_daily_cap = 1);
    app.post(
        "send_dingtalk",
        json!({"receiver__username": "alice", "content": "one"}),
    )
    .await;
    poll(&app).await;
    let env = app
        .post(
            "send_dingtalk",
            json!({"receiver__username": "alice", "content": "two"}),
        )
        .await;
    let sent_at = ding_channel::clock::Clock::now_ms(&*app.clock);
    poll(&app).await;
    let d = &log(&app, &env).await["data"]["deliveries"][0];
    assert_eq!(d["status"], "queued", "{d}");
    assert_eq!(d["dingtalk_code"], "143105", "{d}");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .contains("at most 500 a day from one app"),
        "{d}"
    );
    // The default zone is +08:00: not before the next local midnight.
    let zone = ding_channel::clock::Zone::parse("+08:00").unwrap();
    let midnight = zone.next_midnight(sent_at + 3_000);
    assert!(d["next_attempt_at"].as_i64().unwrap() >= midnight, "{d}");
}

#[tokio::test]
async fn an_unknown_userid_fails_with_what_to_fix() {
    let app = work_notice_app().await;
    let env = app
        .post(
            "send_dingtalk",
            json!({"userid": "alice-ding,ghost-ding", "content": "x"}),
        )
        .await;
    assert_eq!(poll(&app).await, 2);
    let log = log(&app, &env).await;
    let ds = log["data"]["deliveries"].as_array().unwrap();
    assert_eq!(ds[0]["status"], "sent", "{log}");
    assert_eq!(ds[1]["status"], "failed", "{log}");
    assert_eq!(ds[1]["dingtalk_code"], "invalid_user_id");
    assert!(
        ds[1]["error"]
            .as_str()
            .unwrap()
            .contains("in the app's visible range"),
        "{log}"
    );
}

#[tokio::test]
async fn more_than_a_hundred_people_go_in_tasks_of_a_hundred() {
    let app = work_notice_app().await;
    let ids: Vec<String> = (0..150).map(|i| format!("user-{i:03}")).collect();
    app.sim.state.configure(|c| {
        for (i, id) in ids.iter().enumerate() {
            c.users.push(SimUser {
                mobile: format!("1390000{i:04}"),
                userid: id.clone(),
            });
        }
    });
    let env = app
        .post(
            "send_dingtalk",
            json!({"userid": ids.join(","), "content": "all hands"}),
        )
        .await;
    let sizes: Vec<usize> = notices(&app).iter().map(|m| m.user_ids.len()).collect();
    assert_eq!(sizes, [100, 50]);
    assert_eq!(poll(&app).await, 150);
    let log = log(&app, &env).await;
    assert!(
        log["data"]["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "sent"),
        "getsendresult answered for both tasks: {log}"
    );
    assert_eq!(app.sim.state.stats().requests["getsendresult"], 2);
}

#[tokio::test]
async fn the_mode_is_refused_without_an_agent_id_naming_the_fix() {
    let app = TestApp::spawn().await;
    let out = app.cli(&[
        "channels",
        "conf",
        "send_dingtalk",
        "single_chat_mode=work_notice",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out)
            .contains("set ding_agent_id=… (the app's AgentId in the DingTalk developer console)"),
        "{}",
        stderr(&out)
    );
    let line = ding_channel::sandbox::work_notice_conf();
    let args: Vec<&str> = line.split(' ').skip(1).collect();
    let out = app.cli(&args);
    assert!(
        out.status.success(),
        "the sandbox's line works: {}",
        stderr(&out)
    );
}

#[tokio::test]
async fn a_long_message_goes_part_by_part_each_confirmed_before_the_next() {
    let app = work_notice_app().await;
    let long = "a line of the incident log\n".repeat(150);
    let env = app
        .post(
            "send_dingtalk",
            json!({"receiver__username": "alice", "content": long}),
        )
        .await;
    let first = notices(&app)[0].body["text"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let n: usize = first
        .strip_prefix("(1/")
        .and_then(|r| r.split_once(')'))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("numbered: {first}"));
    assert!(n >= 2, "{n}");
    for k in 1..n {
        assert_eq!(
            notices(&app).len(),
            k,
            "part {} waits for part {k}'s report",
            k + 1
        );
        assert_eq!(poll(&app).await, 1);
        assert_eq!(
            statuses(&log(&app, &env).await),
            pairs(&[("alice", "queued")])
        );
    }
    assert_eq!(poll(&app).await, 1);
    assert_eq!(
        statuses(&log(&app, &env).await),
        pairs(&[("alice", "sent")])
    );
    let got = notices(&app);
    assert_eq!(got.len(), n);
    for (k, m) in got.iter().enumerate() {
        let c = m.body["text"]["content"].as_str().unwrap();
        assert!(c.starts_with(&format!("({}/{n})", k + 1)), "{c}");
        assert!(m.body.to_string().len() <= 2048, "part {k}");
    }
    assert_eq!(
        app.sim.state.stats().requests["getsendresult"],
        n as u64,
        "one poll per part"
    );
}

#[tokio::test]
async fn a_task_dingtalk_no_longer_knows_is_sent_again() {
    let app = work_notice_app().await;
    let env = app
        .post(
            "send_dingtalk",
            json!({"receiver__username": "alice", "content": "x"}),
        )
        .await;
    app.sim.state.reset(); // DingTalk forgets the task
    assert_eq!(poll(&app).await, 1);
    let d = &log(&app, &env).await["data"]["deliveries"][0];
    assert_eq!(d["status"], "queued", "{d}");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .contains("cannot ask DingTalk about work notification task"),
        "{d}"
    );
    app.clock.advance_ms(600_000);
    app.drain().await;
    assert_eq!(notices(&app).len(), 1, "sent again");
    assert_eq!(poll(&app).await, 1);
    assert_eq!(
        statuses(&log(&app, &env).await),
        pairs(&[("alice", "sent")])
    );
}

/// Each receiver's `read` in the delivery log.
fn reads(log: &Value) -> Vec<(String, Value)> {
    log["data"]["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["receiver"].as_str().unwrap().to_owned(),
                d["read"].clone(),
            )
        })
        .collect()
}

/// Sends `content` to alice and bob and lets getsendresult report it delivered.
async fn sent_to_alice_and_bob(app: &TestApp, content: &str) -> Value {
    let env = app
        .post(
            "send_dingtalk",
            json!({"receiver__username": "alice,bob", "content": content}),
        )
        .await;
    assert_eq!(env["result"], true, "{env}");
    assert_eq!(poll(app).await, 2);
    assert_eq!(
        statuses(&log(app, &env).await),
        pairs(&[("alice", "sent"), ("bob", "sent")])
    );
    env
}

#[tokio::test]
async fn the_log_says_who_read_a_work_notification_and_a_recall_takes_it_back() {
    let app = work_notice_app().await;
    let env = sent_to_alice_and_bob(&app, "host-1 95%").await;
    let id = env["data"]["message_id"].as_str().unwrap();
    assert_eq!(app.sim.state.mark_read("alice-ding"), 1);
    let r = reads(&log(&app, &env).await);
    assert_eq!(
        r[0].1["state"], "unread",
        "getsendresult's answer is trusted for a minute: {r:?}"
    );
    app.clock.advance_ms(60_000);
    let asked = app.sim.state.stats().requests["getsendresult"];

    let r = reads(&log(&app, &env).await);
    assert_eq!(r[0].0, "alice");
    assert_eq!(r[0].1["state"], "read", "{r:?}");
    assert_eq!(r[1].1["state"], "unread", "{r:?}");
    assert_eq!(
        app.sim.state.stats().requests["getsendresult"],
        asked + 1,
        "one getsendresult for the task of both"
    );
    let show = app.cli_at_sim(&["deliveries", "show", id]).await;
    assert!(show.status.success(), "{}", stderr(&show));
    let out = stdout(&show);
    assert!(
        out.split("alice (work_notice)")
            .nth(1)
            .unwrap()
            .contains("    read 20"),
        "{out}"
    );
    assert!(
        out.split("bob (work_notice)")
            .nth(1)
            .unwrap()
            .contains("    unread"),
        "{out}"
    );

    // Bob's unread is trusted for a minute; alice is stored as read and not asked about.
    app.clock.advance_ms(60_000);
    let r = reads(&log(&app, &env).await);
    assert_eq!(r[0].1["state"], "read", "{r:?}");
    let asked = app.sim.state.stats().requests["getsendresult"];

    let o = app.cli_at_sim(&["deliveries", "recall", id]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("alice                    recalled 20"),
        "{out}"
    );
    assert!(
        out.contains("bob                      recalled 20"),
        "{out}"
    );
    assert_eq!(
        app.sim.state.stats().requests["work_notice_recall"],
        1,
        "one recall for the task of both"
    );
    assert!(notices(&app).is_empty(), "{:?}", notices(&app));

    let r = reads(&log(&app, &env).await);
    assert!(
        r.iter().all(|(_, read)| read["state"] == "recalled"),
        "{r:?}"
    );
    assert_eq!(
        app.sim.state.stats().requests["getsendresult"],
        asked,
        "a recalled send is not asked about"
    );
    let show = stdout(&app.cli_at_sim(&["deliveries", "show", id]).await);
    assert!(show.contains("    recalled 20"), "{show}");

    let again = stdout(&app.cli_at_sim(&["deliveries", "recall", id]).await);
    assert!(
        again.contains("alice                    already recalled 20"),
        "{again}"
    );
    assert!(
        again.contains("bob                      already recalled 20"),
        "{again}"
    );
    assert_eq!(app.sim.state.stats().requests["work_notice_recall"], 1);
}

#[tokio::test]
async fn past_24_hours_a_work_notification_is_neither_asked_about_nor_recalled() {
    let app = work_notice_app().await;
    let env = sent_to_alice_and_bob(&app, "old news").await;
    let id = env["data"]["message_id"].as_str().unwrap();
    assert_eq!(app.sim.state.mark_read("alice-ding"), 1);
    app.clock.advance_ms(60_000);
    let r = reads(&log(&app, &env).await);
    assert_eq!(r[0].1["state"], "read", "{r:?}");

    app.clock.advance_ms(24 * 3_600_000 + 1);
    let asked = app.sim.state.stats().requests["getsendresult"];
    let r = reads(&log(&app, &env).await);
    assert_eq!(
        r[0].1["state"], "read",
        "a person who read it stays read: {r:?}"
    );
    assert_eq!(r[1].1["state"], "unknown", "{r:?}");
    assert_eq!(app.sim.state.stats().requests["getsendresult"], asked);

    let report = ding_channel::outbox::readback::recall(&app.outbox, id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        report.iter().all(|(_, o)| matches!(o,
            ding_channel::outbox::readback::Recall::NotRecallable { why } if why.starts_with("older than 24 h"))),
        "{report:?}"
    );
    assert!(!app
        .sim
        .state
        .stats()
        .requests
        .contains_key("work_notice_recall"));
    assert_eq!(notices(&app).len(), 1, "still there");
}

#[tokio::test]
async fn the_simulators_recall_checks_the_token_the_agent_the_task_and_the_window() {
    let app = TestApp::spawn().await;
    let (base, http) = (app.sim.base_url(), reqwest::Client::new());
    let new_token = || async {
        let answer: Value = http
            .get(format!("{base}/gettoken"))
            .query(&[
                ("appkey", "dingsandboxappkey"),
                ("appsecret", "sandbox-app-secret-0123456789"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["access_token"].as_str().unwrap().to_owned()
    };
    let token = new_token().await;
    let call = |path: &str, token: &str, body: Value| {
        http.post(format!("{base}/topapi/message/corpconversation/{path}"))
            .query(&[("access_token", token)])
            .json(&body)
            .send()
    };
    let agent: i64 = DEMO_AGENT_ID.parse().unwrap();
    let sent: Value = call(
        "asyncsend_v2",
        &token,
        json!({"agent_id": agent, "userid_list": "alice-ding,bob-ding",
            "msg": {"msgtype": "text", "text": {"content": "x"}}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let task = sent["task_id"].as_i64().unwrap();
    let recall = |token: &str, agent: i64, task: i64| {
        let answer = call(
            "recall",
            token,
            json!({"agent_id": agent, "msg_task_id": task}),
        );
        async move { answer.await.unwrap().json::<Value>().await.unwrap()["errcode"].clone() }
    };
    assert_eq!(recall("not-a-token", agent, task).await, 88);
    assert_eq!(
        recall(&token, agent + 1, task).await,
        60011,
        "another agent"
    );
    assert_eq!(recall(&token, agent, task + 1).await, 40035, "no such task");

    assert_eq!(app.sim.state.mark_read("alice-ding"), 1);
    let result: Value = call(
        "getsendresult",
        &token,
        json!({"agent_id": agent, "task_id": task}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        result["send_result"]["read_user_id_list"],
        json!(["alice-ding"])
    );
    assert_eq!(
        result["send_result"]["unread_user_id_list"],
        json!(["bob-ding"])
    );

    app.clock.advance_ms(24 * 3_600_000 + 1);
    let token = new_token().await;
    assert_eq!(recall(&token, agent, task).await, 40035, "past 24 h");
    assert_eq!(notices(&app).len(), 1, "still there");
}

#[tokio::test]
async fn a_task_sent_before_the_mode_is_switched_back_is_still_followed_up() {
    let app = work_notice_app().await;
    let env = app
        .post(
            "send_dingtalk",
            json!({"receiver__username": "alice", "title": "Disk full", "content": "host-1 95%"}),
        )
        .await;
    assert_eq!(statuses(&env), pairs(&[("alice", "queued")]), "{env}");
    let conf = BTreeMap::from([("single_chat_mode".to_owned(), "robot".to_owned())]);
    ding_channel::channels::registry::set_conf(&mut app.db.get().unwrap(), "send_dingtalk", &conf)
        .unwrap()
        .unwrap();
    poll(&app).await;
    let after = log(&app, &env).await;
    assert_eq!(statuses(&after), pairs(&[("alice", "sent")]), "{after}");
    assert_eq!(notices(&app).len(), 1, "sent once, by the task before");
}

#[tokio::test]
async fn a_task_dingtalk_cannot_be_asked_about_for_a_day_is_sent_again() {
    let app = TestApp::spawn_with(
        TestDb::new(),
        repo_manifest(),
        &[("DING_CHANNEL_MAX_AGE_S", "259200")],
    )
    .await;
    let conf = BTreeMap::from([
        ("single_chat_mode".to_owned(), "work_notice".to_owned()),
        ("ding_agent_id".to_owned(), DEMO_AGENT_ID.to_owned()),
    ]);
    ding_channel::channels::registry::set_conf(&mut app.db.get().unwrap(), "send_dingtalk", &conf)
        .unwrap()
        .unwrap();
    let env = app
        .post(
            "send_dingtalk",
            json!({"receiver__username": "alice", "title": "Disk full", "content": "host-1 95%"}),
        )
        .await;
    assert_eq!(statuses(&env), pairs(&[("alice", "queued")]), "{env}");
    app.sim
        .state
        .set_faults(ding_channel::simulator::Faults::http(
            503,
            &["getsendresult"],
        ));
    // Asked about every 10 minutes at most, for DingTalk's whole window.
    for _ in 0..150 {
        app.clock.advance_ms(600_000);
        app.drain().await;
    }
    // Past the window it is sent again, though getsendresult still fails.
    assert_eq!(notices(&app).len(), 2, "sent again once the window passed");
    app.sim.state.set_faults(Default::default());
    for _ in 0..3 {
        app.clock.advance_ms(600_000);
        app.drain().await;
    }
    assert_eq!(notices(&app).len(), 2, "and only once");
    let after = log(&app, &env).await;
    assert_eq!(statuses(&after), pairs(&[("alice", "sent")]), "{after}");
}
