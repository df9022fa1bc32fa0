//! Secrets, once more: the main flows of the real binary with known, distinctive secrets, and
//! none of them — whole or any 8-character piece — in its debug log (text or JSON), an HTTP
//! answer (body or headers), the CLI's output, `/metrics`, or the `Debug` of the settings and
//! the secret types.

use crate::alertmanager::{alert, notification};
use crate::helpers::*;
use ding_channel::domain::secrets::{AppSecret, BearerToken, RobotToken, SignSecret};
use ding_channel::simulator::{Faults, SimRobot, Simulator};
use serde_json::{json, Value};

const DING_SECRET: &str = "7CfQdagefkaznbUmpnM1bCUE";
const BK_SECRET: &str = "qK0CheTKjcmuAU5AXo97wI59";
const WRONG_SECRET: &str = "IK4O6x5PGeh7tUOV9MzRdNUw";
const ROBOT_TOKEN: &str = "Lq3vTz9WcR2mXk7BnY4sHd8JfG6pAe1U";
const ROBOT_SEC: &str = "SECuN5rK8wQ2zH7dM4xC9vB3tJ6yF1gL0pS";
const POOL_OWN_TOKEN: &str = "084815cdcd53e002276a2d567bd956394bb74e3f4639f838458b1395b805e925";
const POOL_TOKEN: &str = "Vg2Xr8Nq5Kt1Wz7Hc4Mb9Yd3Lf6Js0Pa";
const POOL_SEC: &str = "SECiW3oE7qA9sD1fG5hJ2kL8zX4cV6bN0mT";
/// Malformed values, refused — and no more to be echoed than a good one.
const BAD_CONF_SECRET: &str = "cCloBFdwx3 vw131RMfw9";
const BAD_ROBOT_TOKEN: &str = "n31l2MaFdt!8G1wd7GOWq";

const SECAPP: &str = "secapp";

/// Every 8-character piece of `secret`; 12 for one of hex digits only, which the log's own
/// random hex ids (request and message ids) could otherwise match by chance.
fn pieces(secret: &str) -> Vec<String> {
    let chars: Vec<char> = secret.chars().collect();
    let n = if chars.iter().all(char::is_ascii_hexdigit) {
        12
    } else {
        8
    };
    chars.windows(n).map(|w| w.iter().collect()).collect()
}

/// Fails naming the secret and where it showed if any piece of one is in `text`.
fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        for piece in pieces(secret) {
            assert!(
                !text.contains(&piece),
                "a piece ({piece}) of {secret} in {what}:\n{text}"
            );
        }
    }
}

/// A simulator whose app and robots have this file's secrets (random, so that no 8-character
/// piece of one is in any text by chance; the unsigned robot's token is hex, as DingTalk's are).
fn simulator() -> Simulator {
    let sim = real_time_simulator();
    sim.state.configure(|c| {
        c.apps[0].secret = DING_SECRET.into();
        for (name, token, secret) in [
            ("sec-robot", ROBOT_TOKEN, ROBOT_SEC),
            ("pool-1", POOL_TOKEN, POOL_SEC),
        ] {
            c.robots.push(SimRobot {
                name: name.into(),
                token: token.into(),
                secret: Some(secret.into()),
                keyword: None,
            });
        }
    });
    sim
}

/// What a person or a program reads of an answer: its status, headers and body.
async fn answer(res: reqwest::Response) -> (u16, Value, String) {
    let status = res.status().as_u16();
    let headers = format!("{:?}", res.headers());
    let body = res.text().await.unwrap();
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, json, format!("{status} {headers}\n{body}\n"))
}

