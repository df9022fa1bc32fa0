//! The BlueKing tenant a request is made for (`X-Bk-Tenant-Id` on multi-tenant platforms).

use std::fmt;

/// Tenant ids are short printable identifiers (`default`, `system`, a company's code); the
/// bound keeps a header from filling the delivery log.
pub const MAX_TENANT_ID: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantId(String);

impl TenantId {
    /// Printable ASCII without spaces (as a header carries it), 1 to [`MAX_TENANT_ID`]
    /// characters.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        if s.is_empty() || s.len() > MAX_TENANT_ID {
            return Err(format!("must be 1 to {MAX_TENANT_ID} characters"));
        }
        if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "must be printable ASCII without spaces (found '{}')",
                c.escape_default()
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_short_printable_tokens() {
        assert_eq!(TenantId::parse(" default ").unwrap().as_str(), "default");
        assert_eq!(
            TenantId::parse("corp_1.a-b").unwrap().as_str(),
            "corp_1.a-b"
        );
        assert!(TenantId::parse("租户").is_err());
        assert!(TenantId::parse("").is_err());
        assert!(TenantId::parse("a b")
            .unwrap_err()
            .contains("without spaces"));
        assert!(TenantId::parse("a\u{7}").is_err());
        assert!(TenantId::parse(&"t".repeat(MAX_TENANT_ID)).is_ok());
        assert_eq!(
            TenantId::parse(&"t".repeat(MAX_TENANT_ID + 1)).unwrap_err(),
            "must be 1 to 64 characters"
        );
    }
}
