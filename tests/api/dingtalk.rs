//! The DingTalk client against the strict simulator.

use ding_channel::clock::{ManualClock, SharedClock};
use ding_channel::dingtalk::message::{Button, Buttons, FeedLink};
use ding_channel::dingtalk::{
    App, At, ClientConfig, DingTalk, Message, MobileLookup, Robot, UserOutcome,
};
use ding_channel::domain::secrets::{AppSecret, RobotToken, SignSecret};
use ding_channel::simulator::{demo_config, Faults, SimConfig, SimRobot, SimUser, Simulator};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

const NOW: i64 = 1_700_000_000_000;

struct Fixture {
    sim: Simulator,
    client: Arc<DingTalk>,
    clock: Arc<ManualClock>,
    app: App,
}

fn config(base: &str, proxy: Option<&str>) -> ClientConfig {
    ClientConfig {
        oapi_base: base.parse().unwrap(),
        api_base: base.parse().unwrap(),
        proxy: proxy.map(|p| p.parse().unwrap()),
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
    }
}

async fn fixture_with(cfg: SimConfig) -> Fixture {
    let clock = ManualClock::new(NOW);
    let shared: SharedClock = clock.clone();
    let sim = Simulator::start(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        cfg,
        shared.clone(),
    )
    .unwrap();
    let client = Arc::new(DingTalk::new(config(&sim.base_url(), None), shared).unwrap());
    let a = &sim.state.config().apps[0];
    let app = App {
        key: a.key.clone(),
        secret: AppSecret::new(a.secret.clone()),
        robot_code: a.robot_code.clone(),
    };
    Fixture {
        sim,
        client,
        clock,
        app,
    }
}

async fn fixture() -> Fixture {
    let mut cfg = demo_config();
    cfg.users.extend((0..45).map(|i| SimUser {
        mobile: format!("1390000{i:04}"),
        userid: format!("u{i}"),
    }));
    cfg.robots.push(SimRobot {
        name: "plain-robot".into(),
        token: "b".repeat(64),
        secret: None,
        keyword: None,
    });
    fixture_with(cfg).await
}

fn robot(f: &Fixture, name: &str) -> Robot {
    let r = f
        .sim
        .state
        .config()
        .robots
        .into_iter()
        .find(|r| r.name == name)
        .unwrap();
    Robot {
        name: r.name,
        token: RobotToken::parse(&r.token).unwrap(),
        secret: r.secret.map(|s| SignSecret::parse(&s).unwrap()),
        token_field: "qq".into(),
        sign_field: "wx_userid".into(),
    }
}

fn text(s: &str) -> Message {
    Message::Text { content: s.into() }
}

#[tokio::test]
async fn a_cold_cache_makes_exactly_one_token_request_for_100_concurrent_sends() {
    let f = fixture().await;
    let sends = (0..100).map(|i| {
        let (client, app) = (f.client.clone(), f.app.clone());
        tokio::spawn(async move {
            client
                .batch_send(&app, &[format!("u{}", i % 45)], &text("hi"))
                .await
        })
    });
    for s in sends {
        let outcome = s.await.unwrap().unwrap();
        assert!(
            matches!(outcome[0].1, UserOutcome::Sent { .. }),
            "{outcome:?}"
        );
    }
    let stats = f.sim.state.stats();
    assert_eq!(stats.tokens_issued, 1);
    assert_eq!(stats.requests["batch_send"], 100);
}

