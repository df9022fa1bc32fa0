//! Accepting a message: it and its deliveries in one transaction, or the earlier message an
//! idempotency key names.

use super::log::deliveries_of;
use super::{Acceptance, Accepted, AcceptedMessage, NewDelivery, NewMessage, FAILED, QUEUED};
use crate::db::models::DeliveryRow;
use crate::db::schema::{deliveries as d, messages as m};
use crate::db::{DbConn, DbError};
use crate::domain::delivery::Target;
use crate::domain::ids::MessageId;
use diesel::prelude::*;
use diesel::result::Error as DieselError;

/// Persists the message and its deliveries, or finds the one an idempotency key names. Run it
/// in a write transaction ([`crate::db::Db::write_new`]).
pub fn accept(
    conn: &mut DbConn,
    msg: &NewMessage,
    a: &Acceptance,
) -> Result<AcceptedMessage, DbError> {
    if let Some(id) = replayed(conn, msg, a)? {
        let rows = deliveries_of(conn, &id)?;
        return Ok((Accepted::Replay(id), rows));
    }
    let id = MessageId::new(a.now).to_string();
    let rows = insert(conn, &id, msg, a)?;
    Ok((Accepted::New(id), rows))
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

/// The message accepted earlier under the message's idempotency key, if any.
fn replayed(
    conn: &mut DbConn,
    msg: &NewMessage,
    a: &Acceptance,
) -> Result<Option<String>, DieselError> {
    let Some(key) = &msg.idempotency_key else {
        return Ok(None);
    };
    let since = a.now - a.idempotency_window_ms;
    // A key older than the window is free again.
    diesel::update(
        m::table
            .filter(m::app_code.eq(&msg.caller.app_code))
            .filter(m::idempotency_key.eq(key))
            .filter(m::created_at.le(since)),
    )
    .set(m::idempotency_key.eq(None::<String>))
    .execute(conn)?;
    find_by_key(conn, &msg.caller.app_code, key, since)
}

/// A delivery's columns as accepted.
struct Accepting<'a> {
    receiver: &'a str,
    kind: &'static str,
    target: String,
    status: &'static str,
    next_attempt_at: i64,
    last_error: Option<&'a str>,
    code: Option<&'a str>,
    /// Claimed by the accepting process, which attempts them at once.
    claimed_by: Option<&'a str>,
    claimed_until: Option<i64>,
}

impl<'a> Accepting<'a> {
    fn new(nd: &'a NewDelivery, a: &'a Acceptance) -> Self {
        let now_or_claimed = nd.attempt_now();
        Self {
            receiver: &nd.receiver,
            kind: nd.kind.as_str(),
            target: nd.target.as_ref().map(Target::stored).unwrap_or_default(),
            status: if nd.failed.is_some() { FAILED } else { QUEUED },
            next_attempt_at: nd.wait.as_ref().map_or(a.now, |w| w.0),
            last_error: nd
                .failed
                .as_deref()
                .or(nd.wait.as_ref().map(|w| w.1.as_str())),
            code: nd.code.as_deref(),
            claimed_by: now_or_claimed.then_some(a.claim.0.as_str()),
            claimed_until: now_or_claimed.then_some(a.claim.1),
        }
    }
}

/// Writes the message `id` and its deliveries; answers the deliveries as stored.
fn insert(
    conn: &mut DbConn,
    id: &str,
    msg: &NewMessage,
    a: &Acceptance,
) -> Result<Vec<DeliveryRow>, DbError> {
    let rows: Vec<Accepting> = msg
        .deliveries
        .iter()
        .map(|nd| Accepting::new(nd, a))
        .collect();
    #[cfg(feature = "postgres")]
    if let DbConn::Pg(c) = conn {
        return insert_pg(c, id, msg, a, rows);
    }
    let now = a.now;
    diesel::insert_into(m::table)
        .values((
            m::id.eq(id),
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
    for r in rows {
        diesel::insert_into(d::table)
            .values((
                d::message_id.eq(id),
                d::receiver.eq(r.receiver),
                d::kind.eq(r.kind),
                d::target.eq(r.target),
                d::status.eq(r.status),
                d::attempts.eq(0),
                d::next_attempt_at.eq(r.next_attempt_at),
                d::give_up_at.eq(a.give_up_at),
                d::last_error.eq(r.last_error),
                d::dingtalk_code.eq(r.code),
                d::claimed_by.eq(r.claimed_by),
                d::claimed_until.eq(r.claimed_until),
                d::created_at.eq(now),
                d::updated_at.eq(now),
            ))
            .execute(conn)?;
    }
    deliveries_of(conn, id)
}

/// [`insert`] on PostgreSQL: the message and all its deliveries in one prepared statement,
/// which answers the rows too (one round trip instead of one per row and a read).
#[cfg(feature = "postgres")]
fn insert_pg(
    c: &mut diesel::pg::PgConnection,
    id: &str,
    msg: &NewMessage,
    a: &Acceptance,
    rows: Vec<Accepting>,
) -> Result<Vec<DeliveryRow>, DbError> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text};
    let mut stored: Vec<DeliveryRow> = crate::db::prepared::Prepared::new(
        "WITH m AS (INSERT INTO messages (id, app_code, idempotency_key, channel, sender, request_id, body, \
         created_at, tenant_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id) \
         INSERT INTO deliveries (message_id, receiver, kind, target, status, attempts, next_attempt_at, \
         give_up_at, last_error, dingtalk_code, claimed_by, claimed_until, created_at, updated_at) \
         SELECT m.id, r.receiver, r.kind, r.target, r.status, 0, r.next_attempt_at, $10, r.last_error, \
         r.code, r.claimed_by, r.claimed_until, $8, $8 \
         FROM m, unnest($11, $12, $13, $14, $15, $16, $17, $18, $19) WITH ORDINALITY \
         AS r (receiver, kind, target, status, next_attempt_at, last_error, code, claimed_by, claimed_until, n) \
         ORDER BY r.n RETURNING *",
    )
    .bind::<Text, _>(id)
    .bind::<Text, _>(&msg.caller.app_code)
    .bind::<Nullable<Text>, _>(&msg.idempotency_key)
    .bind::<Text, _>(&msg.channel)
    .bind::<Nullable<Text>, _>(&msg.sender)
    .bind::<Text, _>(&msg.caller.request_id)
    .bind::<Text, _>(&msg.body)
    .bind::<BigInt, _>(a.now)
    .bind::<Nullable<Text>, _>(msg.caller.tenant_id.as_ref().map(|t| t.as_str()))
    .bind::<BigInt, _>(a.give_up_at)
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.receiver).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.kind).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.target.as_str()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.status).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.next_attempt_at).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.last_error).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.code).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.claimed_by).collect::<Vec<_>>())
    .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.claimed_until).collect::<Vec<_>>())
    .load(c)?;
    stored.sort_by_key(|r| r.id);
    Ok(stored)
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
