//! The `templates` table. A template is checked before it is stored (compiled, then rendered
//! against the built-in samples), so a broken one is refused when an admin sets it, not found
//! at the next alert; and it is removed only when no channel names it.

use super::{sample, Template, TemplateError};
use crate::channels::registry::{self, Channel};
use crate::clock::Zone;
use crate::db::models::TemplateRow;
use crate::db::schema::templates;
use crate::db::{now_ms, write_tx, DbConn, DbError};
use diesel::prelude::*;

/// The comp_conf key by which a channel names its template.
pub const CONF_KEY: &str = "template";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Invalid(#[from] TemplateError),
    #[error("it renders against neither built-in sample: the notification's {alerts}; the message's {message}")]
    Unrenderable {
        alerts: TemplateError,
        message: TemplateError,
    },
    #[error("template '{name}' is used by channel {channel}; unset it first with `ding-channel channels conf {channel} template=`")]
    InUse { name: String, channel: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(e.into())
    }
}

/// Stores `t` (replacing a template of that name) once it renders against one of the samples
/// (an alert template has no `content`, a message template no `alerts`).
pub fn set(conn: &mut DbConn, t: &Template) -> Result<(), StoreError> {
    t.compile()?;
    let alerts = t.render(&sample::notification(), &Zone::utc());
    let message = t.render(&sample::message(), &Zone::utc());
    if let (Err(alerts), Err(message)) = (alerts, message) {
        return Err(StoreError::Unrenderable { alerts, message });
    }
    let row = TemplateRow {
        name: t.name.clone(),
        title: t.title.clone(),
        body: t.body.clone(),
        updated_at: now_ms(),
    };
    crate::with_conn!(&mut *conn, |c| diesel::insert_into(templates::table)
        .values(&row)
        .on_conflict(templates::name)
        .do_update()
        .set(&row)
        .execute(c))?;
    Ok(())
}

pub fn get(conn: &mut DbConn, name: &str) -> Result<Option<Template>, DbError> {
    Ok(templates::table
        .find(name)
        .select(TemplateRow::as_select())
        .get_result(conn)
        .optional()?
        .map(from_row))
}

/// The templates the channels' comp_conf names (those stored), for one request's read.
pub fn named_by(conn: &mut DbConn, channels: &[Channel]) -> Result<Vec<Template>, DbError> {
    let names: Vec<&str> = channels.iter().filter_map(|c| c.conf(CONF_KEY)).collect();
    if names.is_empty() {
        return Ok(vec![]);
    }
    Ok(templates::table
        .filter(templates::name.eq_any(names))
        .select(TemplateRow::as_select())
        .load(conn)?
        .into_iter()
        .map(from_row)
        .collect())
}

/// Every template with when it was last set (Unix milliseconds), by name.
pub fn list(conn: &mut DbConn) -> Result<Vec<(Template, i64)>, DbError> {
    Ok(templates::table
        .order(templates::name)
        .select(TemplateRow::as_select())
        .load(conn)?
        .into_iter()
        .map(|r| {
            let at = r.updated_at;
            (from_row(r), at)
        })
        .collect())
}

/// Removes the template `name`; `false` when there was none.
pub fn remove(conn: &mut DbConn, name: &str) -> Result<bool, StoreError> {
    write_tx(conn, |conn| {
        if let Some(c) = registry::list(conn)?
            .into_iter()
            .find(|c| c.conf(CONF_KEY) == Some(name))
        {
            return Err(StoreError::InUse {
                name: name.to_owned(),
                channel: c.name,
            });
        }
        let gone = diesel::delete(templates::table.find(name)).execute(conn)?;
        Ok(gone > 0)
    })
}

fn from_row(r: TemplateRow) -> Template {
    Template {
        name: r.name,
        title: r.title,
        body: r.body,
    }
}