#[tokio::test]
async fn tokens_are_refreshed_before_expiry_and_after_dingtalk_drops_them() {
    let f = fixture().await;
    f.client
        .batch_send(&f.app, &["u1".into()], &text("1"))
        .await
        .unwrap();
    // 7200 s tokens are refreshed 5 minutes early.
    f.clock.advance_ms((7200 - 301) * 1000);
    f.client
        .batch_send(&f.app, &["u1".into()], &text("2"))
        .await
        .unwrap();
    assert_eq!(f.sim.state.stats().tokens_issued, 1);
    f.clock.advance_ms(2000);
    f.client
        .batch_send(&f.app, &["u1".into()], &text("3"))
        .await
        .unwrap();
    assert_eq!(f.sim.state.stats().tokens_issued, 2);

    // DingTalk invalidates the token mid-run: oapi answers 88/40014, refresh, retried once.
    f.sim.state.set_faults(Faults {
        expire_tokens: true,
        ..Faults::default()
    });
    assert_eq!(
        f.client.get_by_mobile(&f.app, "13800000002").await,
        MobileLookup::Found("bob-ding".into())
    );
    assert_eq!(f.sim.state.stats().refusals["getbymobile:88"], 1);
    assert_eq!(f.sim.state.stats().tokens_issued, 3);

    // The new API answers 401: one refresh, the call retried once.
    f.sim.state.set_faults(Faults {
        expire_tokens: true,
        ..Faults::default()
    });
    let out = f
        .client
        .batch_send(&f.app, &["u1".into()], &text("4"))
        .await
        .unwrap();
    assert!(matches!(out[0].1, UserOutcome::Sent { .. }), "{out:?}");
    let lookup = f.client.get_by_mobile(&f.app, "13800000001").await;
    assert_eq!(lookup, MobileLookup::Found("alice-ding".into()));
    let stats = f.sim.state.stats();
    assert_eq!(stats.tokens_issued, 4);
    assert_eq!(stats.refusals["batch_send:401"], 1);
    assert_eq!(f.sim.state.messages().len(), 4);
}

#[tokio::test]
async fn bad_app_credentials_are_permanent_and_say_where_to_fix_them() {
    let f = fixture().await;
    let app = App {
        secret: AppSecret::new("wrong"),
        ..f.app.clone()
    };
    let out = f
        .client
        .batch_send(&app, &["u1".into()], &text("x"))
        .await
        .unwrap();
    let UserOutcome::Failed(e) = &out[0].1 else {
        panic!("{out:?}")
    };
    assert!(!e.is_retryable());
    assert_eq!(e.code, "invalidClientIdOrSecret");
    assert!(
        e.to_string()
            .contains("check ding_app_key and ding_app_secret"),
        "{e}"
    );
    assert!(!e.to_string().contains("wrong"), "secret in error: {e}");
}

