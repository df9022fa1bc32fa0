//! Stored templates: checked when set, named by an Alertmanager webhook URL or a channel's
//! comp_conf, rendered in the configured zone, falling back to the built-in layout when they
//! fail; and `templates preview` through the real binary.

use crate::helpers::*;
use serde_json::{json, Value};
use std::path::Path;

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/templates")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

#[track_caller]
fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}{}", stdout(o), stderr(o));
    stdout(o)
}

fn set(app: &TestApp, name: &str, file: &str) {
    ok(&app.cli(&["templates", "set", name, "--file", file]));
}

fn file_with(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn notification(env: &str) -> Value {
    let mut n: Value =
        serde_json::from_str(&std::fs::read_to_string(example("alert.json")).unwrap()).unwrap();
    n["commonLabels"]["env"] = json!(env);
    n
}

async fn alertmanager(app: &TestApp, path_and_query: &str, body: &Value) -> (u16, Value) {
    let res = app
        .client
        .post(format!(
            "{}/api/v1/alertmanager/{path_and_query}",
            app.address
        ))
        .basic_auth(APP, Some(APP_SECRET))
        .json(body)
        .send()
        .await
        .expect("request sent");
    (res.status().as_u16(), res.json().await.expect("JSON body"))
}

/// The title and text of each robot message the simulator received.
fn robot_markdown(app: &TestApp) -> Vec<(String, String)> {
    app.sim
        .state
        .messages()
        .iter()
        .filter(|m| m.api == "robot_send")
        .map(|m| {
            (
                m.body["markdown"]["title"].as_str().unwrap().to_owned(),
                m.body["markdown"]["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_stored_template_renders_the_alertmanager_notification_in_the_zone() {
    let app = TestApp::spawn_with(
        TestDb::new(),
        repo_manifest(),
        &[("DING_CHANNEL_UTC_OFFSET", "Asia/Shanghai")],
    )
    .await;
    set(&app, "ops", &example("alerts.tmpl"));
    let (status, answer) =
        alertmanager(&app, "ops-robot?template=ops", &notification("prod")).await;
    assert_eq!(status, 200, "{answer}");
    let sent = robot_markdown(&app);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (title, text) = &sent[0];
    assert_eq!(title, "[FIRING:1] HighCPU");
    assert!(
        text.starts_with("### HighCPU (prod)\n\n- **critical** web-1"),
        "{text}"
    );
    assert!(
        text.contains("since 2026-12-01 18:00:00"),
        "Asia/Shanghai: {text}"
    );
    assert!(text.contains("resolved after 5m 3s"), "{text}");

    let (status, answer) =
        alertmanager(&app, "ops-robot?template=nosuch", &notification("prod")).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["field"], "template", "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("templates set nosuch"),
        "{answer}"
    );
    let (status, answer) =
        alertmanager(&app, "ops-robot?template=a%2Fb", &notification("prod")).await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (400, Some("template")),
        "{answer}"
    );
    assert_eq!(
        robot_markdown(&app).len(),
        1,
        "refused notifications send nothing"
    );
}

#[tokio::test]
async fn a_template_that_fails_at_send_time_falls_back_to_the_built_in_layout() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    // Renders against the samples (env=prod), fails on a staging notification.
    let fragile = file_with(
        &dir,
        "fragile.tmpl",
        "{{ status }}\n{% if commonLabels.env == 'staging' %}{{ 1 + 'a' }}{% endif %}ok",
    );
    set(&app, "fragile", &fragile);
    let (status, answer) =
        alertmanager(&app, "ops-robot?template=fragile", &notification("staging")).await;
    assert_eq!(status, 200, "{answer}");
    let sent = robot_markdown(&app);
    assert_eq!(
        sent.len(),
        1,
        "the notification is still delivered: {sent:?}"
    );
    assert!(
        sent[0].1.starts_with("### \\[FIRING:1\\] HighCPU"),
        "{}",
        sent[0].1
    );
}

#[tokio::test]
async fn a_channel_template_renders_send_msg_with_the_callers_extra_arguments() {
    let app = TestApp::spawn().await;
    let refused = app.cli(&["channels", "conf", "send_msg", "template=relay"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("template: no template named 'relay'"),
        "{}",
        stderr(&refused)
    );
    set(&app, "relay", &example("relay-info.tmpl"));
    ok(&app.cli(&["channels", "conf", "send_msg", "template=relay"]));
    let env = app
        .post(
            "send_msg",
            json!({"msg_type": "ding", "receiver__username": "ops-robot", "title": "每天巡检",
                   "content": "db-1 /data 93%", "url": "https://monitor.example.com/e/42",
                   "level": "error", "owner": "alice"}),
        )
        .await;
    assert_eq!(env["result"], true, "{env}");
    let sent = robot_markdown(&app);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (title, text) = &sent[0];
    assert_eq!(title, "[error] 每天巡检");
    assert!(
        text.starts_with("<font color='#FF0000'><b>[巡检]</b>"),
        "{text}"
    );
    assert!(
        text.contains("[点击查看详情](https://monitor.example.com/e/42)"),
        "{text}"
    );
    assert!(text.contains("<b>相关人员:</b> alice</font>"), "{text}");
    assert!(text.contains("<b>播报时间:</b> "), "{text}");
    assert!(!text.contains(APP_SECRET), "{text}");

    let busy = app.cli(&["templates", "remove", "relay"]);
    assert!(!busy.status.success());
    assert!(
        stderr(&busy).contains("used by channel send_msg"),
        "{}",
        stderr(&busy)
    );
    ok(&app.cli(&["channels", "conf", "send_msg", "template="]));
    ok(&app.cli(&["templates", "remove", "relay"]));
}

#[tokio::test]
async fn a_channel_template_that_fails_sends_the_message_as_written() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let fragile = file_with(
        &dir,
        "fragile.tmpl",
        "{{ title }}\n{% if level == 'critical' %}{{ 1 + 'a' }}{% endif %}{{ content }}",
    );
    set(&app, "fragile", &fragile);
    ok(&app.cli(&["channels", "conf", "send_ding", "template=fragile"]));
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "ops-robot", "title": "t", "content": "as written",
                   "msg_key": "markdown", "level": "critical"}),
        )
        .await;
    assert_eq!(env["result"], true, "{env}");
    let sent = robot_markdown(&app);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].1.contains("as written"), "{:?}", sent[0]);
}

