//! Credentials as values that cannot be printed: `Debug` shows them masked, there is no
//! `Display`, and the value itself is reached only through `expose`, at the one place that
//! sends it to DingTalk.

use std::fmt;

macro_rules! secret {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            /// The value, for the request that must carry it.
            pub fn expose(&self) -> &str {
                &self.0
            }

            /// How it is shown anywhere a person can read it.
            pub fn masked(&self) -> String {
                crate::secret::mask(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.masked())
            }
        }
    };
}

secret!(
    /// An internal app's AppSecret (`ding_app_secret`).
    AppSecret
);
secret!(
    /// A group robot's webhook `access_token`.
    RobotToken
);
secret!(
    /// A group robot's `SEC…` signing secret.
    SignSecret
);

secret!(
    /// A webhook source's bearer token (`dct_` and 64 hex characters), made by
    /// `ding-channel apps token`: shown once, stored only as its SHA-256.
    BearerToken
);

impl AppSecret {
    /// Checked where it is configured ([`crate::channels::settings`]).
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
}

impl BearerToken {
    const PREFIX: &'static str = "dct_";

    /// A new token of 32 random bytes.
    pub fn generate() -> Self {
        Self(format!("{}{}", Self::PREFIX, crate::secret::random_hex(32)))
    }

    /// A token as a caller sends it; anything else cannot be one of ours.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix(Self::PREFIX)?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Self(s.to_owned()))
    }

    /// How it is stored: 256 random bits need no salt or slow hash to resist guessing.
    pub fn hash(&self) -> String {
        crate::secret::sha256_hex(&self.0)
    }
}

impl RobotToken {
    /// The `access_token=` value of a webhook URL: 16–128 letters, digits, `-` and `_`.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let ok = (16..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| Self(s.to_owned()))
            .ok_or("expected the access_token= value of the webhook URL")
    }

    /// 64 hex characters: the token of a robot secured by keyword or IP, which signs nothing.
    pub fn is_bare_hex(s: &str) -> bool {
        s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
    }
}

impl SignSecret {
    /// Whether a profile field holds a signing secret at all (it may still be malformed).
    pub fn looks_like(s: &str) -> bool {
        s.starts_with("SEC")
    }

    /// `SEC` followed by letters and digits, as DingTalk shows it.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let ok =
            Self::looks_like(s) && s.len() >= 16 && s.bytes().all(|b| b.is_ascii_alphanumeric());
        ok.then(|| Self(s.to_owned()))
            .ok_or("expected SEC followed by letters and digits")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_print_masked() {
        let token = RobotToken::parse(&"a".repeat(64)).unwrap();
        assert_eq!(format!("{token:?}"), "RobotToken(aa****aa)");
        let sec = SignSecret::parse("SEC0123456789abcdef").unwrap();
        assert!(!format!("{sec:?}").contains("0123456789"));
        assert_eq!(format!("{:?}", AppSecret::new("short")), "AppSecret(****)");
    }

    #[test]
    fn malformed_credentials_are_refused() {
        assert!(RobotToken::parse("short").is_err());
        assert!(RobotToken::parse(&"a b".repeat(10)).is_err());
        assert!(SignSecret::parse("SEC-not-alnum-0000").is_err());
        assert!(SignSecret::parse("0123456789abcdefgh").is_err());
        assert!(RobotToken::is_bare_hex(&"0f".repeat(32)));
        assert!(!RobotToken::is_bare_hex(&"zz".repeat(32)));
    }

    #[test]
    fn bearer_tokens_are_random_parse_back_and_hash_to_hex() {
        let (a, b) = (BearerToken::generate(), BearerToken::generate());
        assert_ne!(a, b);
        assert_eq!(BearerToken::parse(a.expose()), Some(a.clone()));
        assert!(!format!("{a:?}").contains(&a.expose()[4..60]));
        let hash = a.hash();
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains(&a.expose()[4..]));
        assert_ne!(hash, b.hash());
        for bad in [
            "dct_",
            "dct_0123",
            &format!("xyz_{}", "0".repeat(64)),
            &format!("dct_{}", "g".repeat(64)),
        ] {
            assert_eq!(BearerToken::parse(bad), None, "{bad}");
        }
    }
}
