//! The database: one connection type over SQLite and PostgreSQL, a pool, embedded migrations.
//! Everything above this module talks to `Db`; only code that must differ per backend (upserts,
//! `SKIP LOCKED`) matches on `DbConn` through [`with_conn!`].
//!
//! Lookups by a unique key use `get_result`, not `first`: SQLite re-prepares a statement whose
//! `LIMIT` is a bound parameter every time it runs. On SQLite a few keys are looked up one by
//! one (see [`one_by_one`]).

pub mod models;
#[cfg(feature = "postgres")]
pub mod prepared;
pub mod schema;

use crate::config::DatabaseUrl;
use diesel::connection::{SimpleConnection, TransactionManager};
use diesel::r2d2::{self, ManageConnection, Pool, PooledConnection};
use diesel::result::Error as DieselError;
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Duration;

#[derive(diesel::MultiConnection)]
pub enum DbConn {
    Sqlite(SqliteConnection),
    #[cfg(feature = "postgres")]
    Pg(diesel::pg::PgConnection),
}

/// Runs `$body` with `$c` bound to the backend's own connection, for SQL that differs per
/// backend; the body is compiled once per backend.
#[macro_export]
macro_rules! with_conn {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::db::DbConn::Sqlite($c) => $body,
            #[cfg(feature = "postgres")]
            $crate::db::DbConn::Pg($c) => $body,
        }
    };
}

/// Up to this many keys are looked up one at a time on SQLite: each such lookup runs a statement
/// from the cache, while diesel compiles an `IN (…)` query afresh every time.
pub const FEW_KEYS: usize = 8;

