//! Claims: due deliveries taken under a lease, renewed, released.

use super::{IdRow, RECORD_CHUNK};
use crate::db::models::DeliveryRow;
use crate::db::schema::deliveries as d;
use crate::db::{write_tx, DbConn, DbError};
use crate::domain::ids::ClaimToken;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};

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
        let ids: Vec<IdRow> = match conn {
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
            DbConn::Pg(c) => {
                let rows = diesel::sql_query(
                    "UPDATE deliveries SET claimed_by = $1, claimed_until = $2 WHERE id IN (SELECT id FROM deliveries \
                     WHERE status = 'queued' AND next_attempt_at <= $3 AND (claimed_until IS NULL OR claimed_until < $3) \
                     AND ($4::text IS NULL OR message_id = $4) ORDER BY next_attempt_at, id LIMIT $5 FOR UPDATE SKIP LOCKED) \
                     RETURNING *",
                )
                .bind::<Text, _>(claim)
                .bind::<BigInt, _>(until)
                .bind::<BigInt, _>(now)
                .bind::<Nullable<Text>, _>(message_id)
                .bind::<BigInt, _>(limit)
                .load(c)?;
                return Ok(by_id(rows));
            }
        };
        claimed(conn, &ids.into_iter().map(|c| c.id).collect::<Vec<_>>())
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
    Ok(by_id(rows))
}

fn by_id(mut rows: Vec<DeliveryRow>) -> Vec<DeliveryRow> {
    rows.sort_by_key(|r| r.id);
    rows
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
        let ids: Vec<IdRow> = match conn {
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
            DbConn::Pg(c) => {
                let rows = diesel::sql_query(
                    "UPDATE deliveries SET claimed_by = $1, claimed_until = $2 WHERE id IN (SELECT id FROM deliveries \
                     WHERE target = $3 AND status = 'queued' AND kind = 'robot' \
                     AND (claimed_until IS NULL OR claimed_until < $4) ORDER BY created_at, id LIMIT $5 FOR UPDATE SKIP LOCKED) \
                     RETURNING *",
                )
                .bind::<Text, _>(claim)
                .bind::<BigInt, _>(until)
                .bind::<Text, _>(robot)
                .bind::<BigInt, _>(now)
                .bind::<BigInt, _>(limit)
                .load(c)?;
                return Ok(by_id(rows));
            }
        };
        claimed(conn, &ids.into_iter().map(|c| c.id).collect::<Vec<_>>())
    })?;
    let mut ids: Vec<&str> = rows.iter().map(|r| r.message_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let bodies = super::bodies(conn, &ids)?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let body = bodies.get(&r.message_id)?.clone();
            Some((r, body))
        })
        .collect())
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
