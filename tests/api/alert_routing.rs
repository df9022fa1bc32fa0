//! Routing Alertmanager's alerts by label (`DING_CHANNEL_ALERT_ROUTES`): each alert to the
//! receivers its route names, the rest to the path's; reloaded by `POST /-/reload` and SIGHUP,
//! a broken file keeping the routes before.

use crate::alertmanager::{alert, markdown_texts, notification, post, DEMO};
use crate::helpers::*;
use ding_channel::simulator::SimRobot;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CRITICAL_TO_OPS: &str = r#"
[[route]]
matchers = ['severity="critical"']
receivers = ["ops-robot"]
"#;

fn write_routes(dir: &Path, text: &str) -> PathBuf {
    let file = dir.join("routes.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn warning(fingerprint: &str, instance: &str) -> Value {
    let mut a = alert("firing", fingerprint, instance);
    a["labels"]["severity"] = json!("warning");
    a
}

/// The app with `routes` as its routes file, and a second robot user, db-robot.
async fn app_with_routes(routes: &str) -> (TestApp, PathBuf) {
    let db = TestDb::new();
    let file = write_routes(db.dir.path(), routes);
    let app = TestApp::spawn_with(
        db,
        repo_manifest(),
        &[("DING_CHANNEL_ALERT_ROUTES", file.to_str().unwrap())],
    )
    .await;
    let token = "e".repeat(64);
    app.import_users(&format!(
        r#"{{"username":"db-robot","qq":"{token}","wx_userid":"SECdbrobotsecret000000"}}"#
    ));
    app.sim.state.configure(|c| {
        c.robots.push(SimRobot {
            name: "db-robot".into(),
            token: token.clone(),
            secret: Some("SECdbrobotsecret000000".into()),
            keyword: None,
        })
    });
    (app, file)
}

/// Which robot or people got which text.
fn texts_to(app: &TestApp, to: &str) -> Vec<String> {
    markdown_texts(app)
        .into_iter()
        .filter(|(t, _)| t == to)
        .map(|(_, text)| text)
        .collect()
}

async fn reload(app: &TestApp, auth: Option<(&str, &str)>) -> (u16, Value) {
    let mut req = app.client.post(format!("{}/-/reload", app.address));
    if let Some((code, secret)) = auth {
        req = req.basic_auth(code, Some(secret));
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn critical_alerts_go_to_one_robot_and_the_rest_to_the_paths() {
    let (app, _) = app_with_routes(CRITICAL_TO_OPS).await;
    let body = notification(
        "firing",
        vec![
            alert("firing", "c1", "host-1"),
            warning("w1", "host-2"),
            warning("w2", "host-3"),
        ],
    );
    let (status, _, answer) = post(&app, "db-robot", DEMO, &body).await;
    assert_eq!(status, 200, "{answer}");
    let dispatches = answer["dispatches"].as_array().unwrap();
    let summary: Vec<(Value, Value, Value)> = dispatches
        .iter()
        .map(|d| {
            (
                d["receivers"].clone(),
                d["alerts"].clone(),
                d["deliveries"][0]["status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (json!(["ops-robot"]), json!(1), json!("sent")),
            (json!(["db-robot"]), json!(2), json!("sent")),
        ],
        "{answer}"
    );
    let ops = texts_to(&app, "ops-robot");
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert!(
        ops[0].starts_with("### \\[FIRING:1\\] HighCPU (prod)"),
        "{}",
        ops[0]
    );
    assert!(ops[0].contains("**critical** HighCPU"), "{}", ops[0]);
    assert!(!ops[0].contains("host-2"), "{}", ops[0]);
    let db = texts_to(&app, "db-robot");
    assert_eq!(db.len(), 1, "{db:?}");
    assert!(
        db[0].starts_with("### \\[FIRING:2\\] HighCPU (prod)"),
        "{}",
        db[0]
    );
    assert!(db[0].contains("**warning** HighCPU"), "{}", db[0]);
    assert!(!db[0].contains("host-1"), "{}", db[0]);

    // The other member of an HA pair sends the same notification: each dispatch is replayed.
    let (status, _, again) = post(&app, "db-robot", DEMO, &body).await;
    assert_eq!(status, 200, "{again}");
    for (first, second) in dispatches
        .iter()
        .zip(again["dispatches"].as_array().unwrap())
    {
        assert_eq!(first["message_id"], second["message_id"]);
        assert_eq!(second["idempotent_replay"], true, "{again}");
    }
    assert_eq!(app.sim.state.messages().len(), 2);
}

#[tokio::test]
async fn a_path_without_receivers_takes_the_routes_and_retries_what_none_matched() {
    let (app, _) = app_with_routes(CRITICAL_TO_OPS).await;
    let mixed = notification(
        "firing",
        vec![alert("firing", "c1", "host-1"), warning("w1", "host-2")],
    );
    let post_mixed = || async {
        let res = app
            .client
            .post(format!("{}/api/v1/alertmanager", app.address))
            .basic_auth(APP, Some(APP_SECRET))
            .json(&mixed)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.unwrap())
    };
    // The routed alert is stored and sent; the other makes Alertmanager retry until a route
    // takes it, and each retry replays what was stored.
    for _ in 0..2 {
        let (status, answer) = post_mixed().await;
        assert_eq!(status, 503, "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.contains("1 alert(s) match no route") && error.contains("w1"),
            "{answer}"
        );
        assert_eq!(texts_to(&app, "ops-robot").len(), 1);
    }

    // Nothing routed: the routes must change, so 503 keeps Alertmanager retrying meanwhile.
    let unmatched = notification("firing", vec![warning("w2", "host-3")]);
    let res = app
        .client
        .post(format!("{}/api/v1/alertmanager/", app.address))
        .basic_auth(APP, Some(APP_SECRET))
        .json(&unmatched)
        .send()
        .await
        .unwrap();
    let (status, answer): (u16, Value) = (res.status().as_u16(), res.json().await.unwrap());
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("add a route without matchers"),
        "{answer}"
    );
    assert_eq!(app.sim.state.messages().len(), 1);
}

#[tokio::test]
async fn post_reload_swaps_the_routes_and_a_broken_file_keeps_those_before() {
    let (app, file) = app_with_routes(CRITICAL_TO_OPS).await;
    std::fs::write(&file, CRITICAL_TO_OPS.replace("ops-robot", "db-robot")).unwrap();
    let (status, answer) = reload(&app, None).await;
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = reload(&app, Some((APP, "wrong-secret"))).await;
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = reload(&app, DEMO).await;
    assert_eq!(
        (status, answer),
        (200, json!({"status": "reloaded", "routes": 1}))
    );
    let (status, _, answer) = post(
        &app,
        "alice",
        DEMO,
        &notification("firing", vec![alert("firing", "c1", "h1")]),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(texts_to(&app, "db-robot").len(), 1, "the new route");

    std::fs::write(
        &file,
        "[[route]]\nreceivers = [\"ops-robot\"]\nmatchers = ['severity=~\"(crit\"']\n",
    )
    .unwrap();
    let (status, answer) = reload(&app, DEMO).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["field"], "DING_CHANNEL_ALERT_ROUTES", "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("{}:3:", file.display())) && error.contains("(crit"),
        "{error}"
    );
    assert!(
        error.contains("the routes loaded before stay in force"),
        "{error}"
    );
    let (status, _, answer) = post(
        &app,
        "alice",
        DEMO,
        &notification("firing", vec![alert("firing", "c2", "h2")]),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        texts_to(&app, "db-robot").len(),
        2,
        "still the route before"
    );
    assert!(texts_to(&app, "ops-robot").is_empty());
}

#[tokio::test]
async fn a_bad_routes_file_refuses_start_with_the_line() {
    let db = TestDb::new();
    let file = write_routes(db.dir.path(), "[[route]]\nmatchers = ['severity=\"x\"']\n");
    let error = ding_channel::startup::Application::build(settings_with_routes(&db, &file))
        .err()
        .expect("start refused")
        .to_string();
    assert!(
        error.starts_with(&format!("DING_CHANNEL_ALERT_ROUTES {}:1: ", file.display())),
        "{error}"
    );
    assert!(error.contains("add receivers = [\"ops-robot\"]"), "{error}");
    let missing = settings_with_routes(&db, &db.dir.path().join("absent.toml"));
    let error = ding_channel::startup::Application::build(missing)
        .err()
        .expect("start refused")
        .to_string();
    assert!(error.contains("cannot be read"), "{error}");
}

fn settings_with_routes(db: &TestDb, file: &Path) -> ding_channel::config::Settings {
    settings(
        &db.url,
        &repo_manifest(),
        &[("DING_CHANNEL_ALERT_ROUTES", file.to_str().unwrap())],
    )
}

#[tokio::test]
async fn sighup_reloads_the_routes_of_the_real_binary() {
    let db = TestDb::new();
    let sim = real_time_simulator();
    let file = write_routes(db.dir.path(), CRITICAL_TO_OPS);
    let server = serve(
        &db.url,
        &sim.base_url(),
        &[("DING_CHANNEL_ALERT_ROUTES", file.to_str().unwrap())],
    );
    let _store = seeded(&db);
    let base = server
        .url
        .trim_end_matches("/api/c/compapi/cmsi")
        .to_owned();
    let client = reqwest::Client::new();
    let send = |fingerprint: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let res = client
                .post(format!("{base}/api/v1/alertmanager/bob"))
                .basic_auth(APP, Some(APP_SECRET))
                .json(&notification(
                    "firing",
                    vec![alert("firing", fingerprint, "h")],
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
        }
    };
    send("c1").await;
    wait_until("the robot's message", Duration::from_secs(20), || {
        sim.state.messages().iter().any(|m| m.target == "ops-robot")
    })
    .await;

    std::fs::write(&file, CRITICAL_TO_OPS.replace("ops-robot", "alice")).unwrap();
    let hangup = || {
        let hup = std::process::Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(hup.success());
    };
    hangup();
    wait_until("the reload", Duration::from_secs(20), || {
        server.logged("alert routes reloaded")
    })
    .await;
    let to_alice = || {
        sim.state
            .messages()
            .iter()
            .filter(|m| m.user_ids == ["alice-ding"])
            .count()
    };
    send("c2").await;
    wait_until("alice's message", Duration::from_secs(20), || {
        to_alice() == 1
    })
    .await;

    // A broken file on SIGHUP: logged, and the routes before stay.
    std::fs::write(
        &file,
        "[[route]]\nreceivers = [\"ops-robot\"]\nmatchers = ['=x']\n",
    )
    .unwrap();
    hangup();
    wait_until("the refused reload", Duration::from_secs(20), || {
        server.logged("alert routes not reloaded")
    })
    .await;
    send("c3").await;
    wait_until("alice's second message", Duration::from_secs(20), || {
        to_alice() == 2
    })
    .await;
    assert!(
        !sim.state
            .messages()
            .iter()
            .any(|m| m.user_ids.iter().any(|u| u == "bob-ding")),
        "the critical alerts went by the routes, not to the path's bob"
    );
    let log = server.stop();
    assert!(log.contains("SIGHUP"), "the log says what asked: {log}");
}

#[tokio::test]
async fn reload_without_a_routes_file_says_how_to_configure_one() {
    let app = TestApp::spawn().await;
    let (status, answer) = reload(&app, DEMO).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("set DING_CHANNEL_ALERT_ROUTES"),
        "{answer}"
    );
}

#[tokio::test]
async fn each_dispatch_mentions_whom_its_own_alerts_name() {
    let (app, _) = app_with_routes(CRITICAL_TO_OPS).await;
    let mut critical = alert("firing", "c1", "host-1");
    critical["labels"]["owner"] = json!("alice");
    let mut minor = warning("w1", "host-2");
    minor["labels"]["owner"] = json!("bob");
    let body = notification("firing", vec![critical, minor]);
    let (status, _, answer) = post(&app, "db-robot", DEMO, &body).await;
    assert_eq!(status, 200, "{answer}");
    let at = |robot: &str| {
        let sent: Vec<Value> = app
            .sim
            .state
            .messages()
            .into_iter()
            .filter(|m| m.target == robot)
            .map(|m| m.body)
            .collect();
        assert_eq!(sent.len(), 1, "{robot}: {sent:?}");
        let text = sent[0]["markdown"]["text"].as_str().unwrap().to_owned();
        (sent[0]["at"]["atMobiles"].clone(), text)
    };
    let (ops, ops_text) = at("ops-robot");
    assert_eq!(ops, json!(["13800000001"]), "alice's telephone only");
    assert!(ops_text.ends_with("@13800000001"), "{ops_text}");
    let (db, db_text) = at("db-robot");
    assert_eq!(db, json!(["13800000002"]), "bob's telephone only");
    assert!(
        db_text.ends_with("@13800000002") && !db_text.contains("@13800000001"),
        "{db_text}"
    );
}

#[tokio::test]
async fn grafana_alerts_are_routed_by_label_too() {
    let (app, _) = app_with_routes(CRITICAL_TO_OPS).await;
    let mut body = notification(
        "firing",
        vec![alert("firing", "c1", "host-1"), warning("w1", "host-2")],
    );
    body["version"] = json!("1");
    body["orgId"] = json!(1);
    body["title"] = json!("[FIRING:2] HighCPU");
    let res = app
        .client
        .post(format!("{}/api/v1/grafana/db-robot", app.address))
        .basic_auth(APP, Some(APP_SECRET))
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, answer): (u16, Value) = (res.status().as_u16(), res.json().await.unwrap());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["dispatches"].as_array().unwrap().len(),
        2,
        "{answer}"
    );
    let ops = texts_to(&app, "ops-robot");
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert!(
        ops[0].contains("host-1") && !ops[0].contains("host-2"),
        "{}",
        ops[0]
    );
    // Grafana's title counted both alerts: each dispatch is titled over its own.
    assert!(
        ops[0].starts_with("### \\[FIRING:1\\] HighCPU"),
        "{}",
        ops[0]
    );
    let db = texts_to(&app, "db-robot");
    assert_eq!(db.len(), 1, "{db:?}");
    assert!(
        db[0].contains("host-2") && !db[0].contains("host-1"),
        "{}",
        db[0]
    );
}

#[tokio::test]
async fn a_routes_template_renders_its_own_alerts_and_a_missing_one_falls_back() {
    let (app, file) = app_with_routes(
        r#"
[[route]]
matchers = ['severity="critical"']
receivers = ["ops-robot"]
template = "short"

[[route]]
matchers = ['severity="warning"']
receivers = ["db-robot"]
template = "not-stored"
"#,
    )
    .await;
    let tmpl = file.with_file_name("short.tmpl");
    std::fs::write(
        &tmpl,
        "{{ status }} {{ commonLabels.alertname }}\n{{ alerts | length }} alert(s): {% for a in alerts %}{{ a.labels.instance }} {% endfor %}\n",
    )
    .unwrap();
    let o = app.cli(&[
        "templates",
        "set",
        "short",
        "--file",
        tmpl.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let body = notification(
        "firing",
        vec![
            alert("firing", "c1", "host-1"),
            warning("w1", "host-2"),
            warning("w2", "host-3"),
        ],
    );
    let (status, _, answer) = post(&app, "", DEMO, &body).await;
    assert_eq!(status, 200, "{answer}");
    let ops = texts_to(&app, "ops-robot");
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert!(
        ops[0].starts_with("1 alert(s): host-1"),
        "narrowed: {}",
        ops[0]
    );
    let db = texts_to(&app, "db-robot");
    assert_eq!(db.len(), 1, "{db:?}");
    assert!(
        db[0].starts_with("### \\[FIRING:2\\] HighCPU (prod)"),
        "built-in: {}",
        db[0]
    );
}
