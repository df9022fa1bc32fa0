//! Hostile input against the whole HTTP surface, as one table: each row is a request, the
//! status it must get (and the ESB `code` where the answer is the envelope), and a word of
//! the message naming what is wrong. Afterwards the server must still be healthy and send.

use crate::helpers::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ESB: &str = "/api/c/compapi/cmsi/send_ding/";
const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

/// How a row's request goes out: through reqwest, or as raw bytes on the socket for what
/// reqwest would normalize away (`..` segments).
enum Via {
    Client,
    Raw,
}

struct Row {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    /// Basic credentials of the demo app, for the REST and webhook paths.
    basic: bool,
    body: Vec<u8>,
    via: Via,
    status: u16,
    /// The ESB envelope's `code`, when the answer is the envelope.
    code: Option<i64>,
    /// Part of the message (ESB `message`, webhook `error`) naming the field.
    needle: &'static str,
    /// The `Allow` header a 405 must carry.
    allow: Option<&'static str>,
}

fn row(name: &'static str, method: &'static str, path: impl Into<String>) -> Row {
    Row {
        name,
        method,
        path: path.into(),
        headers: vec![],
        basic: false,
        body: vec![],
        via: Via::Client,
        status: 200,
        code: None,
        needle: "",
        allow: None,
    }
}

impl Row {
    fn json(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.headers.push(("content-type", JSON.into()));
        self.body = body.into();
        self
    }
    fn form(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.headers.push(("content-type", FORM.into()));
        self.body = body.into();
        self
    }
    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
    fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    fn basic(mut self) -> Self {
        self.basic = true;
        self
    }
    fn raw(mut self) -> Self {
        self.via = Via::Raw;
        self
    }
    /// An ESB envelope with `code`, answered with HTTP `status`.
    fn esb(mut self, status: u16, code: i64, needle: &'static str) -> Self {
        (self.status, self.code, self.needle) = (status, Some(code), needle);
        self
    }
    fn expect(mut self, status: u16, needle: &'static str) -> Self {
        (self.status, self.needle) = (status, needle);
        self
    }
    /// A 405 whose `Allow` is `allow`, and whose error names the method and the allowed ones
    /// (a HEAD's answer has no body to name them in).
    fn not_allowed(mut self, allow: &'static str) -> Self {
        (self.status, self.allow) = (405, Some(allow));
        self.needle = if self.method == "HEAD" {
            ""
        } else {
            self.method
        };
        self
    }
}

/// An ESB send's JSON body: the demo app's credentials, a valid send, then `patch` (a null
/// removes the key).
fn send(patch: Value) -> Vec<u8> {
    let mut body = json!({
        "bk_app_code": APP, "bk_app_secret": APP_SECRET,
        "receiver__username": "alice", "content": "disk full",
    });
    for (k, v) in patch.as_object().unwrap() {
        match v {
            Value::Null => drop(body.as_object_mut().unwrap().remove(k)),
            v => body[k] = v.clone(),
        }
    }
    body.to_string().into_bytes()
}

const CREDS: &str = "bk_app_code=demo&bk_app_secret=demo-secret";

