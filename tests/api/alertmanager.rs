//! Prometheus Alertmanager's webhook: basic auth with an app, the payload read strictly,
//! 2xx once stored and 5xx to retry, the same group notification sent once.

use crate::helpers::*;
use ding_channel::simulator::Faults;
use serde_json::{json, Value};

pub(crate) fn alert(status: &str, fingerprint: &str, instance: &str) -> Value {
    json!({
        "status": status,
        "labels": {"alertname": "HighCPU", "env": "prod", "severity": "critical", "instance": instance},
        "annotations": {"summary": "CPU above 90%", "description": "load *high* on [host]"},
        "startsAt": "2026-12-01T10:00:00.123Z",
        "endsAt": if status == "resolved" { "2026-12-01T11:05:00Z" } else { "0001-01-01T00:00:00Z" },
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up (x)",
        "fingerprint": fingerprint,
    })
}

pub(crate) fn notification(status: &str, alerts: Vec<Value>) -> Value {
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"HighCPU\", env=\"prod\"}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "ding",
        "groupLabels": {"alertname": "HighCPU", "env": "prod"},
        "commonLabels": {"alertname": "HighCPU", "env": "prod", "severity": "critical"},
        "commonAnnotations": {"summary": "CPU above 90%"},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts,
    })
}

pub(crate) async fn post(
    app: &TestApp,
    receivers: &str,
    auth: Option<(&str, &str)>,
    body: &Value,
) -> (u16, Option<String>, Value) {
    let mut req = app
        .client
        .post(format!("{}/api/v1/alertmanager/{receivers}", app.address))
        .json(body);
    if let Some((code, secret)) = auth {
        req = req.basic_auth(code, Some(secret));
    }
    let res = req.send().await.expect("request sent");
    let status = res.status().as_u16();
    let challenge = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, challenge, res.json().await.expect("JSON body"))
}

pub(crate) const DEMO: Option<(&str, &str)> = Some((APP, APP_SECRET));

pub(crate) fn markdown_texts(app: &TestApp) -> Vec<(String, String)> {
    app.sim
        .state
        .messages()
        .iter()
        .map(|m| match m.api {
            "robot_send" => (
                m.target.clone(),
                m.body["markdown"]["text"].as_str().unwrap().to_owned(),
            ),
            _ => {
                assert_eq!(m.body["msgKey"], "sampleMarkdown", "{:?}", m.body);
                (
                    m.user_ids.join(","),
                    m.body["msgParam"]["text"].as_str().unwrap().to_owned(),
                )
            }
        })
        .collect()
}

#[tokio::test]
async fn a_firing_notification_reaches_a_robot_and_a_person_as_markdown() {
    let app = TestApp::spawn().await;
    let body = notification(
        "firing",
        vec![
            alert("firing", "a1", "host-1"),
            alert("firing", "a2", "host-2"),
        ],
    );
    let (status, _, answer) = post(&app, "alice,ops-robot,ghost", DEMO, &body).await;
    assert_eq!(status, 200, "{answer}");
    let deliveries: Vec<(&str, &str)> = answer["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["receiver"].as_str().unwrap(),
                d["status"].as_str().unwrap(),
            )
        })
        .collect();
    // An unknown user is reported; retrying would not help, so the status stays 2xx.
    assert_eq!(
        deliveries,
        [
            ("alice", "sent"),
            ("ops-robot", "sent"),
            ("ghost", "failed")
        ]
    );
    let texts = markdown_texts(&app);
    assert_eq!(texts.len(), 2, "{texts:?}");
    for (to, text) in &texts {
        assert!(
            text.starts_with("### \\[FIRING:2\\] HighCPU (prod)\n\n"),
            "{to}: {text}"
        );
        assert!(text.contains("**Firing** (2)"), "{text}");
        assert!(
            text.contains("**critical** HighCPU: CPU above 90%"),
            "{text}"
        );
        assert!(text.contains("instance=host-2"), "{text}");
        assert!(
            !text.contains("env=prod"),
            "common labels are in the title: {text}"
        );
        assert!(
            text.contains("started 2026-12-01 18:00:00"),
            "UTC+8: {text}"
        );
        assert!(!text.contains("load *high*"), "escaped: {text}");
        assert!(
            text.contains("[source](http://prometheus:9090/graph?g0.expr=up%20%28x%29)"),
            "{text}"
        );
    }
    let title = app
        .sim
        .state
        .messages()
        .iter()
        .find(|m| m.api == "robot_send")
        .unwrap()
        .body["markdown"]["title"]
        .clone();
    assert_eq!(title, "[FIRING:2] HighCPU (prod)");
}

