//! The database: one connection type over SQLite and PostgreSQL, a pool, embedded migrations.
//! Everything above this module talks to `Db`; only code that must differ per backend (upserts,
//! `SKIP LOCKED`) matches on `DbConn` through [`with_conn!`].

pub mod models;
pub mod schema;

use crate::config::DatabaseUrl;
use diesel::connection::{SimpleConnection, TransactionManager};
use diesel::r2d2::{self, ManageConnection, Pool, PooledConnection};
use diesel::result::Error as DieselError;
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
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
    /// One per pooled connection: database work waits here, asynchronously, rather than on a
    /// blocking thread each (hundreds of parked threads under load cost memory and switches).
    slots: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Db {
    /// Opens the pool; fails fast (with the reason) when the database can't be reached.
    pub fn connect(url: &DatabaseUrl, pool_size: u32) -> Result<Self, DbError> {
        let manager = Manager { url: url.clone() };
        // Try one connection first so a wrong URL is reported with its real cause, not as a
        // pool time-out.
        drop(manager.open()?);
        let pool = Pool::builder()
            .max_size(pool_size)
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
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(pool_size as usize)),
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
    if let DbConn::Sqlite(c) = conn {
        // Writers of this process queue here rather than in SQLite's busy handler, which
        // sleeps in steps of milliseconds: under load that sleeping dominates latency.
        let _writer = SQLITE_WRITER.lock().unwrap_or_else(|p| p.into_inner());
        diesel::connection::AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")?;
        let out = f(conn);
        let DbConn::Sqlite(c) = conn else {
            unreachable!("a connection does not change backend")
        };
        type Tm = diesel::connection::AnsiTransactionManager;
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

/// Unix time in milliseconds; every timestamp column uses it.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
