//! DingTalk's less polite answers: its gateway's anti-abuse pause (`{"status":1111,"wait":N}`
//! or an HTML page) holds every call of every process on the database; the organisation's
//! monthly quota (90020, `ApiCountLimitForOrg`) holds the app's calls until the month turns,
//! while robots keep sending.

use crate::helpers::*;
use ding_channel::clock::{Clock, Zone};
use ding_channel::simulator::{Faults, Impolite, Simulator};
use serde_json::{json, Value};

/// 2026-12-15 10:00 in Shanghai, 2026-12-31 20:00 there, and 2027-01-01 00:00 there.
const MID_DECEMBER: i64 = 1_797_300_000_000;
const NEW_YEARS_EVE: i64 = 1_798_718_400_000;
const JANUARY: i64 = 1_798_732_800_000;

async fn send(app: &TestApp, to: &str, content: &str) -> (String, Vec<(String, String)>) {
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": to, "content": content}),
        )
        .await;
    let id = env["data"]["message_id"].as_str().unwrap().to_owned();
    (id, statuses(&env))
}

/// The message's first delivery as the delivery log shows it.
async fn delivery(app: &TestApp, id: &str) -> Value {
    let (_, log) = app
        .get(&format!(
            "/api/v1/messages/{id}?bk_app_code={APP}&bk_app_secret={APP_SECRET}"
        ))
        .await;
    log["data"]["deliveries"][0].clone()
}

/// Requests the simulator got, over all its endpoints.
fn asked(sim: &Simulator) -> u64 {
    sim.state.stats().requests.values().sum()
}

/// Messages the simulator took for `api`.
fn taken(sim: &Simulator, api: &str) -> usize {
    sim.state.messages().iter().filter(|m| m.api == api).count()
}

async fn metrics(app: &TestApp) -> String {
    let res = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    res.text().await.unwrap()
}

fn month(ms: i64) -> String {
    Zone::parse("Asia/Shanghai").unwrap().month(ms)
}

/// The 15th of next month, 10:00 in Shanghai: for tests whose CLI runs on the real clock, a
/// time after it with the month's turn far on either side.
fn mid_next_month() -> i64 {
    let shanghai = Zone::parse("Asia/Shanghai").unwrap();
    shanghai.next_month(ding_channel::clock::now_ms()) + (14 * 24 + 10) * 3_600_000
}

#[tokio::test]
async fn an_anti_abuse_answer_pauses_every_robot_and_person_of_every_process_for_its_wait() {
    let app = TestApp::spawn().await;
    // Another server on the same database, with its own DingTalk (and egress).
    let other = TestApp::spawn_on(&app.test_db.url).await;
    app.clock.set_ms(MID_DECEMBER);
    other.clock.set_ms(MID_DECEMBER);
    app.sim
        .state
        .set_faults(Faults::impolite(Impolite::AntiAbuse { wait_s: 30 }, &["robot_send"]).times(1));
    let (robot, state) = send(&app, "ops-robot", "disk full").await;
    assert_eq!(state, pairs(&[("ops-robot", "queued")]));
    let why = delivery(&app, &robot).await;
    assert!(
        why["error"].as_str().unwrap().contains("anti-abuse"),
        "{why}"
    );
    // A person waits too: nothing at all is asked of DingTalk during the pause.
    let (person, state) = send(&app, "alice", "cpu high").await;
    assert_eq!(state, pairs(&[("alice", "queued")]));
    assert_eq!(asked(&app.sim), 1, "{:?}", app.sim.state.stats().requests);
    let m = metrics(&app).await;
    assert!(
        m.contains("ding_channel_dingtalk_egress_pauses_total 1\n"),
        "{m}"
    );
    assert!(
        m.contains("ding_channel_dingtalk_egress_paused_seconds 30\n"),
        "{m}"
    );
    let calls = format!(
        "ding_channel_dingtalk_calls_total{{api=\"robot_send\",month=\"{}\"}} 1\n",
        month(MID_DECEMBER)
    );
    assert!(m.contains(&calls), "{m}");
    assert!(
        m.contains(
            "ding_channel_dingtalk_requests_total{api=\"robot_send\",outcome=\"anti_abuse\"} 1\n"
        ),
        "told apart from an HTTP 200: {m}"
    );
    let written =
        ding_channel::outbox::egress::calls_since(&mut app.db.get().unwrap(), "").unwrap();
    assert!(written.is_empty(), "a scrape writes nothing: {written:?}");

    // The other server takes the pause in from the database.
    other.outbox.sync_egress().await;
    let (theirs, state) = send(&other, "ops-robot", "from the other server").await;
    assert_eq!(state, pairs(&[("ops-robot", "queued")]));
    assert_eq!(asked(&other.sim), 0);

    for a in [&app, &other] {
        a.clock.advance_ms(29_000);
        a.drain().await;
    }
    assert_eq!((asked(&app.sim), asked(&other.sim)), (1, 0), "still paused");
    // Then everything goes (each server may send what either accepted), spread over a tenth
    // of the wait.
    for a in [&app, &other] {
        a.clock.advance_ms(4_000);
        a.drain().await;
    }
    let batches = taken(&app.sim, "batch_send") + taken(&other.sim, "batch_send");
    assert_eq!(batches, 1);
    for (a, id) in [(&app, &robot), (&app, &person), (&other, &theirs)] {
        let d = delivery(a, id).await;
        assert_eq!(d["status"], "sent", "{d}");
        assert_eq!(d["attempts"], 1, "the pause cost no attempt: {d}");
    }
    assert!(metrics(&app)
        .await
        .contains("ding_channel_dingtalk_egress_paused_seconds 0\n"));
}