/// Whether `n` keys are best looked up one at a time on `conn` (no keys: no query): on SQLite
/// up to [`FEW_KEYS`]; on PostgreSQL no more, where `= ANY($1)` is one cached statement
/// whatever `n` is, and each statement is a round trip.
pub fn one_by_one(conn: &DbConn, n: usize) -> bool {
    n == 0 || matches!(conn, DbConn::Sqlite(_)) && n <= FEW_KEYS
}

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
#[cfg(feature = "postgres")]
const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open the database {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("DATABASE_URL selects PostgreSQL, but this binary was built without PostgreSQL support; rebuild with `cargo build --release --features postgres`")]
    PostgresNotBuilt,
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("database error: {0}")]
    Query(#[from] DieselError),
    #[error("database pool: {0}")]
    Pool(#[from] r2d2::PoolError),
    #[error("database task failed: {0}")]
    Task(String),
}

/// Opens connections of the backend `DATABASE_URL` names, set up for this program's use.
#[derive(Debug)]
pub struct Manager {
    url: DatabaseUrl,
}

impl Manager {
    fn open(&self) -> Result<DbConn, DbError> {
        let connect_err = |e: diesel::ConnectionError| DbError::Connect {
            url: self.url.to_string(),
            reason: e.to_string(),
        };
        match &self.url {
            DatabaseUrl::Sqlite(path) => {
                let mut c =
                    SqliteConnection::establish(&path.to_string_lossy()).map_err(connect_err)?;
                // WAL lets readers run beside the one writer; busy_timeout makes writers queue
                // instead of failing when another connection (or a CLI process) holds the lock.
                c.batch_execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                )?;
                Ok(DbConn::Sqlite(c))
            }
            #[cfg(feature = "postgres")]
            DatabaseUrl::Postgres(url) => Ok(DbConn::Pg(
                diesel::pg::PgConnection::establish(url).map_err(connect_err)?,
            )),
            #[cfg(not(feature = "postgres"))]
            DatabaseUrl::Postgres(_) => Err(DbError::PostgresNotBuilt),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ManagerError(#[from] DbError);

impl ManageConnection for Manager {
    type Connection = DbConn;
    type Error = ManagerError;

    fn connect(&self) -> Result<DbConn, ManagerError> {
        Ok(self.open()?)
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), ManagerError> {
        conn.batch_execute("SELECT 1")
            .map_err(|e| ManagerError(e.into()))
    }

    fn has_broken(&self, conn: &mut DbConn) -> bool {
        // A connection left mid-transaction or cut off by the server is dropped, not reused.
        std::thread::panicking() || diesel::r2d2::R2D2Connection::is_broken(conn)
    }
}

pub type Conn = PooledConnection<Manager>;

/// A cloneable handle to the pool.
#[derive(Clone)]
pub struct Db {
    pool: Pool<Manager>,
    backend: &'static str,
    /// One per pooled connection but the writers': database reads wait here, asynchronously,
    /// rather than on a blocking thread each (hundreds of parked threads under load cost
    /// memory and switches).
    slots: Arc<tokio::sync::Semaphore>,
    /// The queues of [`Db::write`] and [`Db::write_new`], started by their first use.
    writers: Arc<OnceLock<Writers>>,
}

struct Writers {
    /// Any write, in the order queued.
    ordered: mpsc::Sender<Box<dyn Job>>,
    /// Writes that only add rows: on SQLite the same writer (SQLite has one write lock); on
    /// PostgreSQL a writer of their own, whose groups commit beside the ordered writer's. More
    /// such writers were measured too: on two cores they only split the groups, so more commits
    /// and WAL flushes for the same messages, and PostgreSQL spent the more CPU on them
    /// (docs/benchmarks.md).
    new_rows: mpsc::Sender<Box<dyn Job>>,
}

impl Writers {
    fn start(pool: &Pool<Manager>, backend: &str) -> Self {
        let ordered = spawn_writer(pool, "db-writer");
        let new_rows = match backend {
            "sqlite" => ordered.clone(),
            _ => spawn_writer(pool, "db-writer-new"),
        };
        Self { ordered, new_rows }
    }
}

/// A writer thread and its queue.
fn spawn_writer(pool: &Pool<Manager>, name: &str) -> mpsc::Sender<Box<dyn Job>> {
    let (tx, rx) = mpsc::channel();
    let pool = pool.clone();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || write_loop(&pool, &rx))
        .expect("a thread can be started");
    tx
}

impl Db {
    /// Opens the pool; fails fast (with the reason) when the database can't be reached.
    pub fn connect(url: &DatabaseUrl, pool_size: u32) -> Result<Self, DbError> {
        let manager = Manager { url: url.clone() };
        let writers = match url {
            DatabaseUrl::Sqlite(_) => 1,
            DatabaseUrl::Postgres(_) => 2,
        };
        // Try one connection first so a wrong URL is reported with its real cause, not as a
        // pool time-out.
        drop(manager.open()?);
        let pool = Pool::builder()
            .max_size(pool_size + writers)
            // No background top-up of idle connections: a connection being opened on r2d2's
            // thread while the process exits races libpq/OpenSSL's exit handlers (seen as a
            // segfault at exit). Connections open on demand and stay pooled once opened.
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(10))
            // A broken connection surfaces as a query error and is replaced; a `SELECT 1` on
            // every checkout would double the statements of a request.
            .test_on_check_out(false)
            .build(manager)
            .map_err(|e| DbError::Connect {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            pool,
            backend: url.backend(),
            slots: Arc::new(tokio::sync::Semaphore::new(pool_size as usize)),
            writers: Arc::default(),
        })
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    pub fn get(&self) -> Result<Conn, DbError> {
        Ok(self.pool.get()?)
    }

    /// Applies pending migrations; returns the versions applied.
    pub fn migrate(&self) -> Result<Vec<String>, DbError> {
        let mut conn = self.get()?;
        let applied = with_conn!(&mut *conn, |c| run_migrations(c, migrations_for_backend(c)))?;
        Ok(applied)
    }

    /// Runs blocking database work off the async executor.
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConn) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let db = self.clone();
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| E::from(DbError::Task(e.to_string())))?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let mut conn = db.get()?;
            f(&mut conn)
        })
        .await
        .map_err(|e| E::from(DbError::Task(e.to_string())))?
    }

    /// Runs `work` in a write transaction on this process's writer, together with whatever
    /// other writes are queued: one commit for a burst instead of one each, and writers never
    /// hold pooled connections while they wait for the write lock. If the shared transaction
    /// fails, each write is run again alone, so one failing write fails only its caller;
    /// `work` may therefore run more than once, and must have no effect outside the database.
    pub async fn write<T, F>(&self, work: F) -> Result<T, DbError>
    where
        F: FnMut(&mut DbConn) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        queued(&self.writers().ordered, work).await
    }

    /// [`Db::write`] for a write that adds rows and changes none that another write may
    /// change meanwhile (accepting a message: new rows only; an idempotency key is the
    /// caller's own). On PostgreSQL it goes to a writer of its own, whose groups commit beside
    /// the ordered writer's: they lock no row another group may hold, so neither waits on the
    /// other nor deadlocks, and accepts never queue behind claims and records. On SQLite it is
    /// [`Db::write`].
    pub async fn write_new<T, F>(&self, work: F) -> Result<T, DbError>
    where
        F: FnMut(&mut DbConn) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        queued(&self.writers().new_rows, work).await
    }

    fn writers(&self) -> &Writers {
        self.writers
            .get_or_init(|| Writers::start(&self.pool, self.backend))
    }

    /// A short write of rows every process updates (a robot's pacing state): on SQLite through
    /// the writer like any other; on PostgreSQL in a transaction of its own, so the row is
    /// locked for this write's few statements rather than for a whole group's, and groups (of
    /// this process or another) neither wait on each other for it nor deadlock taking such
    /// rows in different orders.
    pub async fn write_alone<T, F>(&self, mut work: F) -> Result<T, DbError>
    where
        F: FnMut(&mut DbConn) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        if self.backend == "sqlite" {
            return self.write(work).await;
        }
        self.run(move |c| write_tx(c, |c| work(c))).await
    }

    /// Whether the database answers.
    pub fn ping(&self) -> Result<(), DbError> {
        Ok(self.get()?.batch_execute("SELECT 1")?)
    }
}

