//! What DingTalk holds back, and the calls made, shared by every process on the database:
//! `dingtalk_egress` keeps the holds ([`Hold`]: the gateway's anti-abuse pause, the monthly
//! quota), one row each; `dingtalk_calls` the calls DingTalk answered per month and API. The
//! DingTalk client holds and counts in memory ([`Egress`]); a hold is kept here as it starts
//! ([`Store`]), and [`sync`] writes the counts and reads every process's holds back.

use crate::clock::SharedClock;
use crate::db::schema::{deliveries as d, dingtalk_calls as c, dingtalk_egress as t};
use crate::db::{write_tx, Db, DbConn, DbError};
use crate::dingtalk::egress::{Book, Egress, Hold, Scope};
use crate::domain::delivery::{DeliveryKind, DeliveryStatus};
use diesel::prelude::*;
use diesel::upsert::excluded;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

/// Keeps the holds of this process's client in the database.
pub struct Store {
    pub db: Db,
    pub clock: SharedClock,
}

impl Book for Store {
    fn keep(&self, hold: Hold) -> BoxFuture<'static, ()> {
        let (db, now) = (self.db.clone(), self.clock.now_ms());
        async move {
            let scope = hold.scope.name();
            if let Err(e) = db.write(move |conn| keep(conn, &hold, now)).await {
                tracing::error!(error = %e, scope, "cannot keep DingTalk's hold on the egress for the other processes; each finds it out from DingTalk");
            }
        }
        .boxed()
    }
}

/// Keeps `hold`, unless the one kept ends later.
pub fn keep(conn: &mut DbConn, hold: &Hold, now: i64) -> Result<(), DbError> {
    write_tx(conn, |conn| {
        let scope = hold.scope.name();
        let empty = (
            t::scope.eq(scope),
            t::until_ms.eq(0i64),
            t::code.eq(""),
            t::message.eq(""),
            t::updated_at.eq(now),
        );
        crate::with_conn!(&mut *conn, |c| diesel::insert_into(t::table)
            .values(empty)
            .on_conflict_do_nothing()
            .execute(c))?;
        // Locked, so of two processes the later end wins (SQLite's write transaction already
        // excludes other writers).
        let row = t::table.find(scope).select(t::until_ms);
        let kept: i64 = match conn {
            DbConn::Sqlite(c) => row.get_result(c)?,
            #[cfg(feature = "postgres")]
            DbConn::Pg(c) => row.for_update().get_result(c)?,
        };
        if hold.until > kept {
            diesel::update(t::table.find(scope))
                .set((
                    t::until_ms.eq(hold.until),
                    t::code.eq(&hold.code),
                    t::message.eq(&hold.message),
                    t::updated_at.eq(now),
                ))
                .execute(conn)?;
        }
        Ok(())
    })
}

/// Every hold kept (those over too: the client looks at their end).
pub fn holds(conn: &mut DbConn) -> Result<Vec<Hold>, DbError> {
    let rows: Vec<(String, i64, String, String)> = t::table
        .select((t::scope, t::until_ms, t::code, t::message))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|(scope, until, code, message)| {
            Some(Hold {
                scope: Scope::parse(&scope)?,
                until,
                code,
                message,
            })
        })
        .collect())
}

/// Lifts the holds in effect (an admin raised the quota), and makes the deliveries they kept
/// waiting due now (those of the kinds held that wait no longer than the hold would have):
/// answers the holds lifted and how many deliveries are due.
pub fn resume(conn: &mut DbConn, now: i64) -> Result<(Vec<Hold>, usize), DbError> {
    write_tx(conn, |conn| {
        let lifted: Vec<Hold> = holds(conn)?.into_iter().filter(|h| h.until > now).collect();
        diesel::update(t::table.filter(t::until_ms.gt(now)))
            .set((t::until_ms.eq(now), t::updated_at.eq(now)))
            .execute(conn)?;
        let mut due = 0;
        for h in &lifted {
            let kinds: Vec<&str> = DeliveryKind::ALL
                .into_iter()
                .filter(|k| h.scope == Scope::Pause || *k != DeliveryKind::Robot)
                .map(DeliveryKind::as_str)
                .collect();
            due += diesel::update(
                d::table
                    .filter(d::status.eq(DeliveryStatus::Queued.as_str()))
                    .filter(d::kind.eq_any(kinds))
                    .filter(d::next_attempt_at.gt(now))
                    .filter(d::next_attempt_at.le(h.until)),
            )
            .set(d::next_attempt_at.eq(now))
            .execute(conn)?;
        }
        Ok((lifted, due))
    })
}

/// Adds calls counted by one process.
pub fn add_calls(conn: &mut DbConn, counts: &[(String, &'static str, u64)]) -> Result<(), DbError> {
    write_tx(conn, |conn| {
        for (month, api, n) in counts {
            let row = (c::month.eq(month), c::api.eq(*api), c::calls.eq(*n as i64));
            crate::with_conn!(&mut *conn, |conn| diesel::insert_into(c::table)
                .values(row)
                .on_conflict((c::month, c::api))
                .do_update()
                .set(c::calls.eq(c::calls + excluded(c::calls)))
                .execute(conn))?;
        }
        Ok(())
    })
}

/// The calls of every process from `month` on (`2026-11`), newest month first: `(month, api,
/// calls)`.
pub fn calls_since(conn: &mut DbConn, month: &str) -> Result<Vec<(String, String, i64)>, DbError> {
    Ok(c::table
        .filter(c::month.ge(month))
        .order((c::month.desc(), c::api))
        .select((c::month, c::api, c::calls))
        .load(conn)?)
}

/// Writes the calls `egress` counted and takes in every process's holds.
pub async fn sync(db: &Db, egress: &Egress, now: i64) {
    let counts = egress.take_counts();
    if !counts.is_empty() {
        let written = counts.clone();
        if let Err(e) = db.write(move |conn| add_calls(conn, &written)).await {
            tracing::warn!(error = %e, "cannot count the DingTalk calls in the database; counted with the next ones");
            egress.give_back(counts);
        }
    }
    let epoch = egress.epoch();
    match db.run(holds).await {
        Ok(kept) => egress.adopt(kept, epoch, now),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read DingTalk's holds on the egress from the database")
        }
    }
}
