//! In front of the platform's own CMSI (`DING_CHANNEL_UPSTREAM_CMSI`): what ding-channel does
//! not serve is passed to a fake upstream CMSI run by the test, which records what it received
//! and answers what the test says.

use crate::helpers::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// One request as the fake upstream received it.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Canned {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

#[derive(Default)]
struct FakeState {
    received: Mutex<Vec<Received>>,
    /// By path suffix; the first that matches answers.
    answers: Mutex<Vec<(String, Canned)>>,
    /// When set, every request waits here until the test closes it.
    gate: Option<Semaphore>,
}

struct FakeCmsi {
    base: String,
    state: Arc<FakeState>,
}

impl FakeCmsi {
    fn start(hold: bool) -> Self {
        let state = Arc::new(FakeState {
            gate: hold.then(|| Semaphore::new(0)),
            ..FakeState::default()
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(fake_cmsi))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        Self { base, state }
    }

    fn answer(&self, path_suffix: &str, status: u16, content_type: &'static str, body: &[u8]) {
        self.state.answers.lock().unwrap().push((
            path_suffix.to_owned(),
            Canned {
                status,
                content_type,
                body: body.to_vec(),
            },
        ));
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    fn release(&self) {
        if let Some(gate) = &self.state.gate {
            gate.close();
        }
    }
}

async fn fake_cmsi(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<FakeState>,
) -> HttpResponse {
    let mut headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    headers.sort();
    state.received.lock().unwrap().push(Received {
        method: req.method().as_str().to_owned(),
        path: req.path().to_owned(),
        query: req.query_string().to_owned(),
        headers,
        body: body.to_vec(),
    });
    if let Some(gate) = &state.gate {
        let _ = gate.acquire().await; // fails once closed: the test let it through
    }
    let answers = state.answers.lock().unwrap();
    match answers
        .iter()
        .find(|(suffix, _)| req.path().ends_with(suffix.as_str()))
    {
        Some((_, c)) => {
            HttpResponse::build(actix_web::http::StatusCode::from_u16(c.status).unwrap())
                .content_type(c.content_type)
                .body(c.body.clone())
        }
        None => HttpResponse::Ok()
            .json(json!({"result": true, "code": 0, "message": "OK", "data": null})),
    }
}

async fn app_before(upstream: &str, extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![("DING_CHANNEL_UPSTREAM_CMSI", upstream)];
    env.extend_from_slice(extra);
    TestApp::spawn_with(TestDb::new(), repo_manifest(), &env).await
}

/// A port nothing listens on.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

async fn metrics(app: &TestApp) -> String {
    app.client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

const AUTH: &str = r#"{"bk_app_code": "bk_monitorv3", "bk_app_secret": "upstream-only-secret"}"#;

#[tokio::test]
async fn send_msg_of_a_type_not_served_here_goes_upstream_unchanged_and_comes_back_as_it_came() {
    let fake = FakeCmsi::start(false);
    let upstream_answer =
        br#"{"result": true, "code": 0, "message": "OK", "data": {}, "request_id": "esb-rid-7"}"#;
    fake.answer(
        "/send_msg/",
        200,
        "application/json; charset=utf-8",
        upstream_answer,
    );
    let app = app_before(&fake.base, &[]).await;

    // The app is known to the ESB only: ding-channel does not authenticate what it passes on.
    let body = "{\"msg_type\":\"mail\",  \"receiver__username\":\"alice,bob\",\n \"title\":\"t\",\"content\":\"<b>c</b>\"}";
    let res = app
        .client
        .post(format!(
            "{}/api/c/compapi/v2/cmsi/send_msg/?lang=en&x=1",
            app.address
        ))
        .header("X-Bkapi-Authorization", AUTH)
        .header("Content-Type", "application/json")
        .header("Blueking-Language", "en")
        .header("X-Bk-Tenant-Id", "tenant-a")
        .header("X-Request-Id", "rid-up-1")
        .header("Cookie", "bk_token=browser-session")
        .header("X-Unrelated", "not passed")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert_eq!(res.headers()["x-request-id"], "rid-up-1");
    assert_eq!(res.bytes().await.unwrap().as_ref(), upstream_answer);

    let got = fake.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let got = &got[0];
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/api/c/compapi/v2/cmsi/send_msg/");
    assert_eq!(got.query, "lang=en&x=1");
    assert_eq!(got.body, body.as_bytes());
    assert_eq!(got.header("x-bkapi-authorization"), Some(AUTH));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("blueking-language"), Some("en"));
    assert_eq!(got.header("x-bk-tenant-id"), Some("tenant-a"));
    assert_eq!(got.header("x-request-id"), Some("rid-up-1"));
    assert_eq!(got.header("x-ding-channel-passed"), Some("1"));
    for absent in ["cookie", "x-unrelated"] {
        assert_eq!(got.header(absent), None, "{absent} was passed on");
    }

    // ding is still ours: sent here, nothing more upstream.
    let ding = app
        .post(
            "send_msg",
            json!({"msg_type": "ding", "receiver__username": "alice", "title": "t", "content": "c"}),
        )
        .await;
    assert_eq!(ding["result"], true, "{ding}");
    assert_eq!(fake.received().len(), 1);
    assert!(metrics(&app).await.contains(
        r#"ding_channel_upstream_requests_total{component="send_msg",outcome="answered"} 1"#
    ));
}

#[tokio::test]
async fn other_cmsi_components_are_passed_on_for_get_and_post() {
    let fake = FakeCmsi::start(false);
    fake.answer(
        "/send_sms",
        400,
        "application/json",
        br#"{"result": false, "code": 1306406, "message": "content too long"}"#,
    );
    let app = app_before(&fake.base, &[]).await;

    let query = "bk_app_code=bk_job&bk_app_secret=s3&receiver__username=alice&content=hi%20there";
    let res = app
        .client
        .get(format!(
            "{}/api/c/compapi/cmsi/send_sms/?{query}",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let env: Value = res.json().await.unwrap();
    assert_eq!(env["result"], true, "{env}");

    // A form body and no trailing slash: passed on as they are, not parsed here.
    let form = "bk_app_code=bk_job&bk_app_secret=s3&receiver__username=alice&content=%E4%BD%A0";
    let res = app
        .client
        .post(format!("{}/api/c/compapi/v2/cmsi/send_sms", app.address))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        400,
        "the upstream's status comes back as it came"
    );
    assert_eq!(
        res.text().await.unwrap(),
        r#"{"result": false, "code": 1306406, "message": "content too long"}"#
    );

    let got = fake.received();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (
            got[0].method.as_str(),
            got[0].path.as_str(),
            got[0].query.as_str()
        ),
        ("GET", "/api/c/compapi/cmsi/send_sms/", query)
    );
    assert!(got[0].body.is_empty());
    assert_eq!(
        (
            got[1].method.as_str(),
            got[1].path.as_str(),
            got[1].query.as_str()
        ),
        ("POST", "/api/c/compapi/v2/cmsi/send_sms", "")
    );
    assert_eq!(got[1].body, form.as_bytes());
    assert_eq!(
        got[1].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
}

#[tokio::test]
async fn get_msg_type_lists_the_upstreams_types_and_ours_win_a_clash() {
    let fake = FakeCmsi::start(false);
    let theirs = json!({"result": true, "code": 0, "message": "OK", "data": [
        {"type": "mail", "label": "Email", "icon": "m", "is_active": true},
        {"type": "ding", "label": "someone else's ding", "icon": "", "is_active": false},
        {"type": "sms", "label": "SMS", "icon": "s", "is_active": true},
    ]});
    fake.answer(
        "/get_msg_type/",
        200,
        "application/json",
        theirs.to_string().as_bytes(),
    );
    let app = app_before(&fake.base, &[]).await;

    let res = app
        .client
        .get(format!(
            "{}/api/c/compapi/v2/cmsi/get_msg_type/?bk_app_code={APP}&bk_app_secret={APP_SECRET}",
            app.address
        ))
        .header("Blueking-Language", "en")
        .send()
        .await
        .unwrap();
    let env: Value = res.json().await.unwrap();
    assert_eq!(env["result"], true, "{env}");
    assert_eq!(env["message"], "ok", "{env}");
    let types = env["data"].as_array().unwrap();
    let kinds: Vec<&str> = types.iter().map(|t| t["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["mail", "sms", "ding"], "{env}");
    assert_eq!(
        types[0], theirs["data"][0],
        "the upstream's entries as it gave them"
    );
    assert_eq!(types[2]["is_active"], true, "ding is ours");
    assert!(
        types[2]["icon"].as_str().unwrap().starts_with("iVBOR"),
        "our PNG icon"
    );

    let got = fake.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].method, "GET");
    assert_eq!(got[0].path, "/api/c/compapi/v2/cmsi/get_msg_type/");
    assert_eq!(
        got[0].query,
        format!("bk_app_code={APP}&bk_app_secret={APP_SECRET}")
    );
    assert_eq!(got[0].header("blueking-language"), Some("en"));

    // Our own refusal is not papered over with the upstream's types.
    let wrong = app
        .post_raw(
            &app.url("get_msg_type"),
            &json!({"bk_app_code": APP, "bk_app_secret": "wrong"}),
        )
        .await;
    assert_refused(&wrong, 1306401, "app authentication failed");
    assert_eq!(fake.received().len(), 1);
}

/// What a caller gets from each path while the upstream fails: sends an honest `1306201`
/// naming the upstream and the failure, `get_msg_type` our own types.
async fn assert_upstream_fails(app: &TestApp, upstream: &str, why: &str, after: &str) {
    let mail = app
        .post(
            "send_msg",
            json!({"msg_type": "mail", "receiver__username": "alice", "title": "t", "content": "c"}),
        )
        .await;
    assert_refused(
        &mail,
        1306201,
        &format!("the upstream CMSI at {upstream} (DING_CHANNEL_UPSTREAM_CMSI) failed on send_msg: {why}"),
    );
    assert!(mail["message"].as_str().unwrap().ends_with(after), "{mail}");
    let sms = app
        .post(
            "send_sms",
            json!({"receiver__username": "alice", "content": "c"}),
        )
        .await;
    assert_refused(&sms, 1306201, &format!("failed on send_sms: {why}"));

    let types = app.post("get_msg_type", json!({})).await;
    assert_eq!(types["result"], true, "{types}");
    assert_eq!(types["data"].as_array().unwrap().len(), 1, "{types}");
    assert_eq!(types["data"][0]["type"], "ding");
    let message = types["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "only ding-channel's types are listed (the upstream CMSI at {upstream}: {why}"
        )),
        "{message}"
    );
}

#[tokio::test]
async fn an_upstream_that_is_down_is_named_in_the_answer_and_counted() {
    let down = closed_port_url();
    let app = app_before(&down, &[]).await;
    assert_upstream_fails(&app, &down, "cannot connect (", "it was not passed on").await;
    let m = metrics(&app).await;
    for component in ["send_msg", "send_sms", "get_msg_type"] {
        let line = format!(
            r#"ding_channel_upstream_requests_total{{component="{component}",outcome="unreachable"}} 1"#
        );
        assert!(m.contains(&line), "{line} not in:\n{m}");
    }
}

#[tokio::test]
async fn an_upstream_that_does_not_answer_in_time_is_given_up_on() {
    let fake = FakeCmsi::start(true);
    let app = app_before(&fake.base, &[("DING_CHANNEL_UPSTREAM_TIMEOUT_MS", "300")]).await;
    assert_upstream_fails(
        &app,
        &fake.base,
        "no answer within 300 ms (DING_CHANNEL_UPSTREAM_TIMEOUT_MS)",
        "it may have been carried out there",
    )
    .await;
    assert_eq!(fake.received().len(), 3, "each call reached the upstream");
    fake.release();
    let m = metrics(&app).await;
    assert!(
        m.contains(
            r#"ding_channel_upstream_requests_total{component="get_msg_type",outcome="timeout"} 1"#
        ),
        "{m}"
    );
}

#[tokio::test]
async fn an_upstream_answering_something_that_is_not_json_fails_honestly() {
    let fake = FakeCmsi::start(false);
    fake.answer(
        "/",
        502,
        "text/html",
        b"<html><body>502 Bad Gateway</body></html>",
    );
    let app = app_before(&fake.base, &[]).await;
    assert_upstream_fails(
        &app,
        &fake.base,
        "answered HTTP 502 with a body that is not JSON",
        "it may have been carried out there",
    )
    .await;
    let m = metrics(&app).await;
    assert!(
        m.contains(
            r#"ding_channel_upstream_requests_total{component="send_sms",outcome="bad_answer"} 1"#
        ),
        "{m}"
    );
}

#[tokio::test]
async fn a_request_that_comes_back_from_the_upstream_is_not_passed_on_again() {
    let fake = FakeCmsi::start(false);
    let app = app_before(&fake.base, &[]).await;
    // What an upstream address routed back to ding-channel would deliver.
    let res = app
        .client
        .post(app.url("send_mail"))
        .header("X-Ding-Channel-Passed", "1")
        .json(
            &json!({"bk_app_code": APP, "bk_app_secret": APP_SECRET, "receiver": "a@example.com"}),
        )
        .send()
        .await
        .unwrap();
    let env: Value = res.json().await.unwrap();
    assert_refused(
        &env,
        1306000,
        &format!("send_mail came back from the upstream CMSI at {} (DING_CHANNEL_UPSTREAM_CMSI): it must be the ESB's own address", fake.base),
    );
    let types = app
        .client
        .post(app.url("get_msg_type"))
        .header("X-Ding-Channel-Passed", "1")
        .json(&json!({"bk_app_code": APP, "bk_app_secret": APP_SECRET}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(types["message"], "ok", "{types}");
    assert!(fake.received().is_empty(), "{:?}", fake.received());
}

#[tokio::test]
async fn without_an_upstream_nothing_is_passed_on() {
    let app = TestApp::spawn().await;
    let res = app
        .client
        .post(app.url("send_mail"))
        .json(
            &json!({"bk_app_code": APP, "bk_app_secret": APP_SECRET, "receiver": "a@example.com"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let env: Value = res.json().await.unwrap();
    assert_refused(&env, 1306405, "no channel is served at /cmsi/send_mail/");
    let sms = app
        .post(
            "send_msg",
            json!({"msg_type": "sms", "receiver__username": "a", "content": "c"}),
        )
        .await;
    assert_refused(&sms, 1306405, "msg_type 'sms' is not served here");
}

/// Sends `path` exactly as written: an HTTP client would resolve its dot segments first.
async fn get_raw_path(app: &TestApp, path: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = app.address.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(authority).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|_| panic!("{answer}")),
    )
}

#[tokio::test]
async fn a_path_that_is_not_one_plain_component_name_is_not_passed_on() {
    let fake = FakeCmsi::start(false);
    let app = app_before(&fake.base, &[]).await;
    let auth = format!("bk_app_code={APP}&bk_app_secret={APP_SECRET}");
    for tail in [
        // The HTTP client reads `\` as `/` and resolves `..`: these would reach /admin/.
        "cmsi/x/..%5C..%5C..%5C..%5Cadmin/",
        "v2/cmsi/x/../../../../admin/",
        "cmsi/%2E%2E/%2E%2E/%2E%2E/admin/",
        "cmsi/x%2F..%2F..%2F..%2Fadmin/",
        "cmsi/send_mail%5C..%5C..%5Cadmin/",
        "cmsi//send_mail/",
        "v2//cmsi/send_mail/",
        "cmsi/send_mail//",
        "cmsi/Send_Mail/",
    ] {
        let (status, env) = get_raw_path(&app, &format!("/api/c/compapi/{tail}?{auth}")).await;
        assert_eq!(status, 404, "{tail}: {env}");
        assert_refused(&env, 1306405, "no channel is served at /cmsi/");
    }
    assert!(fake.received().is_empty(), "{:?}", fake.received());

    // The checked parts, and the caller's own slash, are what goes upstream.
    let (status, _) = get_raw_path(&app, &format!("/api/c/compapi/v2/cmsi/send_sms?{auth}")).await;
    assert_eq!(status, 200);
    let got = fake.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].path, "/api/c/compapi/v2/cmsi/send_sms");
    assert_eq!(got[0].query, auth);
}

#[tokio::test]
async fn a_caller_with_the_gateways_token_alone_is_told_why_nothing_is_passed_on() {
    use crate::gateway_jwt::{gateway_claims, public_key, sign, Key};
    let fake = FakeCmsi::start(false);
    let key = public_key();
    let app = app_before(&fake.base, &[("DING_CHANNEL_APIGW_PUBLIC_KEY", &key)]).await;
    let token = sign(Key::Current, &gateway_claims(&app, "bk_monitorv3", "admin"));
    let with_token = |channel: &str, body: Value| {
        app.client
            .post(app.url(channel))
            .header("X-Bkapi-JWT", &token)
            .json(&body)
    };

    for (channel, body) in [
        (
            "send_mail",
            json!({"receiver__username": "alice", "title": "t", "content": "c"}),
        ),
        (
            "send_msg",
            json!({"msg_type": "mail", "receiver__username": "alice", "title": "t", "content": "c"}),
        ),
    ] {
        let env: Value = with_token(channel, body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_refused(
            &env,
            1306401,
            &format!("X-Bkapi-JWT authenticates calls to ding-channel only, and {channel} is passed to the upstream CMSI at {}", fake.base),
        );
        assert_refused(&env, 1306401, "the pass-through needs the caller's bk_app_code and bk_app_secret: route the components ding-channel does not serve through the API gateway to the ESB directly");
    }
    // Our own types alone, as if no upstream were set: it would refuse this caller every time.
    let types: Value = with_token("get_msg_type", json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(types["message"], "ok", "{types}");
    assert_eq!(types["data"].as_array().unwrap().len(), 1, "{types}");
    assert!(fake.received().is_empty(), "{:?}", fake.received());
    assert!(!metrics(&app)
        .await
        .contains("ding_channel_upstream_requests_total{"));

    // A secret beside the token is the caller's own authentication, and is passed on.
    let env: Value = with_token(
        "send_mail",
        json!({"receiver__username": "alice", "content": "c"}),
    )
    .header("X-Bkapi-Authorization", AUTH)
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(env["result"], true, "{env}");
    let got = fake.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].header("x-bkapi-authorization"), Some(AUTH));
    assert_eq!(
        got[0].header("x-bkapi-jwt"),
        None,
        "the token is for ding-channel"
    );
}

const SECRET: &str = "passthrough-secret-never-logged";

#[tokio::test]
async fn the_real_binary_logs_what_it_passed_on_under_the_request_id_and_no_secret() {
    let fake = FakeCmsi::start(false);
    // An upstream that echoes the secret back is still not logged.
    fake.answer(
        "/send_weixin/",
        500,
        "text/plain",
        format!("echo {SECRET}").as_bytes(),
    );
    let db = TestDb::new();
    let server = serve(
        &db.url,
        "http://127.0.0.1:9",
        &[
            ("DING_CHANNEL_LOG", "debug"),
            ("DING_CHANNEL_LOG_FORMAT", "json"),
            ("DING_CHANNEL_UPSTREAM_CMSI", &fake.base),
        ],
    );
    let base = server.url.replace("/compapi/cmsi", "/compapi/v2/cmsi");
    let client = reqwest::Client::new();
    let auth = format!(r#"{{"bk_app_code":"bk_monitorv3","bk_app_secret":"{SECRET}"}}"#);
    let sent = [
        client
            .post(format!("{base}/send_msg/"))
            .header("X-Bkapi-Authorization", &auth)
            .header("X-Request-Id", "rid-up-log-1")
            .json(&json!({"msg_type": "mail", "bk_app_secret": SECRET, "receiver__username": "a", "content": "c"})),
        client
            .get(format!("{base}/send_weixin/?bk_app_code=x&bk_app_secret={SECRET}"))
            .header("X-Request-Id", "rid-up-log-2"),
    ];
    for request in sent {
        let res = request.send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(!res.text().await.unwrap().contains(SECRET));
    }
    let log = server.stop();

    assert!(!log.contains(SECRET), "secret in server log:\n{log}");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}")))
        .collect();
    // Their debug lines name the URLs called, whose query may hold a caller's secret: at
    // debug, the HTTP client's crates stay at info unless named in DING_CHANNEL_LOG.
    let client_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            let target = l["target"].as_str().unwrap_or("");
            ["reqwest", "hyper", "hyper_util"]
                .iter()
                .any(|c| target == *c || target.starts_with(&format!("{c}::")))
                && matches!(l["level"].as_str(), Some("DEBUG" | "TRACE"))
        })
        .collect();
    assert!(client_lines.is_empty(), "{client_lines:?}");
    let with = |message: &str, rid: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message && l["span"]["request_id"] == rid)
    };
    let passed =
        with("passed to the upstream CMSI", "rid-up-log-1").unwrap_or_else(|| panic!("{log}"));
    assert_eq!(passed["component"], "send_msg");
    assert_eq!(passed["status"], 200);
    let failed = with("upstream CMSI failed", "rid-up-log-2").unwrap_or_else(|| panic!("{log}"));
    assert_eq!(failed["level"], "WARN");
    assert_eq!(failed["component"], "send_weixin");
}