trait BackendMigrations {
    fn migrations() -> EmbeddedMigrations;
}

impl BackendMigrations for SqliteConnection {
    fn migrations() -> EmbeddedMigrations {
        SQLITE_MIGRATIONS
    }
}

#[cfg(feature = "postgres")]
impl BackendMigrations for diesel::pg::PgConnection {
    fn migrations() -> EmbeddedMigrations {
        PG_MIGRATIONS
    }
}

fn migrations_for_backend<C: BackendMigrations>(_: &C) -> EmbeddedMigrations {
    C::migrations()
}

fn run_migrations<C>(conn: &mut C, migrations: EmbeddedMigrations) -> Result<Vec<String>, DbError>
where
    C: MigrationHarness<C::Backend> + Connection,
{
    conn.run_pending_migrations(migrations)
        .map(|v| v.iter().map(|m| m.to_string()).collect())
        .map_err(|e| DbError::Migration(e.to_string()))
}

/// A write transaction. On SQLite it starts with `BEGIN IMMEDIATE`, so it takes the write lock
/// up front and waits (busy_timeout) instead of failing with "database is locked" when it
/// would upgrade a read lock while another process writes.
// Without the postgres feature `DbConn` has one variant, so the matches below are irrefutable.
#[cfg_attr(not(feature = "postgres"), allow(irrefutable_let_patterns))]
pub fn write_tx<T, E, F>(conn: &mut DbConn, f: F) -> Result<T, E>
where
    F: FnOnce(&mut DbConn) -> Result<T, E>,
    E: From<DieselError>,
{
    type Tm = diesel::connection::AnsiTransactionManager;
    let depth = with_conn!(&mut *conn, |c| Tm::transaction_manager_status_mut(c)
        .transaction_depth())?;
    if depth.is_some() {
        // Inside a transaction already (a write run by the writer): join it. A savepoint would
        // copy every page it changes to a sub-journal; a failure fails the enclosing write.
        return f(conn);
    }
    if let DbConn::Sqlite(c) = conn {
        // Writers of this process queue here rather than in SQLite's busy handler, which
        // sleeps in steps of milliseconds: under load that sleeping dominates latency.
        let _writer = SQLITE_WRITER.lock().unwrap_or_else(|p| p.into_inner());
        diesel::connection::AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")?;
        let out = f(conn);
        let DbConn::Sqlite(c) = conn else {
            unreachable!("a connection does not change backend")
        };
        return match out {
            Ok(v) => {
                <Tm as TransactionManager<SqliteConnection>>::commit_transaction(c)?;
                Ok(v)
            }
            Err(e) => {
                <Tm as TransactionManager<SqliteConnection>>::rollback_transaction(c)?;
                Err(e)
            }
        };
    }
    conn.transaction(f)
}

