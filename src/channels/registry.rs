//! The channel registry (table `channels`): what the manifest declared, plus what an admin set.
//! `sync` loads the manifest without overwriting comp_conf values (or the active switch) an
//! admin changed; everything else follows the manifest.

use super::manifest::{Component, Manifest, Methods};
use super::settings::{self, ConfError};
use crate::db::models::ChannelRow;
use crate::db::schema::channels;
use crate::db::{now_ms, write_tx, DbConn, DbError};
use crate::domain::request::Route;
use diesel::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// A channel as served; as the manifest declares it, `admin_set` is empty.
#[derive(Clone, PartialEq)]
pub struct Channel {
    pub name: String,
    pub path: String,
    pub methods: Methods,
    pub component: Component,
    pub label: String,
    pub label_en: String,
    pub timeout_s: i32,
    pub is_active: bool,
    pub is_hidden: bool,
    pub comp_conf: BTreeMap<String, String>,
    pub admin_set: BTreeSet<String>,
}

/// comp_conf holds secrets (`ding_app_secret`): shown masked.
impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let conf: BTreeMap<&str, String> = self
            .comp_conf
            .iter()
            .map(|(k, v)| {
                let shown = if super::manifest::is_secret_key(k) && !v.is_empty() {
                    crate::secret::mask(v)
                } else {
                    v.clone()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("methods", &self.methods)
            .field("component", &self.component)
            .field("timeout_s", &self.timeout_s)
            .field("is_active", &self.is_active)
            .field("is_hidden", &self.is_hidden)
            .field("comp_conf", &conf)
            .field("admin_set", &self.admin_set)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// The route of a send by this channel; `None` for channels that do not send.
    pub fn route(&self) -> Option<Route> {
        Some(Route {
            channel: self.name.clone(),
            reach: self.component.reach()?,
            wait: std::time::Duration::from_secs(self.timeout_s.max(1) as u64),
        })
    }

    pub fn conf(&self, key: &str) -> Option<&str> {
        self.comp_conf
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

const ADMIN_ACTIVE: &str = "is_active";

impl TryFrom<ChannelRow> for Channel {
    type Error = DbError;
    fn try_from(r: ChannelRow) -> Result<Self, DbError> {
        let corrupt = |what: &str| {
            DbError::Query(diesel::result::Error::DeserializationError(
                format!("channel {}: stored {what} is invalid", r.name).into(),
            ))
        };
        Ok(Self {
            methods: Methods::parse(&r.method).ok_or_else(|| corrupt("method"))?,
            component: Component::parse(&r.component).ok_or_else(|| corrupt("component"))?,
            comp_conf: serde_json::from_str(&r.comp_conf).map_err(|_| corrupt("comp_conf"))?,
            admin_set: serde_json::from_str(&r.admin_set).map_err(|_| corrupt("admin_set"))?,
            name: r.name,
            path: r.path,
            label: r.label,
            label_en: r.label_en,
            timeout_s: r.timeout_s,
            is_active: r.is_active,
            is_hidden: r.is_hidden,
        })
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub inserted: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    /// `channel.key` pairs whose admin value was kept over the manifest's default.
    pub kept: Vec<String>,
}

/// Loads the manifest into the registry in one transaction: all or nothing.
pub fn sync(conn: &mut DbConn, manifest: &Manifest) -> Result<SyncReport, DbError> {
    write_tx(conn, |conn| {
        let mut report = SyncReport::default();
        let now = now_ms();
        for decl in &manifest.channels {
            let existing = find(conn, &decl.name)?;
            let merged = merge(decl, existing.as_ref(), &mut report);
            let row = to_row(&merged, now);
            match existing {
                None => {
                    diesel::insert_into(channels::table)
                        .values(&row)
                        .execute(conn)?;
                    report.inserted.push(decl.name.clone());
                }
                Some(old) if old == merged => report.unchanged.push(decl.name.clone()),
                Some(_) => {
                    diesel::update(channels::table.find(&decl.name))
                        .set((
                            channels::path.eq(&row.path),
                            channels::method.eq(&row.method),
                            channels::component.eq(&row.component),
                            channels::label.eq(&row.label),
                            channels::label_en.eq(&row.label_en),
                            channels::timeout_s.eq(row.timeout_s),
                            channels::is_active.eq(row.is_active),
                            channels::is_hidden.eq(row.is_hidden),
                            channels::comp_conf.eq(&row.comp_conf),
                            channels::updated_at.eq(now),
                        ))
                        .execute(conn)?;
                    report.updated.push(decl.name.clone());
                }
            }
        }
        Ok(report)
    })
}

fn merge(decl: &Channel, existing: Option<&Channel>, report: &mut SyncReport) -> Channel {
    let admin_set = existing.map(|c| c.admin_set.clone()).unwrap_or_default();
    let mut comp_conf = decl.comp_conf.clone();
    if let Some(old) = existing {
        for key in &admin_set {
            if let Some(v) = old.comp_conf.get(key) {
                if decl.comp_conf.get(key) != Some(v) {
                    report.kept.push(format!("{}.{key}", decl.name));
                }
                comp_conf.insert(key.clone(), v.clone());
            }
        }
    }
    Channel {
        is_active: match existing {
            Some(old) if admin_set.contains(ADMIN_ACTIVE) => old.is_active,
            _ => decl.is_active,
        },
        comp_conf,
        admin_set,
        ..decl.clone()
    }
}

fn to_row(c: &Channel, now: i64) -> ChannelRow {
    ChannelRow {
        name: c.name.clone(),
        path: c.path.clone(),
        method: c.methods.to_string(),
        component: c.component.name().to_owned(),
        label: c.label.clone(),
        label_en: c.label_en.clone(),
        timeout_s: c.timeout_s,
        is_active: c.is_active,
        is_hidden: c.is_hidden,
        comp_conf: serde_json::to_string(&c.comp_conf).expect("a string map serializes"),
        admin_set: serde_json::to_string(&c.admin_set).expect("a string set serializes"),
        created_at: now,
        updated_at: now,
    }
}

pub fn find(conn: &mut DbConn, name: &str) -> Result<Option<Channel>, DbError> {
    channels::table
        .find(name)
        .select(ChannelRow::as_select())
        .get_result(conn)
        .optional()?
        .map(Channel::try_from)
        .transpose()
}

pub fn list(conn: &mut DbConn) -> Result<Vec<Channel>, DbError> {
    channels::table
        .order(channels::name)
        .select(ChannelRow::as_select())
        .load(conn)?
        .into_iter()
        .map(Channel::try_from)
        .collect()
}

/// Why `set_conf` stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum SetConfError {
    #[error(transparent)]
    Invalid(#[from] ConfError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for SetConfError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(e.into())
    }
}

/// Sets comp_conf values as an admin; sync keeps them from then on. The channel's settings
/// with the new values must parse, or nothing is stored.
pub fn set_conf(
    conn: &mut DbConn,
    name: &str,
    values: &BTreeMap<String, String>,
) -> Result<Option<Channel>, SetConfError> {
    write_tx(conn, |conn| {
        let Some(mut ch) = find(conn, name)? else {
            return Ok(None);
        };
        for (k, v) in values {
            ch.comp_conf.insert(k.clone(), v.clone());
            ch.admin_set.insert(k.clone());
        }
        settings::check(ch.component, &ch.comp_conf)?;
        save_admin(conn, &ch)?;
        Ok(Some(ch))
    })
}

pub fn set_active(conn: &mut DbConn, name: &str, active: bool) -> Result<Option<Channel>, DbError> {
    write_tx(conn, |conn| {
        let Some(mut ch) = find(conn, name)? else {
            return Ok(None);
        };
        ch.is_active = active;
        ch.admin_set.insert(ADMIN_ACTIVE.to_owned());
        save_admin(conn, &ch)?;
        Ok(Some(ch))
    })
}

fn save_admin(conn: &mut DbConn, ch: &Channel) -> Result<(), DbError> {
    let row = to_row(ch, now_ms());
    diesel::update(channels::table.find(&ch.name))
        .set((
            channels::comp_conf.eq(row.comp_conf),
            channels::admin_set.eq(row.admin_set),
            channels::is_active.eq(row.is_active),
            channels::updated_at.eq(row.updated_at),
        ))
        .execute(conn)?;
    Ok(())
}