#[tokio::test]
async fn a_resolved_notification_shows_how_long_it_fired_and_what_was_truncated() {
    let app = TestApp::spawn().await;
    let mut body = notification("resolved", vec![alert("resolved", "a1", "host-1")]);
    body["truncatedAlerts"] = json!(7);
    let (status, _, answer) = post(&app, "ops-robot", DEMO, &body).await;
    assert_eq!(status, 200, "{answer}");
    let texts = markdown_texts(&app);
    let text = &texts[0].1;
    assert!(text.contains("RESOLVED:1"), "{text}");
    assert!(text.contains("**Resolved** (1)"), "{text}");
    assert!(text.contains("resolved after 1h 4m"), "{text}");
    assert!(text.contains("and 7 more"), "{text}");
}

#[tokio::test]
async fn bad_or_missing_credentials_are_401_with_a_basic_challenge() {
    let app = TestApp::spawn().await;
    let body = notification("firing", vec![alert("firing", "a1", "host-1")]);
    for auth in [
        None,
        Some((APP, "wrong-secret")),
        Some(("nobody", APP_SECRET)),
    ] {
        let (status, challenge, answer) = post(&app, "alice", auth, &body).await;
        assert_eq!(status, 401, "{auth:?}: {answer}");
        assert!(challenge.unwrap().starts_with("Basic"));
        assert!(!answer.to_string().contains("wrong-secret"), "{answer}");
    }
    assert!(app.sim.state.messages().is_empty());
}

#[tokio::test]
async fn a_payload_that_can_never_be_valid_is_400_naming_the_field() {
    let app = TestApp::spawn().await;
    let good = notification("firing", vec![alert("firing", "a1", "host-1")]);
    let mut no_group_key = good.clone();
    no_group_key.as_object_mut().unwrap().remove("groupKey");
    let mut bad_time = good.clone();
    bad_time["alerts"][0]["startsAt"] = json!("yesterday");
    let mut bad_status = good.clone();
    bad_status["alerts"][0]["status"] = json!("burning");
    let mut bad_labels = good.clone();
    bad_labels["commonLabels"] = json!({"env": 3});
    let mut old = good.clone();
    old["version"] = json!("3");
    for (body, field) in [
        (no_group_key, "groupKey"),
        (bad_time, "alerts[0].startsAt"),
        (bad_status, "alerts[0].status"),
        (bad_labels, "commonLabels"),
        (old, "version"),
        (json!([1]), "body"),
    ] {
        let (status, _, answer) = post(&app, "alice", DEMO, &body).await;
        assert_eq!(status, 400, "{field}: {answer}");
        assert_eq!(answer["field"], field, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().starts_with(field),
            "{answer}"
        );
    }
    let (status, _, answer) = post(&app, "al ice", DEMO, &good).await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (400, Some("receivers")),
        "{answer}"
    );
    assert!(app.sim.state.messages().is_empty());
}