/// The main flows against the real binary logging at debug in `format`; answers everything
/// they printed, logged and answered, and the secrets they used (the bearer token is made
/// by `apps token`).
async fn run_flows(format: &str) -> (String, Vec<String>) {
    let db = TestDb::new();
    let sim = simulator();
    let manifest = repo_manifest();
    let server = serve(
        &db.url,
        &sim.base_url(),
        &[
            ("DING_CHANNEL_LOG", "debug"),
            ("DING_CHANNEL_LOG_FORMAT", format),
        ],
    );
    let mut seen = String::new();
    let run = |seen: &mut String, args: &[&str], ok: bool| {
        let env = [
            ("DING_CHANNEL_LOG", "debug"),
            ("DING_CHANNEL_LOG_FORMAT", format),
        ];
        let o = cli(&db.url, &manifest, args, &env);
        assert_eq!(o.status.success(), ok, "{args:?}: {}", stderr(&o));
        let out = stdout(&o);
        *seen += &out;
        *seen += &stderr(&o);
        out
    };

    run(
        &mut seen,
        &["apps", "add", SECAPP, "--secret", BK_SECRET],
        true,
    );
    // The one output that shows a secret, by design: the new token, once.
    let made = cli(&db.url, &manifest, &["apps", "token", SECAPP], &[]);
    let token = stdout(&made)
        .lines()
        .find_map(|l| l.split("store it now): ").nth(1))
        .expect("the token is printed once")
        .trim()
        .to_owned();
    assert!(BearerToken::parse(&token).is_some(), "{token}");
    let wrong_token = format!("dct_{}", "7".repeat(64));
    run(
        &mut seen,
        &[
            "channels",
            "conf",
            "send_dingtalk",
            "ding_app_key=dingsandboxappkey",
            &format!("ding_app_secret={DING_SECRET}"),
            "ding_robot_code=dingsandboxappkey",
        ],
        true,
    );
    let users = db.dir.path().join("users.jsonl");
    let rows = [
        json!({"username": "alice", "telephone": "13800000001"}),
        json!({"username": "sec-robot", "qq": ROBOT_TOKEN, "wx_userid": ROBOT_SEC}),
        json!({"username": "pool-robot", "qq": POOL_OWN_TOKEN,
            "extras": {"robots": [{"token": POOL_TOKEN, "secret": POOL_SEC}]}}),
    ];
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&users, text).unwrap();
    run(
        &mut seen,
        &["users", "import", users.to_str().unwrap()],
        true,
    );

    let client = reqwest::Client::new();
    let base = server.url.clone();
    let root = base.trim_end_matches("/api/c/compapi/cmsi").to_owned();
    let creds = json!({"bk_app_code": SECAPP, "bk_app_secret": BK_SECRET});
    let with_creds = |mut body: Value| {
        body["bk_app_code"] = creds["bk_app_code"].clone();
        body["bk_app_secret"] = creds["bk_app_secret"].clone();
        body
    };
    let mut message_ids = vec![];

    // ESB send_msg to a person and a robot.
    let res = client
        .post(format!("{base}/send_msg/"))
        .json(&with_creds(json!({"msg_type": "ding",
            "receiver__username": "alice,sec-robot", "title": "t", "content": "disk full"})))
        .send()
        .await
        .unwrap();
    let (status, env, shown) = answer(res).await;
    seen += &shown;
    assert_eq!((status, &env["code"]), (200, &json!(0)), "{env}");
    let statuses: Vec<&str> = env["data"]["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["sent", "sent"], "{env}");
    message_ids.push(env["data"]["message_id"].as_str().unwrap().to_owned());

    // A pool robot: its own token is unknown to DingTalk, its member signs.
    let res = client
        .post(format!("{base}/send_dingbot/"))
        .json(&with_creds(
            json!({"receiver__username": "pool-robot", "content": "cpu high"}),
        ))
        .send()
        .await
        .unwrap();
    let (_, env, shown) = answer(res).await;
    seen += &shown;
    assert_eq!(env["data"]["deliveries"][0]["status"], "sent", "{env}");
    message_ids.push(env["data"]["message_id"].as_str().unwrap().to_owned());

    // A robot DingTalk refuses (its security check).
    sim.state
        .set_faults(Faults::errcode(310000, &["robot_send"]).times(1));
    let res = client
        .post(format!("{base}/send_dingbot/"))
        .json(&with_creds(
            json!({"receiver__username": "sec-robot", "content": "refused"}),
        ))
        .send()
        .await
        .unwrap();
    let (_, env, shown) = answer(res).await;
    seen += &shown;
    assert_eq!(
        (&env["result"], &env["data"]["deliveries"][0]["status"]),
        (&json!(false), &json!("failed")),
        "{env}"
    );
    if let Some(id) = env["data"]["message_id"].as_str() {
        message_ids.push(id.to_owned());
    }

    // Wrong credentials, in the query, the header and the body.
    for req in [
        client.get(format!(
            "{base}/send_msg/?bk_app_code={SECAPP}&bk_app_secret={WRONG_SECRET}&msg_type=ding&receiver__username=alice&content=x"
        )),
        client.post(format!("{base}/get_msg_type/")).header(
            "X-Bkapi-Authorization",
            format!(r#"{{"bk_app_code":"{SECAPP}","bk_app_secret":"{WRONG_SECRET}"}}"#),
        ),
        client
            .post(format!("{base}/send_msg/"))
            .json(&json!({"bk_app_code": SECAPP, "bk_app_secret": WRONG_SECRET,
                "msg_type": "ding", "receiver__username": "alice", "content": "x"})),
    ] {
        let (status, env, shown) = answer(req.send().await.unwrap()).await;
        seen += &shown;
        assert_eq!((status, &env["code"]), (200, &json!(1306401)), "{env}");
    }

    // Alertmanager: basic auth, the bearer token, and wrong ones of both.
    let body = notification("firing", vec![alert("firing", "a1", "host-1")]);
    let hook = format!("{root}/api/v1/alertmanager/sec-robot");
    for (req, expected) in [
        (client.post(&hook).basic_auth(SECAPP, Some(BK_SECRET)), 200),
        (client.post(&hook).bearer_auth(&token), 200),
        (client.post(&hook).bearer_auth(&wrong_token), 401),
        (client.post(&hook).bearer_auth(WRONG_SECRET), 401),
        (
            client.post(&hook).basic_auth(SECAPP, Some(WRONG_SECRET)),
            401,
        ),
    ] {
        let (status, _, shown) = answer(req.json(&body).send().await.unwrap()).await;
        seen += &shown;
        assert_eq!(status, expected, "{shown}");
    }
    let (_, _, shown) = answer(client.get(format!("{root}/metrics")).send().await.unwrap()).await;
    assert!(shown.contains("# TYPE"), "{shown}");
    seen += &shown;

    // Malformed secrets are refused without being quoted.
    run(
        &mut seen,
        &[
            "channels",
            "conf",
            "send_dingtalk",
            &format!("ding_app_secret={BAD_CONF_SECRET}"),
        ],
        false,
    );
    assert!(
        seen.contains("send_dingtalk ding_app_secret: the value contains spaces"),
        "{seen}"
    );
    // A pool member's malformed token is refused at import; a robot user's own is taken,
    // and reported when a message is sent to it.
    let bad = db.dir.path().join("bad.jsonl");
    let row = json!({"username": "pool-robot", "qq": POOL_OWN_TOKEN,
        "extras": {"robots": [{"token": BAD_ROBOT_TOKEN, "secret": POOL_SEC}]}});
    std::fs::write(&bad, format!("{row}\n")).unwrap();
    run(
        &mut seen,
        &["users", "import", bad.to_str().unwrap()],
        false,
    );
    let row = json!({"username": "bad-robot", "qq": BAD_ROBOT_TOKEN, "wx_userid": ROBOT_SEC});
    std::fs::write(&bad, format!("{row}\n")).unwrap();
    run(&mut seen, &["users", "import", bad.to_str().unwrap()], true);
    let res = client
        .post(format!("{base}/send_dingbot/"))
        .json(&with_creds(
            json!({"receiver__username": "bad-robot", "content": "typo"}),
        ))
        .send()
        .await
        .unwrap();
    let (_, env, shown) = answer(res).await;
    seen += &shown;
    let error = env["data"]["deliveries"][0]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("malformed robot token in field qq"), "{env}");
    run(&mut seen, &["users", "show", "bad-robot"], true);

    let tmpl = db.dir.path().join("t.tmpl");
    std::fs::write(&tmpl, "{{ title }}\n{{ content }}\n").unwrap();
    run(
        &mut seen,
        &[
            "templates",
            "set",
            "plain",
            "--file",
            tmpl.to_str().unwrap(),
        ],
        true,
    );
    run(&mut seen, &["templates", "show", "plain"], true);
    for args in [
        &["apps", "list"][..],
        &["apps", "show", SECAPP],
        &["channels", "list"],
        &["users", "list"],
        &["users", "show", "sec-robot"],
        &["users", "show", "pool-robot"],
    ] {
        run(&mut seen, args, true);
    }
    for id in &message_ids {
        run(&mut seen, &["deliveries", "show", id], true);
    }
    // The CLI showed the robots, masked: what is checked is what a person reads.
    for token in [ROBOT_TOKEN, POOL_TOKEN] {
        let masked = RobotToken::parse(token).unwrap().masked();
        assert!(seen.contains(&masked), "{masked} not shown:\n{seen}");
    }
    seen += &server.stop();
    (seen, vec![token, wrong_token])
}

