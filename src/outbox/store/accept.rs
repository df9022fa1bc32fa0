//! Accepting a message: it and its deliveries in one transaction, or the earlier message an
//! idempotency key names.

use super::log::deliveries_of;
use super::{Acceptance, Accepted, AcceptedMessage, NewMessage, FAILED, QUEUED};
use crate::db::schema::{deliveries as d, messages as m};
use crate::db::{DbConn, DbError};
use crate::domain::delivery::Target;
use crate::domain::ids::MessageId;
use diesel::prelude::*;
use diesel::result::Error as DieselError;

/// Persists the message and its deliveries, or finds the one an idempotency key names. Run it
/// in a write transaction ([`crate::db::Db::write`]).
pub fn accept(
    conn: &mut DbConn,
    msg: &NewMessage,
    a: &Acceptance,
) -> Result<AcceptedMessage, DbError> {
    let accepted = accept_in_tx(conn, msg, a)?;
    let rows = deliveries_of(conn, accepted.id())?;
    Ok((accepted, rows))
}

/// The message a concurrent request with the same idempotency key stored first (after
/// [`accept`] met the unique index).
pub fn replay(
    conn: &mut DbConn,
    app: &str,
    key: &str,
    a: &Acceptance,
) -> Result<AcceptedMessage, DbError> {
    let id = find_by_key(conn, app, key, a.now - a.idempotency_window_ms)?
        .ok_or(DbError::Query(DieselError::NotFound))?;
    let rows = deliveries_of(conn, &id)?;
    Ok((Accepted::Replay(id), rows))
}

fn accept_in_tx(
    conn: &mut DbConn,
    msg: &NewMessage,
    a: &Acceptance,
) -> Result<Accepted, DieselError> {
    let (now, give_up_at, idempotency_window_ms, claim) = (
        a.now,
        a.give_up_at,
        a.idempotency_window_ms,
        (a.claim.0.as_str(), a.claim.1),
    );

    if let Some(key) = &msg.idempotency_key {
        // A key older than the window is free again.
        diesel::update(
            m::table
                .filter(m::app_code.eq(&msg.caller.app_code))
                .filter(m::idempotency_key.eq(key))
                .filter(m::created_at.le(now - idempotency_window_ms)),
        )
        .set(m::idempotency_key.eq(None::<String>))
        .execute(conn)?;
        if let Some(id) = find_by_key(conn, &msg.caller.app_code, key, now - idempotency_window_ms)?
        {
            return Ok(Accepted::Replay(id));
        }
    }
    let id = MessageId::new(now).to_string();
    diesel::insert_into(m::table)
        .values((
            m::id.eq(&id),
            m::app_code.eq(&msg.caller.app_code),
            m::idempotency_key.eq(&msg.idempotency_key),
            m::channel.eq(&msg.channel),
            m::sender.eq(&msg.sender),
            m::request_id.eq(&msg.caller.request_id),
            m::body.eq(&msg.body),
            m::created_at.eq(now),
            m::tenant_id.eq(msg.caller.tenant_id.as_ref().map(|t| t.as_str())),
        ))
        .execute(conn)?;
    for nd in &msg.deliveries {
        diesel::insert_into(d::table)
            .values((
                d::message_id.eq(&id),
                d::receiver.eq(&nd.receiver),
                d::kind.eq(nd.kind.as_str()),
                d::target.eq(nd.target.as_ref().map(Target::stored).unwrap_or_default()),
                d::status.eq(if nd.failed.is_some() { FAILED } else { QUEUED }),
                d::attempts.eq(0),
                d::next_attempt_at.eq(nd.wait.as_ref().map_or(now, |w| w.0)),
                d::give_up_at.eq(give_up_at),
                d::last_error.eq(nd.failed.as_ref().or(nd.wait.as_ref().map(|w| &w.1))),
                d::dingtalk_code.eq(&nd.code),
                // Claimed by the accepting process, which attempts them at once.
                d::claimed_by.eq(nd.attempt_now().then_some(claim.0)),
                d::claimed_until.eq(nd.attempt_now().then_some(claim.1)),
                d::created_at.eq(now),
                d::updated_at.eq(now),
            ))
            .execute(conn)?;
    }
    Ok(Accepted::New(id))
}

/// The message an idempotency key names, if accepted within the window.
pub fn find_recent_by_key(
    conn: &mut DbConn,
    app: &str,
    key: &str,
    since: i64,
) -> Result<Option<String>, DbError> {
    Ok(find_by_key(conn, app, key, since)?)
}

fn find_by_key(
    conn: &mut DbConn,
    app: &str,
    key: &str,
    since: i64,
) -> Result<Option<String>, DieselError> {
    m::table
        .filter(m::app_code.eq(app))
        .filter(m::idempotency_key.eq(key))
        .filter(m::created_at.gt(since))
        .select(m::id)
        .get_result(conn)
        .optional()
}
