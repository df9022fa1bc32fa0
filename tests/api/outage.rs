//! The database goes away: PostgreSQL cut off by a proxy between the app and the server (every
//! connection cut and new ones refused, or stalled without an answer), SQLite's disk full (the
//! app's writer may not grow the file: `PRAGMA max_page_count`, its free pages used up). Sends
//! are refused "storage unavailable, retry" in time, webhooks 503 with a Retry-After, nothing
//! is half-stored, readiness follows, a send that reached DingTalk is recorded once the
//! database is back (and not sent again), and all of it without a restart.

use crate::alertmanager::{alert, notification};
use crate::helpers::*;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use ding_channel::db::schema::{deliveries, delivery_attempts, messages};
use ding_channel::db::DbConn;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    /// Every connection closed, new ones closed as they come (the server down).
    Cut,
    /// Connections held open without a byte passed (the network gone).
    Stall,
}

/// A TCP proxy between the app and PostgreSQL, on a runtime of its own: the app opens
/// connections from blocking code, on the test's runtime too.
struct DbProxy {
    port: u16,
    mode: watch::Sender<Mode>,
}

impl DbProxy {
    fn start(upstream: String) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = watch::Sender::new(Mode::Pass);
        let modes = mode.subscribe();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(relay(client, upstream.clone(), modes.clone()));
                }
            })
        });
        Self { port, mode }
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

async fn relay(mut client: TcpStream, upstream: String, mut mode: watch::Receiver<Mode>) {
    let held = |mut mode: watch::Receiver<Mode>| async move {
        // Until the mode changes again; then closed.
        let _ = mode.changed().await;
    };
    let now = *mode.borrow_and_update();
    match now {
        Mode::Cut => return,
        Mode::Stall => return held(mode).await,
        Mode::Pass => {}
    }
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let passing = async { while mode.changed().await.is_ok() && *mode.borrow() == Mode::Pass {} };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
        _ = passing => {}
    }
    if *mode.borrow() == Mode::Stall {
        held(mode).await;
    }
}

/// `postgres://user@host:port/db` → `host:port`.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split('/').next().unwrap();
    authority.rsplit('@').next().unwrap().to_owned()
}

/// How a test takes the database away from the app, and gives it back.
enum Away {
    Pg(DbProxy),
    /// SQLite: the app's writer may not grow the file, whose free pages are used up.
    Full,
}

/// Sends long enough to need new pages of the database file.
fn long_text() -> String {
    "disk at 95% on host-1; ".repeat(300)
}

impl Away {
    /// The app on a database of its own, behind the proxy on PostgreSQL.
    async fn spawn(extra: &[(&str, &str)], manifest: Option<Value>) -> (TestApp, Self) {
        let mut db = TestDb::new();
        let manifest = match manifest {
            Some(m) => {
                let path = db.dir.path().join("manifest.json");
                std::fs::write(&path, m.to_string()).unwrap();
                path
            }
            None => repo_manifest(),
        };
        let away = if db.url.starts_with("postgres") {
            let proxy = DbProxy::start(host_port(&db.url));
            db.url = db
                .url
                .replace(&host_port(&db.url), &format!("127.0.0.1:{}", proxy.port));
            Away::Pg(proxy)
        } else {
            Away::Full
        };
        (TestApp::spawn_with(db, manifest, extra).await, away)
    }

    /// The database goes away (while its rows are kept, for SQLite, `also` runs on the full
    /// writer until it is refused).
    async fn begin(&self, app: &TestApp, also: Option<String>) {
        match self {
            Away::Pg(proxy) => proxy.set(Mode::Cut),
            Away::Full => {
                app.db
                    .get()
                    .unwrap()
                    .batch_execute("CREATE TABLE ballast (b BLOB)")
                    .unwrap();
                writer(app, "PRAGMA max_page_count = 1").await.unwrap();
                let ballast = [4096, 512, 64]
                    .map(|size| format!("INSERT INTO ballast VALUES (zeroblob({size}))"));
                for sql in ballast.into_iter().chain(also) {
                    while writer(app, &sql).await.is_ok() {}
                }
            }
        }
    }

