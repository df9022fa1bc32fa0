//! The writes of the hot path, on both backends: outcomes recorded alike; on PostgreSQL
//! accepting and recording in one statement each (accepting prepared) and a writer for new
//! rows beside the ordered one; a failing write in a group that fails alone; pacing that never
//! overspends.

use crate::helpers::*;
use diesel::connection::InstrumentationEvent;
use diesel::prelude::*;
use ding_channel::db::models::{AttemptRow, DeliveryRow};
use ding_channel::db::schema::{apps, deliveries as d, delivery_attempts as a};
use ding_channel::db::{write_tx, Db, DbConn, DbError};
use ding_channel::domain::delivery::{DeliveryKind, Target};
use ding_channel::domain::ids::DingUserId;
use ding_channel::domain::request::Caller;
use ding_channel::outbox::store::{self, Acceptance, Accepted, NewDelivery, NewMessage, Outcome};
use ding_channel::senders::robot::pacing::{self, RobotLimit};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

/// A migrated database of this test's own, and a pool on it.
fn migrated() -> (TestDb, Db) {
    let test_db = TestDb::new();
    let migrate = cli(&test_db.url, &repo_manifest(), &["migrate"], &[]);
    assert!(migrate.status.success(), "{}", stderr(&migrate));
    let db = pool_on(&test_db);
    (test_db, db)
}

fn pool_on(test_db: &TestDb) -> Db {
    let s = settings(&test_db.url, &repo_manifest(), &[]);
    Db::connect(&s.storage.database, 2).unwrap()
}

fn is_pg(db: &Db) -> bool {
    db.backend() == "postgres"
}

fn person(receiver: &str) -> NewDelivery {
    NewDelivery {
        receiver: receiver.into(),
        kind: DeliveryKind::User,
        target: Some(Target::UserId(
            DingUserId::parse(&format!("ding-{receiver}")).unwrap(),
        )),
        failed: None,
        code: None,
        wait: None,
    }
}

fn message(deliveries: Vec<NewDelivery>) -> NewMessage {
    NewMessage {
        caller: Caller {
            app_code: "demo".into(),
            username: None,
            request_id: "req-1".into(),
            tenant_id: None,
        },
        idempotency_key: None,
        channel: "send_ding".into(),
        sender: Some("ops".into()),
        body: r#"{"content":"disk full"}"#.into(),
        deliveries,
    }
}

fn acceptance(now: i64) -> Acceptance {
    Acceptance {
        now,
        give_up_at: now + 3_600_000,
        idempotency_window_ms: 60_000,
        claim: ("claim-1".into(), now + 60_000),
    }
}

/// Accepts a message in a write transaction, as the writer runs it.
fn accept(conn: &mut DbConn, msg: &NewMessage, now: i64) -> Vec<DeliveryRow> {
    let (accepted, rows) =
        write_tx(conn, |c| store::accept(c, msg, &acceptance(now))).expect("accepted");
    assert!(matches!(accepted, Accepted::New(_)), "{accepted:?}");
    rows
}

/// Counts the statements a connection sends and those it prepares for its cache.
#[derive(Default, Clone)]
struct Counted(Arc<Mutex<(usize, usize)>>);

