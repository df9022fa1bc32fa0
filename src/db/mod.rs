//! The database: one connection type over SQLite and PostgreSQL, a pool, embedded migrations.
//! Everything above this module talks to `Db`; only code that must differ per backend (upserts,
//! `SKIP LOCKED`) matches on `DbConn` through [`with_conn!`].
//!
//! Lookups by a unique key use `get_result`, not `first`: SQLite re-prepares a statement whose
//! `LIMIT` is a bound parameter every time it runs. A few keys are looked up one by one (see
//! [`FEW_KEYS`]).

pub mod health;
pub mod models;
pub mod schema;

use crate::config::DatabaseUrl;
use diesel::connection::{SimpleConnection, TransactionManager, TransactionManagerStatus};
use diesel::r2d2::{self, ManageConnection, Pool, PooledConnection};
use diesel::result::Error as DieselError;
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use health::{outage_of, Watch};
pub use health::{Health, Outage};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

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

/// Up to this many keys are looked up one at a time: each such lookup runs a statement from the
/// cache, while diesel compiles an `IN (…)` query afresh every time.
pub const FEW_KEYS: usize = 8;

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
    /// The storage could not do it now (see [`Outage`]); `detail` is for the log.
    #[error("storage unavailable: {detail}")]
    Unavailable { outage: Outage, detail: String },
}

impl DbError {
    fn unavailable(outage: Outage, detail: impl Into<String>) -> Self {
        Self::Unavailable {
            outage,
            detail: detail.into(),
        }
    }

    /// The outage it comes from, when it is the storage's trouble rather than the request's:
    /// the caller should retry, and a loop that retries logs it at debug only ([`Health`]
    /// logged the outage).
    pub fn outage(&self) -> Option<Outage> {
        match self {
            Self::Connect { .. } | Self::Pool(_) => Some(Outage::Unreachable),
            Self::Unavailable { outage, .. } => Some(*outage),
            Self::Query(e) => outage_of(e),
            Self::PostgresNotBuilt | Self::Migration(_) | Self::Task(_) => None,
        }
    }

    /// What a caller is told of an outage: no host or statement in it, whether anything may
    /// have been stored, and what to do.
    pub fn for_caller(&self) -> Option<String> {
        Some(match self.outage()? {
            Outage::Unreachable => "storage unavailable, retry later: the database cannot be reached in time; nothing was stored".into(),
            Outage::Refused => {
                let why = match self {
                    Self::Query(DieselError::DatabaseError(_, info)) => info.message().to_owned(),
                    Self::Unavailable { detail, .. } => detail.clone(),
                    other => other.to_string(),
                };
                format!("storage unavailable, retry later: the database refuses writes ({why}); nothing was stored")
            }
            Outage::Uncertain => "storage unavailable, retry: the database did not confirm storing it; send it again with the same idempotency_key (if it was stored, that is answered as a replay and nothing is sent twice)".into(),
        })
    }
}

/// Opens connections of the backend `DATABASE_URL` names, set up for this program's use.
pub struct Manager {
    url: DatabaseUrl,
    health: Arc<Health>,
}

/// libpq waits for ever by default for a server that does not answer (a network cut rather
/// than a refusal); these bound it, unless `DATABASE_URL` says otherwise: a connection attempt
/// gives up after 5 s, a connection whose server vanished is found dead within about 30 s.
#[cfg(feature = "postgres")]
const PG_DEFAULTS: [(&str, &str); 5] = [
    ("connect_timeout", "5"),
    ("keepalives_idle", "15"),
    ("keepalives_interval", "5"),
    ("keepalives_count", "3"),
    ("tcp_user_timeout", "30000"),
];

