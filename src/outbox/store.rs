//! The outbox tables: a message and its deliveries are written in one transaction before
//! anything is sent; workers claim due deliveries with a lease and record each attempt.

use crate::db::models::{AttemptRow, DeliveryRow, MessageRow};
use crate::db::schema::{deliveries as d, delivery_attempts as a, messages as m};
use crate::db::{write_tx, DbConn, DbError};
use crate::domain::delivery::{DeliveryKind, Target};
use crate::domain::ids::{ClaimToken, MessageId};
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sql_types::{BigInt, Nullable, Text};
use std::collections::HashMap;

pub const QUEUED: &str = "queued";
pub const SENT: &str = "sent";
pub const FAILED: &str = "failed";

pub struct NewDelivery {
    pub receiver: String,
    pub kind: DeliveryKind,
    /// `None` when it failed before it had one.
    pub target: Option<Target>,
    /// `Some(reason)`: failed before any attempt (unknown user, no telephone, …).
    pub failed: Option<String>,
    /// DingTalk's code, when DingTalk refused it before any attempt (a phone lookup).
    pub code: Option<String>,
    /// `Some((at, reason))`: its robot can't send before `at`; it is queued for then, not
    /// attempted now.
    pub wait: Option<(i64, String)>,
}

impl NewDelivery {
    pub fn attempt_now(&self) -> bool {
        self.failed.is_none() && self.wait.is_none()
    }
}

pub struct NewMessage {
    pub app_code: String,
    pub idempotency_key: Option<String>,
    pub channel: String,
    pub sender: Option<String>,
    pub request_id: String,
    /// The validated message, as JSON.
    pub body: String,
    pub deliveries: Vec<NewDelivery>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    New(String),
    /// The same (app, idempotency key) was accepted before, within the window.
    Replay(String),
}

impl Accepted {
    pub fn id(&self) -> &str {
        match self {
            Self::New(id) | Self::Replay(id) => id,
        }
    }
}

/// An accepted message and its deliveries as stored.
pub type AcceptedMessage = (Accepted, Vec<DeliveryRow>);