fn all_secrets(made: &[String]) -> Vec<&str> {
    let mut secrets = vec![
        DING_SECRET,
        BK_SECRET,
        WRONG_SECRET,
        ROBOT_TOKEN,
        ROBOT_SEC,
        POOL_OWN_TOKEN,
        POOL_TOKEN,
        POOL_SEC,
        BAD_CONF_SECRET,
        BAD_ROBOT_TOKEN,
    ];
    // The `dct_` prefix is no secret: only the token's random part is checked.
    secrets.extend(made.iter().map(|t| &t[4..]));
    secrets
}

#[tokio::test]
async fn no_secret_in_the_text_log_answers_cli_output_or_metrics() {
    let (seen, made) = run_flows("text").await;
    assert!(seen.contains("request done"), "{seen}");
    assert_no_secret("the text-format run", &seen, &all_secrets(&made));
}

#[tokio::test]
async fn no_secret_in_the_json_log_answers_cli_output_or_metrics() {
    let (seen, made) = run_flows("json").await;
    assert!(seen.contains(r#""message":"request done""#), "{seen}");
    assert_no_secret("the JSON-format run", &seen, &all_secrets(&made));
}

#[test]
fn the_settings_and_secret_types_debug_masked() {
    let db = TestDb::new();
    let settings = settings(
        &db.url,
        &repo_manifest(),
        &[
            ("DING_CHANNEL_BKUSER_URL", "http://127.0.0.1:9"),
            ("DING_CHANNEL_BKUSER_APP_CODE", SECAPP),
            ("DING_CHANNEL_BKUSER_APP_SECRET", BK_SECRET),
        ],
    );
    let bearer = BearerToken::generate();
    let shown = format!(
        "{settings:?}\n{settings:#?}\n{:?} {:?} {:?} {bearer:?}",
        AppSecret::new(DING_SECRET),
        RobotToken::parse(ROBOT_TOKEN).unwrap(),
        SignSecret::parse(ROBOT_SEC).unwrap(),
    );
    assert!(shown.contains("AppSecret(qK****59)"), "{shown}");
    assert_no_secret(
        "Debug output",
        &shown,
        &[
            BK_SECRET,
            DING_SECRET,
            ROBOT_TOKEN,
            ROBOT_SEC,
            &bearer.expose()[4..],
        ],
    );
}
