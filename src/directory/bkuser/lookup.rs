//! [`UserLookup`] by bk-user: usernames a send names that the directory does not know are
//! asked of bk-user in one list_users request (as CMSI asks), and those found are stored as
//! bk-user's. A username bk-user does not know either, or that could not be asked, is not
//! asked again for [`MISS_TTL`], so a storm of sends to a typo does not hammer bk-user.

use super::client::BkUserClient;
use super::BkUserPages;
use crate::clock::SharedClock;
use crate::db::Db;
use crate::directory::lookup::UserLookup;
use crate::directory::profile::{Profile, ProfileSource};
use crate::directory::provider::Provider;
use crate::directory::store;
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

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

    async fn lookup(&self, usernames: &[String]) -> Vec<Profile> {
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
            return vec![];
        }
        let found = match self.client.find(&ask).await {
            Ok(records) => {
                let batch = match (BkUserPages { records }).read() {
                    Ok(batch) => batch,
                    Err(never) => match never {},
                };
                for r in &batch.rejected {
                    tracing::warn!(profile = %r, "bk-user lookup: invalid profile, treated as unknown");
                }
                // Only what was asked: list_users matches exactly, but an answer is not trusted
                // to stay within the question.
                let profiles: Vec<Profile> = batch
                    .profiles
                    .into_iter()
                    .filter(|p| ask.iter().any(|a| a == p.username.as_str()))
                    .collect();
                let stored = profiles.clone();
                let written = self
                    .db
                    .run(move |conn| store::upsert(conn, &stored, ProfileSource::BkUser))
                    .await;
                if let Err(e) = written {
                    tracing::warn!(error = %e, "bk-user lookup: cannot store the profiles found");
                }
                profiles
            }
            Err(e) => {
                tracing::warn!(error = %e, "bk-user lookup failed; the usernames stay unknown");
                vec![]
            }
        };
        let mut misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
        for name in ask
            .iter()
            .filter(|a| !found.iter().any(|p| p.username.as_str() == a.as_str()))
        {
            misses.insert(name.clone(), now);
        }
        found
    }
}

impl UserLookup for BkUserLookup {
    fn find<'a>(&'a self, usernames: &'a [String]) -> BoxFuture<'a, Vec<Profile>> {
        Box::pin(self.lookup(usernames))
    }
}
