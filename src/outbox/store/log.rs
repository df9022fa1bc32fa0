//! The delivery log as read back: messages, deliveries, attempts, the queue.

use super::{FAILED, QUEUED};
use crate::db::models::{AttemptRow, DeliveryRow, MessageRow};
use crate::db::schema::{deliveries as d, delivery_attempts as a, messages as m};
use crate::db::{one_by_one, DbConn, DbError};
use diesel::prelude::*;
use std::collections::HashMap;

pub fn message(conn: &mut DbConn, id: &str) -> Result<Option<MessageRow>, DbError> {
    Ok(m::table
        .find(id)
        .select(MessageRow::as_select())
        .get_result(conn)
        .optional()?)
}

/// The bodies of the messages `ids` names, by id (a message gone is missing).
pub fn bodies(conn: &mut DbConn, ids: &[&str]) -> Result<HashMap<String, String>, DbError> {
    let mut found = HashMap::with_capacity(ids.len());
    if one_by_one(conn, ids.len()) {
        for id in ids {
            let body = m::table
                .find(id)
                .select(m::body)
                .get_result(conn)
                .optional()?;
            found.extend(body.map(|b| (id.to_string(), b)));
        }
        return Ok(found);
    }
    for chunk in ids.chunks(super::RECORD_CHUNK) {
        found.extend(
            m::table
                .filter(m::id.eq_any(chunk))
                .select((m::id, m::body))
                .load::<(String, String)>(conn)?,
        );
    }
    Ok(found)
}

pub fn deliveries_of(conn: &mut DbConn, message_id: &str) -> Result<Vec<DeliveryRow>, DbError> {
    Ok(d::table
        .filter(d::message_id.eq(message_id))
        .order(d::id)
        .select(DeliveryRow::as_select())
        .load(conn)?)
}

pub fn attempts_of(conn: &mut DbConn, delivery_ids: &[i64]) -> Result<Vec<AttemptRow>, DbError> {
    Ok(a::table
        .filter(a::delivery_id.eq_any(delivery_ids))
        .order((a::delivery_id, a::attempt))
        .select(AttemptRow::as_select())
        .load(conn)?)
}

pub fn recent_messages(
    conn: &mut DbConn,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<(MessageRow, Vec<DeliveryRow>)>, DbError> {
    let mut q = m::table
        .order(m::created_at.desc())
        .select(MessageRow::as_select())
        .limit(limit)
        .into_boxed();
    if let Some(s) = status {
        q = q.filter(
            m::id.eq_any(
                d::table
                    .filter(d::status.eq(s.to_owned()))
                    .select(d::message_id),
            ),
        );
    }
    let msgs: Vec<MessageRow> = q.load(conn)?;
    let ids: Vec<&str> = msgs.iter().map(|m| m.id.as_str()).collect();
    let all: Vec<DeliveryRow> = d::table
        .filter(d::message_id.eq_any(&ids))
        .order(d::id)
        .select(DeliveryRow::as_select())
        .load(conn)?;
    Ok(msgs
        .into_iter()
        .map(|msg| {
            let ds = all
                .iter()
                .filter(|x| x.message_id == msg.id)
                .cloned()
                .collect();
            (msg, ds)
        })
        .collect())
}

/// Queues a message's failed deliveries again (`deliveries retry`); answers how many.
pub fn retry_failed(
    conn: &mut DbConn,
    message_id: &str,
    now: i64,
    give_up_at: i64,
) -> Result<usize, DbError> {
    Ok(diesel::update(
        d::table
            .filter(d::message_id.eq(message_id))
            .filter(d::status.eq(FAILED))
            .filter(d::target.ne("")),
    )
    .set((
        d::status.eq(QUEUED),
        d::next_attempt_at.eq(now),
        d::give_up_at.eq(give_up_at),
        d::updated_at.eq(now),
    ))
    .execute(conn)?)
}

/// Fails a message's queued deliveries no process is sending now (`deliveries recall`): what
/// was not sent yet is not sent after the recall. Answers their ids.
pub fn withdraw_queued(
    conn: &mut DbConn,
    message_id: &str,
    now: i64,
    why: &str,
) -> Result<Vec<i64>, DbError> {
    conn.transaction(|conn| {
        let idle = d::claimed_until.is_null().or(d::claimed_until.lt(now));
        let ids: Vec<i64> = d::table
            .filter(d::message_id.eq(message_id))
            .filter(d::status.eq(QUEUED))
            .filter(idle)
            .select(d::id)
            .load(conn)?;
        diesel::update(d::table.filter(d::id.eq_any(&ids)))
            .set((
                d::status.eq(FAILED),
                d::last_error.eq(why),
                d::claimed_by.eq(None::<String>),
                d::claimed_until.eq(None::<i64>),
                d::updated_at.eq(now),
            ))
            .execute(conn)?;
        Ok(ids)
    })
}

/// Queued deliveries: the queue depth.
pub fn queue_depth(conn: &mut DbConn) -> Result<i64, DbError> {
    Ok(d::table
        .filter(d::status.eq(QUEUED))
        .count()
        .get_result(conn)?)
}

/// The earliest `next_attempt_at` of what the poller could claim, so it knows how long it may
/// sleep. Rows claimed by someone (a hand-over in flight) don't count: waking for them would
/// spin; an expired claim is found by the regular poll.
pub fn next_due(conn: &mut DbConn, now: i64) -> Result<Option<i64>, DbError> {
    Ok(d::table
        .filter(d::status.eq(QUEUED))
        .filter(d::claimed_until.is_null().or(d::claimed_until.lt(now)))
        // In index order, stopping at the first: `min()` would read every queued row.
        .order(d::next_attempt_at)
        .select(d::next_attempt_at)
        .first(conn)
        .optional()?)
}