fn nested(depth: usize) -> Vec<u8> {
    format!(
        r#"{{"bk_app_code":"demo","bk_app_secret":"demo-secret","content":{}1{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
    .into_bytes()
}

fn webhook_nested(depth: usize) -> Vec<u8> {
    format!(r#"{{"alerts":{}{}}}"#, "[".repeat(depth), "]".repeat(depth)).into_bytes()
}

fn table() -> Vec<Row> {
    let am = "/api/v1/alertmanager/alice";
    let grafana = "/api/v1/grafana/alice";
    let good_am = crate::alertmanager::notification(
        "firing",
        vec![crate::alertmanager::alert("firing", "h1", "host-1")],
    );
    let with_am = |k: &str, v: Value| {
        let mut b = good_am.clone();
        match v {
            Value::Null => drop(b.as_object_mut().unwrap().remove(k)),
            v => b[k] = v,
        }
        b.to_string().into_bytes()
    };
    let huge = vec![b'x'; 10 << 20];
    let huge_json = format!(r#"{{"content":"{}"}}"#, "x".repeat(10 << 20)).into_bytes();
    let mut invalid_utf8 = send(json!({})).to_vec();
    let at = invalid_utf8.len() - 3;
    invalid_utf8.splice(at..at, [0xff, 0xfe]);
    vec![
        // ESB: credentials.
        row("no credentials", "POST", ESB)
            .json(r#"{"receiver__username":"alice","content":"x"}"#)
            .esb(200, 1306401, "bk_app_code"),
        row("wrong secret", "POST", ESB)
            .json(send(json!({"bk_app_secret": "guess"})))
            .esb(200, 1306401, "bk_app_secret"),
        row("app code of the wrong type", "POST", ESB)
            .json(send(json!({"bk_app_code": 7})))
            .esb(200, 1306401, "bk_app_code"),
        // ESB: missing, duplicate and mistyped fields.
        row("missing content", "POST", ESB)
            .json(send(json!({"content": null})))
            .esb(200, 1306406, "content: is required"),
        row("missing receiver", "POST", ESB)
            .json(send(json!({"receiver__username": null})))
            .esb(200, 1306406, "receiver__username"),
        row("content is an object", "POST", ESB)
            .json(send(json!({"content": {"a": 1}})))
            .esb(200, 1306406, "content"),
        row("receiver is an object", "POST", ESB)
            .json(send(json!({"receiver__username": {"a": 1}})))
            .esb(200, 1306406, "receiver__username"),
        row("msg_key is a list", "POST", ESB)
            .json(send(json!({"msg_key": ["text"]})))
            .esb(200, 1306406, "msg_key"),
        row("at_all is a list", "POST", ESB)
            .json(send(json!({"at_all": [true]})))
            .esb(200, 1306406, "at_all"),
        row("duplicate content in a form", "POST", ESB)
            .form(format!("{CREDS}&receiver__username=alice&content=a&content=b"))
            .esb(200, 1306406, "content"),
        row("duplicate key in JSON", "POST", ESB)
            .json(
                r#"{"bk_app_code":"demo","bk_app_secret":"demo-secret","receiver__username":"alice","content":"a","content":{}}"#,
            )
            .esb(200, 1306406, "content"),
        row("a JSON list, not an object", "POST", ESB)
            .json("[1,2]")
            .esb(200, 1306406, "body: must be a JSON object"),
        row("truncated JSON", "POST", ESB)
            .json(r#"{"bk_app_code":"demo""#)
            .esb(200, 1306406, "body: not valid JSON"),
        // ESB: encodings and bytes.
        row("invalid UTF-8 in JSON", "POST", ESB)
            .json(invalid_utf8)
            .esb(200, 1306406, "body"),
        row("invalid UTF-8 in a form", "POST", ESB)
            .form(
                [CREDS.as_bytes(), b"&receiver__username=alice&content=\xff\xfe"].concat(),
            )
            .esb(200, 1306406, "form body"),
        row("percent-encoded invalid UTF-8 in the query", "GET", format!("{ESB}?{CREDS}&receiver__username=alice&content=%FF%FE"))
            .esb(200, 1306406, "query string"),
        row("NUL in content", "POST", ESB)
            .json(send(json!({"content": "disk\u{0}full"})))
            .esb(200, 1306406, "content"),
        row("NUL in a receiver", "POST", ESB)
            .json(send(json!({"receiver__username": "ali\u{0}ce"})))
            .esb(200, 1306406, "receiver__username"),
        row(
            "NUL in a query argument",
            "GET",
            format!("{ESB}?{CREDS}&receiver__username=al%00ice&content=x"),
        )
        .esb(200, 1306406, "receiver__username: contains a NUL"),
        row("NUL in a form field", "POST", ESB)
            .form(format!("{CREDS}&receiver__username=alice&content=a%00b"))
            .esb(200, 1306406, "content"),
        row("a 10 MB JSON body", "POST", ESB)
            .json(huge_json.clone())
            .esb(200, 1306406, "DING_CHANNEL_MAX_BODY"),
        row("a 10 MB form body", "POST", ESB)
            .form(huge.clone())
            .esb(200, 1306406, "DING_CHANNEL_MAX_BODY"),
        row("JSON nested 10 000 deep", "POST", ESB)
            .json(nested(10_000))
            .esb(200, 1306406, "body: not valid JSON"),
        row("multipart body", "POST", ESB)
            .header("content-type", "multipart/form-data; boundary=x")
            .body("--x\r\ncontent-disposition: form-data; name=\"content\"\r\n\r\nhi\r\n--x--\r\n")
            .esb(200, 1306406, "multipart"),
        // ESB: query and form encodings with bad values.
        row("query: bad boolean", "GET", format!("{ESB}?{CREDS}&receiver__username=alice&content=x&at_all=maybe"))
            .esb(200, 1306406, "at_all"),
        row("query: unknown msg_key", "GET", format!("/api/c/compapi/v2/cmsi/send_ding/?{CREDS}&receiver__username=alice&content=x&msg_key=voice"))
            .esb(200, 1306406, "msg_key"),
        row("query: bad base64", "GET", format!("{ESB}?{CREDS}&receiver__username=alice&content=%25%25&is_content_base64=1"))
            .esb(200, 1306406, "content"),
        row("form: bad receiver", "POST", "/api/c/compapi/v2/cmsi/send_dingbot/")
            .form(format!("{CREDS}&receiver__username=a%3Bb%2Fc&content=x"))
            .esb(200, 1306406, "receiver__username"),
        row("form: overlong title", "POST", ESB)
            .form(format!("{CREDS}&receiver__username=alice&content=x&msg_key=markdown&title={}", "t".repeat(300)))
            .esb(200, 1306406, "title"),
        // ESB: channels and paths.
        row("unknown channel", "POST", "/api/c/compapi/cmsi/send_pigeon/")
            .json(send(json!({})))
            .esb(404, 1306405, "send_pigeon"),
        row("unknown channel on v2", "GET", format!("/api/c/compapi/v2/cmsi/send_pigeon?{CREDS}"))
            .esb(404, 1306405, "send_pigeon"),
        row("traversal with ..", "POST", "/api/c/compapi/cmsi/../../../healthz")
            .json(send(json!({})))
            .raw()
            .esb(404, 1306405, "no channel is served at"),
        row("traversal with %2e%2e", "POST", "/api/c/compapi/cmsi/%2e%2e/%2e%2e/send_ding/")
            .json(send(json!({})))
            .raw()
            .esb(404, 1306405, "no channel is served at"),
        row("wrong method on a channel", "PUT", ESB)
            .json(send(json!({})))
            .not_allowed("GET, POST"),
        row("DELETE on a v2 channel", "DELETE", "/api/c/compapi/v2/cmsi/send_msg/").not_allowed("GET, POST"),
        // HEAD would send unseen (a GET sends), so the ESB paths refuse it.
        row("HEAD on a channel", "HEAD", format!("{ESB}?{CREDS}&receiver__username=alice&content=x"))
            .not_allowed("GET, POST"),
        row("PATCH on an unknown channel", "PATCH", "/api/c/compapi/cmsi/send_pigeon/").not_allowed("GET, POST"),
        // The delivery log.
        row("a message that does not exist", "GET", format!("/api/v1/messages/no-such-id?{CREDS}"))
            .esb(404, 1306000, "no such message"),
        row("a 10 KB message id", "GET", format!("/api/v1/messages/{}?{CREDS}", "9".repeat(10_000)))
            .esb(404, 1306000, "no such message"),
        row("a message without credentials", "GET", "/api/v1/messages/no-such-id")
            .esb(401, 1306401, "app authentication failed"),
        row("a message by traversal", "GET", "/api/v1/messages/../../healthz")
            .raw()
            .expect(404, "path: nothing is served for GET /api/v1/messages/../../healthz"),
        row("DELETE a message", "DELETE", format!("/api/v1/messages/x?{CREDS}"))
            .not_allowed("GET, HEAD"),
        // Alertmanager.
        row("Alertmanager: no credentials", "POST", am)
            .json(good_am.to_string())
            .expect(401, "basic_auth"),
        row("Alertmanager: alerts is a string", "POST", am)
            .basic()
            .json(with_am("alerts", json!("many")))
            .expect(400, "alerts"),
        row("Alertmanager: status missing", "POST", am)
            .basic()
            .json(with_am("status", Value::Null))
            .expect(400, "status"),
        row("Alertmanager: invalid UTF-8", "POST", am)
            .basic()
            .json(b"{\"version\":\"4\xff\"}".to_vec())
            .expect(400, "body"),
        row("Alertmanager: NUL in a label", "POST", am)
            .basic()
            .json(with_am("commonLabels", json!({"env": "pr\u{0}od"})))
            .expect(400, "commonLabels"),
        row("Alertmanager: nested 10 000 deep", "POST", am)
            .basic()
            .json(webhook_nested(10_000))
            .expect(400, "body"),
        row("Alertmanager: a 10 MB body", "POST", am)
            .basic()
            .json(huge.clone())
            .expect(413, "DING_CHANNEL_MAX_BODY"),
        row("Alertmanager: bad receiver", "POST", "/api/v1/alertmanager/al%20ice")
            .basic()
            .json(good_am.to_string())
            .expect(400, "receivers"),
        row("Alertmanager: traversal in the receivers", "POST", "/api/v1/alertmanager/../alice")
            .basic()
            .json(good_am.to_string())
            .raw()
            .expect(404, "nothing is served for POST /api/v1/alertmanager/../alice"),
        row("Alertmanager: GET", "GET", am).basic().not_allowed("POST"),
        row("Alertmanager: DELETE", "DELETE", am).not_allowed("POST"),
        row("Alertmanager by labels: PUT", "PUT", "/api/v1/alertmanager").not_allowed("POST"),
        row("Alertmanager by labels: GET /", "GET", "/api/v1/alertmanager/").not_allowed("POST"),
        // Grafana.
        row("Grafana: empty body", "POST", grafana)
            .basic()
            .json("")
            .expect(400, "body"),
        row("Grafana: alerts of the wrong type", "POST", grafana)
            .basic()
            .json(r#"{"version":"1","alerts":{"a":1},"status":"firing"}"#)
            .expect(400, "alerts"),
        row("Grafana: a 10 MB body", "POST", grafana)
            .basic()
            .json(huge)
            .expect(413, "DING_CHANNEL_MAX_BODY"),
        row("Grafana: GET", "GET", grafana).not_allowed("POST"),
        row("Grafana by labels: OPTIONS", "OPTIONS", "/api/v1/grafana").not_allowed("POST"),
        // Reload, health, unknown paths and methods.
        row("reload without credentials", "POST", "/-/reload").expect(401, "basic_auth"),
        row("reload by GET", "GET", "/-/reload").not_allowed("POST"),
        row("POST /healthz", "POST", "/healthz").not_allowed("GET, HEAD"),
        row("DELETE /readyz", "DELETE", "/readyz").not_allowed("GET, HEAD"),
        row("PUT /metrics", "PUT", "/metrics").not_allowed("GET, HEAD"),
        row("HEAD /healthz", "HEAD", "/healthz").expect(200, ""),
        row("HEAD /metrics", "HEAD", "/metrics").expect(200, ""),
        row("an unknown method on an unknown path", "DELETE", "/api/v3/everything")
            .expect(404, "nothing is served for DELETE /api/v3/everything"),
        row("an unknown path", "GET", "/api/v3/everything").expect(404, "/api/v3/everything"),
        row("an unknown path by traversal", "GET", "/healthz/../../etc/passwd")
            .raw()
            .expect(404, "/healthz/../../etc/passwd"),
        // X-Request-Id: replaced when it is not a short, printable ASCII token.
        row("a 10 KB request id", "GET", "/healthz").header("x-request-id", "r".repeat(10_000)).expect(200, "ok"),
        row("a non-ASCII request id", "GET", "/healthz")
            .header("x-request-id", "tr\u{e9}ce".as_bytes())
            .expect(200, "ok"),
        row("a request id with a tab and a space", "POST", ESB)
            .header("x-request-id", b"a\tb c".to_vec())
            .json(send(json!({"content": null})))
            .esb(200, 1306406, "content"),
        row("a request id of obs-text", "POST", ESB)
            .header("x-request-id", b"\x80\xff<script>".to_vec())
            .json(send(json!({"at_all": "maybe"})))
            .esb(200, 1306406, "at_all"),
    ]
}

/// What came back: status, the request id header and the body.
struct Answer {
    status: u16,
    request_id: Option<String>,
    allow: Option<String>,
    body: Vec<u8>,
}

async fn by_client(app: &TestApp, r: &Row) -> Answer {
    let method = reqwest::Method::from_bytes(r.method.as_bytes()).unwrap();
    let mut req = app
        .client
        .request(method, format!("{}{}", app.address, r.path))
        .body(r.body.clone());
    for (k, v) in &r.headers {
        req = req.header(*k, reqwest::header::HeaderValue::from_bytes(v).unwrap());
    }
    if r.basic {
        req = req.basic_auth(APP, Some(APP_SECRET));
    }
    let res = req.send().await.expect("answered, not reset");
    Answer {
        status: res.status().as_u16(),
        request_id: res
            .headers()
            .get("x-request-id")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        allow: res
            .headers()
            .get("allow")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        body: res.bytes().await.unwrap().to_vec(),
    }
}

async fn by_socket(app: &TestApp, r: &Row) -> Answer {
    let host = app.address.trim_start_matches("http://");
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        r.method,
        r.path,
        r.body.len()
    )
    .into_bytes();
    for (k, v) in &r.headers {
        head.extend_from_slice(format!("{k}: ").as_bytes());
        head.extend_from_slice(v);
        head.extend_from_slice(b"\r\n");
    }
    if r.basic {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{APP}:{APP_SECRET}"));
        head.extend_from_slice(format!("Authorization: Basic {b}\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(&r.body);
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(&head).await.unwrap();
    let mut raw = vec![];
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let request_id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .map(str::to_owned);
    let allow = head
        .lines()
        .find_map(|l| l.strip_prefix("allow: "))
        .map(str::to_owned);
    // Answers are small: chunked framing, if any, is left in and does not hide the words.
    Answer {
        status,
        request_id,
        allow,
        body: raw[split + 4..].to_vec(),
    }
}

/// What is wrong with `a` as the answer to `r`, if anything.
fn check(r: &Row, a: &Answer) -> Option<String> {
    let text = String::from_utf8_lossy(&a.body);
    let mut wrong = vec![];
    if a.status != r.status {
        wrong.push(format!("status {} (expected {})", a.status, r.status));
    }
    if a.allow.as_deref() != r.allow {
        wrong.push(format!("Allow {:?} (expected {:?})", a.allow, r.allow));
    }
    if a.status >= 500 {
        wrong.push("a server error".to_owned());
    }
    // Sane or replaced: never the caller's bytes when they are not a short printable token.
    let sane = |rid: &str| {
        !rid.is_empty() && rid.len() <= 128 && rid.bytes().all(|b| b.is_ascii_graphic())
    };
    if !a.request_id.as_deref().is_some_and(sane) {
        wrong.push(format!("request id {:?} is not sanitized", a.request_id));
    }
    if let Some(code) = r.code {
        match serde_json::from_slice::<Value>(&a.body) {
            Ok(env) => {
                if env["code"] != code {
                    wrong.push(format!("code {} (expected {code})", env["code"]));
                }
                if env["result"] != false {
                    wrong.push("result is not false".to_owned());
                }
                if env["request_id"].as_str() != a.request_id.as_deref() {
                    wrong.push("the envelope's request_id is not the header's".to_owned());
                }
                if !env["message"].as_str().unwrap_or("").contains(r.needle) {
                    wrong.push(format!("message lacks {:?}", r.needle));
                }
            }
            Err(_) if r.via.is_raw() && text.contains(r.needle) => {}
            Err(e) => wrong.push(format!("no envelope ({e})")),
        }
    } else if !text.contains(r.needle) {
        wrong.push(format!("answer lacks {:?}", r.needle));
    }
    if let Some(allow) = r.allow.filter(|_| r.method != "HEAD") {
        let path = r.path.split('?').next().unwrap_or_default();
        let error = serde_json::from_slice::<Value>(&a.body).map(|b| b["error"].clone());
        let named = format!("use {}", allow.replace(", ", " or "));
        if !error.as_ref().is_ok_and(|e| {
            e.as_str().is_some_and(|e| {
                e.starts_with("method: ") && e.contains(&named) && e.contains(path)
            })
        }) {
            wrong.push(format!(
                "the 405's error {error:?} names neither the method nor {named:?}"
            ));
        }
    }
    (!wrong.is_empty()).then(|| {
        let shown: String = text.chars().take(300).collect();
        format!("{}: {} — {shown}", r.name, wrong.join("; "))
    })
}

impl Via {
    fn is_raw(&self) -> bool {
        matches!(self, Via::Raw)
    }
}

#[tokio::test]
async fn hostile_requests_are_refused_naming_the_field_and_the_server_stays_healthy() {
    let app = TestApp::spawn().await;
    let rows = table();
    assert!(rows.len() >= 40, "{} rows", rows.len());
    let mut failures = vec![];
    for r in &rows {
        let answer = match r.via {
            Via::Client => by_client(&app, r).await,
            Via::Raw => by_socket(&app, r).await,
        };
        failures.extend(check(r, &answer));
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    let (status, health) = app.get("/healthz").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "alice", "content": "still here"}),
        )
        .await;
    assert_eq!(env["code"], 0, "{env}");
    app.drain().await;
    assert!(
        app.sim
            .state
            .messages()
            .iter()
            .any(|m| m.body.to_string().contains("still here")),
        "the valid send was delivered"
    );
    assert_eq!(app.sim.state.messages().len(), 1, "no hostile row was sent");
}
