//! How the database is doing, as this process sees it: whether connections can be opened,
//! whether pooled connections were cut, whether writes are refused for lack of room. Each
//! outage is logged when it begins and when it ends, not at every attempt: the loops that
//! retry meanwhile log their storage errors at debug only.

use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What kind of outage an error comes from: the storage's trouble, not the request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// No connection can be opened, or the one in use was cut (PostgreSQL restarted, the
    /// network down): nothing was written.
    Unreachable,
    /// The database is there but refuses to write: disk full, read-only, locked beyond the
    /// busy timeout, an I/O error (SQLite). Nothing was written.
    Refused,
    /// Cut, or too slow to answer, while a write committed: it may have been stored.
    Uncertain,
}

/// SQLite's own text of the result codes that blame the file, not the statement
/// (`sqlite3_errstr` of SQLITE_FULL, _IOERR, _BUSY, _READONLY, _CANTOPEN): diesel reports them
/// as `Unknown` with that text only. The tests provoke the first and the third.
const SQLITE_REFUSALS: [&str; 5] = [
    "database or disk is full",
    "disk I/O error",
    "database is locked",
    "attempt to write a readonly database",
    "unable to open database file",
];

/// The outage a query error comes from, if it does.
pub fn outage_of(e: &DieselError) -> Option<Outage> {
    match e {
        // PostgreSQL's connection exceptions and a connection libpq found closed; a
        // transaction manager left broken by one (its rollback failed).
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        )
        | DieselError::BrokenTransactionManager => Some(Outage::Unreachable),
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
            if SQLITE_REFUSALS.contains(&info.message()) =>
        {
            Some(Outage::Refused)
        }
        _ => None,
    }
}

/// A storage outage's start and cause; logged once when it starts and once when it ends.
struct Lapse {
    since: Instant,
    last: Instant,
    reason: String,
}

/// Refused writes count for readiness this long after the last one, even when no write
/// succeeded since: with no traffic (a balancer that stopped sending) nothing would tell.
const REFUSALS_HELD: Duration = Duration::from_secs(10);
/// Cut connections found within this long of the last are one event, logged once.
const LOSSES_APART: Duration = Duration::from_secs(60);

/// Shared by the pool's connections, the writer and readiness.
#[derive(Default)]
pub struct Health {
    down: AtomicBool,
    /// While no connection can be opened: since when, and why.
    unreachable: Mutex<Option<Lapse>>,
    /// Bumped when a connection is found cut: the connections opened or checked before are
    /// checked before their next use, as they were likely cut too.
    losses: AtomicU64,
    loss_logged: Mutex<Option<Instant>>,
    refusing: AtomicBool,
    /// While writes are refused (disk full, …): since when, and why.
    refused: Mutex<Option<Lapse>>,
}

impl Health {
    /// Whether connections cannot be opened.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Why connections cannot be opened, while they cannot.
    pub fn down(&self) -> Option<String> {
        if !self.is_down() {
            return None;
        }
        let lapse = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        lapse.as_ref().map(|l| l.reason.clone())
    }

    pub(super) fn connect_failed(&self, reason: &str) {
        let mut lapse = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match lapse.as_mut() {
            Some(l) => {
                l.last = now;
                l.reason = reason.to_owned();
            }
            None => {
                tracing::error!(
                    reason,
                    "the database cannot be reached: sends are answered \"storage unavailable, retry\" and deliveries wait until it is back"
                );
                *lapse = Some(Lapse {
                    since: now,
                    last: now,
                    reason: reason.to_owned(),
                });
                self.down.store(true, Ordering::Release);
            }
        }
    }

    pub(super) fn connected(&self) {
        if !self.down.load(Ordering::Acquire) {
            return;
        }
        let mut lapse = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = lapse.take() {
            self.down.store(false, Ordering::Release);
            tracing::warn!(
                after_s = l.since.elapsed().as_secs_f64(),
                "the database can be reached again"
            );
        }
    }

    /// How many times connections were found cut.
    pub(super) fn losses(&self) -> u64 {
        self.losses.load(Ordering::Acquire)
    }

    pub(super) fn lost(&self, e: &DieselError) {
        self.losses.fetch_add(1, Ordering::AcqRel);
        let mut logged = self.loss_logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.is_none_or(|at| at.elapsed() >= LOSSES_APART) {
            tracing::warn!(error = %e, "database connections were cut; they are replaced, and the others checked before their next use");
            *logged = Some(Instant::now());
        }
    }