/// What accepting a message needs besides the message.
#[derive(Debug, Clone)]
pub struct Acceptance {
    pub now: i64,
    pub give_up_at: i64,
    pub idempotency_window_ms: i64,
    /// The claim token and lease end the deliveries are created with (the accepting process
    /// attempts them at once).
    pub claim: (String, i64),
}

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
                .filter(m::app_code.eq(&msg.app_code))
                .filter(m::idempotency_key.eq(key))
                .filter(m::created_at.le(now - idempotency_window_ms)),
        )
        .set(m::idempotency_key.eq(None::<String>))
        .execute(conn)?;
        if let Some(id) = find_by_key(conn, &msg.app_code, key, now - idempotency_window_ms)? {
            return Ok(Accepted::Replay(id));
        }
    }
    let id = MessageId::new(now).to_string();
    diesel::insert_into(m::table)
        .values((
            m::id.eq(&id),
            m::app_code.eq(&msg.app_code),
            m::idempotency_key.eq(&msg.idempotency_key),
            m::channel.eq(&msg.channel),
            m::sender.eq(&msg.sender),
            m::request_id.eq(&msg.request_id),
            m::body.eq(&msg.body),
            m::created_at.eq(now),
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

pub fn message(conn: &mut DbConn, id: &str) -> Result<Option<MessageRow>, DbError> {
    Ok(m::table
        .find(id)
        .select(MessageRow::as_select())
        .get_result(conn)
        .optional()?)
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

/// Claims up to `limit` due deliveries (optionally of one message) for `lease_ms`, under the
/// claim token `claim`. Expired claims of a dead process are due again. On PostgreSQL
/// concurrent claimers skip each other's rows (`FOR UPDATE SKIP LOCKED`).
pub fn claim(
    conn: &mut DbConn,
    claim: &str,
    now: i64,
    lease_ms: i64,
    limit: i64,
    message_id: Option<&str>,
) -> Result<Vec<DeliveryRow>, DbError> {
    let until = now + lease_ms;
    write_tx(conn, |conn| {
        let ids = claim_statement(conn, claim, now, until, limit, message_id)?;
        claimed(conn, &ids)
    })
}

/// The rows just claimed, by id: the claim columns have no index, and a query on them would
/// walk every queued row.
fn claimed(conn: &mut DbConn, ids: &[i64]) -> Result<Vec<DeliveryRow>, DbError> {
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(RECORD_CHUNK) {
        rows.extend(
            d::table
                .filter(d::id.eq_any(chunk))
                .select(DeliveryRow::as_select())
                .load(conn)?,
        );
    }
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

fn claim_statement(
    conn: &mut DbConn,
    claim: &str,
    now: i64,
    until: i64,
    limit: i64,
    message_id: Option<&str>,
) -> Result<Vec<i64>, DbError> {
    let ids: Vec<Claimed> = match conn {
        DbConn::Sqlite(c) => diesel::sql_query(
            "UPDATE deliveries SET claimed_by = ?, claimed_until = ? WHERE id IN (SELECT id FROM deliveries \
             WHERE status = 'queued' AND next_attempt_at <= ? AND (claimed_until IS NULL OR claimed_until < ?) \
             AND (? IS NULL OR message_id = ?) ORDER BY next_attempt_at, id LIMIT ?) RETURNING id",
        )
        .bind::<Text, _>(claim)
        .bind::<BigInt, _>(until)
        .bind::<BigInt, _>(now)
        .bind::<BigInt, _>(now)
        .bind::<Nullable<Text>, _>(message_id)
        .bind::<Nullable<Text>, _>(message_id)
        .bind::<BigInt, _>(limit)
        .load(c)?,
        #[cfg(feature = "postgres")]
        DbConn::Pg(c) => diesel::sql_query(
            "UPDATE deliveries SET claimed_by = $1, claimed_until = $2 WHERE id IN (SELECT id FROM deliveries \
             WHERE status = 'queued' AND next_attempt_at <= $3 AND (claimed_until IS NULL OR claimed_until < $3) \
             AND ($4::text IS NULL OR message_id = $4) ORDER BY next_attempt_at, id LIMIT $5 FOR UPDATE SKIP LOCKED) RETURNING id",
        )
        .bind::<Text, _>(claim)
        .bind::<BigInt, _>(until)
        .bind::<BigInt, _>(now)
        .bind::<Nullable<Text>, _>(message_id)
        .bind::<BigInt, _>(limit)
        .load(c)?,
    };
    Ok(ids.into_iter().map(|c| c.id).collect())
}

/// Claims the deliveries waiting for a robot (due or not, oldest first), so a send that is
/// happening anyway carries them too; answers them with their message bodies.
pub fn claim_robot_backlog(
    conn: &mut DbConn,
    robot: &str,
    claim: &str,
    now: i64,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<(DeliveryRow, String)>, DbError> {
    let until = now + lease_ms;
    let rows = write_tx(conn, |conn| {
        let ids: Vec<Claimed> = match conn {
            DbConn::Sqlite(c) => diesel::sql_query(
                "UPDATE deliveries SET claimed_by = ?, claimed_until = ? WHERE id IN (SELECT id FROM deliveries \
                 WHERE target = ? AND status = 'queued' AND kind = 'robot' \
                 AND (claimed_until IS NULL OR claimed_until < ?) ORDER BY created_at, id LIMIT ?) RETURNING id",
            )
            .bind::<Text, _>(claim)
            .bind::<BigInt, _>(until)
            .bind::<Text, _>(robot)
            .bind::<BigInt, _>(now)
            .bind::<BigInt, _>(limit)
            .load(c)?,
            #[cfg(feature = "postgres")]
            DbConn::Pg(c) => diesel::sql_query(
                "UPDATE deliveries SET claimed_by = $1, claimed_until = $2 WHERE id IN (SELECT id FROM deliveries \
                 WHERE target = $3 AND status = 'queued' AND kind = 'robot' \
                 AND (claimed_until IS NULL OR claimed_until < $4) ORDER BY created_at, id LIMIT $5 FOR UPDATE SKIP LOCKED) RETURNING id",
            )
            .bind::<Text, _>(claim)
            .bind::<BigInt, _>(until)
            .bind::<Text, _>(robot)
            .bind::<BigInt, _>(now)
            .bind::<BigInt, _>(limit)
            .load(c)?,
        };
        claimed(conn, &ids.into_iter().map(|c| c.id).collect::<Vec<_>>())
    })?;
    let ids: Vec<&str> = rows.iter().map(|r| r.message_id.as_str()).collect();
    let bodies: std::collections::HashMap<String, String> = m::table
        .filter(m::id.eq_any(&ids))
        .select((m::id, m::body))
        .load::<(String, String)>(conn)?
        .into_iter()
        .collect();
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let body = bodies.get(&r.message_id)?.clone();
            Some((r, body))
        })
        .collect())
}

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// `digest_id`: the digest send that carried it, when merged with others.
    Sent {
        request_id: Option<String>,
        digest_id: Option<String>,
    },
    Retry {
        at: i64,
        code: String,
        error: String,
        parts_sent: Option<i32>,
    },
    Failed {
        code: Option<String>,
        error: String,
    },
    /// Not attempted (or only partly, for a message in parts): it waits for a send slot or a
    /// pause DingTalk imposed. Not counted as an attempt.
    Deferred {
        at: i64,
        reason: String,
        parts_sent: Option<i32>,
    },
}

impl Outcome {
    /// How the delivery log and the metrics name it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sent { .. } => "sent",
            Self::Retry { .. } => "retry",
            Self::Failed { .. } => "failed",
            Self::Deferred { .. } => "deferred",
        }
    }
}

