//! A delivery: one message to one target, its kind and its status.

use super::ids::DingUserId;
use std::fmt;

/// Which DingTalk path a delivery takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeliveryKind {
    /// A person, by single chat (the app robot's batchSend).
    User,
    /// A group's custom robot, by its webhook.
    Robot,
    /// A person, by a work notification in the name of the app (asyncsend_v2); same targets
    /// as `User`.
    WorkNotice,
}

impl DeliveryKind {
    pub const ALL: [Self; 3] = [Self::User, Self::Robot, Self::WorkNotice];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Robot => "robot",
            Self::WorkNotice => "work_notice",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for DeliveryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where a delivery stands. `Queued` covers waiting, claimed and in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    Queued,
    Sent,
    Failed,
}

impl DeliveryStatus {
    pub const ALL: [Self; 3] = [Self::Queued, Self::Sent, Self::Failed];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What a delivery is sent to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A robot user, by username: its credentials are read from the profile when it is sent,
    /// so an admin's fix applies to queued messages too.
    Robot(String),
    /// A person whose DingTalk userid is known.
    UserId(DingUserId),
    /// A person whose userid is still to be looked up by phone.
    Mobile(String),
}

const USER_ID: &str = "uid:";
const MOBILE: &str = "mobile:";

impl Target {
    pub fn kind(&self) -> DeliveryKind {
        match self {
            Self::Robot(_) => DeliveryKind::Robot,
            Self::UserId(_) | Self::Mobile(_) => DeliveryKind::User,
        }
    }

    /// The stored form (the `deliveries.target` column).
    pub fn stored(&self) -> String {
        match self {
            Self::Robot(name) => name.clone(),
            Self::UserId(id) => format!("{USER_ID}{id}"),
            Self::Mobile(m) => format!("{MOBILE}{m}"),
        }
    }

    /// Reads the stored form back; `None` for a delivery that has no target (failed before
    /// any attempt) or a form this version does not know.
    pub fn from_stored(kind: DeliveryKind, s: &str) -> Option<Self> {
        let non_empty = |v: &str| (!v.is_empty()).then(|| v.to_owned());
        match kind {
            DeliveryKind::Robot => non_empty(s).map(Self::Robot),
            DeliveryKind::User | DeliveryKind::WorkNotice => {
                if let Some(id) = s.strip_prefix(USER_ID) {
                    non_empty(id).map(|id| Self::UserId(DingUserId::from_stored(id)))
                } else {
                    non_empty(s.strip_prefix(MOBILE)?).map(Self::Mobile)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_back_what_is_stored() {
        for t in [
            Target::Robot("ops-robot".into()),
            Target::UserId(DingUserId::from_stored("alice-ding")),
            Target::Mobile("13800000001".into()),
        ] {
            assert_eq!(Target::from_stored(t.kind(), &t.stored()), Some(t));
        }
        // Work notifications reach people by the same targets.
        let uid = Target::UserId(DingUserId::from_stored("alice-ding"));
        assert_eq!(
            Target::from_stored(DeliveryKind::WorkNotice, &uid.stored()),
            Some(uid)
        );
        assert_eq!(
            Target::from_stored(DeliveryKind::WorkNotice, "mobile:13800000001"),
            Some(Target::Mobile("13800000001".into()))
        );
        assert_eq!(Target::from_stored(DeliveryKind::User, ""), None);
        assert_eq!(Target::from_stored(DeliveryKind::User, "uid:"), None);
        assert_eq!(Target::from_stored(DeliveryKind::User, "alice"), None);
        assert_eq!(Target::from_stored(DeliveryKind::Robot, ""), None);
    }

    #[test]
    fn kinds_and_statuses_round_trip() {
        for k in DeliveryKind::ALL {
            assert_eq!(DeliveryKind::parse(k.as_str()), Some(k));
        }
        for s in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(DeliveryStatus::parse("Sent"), None);
    }
}
