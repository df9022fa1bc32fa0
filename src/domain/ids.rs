//! Identifiers this server makes.

use std::fmt;

/// A message's id: 12 hex digits of its acceptance time in milliseconds, then 8 random, so
/// ids sort by time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(String);

impl MessageId {
    pub fn new(now_ms: i64) -> Self {
        Self(format!("{:012x}{}", now_ms, crate::secret::random_hex(4)))
    }

    /// An id as stored or given by a caller (ids are opaque past this point).
    pub fn from_stored(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A person's DingTalk userid (staffId): up to 64 characters, no spaces or control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct DingUserId(String);

impl DingUserId {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 64 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Err(format!(
                "'{s}' is not a DingTalk userid (up to 64 characters, no spaces)"
            ))
        } else {
            Ok(Self(s.to_owned()))
        }
    }

    /// A userid DingTalk gave (getbymobile) or this server stored.
    pub fn from_stored(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DingUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The token a batch of deliveries is claimed under: the claiming process's id, then random
/// hex. On SQLite every process is on this host, so a claim can be told to be a dead
/// process's by its token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimToken(String);

impl ClaimToken {
    #[allow(clippy::new_without_default)] // a fresh random token, not a default value
    pub fn new() -> Self {
        Self(format!(
            "{}-{}",
            std::process::id(),
            crate::secret::random_hex(8)
        ))
    }

    pub fn from_stored(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The process that made the claim, if the token says.
    pub fn process(&self) -> Option<u32> {
        self.0.split_once('-')?.0.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_names_its_process() {
        assert_eq!(ClaimToken::new().process(), Some(std::process::id()));
        assert_eq!(ClaimToken::from_stored("123-ab").process(), Some(123));
        assert_eq!(ClaimToken::from_stored("legacy").process(), None);
    }

    #[test]
    fn userids_have_no_spaces() {
        assert!(DingUserId::parse("manager4220").is_ok());
        assert!(DingUserId::parse("a b")
            .unwrap_err()
            .contains("not a DingTalk userid"));
        assert!(DingUserId::parse("").is_err());
        assert!(DingUserId::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn message_ids_sort_by_time() {
        let (a, b) = (MessageId::new(1_000), MessageId::new(2_000));
        assert!(a < b);
        assert_eq!(a.as_str().len(), 20);
    }
}
