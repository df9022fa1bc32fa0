//! The second directory provider: bk-user, through the ESB's usermanage API (docs/blueking.md,
//! "bk-user"). [`client`] fetches its pages, [`BkUserPages`] turns them into profiles (the
//! fields an import reads, plus the account's `status` and `staff_status`), [`sync`] writes
//! a whole sync in one transaction and runs it once per interval across processes, and
//! [`lookup`] asks bk-user for a username a send names that the directory does not know.

pub mod client;
pub mod lookup;
pub mod sync;

use super::import::parse_records;
use super::profile::{ProfileSource, Standing, Username};
use super::provider::{Batch, Provider};
use serde_json::Value;
use std::fmt;

/// The profile fields asked of bk-user: what the directory stores, and the account's status.
pub const FIELDS: &str =
    "username,display_name,telephone,country_code,email,wx_userid,qq,extras,status,staff_status";

/// bk-user's records, as fetched (every page of a sync, or the answer to one lookup).
#[derive(Debug, Default)]
pub struct BkUserPages {
    pub records: Vec<Value>,
}

/// A record that could not become a profile: the user (or the record's place, without a
/// username), the field and what is wrong, never a field's secret-bearing value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub user: String,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.user, self.field, self.message)
    }
}

impl Provider for BkUserPages {
    const SOURCE: ProfileSource = ProfileSource::BkUser;
    type Rejection = Rejection;
    type Error = std::convert::Infallible;

    fn read(&self) -> Result<Batch<Rejection>, Self::Error> {
        let who = |i: usize| match self.records[i].get("username").and_then(Value::as_str) {
            Some(name) if !name.trim().is_empty() => format!("user {}", name.trim()),
            _ => format!("record {}", i + 1),
        };
        let mut rejected = vec![];
        let mut standings = Vec::with_capacity(self.records.len());
        for (i, record) in self.records.iter().enumerate() {
            let mut problem = |field: &str, message: String| {
                rejected.push(Rejection {
                    user: who(i),
                    field: field.to_owned(),
                    message,
                })
            };
            let status = code(record.get("status")).map_err(|m| problem("status", m));
            let staff = code(record.get("staff_status")).map_err(|m| problem("staff_status", m));
            standings.push(match (status, staff) {
                (Ok(status), Ok(staff_status)) => Some(Standing {
                    status,
                    staff_status,
                    gone_since: None,
                }),
                _ => None,
            });
        }
        let parsed = parse_records(self.records.clone());
        rejected.extend(parsed.errors.into_iter().map(|e| Rejection {
            user: who(e.row - 1),
            field: e.field,
            message: e.message,
        }));
        let profiles = parsed
            .profiles
            .into_iter()
            .filter_map(|(row, mut p)| {
                p.standing = standings[row - 1].clone()?;
                p.source = Self::SOURCE;
                Some(p)
            })
            .collect();
        Ok(Batch { profiles, rejected })
    }
}

impl BkUserPages {
    /// The standing of every record skipped for another field than its standing: the user is
    /// still known by name, and whether they may be notified must not stay what an older
    /// record said (someone who left with a malformed phone would keep being messaged).
    pub fn standings_of_skipped(&self, batch: &Batch<Rejection>) -> Vec<(String, Standing)> {
        self.records
            .iter()
            .filter_map(|record| {
                let name = record.get("username")?.as_str()?.trim();
                let name = Username::parse(name).ok()?.to_string();
                if batch.profiles.iter().any(|p| p.username.as_str() == name) {
                    return None;
                }
                Some((
                    name,
                    Standing {
                        status: code(record.get("status")).ok()?,
                        staff_status: code(record.get("staff_status")).ok()?,
                        gone_since: None,
                    },
                ))
            })
            .collect()
    }
}

/// A status word as bk-user writes them (`NORMAL`, `IN`): absent or empty is `None`.
fn code(value: Option<&Value>) -> Result<Option<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.len() <= 32 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                Ok(Some(s.to_ascii_uppercase()))
            } else {
                Err(format!(
                    "'{s}' is not a bk-user status (a word such as NORMAL, LOCKED, IN or OUT)"
                ))
            }
        }
        Some(_) => Err("expected text such as NORMAL or IN".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_become_profiles_with_their_standing_and_bad_ones_are_named() {
        let pages = BkUserPages {
            records: vec![
                json!({"username": "alice", "telephone": "13800000001", "country_code": "86",
                       "extras": {}, "status": "NORMAL", "staff_status": "IN", "id": 1}),
                json!({"username": "bob", "status": "DISABLED", "staff_status": "OUT"}),
                json!({"username": "carol", "telephone": "12ab", "status": "NORMAL"}),
                json!({"username": "dave", "status": "not a status"}),
                json!({"telephone": "13800000005"}),
            ],
        };
        let batch = pages.read().unwrap();
        let names: Vec<String> = batch
            .profiles
            .iter()
            .map(|p| p.username.to_string())
            .collect();
        assert_eq!(names, ["alice", "bob"]);
        assert!(batch
            .profiles
            .iter()
            .all(|p| p.source == ProfileSource::BkUser));
        assert_eq!(batch.profiles[0].standing.refusal(), None);
        assert_eq!(
            batch.profiles[1].standing.refusal().as_deref(),
            Some("disabled in bk-user (status DISABLED)")
        );
        let rejected: Vec<String> = batch.rejected.iter().map(ToString::to_string).collect();
        assert_eq!(
            rejected,
            [
                "user dave: status: 'not a status' is not a bk-user status (a word such as NORMAL, LOCKED, IN or OUT)",
                "user carol: telephone: '12ab' is not a phone number (digits only, e.g. 13800000001)",
                "record 5: username: is required",
            ]
        );
    }
}