    async fn end(&self, app: &TestApp) {
        match self {
            Away::Pg(proxy) => proxy.set(Mode::Pass),
            Away::Full => writer(app, "PRAGMA max_page_count = 1073741823")
                .await
                .unwrap(),
        }
    }
}

/// Runs `sql` on the app's own writer (whose connection the page limit is set on).
async fn writer(app: &TestApp, sql: &str) -> Result<(), ding_channel::db::DbError> {
    let sql = sql.to_owned();
    app.outbox
        .db
        .write(move |c| Ok(c.batch_execute(&sql)?))
        .await
}

fn send(to: &str) -> Value {
    json!({"receiver__username": to, "title": "disk", "content": long_text()})
}

/// POSTs an Alertmanager notification; the status, its Retry-After and the answer.
async fn webhook(app: &TestApp, body: &Value) -> (u16, Option<String>, Value) {
    let res = app
        .client
        .post(format!(
            "{}/api/v1/alertmanager/alice,ops-robot",
            app.address
        ))
        .basic_auth(APP, Some(APP_SECRET))
        .json(body)
        .send()
        .await
        .unwrap();
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        res.status().as_u16(),
        retry_after,
        res.json().await.unwrap(),
    )
}

fn long_alert() -> Value {
    let mut a = alert("firing", "a1", "host-1");
    a["annotations"]["description"] = long_text().into();
    notification("firing", vec![a])
}

/// Polls `attempt` (in real time, bounded) until it answers something: for the app's pool,
/// which opens connections again on its own once the database is back.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(done) = attempt().await {
            return done;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Messages and deliveries stored, and messages stored without all their deliveries. Asked
/// again if the test's own connection was cut by the outage (found on its first use).
fn stored(app: &TestApp) -> (i64, i64, i64) {
    let read = || -> Result<(i64, i64, i64), ding_channel::db::DbError> {
        let mut pooled = app.db.get()?;
        let conn: &mut DbConn = &mut pooled;
        let total = messages::table.count().get_result(conn)?;
        let bare = messages::table
            .filter(diesel::dsl::not(diesel::dsl::exists(
                deliveries::table.filter(deliveries::message_id.eq(messages::id)),
            )))
            .count()
            .get_result(conn)?;
        Ok((total, deliveries::table.count().get_result(conn)?, bare))
    };
    read().or_else(|_| read()).unwrap()
}

#[tokio::test]
async fn while_the_database_is_away_sends_are_refused_in_time_and_taken_again_once_it_is_back() {
    let (app, away) = Away::spawn(&[], None).await;
    let (messages, deliveries, _) = stored(&app);
    away.begin(&app, None).await;

    let asked = Instant::now();
    let refused = app.post("send_ding", send("alice,ops-robot")).await;
    assert_refused(&refused, 1306000, "storage unavailable, retry");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("nothing was stored"),
        "{refused}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "answered at once, not after the pool's time-out: {:?}",
        asked.elapsed()
    );
    let (status, retry_after, answer) = webhook(&app, &long_alert()).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(retry_after.as_deref(), Some("5"));
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("storage unavailable, retry"),
        "{answer}"
    );
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["reason"]
            .as_str()
            .unwrap()
            .starts_with("the database"),
        "{ready}"
    );
    assert_eq!(app.get("/healthz").await.0, 200, "alive all along");
    assert!(app.sim.state.messages().is_empty());

    away.end(&app).await;
    // No restart: the same app takes sends again, as soon as its pool has a connection.
    let sent = eventually("a send taken again", || async {
        let env = app.post("send_ding", send("alice,ops-robot")).await;
        (env["result"] == true).then_some(env)
    })
    .await;
    assert_eq!(
        statuses(&sent),
        pairs(&[("alice", "sent"), ("ops-robot", "sent")]),
        "{sent}"
    );
    let (status, answer) = {
        let (s, _, a) = webhook(&app, &long_alert()).await;
        (s, a)
    };
    assert_eq!(status, 200, "the webhook's retry is taken: {answer}");
    assert_eq!(app.get("/readyz").await.0, 200);
    assert_eq!(
        stored(&app),
        (messages + 2, deliveries + 4, 0),
        "the refused ones were not stored, not even in part"
    );
}

