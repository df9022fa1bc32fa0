//! The phone → DingTalk userid cache (table `dingtalk_userids`), so a person is looked up once
//! per TTL, across requests and restarts. "Not found" is cached too, for a shorter time.

use crate::clock::SharedClock;
use crate::db::schema::dingtalk_userids as t;
use crate::db::{one_by_one, write_tx, Db, DbConn, DbError};
use crate::dingtalk::{App, DingTalk, MobileLookup};
use diesel::prelude::*;
use std::collections::HashMap;
use std::time::Duration;

/// A cached answer: `Some(userid)`, or `None` for "no DingTalk user has this phone".
pub fn cached(
    conn: &mut DbConn,
    app_key: &str,
    mobile: &str,
    now_ms: i64,
) -> Result<Option<Option<String>>, DbError> {
    Ok(t::table
        .find((app_key, mobile))
        .filter(t::expires_at.gt(now_ms))
        .select(t::userid)
        .get_result::<Option<String>>(conn)
        .optional()?)
}

/// The cached answers for several mobiles at once (missing: not cached or expired).
pub fn cached_many(
    conn: &mut DbConn,
    app_key: &str,
    mobiles: &[String],
    now_ms: i64,
) -> Result<HashMap<String, Option<String>>, DbError> {
    if one_by_one(conn, mobiles.len()) {
        let mut found = HashMap::new();
        for m in mobiles {
            if let Some(hit) = cached(conn, app_key, m, now_ms)? {
                found.insert(m.clone(), hit);
            }
        }
        return Ok(found);
    }
    Ok(t::table
        .filter(t::app_key.eq(app_key))
        .filter(t::mobile.eq_any(mobiles))
        .filter(t::expires_at.gt(now_ms))
        .select((t::mobile, t::userid))
        .load::<(String, Option<String>)>(conn)?
        .into_iter()
        .collect())
}

pub fn store(
    conn: &mut DbConn,
    app_key: &str,
    mobile: &str,
    userid: Option<&str>,
    now_ms: i64,
    ttl: Duration,
) -> Result<(), DbError> {
    let expires_at = now_ms.saturating_add(ttl.as_millis() as i64);
    let answer = (
        t::userid.eq(userid),
        t::fetched_at.eq(now_ms),
        t::expires_at.eq(expires_at),
    );
    // Through `write_tx`, so it queues behind this process's other writers instead of meeting
    // them in SQLite's busy handler; an upsert, as a concurrent lookup may have stored it first.
    write_tx(conn, |conn| {
        crate::with_conn!(conn, |c| diesel::insert_into(t::table)
            .values((t::app_key.eq(app_key), t::mobile.eq(mobile), answer))
            .on_conflict((t::app_key, t::mobile))
            .do_update()
            .set(answer)
            .execute(c))
    })?;
    Ok(())
}

/// Looks phones up through the cache, asking DingTalk only on a miss.
pub struct UserIdCache {
    db: Db,
    clock: SharedClock,
    ttl: Duration,
    miss_ttl: Duration,
}

impl UserIdCache {
    pub fn new(db: Db, clock: SharedClock, ttl: Duration, miss_ttl: Duration) -> Self {
        Self {
            db,
            clock,
            ttl,
            miss_ttl,
        }
    }

    /// The cached answers for `mobiles`, in one query (see [`cached_many`]).
    pub async fn cached_many(
        &self,
        app_key: &str,
        mobiles: Vec<String>,
    ) -> Result<HashMap<String, Option<String>>, DbError> {
        if mobiles.is_empty() {
            return Ok(HashMap::new());
        }
        let (key, now) = (app_key.to_owned(), self.clock.now_ms());
        self.db
            .run(move |c| cached_many(c, &key, &mobiles, now))
            .await
    }

    pub async fn resolve(
        &self,
        client: &DingTalk,
        app: &App,
        mobile: &str,
    ) -> Result<MobileLookup, DbError> {
        let now = self.clock.now_ms();
        let (key, m) = (app.key.clone(), mobile.to_owned());
        if let Some(hit) = self.db.run(move |c| cached(c, &key, &m, now)).await? {
            return Ok(hit.map_or(MobileLookup::NotFound, MobileLookup::Found));
        }
        let answer = client.get_by_mobile(app, mobile).await;
        let (userid, ttl) = match &answer {
            MobileLookup::Found(u) => (Some(u.clone()), self.ttl),
            MobileLookup::NotFound => (None, self.miss_ttl),
            _ => return Ok(answer), // not an answer about the person: don't cache
        };
        let (key, m, now) = (app.key.clone(), mobile.to_owned(), self.clock.now_ms());
        self.db
            .write(move |c| store(c, &key, &m, userid.as_deref(), now, ttl))
            .await?;
        Ok(answer)
    }
}
