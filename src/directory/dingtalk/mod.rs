//! The third directory provider: the organisation's directory in DingTalk itself
//! (docs/dingtalk.md, "The directory"). [`sync`] walks the departments and their members
//! within the app's call budget and fills the phone → userid cache for every member with a
//! mobile, so sends need no getbymobile; with `--create-profiles` it also creates profiles for
//! members no stored profile has the phone of. [`NewProfiles`] turns members into those
//! profiles, the username taken from the field [`UsernameFrom`] names, and [`plan`] decides
//! which of them are written.

pub mod sync;

use super::profile::{Profile, ProfileSource, Username};
use super::provider::{Batch, Provider};
use crate::dingtalk::Member;
use crate::domain::mobile::Mobile;
use std::collections::HashSet;
use std::fmt;

/// Which member field a created profile's username comes from (`--username-from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsernameFrom {
    /// The part of `email` (else `org_email`) before `@`: `alice@example.com` is `alice`.
    #[default]
    EmailLocal,
    JobNumber,
    /// DingTalk's own userid.
    UserId,
}

impl UsernameFrom {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "email-local" => Ok(Self::EmailLocal),
            "job_number" => Ok(Self::JobNumber),
            "userid" => Ok(Self::UserId),
            other => Err(format!(
                "'{other}' is not a member field usernames come from (use email-local, job_number or userid)"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::EmailLocal => "email-local",
            Self::JobNumber => "job_number",
            Self::UserId => "userid",
        }
    }

    /// The username `member` gets, or why it gets none.
    pub fn username(self, member: &Member) -> Result<Username, String> {
        let (field, raw) = match self {
            Self::EmailLocal => {
                let email = member.email.as_deref();
                let local = email.map(|e| e.split_once('@').map(|(local, _)| local));
                if let (Some(e), Some(None)) = (email, local) {
                    return Err(format!("email '{e}' is not an email address (no @)"));
                }
                ("email", local.flatten())
            }
            Self::JobNumber => ("job_number", member.job_number.as_deref()),
            Self::UserId => ("userid", Some(member.userid.as_str())),
        };
        let raw = raw
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("has no {field} in DingTalk to take a username from"))?;
        Username::parse(raw).map_err(|e| format!("{field} gives no valid username: {e}"))
    }
}

/// A member's mobile as the cache and profiles key it, `None` without one.
pub fn mobile(member: &Member) -> Option<Result<Mobile, String>> {
    let raw = member.mobile.as_deref()?;
    Some(Mobile::parse_in(raw, member.state_code.as_deref()).map_err(|e| format!("mobile: {e}")))
}

/// A member left out, and why (never a secret: members carry none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub userid: String,
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DingTalk member {}: {}", self.userid, self.reason)
    }
}

/// Members to become profiles: every member with a mobile and a valid username, in the order
/// listed.
pub struct NewProfiles<'a> {
    pub members: &'a [Member],
    pub username_from: UsernameFrom,
}

impl Provider for NewProfiles<'_> {
    const SOURCE: ProfileSource = ProfileSource::DingTalk;
    type Rejection = Skipped;
    type Error = std::convert::Infallible;

    fn read(&self) -> Result<Batch<Skipped>, Self::Error> {
        let mut batch = Batch {
            profiles: vec![],
            rejected: vec![],
        };
        for m in self.members {
            let skip = |reason: String| Skipped {
                userid: m.userid.clone(),
                reason,
            };
            let telephone = match mobile(m) {
                Some(Ok(t)) => t,
                Some(Err(e)) => {
                    batch.rejected.push(skip(e));
                    continue;
                }
                None => {
                    batch.rejected.push(skip(
                        "has no mobile in DingTalk, so no profile can be matched to them".into(),
                    ));
                    continue;
                }
            };
            match self.username_from.username(m) {
                Ok(username) => batch.profiles.push(Profile {
                    username,
                    display_name: m.name.clone(),
                    country_code: telephone.country_code().to_owned(),
                    telephone: Some(telephone),
                    email: m.email.clone(),
                    wx_userid: None,
                    qq: None,
                    extras: Default::default(),
                    source: Self::SOURCE,
                    standing: Default::default(),
                }),
                Err(e) => batch.rejected.push(skip(e)),
            }
        }
        Ok(batch)
    }
}

/// Which new profiles are written, given the stored ones: a member whose phone a stored
/// profile has already has a profile (`matched`); one whose username a stored profile or an
/// earlier member took is skipped, as a clash an admin resolves.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: Vec<Profile>,
    pub matched: usize,
    pub clashes: Vec<Skipped>,
}

