//! The DingTalk sends kept per delivery (`dingtalk_sends`), whatever the path: the key DingTalk
//! answered for each call that reached a person (a message in parts has one per part), so that
//! read status and recall can ask about it later. A path names its rows with its own `path`
//! and answers [`Reading`]s and recalls for them (the app robot's: `app_robot/readback.rs`).

use crate::db::models::SendRow;
use crate::db::schema::{deliveries as d, dingtalk_sends as s};
use crate::db::{DbConn, DbError};
use diesel::prelude::*;
use serde::Serialize;

/// The app robot's single chat (`oToMessages/batchSend`): the key is its processQueryKey.
pub const ONE_TO_ONE: &str = "oto";
/// Work notifications (`asyncsend_v2`): the key names the agent and its task
/// (`senders::work_notice::readback::key`).
pub const WORK_NOTICE: &str = "work_notice";

/// How long after a send DingTalk answers read status and recall for it.
pub const WINDOW_MS: i64 = 24 * 3600 * 1000;

/// Whether a person read what was sent to them, as far as DingTalk says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Reading {
    Read {
        at: i64,
    },
    Unread,
    Recalled {
        at: i64,
    },
    /// DingTalk cannot say (older than its window) or was not asked (budget, error).
    Unknown {
        why: String,
    },
}

impl Reading {
    pub fn unknown(why: impl Into<String>) -> Self {
        Self::Unknown { why: why.into() }
    }

    /// One delivery's reading from those of its sends (a message in parts): recalled when
    /// any part was, read once every part is, else the first that is not read.
    pub fn of_parts(parts: Vec<Reading>) -> Option<Reading> {
        if let Some(r) = parts.iter().find(|r| matches!(r, Reading::Recalled { .. })) {
            return Some(r.clone());
        }
        let mut last_read = None;
        for r in parts {
            match r {
                Reading::Read { at } => last_read = last_read.max(Some(at)),
                other => return Some(other),
            }
        }
        last_read.map(|at| Reading::Read { at })
    }
}

/// Keeps the sends of a task; a send already kept is left as it is.
pub fn keep(conn: &mut DbConn, rows: &[SendRow]) -> Result<(), DbError> {
    #[cfg(feature = "postgres")]
    if let DbConn::Pg(c) = conn {
        use diesel::sql_types::{Array, BigInt, Nullable, Text};
        // All in one prepared statement: diesel does not cache an upsert.
        crate::db::prepared::Prepared::new(
            "INSERT INTO dingtalk_sends (delivery_id, send_key, path, user_id, sent_at, read_at, recalled_at) \
             SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.delivery_id).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(rows.iter().map(|r| r.send_key.as_str()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(rows.iter().map(|r| r.path.as_str()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(rows.iter().map(|r| r.user_id.as_str()).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.sent_at).collect::<Vec<_>>())
        .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.read_at).collect::<Vec<_>>())
        .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.recalled_at).collect::<Vec<_>>())
        .execute(c)?;
        return Ok(());
    }
    // Row by row: diesel has no multi-row insert with ON CONFLICT on SQLite.
    crate::db::write_tx(conn, |conn| {
        for row in rows {
            crate::with_conn!(&mut *conn, |c| diesel::insert_into(s::table)
                .values(row)
                .on_conflict_do_nothing()
                .execute(c))?;
        }
        Ok(())
    })
}

/// The sends of a message's deliveries.
pub fn of_message(conn: &mut DbConn, message_id: &str) -> Result<Vec<SendRow>, DbError> {
    let q = s::table
        .inner_join(d::table)
        .filter(d::message_id.eq(message_id))
        .select(SendRow::as_select())
        .order((s::delivery_id, s::sent_at));
    Ok(q.load(conn)?)
}

/// Records that the person of each `(delivery, key)` read it at the time given.
pub fn mark_read(conn: &mut DbConn, read: &[(i64, String, i64)]) -> Result<(), DbError> {
    for (delivery, key, at) in read {
        diesel::update(s::table.find((delivery, key)))
            .filter(s::read_at.is_null())
            .set(s::read_at.eq(at))
            .execute(conn)?;
    }
    Ok(())
}

/// Records that the sends of `keys` on `path` were recalled at `at`.
pub fn mark_recalled(
    conn: &mut DbConn,
    path: &str,
    keys: &[String],
    at: i64,
) -> Result<(), DbError> {
    diesel::update(
        s::table
            .filter(s::path.eq(path))
            .filter(s::send_key.eq_any(keys))
            .filter(s::recalled_at.is_null()),
    )
    .set(s::recalled_at.eq(at))
    .execute(conn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Reading;

    #[test]
    fn a_delivery_in_parts_is_read_once_every_part_is() {
        let read = |at| Reading::Read { at };
        assert_eq!(Reading::of_parts(vec![read(5), read(9)]), Some(read(9)));
        assert_eq!(
            Reading::of_parts(vec![read(5), Reading::Unread]),
            Some(Reading::Unread)
        );
        assert_eq!(
            Reading::of_parts(vec![Reading::Unread, Reading::Recalled { at: 3 }]),
            Some(Reading::Recalled { at: 3 })
        );
        assert_eq!(Reading::of_parts(vec![]), None);
    }
}
