use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn get_msg_type_lists_ding_with_its_icon() {
    let app = TestApp::spawn().await;
    let env = app.post("get_msg_type", json!({})).await;
    assert_eq!(env["result"], true, "{env}");
    let types = env["data"].as_array().unwrap();
    assert_eq!(types.len(), 1);
    assert_eq!(types[0]["type"], "ding");
    // No Blueking-Language: the ESB's default, English.
    assert_eq!(types[0]["label"], "DingTalk");
    assert_eq!(types[0]["name"], "DingTalk");
    assert_eq!(types[0]["label_en"], "DingTalk");
    assert_eq!(types[0]["is_active"], true);
    assert_eq!(types[0]["enabled"], true);
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(types[0]["icon"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
}

#[tokio::test]
async fn is_active_follows_the_registry() {
    let app = TestApp::spawn().await;
    assert!(app
        .cli(&["channels", "disable", "send_ding"])
        .status
        .success());
    let env = app.post("get_msg_type", json!({})).await;
    assert_eq!(env["data"][0]["is_active"], false, "{env}");
    assert_eq!(env["data"][0]["enabled"], false, "{env}");
    let send = app
        .post(
            "send_msg",
            json!({"msg_type": "ding", "receiver__username": "a", "title": "t", "content": "c"}),
        )
        .await;
    assert_refused(&send, 1306405, "msg_type 'ding' is disabled");

    assert!(app
        .cli(&["channels", "disable", "get_msg_type"])
        .status
        .success());
    let env = app.post("get_msg_type", json!({})).await;
    assert_refused(&env, 1306405, "channel get_msg_type is disabled");
}

#[tokio::test]
async fn send_msg_routes_ding_and_refuses_other_types() {
    let app = TestApp::spawn().await;
    let sms = app
        .post(
            "send_msg",
            json!({"msg_type": "sms", "receiver__username": "a", "content": "c"}),
        )
        .await;
    assert_refused(
        &sms,
        1306405,
        "msg_type 'sms' is not served here (available: ding)",
    );
    let none = app
        .post(
            "send_msg",
            json!({"receiver__username": "a", "content": "c"}),
        )
        .await;
    assert_refused(&none, 1306406, "msg_type: is required");
    // Validation is send_ding's: a markdown without title is refused naming the field.
    let md = app
        .post("send_msg", json!({"msg_type": "ding", "msg_key": "markdown", "receiver__username": "a", "content": "c"}))
        .await;
    assert_refused(&md, 1306406, "title: is required for msg_key=markdown");
}

#[tokio::test]
async fn labels_follow_blueking_language_as_the_esb_answers() {
    let app = TestApp::spawn().await;
    for (language, label) in [("zh-cn", "钉钉"), ("zh-hans", "钉钉"), ("en", "DingTalk")] {
        let env: serde_json::Value = app
            .client
            .get(app.url("get_msg_type"))
            .query(&[("bk_app_code", APP), ("bk_app_secret", APP_SECRET)])
            .header("Blueking-Language", language)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let t = &env["data"][0];
        assert_eq!(
            (&t["label"], &t["name"]),
            (&json!(label), &json!(label)),
            "{language}: {env}"
        );
        assert_eq!(t["label_en"], "DingTalk");
    }
}
