use crate::helpers::*;
use serde_json::{json, Value};

fn get_msg_type_url(app: &TestApp, query: &str) -> String {
    format!("{}?{query}", app.url("get_msg_type"))
}

async fn get_env(app: &TestApp, url: &str, header: Option<&str>) -> Value {
    let mut req = app.client.get(url);
    if let Some(h) = header {
        req = req.header("X-Bkapi-Authorization", h);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

#[tokio::test]
async fn credentials_are_accepted_as_arguments_or_in_the_header() {
    let app = TestApp::spawn().await;
    let q = get_env(
        &app,
        &get_msg_type_url(&app, "bk_app_code=demo&bk_app_secret=demo-secret"),
        None,
    )
    .await;
    assert_eq!(
        (q["result"].clone(), q["code"].clone()),
        (json!(true), json!(0)),
        "{q}"
    );
    let h = get_env(
        &app,
        &app.url("get_msg_type"),
        Some(r#"{"bk_app_code":"demo","bk_app_secret":"demo-secret"}"#),
    )
    .await;
    assert_eq!(h["code"], 0, "{h}");
    let form = app
        .client
        .post(app.url("get_msg_type"))
        .form(&[("bk_app_code", APP), ("bk_app_secret", APP_SECRET)])
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(form["code"], 0, "{form}");
    let body = app
        .post_raw(
            &app.url("get_msg_type"),
            &json!({"bk_app_code": APP, "bk_app_secret": APP_SECRET}),
        )
        .await;
    assert_eq!(body["code"], 0, "{body}");
}

#[tokio::test]
async fn unknown_app_and_wrong_secret_get_the_same_answer() {
    let app = TestApp::spawn().await;
    let wrong = get_env(
        &app,
        &get_msg_type_url(&app, "bk_app_code=demo&bk_app_secret=nope-nope"),
        None,
    )
    .await;
    let unknown = get_env(
        &app,
        &get_msg_type_url(&app, "bk_app_code=ghost&bk_app_secret=demo-secret"),
        None,
    )
    .await;
    assert_refused(
        &wrong,
        1306401,
        "bk_app_code or bk_app_secret is not accepted",
    );
    assert_eq!(wrong["message"], unknown["message"]);
    assert_eq!(wrong["code"], unknown["code"]);
    let missing = get_env(&app, &app.url("get_msg_type"), None).await;
    assert_refused(&missing, 1306401, "send bk_app_code and bk_app_secret");
    let bad_header = get_env(&app, &app.url("get_msg_type"), Some("demo:demo-secret")).await;
    assert_refused(
        &bad_header,
        1306401,
        "X-Bkapi-Authorization must be a JSON object",
    );
    for env in [&wrong, &unknown, &missing] {
        assert!(
            !env.to_string().contains("demo-secret"),
            "secret echoed: {env}"
        );
    }
}

#[tokio::test]
async fn apps_are_managed_from_the_cli_with_hashed_secrets() {
    let app = TestApp::spawn().await;
    let o = app.cli(&["apps", "add", "bk_monitor", "--secret", "monitor-secret-1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let url = get_msg_type_url(
        &app,
        "bk_app_code=bk_monitor&bk_app_secret=monitor-secret-1",
    );
    assert_eq!(get_env(&app, &url, None).await["code"], 0);

    let again = app.cli(&["apps", "add", "bk_monitor", "--secret", "other-secret-2"]);
    assert!(
        stderr(&again).contains("pass --replace"),
        "{}",
        stderr(&again)
    );
    let list = stdout(&app.cli(&["apps", "list"]));
    assert!(
        list.contains("bk_monitor") && list.contains("****") && !list.contains("monitor-secret-1"),
        "{list}"
    );

    let generated = stdout(&app.cli(&["apps", "add", "bk_job"]));
    let secret = generated
        .lines()
        .find_map(|l| l.strip_prefix("bk_app_secret (shown once, store it now): "))
        .unwrap();
    let url = get_msg_type_url(&app, &format!("bk_app_code=bk_job&bk_app_secret={secret}"));
    assert_eq!(get_env(&app, &url, None).await["code"], 0);

    let short = app.cli(&["apps", "add", "x", "--secret", "short"]);
    assert!(
        stderr(&short).contains("--secret must be at least 8 characters"),
        "{}",
        stderr(&short)
    );

    assert!(app.cli(&["apps", "remove", "bk_monitor"]).status.success());
    let url = get_msg_type_url(
        &app,
        "bk_app_code=bk_monitor&bk_app_secret=monitor-secret-1",
    );
    assert_eq!(get_env(&app, &url, None).await["code"], 1306401);

    // Stored as a salted hash, never the secret.
    use diesel::prelude::*;
    let mut conn = app.db.get().unwrap();
    let hashes: Vec<String> = ding_channel::db::schema::apps::table
        .select(ding_channel::db::schema::apps::secret_hash)
        .load(&mut *conn)
        .unwrap();
    assert!(hashes
        .iter()
        .all(|h| h.starts_with("v1$") && !h.contains(secret)));
}