/// Records the attempts of a batch in one transaction; answers, per attempt, whether the
/// claim it was made under (`claimed_by` of the row) still held (a lost claim means another
/// worker has it now).
pub fn record_all(
    conn: &mut DbConn,
    attempts: &[(DeliveryRow, Outcome)],
    now: i64,
) -> Result<Vec<bool>, DbError> {
    write_tx(conn, |conn| {
        let mut owned = vec![false; attempts.len()];
        // A digest's sends, and a robot's waiting backlog, come in hundreds with one outcome:
        // one statement for each such group rather than one per row.
        let mut groups: HashMap<&Outcome, Vec<usize>> = HashMap::new();
        for (i, (row, outcome)) in attempts.iter().enumerate() {
            match outcome {
                Outcome::Sent { .. }
                | Outcome::Deferred {
                    parts_sent: None, ..
                } => groups.entry(outcome).or_default().push(i),
                _ => owned[i] = record_one(conn, row, claim_of(row), outcome, now)?,
            }
        }
        for (outcome, members) in groups {
            if let [i] = members[..] {
                let row = &attempts[i].0;
                owned[i] = record_one(conn, row, claim_of(row), outcome, now)?;
                continue;
            }
            for chunk in members.chunks(RECORD_CHUNK) {
                let rows: Vec<&DeliveryRow> = chunk.iter().map(|&i| &attempts[i].0).collect();
                let mine = record_group(conn, &rows, outcome, now)?;
                for &i in chunk {
                    owned[i] = mine.contains(&attempts[i].0.id);
                }
            }
        }
        Ok::<_, DbError>(owned)
    })
}

/// Rows recorded in one statement at most (well under SQLite's limit on parameters).
const RECORD_CHUNK: usize = 400;

pub fn claim_of(row: &DeliveryRow) -> &str {
    row.claimed_by.as_deref().unwrap_or("")
}

