//! Secrets: masking for display, and the salted hash app secrets are stored as.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How a secret is shown anywhere a person can read it (DESIGN §8.12): short ones entirely
/// hidden, longer ones as first 2 + `****` + last 2 characters.
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        "****".to_owned()
    } else {
        let head: String = chars[..2].iter().collect();
        let tail: String = chars[chars.len() - 2..].iter().collect();
        format!("{head}****{tail}")
    }
}

/// Random bytes as lower-case hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random source is available");
    hex(&buf)
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// App secrets are machine-generated credentials, so a salted HMAC-SHA256 is the right cost:
/// a slow password hash would put milliseconds of CPU on every ESB request.
pub fn hash_app_secret(secret: &str) -> String {
    let salt = random_hex(16);
    format!(
        "v1${salt}${}",
        hex(&mac(&salt, secret).finalize().into_bytes())
    )
}

/// Constant-time comparison of `secret` with a stored hash.
pub fn verify_app_secret(secret: &str, stored: &str) -> bool {
    let mut parts = stored.splitn(3, '$');
    let (Some("v1"), Some(salt), Some(digest)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Some(expected) = unhex(digest) else {
        return false;
    };
    mac(salt, secret).verify_slice(&expected).is_ok()
}

/// SHA-256 as lower-case hex.
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex(&Sha256::digest(s.as_bytes()))
}

/// Spends the same work as a real check, so an unknown app can't be told from a wrong secret
/// by timing.
pub fn verify_against_nothing(secret: &str) {
    let _ = mac("0000000000000000", secret).verify_slice(&[0u8; 32]);
}

fn mac(salt: &str, secret: &str) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(salt.as_bytes()).expect("HMAC takes any key length");
    m.update(secret.as_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_by_length() {
        assert_eq!(mask(""), "****");
        assert_eq!(mask("demo-secret"), "****");
        assert_eq!(mask("SEC0123456789abcdef"), "SE****ef");
        assert_eq!(mask("钉钉钉钉钉钉钉钉钉钉钉钉"), "钉钉****钉钉");
    }

    #[test]
    fn sha256_is_the_standard_one() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hashed_secret_verifies_only_itself() {
        let stored = hash_app_secret("s3cret-value");
        assert!(stored.starts_with("v1$"));
        assert!(!stored.contains("s3cret"));
        assert!(verify_app_secret("s3cret-value", &stored));
        assert!(!verify_app_secret("s3cret-valuf", &stored));
        assert!(!verify_app_secret("", &stored));
        assert!(!verify_app_secret("s3cret-value", "garbage"));
        assert_ne!(stored, hash_app_secret("s3cret-value"), "salted");
    }
}