/// `candidates`: each new profile with the userid of the member it came from.
pub fn plan(candidates: Vec<(String, Profile)>, stored: &[Profile]) -> Plan {
    let phones: HashSet<String> = stored.iter().filter_map(Profile::dingtalk_mobile).collect();
    let mut taken: HashSet<String> = stored.iter().map(|p| p.username.to_string()).collect();
    let mut out = Plan::default();
    for (userid, p) in candidates {
        if p.dingtalk_mobile().is_some_and(|m| phones.contains(&m)) {
            out.matched += 1;
        } else if !taken.insert(p.username.to_string()) {
            out.clashes.push(Skipped {
                userid,
                reason: format!(
                    "username {} is already another person's profile (choose another --username-from, or import their profile with the phone DingTalk has)",
                    p.username
                ),
            });
        } else {
            out.create.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn member(userid: &str, mobile: Option<&str>, email: Option<&str>) -> Member {
        Member {
            userid: userid.into(),
            name: Some(format!("Name of {userid}")),
            mobile: mobile.map(Into::into),
            state_code: mobile.map(|_| "86".into()),
            email: email.map(Into::into),
            job_number: Some(format!("E{userid}")),
        }
    }

    #[test]
    fn usernames_come_from_the_field_asked_for() {
        let m = member("u-1", Some("13800000001"), Some("alice.w@example.com"));
        let name = |from: UsernameFrom, m: &Member| from.username(m).map(|u| u.to_string());
        assert_eq!(name(UsernameFrom::EmailLocal, &m), Ok("alice.w".into()));
        assert_eq!(name(UsernameFrom::JobNumber, &m), Ok("Eu-1".into()));
        assert_eq!(name(UsernameFrom::UserId, &m), Ok("u-1".into()));
        let none = member("u-2", None, None);
        assert_eq!(
            name(UsernameFrom::EmailLocal, &none),
            Err("has no email in DingTalk to take a username from".into())
        );
        let bad = member("u-3", None, Some("not-an-address"));
        assert_eq!(
            name(UsernameFrom::EmailLocal, &bad),
            Err("email 'not-an-address' is not an email address (no @)".into())
        );
        let spaced = member("u 4", None, Some("a b@example.com"));
        assert_eq!(
            name(UsernameFrom::EmailLocal, &spaced),
            Err("email gives no valid username: 'a b' contains ' ' (allowed: letters, digits, _ . - @)".into())
        );
        assert!(name(UsernameFrom::UserId, &spaced).is_err());
        assert_eq!(
            UsernameFrom::parse("job_number"),
            Ok(UsernameFrom::JobNumber)
        );
        assert!(UsernameFrom::parse("name")
            .unwrap_err()
            .contains("email-local, job_number or userid"));
        for from in [
            UsernameFrom::EmailLocal,
            UsernameFrom::JobNumber,
            UsernameFrom::UserId,
        ] {
            assert_eq!(UsernameFrom::parse(from.as_str()), Ok(from));
        }
    }

    #[test]
    fn members_without_a_phone_or_username_are_skipped_with_the_reason() {
        let mut abroad = member("u-5", Some("91234567"), Some("eve@example.com"));
        abroad.state_code = Some("852".into());
        let members = [
            member("u-1", Some("13800000001"), Some("alice@example.com")),
            member("u-2", None, Some("bob@example.com")),
            member("u-3", Some("12ab"), Some("carol@example.com")),
            member("u-4", Some("13800000004"), None),
            abroad,
        ];
        let batch = NewProfiles {
            members: &members,
            username_from: UsernameFrom::EmailLocal,
        }
        .read()
        .unwrap();
        let names: Vec<_> = batch
            .profiles
            .iter()
            .map(|p| p.username.to_string())
            .collect();
        assert_eq!(names, ["alice", "eve"]);
        assert_eq!(
            batch.profiles[1].dingtalk_mobile().as_deref(),
            Some("+852-91234567")
        );
        assert_eq!(batch.profiles[1].country_code, "852");
        assert!(batch
            .profiles
            .iter()
            .all(|p| p.source == ProfileSource::DingTalk));
        let why: Vec<String> = batch.rejected.iter().map(ToString::to_string).collect();
        assert_eq!(why.len(), 3);
        assert!(
            why[0].starts_with("DingTalk member u-2: has no mobile"),
            "{why:?}"
        );
        assert!(
            why[1].starts_with("DingTalk member u-3: mobile: "),
            "{why:?}"
        );
        assert_eq!(
            why[2],
            "DingTalk member u-4: has no email in DingTalk to take a username from"
        );
    }

    #[test]
    fn a_member_with_a_stored_phone_is_matched_and_a_taken_username_is_a_clash() {
        let members = [
            member("u-1", Some("13800000001"), Some("alice@example.com")),
            member("u-2", Some("13800000002"), Some("alice@other.example")),
            member("u-3", Some("13800000003"), Some("carol@example.com")),
            member("u-4", Some("13800000004"), Some("carol@elsewhere.example")),
            member("u-5", Some("13800000005"), Some("eve@example.com")),
        ];
        let batch = NewProfiles {
            members: &members,
            username_from: UsernameFrom::EmailLocal,
        }
        .read()
        .unwrap();
        // Stored: "alice" with u-1's phone (matched), "bob" nobody's.
        let stored: Vec<Profile> = batch.profiles[..1].to_vec();
        let ids = ["u-1", "u-2", "u-3", "u-4", "u-5"].map(String::from);
        let plan = plan(ids.into_iter().zip(batch.profiles).collect(), &stored);
        let created: Vec<_> = plan.create.iter().map(|p| p.username.to_string()).collect();
        assert_eq!(created, ["carol", "eve"]);
        assert_eq!(plan.matched, 1);
        let clashes: Vec<_> = plan.clashes.iter().map(|s| s.userid.as_str()).collect();
        assert_eq!(clashes, ["u-2", "u-4"]);
        assert!(plan.clashes[0]
            .reason
            .starts_with("username alice is already another person's profile"));
    }
}