impl Counted {
    fn on(conn: &mut DbConn) -> Self {
        let counted = Self::default();
        let c = counted.clone();
        conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
            let mut n = c.0.lock().unwrap();
            match event {
                InstrumentationEvent::StartQuery { .. } => n.0 += 1,
                InstrumentationEvent::CacheQuery { .. } => n.1 += 1,
                _ => {}
            }
        });
        counted
    }

    /// (statements, prepared) since the last call.
    fn take(&self) -> (usize, usize) {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[test]
fn a_message_is_accepted_with_its_deliveries_as_stored() {
    let (_db, pool) = migrated();
    let mut conn = pool.get().unwrap();
    let mut failed = person("gone");
    failed.failed = Some("no such user".into());
    failed.target = None;
    let mut waiting = NewDelivery {
        receiver: "ops-robot".into(),
        kind: DeliveryKind::Robot,
        target: Some(Target::Robot("ops-robot".into())),
        failed: None,
        code: None,
        wait: Some((9_000, "waiting for a send slot".into())),
    };
    waiting.code = Some("130101".into());
    let rows = accept(
        &mut conn,
        &message(vec![person("alice"), failed, waiting]),
        5_000,
    );

    let summary: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.receiver.as_str(),
                r.kind.as_str(),
                r.target.as_str(),
                r.status.as_str(),
                r.next_attempt_at,
                r.give_up_at,
                r.last_error.as_deref(),
                r.dingtalk_code.as_deref(),
                r.claimed_by.as_deref(),
                r.claimed_until,
                r.created_at,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "alice",
                "user",
                "uid:ding-alice",
                "queued",
                5_000,
                3_605_000,
                None,
                None,
                Some("claim-1"),
                Some(65_000),
                5_000
            ),
            (
                "gone",
                "user",
                "",
                "failed",
                5_000,
                3_605_000,
                Some("no such user"),
                None,
                None,
                None,
                5_000
            ),
            (
                "ops-robot",
                "robot",
                "ops-robot",
                "queued",
                9_000,
                3_605_000,
                Some("waiting for a send slot"),
                Some("130101"),
                None,
                None,
                5_000
            ),
        ],
        "in the order given, ids ascending"
    );
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(
        rows.iter().map(|r| &r.message_id).collect::<Vec<_>>(),
        [&rows[0].message_id; 3]
    );
    let stored = store::deliveries_of(&mut conn, &rows[0].message_id).unwrap();
    assert_eq!(
        stored.iter().map(|r| (r.id, &r.status)).collect::<Vec<_>>(),
        rows.iter().map(|r| (r.id, &r.status)).collect::<Vec<_>>(),
        "what accept answers is what is stored"
    );
    let msg = store::message(&mut conn, &rows[0].message_id)
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            msg.app_code.as_str(),
            msg.sender.as_deref(),
            msg.request_id.as_str(),
            msg.created_at
        ),
        ("demo", Some("ops"), "req-1", 5_000)
    );
}

