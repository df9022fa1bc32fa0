//! The heartbeat table `processes`: a row per process that holds claims, and the take-over of
//! a dead one's claims (the rules are in `outbox/heartbeat.rs`).

use super::QUEUED;
use crate::db::schema::{deliveries as d, processes as p};
use crate::db::{write_tx, DbConn, DbError};
use diesel::prelude::*;

/// One process's row.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = p)]
pub struct ProcessRow {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub started_at: i64,
    pub beat_at: i64,
    pub beats: i64,
}

/// Adds this process's row (its first beat).
pub fn register(conn: &mut DbConn, row: &ProcessRow) -> Result<(), DbError> {
    write_tx(conn, |conn| {
        diesel::insert_into(p::table).values(row).execute(conn)?;
        Ok(())
    })
}

/// One beat; answers false when the row is gone: the process was taken for dead and its
/// claims were taken over.
pub fn beat(conn: &mut DbConn, id: &str, at: i64) -> Result<bool, DbError> {
    let n = write_tx(conn, |conn| {
        diesel::update(p::table.filter(p::id.eq(id)))
            .set((p::beats.eq(p::beats + 1), p::beat_at.eq(at)))
            .execute(conn)
    })?;
    Ok(n == 1)
}

pub fn list(conn: &mut DbConn) -> Result<Vec<ProcessRow>, DbError> {
    Ok(p::table
        .select(ProcessRow::as_select())
        .order(p::started_at)
        .load(conn)?)
}

/// Takes over the claims of process `id`, if its beat count is still `beats`: its row goes and
/// its queued deliveries are released for any poller to claim, in one transaction, so that a
/// beat landing meanwhile (on PostgreSQL it waits for the row's lock) keeps them its own.
/// Answers how many deliveries were released, `None` when it beat after all.
pub fn take_over(conn: &mut DbConn, id: &str, beats: i64) -> Result<Option<usize>, DbError> {
    write_tx(conn, |conn| {
        let gone = diesel::delete(p::table.filter(p::id.eq(id)).filter(p::beats.eq(beats)))
            .execute(conn)?;
        if gone == 0 {
            return Ok(None);
        }
        // Process ids are digits, a dash and hex: nothing LIKE reads as a pattern.
        let released = diesel::update(
            d::table
                .filter(d::status.eq(QUEUED))
                .filter(d::claimed_by.like(format!("{id}-%"))),
        )
        .set((
            d::claimed_by.eq(None::<String>),
            d::claimed_until.eq(None::<i64>),
        ))
        .execute(conn)?;
        Ok(Some(released))
    })
}

/// Removes the row of a process that stops with nothing in flight.
pub fn retire(conn: &mut DbConn, id: &str) -> Result<(), DbError> {
    write_tx(conn, |conn| {
        diesel::delete(p::table.filter(p::id.eq(id))).execute(conn)?;
        Ok(())
    })
}