/// `url` with the [`PG_DEFAULTS`] it does not set.
#[cfg(feature = "postgres")]
fn with_pg_defaults(url: &str) -> String {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let set: Vec<&str> = query
        .split('&')
        .filter_map(|kv| kv.split('=').next())
        .collect();
    let mut out = url.to_owned();
    for (key, value) in PG_DEFAULTS.iter().filter(|(k, _)| !set.contains(k)) {
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(&format!("{key}={value}"));
    }
    out
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
                c.set_instrumentation(Watch::new(self.health.clone(), false));
                Ok(DbConn::Sqlite(c))
            }
            #[cfg(feature = "postgres")]
            DatabaseUrl::Postgres(url) => {
                let mut c = diesel::pg::PgConnection::establish(&with_pg_defaults(url))
                    .map_err(connect_err)?;
                c.set_instrumentation(Watch::new(self.health.clone(), true));
                Ok(DbConn::Pg(c))
            }
            #[cfg(not(feature = "postgres"))]
            DatabaseUrl::Postgres(_) => Err(DbError::PostgresNotBuilt),
        }
    }
}

/// The watch of a connection opened by [`Manager`].
fn watch(conn: &mut DbConn) -> Option<&mut Watch> {
    conn.instrumentation().downcast_mut::<Watch>()
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ManagerError(#[from] DbError);

impl ManageConnection for Manager {
    type Connection = DbConn;
    type Error = ManagerError;

    fn connect(&self) -> Result<DbConn, ManagerError> {
        match self.open() {
            Ok(conn) => {
                self.health.connected();
                Ok(conn)
            }
            Err(e) => {
                self.health.connect_failed(&e.to_string());
                Err(e.into())
            }
        }
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), ManagerError> {
        conn.batch_execute("SELECT 1")
            .map_err(|e| ManagerError(e.into()))
    }

    fn has_broken(&self, conn: &mut DbConn) -> bool {
        // A connection left mid-transaction or cut off by the server is dropped, not reused.
        std::thread::panicking()
            || diesel::r2d2::R2D2Connection::is_broken(conn)
            || watch(conn).is_some_and(|w| w.lost)
    }
}

pub type Conn = PooledConnection<Manager>;

/// How long [`Db::get`] waits for a connection at most, while the database can be reached.
const GET_WAIT: Duration = Duration::from_secs(10);
/// [`Db::get`] waits in steps of this, to see soon when connections cannot be opened (the
/// pool does not wake its waiters when an attempt fails).
const GET_STEP: Duration = Duration::from_millis(100);
/// The pool's own time-out, which [`Db::get`] does not use; r2d2 retries a failed connection
/// attempt after at most half of it, so a database back is seen within a second.
const POOL_TIMEOUT: Duration = Duration::from_secs(2);

/// The pool and what it knows of the database's health: the part the writer thread shares.
#[derive(Clone)]
struct Conns {
    pool: Pool<Manager>,
    health: Arc<Health>,
}

impl Conns {
    /// A connection, at once or within [`GET_WAIT`]; while no connection can be opened, the
    /// reason at once. One opened before connections were last found cut is checked first.
    fn get(&self) -> Result<Conn, DbError> {
        let started = std::time::Instant::now();
        loop {
            // Asked even while down, without waiting: that keeps a connection attempt going
            // in the pool's background, and the first one that succeeds ends the outage.
            let step = if self.health.is_down() {
                Duration::ZERO
            } else {
                GET_STEP
            };
            match self.pool.get_timeout(step) {
                Ok(mut conn) => {
                    if self.checked(&mut conn) {
                        return Ok(conn);
                    } // cut: dropped by the pool, replaced by another
                }
                Err(e) => match self.health.down() {
                    Some(why) => return Err(DbError::unavailable(Outage::Unreachable, why)),
                    None if started.elapsed() >= GET_WAIT => return Err(e.into()),
                    None => {}
                },
            }
        }
    }

    /// Whether `conn` still reaches its server: checked (one `SELECT 1`) only when it sat
    /// idle, or others were found cut since it was last checked ([`Watch::due`]).
    fn checked(&self, conn: &mut DbConn) -> bool {
        if !watch(conn).is_some_and(|w| w.due()) {
            return true;
        }
        conn.batch_execute("SELECT 1").is_ok()
    }
}

/// A cloneable handle to the pool.
#[derive(Clone)]
pub struct Db {
    conns: Conns,
    backend: &'static str,
    /// One per pooled connection but the writer's: database reads wait here, asynchronously,
    /// rather than on a blocking thread each (hundreds of parked threads under load cost
    /// memory and switches).
    slots: Arc<tokio::sync::Semaphore>,
    /// The queue of [`Db::write`], started by its first use.
    writer: Arc<OnceLock<mpsc::Sender<Box<dyn Job>>>>,
}

impl Db {
    /// Opens the pool; fails fast (with the reason) when the database can't be reached.
    pub fn connect(url: &DatabaseUrl, pool_size: u32) -> Result<Self, DbError> {
        let health = Arc::new(Health::default());
        let manager = Manager {
            url: url.clone(),
            health: health.clone(),
        };
        // Try one connection first so a wrong URL is reported with its real cause, not as a
        // pool time-out.
        drop(manager.open()?);
        let pool = Pool::builder()
            .max_size(pool_size + 1) // the writer's connection
            // No background top-up of idle connections: a connection being opened on r2d2's
            // thread while the process exits races libpq/OpenSSL's exit handlers (seen as a
            // segfault at exit). Connections open on demand and stay pooled once opened.
            .min_idle(Some(0))
            .connection_timeout(POOL_TIMEOUT)
            // Reported through `Health`, once per outage.
            .error_handler(Box::new(r2d2::NopErrorHandler))
            // A broken connection surfaces as a query error and is replaced; a `SELECT 1` on
            // every checkout would double the statements of a request.
            .test_on_check_out(false)
            .build(manager)
            .map_err(|e| DbError::Connect {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            conns: Conns { pool, health },
            backend: url.backend(),
            slots: Arc::new(tokio::sync::Semaphore::new(pool_size as usize)),
            writer: Arc::default(),
        })
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// A pooled connection; while the database cannot be reached, the reason at once rather
    /// than after the pool's time-out.
    pub fn get(&self) -> Result<Conn, DbError> {
        self.conns.get()
    }

    /// What this process knows of the database's health.
    pub fn health(&self) -> &Health {
        &self.conns.health
    }

    /// Logs the error of work that is tried again later (a background loop, a count): an
    /// outage's at debug only, as [`Health`] logs each outage once, when it begins.
    pub fn report(&self, e: &DbError, what: &str) {
        match e {
            DbError::Query(q) if outage_of(q) == Some(Outage::Refused) => {
                self.conns.health.write_refused(&q.to_string());
                tracing::debug!(error = %e, "{what}");
            }
            _ if e.outage().is_some() => tracing::debug!(error = %e, "{what}"),
            _ => tracing::warn!(error = %e, "{what}"),
        }
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

    /// [`Db::run`], answered by `deadline` (then as an outage) however the database behaves.
    pub async fn run_by<T, E, F>(&self, deadline: Option<Instant>, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConn) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        within(deadline, self.run(f)).await
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
        self.write_by(None, work).await
    }

    /// [`Db::write`], answered by `deadline`: a write the writer had not started by then is
    /// never made (an [`Outage::Unreachable`]: nothing was stored); one it had started may
    /// still commit ([`Outage::Uncertain`]).
    pub async fn write_by<T, F>(&self, deadline: Option<Instant>, work: F) -> Result<T, DbError>
    where
        F: FnMut(&mut DbConn) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let (done, mut answer) = tokio::sync::oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let job = Box::new(Pending {
            work,
            out: None,
            done,
            state: state.clone(),
        });
        let writer = self.writer.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            let conns = self.conns.clone();
            std::thread::Builder::new()
                .name("db-writer".into())
                .spawn(move || write_loop(&conns, &rx))
                .expect("a thread can be started");
            tx
        });
        writer
            .send(job)
            .map_err(|_| DbError::Task("the database writer stopped".into()))?;
        let stopped = |_| Err(DbError::Task("the database writer stopped".into()));
        let Some(deadline) = deadline else {
            return answer.await.unwrap_or_else(stopped);
        };
        match tokio::time::timeout_at(deadline, &mut answer).await {
            Ok(out) => out.unwrap_or_else(stopped),
            Err(_) => {
                let abandoned = state
                    .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                Err(if abandoned {
                    DbError::unavailable(
                        Outage::Unreachable,
                        "the write waited too long for the database and was not made",
                    )
                } else {
                    DbError::unavailable(
                        Outage::Uncertain,
                        "the database did not confirm the write in time",
                    )
                })
            }
        }
    }

    /// Whether the database answers, within `wait`; why not, if it does not. Not queued
    /// behind the requests' reads ([`Db::run`]): a busy server is still ready.
    pub async fn ping(&self, wait: Duration) -> Result<(), DbError> {
        let conns = self.conns.clone();
        let ping = tokio::task::spawn_blocking(move || {
            Ok::<_, DbError>(conns.get()?.batch_execute("SELECT 1")?)
        });
        within(Some(Instant::now() + wait), async {
            ping.await
                .unwrap_or_else(|e| Err(DbError::Task(e.to_string())))
        })
        .await
    }
}

