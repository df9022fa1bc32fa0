//! The request shapes BlueKing's own clients send, read as the ESB reads them: list fields,
//! bodies whatever their Content-Type, the ESB's flags, the header's short names, the
//! `Blueking-Language` labels and the tenant header.

use crate::helpers::*;
use serde_json::{json, Value};

async fn send(req: reqwest::RequestBuilder) -> Value {
    let res = req.send().await.expect("request sent");
    assert_eq!(res.status(), 200);
    let env: Value = res.json().await.expect("envelope JSON");
    assert!(env["request_id"].is_string(), "{env}");
    env
}

fn auth_header() -> String {
    json!({"bk_app_code": APP, "bk_app_secret": APP_SECRET}).to_string()
}

#[tokio::test]
async fn receivers_split_like_the_esb_list_fields() {
    let app = TestApp::spawn().await;
    for receivers in [
        json!("alice;bob"),
        json!("alice bob\talice\nbob"),
        json!(["alice", "bob", "alice"]),
        json!(r#"["alice","bob"]"#),
        json!(" alice,,\r\nbob "),
    ] {
        let env = app
            .post(
                "send_msg",
                json!({"msg_type": "ding", "receiver__username": receivers, "title": "t", "content": "x"}),
            )
            .await;
        assert_eq!(env["code"], 0, "{receivers}: {env}");
        let got: Vec<&str> = env["data"]["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["receiver"].as_str().unwrap())
            .collect();
        assert_eq!(got, ["alice", "bob"], "{receivers}");
    }
}

#[tokio::test]
async fn a_json_body_is_read_whatever_its_content_type() {
    let app = TestApp::spawn().await;
    let body = json!({"bk_app_code": APP, "bk_app_secret": APP_SECRET, "msg_type": "ding",
        "receiver__username": "alice", "title": "t", "content": "no type"})
    .to_string();
    for ct in [
        None,
        Some("application/x-www-form-urlencoded"),
        Some("text/plain"),
    ] {
        let mut req = app.client.post(app.url("send_msg")).body(body.clone());
        if let Some(ct) = ct {
            req = req.header("Content-Type", ct);
        }
        let env = send(req).await;
        assert_eq!(env["code"], 0, "{ct:?}: {env}");
    }
    // A GET whose body is `null` (the vendored SDKs) or empty.
    for body in ["null", ""] {
        let req = app
            .client
            .get(app.url("get_msg_type"))
            .header("X-Bkapi-Authorization", auth_header())
            .header("Content-Type", "application/json")
            .body(body);
        let env = send(req).await;
        assert_eq!(env["code"], 0, "{body:?}: {env}");
    }
}

#[tokio::test]
async fn is_content_base64_is_true_for_anything_but_false_zero_or_empty() {
    let app = TestApp::spawn().await;
    // "6ZKJ6ZKJ" is "钉钉".
    for flag in [json!("yes"), json!(2), json!("True")] {
        let env = app
            .post(
                "send_ding",
                json!({"receiver__username": "alice", "content": "6ZKJ6ZKJ", "is_content_base64": flag}),
            )
            .await;
        assert_eq!(env["code"], 0, "{flag}: {env}");
    }
    for flag in [json!("0"), json!(false), json!("")] {
        let env = app
            .post(
                "send_ding",
                json!({"receiver__username": "alice", "content": "plain!", "is_content_base64": flag}),
            )
            .await;
        assert_eq!(env["code"], 0, "{flag}: {env}");
    }
    let bodies: Vec<String> = app
        .sim
        .state
        .messages()
        .iter()
        .map(|m| m.body["msgParam"].to_string())
        .collect();
    assert_eq!(
        bodies.iter().filter(|b| b.contains("钉钉")).count(),
        3,
        "{bodies:?}"
    );
    assert_eq!(
        bodies.iter().filter(|b| b.contains("plain!")).count(),
        3,
        "{bodies:?}"
    );
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "alice", "content": "not base64!", "is_content_base64": "on"}),
        )
        .await;
    assert_refused(
        &env,
        1306406,
        "content: is_content_base64 is true but content is not valid base64",
    );
}

#[tokio::test]
async fn the_header_takes_the_short_names_of_the_vendored_sdks() {
    let app = TestApp::spawn().await;
    let req = app
        .client
        .post(app.url("send_ding"))
        .header(
            "X-Bkapi-Authorization",
            json!({"app_code": APP, "app_secret": APP_SECRET, "username": "ops-admin"}).to_string(),
        )
        .json(&json!({"receiver__username": "alice", "content": "x"}));
    let env = send(req).await;
    assert_eq!(env["code"], 0, "{env}");
    let id = env["data"]["message_id"].as_str().unwrap();
    let (status, log) = app
        .get(&format!(
            "/api/v1/messages/{id}?bk_app_code={APP}&bk_app_secret={APP_SECRET}"
        ))
        .await;
    assert_eq!(status, 200, "{log}");
    assert_eq!(log["data"]["sender"], "ops-admin", "{log}");

    let req = app
        .client
        .post(app.url("send_ding"))
        .header(
            "X-Bkapi-Authorization",
            json!({"app_code": APP, "app_secret": "wrong-secret"}).to_string(),
        )
        .json(&json!({"receiver__username": "alice", "content": "x"}));
    let env = send(req).await;
    assert_refused(
        &env,
        1306401,
        "bk_app_code or bk_app_secret is not accepted",
    );
    assert!(!env.to_string().contains("wrong-secret"), "{env}");
}

#[tokio::test]
async fn the_tenant_header_is_recorded_and_shown_in_the_delivery_log() {
    let app = TestApp::spawn().await;
    let send_for = |tenant: Option<String>| {
        let mut req = app
            .client
            .post(app.url("send_msg"))
            .header("X-Bkapi-Authorization", auth_header())
            .json(&json!({"msg_type": "ding", "receiver__username": "alice", "title": "t", "content": "x"}));
        if let Some(t) = tenant {
            req = req.header("X-Bk-Tenant-Id", t);
        }
        send(req)
    };
    let log =
        |id: &str| format!("/api/v1/messages/{id}?bk_app_code={APP}&bk_app_secret={APP_SECRET}");

    let env = send_for(Some("tenant-a".into())).await;
    assert_eq!(env["code"], 0, "{env}");
    let id = env["data"]["message_id"].as_str().unwrap().to_owned();
    let (status, view) = app.get(&log(&id)).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["data"]["tenant_id"], "tenant-a", "{view}");
    let shown = app.cli(&["deliveries", "show", &id]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert!(
        stdout(&shown).contains("tenant tenant-a"),
        "{}",
        stdout(&shown)
    );

    let env = send_for(None).await;
    let (_, view) = app
        .get(&log(env["data"]["message_id"].as_str().unwrap()))
        .await;
    assert_eq!(view["data"]["tenant_id"], Value::Null, "{view}");

    for bad in ["two words", &"t".repeat(65)] {
        let env = send_for(Some(bad.to_owned())).await;
        assert_refused(&env, 1306406, "X-Bk-Tenant-Id: must be");
    }
    assert_eq!(
        app.sim.state.messages().len(),
        2,
        "refused sends reach nobody"
    );
}
