//! The phone → userid cache: one lookup per person per TTL, across restarts.

use crate::helpers::*;
use ding_channel::clock::{ManualClock, SharedClock};
use ding_channel::dingtalk::{App, ClientConfig, DingTalk, MobileLookup};
use ding_channel::directory::userids::UserIdCache;
use ding_channel::simulator::{demo_config, Simulator};
use std::net::TcpListener;
use std::time::Duration;

#[tokio::test]
async fn a_second_lookup_makes_no_call_even_after_a_restart() {
    let test_db = TestDb::new();
    let settings = settings(&test_db.url, &repo_manifest(), &[]);
    let db = ding_channel::db::Db::connect(&settings.storage.database, 2).unwrap();
    db.migrate().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let shared: SharedClock = clock.clone();
    let sim = Simulator::start(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        demo_config(),
        shared.clone(),
    )
    .unwrap();
    let base = sim.base_url();
    let cfg = ClientConfig {
        oapi_base: base.parse().unwrap(),
        api_base: base.parse().unwrap(),
        proxy: None,
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
    };
    let client = DingTalk::new(cfg.clone(), shared.clone()).unwrap();
    let a = &demo_config().apps[0];
    let app = App {
        key: a.key.clone(),
        secret: ding_channel::domain::secrets::AppSecret::new(a.secret.clone()),
        robot_code: a.robot_code.clone(),
    };
    let hour = Duration::from_secs(3600);
    let cache = UserIdCache::new(
        db.clone(),
        shared.clone(),
        Duration::from_secs(3 * 86_400),
        hour,
    );

    assert_eq!(
        cache.resolve(&client, &app, "13800000001").await.unwrap(),
        MobileLookup::Found("alice-ding".into())
    );
    assert_eq!(
        cache.resolve(&client, &app, "13800000001").await.unwrap(),
        MobileLookup::Found("alice-ding".into())
    );
    assert_eq!(
        cache.resolve(&client, &app, "13700000000").await.unwrap(),
        MobileLookup::NotFound
    );
    assert_eq!(
        cache.resolve(&client, &app, "13700000000").await.unwrap(),
        MobileLookup::NotFound
    );
    assert_eq!(sim.state.stats().requests["getbymobile"], 2);

    // A new process: new client, new cache object, same database.
    let restarted = UserIdCache::new(
        db.clone(),
        shared.clone(),
        Duration::from_secs(3 * 86_400),
        hour,
    );
    let client2 = DingTalk::new(cfg, shared).unwrap();
    assert_eq!(
        restarted
            .resolve(&client2, &app, "13800000001")
            .await
            .unwrap(),
        MobileLookup::Found("alice-ding".into())
    );
    assert_eq!(sim.state.stats().requests["getbymobile"], 2);

    // "Not found" is trusted for an hour, a found userid for days.
    clock.advance_ms(3601 * 1000);
    restarted
        .resolve(&client2, &app, "13700000000")
        .await
        .unwrap();
    restarted
        .resolve(&client2, &app, "13800000001")
        .await
        .unwrap();
    assert_eq!(sim.state.stats().requests["getbymobile"], 3);
}
