//! The schedule of a periodic directory sync (table `directory_syncs`, one row per provider):
//! it runs once per interval however many processes share the database.

use crate::db::schema::directory_syncs as ds;
use crate::db::{write_tx, DbConn, DbError};
use diesel::prelude::*;
use std::time::Duration;

/// A claim of a periodic sync: no other process claims it before `until`, and the claim is
/// lost once another one moved the schedule on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    schedule: &'static str,
    until: i64,
}

/// Claims the sync `schedule` if it is due at `now`, moving the next one `interval` on; only
/// the caller that moves it runs the sync, so processes sharing the database sync once per
/// interval between them.
pub fn claim(
    conn: &mut DbConn,
    schedule: &'static str,
    now: i64,
    interval: Duration,
) -> Result<Option<Lease>, DbError> {
    write_tx(conn, |conn| {
        crate::with_conn!(&mut *conn, |c| diesel::insert_into(ds::table)
            .values((ds::provider.eq(schedule), ds::next_sync_at.eq(now)))
            .on_conflict_do_nothing()
            .execute(c))?;
        let until = now + interval.as_millis() as i64;
        let claimed = diesel::update(ds::table.find(schedule).filter(ds::next_sync_at.le(now)))
            .set(ds::next_sync_at.eq(until))
            .execute(conn)?;
        Ok((claimed == 1).then_some(Lease { schedule, until }))
    })
}

/// Whether `lease` still holds: the schedule says what its claim wrote (a later claim writes a
/// later time). Rewriting it locks the row until the caller's transaction ends, so a claim
/// made meanwhile waits for the write to finish.
pub fn holds(conn: &mut DbConn, lease: Lease) -> Result<bool, DbError> {
    let same = diesel::update(
        ds::table
            .find(lease.schedule)
            .filter(ds::next_sync_at.eq(lease.until)),
    )
    .set(ds::next_sync_at.eq(lease.until))
    .execute(conn)?;
    Ok(same == 1)
}
