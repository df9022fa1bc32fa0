//! The platform's own CMSI behind ding-channel: `DING_CHANNEL_UPSTREAM_CMSI`, the ESB's base
//! URL, and `DING_CHANNEL_UPSTREAM_TIMEOUT_MS`.

use super::{http_url, int_in, quoted, ConfigError, Parse, Url};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// The ESB's base URL without `/api/c/compapi` (as platforms' `BK_COMPONENT_API_URL`);
    /// it carries no credentials, so it may be shown in logs and answers.
    pub cmsi: Url,
    /// The longest a call to it may take, connecting included.
    pub timeout: Duration,
}

/// The upstream, or `None` when `DING_CHANNEL_UPSTREAM_CMSI` is empty (nothing is passed on).
pub(super) fn read(parse: &Parse<'_>) -> Result<Option<UpstreamSettings>, ConfigError> {
    let cmsi = parse("DING_CHANNEL_UPSTREAM_CMSI", "", &|v| {
        if v.is_empty() {
            Ok(())
        } else {
            base_url(v).map(drop)
        }
    })?;
    let timeout = parse("DING_CHANNEL_UPSTREAM_TIMEOUT_MS", "5000", &|v| {
        int_in(v, 100, 60_000)
    })?;
    Ok((!cmsi.is_empty()).then(|| UpstreamSettings {
        cmsi: base_url(&cmsi).expect("validated above"),
        timeout: Duration::from_millis(timeout.parse().expect("validated above")),
    }))
}

/// The ESB's base URL: http(s), no credentials (the caller's own are forwarded, and the URL is
/// shown in answers), no query, and not ending in `/api/c/compapi`, which is added per request.
fn base_url(v: &str) -> Result<Url, String> {
    // Checked before anything that would echo the value.
    if Url::parse(v).is_ok_and(|u| !u.username().is_empty() || u.password().is_some()) {
        return Err(
            "carries credentials; drop them: each caller's own authentication is forwarded"
                .to_owned(),
        );
    }
    let url = http_url(v)?;
    let v = quoted(v);
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "{v} names no host (use e.g. http://paas.example.com)"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{v} has a query or fragment; give the ESB's base URL only (e.g. http://paas.example.com)"
        ));
    }
    if url.path().trim_end_matches('/').ends_with("/api/c/compapi") {
        return Err(format!(
            "{v} ends in /api/c/compapi; drop it (ding-channel adds /api/c/compapi/… to the base URL)"
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;
    use std::time::Duration;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, super::ConfigError> {
        Settings::from_env_map(crate::config::tests::env(pairs))
    }

    #[test]
    fn the_upstream_cmsi_is_a_base_url_without_credentials() {
        let s = load(&[]).unwrap();
        assert!(s.upstream.is_none());
        let s = load(&[
            ("DING_CHANNEL_UPSTREAM_CMSI", "http://10.0.0.5:8000/"),
            ("DING_CHANNEL_UPSTREAM_TIMEOUT_MS", "800"),
        ])
        .unwrap();
        let up = s.upstream.unwrap();
        assert_eq!(up.cmsi.as_str(), "http://10.0.0.5:8000/");
        assert_eq!(up.timeout, Duration::from_millis(800));
        let s = load(&[("DING_CHANNEL_UPSTREAM_CMSI", "http://esb")]).unwrap();
        assert_eq!(s.upstream.unwrap().timeout, Duration::from_secs(5));

        let err = |pairs: &[(&str, &str)]| load(pairs).unwrap_err().to_string();
        assert_eq!(
            err(&[("DING_CHANNEL_UPSTREAM_CMSI", "http://paas.example.com/api/c/compapi/")]),
            "DING_CHANNEL_UPSTREAM_CMSI (environment): 'http://paas.example.com/api/c/compapi/' ends in /api/c/compapi; drop it (ding-channel adds /api/c/compapi/… to the base URL)"
        );
        let with_password = err(&[("DING_CHANNEL_UPSTREAM_CMSI", "http://u:hunter2@esb:80")]);
        assert_eq!(
            with_password,
            "DING_CHANNEL_UPSTREAM_CMSI (environment): carries credentials; drop them: each caller's own authentication is forwarded"
        );
        // Whether or not the rest parses, a value holding '@' is never quoted.
        for value in [
            "ftp://u:hunter2@esb",
            "http://u:hunter2@esb:99999",
            "u:hunter2@esb:80",
            "http://esb/a@hunter2?x",
        ] {
            let e = err(&[("DING_CHANNEL_UPSTREAM_CMSI", value)]);
            assert!(!e.contains("hunter2"), "{e}");
            assert!(
                e.starts_with("DING_CHANNEL_UPSTREAM_CMSI (environment): "),
                "{e}"
            );
        }
        assert_eq!(
            err(&[("DING_CHANNEL_UPSTREAM_CMSI", "http://u:hunter2@esb:99999")]),
            "DING_CHANNEL_UPSTREAM_CMSI (environment): the value (not shown: it holds '@', perhaps user:password@; give the URL without credentials) is not a URL (invalid port number)"
        );
        assert!(err(&[("DING_CHANNEL_UPSTREAM_CMSI", "ftp://esb")]).contains("scheme 'ftp'"));
        assert!(err(&[("DING_CHANNEL_UPSTREAM_CMSI", "http://esb/?a=1")]).contains("query"));
        assert_eq!(
            err(&[
                ("DING_CHANNEL_UPSTREAM_CMSI", "http://esb"),
                ("DING_CHANNEL_UPSTREAM_TIMEOUT_MS", "0")
            ]),
            "DING_CHANNEL_UPSTREAM_TIMEOUT_MS (environment): '0' is not a whole number from 100 to 60000"
        );
    }
}