static SQLITE_WRITER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Several reads from one snapshot. On SQLite that is also cheaper than a transaction per
/// statement: each takes a file lock and, as the writer has moved on meanwhile, re-reads its
/// pages; PostgreSQL would pay two round trips instead.
#[cfg_attr(not(feature = "postgres"), allow(irrefutable_let_patterns))]
pub fn read_tx<T, E, F>(conn: &mut DbConn, f: F) -> Result<T, E>
where
    F: FnOnce(&mut DbConn) -> Result<T, E>,
    E: From<DieselError>,
{
    if let DbConn::Sqlite(_) = conn {
        return conn.transaction(f);
    }
    f(conn)
}

/// Queues `work` for a writer and waits for its answer.
async fn queued<T, F>(queue: &mpsc::Sender<Box<dyn Job>>, work: F) -> Result<T, DbError>
where
    F: FnMut(&mut DbConn) -> Result<T, DbError> + Send + 'static,
    T: Send + 'static,
{
    let (done, answer) = tokio::sync::oneshot::channel();
    let job = Box::new(Pending {
        work,
        out: None,
        done,
    });
    queue
        .send(job)
        .map_err(|_| DbError::Task("the database writer stopped".into()))?;
    answer
        .await
        .unwrap_or_else(|_| Err(DbError::Task("the database writer stopped".into())))
}

/// Writes run together in one transaction at most.
const WRITE_GROUP: usize = 256;

/// A queued write, its answer kept until the transaction it ran in is settled.
trait Job: Send {
    /// Runs the work; answers whether it succeeded.
    fn run(&mut self, conn: &mut DbConn) -> bool;
    /// Sends the answer: the work's own, or `failure` when its transaction did not commit.
    fn answer(self: Box<Self>, failure: Option<String>);
}

struct Pending<T, F> {
    work: F,
    out: Option<Result<T, DbError>>,
    done: tokio::sync::oneshot::Sender<Result<T, DbError>>,
}

impl<T: Send, F> Job for Pending<T, F>
where
    F: FnMut(&mut DbConn) -> Result<T, DbError> + Send,
{
    fn run(&mut self, conn: &mut DbConn) -> bool {
        // A bug in one write must not take the writer, and every later write, down with it.
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.work)(conn)))
            .unwrap_or_else(|_| Err(DbError::Task("the write panicked".into())));
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn answer(self: Box<Self>, failure: Option<String>) {
        let out = match (failure, self.out) {
            (None, Some(out)) => out,
            (Some(why), _) => Err(DbError::Task(why)),
            (None, None) => Err(DbError::Task("the write did not run".into())),
        };
        let _ = self.done.send(out);
    }
}

enum GroupError {
    /// A job failed; its answer says why.
    Job,
    Db(DieselError),
}

impl From<DieselError> for GroupError {
    fn from(e: DieselError) -> Self {
        Self::Db(e)
    }
}

/// The writer keeps its connection; it is given back to the pool (which replaces it if it
/// broke) after a failed transaction.
fn write_loop(pool: &Pool<Manager>, jobs: &mpsc::Receiver<Box<dyn Job>>) {
    let mut held: Option<Conn> = None;
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        group.extend(jobs.try_iter().take(WRITE_GROUP - 1));
        let conn = match held.take() {
            Some(c) => Ok(c),
            None => pool.get().map_err(DbError::from),
        };
        match conn {
            Ok(mut conn) => {
                if write_group(&mut conn, group) {
                    held = Some(conn);
                }
            }
            Err(e) => group
                .into_iter()
                .for_each(|j| j.answer(Some(e.to_string()))),
        }
    }
}

