//! What DingTalk holds back, and the calls made, shared by every process on the database:
//! `dingtalk_egress` keeps the holds ([`Hold`]: the gateway's anti-abuse pause, the monthly
//! quota), one row each, with how many times an admin lifted it (`lifts`); `dingtalk_calls`
//! the calls DingTalk answered per month and API. The DingTalk client holds and counts in
//! memory ([`Egress`]); a hold is kept here as it starts ([`Store`]), and [`sync`] writes the
//! counts and reads every process's holds back. A delivery a hold defers is marked with its
//! scope (`deliveries.held_by`), so [`resume`] makes due only those.

use crate::clock::SharedClock;
use crate::db::schema::{deliveries as d, dingtalk_calls as c, dingtalk_egress as t};
use crate::db::{write_tx, Db, DbConn, DbError};
use crate::dingtalk::egress::{Book, Egress, Hold, Kept, Scope};
use crate::domain::delivery::DeliveryStatus;
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
    fn keep(&self, hold: Hold, lifts: i64) -> BoxFuture<'static, ()> {
        let (db, now) = (self.db.clone(), self.clock.now_ms());
        async move {
            let scope = hold.scope.name();
            if let Err(e) = db.write(move |conn| keep(conn, &hold, lifts, now)).await {
                tracing::error!(error = %e, scope, "cannot keep DingTalk's hold on the egress for the other processes; each finds it out from DingTalk");
            }
        }
        .boxed()
    }

    fn read(&self) -> BoxFuture<'static, Option<Vec<Kept>>> {
        let db = self.db.clone();
        async move {
            db.run(holds)
                .await
                .map_err(|e| tracing::warn!(error = %e, "cannot read DingTalk's holds on the egress from the database"))
                .ok()
        }
        .boxed()
    }
}

/// The client's egress on `db`: the holds it starts kept there, and those kept there already
/// known (and the quota's admin message logged) before its first call.
pub fn egress_on(db: &Db, clock: SharedClock, egress: Egress) -> std::sync::Arc<Egress> {
    let egress = std::sync::Arc::new(egress);
    egress.keep_in(std::sync::Arc::new(Store {
        db: db.clone(),
        clock: clock.clone(),
    }));
    match db.get().and_then(|mut c| holds(&mut c)) {
        Ok(kept) => egress.adopt(kept, clock.now_ms()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read DingTalk's holds on the egress from the database")
        }
    }
    egress
}

/// Keeps `hold`, taken when its scope had been lifted `lifts` times, unless the one kept ends
/// later or the scope was lifted since (the hold is from before the lift).
pub fn keep(conn: &mut DbConn, hold: &Hold, lifts: i64, now: i64) -> Result<(), DbError> {
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
        let row = t::table.find(scope).select((t::until_ms, t::lifts));
        let (kept, lifted): (i64, i64) = match conn {
            DbConn::Sqlite(c) => row.get_result(c)?,
            #[cfg(feature = "postgres")]
            DbConn::Pg(c) => row.for_update().get_result(c)?,
        };
        if hold.until > kept && lifts >= lifted {
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

/// Every hold kept (those over too: the client looks at their end and lifts).
pub fn holds(conn: &mut DbConn) -> Result<Vec<Kept>, DbError> {
    let rows: Vec<(String, i64, String, String, i64)> = t::table
        .select((t::scope, t::until_ms, t::code, t::message, t::lifts))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|(scope, until, code, message, lifts)| {
            let hold = Hold {
                scope: Scope::parse(&scope)?,
                until,
                code,
                message,
            };
            Some(Kept { hold, lifts })
        })
        .collect())
}

/// Lifts the holds in effect (an admin raised the quota): every process sees the lift at its
/// next read, whatever its clock; and makes the deliveries they deferred due (as of when they
/// were deferred: due for every process at once): answers the holds lifted and how many
/// deliveries are due.
pub fn resume(conn: &mut DbConn, now: i64) -> Result<(Vec<Hold>, usize), DbError> {
    write_tx(conn, |conn| {
        let lifted: Vec<Hold> = holds(conn)?
            .into_iter()
            .map(|k| k.hold)
            .filter(|h| h.until > now)
            .collect();
        let scopes: Vec<&str> = lifted.iter().map(|h| h.scope.name()).collect();
        diesel::update(t::table.filter(t::scope.eq_any(&scopes)))
            .set((
                t::until_ms.eq(0i64),
                t::lifts.eq(t::lifts + 1),
                t::updated_at.eq(now),
            ))
            .execute(conn)?;
        let due = diesel::update(
            d::table
                .filter(d::status.eq(DeliveryStatus::Queued.as_str()))
                .filter(d::held_by.eq_any(&scopes)),
        )
        .set((
            d::next_attempt_at.eq(d::updated_at),
            d::held_by.eq(None::<String>),
        ))
        .execute(conn)?;
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
    match db.run(holds).await {
        Ok(kept) => egress.adopt(kept, now),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read DingTalk's holds on the egress from the database")
        }
    }
}
