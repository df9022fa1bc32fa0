//! A whole sync from DingTalk's directory, and the schedule that repeats it in `serve`.
//!
//! The departments are walked from the root, each level listed whole (`listsub`), and each
//! department's own members paged through (`user/list`); a person in several departments is
//! one person. Every call takes from the app's call budget, the one the single-chat sender
//! uses, so a sync never pushes sends over DingTalk's limits. Everything is fetched before
//! anything is written, and written in one transaction: a page that fails changes nothing.

use super::{mobile, plan, NewProfiles, Skipped, UsernameFrom};
use crate::clock::SharedClock;
use crate::db::{write_tx, Db, DbConn, DbError};
use crate::dingtalk::budget::AppBudgets;
use crate::dingtalk::client::MEMBERS_PAGE_MAX;
use crate::dingtalk::{App, DingTalk, DingTalkError, Member};
use crate::directory::profile::ProfileSource;
use crate::directory::provider::Provider;
use crate::directory::schedule::{self, Lease};
use crate::directory::{store, userids};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Phone cache entries written per transaction.
const WRITE_CHUNK: usize = 500;

/// The `directory_syncs` row of the periodic DingTalk sync.
const SCHEDULE: &str = "dingtalk";
/// The organisation's root department.
const ROOT: i64 = 1;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Departments whose members were listed, the root included.
    pub departments: usize,
    /// Members as listed: a person in two departments is listed twice.
    pub listed: usize,
    /// Distinct people (by userid).
    pub people: usize,
    /// Phone → userid cache entries written.
    pub cached: usize,
    /// People without a usable mobile: not cached (and never given a profile).
    pub without_mobile: usize,
    /// Profiles created (`--create-profiles`).
    pub created: usize,
    /// People a stored profile already had the phone of (`--create-profiles`).
    pub matched: usize,
    /// People no profile was created for, each with the reason (`--create-profiles`).
    pub skipped: Vec<Skipped>,
    /// DingTalk calls made (token requests aside).
    pub calls: usize,
}

impl fmt::Display for SyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "synced from DingTalk: {} departments, {} members listed, {} people, {} phones cached, {} without a mobile, {} profiles created, {} already had one, {} skipped, {} calls",
            self.departments,
            self.listed,
            self.people,
            self.cached,
            self.without_mobile,
            self.created,
            self.matched,
            self.skipped.len(),
            self.calls
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    // Not a `#[source]`: the message includes it, and chained reports would print it twice.
    #[error("cannot read {what} from DingTalk: {error}; nothing was changed")]
    DingTalk {
        what: String,
        error: Box<DingTalkError>,
    },
    #[error("the send_dingtalk channel has no DingTalk app: set ding_app_key and ding_app_secret (`ding-channel channels conf send_dingtalk ding_app_key=… ding_app_secret=…`); nothing was changed")]
    NotConfigured,
    /// The periodic sync ran past its claim: the next claim's run writes instead.
    #[error("the sync outlasted its interval (DING_CHANNEL_DINGTALK_SYNC_S), so the next one takes over; nothing was changed")]
    Outlasted,
    #[error("storage: {0}")]
    Storage(#[from] DbError),
}

impl From<diesel::result::Error> for SyncError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Storage(e.into())
    }
}

/// What a sync reads DingTalk with.
pub struct Reader<'a> {
    pub client: &'a DingTalk,
    pub app: &'a App,
    /// The app's call budget, which the sends take from too; the sync takes from it at
    /// most [`BUDGET_SHARE`] of its rates.
    pub budgets: &'a AppBudgets,
    pub clock: &'a SharedClock,
}

/// The sync's part of the app's calls: a quarter, so sends keep most of the budget while a
/// large organisation is read.
pub const BUDGET_SHARE: u32 = 4;

/// Everyone DingTalk lists, fetched before anything is written.
#[derive(Debug, Default)]
pub struct Listing {
    /// Distinct people, in the order first listed.
    pub members: Vec<Member>,
    pub departments: usize,
    pub listed: usize,
    pub calls: usize,
    seen: HashSet<String>,
}

impl Listing {
    /// A page of members: each counted as listed, and kept the first time their userid is
    /// seen (a person in several departments is one person).
    fn add(&mut self, page: Vec<Member>) {
        self.listed += page.len();
        let seen = &mut self.seen;
        self.members
            .extend(page.into_iter().filter(|m| seen.insert(m.userid.clone())));
    }
}

