//! [`UserLookup`] by bk-user: usernames a send names that the directory does not know are
//! asked of bk-user with list_users (as CMSI asks; [`FIND_CHUNK`] names a request, each
//! following `count`), within the send's wait, and
//! those found are stored as bk-user's. A username bk-user answered it does not know is not
//! asked again for [`MISS_TTL`], so a storm of sends to a typo does not hammer bk-user; one it
//! could not be asked about (down, slow) is asked again by the next send.

use super::client::{BkUserClient, FIND_CHUNK};
use super::BkUserPages;
use crate::clock::SharedClock;
use crate::db::Db;
use crate::directory::lookup::{Looked, UserLookup};
use crate::directory::profile::{Profile, ProfileSource};
use crate::directory::provider::Provider;
use crate::directory::store;
use futures_util::future::{join_all, BoxFuture};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub const MISS_TTL: Duration = Duration::from_secs(60);

pub struct BkUserLookup {
    client: BkUserClient,
    db: Db,
    clock: SharedClock,
    /// Username → when it was last not found.
    misses: Mutex<HashMap<String, i64>>,
}

impl BkUserLookup {
    pub fn new(client: BkUserClient, db: Db, clock: SharedClock) -> Self {
        Self {
            client,
            db,
            clock,
            misses: Mutex::new(HashMap::new()),
        }
    }

    async fn lookup(&self, usernames: &[String], deadline: Instant) -> Looked {
        let now = self.clock.now_ms();
        let fresh = now - MISS_TTL.as_millis() as i64;
        let ask: Vec<String> = {
            let mut misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
            misses.retain(|_, at| *at > fresh);
            usernames
                .iter()
                .filter(|u| !misses.contains_key(*u))
                .cloned()
                .collect()
        };
        if ask.is_empty() {
            return Looked::default();
        }
        let unasked = |why: String| Looked {
            found: vec![],
            unasked: ask.iter().map(|a| (a.clone(), why.clone())).collect(),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return unasked("no time left in the send's wait".into());
        }
        let answers = join_all(
            ask.chunks(FIND_CHUNK)
                .map(|chunk| async move { (chunk, self.client.find(chunk, remaining).await) }),
        )
        .await;
        let mut records = vec![];
        let mut failed = HashMap::new();
        for (chunk, answer) in answers {
            match answer {
                Ok(found) => records.extend(found),
                Err(e) => {
                    // Not remembered as a miss: the next send asks again.
                    tracing::warn!(error = %e, "bk-user lookup failed; the usernames stay unknown for this send");
                    failed.extend(chunk.iter().map(|u| (u.clone(), e.to_string())));
                }
            }
        }
        let batch = match (BkUserPages { records }).read() {
            Ok(batch) => batch,
            Err(never) => match never {},
        };
        for r in &batch.rejected {
            tracing::warn!(profile = %r, "bk-user lookup: invalid profile, treated as unknown");
        }
        // Only what was asked: list_users matches exactly, but an answer is not trusted to
        // stay within the question.
        let found: Vec<Profile> = batch
            .profiles
            .into_iter()
            .filter(|p| ask.iter().any(|a| a == p.username.as_str()))
            .collect();
        let stored = found.clone();
        let written = self
            .db
            .run(move |conn| store::upsert(conn, &stored, ProfileSource::BkUser))
            .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, "bk-user lookup: cannot store the profiles found");
        }
        let mut misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
        for name in ask.iter().filter(|a| {
            !failed.contains_key(*a) && !found.iter().any(|p| p.username.as_str() == a.as_str())
        }) {
            misses.insert(name.clone(), now);
        }
        Looked {
            found,
            unasked: failed,
        }
    }
}

impl UserLookup for BkUserLookup {
    fn find<'a>(&'a self, usernames: &'a [String], deadline: Instant) -> BoxFuture<'a, Looked> {
        Box::pin(self.lookup(usernames, deadline))
    }
}
