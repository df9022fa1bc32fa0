//! Group-robot pacing, shared by every process through the database: a token bucket per robot
//! (capacity `burst`, one token per `window / limit`, kept as a GCRA "theoretical arrival time"
//! in `robot_state`) and never more than `limit` sends in any `window` (counted in
//! `robot_sends`). Slots are taken in one transaction, so two servers never overspend a robot;
//! every process updates these rows, so the sender writes them alone (`Db::write_alone`), not in
//! a group's transaction.

pub use crate::channels::settings::{RobotLimit, RobotLimits, DEFAULT};
use crate::db::schema::{robot_sends as rs, robot_state as st};
use crate::db::{write_tx, DbConn, DbError};
use diesel::prelude::*;

/// DingTalk counts a send when it arrives, we when we reserve it: the sends of one batch and
/// network delays arrive later than reserved. Counting each send this much longer keeps us
/// under DingTalk's count at the window's edge.
const ARRIVAL_MARGIN_MS: i64 = 1_000;

/// What `take_slots` granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    pub granted: u32,
    /// When the next slot opens (meaningful when fewer than wanted were granted).
    pub next_at: i64,
    /// Why not more, for the delivery log.
    pub waiting_for: String,
}

impl Slots {
    /// Why a delivery waits, for the delivery log.
    pub fn reason(&self) -> String {
        format!("waiting for a send slot: {}", self.waiting_for)
    }
}

/// How many sends `robot` may make now (without taking them): a cheap check before the work
/// of building digests. `take_slots` decides.
pub fn available(
    conn: &mut DbConn,
    robot: &str,
    now: i64,
    limit: RobotLimit,
) -> Result<Slots, DbError> {
    let state: Option<(i64, i64)> = st::table
        .find(robot)
        .select((st::tat, st::paused_until))
        .get_result(conn)
        .optional()?;
    let (tat, paused_until) = state.unwrap_or((now, 0));
    let mut recent = recent_sends(conn, robot, now, limit)?;
    Ok(grant(tat, paused_until, &mut recent, now, limit, limit.limit).1)
}

/// Takes up to `wanted` send slots of `robot` now, recording them in `robot_sends`.
pub fn take_slots(
    conn: &mut DbConn,
    robot: &str,
    wanted: u32,
    now: i64,
    limit: RobotLimit,
) -> Result<Slots, DbError> {
    write_tx(conn, |conn| {
        let (tat, paused_until) = lock_state(conn, robot, now)?;
        let mut recent = recent_sends(conn, robot, now, limit)?;
        let (tat, slots) = grant(tat, paused_until, &mut recent, now, limit, wanted);
        if slots.granted > 0 {
            for _ in 0..slots.granted {
                diesel::insert_into(rs::table)
                    .values((rs::robot.eq(robot), rs::sent_at.eq(now)))
                    .execute(conn)?;
            }
            diesel::update(st::table.find(robot))
                .set(st::tat.eq(tat))
                .execute(conn)?;
            // History beyond any window is no longer needed.
            diesel::delete(
                rs::table
                    .filter(rs::robot.eq(robot))
                    .filter(rs::sent_at.lt(now - limit.window_ms.max(3_600_000))),
            )
            .execute(conn)?;
        }
        Ok(slots)
    })
}

/// The sends in the window that matter: the latest `limit` of them, oldest first.
fn recent_sends(
    conn: &mut DbConn,
    robot: &str,
    now: i64,
    limit: RobotLimit,
) -> Result<Vec<i64>, DbError> {
    let mut recent: Vec<i64> = rs::table
        .filter(rs::robot.eq(robot))
        .filter(rs::sent_at.gt(now - limit.window_ms - ARRIVAL_MARGIN_MS))
        .order(rs::sent_at.desc())
        .limit(i64::from(limit.limit))
        .select(rs::sent_at)
        .load(conn)?;
    recent.reverse();
    Ok(recent)
}

