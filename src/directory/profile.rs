//! A platform user profile (bk-user shape) and the validated types it is built from.

use crate::domain::mobile::{self, Mobile};
use serde::{Serialize, Serializer};
use std::fmt;

pub use crate::domain::username::Username;

/// Which directory provider last wrote a profile; stored as its text in `users.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProfileSource {
    /// `ding-channel users import FILE`.
    File,
    /// The demo users `serve --sandbox` seeds.
    Sandbox,
    /// `ding-channel users sync --from bk-user`, the periodic sync, and a username looked up
    /// in bk-user at send time.
    BkUser,
    /// `ding-channel users sync --from dingtalk --create-profiles`: a DingTalk member no
    /// profile had the phone of.
    DingTalk,
}

impl ProfileSource {
    const ALL: [ProfileSource; 4] = [
        ProfileSource::File,
        ProfileSource::Sandbox,
        ProfileSource::BkUser,
        ProfileSource::DingTalk,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProfileSource::File => "file",
            ProfileSource::Sandbox => "sandbox",
            ProfileSource::BkUser => "bk-user",
            ProfileSource::DingTalk => "dingtalk",
        }
    }

    /// The stored text back, exactly: anything else means the row was written by something
    /// that is not a provider, which should be seen rather than guessed at.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|source| source.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "'{s}' is not a profile source (expected {})",
                    known.join(" or ")
                )
            })
    }
}

impl fmt::Display for ProfileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ProfileSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A user as the platform's directory (bk-user) describes it. Optional text fields are
/// `None` when absent or empty, so "empty" has one representation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    pub username: Username,
    pub display_name: Option<String>,
    pub telephone: Option<Mobile>,
    /// Digits only, without `+`; `86` when the source leaves it out. bk-user keeps it even
    /// without a telephone; with one, it is the telephone's (an import refuses a mismatch).
    pub country_code: String,
    pub email: Option<String>,
    pub wx_userid: Option<String>,
    pub qq: Option<String>,
    /// A JSON object (`{}` when absent).
    pub extras: serde_json::Map<String, serde_json::Value>,
    /// Where this profile came from; [`store::upsert`](super::store::upsert) records the
    /// writer's source, whatever this says.
    pub source: ProfileSource,
    /// What bk-user says of the account (empty for other sources).
    pub standing: Standing,
}

/// What bk-user says of an account, and whether it still lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Standing {
    /// bk-user's `status`: `NORMAL`, `LOCKED`, `DISABLED`, `DELETED` (newer versions add more).
    pub status: Option<String>,
    /// bk-user's `staff_status`: `IN` (employed) or `OUT` (left).
    pub staff_status: Option<String>,
    /// When a sync first found that bk-user no longer lists the user (Unix ms).
    pub gone_since: Option<i64>,
}

impl Standing {
    /// Why a send must not reach this user. As CMSI decides (docs/blueking.md, "bk-user"):
    /// only a `NORMAL` or `LOCKED` account of someone still employed is notified, so an
    /// unknown status is refused too.
    pub fn refusal(&self) -> Option<String> {
        if self.gone_since.is_some() {
            return Some("no longer in bk-user (removed there since the last sync)".into());
        }
        if let Some(status) = self.status.as_deref() {
            if !matches!(status, "NORMAL" | "LOCKED") {
                return Some(format!("disabled in bk-user (status {status})"));
            }
        }
        match self.staff_status.as_deref() {
            None | Some("IN") => None,
            Some(other) => Some(format!("has left (bk-user staff_status {other})")),
        }
    }
}

impl Profile {
    pub const DEFAULT_COUNTRY_CODE: &'static str = mobile::DEFAULT_COUNTRY_CODE;

    /// The mobile as DingTalk's getbymobile takes it (see [`Mobile`]).
    pub fn dingtalk_mobile(&self) -> Option<String> {
        self.telephone.as_ref().map(Mobile::to_string)
    }

    /// Sets a text field [`Profile::field`] reads. `telephone` is a [`Mobile`], set directly,
    /// so here that name lands in `extras` like any other unknown one.
    pub fn set_field(&mut self, name: &str, value: String) {
        match name {
            "display_name" => self.display_name = Some(value),
            "email" => self.email = Some(value),
            "wx_userid" => self.wx_userid = Some(value),
            "qq" => self.qq = Some(value),
            other => {
                let key = other.strip_prefix("extras.").unwrap_or(other);
                self.extras.insert(key.to_owned(), value.into());
            }
        }
    }

    /// The profile field a channel's comp_conf names (`token_field`, `sign_field`,
    /// `keyword_field`); unknown names are looked up in `extras` so an admin can keep robot
    /// credentials there, as the key itself or, written `extras.KEY`, as `KEY`.
    pub fn field(&self, name: &str) -> Option<&str> {
        let v = match name {
            "display_name" => self.display_name.as_deref(),
            "telephone" => self.telephone.as_ref().map(Mobile::national),
            "email" => self.email.as_deref(),
            "wx_userid" => self.wx_userid.as_deref(),
            "qq" => self.qq.as_deref(),
            other => self.extras.get(other).and_then(|v| v.as_str()).or_else(|| {
                let key = other.strip_prefix("extras.")?;
                self.extras.get(key).and_then(|v| v.as_str())
            }),
        };
        v.filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_source_text_round_trips_and_parses_strictly() {
        for source in ProfileSource::ALL {
            assert_eq!(ProfileSource::parse(source.as_str()), Ok(source));
            assert_eq!(source.to_string(), source.as_str());
        }
        assert_eq!(ProfileSource::File.as_str(), "file");
        assert_eq!(ProfileSource::Sandbox.as_str(), "sandbox");
        assert_eq!(ProfileSource::BkUser.as_str(), "bk-user");
        for bad in ["File", " file", "file ", "", "bk_user"] {
            assert_eq!(
                ProfileSource::parse(bad),
                Err(format!(
                    "'{bad}' is not a profile source (expected file or sandbox or bk-user or dingtalk)"
                ))
            );
        }
        assert_eq!(
            serde_json::to_string(&ProfileSource::Sandbox).unwrap(),
            r#""sandbox""#
        );
    }

    #[test]
    fn only_normal_or_locked_accounts_of_staff_still_in_are_notified() {
        let standing = |status: Option<&str>, staff: Option<&str>, gone: Option<i64>| {
            Standing {
                status: status.map(Into::into),
                staff_status: staff.map(Into::into),
                gone_since: gone,
            }
            .refusal()
        };
        assert_eq!(standing(None, None, None), None);
        assert_eq!(standing(Some("NORMAL"), Some("IN"), None), None);
        assert_eq!(standing(Some("LOCKED"), Some("IN"), None), None);
        assert_eq!(
            standing(Some("DISABLED"), Some("IN"), None).as_deref(),
            Some("disabled in bk-user (status DISABLED)")
        );
        assert_eq!(
            standing(Some("EXPIRED"), None, None).as_deref(),
            Some("disabled in bk-user (status EXPIRED)")
        );
        assert_eq!(
            standing(Some("NORMAL"), Some("OUT"), None).as_deref(),
            Some("has left (bk-user staff_status OUT)")
        );
        assert_eq!(
            standing(Some("NORMAL"), Some("IN"), Some(1)).as_deref(),
            Some("no longer in bk-user (removed there since the last sync)")
        );
    }
}