#[tokio::test]
async fn an_html_page_instead_of_json_is_retried_after_a_pause() {
    let app = TestApp::spawn().await;
    app.clock.set_ms(MID_DECEMBER);
    app.sim.state.set_faults(
        Faults {
            http_status: Some(405),
            ..Faults::impolite(Impolite::Html, &["batch_send"])
        }
        .times(1),
    );
    let (person, state) = send(&app, "alice", "cpu high").await;
    assert_eq!(state, pairs(&[("alice", "queued")]));
    let d = delivery(&app, &person).await;
    let why = d["error"].as_str().unwrap();
    assert!(
        why.contains("an HTML page") && why.contains("html_405"),
        "{d}"
    );
    // Robots wait for it as well.
    let (robot, state) = send(&app, "ops-robot", "disk full").await;
    assert_eq!(state, pairs(&[("ops-robot", "queued")]));
    let before = asked(&app.sim);
    app.clock.advance_ms(59_000);
    app.drain().await;
    assert_eq!(asked(&app.sim), before, "nothing during the minute");
    app.clock.advance_ms(7_000);
    app.drain().await;
    for id in [&person, &robot] {
        assert_eq!(delivery(&app, id).await["status"], "sent");
    }
    let people = app.sim.state.messages();
    let batch = people.iter().find(|m| m.api == "batch_send").unwrap();
    assert_eq!(batch.user_ids, ["alice-ding"]);
}

#[tokio::test]
async fn the_monthly_quota_holds_the_apps_calls_across_a_restart_until_the_month_turns() {
    let app = TestApp::spawn().await;
    app.clock.set_ms(NEW_YEARS_EVE);
    app.sim
        .state
        .set_faults(Faults::impolite(Impolite::Quota, &[]));
    let (first, state) = send(&app, "alice", "cpu high").await;
    assert_eq!(state, pairs(&[("alice", "queued")]));
    let why = delivery(&app, &first).await;
    let why = why["error"].as_str().unwrap();
    assert!(
        why.contains("monthly DingTalk API call quota is used up")
            && why.contains("wait until 2027-01-01 00:00:00 Asia/Shanghai")
            && why.contains("ding-channel dingtalk resume"),
        "{why}"
    );
    let asked_once = asked(&app.sim);
    // Robots are not metered: they keep going.
    let (robot, state) = send(&app, "ops-robot", "disk full").await;
    assert_eq!(state, pairs(&[("ops-robot", "sent")]), "{robot}");
    let (second, state) = send(&app, "bob", "cpu high").await;
    assert_eq!(state, pairs(&[("bob", "queued")]));
    assert_eq!(
        asked(&app.sim),
        asked_once + 1,
        "only the robot's webhook: {:?}",
        app.sim.state.stats().requests
    );
    let m = metrics(&app).await;
    assert!(
        m.contains("ding_channel_dingtalk_quota_exhausted 1\n")
            && m.contains("outcome=\"quota\"} 1\n"),
        "{m}"
    );

    // A restart on the same database knows it at once.
    let again = TestApp::spawn_on(&app.test_db.url).await;
    again.clock.set_ms(NEW_YEARS_EVE + 60_000);
    let (third, state) = send(&again, "alice", "still high").await;
    assert_eq!(state, pairs(&[("alice", "queued")]));
    let (_, state) = send(&again, "ops-robot", "still full").await;
    assert_eq!(state, pairs(&[("ops-robot", "sent")]));
    assert_eq!(asked(&again.sim), 1, "only the robot's webhook");
    again.clock.set_ms(JANUARY - 1);
    again.drain().await;
    assert_eq!(asked(&again.sim), 1, "not before the month turns");

    again.clock.set_ms(JANUARY);
    again.drain().await;
    for id in [&first, &second, &third] {
        let d = delivery(&again, id).await;
        assert_eq!(d["status"], "sent", "{d}");
    }
    assert_eq!(taken(&again.sim, "batch_send"), 3);
    assert!(metrics(&again)
        .await
        .contains("ding_channel_dingtalk_quota_exhausted 0\n"));
}

