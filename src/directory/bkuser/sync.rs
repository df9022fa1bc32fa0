//! A whole sync from bk-user, and the schedule that runs it once per interval however many
//! processes share the database.
//!
//! Every page is fetched before anything is written, and everything is written in one
//! transaction, so a page that fails changes nothing. bk-user is the authority for the
//! usernames it lists: their profiles become bk-user's, whoever wrote them before (a file
//! import of the same username is overwritten). Profiles of other sources that bk-user does
//! not list are left alone; bk-user's own that it no longer lists are marked gone, not
//! deleted, so a send to one says why it is refused.

use super::client::{BkUserClient, BkUserError};
use super::{BkUserPages, Rejection};
use crate::db::{write_tx, Db, DbConn, DbError};
use crate::directory::profile::{Profile, ProfileSource};
use crate::directory::provider::Provider;
pub use crate::directory::schedule::Lease;
use crate::directory::{schedule, store};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

/// The `directory_syncs` row of the periodic bk-user sync.
const SCHEDULE: &str = "bk-user";

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: usize,
    pub updated: usize,
    /// Listed by an earlier sync, not by this one: marked gone now.
    pub gone: usize,
    pub unchanged: usize,
    /// Records skipped, each naming the user and the field.
    pub rejected: Vec<Rejection>,
}

impl fmt::Display for SyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "synced from bk-user: {} added, {} updated, {} no longer in bk-user, {} unchanged, {} skipped as invalid",
            self.added,
            self.updated,
            self.gone,
            self.unchanged,
            self.rejected.len()
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    // Not a `#[source]`: the message includes it, and chained reports would print it twice.
    #[error("{0}; nothing was changed")]
    BkUser(BkUserError),
    /// bk-user's answer looks like the wrong directory (another tenant, an app without the
    /// permission, a wrong URL), not like people leaving: not written unless forced.
    #[error("{0}; nothing was changed. If they have really left bk-user, run `ding-channel users sync --from bk-user --force`")]
    Suspicious(String),
    /// The periodic sync ran past its claim: the next claim's run writes instead.
    #[error("the sync outlasted its interval (DING_CHANNEL_BKUSER_SYNC_S), so the next one takes over; nothing was changed")]
    Outlasted,
    #[error("storage: {0}")]
    Storage(#[from] DbError),
}

impl From<BkUserError> for SyncError {
    fn from(e: BkUserError) -> Self {
        Self::BkUser(e)
    }
}

impl From<diesel::result::Error> for SyncError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Storage(e.into())
    }
}

/// Every profile bk-user lists, fetched before anything is written.
pub struct Listing {
    records: Vec<Value>,
    /// When the fetch began, on the database's clock ([`crate::db::now_ms`], which stamps
    /// `users.updated_at`): a profile written after it (by a lookup at send time) is newer
    /// than this listing and is not marked gone by it.
    started: i64,
}

/// Fetches every page.
pub async fn fetch(client: &BkUserClient) -> Result<Listing, SyncError> {
    let started = crate::db::now_ms();
    let records = client.list_all().await?;
    Ok(Listing { records, started })
}

/// Fetches every profile, then writes the changes in one transaction.
pub async fn sync(
    db: &Db,
    client: &BkUserClient,
    now: i64,
    force: bool,
) -> Result<SyncReport, SyncError> {
    let listing = fetch(client).await?;
    write(db, listing, now, force, None).await
}

/// Writes a listing in one transaction: nothing at all when it would mark gone more than half
/// of bk-user's profiles (or all of them, listing none), unless `force`, nor when `lease` (the
/// periodic sync's claim) has been taken over.
pub async fn write(
    db: &Db,
    listing: Listing,
    now: i64,
    force: bool,
    lease: Option<Lease>,
) -> Result<SyncReport, SyncError> {
    let Listing { records, started } = listing;
    // Every username bk-user lists, valid or not: an invalid record is skipped, but its user
    // is still there and must not be marked gone.
    let listed: HashSet<String> = records
        .iter()
        .filter_map(|r| r.get("username").and_then(Value::as_str))
        .map(|u| u.trim().to_owned())
        .collect();
    let pages = BkUserPages { records };
    let batch = match pages.read() {
        Ok(batch) => batch,
        Err(never) => match never {},
    };
    let standings = pages.standings_of_skipped(&batch);
    let profiles = batch.profiles;
    let mut report = db
        .run(move |conn| {
            write_tx(conn, |conn| {
                if let Some(lease) = lease {
                    if !schedule::holds(conn, lease)? {
                        return Err(SyncError::Outlasted);
                    }
                }
                let written = Written {
                    now,
                    started,
                    force,
                };
                let report = apply(conn, &profiles, &listed, written)?;
                for (name, standing) in &standings {
                    store::set_standing(conn, name, standing)?;
                }
                Ok::<_, SyncError>(report)
            })
        })
        .await?;
    report.rejected = batch.rejected;
    Ok(report)
}

