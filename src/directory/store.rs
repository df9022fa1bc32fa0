//! Stored profiles (table `users`).

use super::profile::{Profile, Username};
use crate::db::models::UserRow;
use crate::db::schema::users;
use crate::db::{now_ms, write_tx, DbConn, DbError, FEW_KEYS};
use crate::domain::mobile::Mobile;
use diesel::prelude::*;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct UpsertReport {
    pub inserted: usize,
    pub updated: usize,
}

/// Inserts or replaces profiles by username, all in one transaction.
pub fn upsert(conn: &mut DbConn, profiles: &[Profile]) -> Result<UpsertReport, DbError> {
    write_tx(conn, |conn| {
        let now = now_ms();
        let mut report = UpsertReport::default();
        for p in profiles {
            let row = to_row(p, now);
            let changed = diesel::update(users::table.find(p.username.as_str()))
                .set((
                    users::display_name.eq(&row.display_name),
                    users::telephone.eq(&row.telephone),
                    users::country_code.eq(&row.country_code),
                    users::email.eq(&row.email),
                    users::wx_userid.eq(&row.wx_userid),
                    users::qq.eq(&row.qq),
                    users::extras.eq(&row.extras),
                    users::updated_at.eq(now),
                ))
                .execute(conn)?;
            if changed == 0 {
                diesel::insert_into(users::table)
                    .values(&row)
                    .execute(conn)?;
                report.inserted += 1;
            } else {
                report.updated += 1;
            }
        }
        Ok(report)
    })
}

pub fn get(conn: &mut DbConn, username: &str) -> Result<Option<Profile>, DbError> {
    users::table
        .find(username)
        .select(UserRow::as_select())
        .get_result(conn)
        .optional()?
        .map(from_row)
        .transpose()
}

/// The profiles of `usernames` that exist.
pub fn get_many(conn: &mut DbConn, usernames: &[String]) -> Result<Vec<Profile>, DbError> {
    if usernames.len() <= FEW_KEYS {
        return usernames
            .iter()
            .filter_map(|u| get(conn, u).transpose())
            .collect();
    }
    users::table
        .filter(users::username.eq_any(usernames))
        .select(UserRow::as_select())
        .load(conn)?
        .into_iter()
        .map(from_row)
        .collect()
}

pub fn list(conn: &mut DbConn) -> Result<Vec<Profile>, DbError> {
    users::table
        .order(users::username)
        .select(UserRow::as_select())
        .load(conn)?
        .into_iter()
        .map(from_row)
        .collect()
}

pub fn remove(conn: &mut DbConn, username: &str) -> Result<bool, DbError> {
    Ok(diesel::delete(users::table.find(username)).execute(conn)? > 0)
}

fn to_row(p: &Profile, now: i64) -> UserRow {
    UserRow {
        username: p.username.to_string(),
        display_name: p.display_name.clone(),
        telephone: p.telephone.as_ref().map(|m| m.national().to_owned()),
        country_code: p.country_code.clone(),
        email: p.email.clone(),
        wx_userid: p.wx_userid.clone(),
        qq: p.qq.clone(),
        extras: serde_json::Value::Object(p.extras.clone()).to_string(),
        created_at: now,
        updated_at: now,
    }
}

fn from_row(r: UserRow) -> Result<Profile, DbError> {
    let corrupt = |what: &str| {
        DbError::Query(diesel::result::Error::DeserializationError(
            format!("user {}: stored {what} is invalid", r.username).into(),
        ))
    };
    Ok(Profile {
        username: Username::parse(&r.username).map_err(|_| corrupt("username"))?,
        extras: serde_json::from_str(&r.extras).map_err(|_| corrupt("extras"))?,
        telephone: r
            .telephone
            .map(|t| Mobile::parse_in(&t, Some(&r.country_code)))
            .transpose()
            .map_err(|_| corrupt("telephone"))?,
        display_name: r.display_name,
        country_code: r.country_code,
        email: r.email,
        wx_userid: r.wx_userid,
        qq: r.qq,
    })
}
