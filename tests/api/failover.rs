//! Fail-over by heartbeat: two app instances on one database, each with its own clock moved by
//! the test. A process whose heartbeat stands still has its deliveries taken over by another
//! within `DING_CHANNEL_DEAD_AFTER_MS` (5 s here, the default), long before its 60 s leases
//! run out; one that beats keeps its claims however long its call takes; one that cannot beat
//! stops sending before it could be taken over.

use crate::helpers::*;
use ding_channel::db::models::DeliveryRow;
use ding_channel::simulator::Gate;
use serde_json::{json, Value};
use std::sync::Arc;

/// `receiver__username=ops-robot` sent through `app`, its webhook call held in flight.
async fn robot_send_in_flight(app: &Arc<TestApp>) -> (Arc<Gate>, tokio::task::JoinHandle<Value>) {
    let gate = app.sim.state.hold("robot_send", 1);
    let a = app.clone();
    let req = tokio::spawn(async move {
        a.post(
            "send_ding",
            json!({"receiver__username": "ops-robot", "content": "disk full"}),
        )
        .await
    });
    arrived(&gate).await;
    (gate, req)
}

/// The answer to a send whose call in flight is being cut: at once, not after the channel's
/// 10 s wait for the first attempt.
async fn cut(req: tokio::task::JoinHandle<Value>) -> Value {
    tokio::time::timeout(std::time::Duration::from_secs(3), req)
        .await
        .expect("the call in flight was cut")
        .unwrap()
}

/// Webhook calls that reached `app`'s DingTalk, answered or not.
fn calls(app: &TestApp) -> u64 {
    app.sim.state.stats().requests["robot_send"]
}

fn robot_sends(app: &TestApp) -> Vec<Value> {
    app.sim
        .state
        .messages()
        .into_iter()
        .filter(|m| m.api == "robot_send")
        .map(|m| m.body)
        .collect()
}

fn the_delivery(app: &TestApp) -> DeliveryRow {
    use diesel::prelude::*;
    use ding_channel::db::schema::deliveries::dsl as d;
    d::deliveries
        .select(DeliveryRow::as_select())
        .first(&mut *app.db.get().unwrap())
        .unwrap()
}

/// The processes with a heartbeat row.
fn beating(app: &TestApp) -> Vec<String> {
    let rows = ding_channel::outbox::store::list(&mut app.db.get().unwrap()).unwrap();
    rows.into_iter().map(|r| r.id).collect()
}

/// Time passes for both processes.
fn step(apps: &[&TestApp], ms: i64) {
    for app in apps {
        app.clock.advance_ms(ms);
    }
}

#[tokio::test]
async fn a_silent_process_deliveries_are_taken_over_within_the_dead_after() {
    let a = Arc::new(TestApp::spawn().await);
    let b = TestApp::spawn_on(&a.test_db.url).await;
    a.outbox.heartbeat.beat().await;
    b.outbox.heartbeat.beat().await;
    let (gate, req) = robot_send_in_flight(&a).await;

    // A stops beating (frozen, or killed: its call never answers); B looks every second.
    assert_eq!(b.drain().await, 0);
    for second in 1..5 {
        step(&[&a, &b], 1000);
        b.outbox.heartbeat.beat().await;
        assert_eq!(
            b.drain().await,
            0,
            "A is not taken for dead after {second} s"
        );
    }
    step(&[&a, &b], 1000);
    b.outbox.heartbeat.beat().await;
    assert_eq!(
        b.drain().await,
        1,
        "taken over after 5 s, not the 60 s lease"
    );
    let sent = robot_sends(&b);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["text"]["content"], "disk full");
    let row = the_delivery(&a);
    assert_eq!((row.status.as_str(), row.attempts), ("sent", 1));
    assert_eq!(
        beating(&a),
        [b.outbox.heartbeat.id().as_str()],
        "A's row went"
    );

    // A thaws. Its fence closed a second before B took over, so the call it had in flight is
    // cut and its caller told the message is queued; it records nothing, and what DingTalk
    // sees of the cut call is the one window of a duplicate.
    a.outbox.heartbeat.check();
    let env = cut(req).await;
    assert_eq!(statuses(&env), pairs(&[("ops-robot", "queued")]), "{env}");
    gate.open();
    a.outbox.heartbeat.beat().await; // its row is gone: it goes on as a new process
    assert_eq!(beating(&a).len(), 2);
    assert_eq!(a.drain().await, 0);
    assert_eq!(b.drain().await, 0);
    let row = the_delivery(&a);
    assert_eq!((row.status.as_str(), row.attempts), ("sent", 1));
    assert_eq!(calls(&a), 1, "A made no call but the one it had in flight");
}

#[tokio::test]
async fn a_process_that_beats_keeps_its_claims_through_a_long_call() {
    let a = Arc::new(TestApp::spawn().await);
    let b = TestApp::spawn_on(&a.test_db.url).await;
    a.outbox.heartbeat.beat().await;
    let (gate, req) = robot_send_in_flight(&a).await;
    // Three times the dead-after with A's call in flight and A beating all along.
    for _ in 0..15 {
        step(&[&a, &b], 1000);
        a.outbox.heartbeat.beat().await;
        b.outbox.heartbeat.beat().await;
        assert_eq!(b.drain().await, 0);
    }
    gate.open();
    let env = req.await.unwrap();
    assert_eq!(statuses(&env), pairs(&[("ops-robot", "sent")]), "{env}");
    assert_eq!(robot_sends(&a).len(), 1);
    assert!(robot_sends(&b).is_empty());
    assert_eq!(calls(&a), 1);
}

#[tokio::test]
async fn a_process_that_cannot_beat_stops_sending_and_resumes_once_it_beats() {
    let a = Arc::new(TestApp::spawn().await);
    a.outbox.heartbeat.beat().await;
    let (gate, req) = robot_send_in_flight(&a).await;
    // The heartbeat cannot reach its table; the other tables still answer.
    let sql = |q: &str| {
        use diesel::connection::SimpleConnection;
        a.db.get().unwrap().batch_execute(q).unwrap();
    };
    sql("ALTER TABLE processes RENAME TO processes_away");
    for _ in 0..3 {
        step(&[&a], 1000);
        a.outbox.heartbeat.beat().await;
    }
    assert!(!a.outbox.heartbeat.fenced(), "3 s without a beat");
    step(&[&a], 1000);
    a.outbox.heartbeat.beat().await;
    // 4 s after its last beat, a second before any other process could take it for dead: the
    // call in flight is cut, and its claim given back.
    assert!(a.outbox.heartbeat.fenced());
    let env = cut(req).await;
    assert_eq!(statuses(&env), pairs(&[("ops-robot", "queued")]), "{env}");
    let row = the_delivery(&a);
    assert_eq!(
        (row.status.as_str(), row.claimed_by.as_deref()),
        ("queued", None)
    );
    gate.open();
    assert_eq!(a.drain().await, 0, "no claim, no send while it cannot beat");

    sql("ALTER TABLE processes_away RENAME TO processes");
    a.outbox.heartbeat.beat().await;
    assert_eq!(a.drain().await, 1);
    assert_eq!(the_delivery(&a).status, "sent");
    assert_eq!(calls(&a), 2, "the call cut, and one once it beat again");
}