#[tokio::test]
async fn forty_five_users_go_out_in_three_calls_with_per_user_outcomes() {
    let f = fixture().await;
    let mut ids: Vec<String> = (0..43).map(|i| format!("u{i}")).collect();
    ids.push("ghost-1".into());
    ids.push("ghost-2".into());
    f.sim.state.set_faults(Faults {
        flow_controlled: vec!["u7".into(), "u30".into()],
        ..Faults::default()
    });
    let out = f
        .client
        .batch_send(
            &f.app,
            &ids,
            &Message::Markdown {
                title: "T".into(),
                text: "# x".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(f.sim.state.stats().requests["batch_send"], 3);
    assert_eq!(
        out.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        ids,
        "input order kept"
    );
    let count = |pred: fn(&UserOutcome) -> bool| out.iter().filter(|(_, o)| pred(o)).count();
    assert_eq!(count(|o| matches!(o, UserOutcome::Sent { .. })), 41);
    assert_eq!(count(|o| matches!(o, UserOutcome::Invalid)), 2);
    assert_eq!(count(|o| matches!(o, UserOutcome::FlowControlled)), 2);
    assert_eq!(out[7].1, UserOutcome::FlowControlled);
    assert_eq!(out[44].1, UserOutcome::Invalid);
    let delivered: usize = f
        .sim
        .state
        .messages()
        .iter()
        .map(|m| m.user_ids.len())
        .sum();
    assert_eq!(delivered, 41);
    let m = &f.sim.state.messages()[0];
    assert_eq!(m.body["msgKey"], "sampleMarkdown");
    assert_eq!(m.body["msgParam"]["text"], "# x");
}

#[tokio::test]
async fn every_webhook_type_is_accepted_by_the_strict_simulator() {
    let f = fixture().await;
    let signed = robot(&f, "ops-robot");
    let at = At {
        mobiles: vec!["13800000001".into()],
        user_ids: vec![],
        all: false,
    };
    let messages = [
        text("disk full"),
        Message::Markdown {
            title: "Disk".into(),
            text: "## host-1\n> 95%".into(),
        },
        Message::Link {
            title: "T".into(),
            text: "x".into(),
            message_url: "https://example.com/1".into(),
            pic_url: None,
        },
        Message::ActionCard {
            title: "Approve".into(),
            text: "ticket 42".into(),
            buttons: Buttons::Single {
                title: "Open".into(),
                url: "https://example.com/42".into(),
            },
        },
        Message::ActionCard {
            title: "Approve".into(),
            text: "ticket 43".into(),
            buttons: Buttons::Multi {
                buttons: vec![
                    Button {
                        title: "Yes".into(),
                        url: "https://e/y".into(),
                    },
                    Button {
                        title: "No".into(),
                        url: "https://e/n".into(),
                    },
                ],
                horizontal: true,
            },
        },
        Message::FeedCard {
            links: vec![FeedLink {
                title: "a".into(),
                message_url: "https://e/a".into(),
                pic_url: "https://e/a.png".into(),
            }],
        },
    ];
    for m in &messages {
        f.client
            .send_webhook(&signed, m, &at)
            .await
            .unwrap_or_else(|e| panic!("{} refused: {e}", m.kind()));
    }
    f.client
        .send_webhook(&robot(&f, "plain-robot"), &text("unsigned"), &At::default())
        .await
        .unwrap();
    let got = f.sim.state.messages();
    assert_eq!(got.len(), 7);
    assert_eq!(got[0].body["text"]["content"], "disk full @13800000001");
    assert_eq!(got[0].body["at"]["atMobiles"][0], "13800000001");
    assert_eq!(got[5].body["msgtype"], "feedCard");
    assert_eq!(got[6].target, "plain-robot");
}

#[tokio::test]
async fn signing_and_token_problems_are_permanent_and_name_the_profile_field() {
    let f = fixture().await;
    let mut bad = robot(&f, "ops-robot");
    bad.secret = Some(SignSecret::parse("SECwrongwrongwrong00").unwrap());
    let e = f
        .client
        .send_webhook(&bad, &text("x"), &At::default())
        .await
        .unwrap_err();
    assert!(!e.is_retryable());
    assert_eq!(e.code, "310000");
    assert!(
        e.to_string()
            .contains("check the SEC secret stored in field wx_userid of user ops-robot"),
        "{e}"
    );
    assert!(!e.to_string().contains("SECwrong"));

    let mut unknown = robot(&f, "ops-robot");
    unknown.token = RobotToken::parse(&"c".repeat(64)).unwrap();
    let e = f
        .client
        .send_webhook(&unknown, &text("x"), &At::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, "300001");
    assert!(
        e.to_string().contains("check field qq of user ops-robot"),
        "{e}"
    );

    // A server clock more than an hour off DingTalk's: the signature's timestamp is refused.
    let skewed = DingTalk::new(
        config(&f.sim.base_url(), None),
        ManualClock::new(NOW - 3_601_000),
    )
    .unwrap();
    let e = skewed
        .send_webhook(&robot(&f, "ops-robot"), &text("x"), &At::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, "310000");
    assert!(e.message.contains("签名过期"), "DingTalk's words: {e}");
    assert!(e.explanation.contains("clock is over an hour off"), "{e}");
    let e = f
        .client
        .send_webhook(
            &robot(&f, "ops-robot"),
            &Message::Image {
                photo_url: "https://e/i.png".into(),
            },
            &At::default(),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("custom robots take no image messages"),
        "{e}"
    );

    let huge = text(&"字".repeat(7000));
    let e = f
        .client
        .send_webhook(&robot(&f, "ops-robot"), &huge, &At::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, "body_too_large");
    assert_eq!(
        f.sim.state.stats().requests.get("robot_send"),
        Some(&3),
        "oversize bodies are not sent"
    );
}

#[tokio::test]
async fn the_robot_throttle_answer_is_retryable() {
    let mut cfg = demo_config();
    cfg.throttle_limit = 2;
    let f = fixture_with(cfg).await;
    let r = robot(&f, "ops-robot");
    f.client
        .send_webhook(&r, &text("1"), &At::default())
        .await
        .unwrap();
    f.client
        .send_webhook(&r, &text("2"), &At::default())
        .await
        .unwrap();
    let e = f
        .client
        .send_webhook(&r, &text("3"), &At::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, "410100");
    assert!(e.is_retryable());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(600)));
    assert!(e.is_throttle());
    assert_eq!(f.sim.state.stats().throttled, 1);
}