/// A robot send in flight when the database goes away: DingTalk has it, its outcome cannot be
/// recorded. Kept in memory, it is recorded once the database is back, after its lease ran
/// out: the delivery is sent once, and shows sent.
#[tokio::test]
async fn a_send_in_flight_when_the_database_goes_is_recorded_when_it_is_back_and_sent_once() {
    let app = std::sync::Arc::new({
        let (app, away) = Away::spawn(&[], None).await;
        (app, away)
    });
    let (app, away) = (&app.0, &app.1);
    let gate = app.sim.state.hold("robot_send", 1);
    let req = {
        let (client, url) = (app.client.clone(), app.url("send_ding"));
        let mut body = json!({"receiver__username": "ops-robot", "content": "disk at 95%"});
        body["bk_app_code"] = APP.into();
        body["bk_app_secret"] = APP_SECRET.into();
        tokio::spawn(async move {
            let res = client.post(url).json(&body).send().await.unwrap();
            res.json::<Value>().await.unwrap()
        })
    };
    arrived(&gate).await;
    let id: i64 = deliveries::table
        .select(deliveries::id)
        .get_result(&mut app.db.get().unwrap())
        .unwrap();
    // On SQLite its attempt's row would still fit a page: the attempts' pages are filled too.
    let filler = format!(
        "INSERT INTO delivery_attempts (delivery_id, attempt, at, outcome) VALUES ({id}, 0, 0, 'x')"
    );
    away.begin(app, Some(filler)).await;

    gate.open();
    let env = req.await.unwrap();
    assert_eq!(
        statuses(&env),
        pairs(&[("ops-robot", "queued")]),
        "stored before, so queued: {env}"
    );
    assert_eq!(app.sim.state.messages().len(), 1, "DingTalk has it");
    assert_eq!(app.drain().await, 0, "nothing claimed while away");
    assert_eq!(app.outbox.renew_leases().await, 0, "renewals fail, quietly");
    app.clock.advance_ms(61_000); // its lease ran out meanwhile

    away.end(app).await;
    eventually("the kept outcome recorded", || async {
        app.drain().await;
        let status: String = deliveries::table
            .find(id)
            .select(deliveries::status)
            .get_result(&mut app.db.get().ok()?)
            .ok()?;
        (status == "sent").then_some(())
    })
    .await;
    assert_eq!(app.drain().await, 0, "nothing left to send");
    assert_eq!(app.sim.state.messages().len(), 1, "sent once");
    let conn = &mut app.db.get().unwrap();
    diesel::delete(delivery_attempts::table.filter(delivery_attempts::outcome.eq("x")))
        .execute(conn)
        .unwrap();
    let attempts: Vec<(i32, String)> = delivery_attempts::table
        .filter(delivery_attempts::delivery_id.eq(id))
        .select((delivery_attempts::attempt, delivery_attempts::outcome))
        .load(conn)
        .unwrap();
    assert_eq!(attempts, [(1, "sent".to_owned())]);
}

/// A database that does not answer at all (PostgreSQL behind a network that drops every
/// packet; SQLite's write lock held by another process) is answered within the ESB's wait
/// (the channel's timeout) and the webhook's time-out, telling the caller nothing was stored.
#[tokio::test]
async fn a_database_that_does_not_answer_is_answered_within_the_callers_wait() {
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_manifest()).unwrap()).unwrap();
    for ch in manifest["channels"].as_array_mut().unwrap() {
        ch["timeout"] = 1.into();
    }
    let (app, away) = Away::spawn(
        &[("DING_CHANNEL_WEBHOOK_TIMEOUT_MS", "1000")],
        Some(manifest),
    )
    .await;
    let (messages, _, _) = stored(&app);
    let mut locker = None;
    match &away {
        Away::Pg(proxy) => proxy.set(Mode::Stall),
        Away::Full => {
            let path = app.test_db.url.trim_start_matches("sqlite://").to_owned();
            let mut other = diesel::SqliteConnection::establish(&path).unwrap();
            other.batch_execute("BEGIN IMMEDIATE").unwrap();
            locker = Some(other);
        }
    }

    let asked = Instant::now();
    let env = app.post("send_ding", send("alice")).await;
    let waited = asked.elapsed();
    assert_refused(&env, 1306000, "storage unavailable, retry");
    assert!(
        env["message"]
            .as_str()
            .unwrap()
            .contains("nothing was stored"),
        "{env}"
    );
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_millis(2500),
        "within the channel's 1 s: {waited:?}"
    );
    let asked = Instant::now();
    let (status, retry_after, answer) = webhook(&app, &long_alert()).await;
    assert_eq!(
        (status, retry_after.as_deref()),
        (503, Some("5")),
        "{answer}"
    );
    assert!(
        asked.elapsed() < Duration::from_millis(2500),
        "within the webhook's 1 s: {:?}",
        asked.elapsed()
    );

    match &away {
        Away::Pg(proxy) => proxy.set(Mode::Pass),
        Away::Full => locker.take().unwrap().batch_execute("COMMIT").unwrap(),
    }
    eventually("a send taken again", || async {
        let env = app.post("send_ding", send("alice")).await;
        (env["result"] == true).then_some(())
    })
    .await;
    assert_eq!(
        stored(&app).0,
        messages + 1,
        "what waited past its caller's wait was never stored"
    );
}