/// `work`'s answer, or an outage once `deadline` (if any) passed: what was asked of the
/// database is then answered "unavailable" to its caller (a read), though it may still run.
pub async fn within<T, E: From<DbError>>(
    deadline: Option<Instant>,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let Some(deadline) = deadline else {
        return work.await;
    };
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or_else(|_| {
            Err(
                DbError::unavailable(Outage::Unreachable, "the database did not answer in time")
                    .into(),
            )
        })
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

/// The names of this binary's migrations `conn`'s database has not applied, read without
/// writing (diesel's own check would create its bookkeeping table); `None` when the database
/// has no such table: never migrated, or not ding-channel's.
pub fn pending_migrations(conn: &mut DbConn) -> Result<Option<Vec<String>>, DbError> {
    use diesel::sql_types::{BigInt, Text};
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    #[derive(diesel::QueryableByName)]
    struct Version {
        #[diesel(sql_type = Text)]
        version: String,
    }
    let exists = match conn {
        DbConn::Sqlite(_) => "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = '__diesel_schema_migrations'",
        #[cfg(feature = "postgres")]
        DbConn::Pg(_) => "SELECT count(*) AS n FROM pg_catalog.pg_tables WHERE schemaname = current_schema() AND tablename = '__diesel_schema_migrations'",
    };
    if diesel::sql_query(exists).get_result::<Count>(conn)?.n == 0 {
        return Ok(None);
    }
    let applied: std::collections::HashSet<String> =
        diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
            .load::<Version>(conn)?
            .into_iter()
            .map(|v| v.version)
            .collect();
    let embedded = with_conn!(&mut *conn, |c| embedded_migrations(c))?;
    Ok(Some(
        embedded
            .into_iter()
            .filter(|(version, _)| !applied.contains(version))
            .map(|(_, name)| name)
            .collect(),
    ))
}

/// This binary's migrations for `C`'s backend: each one's version and name.
fn embedded_migrations<C>(_: &C) -> Result<Vec<(String, String)>, DbError>
where
    C: BackendMigrations + Connection,
{
    use diesel::migration::MigrationSource;
    MigrationSource::<C::Backend>::migrations(&C::migrations())
        .map(|all| {
            all.iter()
                .map(|m| (m.name().version().to_string(), m.name().to_string()))
                .collect()
        })
        .map_err(|e| DbError::Migration(e.to_string()))
}

/// One connection that changes nothing by being opened (no WAL switch on SQLite, a read-only
/// session on PostgreSQL): for looking at a database that may not be ding-channel's.
pub fn open_read_only(url: &DatabaseUrl) -> Result<DbConn, DbError> {
    let connect_err = |e: diesel::ConnectionError| DbError::Connect {
        url: url.to_string(),
        reason: e.to_string(),
    };
    match url {
        DatabaseUrl::Sqlite(path) => {
            // A URI filename, so `mode=ro`; its reserved characters escaped.
            let mut escaped = String::new();
            for ch in path.to_string_lossy().chars() {
                match ch {
                    '%' | '?' | '#' => escaped.push_str(&format!("%{:02X}", ch as u32)),
                    ch => escaped.push(ch),
                }
            }
            let c = SqliteConnection::establish(&format!("file:{escaped}?mode=ro"))
                .map_err(connect_err)?;
            Ok(DbConn::Sqlite(c))
        }
        #[cfg(feature = "postgres")]
        DatabaseUrl::Postgres(pg) => {
            let mut c = diesel::pg::PgConnection::establish(pg).map_err(connect_err)?;
            c.batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")?;
            Ok(DbConn::Pg(c))
        }
        #[cfg(not(feature = "postgres"))]
        DatabaseUrl::Postgres(_) => Err(DbError::PostgresNotBuilt),
    }
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
                if <Tm as TransactionManager<SqliteConnection>>::rollback_transaction(c).is_err() {
                    // SQLite ends the transaction itself on some errors (a full disk, an I/O
                    // error): the ROLLBACK finds none. The connection is fine, and the work's
                    // error is the one to tell.
                    *<Tm as TransactionManager<SqliteConnection>>::transaction_manager_status_mut(
                        c,
                    ) = TransactionManagerStatus::default();
                }
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

/// Writes run together in one transaction at most.
const WRITE_GROUP: usize = 256;

/// A queued write's state: its caller may abandon it (past its deadline) only before the
/// writer starts it, so that "not made" is told only of a write that never runs.
const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

/// A queued write, its answer kept until the transaction it ran in is settled.
trait Job: Send {
    /// Whether its caller still waits for it.
    fn wanted(&self) -> bool;
    /// Runs the work, unless its caller gave up before; answers whether it succeeded (or was
    /// given up), and tells `health` of a refused write.
    fn run(&mut self, conn: &mut DbConn, health: &Health) -> bool;
    /// Sends the answer: the work's own, or `failure` when its transaction did not commit.
    fn answer(self: Box<Self>, failure: Option<&Failure>);
}

struct Pending<T, F> {
    work: F,
    out: Option<Result<T, DbError>>,
    done: tokio::sync::oneshot::Sender<Result<T, DbError>>,
    state: Arc<AtomicU8>,
}

impl<T: Send, F> Job for Pending<T, F>
where
    F: FnMut(&mut DbConn) -> Result<T, DbError> + Send,
{
    fn wanted(&self) -> bool {
        self.state.load(Ordering::Acquire) != ABANDONED
    }

    fn run(&mut self, conn: &mut DbConn, health: &Health) -> bool {
        // From here on its caller waits for the answer (run again alone, it is started).
        if let Err(ABANDONED) =
            self.state
                .compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire)
        {
            return true;
        }
        // A bug in one write must not take the writer, and every later write, down with it.
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.work)(conn)))
            .unwrap_or_else(|_| Err(DbError::Task("the write panicked".into())));
        if let Err(DbError::Query(e)) = &out {
            if outage_of(e) == Some(Outage::Refused) {
                health.write_refused(&e.to_string());
            }
        }
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn answer(self: Box<Self>, failure: Option<&Failure>) {
        let out = match (failure, self.out) {
            (None, Some(out)) => out,
            // Its work went through, then the commit failed: on PostgreSQL with the connection
            // cut, the commit may have reached the server before the cut.
            (Some(f), Some(Ok(_))) if f.commit_unknown => Err(DbError::unavailable(
                Outage::Uncertain,
                format!("cut while committing: {}", f.why),
            )),
            (Some(f), _) => Err(match f.outage {
                Some(outage) => DbError::unavailable(outage, f.why.clone()),
                None => DbError::Task(f.why.clone()),
            }),
            (None, None) => Err(DbError::Task("the write did not run".into())),
        };
        let _ = self.done.send(out);
    }
}