/// Runs a group of writes; answers whether the connection is still fit for the next one.
fn write_group(conn: &mut DbConn, mut group: Vec<Box<dyn Job>>) -> bool {
    let together = write_tx(conn, |c| {
        if group.iter_mut().all(|j| j.run(c)) {
            Ok(())
        } else {
            Err(GroupError::Job)
        }
    });
    match together {
        Ok(()) => group.into_iter().for_each(|j| j.answer(None)),
        Err(GroupError::Job) if group.len() > 1 => {
            for mut job in group {
                match write_tx(conn, |c| {
                    if job.run(c) {
                        Ok(())
                    } else {
                        Err(GroupError::Job)
                    }
                }) {
                    Ok(()) | Err(GroupError::Job) => job.answer(None),
                    Err(GroupError::Db(e)) => job.answer(Some(format!("database error: {e}"))),
                }
            }
        }
        Err(GroupError::Job) => group.into_iter().for_each(|j| j.answer(None)),
        Err(GroupError::Db(e)) => {
            group
                .into_iter()
                .for_each(|j| j.answer(Some(format!("database error: {e}"))));
            return false;
        }
    }
    true
}

/// Unix time in milliseconds; every timestamp column uses it.
pub use crate::clock::now_ms;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::schema::apps;
    use diesel::prelude::*;

    fn add_app(conn: &mut DbConn, code: &str) -> Result<usize, DbError> {
        Ok(diesel::insert_into(apps::table)
            .values((
                apps::code.eq(code),
                apps::secret_hash.eq("h"),
                apps::created_at.eq(0i64),
                apps::updated_at.eq(0i64),
            ))
            .execute(conn)?)
    }

    fn job(
        code: &'static str,
    ) -> (
        Box<dyn Job>,
        tokio::sync::oneshot::Receiver<Result<usize, DbError>>,
    ) {
        let (done, answer) = tokio::sync::oneshot::channel();
        let work = move |c: &mut DbConn| add_app(c, code);
        (
            Box::new(Pending {
                work,
                out: None,
                done,
            }),
            answer,
        )
    }

    #[test]
    fn a_failing_write_fails_alone_and_the_writes_beside_it_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&DatabaseUrl::Sqlite(dir.path().join("t.db")), 1).unwrap();
        db.migrate().unwrap();
        let mut conn = db.get().unwrap();
        add_app(&mut conn, "taken").unwrap();

        let (jobs, answers): (Vec<_>, Vec<_>) = ["a", "taken", "b"].map(job).into_iter().unzip();
        write_group(&mut conn, jobs);
        let answers: Vec<_> = answers
            .into_iter()
            .map(|mut a| a.try_recv().unwrap())
            .collect();

        assert!(
            matches!(answers[0], Ok(1)) && matches!(answers[2], Ok(1)),
            "{answers:?}"
        );
        assert!(
            matches!(
                &answers[1],
                Err(DbError::Query(diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UniqueViolation,
                    _
                )))
            ),
            "{answers:?}"
        );
        let codes: Vec<String> = apps::table
            .select(apps::code)
            .order(apps::code)
            .load(&mut *conn)
            .unwrap();
        assert_eq!(codes, ["a", "b", "taken"]);
    }

    #[tokio::test]
    async fn a_write_that_panics_fails_alone_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&DatabaseUrl::Sqlite(dir.path().join("t.db")), 1).unwrap();
        db.migrate().unwrap();
        let bad = db
            .write(|_| -> Result<usize, DbError> { panic!("a bug") })
            .await;
        assert!(
            matches!(bad, Err(DbError::Task(ref why)) if why.contains("panicked")),
            "{bad:?}"
        );
        assert_eq!(db.write(|c| add_app(c, "after")).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn concurrent_writes_all_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&DatabaseUrl::Sqlite(dir.path().join("t.db")), 1).unwrap();
        db.migrate().unwrap();
        let writes: Vec<_> = (0..50)
            .map(|i| {
                let code = format!("app{i}");
                db.write(move |c| add_app(c, &code))
            })
            .collect();
        for w in futures_util::future::join_all(writes).await {
            assert_eq!(w.unwrap(), 1);
        }
        let n: i64 = apps::table
            .count()
            .get_result(&mut *db.get().unwrap())
            .unwrap();
        assert_eq!(n, 50);
    }
}
