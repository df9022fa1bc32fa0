//! Did they read it, and recall: the app robot's single chat through DingTalk's readStatus and
//! batchRecall (the simulator's), shown in the delivery log and `deliveries show`, recalled by
//! `deliveries recall`.

use crate::helpers::*;
use ding_channel::outbox::readback::{self, Recall};
use ding_channel::simulator::SimUser;
use serde_json::{json, Value};

const DAY_MS: i64 = 24 * 3600 * 1000;

fn log(id: &str) -> String {
    format!("/api/v1/messages/{id}?bk_app_code={APP}&bk_app_secret={APP_SECRET}")
}

async fn send(app: &TestApp, to: Value) -> String {
    send_content(app, to, "deploy done").await
}

async fn send_content(app: &TestApp, to: Value, content: &str) -> String {
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": to, "content": content}),
        )
        .await;
    assert_eq!(env["result"], true, "{env}");
    env["data"]["message_id"].as_str().unwrap().to_owned()
}

/// Each receiver's `read` in the delivery log.
async fn reads(app: &TestApp, id: &str) -> Vec<(String, Value)> {
    let (status, view) = app.get(&log(id)).await;
    assert_eq!(status, 200, "{view}");
    view["data"]["deliveries"]
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

#[tokio::test]
async fn the_log_says_who_read_it_and_after_24_hours_that_it_is_unknown() {
    let app = TestApp::spawn().await;
    let id = send(&app, json!("alice,bob")).await;
    assert_eq!(app.sim.state.mark_read("alice-ding"), 1);

    let r = reads(&app, &id).await;
    assert_eq!(r[0].0, "alice");
    assert_eq!(r[0].1["state"], "read", "{r:?}");
    assert_eq!(r[1].1["state"], "unread", "{r:?}");
    assert_eq!(
        app.sim.state.stats().requests["read_status"],
        1,
        "one key for both"
    );

    let show = app.cli_at_sim(&["deliveries", "show", &id]).await;
    assert!(show.status.success(), "{}", stderr(&show));
    let out = stdout(&show);
    let alice = out.split("alice (user)").nth(1).unwrap();
    assert!(alice.contains("    read 20"), "{out}");
    assert!(
        out.split("bob (user)")
            .nth(1)
            .unwrap()
            .contains("    unread"),
        "{out}"
    );

    // Bob's unread is trusted for a minute; alice is stored as read and not asked about.
    reads(&app, &id).await;
    let asked = app.sim.state.stats().requests["read_status"];
    app.clock.advance_ms(60_000);
    reads(&app, &id).await;
    assert_eq!(app.sim.state.stats().requests["read_status"], asked + 1);

    app.clock.advance_ms(DAY_MS);
    let r = reads(&app, &id).await;
    assert_eq!(
        r[0].1["state"], "read",
        "a person who read it stays read: {r:?}"
    );
    assert_eq!(r[1].1["state"], "unknown", "{r:?}");
    assert!(
        r[1].1["why"]
            .as_str()
            .unwrap()
            .starts_with("older than 24 h"),
        "{r:?}"
    );
    assert_eq!(
        app.sim.state.stats().requests["read_status"],
        asked + 1,
        "DingTalk is not asked past its window"
    );
}

#[tokio::test]
async fn a_recall_removes_the_message_and_the_log_records_it() {
    let app = TestApp::spawn().await;
    let id = send(&app, json!("alice,ops-robot")).await;
    assert_eq!(app.sim.state.messages().len(), 2);

    let o = app.cli_at_sim(&["deliveries", "recall", &id]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("alice                    recalled 20"),
        "{out}"
    );
    assert!(
        out.contains(
            "ops-robot                not recallable: a group robot's message cannot be recalled"
        ),
        "{out}"
    );
    let left = app.sim.state.messages();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].api, "robot_send");

    let r = reads(&app, &id).await;
    assert_eq!(r[0].1["state"], "recalled", "{r:?}");
    assert_eq!(r[1].1, Value::Null, "a robot's reading is not known: {r:?}");
    let show = stdout(&app.cli_at_sim(&["deliveries", "show", &id]).await);
    assert!(show.contains("    recalled 20"), "{show}");

    let again = stdout(&app.cli_at_sim(&["deliveries", "recall", &id]).await);
    assert!(
        again.contains("alice                    already recalled 20"),
        "{again}"
    );
    assert_eq!(app.sim.state.stats().requests["batch_recall"], 1);

    let o = app
        .cli_at_sim(&["deliveries", "recall", "no-such-message"])
        .await;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no message 'no-such-message'"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn a_message_in_more_than_20_sends_is_recalled_in_two_calls_within_24_hours_only() {
    let mut cfg = ding_channel::simulator::demo_config();
    cfg.users.extend((0..25).map(|i| SimUser {
        mobile: format!("1390000{i:04}"),
        userid: format!("u{i}"),
    }));
    let app = TestApp::spawn_full(
        TestDb::new(),
        repo_manifest(),
        &[("DING_CHANNEL_APP_QPS", "1000")],
        cfg,
        true,
    )
    .await;
    let lines: Vec<String> = (0..25)
        .map(|i| format!(r#"{{"username":"p{i}","telephone":"1390000{i:04}"}}"#))
        .collect();
    app.import_users(&lines.join("\n"));
    let names: Vec<String> = (0..25).map(|i| format!("p{i}")).collect();
    // 25 people take 2 batchSend calls a part; a long message's parts make it more than 20
    // processQueryKeys, so more than one batchRecall.
    let long: String = (0..2400)
        .map(|i| format!("line {i:04} of the deploy log\n"))
        .collect();
    let id = send_content(&app, json!(names), &long).await;
    let keys = app.sim.state.messages().len();
    assert!((21..=40).contains(&keys), "{keys} keys");
    let late = send(&app, json!("alice")).await;

    let report = readback::recall(&app.outbox, &id).await.unwrap().unwrap();
    assert_eq!(report.len(), 25);
    assert!(
        report
            .iter()
            .all(|(_, o)| matches!(o, Recall::Recalled { .. })),
        "{report:?}"
    );
    assert_eq!(app.sim.state.stats().requests["batch_recall"], 2);
    let left = app.sim.state.messages();
    assert_eq!(left.len(), 1, "only the message to alice is left");
    assert_eq!(left[0].user_ids, ["alice-ding"]);

    app.clock.advance_ms(DAY_MS + 1);
    let report = readback::recall(&app.outbox, &late).await.unwrap().unwrap();
    assert!(
        matches!(&report[0].1, Recall::NotRecallable { why } if why.starts_with("older than 24 h")),
        "{report:?}"
    );
    assert_eq!(app.sim.state.stats().requests["batch_recall"], 2);
}

/// An access token of the simulator's demo app.
async fn sim_token(http: &reqwest::Client, base: &str) -> String {
    let answer: Value = http
        .post(format!("{base}/v1.0/oauth2/accessToken"))
        .json(&json!({"appKey": "dingsandboxappkey", "appSecret": "sandbox-app-secret-0123456789"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["accessToken"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_simulator_checks_the_token_the_key_count_and_the_window() {
    let app = TestApp::spawn().await;
    let id = send(&app, json!("alice")).await;
    let key = app.sim.state.messages()[0]
        .process_query_key
        .clone()
        .unwrap();
    assert!(
        key.contains('+') && key.contains('/') && key.ends_with('='),
        "{key}"
    );
    let base = app.sim.base_url();
    let http = reqwest::Client::new();
    let read = |token: String| {
        http.get(format!("{base}/v1.0/robot/oToMessages/readStatus"))
            .query(&[
                ("robotCode", "dingsandboxappkey"),
                ("processQueryKey", &key),
            ])
            .header("x-acs-dingtalk-access-token", token)
            .send()
    };
    let recall = |token: String, keys: Vec<String>| {
        http.post(format!("{base}/v1.0/robot/otoMessages/batchRecall"))
            .header("x-acs-dingtalk-access-token", token)
            .json(&json!({"robotCode": "dingsandboxappkey", "processQueryKeys": keys}))
            .send()
    };
    let token = sim_token(&http, &base).await;
    assert_eq!(read("not-a-token".into()).await.unwrap().status(), 401);
    assert_eq!(
        recall("not-a-token".into(), vec![key.clone()])
            .await
            .unwrap()
            .status(),
        401
    );
    let ok: Value = read(token.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(ok["messageReadInfoList"][0]["readStatus"], "UNREAD", "{ok}");
    let too_many = recall(token, vec![key.clone(); 21]).await.unwrap();
    assert_eq!(too_many.status(), 400);

    app.clock.advance_ms(DAY_MS + 1);
    let token = sim_token(&http, &base).await;
    assert_eq!(
        read(token.clone()).await.unwrap().status(),
        400,
        "past 24 h"
    );
    let late: Value = recall(token, vec![key.clone()])
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(late["failedResult"][&key].is_string(), "{late}");
    assert_eq!(app.sim.state.messages().len(), 1, "{id} is still there");
}

#[tokio::test]
async fn a_recall_withdraws_what_is_not_sent_yet_so_nothing_arrives_after_it() {
    let app = TestApp::spawn().await;
    // bob is flow-controlled: his delivery waits for a retry while alice's was sent.
    app.sim.state.set_faults(ding_channel::simulator::Faults {
        flow_controlled: vec!["bob-ding".into()],
        ..Default::default()
    });
    let id = send(&app, json!("alice,bob")).await;
    let o = app.cli_at_sim(&["deliveries", "recall", &id]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("alice                    recalled 20"),
        "{out}"
    );
    assert!(
        out.contains("bob                      not sent yet: withdrawn, it will not be sent"),
        "{out}"
    );
    let sends = app.sim.state.stats().requests["batch_send"];
    app.clock.advance_ms(600_000);
    assert_eq!(app.drain().await, 0, "nothing is due any more");
    assert_eq!(app.sim.state.stats().requests["batch_send"], sends);
    assert!(
        app.sim.state.messages().is_empty(),
        "{:?}",
        app.sim.state.messages()
    );
    let show = stdout(&app.cli_at_sim(&["deliveries", "show", &id]).await);
    assert!(show.contains("recalled before it was sent"), "{show}");
}
