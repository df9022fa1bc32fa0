//! Stored profiles (table `users`).

use super::profile::{Profile, ProfileSource, Standing, Username};
use crate::db::models::UserRow;
use crate::db::schema::users;
use crate::db::{now_ms, one_by_one, write_tx, DbConn, DbError};
use crate::domain::mobile::Mobile;
use diesel::prelude::*;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct UpsertReport {
    pub inserted: usize,
    pub updated: usize,
}

/// Inserts or replaces profiles by username, all in one transaction, recording `source` as
/// where each came from. The source of a profile is always the last writer's: a user
/// imported from a file and later synced from bk-user is bk-user's.
///
/// This module holds every write of `users`: whole profiles come through here (see
/// [`super::provider`]); a sync's standing-only writes through [`set_standing`] and
/// [`mark_gone`]; an admin's removal through [`remove`].
pub fn upsert(
    conn: &mut DbConn,
    profiles: &[Profile],
    source: ProfileSource,
) -> Result<UpsertReport, DbError> {
    write_tx(conn, |conn| {
        let now = now_ms();
        let mut report = UpsertReport::default();
        for p in profiles {
            let row = to_row(p, source, now);
            let fields = (
                users::display_name.eq(&row.display_name),
                users::telephone.eq(&row.telephone),
                users::country_code.eq(&row.country_code),
                users::email.eq(&row.email),
                users::wx_userid.eq(&row.wx_userid),
                users::qq.eq(&row.qq),
                users::extras.eq(&row.extras),
                users::source.eq(&row.source),
                users::bk_status.eq(&row.bk_status),
                users::bk_staff_status.eq(&row.bk_staff_status),
                users::gone_since.eq(row.gone_since),
                users::updated_at.eq(now),
            );
            let changed = diesel::update(users::table.find(p.username.as_str()))
                .set(fields)
                .execute(conn)?;
            if changed == 0 {
                // A concurrent writer (a lookup at send time during a sync) may insert the
                // same username between the two statements: on PostgreSQL a plain insert
                // would then abort the whole transaction.
                crate::with_conn!(&mut *conn, |c| diesel::insert_into(users::table)
                    .values(&row)
                    .on_conflict(users::username)
                    .do_update()
                    .set(fields)
                    .execute(c))?;
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
    if one_by_one(conn, usernames.len()) {
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

/// Sets the standing of a stored user alone (bk-user's record of them failed validation in
/// other fields, which keep their stored values); answers whether the user is stored.
pub fn set_standing(
    conn: &mut DbConn,
    username: &str,
    standing: &Standing,
) -> Result<bool, DbError> {
    Ok(diesel::update(users::table.find(username))
        .set((
            users::bk_status.eq(&standing.status),
            users::bk_staff_status.eq(&standing.staff_status),
            users::gone_since.eq(standing.gone_since),
            users::updated_at.eq(now_ms()),
        ))
        .execute(conn)?
        == 1)
}

/// The usernames of `source` not marked gone, with when each row was last written (the
/// database's clock, [`now_ms`]).
pub fn present(conn: &mut DbConn, source: ProfileSource) -> Result<Vec<(String, i64)>, DbError> {
    Ok(users::table
        .filter(users::source.eq(source.as_str()))
        .filter(users::gone_since.is_null())
        .select((users::username, users::updated_at))
        .load(conn)?)
}

/// Marks `usernames` gone since `now` (those marked already keep their time); answers how many
/// were newly marked. They stay, so that a send to one says why it is refused rather than
/// "unknown user".
pub fn mark_gone(conn: &mut DbConn, usernames: &[String], now: i64) -> Result<usize, DbError> {
    let written = now_ms();
    let mut marked = 0;
    for chunk in usernames.chunks(500) {
        marked += diesel::update(
            users::table
                .filter(users::username.eq_any(chunk))
                .filter(users::gone_since.is_null()),
        )
        .set((users::gone_since.eq(now), users::updated_at.eq(written)))
        .execute(conn)?;
    }
    Ok(marked)
}

pub fn remove(conn: &mut DbConn, username: &str) -> Result<bool, DbError> {
    Ok(diesel::delete(users::table.find(username)).execute(conn)? > 0)
}

fn to_row(p: &Profile, source: ProfileSource, now: i64) -> UserRow {
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
        source: source.as_str().to_owned(),
        bk_status: p.standing.status.clone(),
        bk_staff_status: p.standing.staff_status.clone(),
        gone_since: p.standing.gone_since,
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
        source: ProfileSource::parse(&r.source).map_err(|e| {
            DbError::Query(diesel::result::Error::DeserializationError(
                format!(
                    "user {}: stored source {e}; import the user again to record where it comes from",
                    r.username
                )
                .into(),
            ))
        })?,
        // A telephone stored before numbers were validated must not make the whole read fail
        // (a robot user in a batch would stop the batch): the person has no usable phone.
        telephone: r.telephone.and_then(|t| {
            Mobile::parse_in(&t, Some(&r.country_code))
                .inspect_err(|e| tracing::warn!(user = %r.username, error = %e, "stored telephone is invalid; fix it with `ding-channel users import`"))
                .ok()
        }),
        standing: Standing {
            status: r.bk_status,
            staff_status: r.bk_staff_status,
            gone_since: r.gone_since,
        },
        display_name: r.display_name,
        country_code: r.country_code,
        email: r.email,
        wx_userid: r.wx_userid,
        qq: r.qq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseUrl;
    use crate::db::Db;

    fn profile(name: &str) -> Profile {
        Profile {
            username: Username::parse(name).unwrap(),
            display_name: None,
            telephone: None,
            country_code: Profile::DEFAULT_COUNTRY_CODE.into(),
            email: None,
            wx_userid: None,
            qq: None,
            extras: Default::default(),
            source: ProfileSource::File,
            standing: Default::default(),
        }
    }

    #[test]
    fn upsert_records_the_writers_source() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&DatabaseUrl::Sqlite(dir.path().join("t.db")), 1).unwrap();
        db.migrate().unwrap();
        let mut conn = db.get().unwrap();
        let source = |conn: &mut DbConn, name| get(conn, name).unwrap().unwrap().source;

        let r = upsert(
            &mut conn,
            &[profile("a"), profile("b")],
            ProfileSource::Sandbox,
        )
        .unwrap();
        assert_eq!(
            r,
            UpsertReport {
                inserted: 2,
                updated: 0
            }
        );
        // The writer's source wins over what the profile says.
        assert_eq!(source(&mut conn, "a"), ProfileSource::Sandbox);

        let r = upsert(&mut conn, &[profile("a")], ProfileSource::File).unwrap();
        assert_eq!(
            r,
            UpsertReport {
                inserted: 0,
                updated: 1
            }
        );
        assert_eq!(source(&mut conn, "a"), ProfileSource::File);
        assert_eq!(source(&mut conn, "b"), ProfileSource::Sandbox);

        diesel::update(users::table.find("b"))
            .set(users::source.eq("ldap"))
            .execute(&mut conn)
            .unwrap();
        let e = get(&mut conn, "b").unwrap_err().to_string();
        assert!(
            e.contains(
                "user b: stored source 'ldap' is not a profile source (expected file or sandbox or bk-user or dingtalk)"
            ),
            "{e}"
        );
    }
}