    /// Why writes are refused, while they are (or were, within [`REFUSALS_HELD`]).
    pub fn refusing(&self) -> Option<String> {
        if !self.refusing.load(Ordering::Acquire) {
            return None;
        }
        let lapse = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        lapse
            .as_ref()
            .filter(|l| l.last.elapsed() < REFUSALS_HELD)
            .map(|l| l.reason.clone())
    }

    /// Whether a write was refused and none has stored anything since.
    pub(super) fn refused_lately(&self) -> bool {
        self.refusing.load(Ordering::Acquire)
    }

    pub(super) fn write_refused(&self, reason: &str) {
        let mut lapse = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match lapse.as_mut() {
            Some(l) => {
                l.last = now;
                l.reason = reason.to_owned();
            }
            None => {
                tracing::error!(
                    reason,
                    "the database refuses writes: sends are answered \"storage unavailable, retry\" until it takes them again (free disk space?)"
                );
                *lapse = Some(Lapse {
                    since: now,
                    last: now,
                    reason: reason.to_owned(),
                });
                self.refusing.store(true, Ordering::Release);
            }
        }
    }

    /// A write stored something: writes are taken again.
    pub(super) fn write_stored(&self) {
        let mut lapse = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = lapse.take() {
            self.refusing.store(false, Ordering::Release);
            tracing::warn!(
                after_s = l.since.elapsed().as_secs_f64(),
                "the database takes writes again"
            );
        }
    }
}

/// A connection to a server idle this long is checked before it is used again: the server
/// may have gone meanwhile (restarted while nothing asked), which libpq only finds out by
/// failing the next statement. A busy pool's connections are never idle this long.
const IDLE_CHECKED: Duration = Duration::from_millis(500);

/// Watches one connection's queries, so that a connection whose server went away is not
/// given out again (`Manager::has_broken`): libpq does not reconnect, and diesel considers
/// such a connection broken only inside a transaction.
pub(super) struct Watch {
    health: Arc<Health>,
    /// Whether it talks to a server (PostgreSQL), rather than a file.
    remote: bool,
    /// [`Health::losses`] when it was opened or last checked.
    checked: u64,
    used: Instant,
    pub lost: bool,
}

impl Watch {
    pub fn new(health: Arc<Health>, remote: bool) -> Self {
        Self {
            checked: health.losses(),
            health,
            remote,
            used: Instant::now(),
            lost: false,
        }
    }

    /// Whether to check it before it is used: others were found cut since it was opened or
    /// last checked, or it sat idle (see [`IDLE_CHECKED`]). Counts as checked from now.
    pub fn due(&mut self) -> bool {
        let losses = self.health.losses();
        let due = self.checked < losses || (self.remote && self.used.elapsed() >= IDLE_CHECKED);
        self.checked = losses;
        due
    }
}

impl Instrumentation for Watch {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        if let InstrumentationEvent::FinishQuery { error, .. } = event {
            self.used = Instant::now();
            if let Some(e) = error {
                if !self.lost && outage_of(e) == Some(Outage::Unreachable) {
                    self.lost = true;
                    self.health.lost(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_one_state_from_its_first_failure_to_the_next_success() {
        let health = Health::default();
        assert_eq!(health.down(), None);
        health.connect_failed("connection refused");
        health.connect_failed("timeout expired");
        assert_eq!(health.down().as_deref(), Some("timeout expired"));
        health.connected();
        assert_eq!(health.down(), None);

        assert!(!health.refused_lately());
        health.write_refused("database or disk is full");
        assert_eq!(
            health.refusing().as_deref(),
            Some("database or disk is full")
        );
        health.write_stored();
        assert_eq!(health.refusing(), None);
        assert!(!health.refused_lately());
    }

    #[test]
    fn a_cut_connection_and_a_full_disk_are_outages_a_constraint_is_not() {
        let info = |m: &str| Box::new(m.to_owned()) as Box<_>;
        let e = |k, m: &str| DieselError::DatabaseError(k, info(m));
        assert_eq!(
            outage_of(&e(DatabaseErrorKind::ClosedConnection, "server closed")),
            Some(Outage::Unreachable)
        );
        assert_eq!(
            outage_of(&e(DatabaseErrorKind::Unknown, "database or disk is full")),
            Some(Outage::Refused)
        );
        assert_eq!(
            outage_of(&e(DatabaseErrorKind::UniqueViolation, "database is locked")),
            None
        );
        assert_eq!(
            outage_of(&e(DatabaseErrorKind::Unknown, "syntax error")),
            None
        );
        assert_eq!(outage_of(&DieselError::NotFound), None);
    }
}
