//! Bearer tokens for the webhook sources (`Authorization: Bearer dct_…`), for senders that
//! would rather not hold an app's secret: made per app by `ding-channel apps token CODE`,
//! shown once, kept only as their SHA-256, removed with `--revoke` or with the app.

use crate::db::models::AppTokenRow;
use crate::db::schema::{app_tokens, apps};
use crate::db::{DbConn, DbError};
use crate::domain::secrets::BearerToken;
use diesel::prelude::*;
use std::collections::BTreeMap;

/// `last_used_at` is written at most this often per token: a write per notification would
/// queue behind the sends for a figure an admin reads in minutes.
const TOUCH_EVERY_MS: i64 = 60_000;

/// A new token for `app_code`; `Err` names what is wrong when there is no such app.
pub fn create(
    conn: &mut DbConn,
    app_code: &str,
    now: i64,
) -> Result<Result<BearerToken, String>, DbError> {
    let exists = apps::table.find(app_code).count().get_result::<i64>(conn)? > 0;
    if !exists {
        return Ok(Err(format!(
            "no app '{app_code}' (see `ding-channel apps list`; add it with `ding-channel apps add {app_code}`)"
        )));
    }
    let token = BearerToken::generate();
    diesel::insert_into(app_tokens::table)
        .values(AppTokenRow {
            token_hash: token.hash(),
            app_code: app_code.to_owned(),
            created_at: now,
            last_used_at: None,
        })
        .execute(conn)?;
    Ok(Ok(token))
}

/// Removes every token of `app_code`; answers how many there were.
pub fn revoke(conn: &mut DbConn, app_code: &str) -> Result<usize, DbError> {
    Ok(
        diesel::delete(app_tokens::table.filter(app_tokens::app_code.eq(app_code)))
            .execute(conn)?,
    )
}

/// The tokens of `app_code`, oldest first.
pub fn of_app(conn: &mut DbConn, app_code: &str) -> Result<Vec<AppTokenRow>, DbError> {
    Ok(app_tokens::table
        .filter(app_tokens::app_code.eq(app_code))
        .order(app_tokens::created_at)
        .select(AppTokenRow::as_select())
        .load(conn)?)
}

/// How many tokens each app has (apps without any are absent).
pub fn counts(conn: &mut DbConn) -> Result<BTreeMap<String, i64>, DbError> {
    let rows: Vec<(String, i64)> = app_tokens::table
        .group_by(app_tokens::app_code)
        .select((app_tokens::app_code, diesel::dsl::count_star()))
        .load(conn)?;
    Ok(rows.into_iter().collect())
}

/// Whom a token authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub app_code: String,
    /// Whether its `last_used_at` should be moved to now ([`touch`]).
    pub stale: bool,
}

/// The app holding `token`, if it still exists.
pub fn verify(conn: &mut DbConn, token: &BearerToken, now: i64) -> Result<Option<Holder>, DbError> {
    // The join: a token outlives its app in no case, whatever the foreign keys do.
    let found: Option<(String, Option<i64>)> = app_tokens::table
        .inner_join(apps::table)
        .filter(app_tokens::token_hash.eq(token.hash()))
        .select((app_tokens::app_code, app_tokens::last_used_at))
        .first(conn)
        .optional()?;
    Ok(found.map(|(app_code, last)| Holder {
        app_code,
        stale: last.is_none_or(|t| now - t >= TOUCH_EVERY_MS),
    }))
}

/// Records that `token` was used at `now`.
pub fn touch(conn: &mut DbConn, token: &BearerToken, now: i64) -> Result<(), DbError> {
    diesel::update(app_tokens::table.find(token.hash()))
        .set(app_tokens::last_used_at.eq(now))
        .execute(conn)?;
    Ok(())
}