#[tokio::test]
async fn a_delivery_held_by_the_quota_fails_only_at_its_maximum_age_and_an_admin_can_resume() {
    let app = TestApp::spawn_with(
        TestDb::new(),
        repo_manifest(),
        &[("DING_CHANNEL_MAX_AGE_S", "600")],
    )
    .await;
    // The CLI runs on the real clock: the app's is ahead of it, far from a month's turn.
    app.clock.set_ms(mid_next_month());
    app.sim
        .state
        .set_faults(Faults::impolite(Impolite::Quota, &[]));
    let (first, _) = send(&app, "alice", "cpu high").await;
    let asked_once = asked(&app.sim);
    app.clock.advance_ms(300_000);
    let (second, _) = send(&app, "bob", "cpu high").await;
    app.clock.advance_ms(299_000);
    app.drain().await;
    assert_eq!(delivery(&app, &first).await["status"], "queued");
    app.clock.advance_ms(1_000);
    app.drain().await;
    let d = delivery(&app, &first).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert!(d["error"].as_str().unwrap().starts_with(
        "gave up at its maximum age (DING_CHANNEL_MAX_AGE_S): the organisation's monthly DingTalk API call quota is used up"
    ), "{d}");
    assert_eq!(
        d["dingtalk_code"], "Forbidden.AccessDenied.ApiCountLimitForOrg",
        "{d}"
    );
    assert_eq!(asked(&app.sim), asked_once, "no call while held");

    // The admin sees the usage and the hold, raises the quota and resumes.
    let (third, _) = send(&app, "bob", "disk full").await;
    send(&app, "ops-robot", "disk full").await;
    app.outbox.sync_egress().await;
    let usage = app.cli(&["dingtalk", "usage"]);
    let shown = stdout(&usage);
    assert!(usage.status.success(), "{}", stderr(&usage));
    let this_month = month(app.clock.now_ms());
    for line in [
        format!("{this_month}  robot_send"),
        format!("{this_month}  token"),
        "(metered: all but robot_send)".to_owned(),
        "held: the organisation's monthly DingTalk API call quota is used up".to_owned(),
    ] {
        assert!(shown.contains(&line), "{line} in {shown}");
    }
    app.sim.state.set_faults(Faults::default());
    let resumed = app.cli(&["dingtalk", "resume"]);
    assert!(
        stdout(&resumed).contains("lifted the quota hold"),
        "{}",
        stdout(&resumed)
    );
    assert!(stdout(&resumed).contains("2 queued delivery(ies) it held are due now"));
    // The server has not synced: it sees the lift before deferring them again.
    app.drain().await;
    for id in [&second, &third] {
        assert_eq!(delivery(&app, id).await["status"], "sent");
    }
    let nothing = app.cli(&["dingtalk", "resume"]);
    assert!(stdout(&nothing).contains("nothing to lift"));
}

#[tokio::test]
async fn a_server_starting_while_the_quota_is_used_up_says_so_once() {
    let app = TestApp::spawn().await;
    // Its hold ends long after the real clock of the server started.
    app.clock.set_ms(mid_next_month());
    app.sim
        .state
        .set_faults(Faults::impolite(Impolite::Quota, &[]));
    send(&app, "alice", "cpu high").await;
    let sim = real_time_simulator();
    let server = serve(&app.test_db.url, &sim.base_url(), &[]);
    let log = server.stop();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("monthly DingTalk API call quota is used up"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("ERROR")
            && lines[0].contains("Asia/Shanghai")
            && lines[0].contains("ding-channel dingtalk resume"),
        "{}",
        lines[0]
    );
}