#[tokio::test]
async fn the_same_group_notification_from_an_ha_pair_is_sent_once() {
    let app = TestApp::spawn().await;
    let first = notification(
        "firing",
        vec![
            alert("firing", "a1", "host-1"),
            alert("firing", "a2", "host-2"),
        ],
    );
    // The other Alertmanager lists the alerts in another order.
    let second = notification(
        "firing",
        vec![
            alert("firing", "a2", "host-2"),
            alert("firing", "a1", "host-1"),
        ],
    );
    let (s1, _, a1) = post(&app, "ops-robot", DEMO, &first).await;
    let (s2, _, a2) = post(&app, "ops-robot", DEMO, &second).await;
    assert_eq!((s1, s2), (200, 200), "{a1} {a2}");
    assert_eq!(a1["message_id"], a2["message_id"]);
    assert_eq!(a2["idempotent_replay"], true);
    assert_eq!(app.sim.state.messages().len(), 1);
    // One alert resolving is a new notification.
    let changed = notification(
        "firing",
        vec![
            alert("firing", "a1", "host-1"),
            alert("resolved", "a2", "host-2"),
        ],
    );
    let (s3, _, a3) = post(&app, "ops-robot", DEMO, &changed).await;
    assert_eq!(s3, 200, "{a3}");
    assert_ne!(a3["message_id"], a1["message_id"]);
    assert_eq!(app.sim.state.messages().len(), 2);
    // Alertmanager's repeat_interval reminder carries the same payload hours later: sent.
    app.clock.advance_ms(4 * 3600 * 1000);
    let (s4, _, a4) = post(&app, "ops-robot", DEMO, &first).await;
    assert_eq!((s4, &a4["idempotent_replay"]), (200, &json!(false)), "{a4}");
    assert_eq!(app.sim.state.messages().len(), 3);
}

#[tokio::test]
async fn storage_that_fails_is_503_so_alertmanager_retries() {
    use diesel::RunQueryDsl;
    let app = TestApp::spawn().await;
    diesel::sql_query("ALTER TABLE messages RENAME TO messages_away")
        .execute(&mut app.db.get().unwrap())
        .unwrap();
    let body = notification("firing", vec![alert("firing", "a1", "host-1")]);
    let (status, _, answer) = post(&app, "alice", DEMO, &body).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().starts_with("storage"),
        "{answer}"
    );
    assert!(app.sim.state.messages().is_empty());
}

