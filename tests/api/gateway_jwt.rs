//! Callers behind the BlueKing API gateway: `X-Bkapi-JWT` signed RS512 by the gateway's key
//! authenticates the request alone. Tokens are signed here with the test-only keypairs in
//! tests/fixtures/ (generated for these tests, used nowhere else).

use crate::helpers::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub(crate) fn public_key() -> String {
    fixture("apigw-test-only-public.pem").display().to_string()
}

fn rotated_public_key() -> String {
    fixture("apigw-test-only-rotated-public.pem")
        .display()
        .to_string()
}

/// Which test key signs.
#[derive(Clone, Copy)]
pub(crate) enum Key {
    Current,
    Rotated,
}

/// Signs `claims` as the gateway does: RS512, `kid` = the gateway's name.
pub(crate) fn sign(key: Key, claims: &Value) -> String {
    let file = match key {
        Key::Current => "apigw-test-only-private.pem",
        Key::Rotated => "apigw-test-only-rotated-private.pem",
    };
    let pem = std::fs::read(fixture(file)).unwrap();
    let mut header = Header::new(Algorithm::RS512);
    header.kid = Some("bk-apigateway".into());
    encode(&header, claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

fn now_s(app: &TestApp) -> i64 {
    use ding_channel::clock::Clock;
    app.clock.now_ms() / 1000
}

/// The API gateway's claim shape, valid for 15 minutes from the app's clock.
pub(crate) fn gateway_claims(app: &TestApp, app_code: &str, username: &str) -> Value {
    let now = now_s(app);
    json!({
        "iss": "APIGW",
        "nbf": now - 300,
        "exp": now + 900,
        "app": {"app_code": app_code, "verified": true, "exists": true},
        "user": {"username": username, "verified": true},
    })
}

async fn spawn_with_keys(extra: &[(&str, &str)]) -> TestApp {
    TestApp::spawn_with(TestDb::new(), repo_manifest(), extra).await
}

async fn spawn() -> TestApp {
    let key = public_key();
    spawn_with_keys(&[("DING_CHANNEL_APIGW_PUBLIC_KEY", &key)]).await
}

/// POSTs `body` as the gateway forwards it: no secret, the token in `X-Bkapi-JWT`.
async fn post_jwt(app: &TestApp, channel: &str, token: &str, body: &Value) -> Value {
    let res = app
        .client
        .post(app.url(channel))
        .header("X-Bkapi-JWT", token)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

fn alert() -> Value {
    json!({"msg_type": "ding", "receiver__username": "alice", "title": "Disk full", "content": "host-1 /data at 95%"})
}

async fn message_with_jwt(app: &TestApp, id: &str, token: &str) -> (u16, Value) {
    let res = app
        .client
        .get(format!("{}/api/v1/messages/{id}", app.address))
        .header("X-Bkapi-JWT", token)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn a_gateway_token_authenticates_a_send_and_its_app_owns_the_message() {
    let app = spawn().await;
    let token = sign(Key::Current, &gateway_claims(&app, "bk_monitorv3", "admin"));
    let sent = post_jwt(&app, "send_msg", &token, &alert()).await;
    assert_eq!(
        (sent["result"].clone(), sent["code"].clone()),
        (json!(true), json!(0)),
        "{sent}"
    );
    let id = sent["data"]["message_id"].as_str().unwrap().to_owned();
    app.drain().await;
    assert_eq!(app.sim.state.messages().len(), 1);

    let (status, view) = message_with_jwt(&app, &id, &token).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["data"]["app_code"], "bk_monitorv3");
    assert_eq!(view["data"]["sender"], "admin");
    // Another app's secret does not see it: the token's app code is the message's namespace.
    let (status, _) = app
        .get(&format!(
            "/api/v1/messages/{id}?bk_app_code={APP}&bk_app_secret={APP_SECRET}"
        ))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_esb_claim_shape_is_accepted_too() {
    let app = spawn().await;
    let now = now_s(&app);
    let token = sign(
        Key::Current,
        &json!({
            "iss": "APIGW", "nbf": now - 300, "exp": now + 900,
            "app": {"bk_app_code": "bk_sops", "verified": true},
            "user": {"bk_username": "bob", "verified": true},
        }),
    );
    let sent = post_jwt(&app, "send_msg", &token, &alert()).await;
    assert_eq!(sent["code"], 0, "{sent}");
    let id = sent["data"]["message_id"].as_str().unwrap();
    let (_, view) = message_with_jwt(&app, id, &token).await;
    assert_eq!(view["data"]["app_code"], "bk_sops");
    assert_eq!(view["data"]["sender"], "bob");
}

#[tokio::test]
async fn an_unverified_user_is_not_recorded_as_the_sender() {
    let app = spawn().await;
    let mut claims = gateway_claims(&app, "bk_job", "mallory");
    claims["user"]["verified"] = json!(false);
    let token = sign(Key::Current, &claims);
    let sent = post_jwt(&app, "send_msg", &token, &alert()).await;
    assert_eq!(sent["code"], 0, "{sent}");
    let id = sent["data"]["message_id"].as_str().unwrap();
    let (_, view) = message_with_jwt(&app, id, &token).await;
    assert_eq!(view["data"]["sender"], Value::Null, "{view}");
}

#[tokio::test]
async fn a_token_is_honoured_within_its_times_and_refused_outside_them() {
    let app = spawn().await;
    let now = now_s(&app);
    let mut claims = gateway_claims(&app, "bk_job", "admin");
    claims["exp"] = json!(now + 60);
    let token = sign(Key::Current, &claims);
    let get = |token: String| {
        let app = &app;
        async move { post_jwt(app, "get_msg_type", &token, &json!({})).await }
    };
    assert_eq!(get(token.clone()).await["code"], 0);
    // Within the leeway for a gateway clock a little behind ours.
    app.clock.advance_ms((60 + 20) * 1000);
    assert_eq!(get(token.clone()).await["code"], 0);
    app.clock.advance_ms(20 * 1000);
    let expired = get(token.clone()).await;
    assert_refused(&expired, 1306401, "X-Bkapi-JWT has expired");
    assert!(
        !expired.to_string().contains(&token),
        "the token is never echoed"
    );

    let now = now_s(&app);
    let mut early = gateway_claims(&app, "bk_job", "admin");
    early["nbf"] = json!(now + 120);
    assert_refused(
        &get(sign(Key::Current, &early)).await,
        1306401,
        "X-Bkapi-JWT is not valid yet",
    );
}

#[tokio::test]
async fn a_token_of_another_key_is_refused_and_a_rotated_key_is_accepted() {
    let app = spawn().await;
    let foreign = sign(Key::Rotated, &gateway_claims(&app, "bk_job", "admin"));
    let refused = post_jwt(&app, "get_msg_type", &foreign, &json!({})).await;
    assert_refused(
        &refused,
        1306401,
        "X-Bkapi-JWT does not verify with any key of DING_CHANNEL_APIGW_PUBLIC_KEY (signed by gateway 'bk-apigateway')",
    );

    let keys = format!("{},{}", public_key(), rotated_public_key());
    let rotating = spawn_with_keys(&[("DING_CHANNEL_APIGW_PUBLIC_KEY", &keys)]).await;
    for key in [Key::Current, Key::Rotated] {
        let token = sign(key, &gateway_claims(&rotating, "bk_job", "admin"));
        let ok = post_jwt(&rotating, "get_msg_type", &token, &json!({})).await;
        assert_eq!(ok["code"], 0, "{ok}");
    }
}

#[tokio::test]
async fn an_unverified_kid_is_shortened_and_escaped_in_the_reason() {
    let app = spawn().await;
    let pem = std::fs::read(fixture("apigw-test-only-rotated-private.pem")).unwrap();
    let mut header = Header::new(Algorithm::RS512);
    let forged = "INFO request accepted app_code=admin";
    header.kid = Some(format!("gw\n{forged}\r\u{1b}[2J{}", "k".repeat(500)));
    let claims = gateway_claims(&app, "bk_job", "admin");
    let token = encode(&header, &claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap();
    let refused = post_jwt(&app, "get_msg_type", &token, &json!({})).await;
    let shown = format!(
        "gw\\n{forged}\\r\\u{{1b}}[2J{}…",
        "k".repeat(64 - "gw\n\r\u{1b}[2J".chars().count() - forged.len())
    );
    assert_refused(
        &refused,
        1306401,
        &format!("(signed by gateway '{shown}'): configure that gateway's public key"),
    );
    let message = refused["message"].as_str().unwrap();
    assert!(!message.contains(['\n', '\r', '\u{1b}']), "{message}");
}

#[tokio::test]
async fn issuer_verified_app_and_allowed_apps_are_checked() {
    let key = public_key();
    let app = spawn_with_keys(&[
        ("DING_CHANNEL_APIGW_PUBLIC_KEY", &key),
        ("DING_CHANNEL_APIGW_ISSUER", "bk-apigw-prod"),
        ("DING_CHANNEL_APIGW_APPS", "bk_monitorv3, bk_job"),
    ])
    .await;
    let call = |claims: Value| {
        let app = &app;
        async move {
            post_jwt(
                app,
                "get_msg_type",
                &sign(Key::Current, &claims),
                &json!({}),
            )
            .await
        }
    };
    let mut good = gateway_claims(&app, "bk_job", "admin");
    good["iss"] = json!("bk-apigw-prod");
    assert_eq!(call(good.clone()).await["code"], 0);

    assert_refused(
        &call(gateway_claims(&app, "bk_job", "admin")).await,
        1306401,
        "X-Bkapi-JWT was issued by 'APIGW', not by 'bk-apigw-prod' (DING_CHANNEL_APIGW_ISSUER)",
    );
    let mut unverified = good.clone();
    unverified["app"]["verified"] = json!(false);
    assert_refused(
        &call(unverified).await,
        1306401,
        "says app 'bk_job' was not verified by the gateway (app.verified is false)",
    );
    let mut other = good.clone();
    other["app"]["app_code"] = json!("bk_sops");
    assert_refused(
        &call(other).await,
        1306401,
        "names app 'bk_sops', which may not call this server (not in DING_CHANNEL_APIGW_APPS)",
    );
    let mut no_app = good.clone();
    no_app.as_object_mut().unwrap().remove("app");
    assert_refused(&call(no_app).await, 1306401, "X-Bkapi-JWT has no app claim");
}

#[tokio::test]
async fn a_malformed_token_is_refused_naming_the_header() {
    let app = spawn().await;
    for (token, reason) in [
        ("not-a-jwt", "X-Bkapi-JWT is not a JWT"),
        (
            "a.b.c",
            "X-Bkapi-JWT is not a JWT: its header does not decode",
        ),
    ] {
        assert_refused(
            &post_jwt(&app, "get_msg_type", token, &json!({})).await,
            1306401,
            reason,
        );
    }
    let good = sign(Key::Current, &gateway_claims(&app, "bk_job", "admin"));
    let (head, _) = good.rsplit_once('.').unwrap();
    assert_refused(
        &post_jwt(&app, "get_msg_type", &format!("{head}.@@@"), &json!({})).await,
        1306401,
        "X-Bkapi-JWT is not a JWT: its parts do not decode",
    );
    // Any algorithm but the gateway's is refused before a key is tried.
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &gateway_claims(&app, "bk_job", "admin"),
        &EncodingKey::from_secret(b"guessable"),
    )
    .unwrap();
    assert_refused(
        &post_jwt(&app, "get_msg_type", &hs, &json!({})).await,
        1306401,
        "X-Bkapi-JWT is signed with HS256; the API gateway signs with RS512",
    );
    // The REST path answers 401 with the same reason.
    let (status, body) = message_with_jwt(&app, "m-x", "not-a-jwt").await;
    assert_eq!(status, 401, "{body}");
    assert_refused(&body, 1306401, "X-Bkapi-JWT is not a JWT");
}

#[tokio::test]
async fn the_token_wins_over_a_secret_sent_beside_it() {
    let app = spawn().await;
    let with_secret = json!({"bk_app_code": APP, "bk_app_secret": APP_SECRET});
    // A bad token is not rescued by a good secret.
    let mut expired = gateway_claims(&app, "bk_job", "admin");
    expired["exp"] = json!(now_s(&app) - 3600);
    let refused = post_jwt(
        &app,
        "get_msg_type",
        &sign(Key::Current, &expired),
        &with_secret,
    )
    .await;
    assert_refused(&refused, 1306401, "X-Bkapi-JWT has expired");
    // A good token is not spoiled by a wrong secret, and its app is the caller.
    let mut body = alert();
    body["bk_app_code"] = json!(APP);
    body["bk_app_secret"] = json!("wrong-secret");
    let token = sign(Key::Current, &gateway_claims(&app, "bk_job", "admin"));
    let sent = post_jwt(&app, "send_msg", &token, &body).await;
    assert_eq!(sent["code"], 0, "{sent}");
    let (_, view) =
        message_with_jwt(&app, sent["data"]["message_id"].as_str().unwrap(), &token).await;
    assert_eq!(view["data"]["app_code"], "bk_job");
}

#[tokio::test]
async fn without_the_key_a_token_alone_is_refused_as_not_configured() {
    let app = TestApp::spawn().await;
    let token = sign(Key::Current, &gateway_claims(&app, "bk_job", "admin"));
    assert_refused(
        &post_jwt(&app, "get_msg_type", &token, &json!({})).await,
        1306401,
        "X-Bkapi-JWT was sent, but this server is not configured for JWTs: set DING_CHANNEL_APIGW_PUBLIC_KEY",
    );
    // A secret beside it authenticates as before.
    let ok = post_jwt(
        &app,
        "get_msg_type",
        &token,
        &json!({"bk_app_code": APP, "bk_app_secret": APP_SECRET}),
    )
    .await;
    assert_eq!(ok["code"], 0, "{ok}");
}

#[tokio::test]
async fn the_real_binary_never_logs_the_token() {
    let db = TestDb::new();
    let sim = real_time_simulator();
    let key = public_key();
    let server = serve(
        &db.url,
        &sim.base_url(),
        &[
            ("DING_CHANNEL_APIGW_PUBLIC_KEY", &key),
            ("DING_CHANNEL_LOG", "debug"),
        ],
    );
    let now = ding_channel::db::now_ms() / 1000;
    let claims = |verified: bool| {
        json!({"iss": "APIGW", "nbf": now - 300, "exp": now + 900,
               "app": {"app_code": "bk_job", "verified": verified}})
    };
    let client = reqwest::Client::new();
    let (good, bad) = (
        sign(Key::Current, &claims(true)),
        sign(Key::Current, &claims(false)),
    );
    for (token, code) in [(&good, 0), (&bad, 1306401)] {
        let env: Value = client
            .get(format!("{}/get_msg_type/", server.url))
            .header("X-Bkapi-JWT", token.as_str())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(env["code"], code, "{env}");
    }
    wait_until(
        "the refusal is logged",
        std::time::Duration::from_secs(10),
        || server.logged("app.verified is false"),
    )
    .await;
    for token in [&good, &bad] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            !server.logged(signature),
            "a token's signature reached the log"
        );
        assert!(
            !server.logged(token.split('.').nth(1).unwrap()),
            "a token's claims reached the log"
        );
    }
}