/// People are sent work notifications.
fn work_notices(app: &TestApp) {
    let conf = std::collections::BTreeMap::from([
        ("single_chat_mode".to_owned(), "work_notice".to_owned()),
        (
            "ding_agent_id".to_owned(),
            ding_channel::simulator::DEMO_AGENT_ID.to_owned(),
        ),
    ]);
    ding_channel::channels::registry::set_conf(&mut app.db.get().unwrap(), "send_dingtalk", &conf)
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn work_notifications_and_their_follow_up_wait_for_the_quota_too() {
    let app = TestApp::spawn().await;
    work_notices(&app);
    app.clock.set_ms(NEW_YEARS_EVE);
    // Sent, and waiting for getsendresult to report it when the quota runs out.
    let (first, state) = send(&app, "alice", "cpu high").await;
    assert_eq!(state, pairs(&[("alice", "queued")]));
    assert_eq!(taken(&app.sim, "work_notice"), 1);
    app.sim
        .state
        .set_faults(Faults::impolite(Impolite::Quota, &[]));
    app.clock.advance_ms(3_000);
    app.drain().await;
    let (second, _) = send(&app, "bob", "cpu high").await;
    let asked_then = asked(&app.sim);
    app.clock.set_ms(JANUARY - 1);
    app.drain().await;
    assert_eq!(asked(&app.sim), asked_then, "nothing asked while held");
    for id in [&first, &second] {
        let d = delivery(&app, id).await;
        assert_eq!(d["status"], "queued", "{d}");
        assert!(
            d["error"]
                .as_str()
                .unwrap()
                .contains("monthly DingTalk API call quota"),
            "{d}"
        );
    }

    app.sim.state.set_faults(Faults::default());
    app.clock.set_ms(JANUARY);
    app.drain().await; // alice's task asked about, bob's sent
    app.clock.advance_ms(3_000);
    app.drain().await; // bob's asked about
    for id in [&first, &second] {
        assert_eq!(delivery(&app, id).await["status"], "sent");
    }
    assert_eq!(taken(&app.sim, "work_notice"), 2);
}

#[tokio::test]
async fn resume_makes_due_only_the_deliveries_a_hold_deferred() {
    let app = TestApp::spawn().await;
    app.clock.set_ms(MID_DECEMBER);
    // Alice's first try fails on its own (DingTalk busy): she waits for her retry, not a hold.
    app.sim.state.set_faults(
        Faults {
            error_rate: 1.0,
            http_status: Some(503),
            apis: vec!["batch_send".into()],
            ..Faults::default()
        }
        .times(1),
    );
    let (busy, state) = send(&app, "alice", "cpu high").await;
    assert_eq!(state, pairs(&[("alice", "queued")]));
    app.sim
        .state
        .set_faults(Faults::impolite(Impolite::Quota, &[]));
    let (held, _) = send(&app, "bob", "cpu high").await;
    app.sim.state.set_faults(Faults::default());
    let (lifted, due) =
        ding_channel::outbox::egress::resume(&mut app.db.get().unwrap(), app.clock.now_ms())
            .unwrap();
    assert_eq!((lifted.len(), due), (1, 1), "bob's, not alice's retry");
    app.drain().await;
    assert_eq!(delivery(&app, &held).await["status"], "sent");
    let d = delivery(&app, &busy).await;
    assert_eq!(
        (&d["status"], &d["attempts"]),
        (&json!("queued"), &json!(1)),
        "{d}"
    );
}

#[tokio::test]
async fn a_work_notification_sent_but_held_from_its_follow_up_past_its_maximum_age_says_it_was_sent(
) {
    let app = TestApp::spawn_with(
        TestDb::new(),
        repo_manifest(),
        &[("DING_CHANNEL_MAX_AGE_S", "600")],
    )
    .await;
    work_notices(&app);
    app.clock.set_ms(MID_DECEMBER);
    let (id, _) = send(&app, "alice", "cpu high").await;
    assert_eq!(taken(&app.sim, "work_notice"), 1);
    app.sim
        .state
        .set_faults(Faults::impolite(Impolite::Quota, &[]));
    app.clock.advance_ms(3_000);
    app.drain().await;
    app.clock.advance_ms(600_000);
    app.drain().await;
    let d = delivery(&app, &id).await;
    assert_eq!(d["status"], "failed", "{d}");
    let why = d["error"].as_str().unwrap();
    assert!(
        why.starts_with("sent as work notification task ")
            && why.contains("could not be asked whether it arrived")
            && why.contains("monthly DingTalk API call quota"),
        "{why}"
    );
}