impl Reader<'_> {
    /// Walks every department from the root and pages through each one's own members.
    pub async fn fetch(&self) -> Result<Listing, SyncError> {
        let mut listing = Listing::default();
        let share = self.budgets.share(BUDGET_SHARE);
        let mut seen_departments = HashSet::from([ROOT]);
        let mut pending = VecDeque::from([ROOT]);
        while let Some(dept) = pending.pop_front() {
            listing.departments += 1;
            self.take_budget(&share).await;
            listing.calls += 1;
            let subs = self
                .client
                .list_departments(self.app, dept)
                .await
                .map_err(|e| self.refused(format!("the departments under department {dept}"), e))?;
            // A department listed twice (an answer gone wrong) is walked once.
            pending.extend(
                subs.into_iter()
                    .map(|d| d.dept_id)
                    .filter(|id| seen_departments.insert(*id)),
            );
            let mut cursor = 0;
            loop {
                self.take_budget(&share).await;
                listing.calls += 1;
                let what = || format!("the members of department {dept} (from cursor {cursor})");
                let page = self
                    .client
                    .list_members(self.app, dept, cursor, MEMBERS_PAGE_MAX)
                    .await
                    .map_err(|e| self.refused(what(), e))?;
                listing.add(page.members);
                match page.next_cursor {
                    None => break,
                    Some(next) if next > cursor => cursor = next,
                    Some(_) => {
                        let e = DingTalkError::bad_answer(
                            crate::dingtalk::error::Api::UserList,
                            200,
                            "next_cursor does not move past the page",
                        );
                        return Err(self.refused(what(), e));
                    }
                }
            }
        }
        Ok(listing)
    }

    /// Waits until the app's call budget has room for one call.
    async fn take_budget(&self, share: &AppBudgets) {
        loop {
            let now = self.clock.now_ms();
            let taken = share
                .take(&self.app.key, 1, now)
                .and_then(|()| self.budgets.take(&self.app.key, 1, now));
            match taken {
                Ok(()) => return,
                Err(at) => {
                    tokio::time::sleep(Duration::from_millis((at - now).clamp(1, 60_000) as u64))
                        .await
                }
            }
        }
    }

    /// A refused call; DingTalk's "too fast" pauses the app for the senders too.
    fn refused(&self, what: String, error: DingTalkError) -> SyncError {
        if error.is_throttle() {
            self.budgets
                .pause_for(&self.app.key, &error, self.clock.now_ms());
        }
        SyncError::DingTalk {
            what,
            error: Box::new(error),
        }
    }
}

/// What a sync writes besides the cache.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Create profiles for people no profile has the phone of, usernames from this field.
    pub create_profiles: Option<UsernameFrom>,
    /// How long the cached phone → userid answers are trusted (`DING_CHANNEL_USERID_TTL_S`).
    pub userid_ttl: Duration,
}

/// Fetches everything, then writes it in one transaction.
pub async fn sync(
    db: &Db,
    reader: &Reader<'_>,
    now: i64,
    options: Options,
) -> Result<SyncReport, SyncError> {
    let listing = reader.fetch().await?;
    write(db, &reader.app.key, listing, now, options, None).await
}

/// Writes a listing in one transaction: every member's phone into the cache, and the new
/// profiles; nothing when `lease` (the periodic sync's claim) has been taken over.
pub async fn write(
    db: &Db,
    app_key: &str,
    listing: Listing,
    now: i64,
    options: Options,
    lease: Option<Lease>,
) -> Result<SyncReport, SyncError> {
    let Listing {
        members,
        departments,
        listed,
        calls,
        ..
    } = listing;
    let mut report = SyncReport {
        departments,
        listed,
        people: members.len(),
        calls,
        ..SyncReport::default()
    };
    let phones: Vec<(String, String)> = members
        .iter()
        .filter_map(|m| Some((mobile(m)?.ok()?.to_string(), m.userid.clone())))
        .collect();
    report.without_mobile = members.len() - phones.len();
    let candidates = options.create_profiles.map(|from| {
        let batch = match (NewProfiles {
            members: &members,
            username_from: from,
        })
        .read()
        {
            Ok(batch) => batch,
            Err(never) => match never {},
        };
        let userid_of: HashMap<&str, &str> = phones
            .iter()
            .map(|(m, u)| (m.as_str(), u.as_str()))
            .collect();
        let profiles: Vec<_> = batch
            .profiles
            .into_iter()
            .map(|p| {
                let mobile = p.dingtalk_mobile().expect("a new profile has the phone");
                (userid_of[mobile.as_str()].to_owned(), p)
            })
            .collect();
        (profiles, batch.rejected)
    });
    let ttl = options.userid_ttl;
    // Fetched whole before anything is written; written in short transactions, so a large
    // organisation never holds the database's writer for long (the cache entries are
    // independent; the profiles go in one transaction of their own).
    let mut cached = 0;
    for chunk in phones.chunks(WRITE_CHUNK) {
        let (chunk, key) = (chunk.to_vec(), app_key.to_owned());
        cached += db
            .run(move |conn| {
                write_tx(conn, |conn| {
                    if let Some(lease) = lease {
                        if !schedule::holds(conn, lease)? {
                            return Err(SyncError::Outlasted);
                        }
                    }
                    for (mobile, userid) in &chunk {
                        userids::store(conn, &key, mobile, Some(userid), now, ttl)?;
                    }
                    Ok::<_, SyncError>(chunk.len())
                })
            })
            .await?;
    }
    let planned = match candidates {
        Some((profiles, rejected)) => Some(
            db.run(move |conn| {
                write_tx(conn, |conn| {
                    if let Some(lease) = lease {
                        if !schedule::holds(conn, lease)? {
                            return Err(SyncError::Outlasted);
                        }
                    }
                    Ok::<_, SyncError>((create(conn, profiles)?, rejected))
                })
            })
            .await?,
        ),
        None => None,
    };
    report.cached = cached;
    if let Some((plan, rejected)) = planned {
        report.created = plan.create.len();
        report.matched = plan.matched;
        report.skipped = rejected;
        report.skipped.extend(plan.clashes);
    }
    Ok(report)
}

