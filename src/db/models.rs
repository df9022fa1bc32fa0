//! Rows as stored.

use super::schema::*;
use diesel::prelude::*;

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = apps)]
pub struct AppRow {
    pub code: String,
    pub secret_hash: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = channels)]
pub struct ChannelRow {
    pub name: String,
    pub path: String,
    pub method: String,
    pub component: String,
    pub label: String,
    pub label_en: String,
    pub timeout_s: i32,
    pub is_active: bool,
    pub is_hidden: bool,
    pub comp_conf: String,
    pub admin_set: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = users, treat_none_as_null = true)]
pub struct UserRow {
    pub username: String,
    pub display_name: Option<String>,
    pub telephone: Option<String>,
    pub country_code: String,
    pub email: Option<String>,
    pub wx_userid: Option<String>,
    pub qq: Option<String>,
    pub extras: String,
    pub created_at: i64,
    pub updated_at: i64,
}
