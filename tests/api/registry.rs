use crate::helpers::*;
use serde_json::{json, Value};
use std::path::PathBuf;

fn manifest_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_manifest()).unwrap()).unwrap()
}

fn write_manifest(dir: &std::path::Path, name: &str, m: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(m).unwrap()).unwrap();
    p
}

#[tokio::test]
async fn sync_updates_declarations_but_keeps_what_an_admin_set() {
    let app = TestApp::spawn_plain().await;
    let o = app.cli(&[
        "channels",
        "conf",
        "send_dingtalk",
        "ding_app_key=dingadmin",
        "ding_app_secret=admin-secret-123456",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(app
        .cli(&["channels", "disable", "send_dingbot"])
        .status
        .success());

    // A new manifest version: new defaults, a new label, a new timeout.
    let mut m = manifest_json();
    for ch in m["channels"].as_array_mut().unwrap() {
        if ch["name"] == "send_dingtalk" {
            ch["comp_conf"]["ding_app_key"] = "manifest-default".into();
            ch["comp_conf"]["ding_robot_code"] = "robot-from-manifest".into();
            ch["label"] = "发送钉钉单聊消息 v2".into();
            ch["timeout"] = 20.into();
        }
    }
    let path = write_manifest(app.test_db.dir.path(), "m2.json", &m);
    let o = app.cli(&["channels", "sync", "--manifest", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("0 inserted, 1 updated, 4 unchanged"), "{out}");
    assert!(
        out.contains("kept admin values: send_dingtalk.ding_app_key"),
        "{out}"
    );

    let mut conn = app.db.get().unwrap();
    let ch = ding_channel::channels::registry::find(&mut conn, "send_dingtalk")
        .unwrap()
        .unwrap();
    assert_eq!(
        ch.comp_conf["ding_app_key"], "dingadmin",
        "admin value kept"
    );
    assert_eq!(
        ch.comp_conf["ding_app_secret"], "admin-secret-123456",
        "admin value kept"
    );
    assert_eq!(
        ch.comp_conf["ding_robot_code"], "robot-from-manifest",
        "untouched default follows the manifest"
    );
    assert_eq!(ch.label, "发送钉钉单聊消息 v2");
    assert_eq!(ch.timeout_s, 20);
    let bot = ding_channel::channels::registry::find(&mut conn, "send_dingbot")
        .unwrap()
        .unwrap();
    assert!(!bot.is_active, "an admin's disable survives sync");
}

#[tokio::test]
async fn a_malformed_manifest_is_rejected_with_its_json_path_and_nothing_written() {
    let app = TestApp::spawn_plain().await;
    let before = stdout(&app.cli(&["channels", "list"]));
    let mut m = manifest_json();
    m["channels"][0]["label"] = "changed".into();
    m["channels"][2]["timeout"] = "soon".into();
    let path = write_manifest(app.test_db.dir.path(), "bad.json", &m);
    let o = app.cli(&["channels", "sync", "--manifest", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o)
            .contains("$.channels[2].timeout: must be a whole number of seconds from 1 to 600"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        stdout(&app.cli(&["channels", "list"])),
        before,
        "registry unchanged"
    );

    std::fs::write(&path, "{\"system\": ").unwrap();
    let o = app.cli(&["channels", "sync", "--manifest", path.to_str().unwrap()]);
    assert!(stderr(&o).contains("is not valid JSON"), "{}", stderr(&o));
}

#[tokio::test]
async fn hidden_channels_are_registered_but_not_served() {
    let test_db = TestDb::new();
    let mut m = manifest_json();
    m["channels"][2]["is_hidden"] = true.into(); // send_dingbot
    let path = write_manifest(test_db.dir.path(), "hidden.json", &m);
    let app = TestApp::spawn_with(test_db, path, &[]).await;
    let res = app
        .client
        .post(app.url("send_dingbot"))
        .json(&json!({"bk_app_code": APP, "bk_app_secret": APP_SECRET, "receiver__username": "r", "content": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let env: Value = res.json().await.unwrap();
    assert_refused(&env, 1306405, "no channel is served at /cmsi/send_dingbot/");
    assert!(stdout(&app.cli(&["channels", "list"])).contains("send_dingbot"));
}

#[tokio::test]
async fn a_disabled_channel_answers_1306405_until_enabled() {
    let app = TestApp::spawn().await;
    let body = json!({"receiver__username": "alice", "content": "x"});
    assert!(app
        .cli(&["channels", "disable", "send_ding"])
        .status
        .success());
    let env = app.post("send_ding", body.clone()).await;
    assert_refused(&env, 1306405, "channel send_ding is disabled");
    assert!(app
        .cli(&["channels", "enable", "send_ding"])
        .status
        .success());
    let env = app.post("send_ding", body).await;
    assert_eq!(env["code"], 0, "{env}");
}

#[tokio::test]
async fn conf_refuses_undeclared_keys_unless_forced_and_masks_secrets() {
    let app = TestApp::spawn_plain().await;
    let o = app.cli(&["channels", "conf", "send_dingtalk", "ding_app_sceret=x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("'ding_app_sceret' is not a comp_conf key of send_dingtalk"),
        "{}",
        stderr(&o)
    );
    let o = app.cli(&[
        "channels",
        "conf",
        "send_dingtalk",
        "extra_key=1",
        "--force",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = app.cli(&[
        "channels",
        "conf",
        "send_dingtalk",
        "ding_app_secret=abcdefghijklmnopqrstuvwxyz",
    ]);
    assert!(
        stdout(&o).contains("ding_app_secret=ab****yz"),
        "{}",
        stdout(&o)
    );
    let list = stdout(&app.cli(&["channels", "list"]));
    assert!(
        list.contains("ding_app_secret=ab****yz") && !list.contains("abcdefghijklmnopqrstuvwxyz"),
        "{list}"
    );
    let o = app.cli(&["channels", "enable", "nope"]);
    assert!(
        stderr(&o).contains("no channel named 'nope'"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn conf_refuses_a_bad_value_naming_the_key_and_the_fix_and_stores_nothing() {
    let app = TestApp::spawn_plain().await;
    let stored = |app: &TestApp| {
        let mut conn = app.db.get().unwrap();
        ding_channel::channels::registry::find(&mut conn, "send_dingbot")
            .unwrap()
            .unwrap()
    };
    let before = stored(&app);
    for force in [false, true] {
        let mut args = vec![
            "channels",
            "conf",
            "send_dingbot",
            "robot_rate_limit=10",
            "robot_burst=x",
        ];
        if force {
            args.push("--force");
        }
        let o = app.cli(&args);
        assert_eq!(o.status.code(), Some(1), "force={force}");
        assert_eq!(
            stderr(&o).trim(),
            "error: send_dingbot robot_burst: 'x' is not a positive whole number; set e.g. robot_burst=5",
            "force={force}"
        );
        assert_eq!(stored(&app), before, "nothing stored (force={force})");
    }

    let o = app.cli(&["channels", "conf", "send_dingbot", "robot_burst=2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("robot_burst=2"), "{}", stdout(&o));
    let after = stored(&app);
    assert_eq!(after.comp_conf["robot_burst"], "2");
    assert!(after.admin_set.contains("robot_burst"));
}

#[tokio::test]
async fn conf_refuses_a_bad_secret_without_echoing_it() {
    let app = TestApp::spawn_plain().await;
    let o = app.cli(&[
        "channels",
        "conf",
        "send_dingtalk",
        "ding_app_key=dingk",
        "ding_app_secret=pasted secret",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("send_dingtalk ding_app_secret: the value contains spaces")
            && !err.contains("pasted secret"),
        "{err}"
    );
    let mut conn = app.db.get().unwrap();
    let ch = ding_channel::channels::registry::find(&mut conn, "send_dingtalk")
        .unwrap()
        .unwrap();
    assert_eq!(ch.conf("ding_app_key"), None, "nothing stored");
}
