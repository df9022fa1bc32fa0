//! A real server process killed with SIGKILL loses nothing it accepted: the next process on the
//! same database delivers it, once. Stopped with SIGTERM, it finishes what is in flight first.

use crate::helpers::*;
use ding_channel::simulator::Faults;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_with_a_send_in_flight_loses_nothing() {
    let db = TestDb::new();
    let sim = real_time_simulator();
    // On PostgreSQL a dead process's claims are taken over when their lease runs out: short.
    let env = [
        ("DING_CHANNEL_LEASE_S", "15"),
        ("DINGTALK_TIMEOUT_MS", "3000"),
    ];
    let mut first = serve(&db.url, &sim.base_url(), &env);
    let store = seeded(&db);

    // The robot's webhook call is under way when the process dies: DingTalk never answers it.
    let gate = sim.state.hold("robot_send", 1);
    let url = format!("{}/send_ding/", first.url);
    let request = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&json!({"bk_app_code": APP, "bk_app_secret": APP_SECRET, "receiver__username": "ops-robot,alice", "content": "disk full"}))
            .send()
            .await
    });
    arrived(&gate).await;
    // Alice's batchSend, in the same batch, is recorded as soon as it is done.
    let queued = || ding_channel::outbox::store::queue_depth(&mut store.get().unwrap()).unwrap();
    wait_until("alice's outcome", Duration::from_secs(10), || queued() == 1).await;
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    let robot_row: (i32, Option<String>) = {
        use diesel::prelude::*;
        use ding_channel::db::schema::deliveries::dsl as d;
        d::deliveries
            .filter(d::kind.eq("robot"))
            .select((d::attempts, d::claimed_by))
            .first(&mut *store.get().unwrap())
            .unwrap()
    };
    assert_eq!(
        robot_row.0, 0,
        "killed while the first attempt was in flight"
    );
    assert!(
        robot_row.1.is_some(),
        "and still claimed by the dead process"
    );
    assert!(
        request.await.unwrap().is_err(),
        "the caller saw the connection drop"
    );

    // A new process on the same database takes the claim back and delivers.
    let second = serve(&db.url, &sim.base_url(), &env);
    wait_until("the robot's delivery", Duration::from_secs(20), || {
        sim.state.messages().iter().any(|m| m.api == "robot_send")
    })
    .await;
    let robot: Vec<Value> = sim
        .state
        .messages()
        .iter()
        .filter(|m| m.api == "robot_send")
        .map(|m| m.body.clone())
        .collect();
    assert_eq!(robot.len(), 1, "{robot:?}");
    assert_eq!(robot[0]["text"]["content"], "disk full");
    let people = sim
        .state
        .messages()
        .iter()
        .filter(|m| m.api == "batch_send")
        .count();
    assert_eq!(people, 1, "alice's message went out once, before the kill");
    wait_until("the outcome recorded", Duration::from_secs(20), || {
        queued() == 0
    })
    .await;
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_with_a_send_in_flight_records_it_and_leaves_the_rest_queued() {
    let db = TestDb::new();
    let sim = real_time_simulator();
    // The held call must not time out while the test waits for the stop to begin.
    let env = [
        ("DING_CHANNEL_LEASE_S", "150"),
        ("DINGTALK_TIMEOUT_MS", "30000"),
    ];
    let mut server = serve(&db.url, &sim.base_url(), &env);
    let store = seeded(&db);

    // A message in two parts; its first attempt fails, and the poller's retry of part 1 is in
    // flight when the server is told to stop.
    sim.state
        .set_faults(Faults::http(503, &["robot_send"]).times(1));
    let content = "disk at 95% on host-1\n".repeat(1500);
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/send_ding/", server.url))
        .json(&json!({"bk_app_code": APP, "bk_app_secret": APP_SECRET, "receiver__username": "ops-robot", "content": content}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["data"]["deliveries"][0]["status"], "queued",
        "{answer}"
    );
    let gate = sim.state.hold("robot_send", 1);
    arrived(&gate).await;
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // It says it waits for the call in flight, records it once answered, starts no other call
    // and exits.
    wait_until(
        "the server to wait for its send",
        Duration::from_secs(10),
        || server.logged("waiting for the deliveries in flight"),
    )
    .await;
    gate.open();
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let robot_sends = || {
        sim.state
            .messages()
            .iter()
            .filter(|m| m.api == "robot_send")
            .count()
    };
    assert_eq!(robot_sends(), 1, "part 1 only");
    let row: (i32, Option<String>) = {
        use diesel::prelude::*;
        use ding_channel::db::schema::deliveries::dsl as d;
        d::deliveries
            .select((d::parts_sent, d::last_error))
            .first(&mut *store.get().unwrap())
            .unwrap()
    };
    assert_eq!(row.0, 1, "part 1 was recorded");
    assert!(
        row.1
            .as_deref()
            .unwrap_or("")
            .contains("the server was stopping"),
        "{row:?}"
    );

    // The next process sends part 2.
    let _next = serve(&db.url, &sim.base_url(), &env);
    wait_until("part 2", Duration::from_secs(20), || robot_sends() == 2).await;
    let queued = || ding_channel::outbox::store::queue_depth(&mut store.get().unwrap()).unwrap();
    wait_until("the outcome recorded", Duration::from_secs(20), || {
        queued() == 0
    })
    .await;
    assert_eq!(robot_sends(), 2);
}
