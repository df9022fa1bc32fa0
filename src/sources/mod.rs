//! The inbound seam: each source turns its callers' requests into a
//! [`SendRequest`](crate::domain::request::SendRequest), submits it to the
//! [`SendService`](crate::core::SendService) and turns the
//! [`Receipt`](crate::core::Receipt) into its own answer ([`Source`]). The ESB/CMSI
//! components are the first source (the command line's `send` reuses its argument parser and
//! the same service).
//!
//! To add one: a module here with its routes, implementing [`Source`]
//! for its payload and answer, and its routes added in [`configure`].

pub mod alertmanager;
pub mod esb;
pub mod grafana;
pub mod tokens;

use crate::core::Receipt;
use crate::domain::request::SendRequest;

/// Every source's routes.
pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    esb::routes::configure(cfg);
    alertmanager::routes::configure(cfg);
    grafana::configure(cfg);
}

/// Where in `value` a string holds a NUL (as `key`, `key.inner` or `key[2]`, under `at`): no
/// store takes it (PostgreSQL refuses it in text) and DingTalk shows nothing sensible for it.
pub fn nul_at(value: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Some(at.to_owned()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_at(v, &format!("{at}[{i}]"))),
        // Keys are shown escaped: the path goes into the answer and a log line.
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let path = match at {
                "" => k.escape_debug().to_string(),
                at => format!("{at}.{}", k.escape_debug()),
            };
            if k.contains('\0') {
                Some(path)
            } else {
                nul_at(v, &path)
            }
        }),
        _ => None,
    }
}

/// Where in the arguments `map`, keys included, a string holds a NUL (named as [`nul_at`]
/// names it).
pub fn nul_in(map: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    map.iter().find_map(|(k, v)| {
        let at = k.escape_debug().to_string();
        if k.contains('\0') {
            Some(at)
        } else {
            nul_at(v, &at)
        }
    })
}

/// The refusal's wording for [`nul_at`].
pub const NUL_PROBLEM: &str =
    "contains a NUL character (\\u0000), which cannot be stored or sent; remove it";

pub trait Source {
    /// What the caller sent, as the source reads it.
    type Input<'a>;
    /// Why an input is refused (it names the field and the fix).
    type Error;
    /// What the caller gets back.
    type Answer;

    fn request(&self, input: Self::Input<'_>) -> Result<SendRequest, Self::Error>;
    fn answer(&self, receipt: &Receipt) -> Self::Answer;
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_nul_is_found_by_its_path_in_values_and_keys() {
        let v = json!({"ok": "x", "labels": {"env": "pr\u{0}od"}});
        assert_eq!(super::nul_at(&v, "").as_deref(), Some("labels.env"));
        let v = json!([1, {"a\u{0}": 2}]);
        assert_eq!(
            super::nul_at(&v, "alerts").as_deref(),
            Some("alerts[1].a\\0")
        );
        assert_eq!(super::nul_at(&json!({"a": ["b", 3, null]}), ""), None);
    }

    #[test]
    fn a_nul_in_an_argument_name_is_found_too() {
        let args = |v: serde_json::Value| v.as_object().unwrap().clone();
        assert_eq!(
            super::nul_in(&args(json!({"a\u{0}b": 1}))).as_deref(),
            Some("a\\0b")
        );
        assert_eq!(
            super::nul_in(&args(json!({"a\n": ["\u{0}"]}))).as_deref(),
            Some("a\\n[0]")
        );
        assert_eq!(super::nul_in(&args(json!({"a": {"b": "c"}}))), None);
    }
}