struct Written {
    now: i64,
    started: i64,
    force: bool,
}

fn apply(
    conn: &mut DbConn,
    profiles: &[Profile],
    listed: &HashSet<String>,
    at: Written,
) -> Result<SyncReport, SyncError> {
    let present = store::present(conn, ProfileSource::BkUser)?;
    let gone: Vec<String> = present
        .iter()
        .filter(|(name, updated_at)| !listed.contains(name) && *updated_at < at.started)
        .map(|(name, _)| name.clone())
        .collect();
    if !at.force && !present.is_empty() {
        if listed.is_empty() {
            return Err(SyncError::Suspicious(format!(
                "bk-user listed no profiles, but {} stored ones come from it (is DING_CHANNEL_BKUSER_URL the right ESB, and may its app list every user?)",
                present.len()
            )));
        }
        if gone.len() * 2 > present.len() {
            return Err(SyncError::Suspicious(format!(
                "bk-user no longer lists {} of the {} profiles stored from it, more than half (is DING_CHANNEL_BKUSER_URL the right ESB, and may its app list every user?)",
                gone.len(),
                present.len()
            )));
        }
    }
    let names: Vec<String> = profiles.iter().map(|p| p.username.to_string()).collect();
    let stored: HashMap<String, Profile> = store::get_many(conn, &names)?
        .into_iter()
        .map(|p| (p.username.to_string(), p))
        .collect();
    let mut report = SyncReport::default();
    let mut changed = vec![];
    for p in profiles {
        match stored.get(p.username.as_str()) {
            None => report.added += 1,
            Some(old) if old == p => {
                report.unchanged += 1;
                continue;
            }
            Some(_) => report.updated += 1,
        }
        changed.push(p.clone());
    }
    store::upsert(conn, &changed, ProfileSource::BkUser)?;
    report.gone = store::mark_gone(conn, &gone, at.now)?;
    Ok(report)
}

/// Claims the periodic bk-user sync if it is due at `now` (see [`schedule::claim`]).
pub fn claim(conn: &mut DbConn, now: i64, interval: Duration) -> Result<Option<Lease>, DbError> {
    schedule::claim(conn, SCHEDULE, now, interval)
}

/// The periodic sync of `serve`.
pub struct Schedule {
    pub db: Db,
    pub client: BkUserClient,
    pub interval: Duration,
    pub clock: crate::clock::SharedClock,
}

impl Schedule {
    /// Runs the sync if it is due and no other process claimed it; `None` when not due. A
    /// failure is logged and answered, never fatal: the next interval tries again.
    pub async fn run_if_due(&self) -> Option<Result<SyncReport, SyncError>> {
        let (now, interval) = (self.clock.now_ms(), self.interval);
        let claimed = self.db.run(move |conn| claim(conn, now, interval)).await;
        let lease = match claimed {
            Ok(None) => return None,
            Ok(Some(lease)) => lease,
            Err(e) => {
                self.db
                    .report(&e, "bk-user sync: cannot claim the schedule");
                return Some(Err(e.into()));
            }
        };
        // Within the claim: past it, the next claim may run while this one still fetches.
        let outcome = match tokio::time::timeout(interval, fetch(&self.client)).await {
            Ok(Ok(listing)) => write(&self.db, listing, now, false, Some(lease)).await,
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SyncError::Outlasted),
        };
        match &outcome {
            Ok(report) => {
                for r in &report.rejected {
                    tracing::warn!(profile = %r, "bk-user sync skipped an invalid profile");
                }
                tracing::info!(
                    added = report.added,
                    updated = report.updated,
                    gone = report.gone,
                    unchanged = report.unchanged,
                    skipped = report.rejected.len(),
                    "{report}"
                );
            }
            Err(e @ SyncError::Suspicious(_)) => {
                tracing::warn!(error = %e, "bk-user sync refused to write what bk-user listed")
            }
            Err(e) => tracing::warn!(error = %e, "bk-user sync failed"),
        }
        Some(outcome)
    }

    /// Checks for a due sync every so often until the runtime stops.
    pub async fn run(self: std::sync::Arc<Self>) {
        let tick = (self.interval / 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            self.run_if_due().await;
            tokio::time::sleep(tick).await;
        }
    }
}