/// Records one outcome (sent, or deferred without parts) for many rows; answers the ids
/// whose claim still held, the only ones written.
fn record_group(
    conn: &mut DbConn,
    rows: &[&DeliveryRow],
    outcome: &Outcome,
    now: i64,
) -> Result<std::collections::HashSet<i64>, DbError> {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    // By id only: with `status` in the query SQLite would walk every queued row by the
    // status index instead.
    let current =
        d::table
            .filter(d::id.eq_any(&ids))
            .select((d::id, d::status, d::claimed_by, d::attempts));
    let current: Vec<(i64, String, Option<String>, i32)> = match conn {
        DbConn::Sqlite(c) => current.load(c)?,
        #[cfg(feature = "postgres")]
        DbConn::Pg(c) => current.for_update().load(c)?,
    };
    let claims: HashMap<i64, &str> = rows.iter().map(|r| (r.id, claim_of(r))).collect();
    let mine: Vec<(i64, i32)> = current
        .into_iter()
        .filter(|(id, status, by, _)| status == QUEUED && by.as_deref() == claims.get(id).copied())
        .map(|(id, _, _, attempts)| (id, attempts))
        .collect();
    let ids: Vec<i64> = mine.iter().map(|(id, _)| *id).collect();
    let release = (
        d::claimed_by.eq(None::<String>),
        d::claimed_until.eq(None::<i64>),
        d::updated_at.eq(now),
    );
    let target = d::table.filter(d::id.eq_any(&ids));
    match outcome {
        Outcome::Sent {
            request_id,
            digest_id,
        } => {
            diesel::update(target)
                .set((
                    d::status.eq(SENT),
                    d::attempts.eq(d::attempts + 1),
                    d::sent_at.eq(now),
                    d::dingtalk_request_id.eq(request_id),
                    d::digest_id.eq(digest_id),
                    d::last_error.eq(None::<String>),
                    release,
                ))
                .execute(conn)?;
            let note = digest_id.as_ref().map(|g| format!("in digest {g}"));
            let history: Vec<_> = mine
                .iter()
                .map(|(id, attempts)| {
                    (
                        a::delivery_id.eq(*id),
                        a::attempt.eq(attempts + 1),
                        a::at.eq(now),
                        a::outcome.eq("sent"),
                        a::code.eq(None::<String>),
                        a::error.eq(note.clone()),
                        a::dingtalk_request_id.eq(request_id.clone()),
                    )
                })
                .collect();
            crate::with_conn!(&mut *conn, |c| diesel::insert_into(a::table)
                .values(&history)
                .execute(c))?;
        }
        Outcome::Deferred { at, reason, .. } => {
            diesel::update(target)
                .set((d::next_attempt_at.eq(at), d::last_error.eq(reason), release))
                .execute(conn)?;
        }
        Outcome::Retry { .. } | Outcome::Failed { .. } => {
            unreachable!("recorded row by row")
        }
    }
    Ok(ids.into_iter().collect())
}

/// Claim tokens, each with the delivery ids held under it.
pub type ClaimIds = Vec<(String, Vec<i64>)>;

/// Extends claims still held to `until`: per lease, its (claim token, delivery ids); answers,
/// per lease, the ids still held by its claims (recording an outcome releases a row).
pub fn renew_claims(
    conn: &mut DbConn,
    leases: &[ClaimIds],
    until: i64,
) -> Result<Vec<Vec<i64>>, DbError> {
    write_tx(conn, |conn| {
        let mut renewed = Vec::with_capacity(leases.len());
        for claims in leases {
            let mut held = vec![];
            for (claim, ids) in claims {
                for chunk in ids.chunks(RECORD_CHUNK) {
                    // Update first: on PostgreSQL the rows stay locked, so no claimer can take
                    // one between the check and the renewal.
                    let mine = || {
                        d::table
                            .filter(d::id.eq_any(chunk))
                            .filter(d::claimed_by.eq(claim))
                    };
                    diesel::update(mine())
                        .set(d::claimed_until.eq(until))
                        .execute(conn)?;
                    held.extend(
                        mine()
                            .filter(d::claimed_until.eq(until))
                            .select(d::id)
                            .load::<i64>(conn)?,
                    );
                }
            }
            renewed.push(held);
        }
        Ok::<_, DbError>(renewed)
    })
}

/// Gives claims back, for the poller to take.
pub fn release_claims(conn: &mut DbConn, ids: &[i64]) -> Result<usize, DbError> {
    Ok(write_tx(conn, |conn| {
        diesel::update(d::table.filter(d::id.eq_any(ids)))
            .set((
                d::claimed_by.eq(None::<String>),
                d::claimed_until.eq(None::<i64>),
            ))
            .execute(conn)
    })?)
}