/// The pacing rules: answers the new theoretical arrival time and what may be sent now.
fn grant(
    mut tat: i64,
    paused_until: i64,
    recent: &mut Vec<i64>,
    now: i64,
    limit: RobotLimit,
    wanted: u32,
) -> (i64, Slots) {
    let t = limit.interval_ms();
    let mut granted = 0;
    let (next_at, waiting_for) = loop {
        if paused_until > now {
            break (
                paused_until,
                "DingTalk paused this robot after throttling it".to_owned(),
            );
        }
        if recent.len() >= limit.limit as usize {
            let oldest_counted = recent[recent.len() - limit.limit as usize];
            break (
                oldest_counted + limit.window_ms + ARRIVAL_MARGIN_MS,
                format!("robot's send window is full ({})", limit.describe()),
            );
        }
        let earliest = tat - i64::from(limit.burst.saturating_sub(1)) * t;
        if now < earliest {
            break (
                earliest,
                format!(
                    "robot pacing ({}, bursts of {})",
                    limit.describe(),
                    limit.burst
                ),
            );
        }
        if granted == wanted {
            break (now, String::new());
        }
        tat = tat.max(now) + t;
        recent.push(now);
        granted += 1;
    };
    (
        tat,
        Slots {
            granted,
            next_at,
            waiting_for,
        },
    )
}

/// Silences a robot until `until` (DingTalk throttled it).
pub fn pause(conn: &mut DbConn, robot: &str, now: i64, until: i64) -> Result<(), DbError> {
    write_tx(conn, |conn| {
        lock_state(conn, robot, now)?;
        diesel::update(st::table.find(robot))
            .set(st::paused_until.eq(until))
            .execute(conn)?;
        Ok(())
    })
}

/// The robot's state row, created if missing and locked for this transaction (PostgreSQL;
/// SQLite's write transaction already excludes other writers).
fn lock_state(conn: &mut DbConn, robot: &str, now: i64) -> Result<(i64, i64), DbError> {
    let fresh = (
        st::robot.eq(robot),
        st::tat.eq(now),
        st::paused_until.eq(0i64),
    );
    crate::with_conn!(&mut *conn, |c| diesel::insert_into(st::table)
        .values(fresh)
        .on_conflict_do_nothing()
        .execute(c))?;
    let row = st::table.find(robot).select((st::tat, st::paused_until));
    Ok(match conn {
        DbConn::Sqlite(c) => row.get_result(c)?,
        #[cfg(feature = "postgres")]
        DbConn::Pg(c) => row.for_update().get_result(c)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval_and_never_over_the_window() {
        let l = RobotLimit {
            limit: 4,
            window_ms: 8_000,
            burst: 2,
        }; // one per 2 s
        let mut recent = vec![];
        let (tat, s) = grant(0, 0, &mut recent, 10_000, l, 10);
        assert_eq!(s.granted, 2, "the burst");
        assert_eq!(s.next_at, 12_000);
        let (tat, s) = grant(tat, 0, &mut recent, 12_000, l, 10);
        assert_eq!(s.granted, 1);
        let (tat, s) = grant(tat, 0, &mut recent, 14_000, l, 10);
        assert_eq!(s.granted, 1);
        // 4 sends since 10 000: the window (plus margin) holds until 10 000 + 8 000 + 1 000.
        let (_, s) = grant(tat, 0, &mut recent, 16_000, l, 10);
        assert_eq!((s.granted, s.next_at), (0, 19_000));
        assert!(s.waiting_for.contains("window is full (4 per 8 s)"));
        let (_, s) = grant(0, 30_000, &mut vec![], 20_000, l, 10);
        assert_eq!((s.granted, s.next_at), (0, 30_000), "paused");
    }

    #[test]
    fn the_default_is_one_send_every_three_seconds() {
        assert_eq!(DEFAULT.interval_ms(), 3000);
    }
}