#[tokio::test]
async fn a_full_queue_is_503_so_alertmanager_retries() {
    let app = TestApp::spawn_with(
        TestDb::new(),
        repo_manifest(),
        &[("DING_CHANNEL_MAX_QUEUE", "1")],
    )
    .await;
    app.sim.state.set_faults(Faults::http(503, &["batch_send"]));
    let first = notification("firing", vec![alert("firing", "a1", "host-1")]);
    let (status, _, answer) = post(&app, "alice", DEMO, &first).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["deliveries"][0]["status"], "queued", "{answer}");
    let second = notification("firing", vec![alert("firing", "b1", "host-9")]);
    let (status, _, answer) = post(&app, "alice", DEMO, &second).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("the outbox is full"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_disabled_send_ding_is_503_with_what_the_admin_can_do() {
    let app = TestApp::spawn().await;
    let out = app.cli(&["channels", "disable", "send_ding"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let body = notification("firing", vec![alert("firing", "a1", "host-1")]);
    let (status, _, answer) = post(&app, "alice", DEMO, &body).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("channels enable send_ding"),
        "{answer}"
    );
}

/// An alert that names its owner and whom else to page, in its own group.
fn mentioning(group: &str, owner: &str, at: &str) -> Value {
    let mut a = alert("firing", group, "host-1");
    a["labels"]["owner"] = json!(owner);
    a["labels"]["at"] = json!(at);
    let mut n = notification("firing", vec![a]);
    n["groupKey"] = json!(group);
    n
}

fn robot_bodies(app: &TestApp) -> Vec<Value> {
    app.sim
        .state
        .messages()
        .into_iter()
        .filter(|m| m.api == "robot_send")
        .map(|m| m.body)
        .collect()
}

#[tokio::test]
async fn an_owner_label_and_an_at_label_mention_both_in_at_and_in_the_text() {
    let app = TestApp::spawn().await;
    let body = mentioning("g1", "alice", "13800000002, @ops-robot");
    let (status, _, answer) = post(&app, "ops-robot", DEMO, &body).await;
    assert_eq!(status, 200, "{answer}");
    let sent = robot_bodies(&app);
    assert_eq!(sent.len(), 1, "{sent:?}");
    // In the order of DING_CHANNEL_MENTION_KEYS (at, owner, oncall); alice by her telephone;
    // the robot user cannot be mentioned and is skipped.
    assert_eq!(
        sent[0]["at"],
        json!({"atMobiles": ["13800000002", "13800000001"], "atUserIds": [], "isAtAll": false})
    );
    let text = sent[0]["markdown"]["text"].as_str().unwrap();
    assert!(
        text.ends_with("\n\n@13800000002 @13800000001"),
        "the mentions render: {text}"
    );
    assert_eq!(
        answer["deliveries"].as_array().unwrap().len(),
        1,
        "{answer}"
    );
}

#[tokio::test]
async fn a_digest_of_mentioning_alerts_mentions_every_one_of_them() {
    let app = TestApp::spawn().await;
    let o = app.cli(&["channels", "conf", "send_dingbot", "robot_burst=1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The first goes at once; the next three wait for the robot's next slot, together.
    for (group, owner, at) in [
        ("g0", "bob", ""),
        ("g1", "alice", "13800000031"),
        ("g2", "bob", "manager4220"),
        ("g3", "alice", "+852-9123-4567"),
    ] {
        let (status, _, answer) =
            post(&app, "ops-robot", DEMO, &mentioning(group, owner, at)).await;
        assert_eq!(status, 200, "{answer}");
    }
    for _ in 0..10 {
        if robot_bodies(&app).len() >= 2 {
            break;
        }
        app.clock.advance_ms(3_000);
        app.drain().await;
    }
    let sent = robot_bodies(&app);
    assert_eq!(sent.len(), 2, "one single, one digest: {sent:?}");
    let digest = &sent[1];
    assert!(
        digest["markdown"]["title"]
            .as_str()
            .unwrap()
            .starts_with("3 alerts"),
        "{digest}"
    );
    assert_eq!(
        digest["at"]["atMobiles"],
        json!(["13800000031", "13800000001", "13800000002", "+852-91234567"])
    );
    assert_eq!(digest["at"]["atUserIds"], json!(["manager4220"]));
    let text = digest["markdown"]["text"].as_str().unwrap();
    for who in [
        "13800000001",
        "13800000031",
        "13800000002",
        "+852-91234567",
        "manager4220",
    ] {
        assert_eq!(
            text.matches(&format!("@{who}")).count(),
            1,
            "@{who} in {text}"
        );
    }
}

#[tokio::test]
async fn every_part_of_a_large_alert_carries_its_mentions() {
    let app = TestApp::spawn().await;
    let mut body = mentioning("big", "alice", "13800000002");
    body["alerts"][0]["annotations"]["description"] = json!("磁盘已满 host-1 /data; ".repeat(1200));
    assert!(body.to_string().len() > 30_000);
    let (status, _, answer) = post(&app, "ops-robot", DEMO, &body).await;
    assert_eq!(status, 200, "{answer}");
    for _ in 0..20 {
        app.clock.advance_ms(3_000);
        app.drain().await;
    }
    let sent = robot_bodies(&app);
    assert!(sent.len() >= 2, "{sent:?}");
    for (k, part) in sent.iter().enumerate() {
        assert!(
            part["markdown"]["title"]
                .as_str()
                .unwrap()
                .starts_with(&format!("({}/{})", k + 1, sent.len())),
            "{part}"
        );
        assert_eq!(
            part["at"]["atMobiles"],
            json!(["13800000002", "13800000001"])
        );
        let text = part["markdown"]["text"].as_str().unwrap();
        for who in ["13800000001", "13800000002"] {
            assert_eq!(
                text.matches(&format!("@{who}")).count(),
                1,
                "part {k}: @{who}"
            );
        }
    }
}

#[tokio::test]
async fn mention_single_chat_also_sends_the_mentioned_people_the_message() {
    let app = TestApp::spawn().await;
    let url = |query: &str| format!("ops-robot,bob?{query}");
    let body = mentioning("g1", "alice,bob", "13800000031");
    let (status, _, answer) = post(&app, &url("mention_single_chat=maybe"), DEMO, &body).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["field"], "mention_single_chat", "{answer}");

    let (status, _, answer) = post(&app, &url("mention_single_chat=true"), DEMO, &body).await;
    assert_eq!(status, 200, "{answer}");
    let receivers: Vec<&str> = answer["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["receiver"].as_str().unwrap())
        .collect();
    // bob is named by the path already; a bare mobile is no person to add.
    assert_eq!(receivers, ["ops-robot", "bob", "alice"], "{answer}");
    // One batchSend reaches both people.
    let mut to: Vec<String> = markdown_texts(&app).into_iter().map(|(to, _)| to).collect();
    to.sort();
    assert_eq!(to, ["bob-ding,alice-ding", "ops-robot"]);

    // Without the opt-in the mentioned people are mentioned only.
    let other = mentioning("g2", "alice", "");
    let (status, _, answer) = post(&app, "ops-robot", DEMO, &other).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["deliveries"].as_array().unwrap().len(),
        1,
        "{answer}"
    );
}

#[tokio::test]
async fn a_mention_that_cannot_be_made_is_logged_by_name_and_the_alert_still_sent() {
    let db = TestDb::new();
    let server = serve(&db.url, "http://127.0.0.1:9", &[]);
    seeded(&db);
    let base = server.url.trim_end_matches("/api/c/compapi/cmsi");
    let body = mentioning("g1", "ops-robot ghost", "13800000002");
    let res = reqwest::Client::new()
        .post(format!("{base}/api/v1/alertmanager/ops-robot"))
        .basic_auth(APP, Some(APP_SECRET))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let log = server.stop();
    let line = |needle: &str| log.lines().find(|l| l.contains(needle)).unwrap_or_default();
    let robot = line("mention=ops-robot");
    assert!(
        robot.contains("alert mention skipped") && robot.contains("is a robot user"),
        "{log}"
    );
    assert!(
        line("mention=ghost").contains("mentioned as a DingTalk userid"),
        "{log}"
    );
}

/// `apps token CODE`'s token, read from what it prints once.
fn new_token(app: &TestApp, code: &str) -> String {
    let out = app.cli(&["apps", "token", code]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .find_map(|l| l.split("store it now): ").nth(1))
        .expect("the token is printed")
        .to_owned()
}

async fn post_bearer(app: &TestApp, token: &str, body: &Value) -> (u16, Value) {
    let res = app
        .client
        .post(format!("{}/api/v1/alertmanager/ops-robot", app.address))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("request sent");
    (res.status().as_u16(), res.json().await.expect("JSON body"))
}

#[tokio::test]
async fn a_bearer_token_of_apps_token_authenticates_and_shows_in_apps_show() {
    let app = TestApp::spawn().await;
    let token = new_token(&app, APP);
    assert!(token.starts_with("dct_") && token.len() == 68, "{token}");
    let show = stdout(&app.cli(&["apps", "show", APP]));
    assert!(
        show.contains("tokens:  1") && show.contains("never"),
        "{show}"
    );
    assert!(!show.contains(&token[4..]), "{show}");

    let body = notification("firing", vec![alert("firing", "a1", "host-1")]);
    let (status, answer) = post_bearer(&app, &token, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(app.sim.state.messages().len(), 1);
    let show = stdout(&app.cli(&["apps", "show", APP]));
    assert!(!show.contains("never"), "its last use is recorded: {show}");
    // Stored only hashed.
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Stored {
        #[diesel(sql_type = diesel::sql_types::Text)]
        token_hash: String,
    }
    let stored: Vec<Stored> = diesel::sql_query("SELECT token_hash FROM app_tokens")
        .load(&mut app.db.get().unwrap())
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].token_hash.contains(&token[4..]));

    let list = stdout(&app.cli(&["apps", "list"]));
    let row = list.lines().find(|l| l.starts_with(APP)).unwrap();
    assert!(list.contains("TOKENS") && row.contains(" 1 "), "{list}");
}

#[tokio::test]
async fn a_wrong_revoked_or_orphaned_bearer_token_is_401() {
    let app = TestApp::spawn().await;
    let body = notification("firing", vec![alert("firing", "a1", "host-1")]);
    let token = new_token(&app, APP);
    let unknown = format!("dct_{}", "0".repeat(64));
    for wrong in [unknown.as_str(), "not-a-token", &token[..20]] {
        let (status, answer) = post_bearer(&app, wrong, &body).await;
        assert_eq!(status, 401, "{wrong}: {answer}");
        assert!(!answer.to_string().contains(wrong), "{answer}");
    }

    let out = app.cli(&["apps", "token", APP, "--revoke"]);
    assert!(
        stdout(&out).contains("1 token(s) revoked"),
        "{}",
        stdout(&out)
    );
    let (status, answer) = post_bearer(&app, &token, &body).await;
    assert_eq!(status, 401, "revoked: {answer}");

    // An app removed takes its tokens with it.
    let out = app.cli(&["apps", "add", "monitoring"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let theirs = new_token(&app, "monitoring");
    let (status, answer) = post_bearer(&app, &theirs, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(app.cli(&["apps", "remove", "monitoring"]).status.success());
    let (status, answer) = post_bearer(&app, &theirs, &body).await;
    assert_eq!(status, 401, "removed app: {answer}");

    for args in [
        &["apps", "token", "nobody"][..],
        &["apps", "token", "nobody", "--revoke"],
    ] {
        let out = app.cli(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains("no app 'nobody'"), "{}", stderr(&out));
    }
    assert_eq!(app.sim.state.messages().len(), 1);
}

#[tokio::test]
async fn a_bearer_token_never_reaches_the_log() {
    let db = TestDb::new();
    let server = serve(
        &db.url,
        "http://127.0.0.1:9",
        &[("DING_CHANNEL_LOG", "debug")],
    );
    seeded(&db);
    let out = cli(&db.url, &repo_manifest(), &["apps", "token", APP], &[]);
    let token = stdout(&out)
        .lines()
        .find_map(|l| l.split("store it now): ").nth(1))
        .expect("the token is printed once")
        .to_owned();
    let wrong = format!("dct_{}", "1".repeat(64));
    let base = server
        .url
        .trim_end_matches("/api/c/compapi/cmsi")
        .to_owned();
    let body = notification("firing", vec![alert("firing", "a1", "host-1")]);
    let client = reqwest::Client::new();
    for (t, expected) in [(&token, 200), (&wrong, 401)] {
        let res = client
            .post(format!("{base}/api/v1/alertmanager/ops-robot"))
            .bearer_auth(t)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), expected);
    }
    let shown = stdout(&cli(&db.url, &repo_manifest(), &["apps", "show", APP], &[]));
    let log = server.stop();
    for t in [&token[4..], &wrong[4..]] {
        assert!(!log.contains(t), "token in the server log:\n{log}");
        assert!(!shown.contains(t), "token in apps show:\n{shown}");
    }
    assert!(log.contains("webhook request refused"), "{log}");
}

#[tokio::test]
async fn a_mixed_notification_lists_the_firing_then_the_resolved() {
    let app = TestApp::spawn().await;
    let body = notification(
        "firing",
        vec![
            alert("resolved", "r1", "host-9"),
            alert("firing", "a1", "host-1"),
            alert("firing", "a2", "host-2"),
        ],
    );
    let (status, _, answer) = post(&app, "ops-robot", DEMO, &body).await;
    assert_eq!(status, 200, "{answer}");
    let texts = markdown_texts(&app);
    let text = &texts[0].1;
    assert!(text.contains("FIRING:2"), "{text}");
    let (firing, resolved) = (
        text.find("**Firing** (2)").expect(text),
        text.find("**Resolved** (1)").expect(text),
    );
    assert!(firing < resolved, "{text}");
    let host9 = text.find("host-9").unwrap();
    assert!(
        host9 > resolved,
        "the resolved alert is in its section: {text}"
    );
    assert!(text.contains("resolved after 1h 4m"), "{text}");
}

#[tokio::test]
async fn a_300_alert_group_arrives_whole_in_numbered_parts_within_the_limit() {
    let app = TestApp::spawn().await;
    let alerts: Vec<Value> = (0..300)
        .map(|i| alert("firing", &format!("fp{i:03}"), &format!("host-{i:03}")))
        .collect();
    let body = notification("firing", alerts);
    let (status, _, answer) = post(&app, "ops-robot", DEMO, &body).await;
    assert_eq!(status, 200, "{answer}");
    for _ in 0..30 {
        app.clock.advance_ms(3_000);
        app.drain().await;
    }
    let parts: Vec<Value> = app
        .sim
        .state
        .messages()
        .into_iter()
        .filter(|m| m.api == "robot_send")
        .map(|m| m.body)
        .collect();
    assert!(parts.len() >= 2, "{} parts", parts.len());
    let mut whole = String::new();
    for (k, part) in parts.iter().enumerate() {
        assert!(
            part.to_string().len() <= 20_000,
            "part {k} is {} bytes",
            part.to_string().len()
        );
        let title = part["markdown"]["title"].as_str().unwrap();
        assert!(
            title.starts_with(&format!("({}/{})", k + 1, parts.len())),
            "{title}"
        );
        whole.push_str(part["markdown"]["text"].as_str().unwrap());
    }
    for i in 0..300 {
        assert_eq!(
            whole.matches(&format!("instance=host-{i:03}")).count(),
            1,
            "host-{i:03} once across the parts"
        );
    }
    assert!(whole.contains("**Firing** (300)"), "{whole}");
}

#[tokio::test]
async fn copies_on_both_sides_of_a_dedup_slots_end_are_sent_once() {
    use ding_channel::clock::Clock;
    let app = TestApp::spawn().await;
    let slot = ding_channel::sources::alertmanager::DEDUP_WINDOW_MS;
    let now = app.clock.now_ms();
    app.clock.advance_ms(slot - now.rem_euclid(slot) - 1_000);
    let body = notification("firing", vec![alert("firing", "a1", "host-1")]);
    let (status, _, first) = post(&app, "ops-robot", DEMO, &body).await;
    assert_eq!((status, &first["idempotent_replay"]), (200, &json!(false)));
    app.clock.advance_ms(2_000); // the HA peer's copy, in the next slot
    let (status, _, copy) = post(&app, "ops-robot", DEMO, &body).await;
    assert_eq!(
        (status, &copy["idempotent_replay"]),
        (200, &json!(true)),
        "{copy}"
    );
    assert_eq!(copy["message_id"], first["message_id"]);
    // A reminder after the window is a notification of its own.
    app.clock.advance_ms(slot);
    let (status, _, later) = post(&app, "ops-robot", DEMO, &body).await;
    assert_eq!(
        (status, &later["idempotent_replay"]),
        (200, &json!(false)),
        "{later}"
    );
    assert_eq!(app.sim.state.messages().len(), 2);
}
