//! ESB app authentication: `bk_app_code` + `bk_app_secret` as arguments or in the
//! `X-Bkapi-Authorization` header, checked against the `apps` table (secrets stored hashed).

use super::error::EsbError;
use super::params::Params;
use crate::db::models::AppRow;
use crate::db::schema::apps;
use crate::db::{now_ms, DbConn, DbError};
use crate::secret;
use diesel::prelude::*;

pub const HEADER: &str = "X-Bkapi-Authorization";

pub struct Credentials {
    pub app_code: String,
    app_secret: String,
    /// `bk_username`, when the caller names its user; recorded as the sender.
    pub username: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("app_code", &self.app_code)
            .field("app_secret", &"****")
            .field("username", &self.username)
            .finish()
    }
}

const MISSING: &str =
    "send bk_app_code and bk_app_secret as arguments or in the X-Bkapi-Authorization header (which also takes app_code and app_secret)";
const REJECTED: &str = "bk_app_code or bk_app_secret is not accepted";

impl Credentials {
    /// Credentials read some other way (HTTP basic for the webhook sources).
    pub fn new(app_code: String, app_secret: String) -> Self {
        Self {
            app_code,
            app_secret,
            username: None,
        }
    }

    /// The header wins over arguments when both are present.
    pub fn from_request(header: Option<&[u8]>, params: &Params) -> Result<Self, EsbError> {
        if let Some(raw) = header {
            let v: serde_json::Value = serde_json::from_slice(raw).map_err(|_| {
                EsbError::AppAuth("X-Bkapi-Authorization must be a JSON object with bk_app_code and bk_app_secret")
            })?;
            // The SDKs that bk-sops and ITSM vendor write the short names.
            let field = |names: [&str; 2]| {
                names.iter().find_map(|k| {
                    v.get(*k)
                        .and_then(|x| x.as_str())
                        .map(str::to_owned)
                        .filter(|s| !s.is_empty())
                })
            };
            return match (
                field(["bk_app_code", "app_code"]),
                field(["bk_app_secret", "app_secret"]),
            ) {
                (Some(app_code), Some(app_secret)) => Ok(Self {
                    app_code,
                    app_secret,
                    username: field(["bk_username", "username"])
                        .or(params.str("bk_username").ok().flatten()),
                }),
                _ => Err(EsbError::AppAuth(MISSING)),
            };
        }
        match (params.str("bk_app_code"), params.str("bk_app_secret")) {
            (Ok(Some(app_code)), Ok(Some(app_secret))) => Ok(Self {
                app_code,
                app_secret,
                username: params.str("bk_username").ok().flatten(),
            }),
            _ => Err(EsbError::AppAuth(MISSING)),
        }
    }

    /// Unknown app and wrong secret get the same answer, after the same work.
    pub fn verify(&self, conn: &mut DbConn) -> Result<(), EsbError> {
        let stored: Option<String> = apps::table
            .find(&self.app_code)
            .select(apps::secret_hash)
            .get_result(conn)
            .optional()?;
        let ok = match stored {
            Some(hash) => secret::verify_app_secret(&self.app_secret, &hash),
            None => {
                secret::verify_against_nothing(&self.app_secret);
                false
            }
        };
        if ok {
            Ok(())
        } else {
            Err(EsbError::AppAuth(REJECTED))
        }
    }
}

/// App codes as BlueKing uses them: letters, digits, `_` and `-`, 1–64 characters.
pub fn validate_app_code(code: &str) -> Result<(), String> {
    if code.is_empty() || code.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !code
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!("'{code}' may hold only letters, digits, _ and -"));
    }
    Ok(())
}

pub fn validate_app_secret(secret: &str) -> Result<(), String> {
    if secret.chars().count() < 8 {
        return Err("must be at least 8 characters".into());
    }
    if secret.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// Adds an app, or replaces its secret when `replace` is set. Returns whether it existed.
pub fn upsert_app(
    conn: &mut DbConn,
    code: &str,
    app_secret: &str,
    replace: bool,
) -> Result<Result<bool, String>, DbError> {
    let exists = apps::table.find(code).count().get_result::<i64>(conn)? > 0;
    let now = now_ms();
    let hash = secret::hash_app_secret(app_secret);
    match (exists, replace) {
        (true, false) => Ok(Err(format!(
            "app '{code}' exists; pass --replace to give it a new secret"
        ))),
        (true, true) => {
            diesel::update(apps::table.find(code))
                .set((apps::secret_hash.eq(hash), apps::updated_at.eq(now)))
                .execute(conn)?;
            Ok(Ok(true))
        }
        (false, _) => {
            diesel::insert_into(apps::table)
                .values(AppRow {
                    code: code.to_owned(),
                    secret_hash: hash,
                    created_at: now,
                    updated_at: now,
                })
                .execute(conn)?;
            Ok(Ok(false))
        }
    }
}

pub fn list_apps(conn: &mut DbConn) -> Result<Vec<AppRow>, DbError> {
    Ok(apps::table
        .order(apps::code)
        .select(AppRow::as_select())
        .load(conn)?)
}

pub fn remove_app(conn: &mut DbConn, code: &str) -> Result<bool, DbError> {
    Ok(diesel::delete(apps::table.find(code)).execute(conn)? > 0)
}