fn record_one(
    conn: &mut DbConn,
    delivery: &DeliveryRow,
    claim: &str,
    outcome: &Outcome,
    now: i64,
) -> Result<bool, DieselError> {
    let owned = d::table
        .find(delivery.id)
        .filter(d::claimed_by.eq(claim))
        .filter(d::status.eq(QUEUED));
    let release = (
        d::claimed_by.eq(None::<String>),
        d::claimed_until.eq(None::<i64>),
        d::updated_at.eq(now),
    );
    let attempt = delivery.attempts + 1;
    let parts = |p: &Option<i32>| p.unwrap_or(delivery.parts_sent);
    let changed = match outcome {
        Outcome::Sent {
            request_id,
            digest_id,
        } => diesel::update(owned)
            .set((
                d::status.eq(SENT),
                d::attempts.eq(attempt),
                d::sent_at.eq(now),
                d::dingtalk_request_id.eq(request_id),
                d::digest_id.eq(digest_id),
                d::last_error.eq(None::<String>),
                release,
            ))
            .execute(conn)?,
        Outcome::Retry {
            at,
            code,
            error,
            parts_sent,
        } => diesel::update(owned)
            .set((
                d::attempts.eq(attempt),
                d::next_attempt_at.eq(at),
                d::last_error.eq(error),
                d::dingtalk_code.eq(code),
                d::parts_sent.eq(parts(parts_sent)),
                release,
            ))
            .execute(conn)?,
        Outcome::Failed { code, error } => diesel::update(owned)
            .set((
                d::status.eq(FAILED),
                d::attempts.eq(attempt),
                d::last_error.eq(error),
                d::dingtalk_code.eq(code),
                release,
            ))
            .execute(conn)?,
        Outcome::Deferred {
            at,
            reason,
            parts_sent,
        } => {
            return Ok(diesel::update(owned)
                .set((
                    d::next_attempt_at.eq(at),
                    d::last_error.eq(reason),
                    d::parts_sent.eq(parts(parts_sent)),
                    release,
                ))
                .execute(conn)?
                > 0);
        }
    };
    if changed == 0 {
        return Ok(false);
    }
    let (kind, code, error, rid) = match outcome {
        Outcome::Sent {
            request_id,
            digest_id,
        } => (
            "sent",
            None,
            digest_id.as_ref().map(|g| format!("in digest {g}")),
            request_id.clone(),
        ),
        Outcome::Retry { code, error, .. } => {
            ("retry", Some(code.clone()), Some(error.clone()), None)
        }
        Outcome::Failed { code, error } => ("failed", code.clone(), Some(error.clone()), None),
        Outcome::Deferred { .. } => unreachable!("returned above"),
    };
    diesel::insert_into(a::table)
        .values((
            a::delivery_id.eq(delivery.id),
            a::attempt.eq(attempt),
            a::at.eq(now),
            a::outcome.eq(kind),
            a::code.eq(code),
            a::error.eq(error),
            a::dingtalk_request_id.eq(rid),
        ))
        .execute(conn)?;
    Ok(true)
}

/// Releases the claims of processes that are gone (`alive` says which are not), at start-up
/// on SQLite: a killed server's deliveries are resumed at once, while a running
/// `ding-channel send` keeps its own.
pub fn release_orphaned_claims(
    conn: &mut DbConn,
    alive: impl Fn(u32) -> bool,
) -> Result<usize, DbError> {
    let claims: Vec<String> = d::table
        .filter(d::claimed_by.is_not_null())
        .select(d::claimed_by.assume_not_null())
        .distinct()
        .load(conn)?;
    let orphaned: Vec<String> = claims
        .into_iter()
        .filter(|c| {
            ClaimToken::from_stored(c.as_str())
                .process()
                .is_none_or(|pid| !alive(pid))
        })
        .collect();
    let mut released = 0;
    for chunk in orphaned.chunks(RECORD_CHUNK) {
        released += diesel::update(d::table.filter(d::claimed_by.eq_any(chunk)))
            .set((
                d::claimed_by.eq(None::<String>),
                d::claimed_until.eq(None::<i64>),
            ))
            .execute(conn)?;
    }
    Ok(released)
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