/// Creates the profiles [`plan`] allows, against every stored profile (phones and usernames
/// are compared across the whole directory).
fn create(
    conn: &mut DbConn,
    candidates: Vec<(String, crate::directory::profile::Profile)>,
) -> Result<super::Plan, SyncError> {
    let stored = store::list(conn)?;
    let plan = plan(candidates, &stored);
    store::upsert(conn, &plan.create, ProfileSource::DingTalk)?;
    Ok(plan)
}

/// The app of the `send_dingtalk` channel, read at each run: an admin may set or change it
/// while `serve` runs.
pub type AppSource = Arc<dyn Fn(&mut DbConn) -> Result<Option<App>, DbError> + Send + Sync>;

/// The periodic sync of `serve` (`DING_CHANNEL_DINGTALK_SYNC_S`): the phone cache only;
/// profiles are created by `users sync --from dingtalk --create-profiles`, when asked.
pub struct Schedule {
    pub db: Db,
    pub client: Arc<DingTalk>,
    /// The single-chat sender's, so the two share the app's calls.
    pub budgets: AppBudgets,
    pub app: AppSource,
    pub interval: Duration,
    pub userid_ttl: Duration,
    pub clock: SharedClock,
}

impl Schedule {
    /// Runs the sync if it is due and no other process claimed it; `None` when not due. A
    /// failure is logged and answered, never fatal: the next interval tries again.
    pub async fn run_if_due(&self) -> Option<Result<SyncReport, SyncError>> {
        let (now, interval) = (self.clock.now_ms(), self.interval);
        let claimed = self
            .db
            .run(move |conn| schedule::claim(conn, SCHEDULE, now, interval))
            .await;
        let outcome = match claimed {
            Ok(None) => return None,
            Ok(Some(lease)) => self.run_claimed(now, lease).await,
            Err(e) => {
                self.db
                    .report(&e, "DingTalk directory sync: cannot claim the schedule");
                return Some(Err(e.into()));
            }
        };
        match &outcome {
            Ok(report) => tracing::info!(
                departments = report.departments,
                people = report.people,
                cached = report.cached,
                calls = report.calls,
                "{report}"
            ),
            Err(e) => tracing::warn!(error = %e, "DingTalk directory sync failed"),
        }
        Some(outcome)
    }

    async fn run_claimed(&self, now: i64, lease: Lease) -> Result<SyncReport, SyncError> {
        let source = self.app.clone();
        let app = self.db.run(move |conn| source(conn)).await?;
        let app = app.ok_or(SyncError::NotConfigured)?;
        let reader = Reader {
            client: &self.client,
            app: &app,
            budgets: &self.budgets,
            clock: &self.clock,
        };
        // Within the claim: past it, the next claim may run while this one still fetches.
        let listing = tokio::time::timeout(self.interval, reader.fetch())
            .await
            .map_err(|_| SyncError::Outlasted)??;
        let options = Options {
            create_profiles: None,
            userid_ttl: self.userid_ttl,
        };
        write(&self.db, &app.key, listing, now, options, Some(lease)).await
    }

    /// Checks for a due sync every so often until the runtime stops.
    pub async fn run(self: Arc<Self>) {
        let tick = (self.interval / 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            self.run_if_due().await;
            tokio::time::sleep(tick).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_person_listed_in_two_departments_counts_once() {
        let m = |id: &str| Member {
            userid: id.into(),
            name: None,
            mobile: None,
            state_code: None,
            email: None,
            job_number: None,
        };
        let mut listing = Listing::default();
        listing.add(vec![m("alice"), m("bob")]);
        listing.add(vec![m("bob"), m("carol")]);
        listing.add(vec![]);
        let ids: Vec<_> = listing.members.iter().map(|m| m.userid.as_str()).collect();
        assert_eq!(ids, ["alice", "bob", "carol"]);
        assert_eq!(listing.listed, 4);
    }
}
