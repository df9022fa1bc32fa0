use crate::helpers::*;
use serde_json::{json, Value};

#[tokio::test]
async fn every_answer_is_the_esb_envelope_with_a_request_id() {
    let app = TestApp::spawn().await;
    let res = app
        .client
        .post(app.url("get_msg_type"))
        .header("X-Request-Id", "trace-42")
        .json(&json!({"bk_app_code": APP, "bk_app_secret": APP_SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-42");
    let env: Value = res.json().await.unwrap();
    let keys: Vec<_> = env.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 5, "{env}");
    for k in ["result", "code", "message", "data", "request_id"] {
        assert!(env.get(k).is_some(), "{k} missing in {env}");
    }
    assert_eq!(env["request_id"], "trace-42");

    let generated = app.post("get_msg_type", json!({})).await;
    let rid = generated["request_id"].as_str().unwrap();
    assert_eq!(rid.len(), 32, "{rid}");
    assert_ne!(rid, "trace-42");
}

#[tokio::test]
async fn send_arguments_are_validated_naming_the_field() {
    let app = TestApp::spawn().await;
    let base = json!({"receiver__username": "alice,bob", "content": "disk full"});
    let with = |patch: Value| {
        let mut b = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                b.as_object_mut().unwrap().remove(k);
            } else {
                b[k] = v.clone();
            }
        }
        b
    };
    let cases = [
        (
            "send_ding",
            with(json!({"msg_key": "voice"})),
            "msg_key: unknown value 'voice'",
        ),
        (
            "send_ding",
            with(json!({"msg_key": "markdown"})),
            "title: is required for msg_key=markdown",
        ),
        (
            "send_ding",
            with(json!({"receiver__username": ""})),
            "receiver__username: no receiver given",
        ),
        (
            "send_ding",
            with(json!({"receiver__username": []})),
            "receiver__username: no receiver given",
        ),
        (
            "send_ding",
            with(json!({"content": null})),
            "content: is required",
        ),
        (
            "send_ding",
            with(json!({"is_content_base64": true, "content": "%%%"})),
            "content: is_content_base64 is true but content is not valid base64",
        ),
        (
            "send_ding",
            with(json!({"at_all": "maybe"})),
            "at_all: must be a boolean",
        ),
        (
            "send_ding",
            with(json!({"title": "t".repeat(300)})),
            "title: is longer than 256 characters",
        ),
        (
            "send_ding",
            with(json!({"msg_key": "link", "title": "t"})),
            "url: is required for msg_key=link",
        ),
        (
            "send_ding",
            with(json!({"at_mobiles": "call-me"})),
            "at_mobiles: 'call-me' is not a phone number",
        ),
        (
            "send_dingbot",
            with(json!({"receiver__username": "a;b/c"})),
            "receiver__username: 'b/c' contains '/'",
        ),
        (
            "send_dingtalk",
            with(json!({"receiver__username": null})),
            "give userid, mobile or receiver__username",
        ),
        (
            "send_dingtalk",
            with(json!({"userid": "u".repeat(65)})),
            "is not a DingTalk userid (up to 64 characters",
        ),
    ];
    for (channel, body, needle) in cases {
        let env = app.post(channel, body.clone()).await;
        assert_refused(&env, 1306406, needle);
    }
}

#[tokio::test]
async fn v1_and_v2_paths_get_and_post_json_and_form_are_served_alike() {
    let app = TestApp::spawn().await;
    let q = "bk_app_code=demo&bk_app_secret=demo-secret&receiver__username=alice&content=hi&is_content_base64=0";
    for prefix in ["/api/c/compapi/cmsi", "/api/c/compapi/v2/cmsi"] {
        let (status, env) = app.get(&format!("{prefix}/send_ding/?{q}")).await;
        assert_eq!(status, 200);
        assert_eq!(env["code"], 0, "GET {prefix}: {env}");
        let res = app
            .client
            .post(format!("{}{prefix}/send_ding/", app.address))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(q)
            .send()
            .await
            .unwrap();
        let env: Value = res.json().await.unwrap();
        assert_eq!(env["code"], 0, "form POST {prefix}: {env}");
        let (_, env) = app
            .get(&format!("{prefix}/send_ding?{q}&msg_key=nope"))
            .await;
        assert_refused(&env, 1306406, "msg_key");
    }
}

#[tokio::test]
async fn bodies_are_refused_cleanly_when_unparsable_or_too_large() {
    let app = TestApp::spawn().await;
    let res = app
        .client
        .post(app.url("send_ding"))
        .header("content-type", "application/json")
        .body("{\"bk_app_code\": \"demo\",")
        .send()
        .await
        .unwrap();
    let env: Value = res.json().await.unwrap();
    assert_refused(&env, 1306406, "body: not valid JSON");

    let huge = format!(
        r#"{{"bk_app_code":"demo","bk_app_secret":"demo-secret","receiver__username":"a","content":"{}"}}"#,
        "x".repeat(10 << 20)
    );
    let res = app
        .client
        .post(app.url("send_ding"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("answered, not reset");
    assert_eq!(res.status(), 200);
    let env: Value = res.json().await.unwrap();
    assert_refused(
        &env,
        1306406,
        "body: is larger than 1048576 bytes (DING_CHANNEL_MAX_BODY)",
    );

    // The limit is configurable.
    let small = TestApp::spawn_with(
        TestDb::new(),
        repo_manifest(),
        &[("DING_CHANNEL_MAX_BODY", "2048")],
    )
    .await;
    let env = small
        .post(
            "send_ding",
            json!({"receiver__username": "a", "content": "x".repeat(3000)}),
        )
        .await;
    assert_refused(&env, 1306406, "larger than 2048 bytes");
}

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ready");
    assert_eq!(body["database"], app.db.backend());
}