#[tokio::test]
async fn injected_faults_become_retryable_errors_until_they_heal() {
    let f = fixture().await;
    let r = robot(&f, "ops-robot");
    f.sim.state.set_faults(Faults::http(503, &[]).times(2));
    for _ in 0..2 {
        let e = f
            .client
            .send_webhook(&r, &text("x"), &At::default())
            .await
            .unwrap_err();
        assert!(e.is_retryable(), "{e}");
    }
    f.client
        .send_webhook(&r, &text("healed"), &At::default())
        .await
        .unwrap();

    f.sim.state.set_faults(Faults::errcode(-1, &["robot_send"]));
    let e = f
        .client
        .send_webhook(&r, &text("x"), &At::default())
        .await
        .unwrap_err();
    assert_eq!((e.code.as_str(), e.is_retryable()), ("-1", true));

    f.sim.state.set_faults(Faults::http(500, &["batch_send"]));
    let out = f
        .client
        .batch_send(&f.app, &["u1".into()], &text("x"))
        .await
        .unwrap();
    let UserOutcome::Failed(e) = &out[0].1 else {
        panic!("{out:?}")
    };
    assert!(e.is_retryable());
}

#[tokio::test]
async fn lost_answers_are_retryable_and_the_simulator_marks_what_they_delivered() {
    use ding_channel::simulator::LostAnswer;
    let mut f = fixture().await;
    // A client that gives up long before the simulator answers a "timeout".
    let mut short = config(&f.sim.base_url(), None);
    short.timeout = Duration::from_millis(300);
    f.client = Arc::new(DingTalk::new(short, f.clock.clone()).unwrap());
    let r = robot(&f, "ops-robot");
    let cases = [
        ("drop_before_rate", None, "network"),
        ("drop_after_rate", Some(LostAnswer::Dropped), "network"),
        ("timeout_rate", Some(LostAnswer::Timeout), "timeout"),
    ];
    for (rate, lost, code) in cases {
        f.sim.state.reset();
        let faults =
            serde_json::json!({rate: 1.0, "timeout_ms": 3000, "apis": ["robot_send"], "count": 1});
        f.sim
            .state
            .set_faults(serde_json::from_value(faults).unwrap());
        let e = f
            .client
            .send_webhook(&r, &text(rate), &At::default())
            .await
            .unwrap_err();
        assert!(e.is_retryable(), "{rate}: {e}");
        assert_eq!(e.code, code, "{rate}: {e}");
        let got: Vec<_> = f
            .sim
            .state
            .messages()
            .iter()
            .map(|m| m.lost_answer)
            .collect();
        let want = match lost {
            Some(how) => vec![Some(how)],
            None => vec![],
        };
        assert_eq!(got, want, "{rate}: what DingTalk carried out");
        // The fault healed: the same call goes through, answered.
        f.client
            .send_webhook(&r, &text(rate), &At::default())
            .await
            .unwrap();
        let last = f.sim.state.messages().pop().unwrap();
        assert_eq!(last.lost_answer, None);
        assert_eq!(f.sim.state.stats().faults[&rate.replace("_rate", "")], 1);
    }

    // batchSend's people: a dropped answer is a retryable outcome per person.
    f.sim.state.reset();
    f.sim.state.set_faults(Faults {
        drop_after_rate: 1.0,
        ..Faults::default()
    });
    let out = f
        .client
        .batch_send(&f.app, &["u1".into(), "u2".into()], &text("x"))
        .await
        .unwrap();
    assert!(
        out.iter()
            .all(|(_, o)| matches!(o, UserOutcome::Failed(e) if e.is_retryable())),
        "{out:?}"
    );
}

#[tokio::test]
async fn fault_rates_take_their_shares_of_the_requests() {
    let f = fixture().await;
    f.sim.state.set_faults(Faults {
        error_rate: 0.2,
        drop_before_rate: 0.1,
        drop_after_rate: 0.1,
        http_status: Some(503),
        apis: vec!["batch_send".into()],
        ..Faults::default()
    });
    let mut failed = 0;
    for i in 0..400 {
        let out = f
            .client
            .batch_send(&f.app, &["u1".into()], &text(&i.to_string()))
            .await
            .unwrap();
        failed += usize::from(matches!(out[0].1, UserOutcome::Failed(_)));
    }
    let stats = f.sim.state.stats();
    let share = |k: &str| stats.faults.get(k).copied().unwrap_or(0) as f64 / 400.0;
    for (kind, rate) in [("error", 0.2), ("drop_before", 0.1), ("drop_after", 0.1)] {
        assert!((share(kind) - rate).abs() < 0.06, "{kind}: {stats:?}");
    }
    assert_eq!(failed as u64, stats.faults_injected);
    // What was dropped after it was carried out arrived, marked; the rest arrived answered.
    let msgs = f.sim.state.messages();
    let lost = msgs.iter().filter(|m| m.lost_answer.is_some()).count();
    assert_eq!(lost as u64, stats.faults["drop_after"]);
    assert_eq!(
        msgs.len() as u64,
        400 - stats.faults["error"] - stats.faults["drop_before"]
    );
}

