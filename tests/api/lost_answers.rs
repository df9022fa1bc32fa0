//! A DingTalk call whose answer is lost (it timed out, or the connection closed without an
//! answer) counts as not sent and is sent again: what DingTalk carried out arrives twice, the
//! first copy marked by the simulator (the duplicates the chaos run explains this way); what
//! it never looked at arrives once.

use crate::helpers::*;
use ding_channel::simulator::LostAnswer;
use serde_json::{json, Value};

#[tokio::test]
async fn an_unanswered_call_is_sent_again_and_arrives_twice_only_if_it_was_carried_out() {
    let app = TestApp::spawn_with(
        TestDb::new(),
        repo_manifest(),
        &[("DINGTALK_TIMEOUT_MS", "300")],
    )
    .await;
    let cases = [
        ("drop_before_rate", None, "network"),
        ("drop_after_rate", Some(LostAnswer::Dropped), "network"),
        ("timeout_rate", Some(LostAnswer::Timeout), "timeout"),
    ];
    for (fault, lost, code) in cases {
        // The first call of each path (the robot's webhook, alice's batchSend) loses its answer.
        let faults = json!({fault: 1.0, "timeout_ms": 2000, "count": 2, "apis": ["robot_send", "batch_send"]});
        app.sim
            .state
            .set_faults(serde_json::from_value(faults).unwrap());
        let env = app
            .post(
                "send_ding",
                json!({"receiver__username": "ops-robot,alice", "content": fault}),
            )
            .await;
        assert_eq!(
            statuses(&env),
            pairs(&[("ops-robot", "queued"), ("alice", "queued")]),
            "{fault}: {env}"
        );
        app.clock.advance_ms(120_000);
        assert_eq!(app.drain().await, 2, "{fault}");

        for (api, to) in [("robot_send", "ops-robot"), ("batch_send", "alice-ding")] {
            let copies: Vec<_> = app
                .sim
                .state
                .messages()
                .into_iter()
                .filter(|m| m.api == api && m.body.to_string().contains(fault))
                .inspect(|m| assert!(m.target == to || m.user_ids == [to]))
                .map(|m| m.lost_answer)
                .collect();
            let want: Vec<_> = lost.into_iter().map(Some).chain([None]).collect();
            assert_eq!(copies, want, "{fault}: what reached {to}");
        }
        let log = log(&app, &env).await;
        for d in log["data"]["deliveries"].as_array().unwrap() {
            let history: Vec<(&str, Option<&str>)> = d["history"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| (a["outcome"].as_str().unwrap(), a["code"].as_str()))
                .collect();
            assert_eq!(
                history,
                [("retry", Some(code)), ("sent", None)],
                "{fault}: {d}"
            );
        }
    }
}

/// The delivery log of the message `env` answered for.
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