#[test]
fn every_outcome_is_recorded_alike_and_only_under_its_claim() {
    let (_db, pool) = migrated();
    let mut conn = pool.get().unwrap();
    let rows = accept(
        &mut conn,
        &message(
            ["sent", "retry", "failed", "deferred", "lost"]
                .map(person)
                .into(),
        ),
        1_000,
    );
    // Another worker took "lost" meanwhile: its outcome must not be written.
    diesel::update(d::table.find(rows[4].id))
        .set(d::claimed_by.eq("claim-2"))
        .execute(&mut *conn)
        .unwrap();
    let outcomes = vec![
        Outcome::Sent {
            request_id: Some("rq".into()),
            digest_id: Some("dg".into()),
            sent_by: Some("ops-robot-2".into()),
        },
        Outcome::Retry {
            at: 7_000,
            code: "-1".into(),
            error: "busy".into(),
            parts_sent: Some(2),
        },
        Outcome::Failed {
            code: None,
            error: "blocked".into(),
        },
        Outcome::Deferred {
            at: 8_000,
            reason: "waiting for a send slot".into(),
            parts_sent: None,
        },
        Outcome::Sent {
            request_id: None,
            digest_id: None,
            sent_by: None,
        },
    ];
    let attempts: Vec<_> = rows.iter().cloned().zip(outcomes).collect();
    let owned = write_tx(&mut conn, |c| store::record_all(c, &attempts, 2_000)).unwrap();
    assert_eq!(owned, [true, true, true, true, false]);

    let now: Vec<DeliveryRow> = store::deliveries_of(&mut conn, &rows[0].message_id).unwrap();
    let states: Vec<_> = now
        .iter()
        .map(|r| {
            (
                r.status.as_str(),
                r.attempts,
                r.sent_at,
                r.next_attempt_at,
                r.parts_sent,
                r.last_error.as_deref(),
                r.dingtalk_code.as_deref(),
                r.dingtalk_request_id.as_deref(),
                r.digest_id.as_deref(),
                r.claimed_by.as_deref(),
                r.updated_at,
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            (
                "sent",
                1,
                Some(2_000),
                1_000,
                0,
                None,
                None,
                Some("rq"),
                Some("dg"),
                None,
                2_000
            ),
            (
                "queued",
                1,
                None,
                7_000,
                2,
                Some("busy"),
                Some("-1"),
                None,
                None,
                None,
                2_000
            ),
            (
                "failed",
                1,
                None,
                1_000,
                0,
                Some("blocked"),
                None,
                None,
                None,
                None,
                2_000
            ),
            (
                "queued",
                0,
                None,
                8_000,
                0,
                Some("waiting for a send slot"),
                None,
                None,
                None,
                None,
                2_000
            ),
            (
                "queued",
                0,
                None,
                1_000,
                0,
                None,
                None,
                None,
                None,
                Some("claim-2"),
                1_000
            ),
        ]
    );
    let history: Vec<AttemptRow> = a::table
        .filter(a::delivery_id.eq_any(rows.iter().map(|r| r.id).collect::<Vec<_>>()))
        .order(a::delivery_id)
        .select(AttemptRow::as_select())
        .load(&mut *conn)
        .unwrap();
    let history: Vec<_> = history
        .iter()
        .map(|h| {
            (
                h.delivery_id,
                h.attempt,
                h.at,
                h.outcome.as_str(),
                h.code.as_deref(),
                h.error.as_deref(),
                h.dingtalk_request_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            (
                rows[0].id,
                1,
                2_000,
                "sent",
                None,
                Some("in digest dg, by ops-robot-2"),
                Some("rq")
            ),
            (
                rows[1].id,
                1,
                2_000,
                "retry",
                Some("-1"),
                Some("busy"),
                None
            ),
            (rows[2].id, 1, 2_000, "failed", None, Some("blocked"), None),
        ],
        "a deferral is no attempt; a lost claim writes nothing"
    );
}

#[test]
fn accepting_and_recording_are_one_statement_each_on_postgresql() {
    let (_db, pool) = migrated();
    if !is_pg(&pool) {
        eprintln!("skipped: the statements counted are PostgreSQL's");
        return;
    }
    let mut conn = pool.get().unwrap();
    let counted = Counted::on(&mut conn);
    let msg = message(vec![person("alice"), person("bob"), person("carol")]);
    let first = store::accept(&mut conn, &msg, &acceptance(1_000))
        .unwrap()
        .1;
    assert_eq!(
        counted.take(),
        (1, 1),
        "one statement, prepared for the next"
    );
    let second = store::accept(&mut conn, &msg, &acceptance(1_001))
        .unwrap()
        .1;
    assert_eq!(counted.take(), (1, 0), "run from the cache");
    assert_eq!((first.len(), second.len()), (3, 3));

    let sent = || Outcome::Sent {
        request_id: Some("rq".into()),
        digest_id: None,
        sent_by: None,
    };
    let attempts: Vec<_> = first
        .iter()
        .cloned()
        .zip([
            sent(),
            Outcome::Failed {
                code: Some("33012".into()),
                error: "bad".into(),
            },
            Outcome::Deferred {
                at: 5_000,
                reason: "later".into(),
                parts_sent: Some(1),
            },
        ])
        .collect();
    assert_eq!(
        store::record_all(&mut conn, &attempts, 2_000).unwrap(),
        [true; 3]
    );
    assert_eq!(
        counted.take(),
        (1, 0),
        "three outcomes of three kinds, one statement, planned as it runs (not prepared)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_on_every_writer_all_commit() {
    let (_db, pool) = migrated();
    let add =
        |code: String| move |c: &mut DbConn| -> Result<usize, DbError> { Ok(add_app(c, &code)?) };
    let ordered = (0..150).map(|i| pool.write(add(format!("ordered-{i}"))));
    let new_rows = (0..150).map(|i| pool.write_new(add(format!("new-{i}"))));
    let (ordered, new_rows) = futures_util::future::join(
        futures_util::future::join_all(ordered),
        futures_util::future::join_all(new_rows),
    )
    .await;
    for answer in ordered.into_iter().chain(new_rows) {
        assert_eq!(answer.unwrap(), 1);
    }
    let n: i64 = apps::table
        .count()
        .get_result(&mut *pool.get().unwrap())
        .unwrap();
    assert_eq!(n, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_together_commit_but_the_one_that_fails() {
    let (_db, pool) = migrated();
    add_app(&mut pool.get().unwrap(), "taken").unwrap();
    let gate = Gate::hold(&pool).await;
    // Queued while the writer is held, so they form one group when it is let go.
    let mut first = Box::pin(pool.write(|c| Ok(add_app(c, "a")?)));
    let mut taken = Box::pin(pool.write(|c| Ok(add_app(c, "taken")?)));
    let mut last = Box::pin(pool.write(|c| Ok(add_app(c, "b")?)));
    assert!(pending(&mut first).await && pending(&mut taken).await);
    assert!(pending(&mut last).await);
    gate.release().await;

    assert_eq!(first.await.unwrap(), 1);
    assert!(
        matches!(
            taken.await,
            Err(DbError::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _
            )))
        ),
        "the failing write gets its own error"
    );
    assert_eq!(last.await.unwrap(), 1);
    let codes: Vec<String> = apps::table
        .select(apps::code)
        .order(apps::code)
        .load(&mut *pool.get().unwrap())
        .unwrap();
    assert_eq!(codes, ["a", "b", "taken"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rows_are_written_beside_a_long_write_on_postgresql_only() {
    let (_db, pool) = migrated();
    let gate = Gate::hold(&pool).await;
    let mut accept = Box::pin(pool.write_new(|c| Ok(add_app(c, "new")?)));
    // SQLite has one write lock, so one writer takes every write: there it waits its turn.
    if is_pg(&pool) {
        let done = tokio::time::timeout(Duration::from_secs(30), &mut accept).await;
        assert_eq!(done.expect("not held up by the ordered writer").unwrap(), 1);
        gate.release().await;
    } else {
        assert!(pending(&mut accept).await);
        gate.release().await;
        assert_eq!(accept.await.unwrap(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn robot_slots_taken_at_once_by_two_processes_are_never_overspent() {
    let (test_db, a) = migrated();
    let b = pool_on(&test_db);
    let limit = RobotLimit {
        limit: 20,
        window_ms: 60_000,
        burst: 4,
    };
    let takes = (0..40).map(|i| {
        let db = if i % 2 == 0 { &a } else { &b };
        db.write_alone(move |c| pacing::take_slots(c, "ops-robot", 1, 10_000, limit))
    });
    let granted: u32 = futures_util::future::join_all(takes)
        .await
        .into_iter()
        .map(|s| s.unwrap().granted)
        .sum();
    assert_eq!(granted, 4, "the burst, once, whoever asked");
    let recorded: i64 = ding_channel::db::schema::robot_sends::table
        .count()
        .get_result(&mut *a.get().unwrap())
        .unwrap();
    assert_eq!(recorded, 4);
}

/// Polls once, so that a write is queued by then: whether it is still waiting.
async fn pending<F: Future + Unpin>(f: &mut F) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx).is_pending())).await
}

fn add_app(conn: &mut DbConn, code: &str) -> Result<usize, diesel::result::Error> {
    diesel::insert_into(apps::table)
        .values((
            apps::code.eq(code),
            apps::secret_hash.eq("h"),
            apps::created_at.eq(0i64),
            apps::updated_at.eq(0i64),
        ))
        .execute(conn)
}

/// Holds the ordered writer ([`Db::write`]) in a write until released.
struct Gate {
    open: std::sync::mpsc::Sender<()>,
    held: Pin<Box<dyn Future<Output = Result<(), DbError>> + Send>>,
}

impl Gate {
    async fn hold(db: &Db) -> Self {
        let (open, wait) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel();
        let mut started = Some(started);
        let db = db.clone();
        let mut held: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
            db.write(move |_| {
                if let Some(s) = started.take() {
                    let _ = s.send(());
                }
                // Until released; a run again (after a failed group) passes straight through.
                let _ = wait.recv();
                Ok(())
            })
            .await
        });
        tokio::select! {
            _ = running => {}
            r = &mut held => panic!("the gate's write ended early: {r:?}"),
        }
        Self { open, held }
    }

    async fn release(self) {
        drop(self.open);
        self.held.await.unwrap();
    }
}