#[test]
fn set_list_show_and_preview_through_the_binary() {
    let db = TestDb::new();
    let manifest = repo_manifest();
    let run = |args: &[&str]| {
        cli(
            &db.url,
            &manifest,
            args,
            &[("DING_CHANNEL_UTC_OFFSET", "+08:00")],
        )
    };
    let dir = tempfile::tempdir().unwrap();

    let out = ok(&run(&[
        "templates",
        "preview",
        &example("alerts.tmpl"),
        "--payload",
        &example("alert.json"),
    ]));
    assert!(
        out.starts_with("title: [FIRING:1] HighCPU\nbody: "),
        "{out}"
    );
    assert!(
        out.contains(" bytes, 1 robot message\n---\n### HighCPU (prod)"),
        "{out}"
    );
    assert!(out.contains("since 2026-12-01 18:00:00"), "{out}");

    let out = ok(&run(&[
        "templates",
        "preview",
        &example("relay-error.tmpl"),
        "--payload",
        &example("message.json"),
    ]));
    assert!(out.starts_with("title: [巡检异常] 每天巡检\n"), "{out}");
    assert!(out.contains("<b>每天巡检 异常</b>"), "{out}");

    // Grafana's payload (version "1") is taken as posted: its extra fields reach the template.
    let grafana = file_with(
        &dir,
        "grafana.json",
        &json!({"version": "1", "status": "firing", "orgId": 1, "title": "[FIRING:1] Mem",
                "alerts": [{"status": "firing", "labels": {"alertname": "Mem"},
                            "startsAt": "2021-10-12T09:51:03.157076+02:00",
                            "dashboardURL": "https://grafana.example.com/d/x",
                            "values": {"B": 44.25}}]})
        .to_string(),
    );
    let mem = file_with(
        &dir,
        "mem.tmpl",
        "{{ title }}\n{% for a in alerts %}{{ a.values.B }} since {{ a.startsAt | time }} [board]({{ a.dashboardURL }}){% endfor %}",
    );
    let out = ok(&run(&["templates", "preview", &mem, "--payload", &grafana]));
    assert!(
        out.ends_with(
            "---\n44.25 since 2021-10-12 15:51:03 [board](https://grafana.example.com/d/x)\n"
        ),
        "{out}"
    );

    let big = file_with(
        &dir,
        "big.tmpl",
        "big\n{% for i in range(3000) %}line {{ i }} of a long report\n\n{% endfor %}",
    );
    let out = ok(&run(&[
        "templates",
        "preview",
        &big,
        "--payload",
        &example("message.json"),
    ]));
    let calls: usize = out
        .lines()
        .nth(1)
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(calls > 1, "a long body takes several robot messages: {out}");

    let broken = file_with(
        &dir,
        "broken.tmpl",
        "title\nfine\n{% for a in alerts %}{{ a.labels }\n",
    );
    for args in [
        vec!["templates", "set", "broken", "--file", broken.as_str()],
        vec![
            "templates",
            "preview",
            broken.as_str(),
            "--payload",
            &example("alert.json"),
        ],
    ] {
        let o = run(&args);
        assert!(!o.status.success(), "{args:?}");
        assert!(
            stderr(&o).contains("line 3, column 34 (body): syntax error"),
            "{}",
            stderr(&o)
        );
    }
    let bad_types = file_with(&dir, "bad-types.tmpl", "t\n{{ 1 + 'a' }}");
    let o = run(&["templates", "set", "x", "--file", &bad_types]);
    assert!(
        stderr(&o).contains("renders against neither built-in sample")
            && stderr(&o).contains("line 2"),
        "{}",
        stderr(&o)
    );
    let bad_payload = file_with(&dir, "empty.json", r#"{"version": "4", "alerts": []}"#);
    let o = run(&[
        "templates",
        "preview",
        &example("alerts.tmpl"),
        "--payload",
        &bad_payload,
    ]);
    assert!(stderr(&o).contains("alerts: is empty"), "{}", stderr(&o));

    ok(&run(&[
        "templates",
        "set",
        "ops",
        "--file",
        &example("alerts.tmpl"),
    ]));
    let list = ok(&run(&["templates", "list"]));
    assert!(
        list.contains("ops") && list.contains("[{{ status | upper }}"),
        "{list}"
    );
    let shown = ok(&run(&["templates", "show", "ops"]));
    assert_eq!(
        shown,
        std::fs::read_to_string(example("alerts.tmpl")).unwrap()
    );
    let o = run(&["templates", "show", "nosuch"]);
    assert!(
        stderr(&o).contains("no template named 'nosuch'"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "templates",
        "set",
        "no/slash",
        "--file",
        &example("alerts.tmpl"),
    ]);
    assert!(
        stderr(&o).contains("is not a template name"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn a_failing_template_is_one_warning_in_the_log_naming_it() {
    let db = TestDb::new();
    let manifest = repo_manifest();
    let dir = tempfile::tempdir().unwrap();
    let fragile = file_with(
        &dir,
        "fragile.tmpl",
        "{{ title }}\n{% if level == 'critical' %}{{ 1 + 'a' }}{% endif %}{{ content }}",
    );
    for args in [
        &["channels", "sync"][..],
        &["apps", "add", "tplapp", "--secret", "tpl-app-secret-1"],
        &["templates", "set", "fragile", "--file", &fragile],
        &["channels", "conf", "send_ding", "template=fragile"],
    ] {
        ok(&cli(&db.url, &manifest, args, &[]));
    }
    let server = serve(
        &db.url,
        "http://127.0.0.1:9",
        &[("DING_CHANNEL_LOG", "info")],
    );
    let res = reqwest::Client::new()
        .post(format!("{}/send_ding/", server.url))
        .json(
            &json!({"bk_app_code": "tplapp", "bk_app_secret": "tpl-app-secret-1",
                      "receiver__username": "ops-robot", "content": "disk", "level": "critical"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let log = server.stop();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("template failed to render"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("fragile"), "{}", warnings[0]);
    assert!(!log.contains("tpl-app-secret-1"), "{log}");
}