/// A real server on PostgreSQL, its database cut off for a while: sends are refused meanwhile,
/// the outage is logged once when it begins and once when it ends however often the server's
/// loops and requests tried, and a message queued before it is delivered by the poller after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_server_logs_an_outage_once_and_delivers_what_waited_once_it_is_over() {
    if std::env::var("TEST_DATABASE_URL").is_err() {
        eprintln!("outage test of a real server skipped: set TEST_DATABASE_URL to run it against PostgreSQL");
        return;
    }
    let db = TestDb::new();
    let proxy = DbProxy::start(host_port(&db.url));
    let proxied = db
        .url
        .replace(&host_port(&db.url), &format!("127.0.0.1:{}", proxy.port));
    let sim = real_time_simulator();
    let server = serve(
        &proxied,
        &sim.base_url(),
        &[
            ("DING_CHANNEL_RETRY_BASE_MS", "200"),
            // The retried work's failures show at debug (logged by `Db::report`).
            ("DING_CHANNEL_LOG", "info,ding_channel::db=debug"),
        ],
    );
    seeded(&db);
    let http = reqwest::Client::new();
    let send = || async {
        let body = json!({"receiver__username": "alice", "content": "disk at 95%",
            "bk_app_code": APP, "bk_app_secret": APP_SECRET});
        let res = http
            .post(format!("{}/send_ding/", server.url))
            .json(&body)
            .send();
        res.await.unwrap().json::<Value>().await.unwrap()
    };
    let readyz = || async {
        let base = server.url.split("/api/").next().unwrap().to_owned();
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    sim.state
        .set_faults(ding_channel::simulator::Faults::http(503, &["batch_send"]));
    let queued = send().await;
    assert_eq!(statuses(&queued), pairs(&[("alice", "queued")]), "{queued}");

    proxy.set(Mode::Cut);
    sim.state
        .set_faults(ding_channel::simulator::Faults::default());
    for _ in 0..5 {
        assert_refused(&send().await, 1306000, "storage unavailable, retry");
        assert_eq!(readyz().await, 503);
    }
    wait_until("the poller to try twice", Duration::from_secs(20), || {
        server.count("cannot look for due deliveries") >= 2
    })
    .await;
    assert!(
        sim.state.messages().is_empty(),
        "the retry waits for the database"
    );

    proxy.set(Mode::Pass);
    wait_until(
        "the queued message delivered",
        Duration::from_secs(30),
        || sim.state.messages().len() == 1,
    )
    .await;
    assert_eq!(send().await["result"], true);
    assert_eq!(readyz().await, 200);
    let log = server.stop();
    let lines = |needle: &str| {
        log.lines()
            .filter(|l| l.contains(needle) && (l.contains(" WARN ") || l.contains(" ERROR ")))
            .count()
    };
    assert_eq!(lines("the database cannot be reached"), 1, "{log}");
    assert_eq!(lines("the database can be reached again"), 1, "{log}");
    assert!(
        lines("database connections were cut") <= 1,
        "at most once: {log}"
    );
    for retried in ["cannot claim", "cannot look for due", "cannot renew"] {
        assert_eq!(lines(retried), 0, "logged at debug only: {log}");
    }
    assert_eq!(sim.state.messages().len(), 2, "each once");
}