/// Why a transaction did not commit, as each write in it is told.
struct Failure {
    why: String,
    outage: Option<Outage>,
    /// The connection was cut while PostgreSQL committed: the writes may be stored.
    commit_unknown: bool,
}

impl Failure {
    /// `committing`: every write of the transaction went through, so `e` came from its commit.
    fn of(e: &DieselError, conn: &DbConn, committing: bool) -> Self {
        let outage = outage_of(e);
        Self {
            why: format!("database error: {e}"),
            outage,
            commit_unknown: committing
                && outage == Some(Outage::Unreachable)
                && !matches!(conn, DbConn::Sqlite(_)),
        }
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
/// broke) after a failed transaction, or when connections were found cut.
fn write_loop(conns: &Conns, jobs: &mpsc::Receiver<Box<dyn Job>>) {
    let mut held: Option<Conn> = None;
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        group.extend(jobs.try_iter().take(WRITE_GROUP - 1));
        // Those whose callers gave up waiting are not made.
        group.retain(|j| j.wanted());
        if group.is_empty() {
            continue;
        }
        let conn = match held.take() {
            Some(mut c) => {
                if conns.checked(&mut c) {
                    Ok(c)
                } else {
                    drop(c);
                    conns.get()
                }
            }
            None => conns.get(),
        };
        match conn {
            Ok(mut conn) => {
                if write_group(&mut conn, group, &conns.health) {
                    held = Some(conn);
                }
            }
            Err(e) => {
                let why = match &e {
                    DbError::Unavailable { detail, .. } => detail.clone(),
                    e => e.to_string(),
                };
                let failure = Failure {
                    why,
                    outage: e.outage(),
                    commit_unknown: false,
                };
                group.into_iter().for_each(|j| j.answer(Some(&failure)))
            }
        }
    }
}

/// Runs a group of writes; answers whether the connection is still fit for the next one.
fn write_group(conn: &mut DbConn, mut group: Vec<Box<dyn Job>>, health: &Health) -> bool {
    // While writes are refused (a full disk), one that stores something again ends it (told
    // before its answer); a write that changes nothing commits on a full disk too.
    let mut changes = health.refused_lately().then(|| total_changes(conn));
    let mut committed = |conn: &mut DbConn| {
        if let Some(before) = changes {
            let now = total_changes(conn);
            if now != before {
                health.write_stored();
                changes = None;
            }
        }
    };
    // Whether every write went through, so that a failure after that is the commit's.
    let mut committing = false;
    let together = write_tx(conn, |c| {
        committing = group.iter_mut().all(|j| j.run(c, health));
        if committing {
            Ok(())
        } else {
            Err(GroupError::Job)
        }
    });
    match together {
        Ok(()) => {
            committed(conn);
            group.into_iter().for_each(|j| j.answer(None));
        }
        Err(GroupError::Job) if group.len() > 1 => {
            for mut job in group {
                let mut committing = false;
                match write_tx(conn, |c| {
                    committing = job.run(c, health);
                    if committing {
                        Ok(())
                    } else {
                        Err(GroupError::Job)
                    }
                }) {
                    Ok(()) => {
                        committed(conn);
                        job.answer(None);
                    }
                    Err(GroupError::Job) => job.answer(None),
                    Err(GroupError::Db(e)) => job.answer(Some(&Failure::of(&e, conn, committing))),
                }
            }
        }
        Err(GroupError::Job) => group.into_iter().for_each(|j| j.answer(None)),
        Err(GroupError::Db(e)) => {
            let failure = Failure::of(&e, conn, committing);
            if failure.outage == Some(Outage::Refused) {
                health.write_refused(&e.to_string());
            }
            group.into_iter().for_each(|j| j.answer(Some(&failure)));
            return false;
        }
    }
    true
}

/// Rows changed through `conn` since it was opened (SQLite); `None` on PostgreSQL, whose
/// writes are not refused for room here (see [`Outage::Refused`]).
#[cfg_attr(not(feature = "postgres"), allow(irrefutable_let_patterns))]
fn total_changes(conn: &mut DbConn) -> Option<i64> {
    use diesel::RunQueryDsl;
    let DbConn::Sqlite(c) = conn else {
        return None;
    };
    diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "total_changes()",
    ))
    .get_result(c)
    .ok()
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
                state: Arc::new(AtomicU8::new(QUEUED)),
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
        write_group(&mut conn, jobs, &Health::default());
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

    fn sql(sql: &'static str) -> impl FnMut(&mut DbConn) -> Result<(), DbError> {
        move |c| Ok(c.batch_execute(sql)?)
    }

    /// The database file may not grow (as on a full disk) and its free pages are used up.
    async fn fill_up(db: &Db) {
        db.write(sql("CREATE TABLE ballast (b BLOB)"))
            .await
            .unwrap();
        // At least the current size: it cannot grow from here.
        db.write(sql("PRAGMA max_page_count = 1")).await.unwrap();
        for size in [4096, 512, 64] {
            let insert = format!("INSERT INTO ballast VALUES (zeroblob({size}))");
            loop {
                let insert = insert.clone();
                if db
                    .write(move |c| Ok(c.batch_execute(&insert)?))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }

    #[tokio::test]
    async fn a_full_disk_refuses_writes_as_storage_until_one_stores_something_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&DatabaseUrl::Sqlite(dir.path().join("t.db")), 1).unwrap();
        db.migrate().unwrap();
        fill_up(&db).await;
        // A code longer than a page needs new pages.
        let big = "x".repeat(5000);
        let code = big.clone();
        let refused = db.write(move |c| add_app(c, &code)).await.unwrap_err();
        assert_eq!(refused.outage(), Some(Outage::Refused), "{refused:?}");
        let told = refused.for_caller().unwrap();
        assert!(
            told.starts_with("storage unavailable, retry")
                && told.contains("database or disk is full"),
            "{told}"
        );
        assert_eq!(
            db.health().refusing().as_deref(),
            Some("database or disk is full")
        );
        assert!(db.ping(Duration::from_secs(5)).await.is_ok(), "reads go on");

        db.write(sql("PRAGMA max_page_count = 1073741823"))
            .await
            .unwrap();
        assert_eq!(
            db.health().refusing().as_deref(),
            Some("database or disk is full"),
            "a write that stores nothing does not say the disk has room"
        );
        db.write(move |c| add_app(c, &big)).await.unwrap();
        assert_eq!(db.health().refusing(), None);
    }

    #[tokio::test]
    async fn a_write_not_started_by_its_deadline_is_never_made() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&DatabaseUrl::Sqlite(dir.path().join("t.db")), 1).unwrap();
        db.migrate().unwrap();
        // The writer is busy until told to go on.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let wait = std::sync::Mutex::new(wait);
        let (started, running) = tokio::sync::oneshot::channel::<()>();
        let started = std::sync::Mutex::new(Some(started));
        let writer = db.clone();
        let busy = tokio::spawn(async move {
            writer
                .write(move |_| {
                    started.lock().unwrap().take().map(|s| s.send(()));
                    let _ = wait.lock().unwrap().recv();
                    Ok(())
                })
                .await
        });
        running.await.unwrap();
        let late = db
            .write_by(Some(Instant::now() + Duration::from_millis(50)), |c| {
                add_app(c, "late")
            })
            .await
            .unwrap_err();
        assert_eq!(late.outage(), Some(Outage::Unreachable), "{late:?}");
        assert!(late.for_caller().unwrap().contains("nothing was stored"));
        go.send(()).unwrap();
        busy.await.unwrap().unwrap();
        db.write(|c| add_app(c, "after")).await.unwrap();
        let codes: Vec<String> = apps::table
            .select(apps::code)
            .load(&mut *db.get().unwrap())
            .unwrap();
        assert_eq!(codes, ["after"], "the abandoned write was not made");
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn libpq_is_given_the_time_outs_the_url_does_not_set() {
        assert_eq!(
            with_pg_defaults("postgres://u@h/db?connect_timeout=2&keepalives_count=9"),
            "postgres://u@h/db?connect_timeout=2&keepalives_count=9&keepalives_idle=15&keepalives_interval=5&tcp_user_timeout=30000"
        );
        assert_eq!(
            with_pg_defaults("postgres://u@h/db"),
            "postgres://u@h/db?connect_timeout=5&keepalives_idle=15&keepalives_interval=5&keepalives_count=3&tcp_user_timeout=30000"
        );
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
