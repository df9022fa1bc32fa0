//! The BlueKing API gateway's settings: the public keys its `X-Bkapi-JWT` is verified with,
//! the issuer it must name, and the apps it may vouch for. Key files are read and parsed here,
//! at start-up, so a wrong path or a key of the wrong kind stops the server with the key's name
//! and the file instead of refusing every call later.

use super::{ConfigError, Parse};
use jsonwebtoken::DecodingKey;
use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, Default)]
pub struct GatewaySettings {
    /// `DING_CHANNEL_APIGW_PUBLIC_KEY`: every key a token may be signed with (more than one
    /// while the gateway's key is rotated). Empty: JWTs are not accepted.
    pub public_keys: Vec<PublicKey>,
    /// `DING_CHANNEL_APIGW_ISSUER`: the `iss` a token must carry, when set.
    pub issuer: Option<String>,
    /// `DING_CHANNEL_APIGW_APPS`: the app codes a token may name, when set.
    pub apps: Option<BTreeSet<String>>,
}

impl GatewaySettings {
    pub fn enabled(&self) -> bool {
        !self.public_keys.is_empty()
    }
}

/// One gateway public key and the file it came from (named in logs and errors).
#[derive(Clone)]
pub struct PublicKey {
    pub file: PathBuf,
    pub key: DecodingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("file", &self.file)
            .finish()
    }
}

/// The `DING_CHANNEL_APIGW_*` keys; without a public key, JWTs are not accepted and the other
/// two must be unset.
pub(super) fn read(parse: &Parse<'_>) -> Result<GatewaySettings, ConfigError> {
    // The key files are read once, while they are validated.
    let keys = std::cell::OnceCell::new();
    let public_key = parse("DING_CHANNEL_APIGW_PUBLIC_KEY", "", &|v| {
        keys.get_or_init(|| public_keys(v)).clone().map(drop)
    })?;
    let needs_key = |v: &str| {
        if public_key.is_empty() && !v.is_empty() {
            Err("is set, but DING_CHANNEL_APIGW_PUBLIC_KEY is not: set it to the API gateway's public key file, or unset this".to_owned())
        } else {
            Ok(())
        }
    };
    let issuer = parse("DING_CHANNEL_APIGW_ISSUER", "", &needs_key)?;
    let gateway_apps = parse("DING_CHANNEL_APIGW_APPS", "", &|v| {
        needs_key(v)?;
        if v.is_empty() {
            Ok(())
        } else {
            apps(v).map(drop)
        }
    })?;
    Ok(GatewaySettings {
        public_keys: keys
            .into_inner()
            .unwrap_or(Ok(vec![]))
            .expect("validated above"),
        issuer: (!issuer.is_empty()).then_some(issuer),
        apps: (!gateway_apps.is_empty()).then(|| apps(&gateway_apps).expect("validated above")),
    })
}

/// `a.pem,b.pem` → the RSA public keys in those files, in that order.
fn public_keys(v: &str) -> Result<Vec<PublicKey>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|file| {
            let pem = std::fs::read(file).map_err(|e| format!("cannot read {file}: {e}"))?;
            // A private key parses as an RSA key too, and would only fail at the first
            // request; and it must never sit on this server.
            if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
                return Err(format!(
                    "{file} holds a private key; give the API gateway's public key (-----BEGIN PUBLIC KEY-----), and keep the private key on the gateway"
                ));
            }
            let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                format!("{file} is not an RSA public key in PEM form (-----BEGIN PUBLIC KEY-----): {e}")
            })?;
            Ok(PublicKey {
                file: PathBuf::from(file),
                key,
            })
        })
        .collect()
}

/// `app-a, app-b` → the app codes, each as BlueKing spells them.
fn apps(v: &str) -> Result<BTreeSet<String>, String> {
    let apps: BTreeSet<String> = v
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    if apps.is_empty() {
        return Err(
            "names no app code (use a comma-separated list, e.g. bk_monitorv3,bk_job)".into(),
        );
    }
    if let Some(bad) = apps.iter().find(|a| {
        a.len() > 64
            || !a
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }) {
        return Err(format!(
            "'{bad}' is not an app code (1 to 64 letters, digits, _ and -)"
        ));
    }
    Ok(apps)
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;
    use std::path::Path;

    fn fixture(name: &str) -> String {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
            .display()
            .to_string()
    }

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        Settings::from_env_map(crate::config::tests::env(pairs)).map_err(|e| e.to_string())
    }

    #[test]
    fn keys_load_in_order_and_the_options_parse() {
        let keys = format!(
            "{}, {}",
            fixture("apigw-test-only-public.pem"),
            fixture("apigw-test-only-rotated-public.pem")
        );
        let s = load(&[
            ("DING_CHANNEL_APIGW_PUBLIC_KEY", &keys),
            ("DING_CHANNEL_APIGW_ISSUER", "APIGW"),
            ("DING_CHANNEL_APIGW_APPS", "bk_job, bk_monitorv3,"),
        ])
        .unwrap();
        let files: Vec<_> = s
            .gateway
            .public_keys
            .iter()
            .map(|k| k.file.clone())
            .collect();
        assert_eq!(files.len(), 2);
        assert!(files[1].ends_with("apigw-test-only-rotated-public.pem"));
        assert_eq!(s.gateway.issuer.as_deref(), Some("APIGW"));
        assert_eq!(
            s.gateway.apps.unwrap().into_iter().collect::<Vec<_>>(),
            ["bk_job", "bk_monitorv3"]
        );
        assert!(!load(&[]).unwrap().gateway.enabled());
    }

    #[test]
    fn bad_keys_name_the_setting_and_the_file() {
        let e = load(&[("DING_CHANNEL_APIGW_PUBLIC_KEY", "/nonexistent/gw.pem")]).unwrap_err();
        assert!(
            e.starts_with(
                "DING_CHANNEL_APIGW_PUBLIC_KEY (environment): cannot read /nonexistent/gw.pem:"
            ),
            "{e}"
        );
        let private = fixture("apigw-test-only-private.pem");
        let e = load(&[("DING_CHANNEL_APIGW_PUBLIC_KEY", &private)]).unwrap_err();
        assert_eq!(
            e,
            format!("DING_CHANNEL_APIGW_PUBLIC_KEY (environment): {private} holds a private key; give the API gateway's public key (-----BEGIN PUBLIC KEY-----), and keep the private key on the gateway")
        );
        let manifest = format!("{}/channel_manifest.json", env!("CARGO_MANIFEST_DIR"));
        let e = load(&[("DING_CHANNEL_APIGW_PUBLIC_KEY", &manifest)]).unwrap_err();
        assert!(
            e.contains(&format!("{manifest} is not an RSA public key in PEM form")),
            "{e}"
        );
    }

    #[test]
    fn issuer_and_apps_need_the_key_and_apps_must_be_app_codes() {
        let e = load(&[("DING_CHANNEL_APIGW_ISSUER", "APIGW")]).unwrap_err();
        assert_eq!(e, "DING_CHANNEL_APIGW_ISSUER (environment): is set, but DING_CHANNEL_APIGW_PUBLIC_KEY is not: set it to the API gateway's public key file, or unset this");
        let key = fixture("apigw-test-only-public.pem");
        let e = load(&[
            ("DING_CHANNEL_APIGW_PUBLIC_KEY", &key),
            ("DING_CHANNEL_APIGW_APPS", "bk_job,bk monitor"),
        ])
        .unwrap_err();
        assert_eq!(e, "DING_CHANNEL_APIGW_APPS (environment): 'bk monitor' is not an app code (1 to 64 letters, digits, _ and -)");
    }
}
