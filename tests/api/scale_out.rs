//! Two real server processes on one PostgreSQL database deliver together: every message once,
//! and a robot's limits hold across both. Runs in the PostgreSQL suite only.

use crate::helpers::*;
use ding_channel::simulator::Faults;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_deliver_every_message_once_and_share_robot_limits() {
    if std::env::var("TEST_DATABASE_URL").is_err() {
        eprintln!("scale-out test skipped: set TEST_DATABASE_URL to run it against PostgreSQL");
        return;
    }
    let db = TestDb::new();
    let sim = real_time_simulator();
    let a = serve(&db.url, &sim.base_url(), &[]);
    let b = serve(&db.url, &sim.base_url(), &[]);
    seeded(&db);
    let http = reqwest::Client::new();
    let send = |server: &Server, channel: &str, body: Value| {
        let (http, url) = (http.clone(), format!("{}/{channel}/", server.url));
        async move {
            let mut body = body;
            body["bk_app_code"] = APP.into();
            body["bk_app_secret"] = APP_SECRET.into();
            http.post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };

    // 500 messages while DingTalk fails: all queued; then 500 more while it works.
    sim.state.set_faults(Faults::http(503, &["batch_send"]));
    for round in 0..2 {
        for chunk in (0..500).collect::<Vec<_>>().chunks(50) {
            let calls = chunk.iter().map(|i| {
                let server = if i % 2 == 0 { &a } else { &b };
                send(
                    server,
                    "send_ding",
                    json!({"receiver__username": "alice", "content": format!("m-{round}-{i}")}),
                )
            });
            for env in futures_util::future::join_all(calls).await {
                assert_eq!(env["result"], true, "{env}");
            }
        }
        sim.state.set_faults(Faults::default());
    }
    // The queued half is retried by both processes' pollers, racing for the same rows.
    wait_until("1000 messages", Duration::from_secs(60), || {
        sim.state.messages().len() >= 1000
    })
    .await;
    let got: Vec<String> = sim
        .state
        .messages()
        .iter()
        .map(|m| m.body["msgParam"]["content"].as_str().unwrap().to_owned())
        .collect();
    let unique: std::collections::BTreeSet<&String> = got.iter().collect();
    assert_eq!(got.len(), 1000, "no message twice");
    assert_eq!(unique.len(), 1000);

    // A storm to one robot through both processes: DingTalk's 20-per-minute never exceeded.
    for chunk in (0..60).collect::<Vec<_>>().chunks(20) {
        let calls = chunk.iter().map(|i| {
            let server = if i % 2 == 0 { &a } else { &b };
            send(server, "send_dingbot", json!({"receiver__username": "ops-robot", "title": format!("storm-{i}"), "content": "x"}))
        });
        futures_util::future::join_all(calls).await;
    }
    let robot_text = |m: &ding_channel::simulator::SimMessage| m.body.to_string();
    wait_until("the storm", Duration::from_secs(60), || {
        let all: String = sim
            .state
            .messages()
            .iter()
            .filter(|m| m.api == "robot_send")
            .map(robot_text)
            .collect();
        (0..60).all(|i| {
            let word = format!("storm-{i}");
            all.match_indices(&word)
                .any(|(at, _)| !all[at + word.len()..].starts_with(|c: char| c.is_ascii_digit()))
        })
    })
    .await;
    assert_eq!(sim.state.stats().throttled, 0, "{:?}", sim.state.stats());
    let sends = sim
        .state
        .messages()
        .iter()
        .filter(|m| m.api == "robot_send")
        .count();
    assert!(
        sends <= 20,
        "{sends} robot sends for 60 alerts within a minute"
    );
}