#[tokio::test]
async fn getbymobile_outcomes_are_typed() {
    let f = fixture().await;
    assert_eq!(
        f.client.get_by_mobile(&f.app, "13800000002").await,
        MobileLookup::Found("bob-ding".into())
    );
    assert_eq!(
        f.client.get_by_mobile(&f.app, "13700000000").await,
        MobileLookup::NotFound
    );
    for (code, want) in [
        (60011, "NoPermission"),
        (60020, "IpNotWhitelisted"),
        (90018, "Transient"),
    ] {
        f.sim
            .state
            .set_faults(Faults::errcode(code, &["getbymobile"]));
        let got = f.client.get_by_mobile(&f.app, "13800000002").await;
        assert!(format!("{got:?}").starts_with(want), "{code}: {got:?}");
    }
    // Nothing listening: a transient network failure.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let client = DingTalk::new(
        config(&format!("http://127.0.0.1:{port}"), None),
        f.clock.clone(),
    )
    .unwrap();
    let got = client.get_by_mobile(&f.app, "13800000002").await;
    let MobileLookup::Transient(e) = got else {
        panic!("{got:?}")
    };
    assert_eq!(e.code, "network");
}

/// A one-shot HTTP peer on loopback: records the request head, answers `response`.
fn one_shot(response: &'static str) -> (String, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = String::new();
        let mut content_length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
            head += &line;
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body).unwrap();
        write!(stream, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{response}", response.len()).unwrap();
        head
    });
    (url, handle)
}

#[tokio::test]
async fn the_proxy_setting_is_honoured() {
    let f = fixture().await;
    let (proxy, seen) = one_shot(r#"{"errcode":0,"errmsg":"ok"}"#);
    let client = DingTalk::new(
        config("http://oapi.dingtalk.invalid", Some(&proxy)),
        f.clock.clone(),
    )
    .unwrap();
    client
        .send_webhook(
            &robot(&f, "plain-robot"),
            &text("via proxy"),
            &At::default(),
        )
        .await
        .unwrap();
    let head = seen.join().unwrap();
    assert!(
        head.starts_with("POST http://oapi.dingtalk.invalid/robot/send?access_token="),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("user-agent: ding-channel/"),
        "{head}"
    );
}

#[tokio::test]
async fn a_non_json_answer_is_an_error_never_a_success() {
    let f = fixture().await;
    let (url, _seen) = one_shot("Bad Gateway");
    let client = DingTalk::new(config(&url, None), f.clock.clone()).unwrap();
    let e = client
        .send_webhook(&robot(&f, "plain-robot"), &text("x"), &At::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, "http_200");
    assert!(e.to_string().contains("not the documented JSON"), "{e}");
}

#[tokio::test]
async fn the_gateways_answers_hold_every_call_of_the_client_for_their_wait() {
    use ding_channel::clock::Clock;
    use ding_channel::dingtalk::error::Kind;
    use ding_channel::simulator::Impolite;
    let f = fixture().await;
    f.sim
        .state
        .set_faults(Faults::impolite(Impolite::AntiAbuse { wait_s: 5 }, &["batch_send"]).times(1));
    let out = f
        .client
        .batch_send(&f.app, &["u1".into()], &text("1"))
        .await
        .unwrap();
    let UserOutcome::Failed(e) = &out[0].1 else {
        panic!("{out:?}")
    };
    assert_eq!((e.kind, e.code.as_str()), (Kind::AntiAbuse, "1111"));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
    // The robot's webhook is held too, without a request.
    let e = f
        .client
        .send_webhook(&robot(&f, "ops-robot"), &text("x"), &At::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind, Kind::AntiAbuse);
    assert!(!f.sim.state.stats().requests.contains_key("robot_send"));
    f.clock.advance_ms(5_000);
    f.client
        .send_webhook(&robot(&f, "ops-robot"), &text("x"), &At::default())
        .await
        .unwrap();

    // An HTML page as the gateway refuses: a minute's pause.
    f.sim.state.set_faults(Faults {
        http_status: Some(405),
        ..Faults::impolite(Impolite::Html, &["robot_send"]).times(1)
    });
    let e = f
        .client
        .send_webhook(&robot(&f, "ops-robot"), &text("y"), &At::default())
        .await
        .unwrap_err();
    assert_eq!((e.kind, e.code.as_str()), (Kind::AntiAbuse, "html_405"));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(60)));
    assert!(f
        .client
        .egress()
        .held(
            ding_channel::dingtalk::error::Api::Token,
            f.clock.now_ms() + 59_999
        )
        .is_some());
}

