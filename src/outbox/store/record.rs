//! Recording outcomes: each delivery's new state and its attempt, under its claim only.

use super::{claim_of, Outcome, FAILED, QUEUED, RECORD_CHUNK, SENT};
use crate::db::models::DeliveryRow;
use crate::db::schema::{deliveries as d, delivery_attempts as a};
use crate::db::{write_tx, DbConn, DbError};
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use std::collections::HashMap;

/// Records the attempts of a batch in one transaction; answers, per attempt, whether the
/// claim it was made under (`claimed_by` of the row) still held (a lost claim means another
/// worker has it now).
pub fn record_all(
    conn: &mut DbConn,
    attempts: &[(DeliveryRow, Outcome)],
    now: i64,
) -> Result<Vec<bool>, DbError> {
    #[cfg(feature = "postgres")]
    if let DbConn::Pg(c) = conn {
        return record_all_pg(c, attempts, now);
    }
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

/// [`record_all`] on PostgreSQL: every row's new state and its history in one statement, by
/// arrays of the outcomes' columns (two statements per row otherwise, each a round trip). The
/// update re-checks each row's claim after any lock it waited for. Whatever PostgreSQL's
/// estimates, it finds the rows by their ids (`id = ANY`, a status test no index serves) and
/// plans the statement each time it runs (not prepared, so with the table's size as it is):
/// otherwise a plan made while the table was young, or its queued rows few, walked the queue
/// once for each outcome (seen: 2–10 ms a statement a few seconds into a benchmark).
#[cfg(feature = "postgres")]
fn record_all_pg(
    c: &mut diesel::pg::PgConnection,
    attempts: &[(DeliveryRow, Outcome)],
    now: i64,
) -> Result<Vec<bool>, DbError> {
    use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text};
    let rows: Vec<Recording> = attempts.iter().map(|(r, o)| Recording::new(r, o)).collect();
    let owned: std::collections::HashSet<i64> = diesel::sql_query(
        "WITH o AS (SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         AS o (id, claim, outcome, next_at, error, code, request_id, digest_id, parts, note)), \
         u AS (UPDATE deliveries d SET \
         status = CASE o.outcome WHEN 'sent' THEN 'sent' WHEN 'failed' THEN 'failed' ELSE d.status END, \
         attempts = d.attempts + CASE o.outcome WHEN 'deferred' THEN 0 ELSE 1 END, \
         sent_at = CASE o.outcome WHEN 'sent' THEN $11 ELSE d.sent_at END, \
         next_attempt_at = COALESCE(o.next_at, d.next_attempt_at), \
         dingtalk_request_id = CASE o.outcome WHEN 'sent' THEN o.request_id ELSE d.dingtalk_request_id END, \
         digest_id = CASE o.outcome WHEN 'sent' THEN o.digest_id ELSE d.digest_id END, \
         last_error = o.error, \
         dingtalk_code = CASE WHEN o.outcome IN ('retry', 'failed') THEN o.code ELSE d.dingtalk_code END, \
         parts_sent = COALESCE(o.parts, d.parts_sent), \
         claimed_by = NULL, claimed_until = NULL, updated_at = $11 \
         FROM o WHERE d.id = ANY($1) AND d.id = o.id AND d.claimed_by = o.claim AND (d.status = 'queued') IS TRUE \
         RETURNING d.id, d.attempts, o.outcome, o.code, o.note, o.request_id), \
         h AS (INSERT INTO delivery_attempts (delivery_id, attempt, at, outcome, code, error, dingtalk_request_id) \
         SELECT id, attempts, $11, outcome, code, note, request_id FROM u WHERE outcome <> 'deferred') \
         SELECT id FROM u",
    )
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.claim).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.outcome).collect::<Vec<_>>())
    .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.next_at).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.error).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.code).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.request_id).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.digest_id).collect::<Vec<_>>())
    .bind::<Array<Nullable<Integer>>, _>(rows.iter().map(|r| r.parts).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.note.as_deref()).collect::<Vec<_>>())
    .bind::<BigInt, _>(now)
    .load::<super::IdRow>(c)?
    .into_iter()
    .map(|r| r.id)
    .collect();
    Ok(attempts
        .iter()
        .map(|(r, _)| owned.contains(&r.id))
        .collect())
}

/// One outcome as the columns [`record_all_pg`] writes: the row's new `last_error` (`error`),
/// and the history row's note (`note`; none for a deferral, which is not an attempt).
#[cfg(feature = "postgres")]
struct Recording<'a> {
    id: i64,
    claim: &'a str,
    outcome: &'static str,
    next_at: Option<i64>,
    error: Option<&'a str>,
    code: Option<&'a str>,
    request_id: Option<&'a str>,
    digest_id: Option<&'a str>,
    parts: Option<i32>,
    note: Option<String>,
}

#[cfg(feature = "postgres")]
impl<'a> Recording<'a> {
    fn new(row: &'a DeliveryRow, outcome: &'a Outcome) -> Self {
        let r = Self {
            id: row.id,
            claim: claim_of(row),
            outcome: outcome.name(),
            next_at: None,
            error: None,
            code: None,
            request_id: None,
            digest_id: None,
            parts: None,
            note: None,
        };
        match outcome {
            Outcome::Sent {
                request_id,
                digest_id,
                sent_by,
            } => Self {
                request_id: request_id.as_deref(),
                digest_id: digest_id.as_deref(),
                note: sent_note(digest_id, sent_by),
                ..r
            },
            Outcome::Retry {
                at,
                code,
                error,
                parts_sent,
            } => Self {
                next_at: Some(*at),
                error: Some(error),
                code: Some(code),
                parts: *parts_sent,
                note: Some(error.clone()),
                ..r
            },
            Outcome::Failed { code, error } => Self {
                error: Some(error),
                code: code.as_deref(),
                note: Some(error.clone()),
                ..r
            },
            Outcome::Deferred {
                at,
                reason,
                parts_sent,
            } => Self {
                next_at: Some(*at),
                error: Some(reason),
                parts: *parts_sent,
                ..r
            },
        }
    }
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
            sent_by,
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
            let note = sent_note(digest_id, sent_by);
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
            ..
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
            sent_by,
        } => (
            "sent",
            None,
            sent_note(digest_id, sent_by),
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

/// The note of a sent attempt in the delivery log: the digest that carried it and the pool
/// member that sent it, when there are.
fn sent_note(digest_id: &Option<String>, sent_by: &Option<String>) -> Option<String> {
    match (digest_id, sent_by) {
        (None, None) => None,
        (Some(g), None) => Some(format!("in digest {g}")),
        (None, Some(by)) => Some(format!("by {by}")),
        (Some(g), Some(by)) => Some(format!("in digest {g}, by {by}")),
    }
}