#[tokio::test]
async fn an_html_error_page_or_a_proxys_login_is_no_pause() {
    use ding_channel::dingtalk::error::{Api, Kind};
    use ding_channel::simulator::Impolite;
    let f = fixture().await;
    let page = |status| Faults {
        http_status: Some(status),
        ..Faults::impolite(Impolite::Html, &["robot_send"]).times(1)
    };
    let robot = robot(&f, "ops-robot");
    // An outage's error page: retried like any answer that is not DingTalk's JSON.
    f.sim.state.set_faults(page(502));
    let e = f
        .client
        .send_webhook(&robot, &text("x"), &At::default())
        .await
        .unwrap_err();
    assert_eq!((e.kind, e.code.as_str()), (Kind::Busy, "http_502"));
    assert!(
        e.to_string().contains("a proxy or gateway error page?"),
        "{e}"
    );
    // A proxy asking for credentials: the setting to fix.
    f.sim.state.set_faults(page(407));
    let e = f
        .client
        .send_webhook(&robot, &text("x"), &At::default())
        .await
        .unwrap_err();
    assert_eq!((e.kind, e.code.as_str()), (Kind::Transport, "html_407"));
    assert!(e.to_string().contains("DINGTALK_PROXY"), "{e}");
    let now = ding_channel::clock::Clock::now_ms(&*f.clock);
    assert!(
        f.client.egress().held(Api::Token, now).is_none(),
        "no pause"
    );
    f.client
        .send_webhook(&robot, &text("x"), &At::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_simulator_is_observable_and_controllable_over_http() {
    let f = fixture().await;
    f.client
        .send_webhook(&robot(&f, "ops-robot"), &text("hello"), &At::default())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let base = f.sim.base_url();
    let msgs: serde_json::Value = http
        .get(format!("{base}/_sim/messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(msgs[0]["body"]["text"]["content"], "hello");
    assert_eq!(msgs[0]["target"], "ops-robot");
    assert!(
        !msgs
            .to_string()
            .contains(robot(&f, "ops-robot").token.expose()),
        "robot token exposed"
    );
    let stats: serde_json::Value = http
        .get(format!("{base}/_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["messages"], 1);
    let set = http
        .post(format!("{base}/_sim/faults"))
        .json(&serde_json::json!({"error_rate": 1.0, "errcode": 410100, "count": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let e = f
        .client
        .send_webhook(&robot(&f, "ops-robot"), &text("x"), &At::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, "410100");
    let bad = http
        .post(format!("{base}/_sim/faults"))
        .json(&serde_json::json!({"eror_rate": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400, "unknown fault keys are refused");
    for (faults, needle) in [
        (
            serde_json::json!({"timeout_rate": 0.1}),
            "timeout_rate needs timeout_ms",
        ),
        (
            serde_json::json!({"error_rate": 0.6, "drop_after_rate": 0.6}),
            "add up to 1.2",
        ),
        (
            serde_json::json!({"drop_before_rate": -0.1}),
            "drop_before_rate is -0.1",
        ),
    ] {
        let refused = http
            .post(format!("{base}/_sim/faults"))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400, "{faults}");
        let why: serde_json::Value = refused.json().await.unwrap();
        assert!(why["error"].as_str().unwrap().contains(needle), "{why}");
    }
    http.post(format!("{base}/_sim/reset"))
        .send()
        .await
        .unwrap();
    assert!(f.sim.state.messages().is_empty());
    assert_eq!(f.sim.state.stats().messages, 0);
}

#[test]
fn the_simulator_command_serves_until_stopped() {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_ding-channel"))
        .args(["simulator", "--port", "0"])
        .env_clear()
        .env("DING_CHANNEL_CONFIG", "")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("prints its URL")
        .to_owned();
    let addr = url.trim_start_matches("http://").to_owned();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(conn, "GET /_sim/stats HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .expect("HTTP answer with a body");
    let v: serde_json::Value = serde_json::from_str(body).expect("stats JSON");
    assert_eq!(v["messages"], 0);
    assert!(line.contains("robots: ops-robot"), "{line}");
}
