//! Request arguments: query string and body (JSON or form) merged into one map, with typed
//! accessors that turn a wrong value into a `1306406` naming the field.

use super::error::EsbError;
use serde_json::{Map, Value};

#[derive(Debug, Default, Clone)]
pub struct Params {
    map: Map<String, Value>,
}

impl Params {
    /// Query parameters first, then body fields (the body wins on a clash).
    pub fn from_request(
        query: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Self, EsbError> {
        let params = Self::read(query, content_type, body)?;
        if let Some(field) = crate::sources::nul_in(&params.map) {
            return Err(EsbError::bad(field, crate::sources::NUL_PROBLEM));
        }
        Ok(params)
    }

    fn read(query: &str, content_type: Option<&str>, body: &[u8]) -> Result<Self, EsbError> {
        let mut params = Self::default();
        params.merge_form(query.as_bytes(), "query string")?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(params);
        }
        let trimmed = body.trim_ascii();
        // A GET from some SDKs carries the JSON `null` for "no arguments".
        if trimmed == b"null" {
            return Ok(params);
        }
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        // As the ESB reads a body: one that starts with `{` is JSON whatever the Content-Type
        // says (SDKs send none, or a form type, with a JSON body).
        let is_json = if trimmed.starts_with(b"{")
            || ct.starts_with("application/json")
            || ct.contains("+json")
        {
            true
        } else if ct.starts_with("multipart/") {
            return Err(EsbError::bad(
                "body",
                "multipart bodies are not accepted; send JSON (application/json) or a form (application/x-www-form-urlencoded)",
            ));
        } else {
            false
        };
        if is_json {
            let value: Value = serde_json::from_slice(body)
                .map_err(|e| EsbError::bad("body", format!("not valid JSON ({e})")))?;
            let Value::Object(obj) = value else {
                return Err(EsbError::bad("body", "must be a JSON object of arguments"));
            };
            params.map.extend(obj);
        } else {
            params.merge_form(body, "form body")?;
        }
        Ok(params)
    }

    fn merge_form(&mut self, raw: &[u8], what: &str) -> Result<(), EsbError> {
        // The decoder replaces bytes that are not UTF-8 with U+FFFD: refused here instead, so
        // no garbled text is ever sent.
        for pair in raw.split(|b| *b == b'&') {
            let mut halves = pair.splitn(2, |b| *b == b'=');
            let key = percent_decoded(halves.next().unwrap_or_default());
            let value = percent_decoded(halves.next().unwrap_or_default());
            // (A U+FFFD the caller sent is text like any other: only the bytes decide.)
            if std::str::from_utf8(&value).is_err() || std::str::from_utf8(&key).is_err() {
                return Err(EsbError::bad(
                    String::from_utf8_lossy(&key)
                        .escape_debug()
                        .take(64)
                        .collect::<String>(),
                    format!("is not UTF-8 text in the {what}; percent-encode the UTF-8 bytes of the text"),
                ));
            }
        }
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(raw)
            .map_err(|e| EsbError::bad(what, format!("cannot be decoded ({e})")))?;
        let mut seen = Map::new();
        for (k, v) in pairs {
            // A repeated key (`?to=a&to=b`) becomes a list.
            match seen.get_mut(&k) {
                Some(Value::Array(a)) => a.push(Value::String(v)),
                Some(prev) => *prev = Value::Array(vec![prev.take(), Value::String(v)]),
                None => {
                    seen.insert(k, Value::String(v));
                }
            }
        }
        self.map.extend(seen);
        Ok(())
    }

    pub fn from_json(map: Map<String, Value>) -> Self {
        Self { map }
    }

    /// Every argument as sent (a channel template's context).
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.map
    }

    pub fn contains(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !is_empty(v))
    }

    /// A text argument; numbers are accepted as their text, empty means absent.
    pub fn str(&self, key: &str) -> Result<Option<String>, EsbError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone()).filter(|s| !s.trim().is_empty())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(EsbError::bad(key, "must be a string")),
        }
    }

    /// `true/false`, `1/0`, `"1"/"0"`, `"true"/"false"` in any case (DESIGN §8.10).
    pub fn bool(&self, key: &str) -> Result<Option<bool>, EsbError> {
        let bad = || EsbError::bad(key, "must be a boolean: true/false or 1/0");
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(1) => Ok(Some(true)),
                Some(0) => Ok(Some(false)),
                _ => Err(bad()),
            },
            Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "" => Ok(None),
                "true" | "1" => Ok(Some(true)),
                "false" | "0" => Ok(Some(false)),
                _ => Err(bad()),
            },
            Some(_) => Err(bad()),
        }
    }

    /// The ESB's reading of a flag (`str_bool`): false when absent, `false`, `0` or empty
    /// (any case, trimmed), true for any other value.
    pub fn flag(&self, key: &str) -> bool {
        match self.map.get(key) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::Number(n)) => n.as_f64() != Some(0.0),
            Some(Value::String(s)) => {
                let s = s.trim().to_ascii_lowercase();
                !(s.is_empty() || s == "0" || s == "false")
            }
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
        }
    }

    /// A list as the ESB's list fields take it: a JSON list, a string holding a JSON list, or
    /// a string of items separated by `,` `;` spaces, tabs or newlines. Items trimmed, empty
    /// items dropped, duplicates merged (first occurrence kept).
    pub fn list(&self, key: &str) -> Result<Vec<String>, EsbError> {
        let items: Vec<String> = match self.map.get(key) {
            None | Some(Value::Null) => vec![],
            Some(Value::String(s)) => match json_list(s) {
                Some(list) => list_items(key, &list)?,
                None => split_items(s),
            },
            Some(Value::Number(n)) => vec![n.to_string()],
            Some(Value::Array(a)) => list_items(key, a)?,
            Some(_) => {
                return Err(EsbError::bad(
                    key,
                    "must be a comma-separated string or a list of strings",
                ))
            }
        };
        // A body of the default largest size holds over 100 000 items: merged by hash, not by scanning.
        let mut seen = std::collections::HashSet::with_capacity(items.len());
        Ok(items
            .into_iter()
            .filter(|item| seen.insert(item.clone()))
            .collect())
    }
}

/// `'["a","b"]'`, as the newer bk-cmsi gateway sends a list inside a string.
fn json_list(s: &str) -> Option<Vec<Value>> {
    if !s.trim_start().starts_with('[') {
        return None;
    }
    match serde_json::from_str(s) {
        Ok(Value::Array(a)) => Some(a),
        _ => None,
    }
}

fn list_items(key: &str, list: &[Value]) -> Result<Vec<String>, EsbError> {
    let mut out = Vec::new();
    for v in list {
        match v {
            Value::String(s) => out.extend(split_items(s)),
            Value::Number(n) => out.push(n.to_string()),
            Value::Null => {}
            _ => return Err(EsbError::bad(key, "must be a list of strings")),
        }
    }
    Ok(out)
}

fn split_items(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// `raw` as a form decoder reads it (`+` is a space, `%XX` a byte), without assuming UTF-8.
fn percent_decoded(raw: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < raw.len() => match (hex(raw[i + 1]), hex(raw[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bytes_are_decoded_without_assuming_utf8() {
        assert_eq!(percent_decoded(b"a+b%41%e9%zz%4"), b"a bA\xe9%zz%4");
        let form =
            |raw: &[u8]| Params::from_request("", Some("application/x-www-form-urlencoded"), raw);
        let refused = form(b"title=ok&content=caf%E9").unwrap_err().to_string();
        assert!(
            refused.starts_with("content: is not UTF-8 text in the form body"),
            "{refused}"
        );
        let refused = Params::from_request("x=%ff", None, b"")
            .unwrap_err()
            .to_string();
        assert!(refused.contains("in the query string"), "{refused}");
        let ok = form("content=caf%C3%A9+%E9%92%89".as_bytes()).unwrap();
        assert_eq!(ok.str("content").unwrap().as_deref(), Some("café 钉"));
        // A replacement character sent as text is taken, in a value and in a name (the fuzz
        // target found the name refused as if it were a bad byte).
        let ok = form("%EF%BF%BD=%EF%BF%BD".as_bytes()).unwrap();
        assert_eq!(ok.str("\u{fffd}").unwrap().as_deref(), Some("\u{fffd}"));
        let refused = form(b"caf%E9=x").unwrap_err().to_string();
        assert!(
            refused.starts_with("caf\u{fffd}: is not UTF-8"),
            "{refused}"
        );
    }

    #[test]
    fn a_list_as_long_as_a_body_allows_is_merged_quickly() {
        // Merged by scanning, these took minutes: a denial of service within the body limit.
        let many: Vec<String> = (0..120_000).map(|i| format!("u{i}")).collect();
        let body = format!("r={}", many.join(",")).into_bytes();
        assert!(body.len() < 1 << 20);
        let p = Params::from_request("", Some("application/x-www-form-urlencoded"), &body).unwrap();
        // No timing asserted (benchmarks prove speed): a quadratic merge makes this test take
        // minutes instead of under a second, which the suite's time shows.
        assert_eq!(p.list("r").unwrap(), many);
    }

    #[test]
    fn a_nul_anywhere_is_refused_naming_the_argument() {
        for (query, body, field) in [
            ("content=a%00b", &b""[..], "content: contains a NUL"),
            ("", br#"{"to":["a","b\u0000"]}"#, "to[1]: contains a NUL"),
            ("", br#"{"ext":{"k":"\u0000"}}"#, "ext.k: contains a NUL"),
            // In an argument's name too (the fuzz target found these taken).
            ("", br#"{"a\u0000":"x"}"#, "a\\0: contains a NUL"),
            ("%00=x", &b""[..], "\\0: contains a NUL"),
            (
                "",
                br#"{"":"\u0000"}"#,
                "(the argument with an empty name): contains a NUL",
            ),
        ] {
            let refused = Params::from_request(query, None, body)
                .unwrap_err()
                .to_string();
            assert!(refused.starts_with(field), "{refused}");
        }
    }

    #[test]
    fn query_and_bodies_merge_with_the_body_winning() {
        let p = Params::from_request(
            "a=1&b=q",
            Some("application/json"),
            br#"{"b":"body","n":5}"#,
        )
        .unwrap();
        assert_eq!(p.str("a").unwrap().as_deref(), Some("1"));
        assert_eq!(p.str("b").unwrap().as_deref(), Some("body"));
        assert_eq!(p.str("n").unwrap().as_deref(), Some("5"));
        let p = Params::from_request(
            "",
            Some("application/x-www-form-urlencoded"),
            b"t=%E9%92%89&x=",
        )
        .unwrap();
        assert_eq!(p.str("t").unwrap().as_deref(), Some("钉"));
        assert_eq!(p.str("x").unwrap(), None);
        // No content type: sniffed.
        let p = Params::from_request("", None, br#" {"k":"v"}"#).unwrap();
        assert_eq!(p.str("k").unwrap().as_deref(), Some("v"));
    }

    #[test]
    fn bad_bodies_name_the_body() {
        let e = Params::from_request("", Some("application/json"), b"{nope").unwrap_err();
        assert!(e.to_string().starts_with("body: not valid JSON"), "{e}");
        let e = Params::from_request("", Some("application/json"), b"[1]").unwrap_err();
        assert_eq!(e.to_string(), "body: must be a JSON object of arguments");
    }

    #[test]
    fn booleans_accept_the_usual_spellings() {
        for (raw, want) in [
            (r#"true"#, true),
            (r#"0"#, false),
            (r#""1""#, true),
            (r#""FALSE""#, false),
            (r#""True""#, true),
        ] {
            let p = Params::from_request(
                "",
                Some("application/json"),
                format!(r#"{{"b":{raw}}}"#).as_bytes(),
            )
            .unwrap();
            assert_eq!(p.bool("b").unwrap(), Some(want), "{raw}");
        }
        let p = Params::from_request("b=yes", None, b"").unwrap();
        assert_eq!(
            p.bool("b").unwrap_err().to_string(),
            "b: must be a boolean: true/false or 1/0"
        );
        let p = Params::from_request("b=1", None, b"").unwrap();
        assert_eq!(p.bool("b").unwrap(), Some(true));
    }

    #[test]
    fn lists_from_strings_arrays_and_repeats() {
        let p = Params::from_request("r=a,%20b,,a&s=x&s=y,z", None, b"").unwrap();
        assert_eq!(p.list("r").unwrap(), ["a", "b"]);
        assert_eq!(p.list("s").unwrap(), ["x", "y", "z"]);
        let p = Params::from_request("", None, br#"{"r":["a","b , c"],"bad":{"x":1}}"#).unwrap();
        assert_eq!(p.list("r").unwrap(), ["a", "b", "c"]);
        assert!(p.list("bad").is_err());
        assert!(p.list("missing").unwrap().is_empty());
    }

    #[test]
    fn lists_split_as_the_esb_splits_them() {
        let list = |json: &str| {
            Params::from_request("", None, format!(r#"{{"r":{json}}}"#).as_bytes())
                .unwrap()
                .list("r")
                .unwrap()
        };
        assert_eq!(
            list(r#""a;b c\td\ne\r\nf""#),
            ["a", "b", "c", "d", "e", "f"]
        );
        assert_eq!(list(r#"" a ,, ;b;a ""#), ["a", "b"]);
        // A string holding a JSON list, as the bk-cmsi gateway sends it.
        assert_eq!(list(r#""[\"a\",\"b\",\"a\"]""#), ["a", "b"]);
        assert_eq!(list(r#"["b","a","b",""]"#), ["b", "a"]);
        // Not a JSON list after all: split like any string.
        assert_eq!(list(r#""[a,b""#), ["[a", "b"]);
        let p = Params::from_request("r=%5B%22x%22%2C%22y%22%5D", None, b"").unwrap();
        assert_eq!(p.list("r").unwrap(), ["x", "y"]);
        let p = Params::from_request("", None, br#"{"r":"[1,{}]"}"#).unwrap();
        assert_eq!(
            p.list("r").unwrap_err().to_string(),
            "r: must be a list of strings"
        );
    }

    #[test]
    fn a_body_starting_with_a_brace_is_json_whatever_its_type() {
        for ct in [
            None,
            Some("application/x-www-form-urlencoded"),
            Some("text/plain"),
        ] {
            let p = Params::from_request("", ct, b"\n  {\"k\":\"v\"}").unwrap();
            assert_eq!(p.str("k").unwrap().as_deref(), Some("v"), "{ct:?}");
        }
        // A form stays a form.
        let p =
            Params::from_request("", Some("application/x-www-form-urlencoded"), b"k=v").unwrap();
        assert_eq!(p.str("k").unwrap().as_deref(), Some("v"));
        // GET bodies of `null` or nothing: no arguments beyond the query.
        for body in [&b"null"[..], b" null\n", b"", b"  "] {
            let p = Params::from_request("q=1", Some("application/json"), body).unwrap();
            assert_eq!(p.str("q").unwrap().as_deref(), Some("1"));
        }
    }

    #[test]
    fn flags_are_false_only_for_false_zero_and_empty() {
        let flag = |json: &str| {
            Params::from_request("", None, format!(r#"{{"f":{json}}}"#).as_bytes())
                .unwrap()
                .flag("f")
        };
        for falsy in [r#"false"#, "0", r#""0""#, r#"" FALSE ""#, r#""""#, "null"] {
            assert!(!flag(falsy), "{falsy}");
        }
        for truthy in [
            r#"true"#,
            "1",
            "2",
            r#""1""#,
            r#""yes""#,
            r#""True""#,
            r#""no""#,
        ] {
            assert!(flag(truthy), "{truthy}");
        }
        assert!(!Params::default().flag("f"));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::domain::request::{Reach, Receivers, Route, SendRequest};
    use crate::fuzz::{bytes, config, json_text, json_value, mutated, odd_string};
    use crate::sources::esb::args::{self, MAX_RECEIVERS, MAX_TITLE_CHARS};
    use base64::Engine;
    use proptest::prelude::*;
    use proptest::sample::select;
    use serde_json::json;

    const SECRET: &str = "fuzz-secret-5f0c";

    fn content_types() -> impl Strategy<Value = Option<&'static str>> {
        select(vec![
            None,
            Some("application/json"),
            Some("Application/JSON; charset=utf-8"),
            Some("application/problem+json"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("text/plain"),
        ])
    }

    /// A valid send, its content in base64 of odd text half the time.
    fn send() -> impl Strategy<Value = Value> {
        (odd_string(80), any::<bool>()).prop_map(|(content, b64)| {
            let mut v = json!({
                "bk_app_code": "demo", "bk_app_secret": SECRET, "bk_username": "admin",
                "receiver__username": "alice,bob;carol", "content": "disk full",
                "msg_key": "markdown", "title": "Disk", "at_mobiles": ["13800000001"],
                "at_user_ids": "[\"manager1\"]", "url": "https://x/1", "at_all": "1",
                "idempotency_key": "k-1", "userid": ["u1", "u2"], "mobile": "13800000002",
            });
            if b64 {
                v["content"] = base64::engine::general_purpose::STANDARD
                    .encode(content)
                    .into();
                v["is_content_base64"] = "true".into();
            }
            v
        })
    }

    /// The arguments as a form (or query): strings as they are, anything else as JSON text.
    fn form(doc: &Value) -> String {
        let pairs: Vec<(String, String)> = doc
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            })
            .collect();
        serde_urlencoded::to_string(pairs).unwrap()
    }

    fn refusal(e: &EsbError) -> (&str, &str) {
        match e {
            EsbError::BadArgument { field, problem } => (field, problem),
            other => panic!("not a refusal naming a field: {other}"),
        }
    }

    /// A send request holds only what the layers below may trust.
    fn trusted(req: &SendRequest, reach: Reach) {
        let m = &req.message;
        let receivers = match &req.receivers {
            Receivers::Usernames(u) => u.len(),
            Receivers::UserIds(u) => {
                assert_eq!(reach, Reach::People);
                u.len()
            }
            Receivers::Mobiles(u) => {
                assert_eq!(reach, Reach::People);
                u.len()
            }
        };
        assert!((1..=MAX_RECEIVERS).contains(&receivers));
        assert!(!m.content.trim().is_empty());
        assert!(m
            .title
            .as_ref()
            .is_none_or(|t| t.chars().count() <= MAX_TITLE_CHARS));
        assert!(!m.msg_key.needs_title() || m.title.is_some());
        assert!(!m.msg_key.needs_url() || m.url.is_some());
        let texts = [
            Some(&m.content),
            m.title.as_ref(),
            m.url.as_ref(),
            req.sender.as_ref(),
        ];
        for t in texts
            .into_iter()
            .flatten()
            .chain(&m.at_mobiles)
            .chain(&m.at_user_ids)
        {
            assert!(!t.contains('\0'), "a NUL got through: {t:?}");
        }
    }

    /// Read `query` and `body`: refused naming a field, or parsed into arguments that every
    /// accessor reads without panicking and that parse into a trusted request or a refusal.
    fn read(query: &str, content_type: Option<&str>, body: &[u8]) {
        let p = match Params::from_request(query, content_type, body) {
            Ok(p) => p,
            Err(e) => {
                let (field, problem) = refusal(&e);
                assert!(!field.is_empty() && !problem.is_empty(), "{e}");
                assert!(!e.to_string().contains(SECRET), "{e}");
                return;
            }
        };
        for (k, v) in p.as_map() {
            assert!(crate::sources::nul_at(v, k).is_none(), "a NUL in {k}");
            let _ = (p.str(k), p.bool(k), p.flag(k), p.contains(k));
            if let Ok(items) = p.list(k) {
                for (i, item) in items.iter().enumerate() {
                    assert!(
                        !item.is_empty()
                            && !item.contains([',', ';'])
                            && !item.contains(char::is_whitespace)
                    );
                    assert!(!items[..i].contains(item), "{item} twice");
                }
            }
        }
        for reach in [Reach::Any, Reach::People, Reach::Robots] {
            let route = Route {
                channel: "send_ding".into(),
                reach,
                wait: std::time::Duration::from_secs(1),
            };
            match args::parse(route, &p, None) {
                Ok(req) => trusted(&req, reach),
                Err(e) => {
                    refusal(&e);
                    assert!(!e.to_string().contains(SECRET), "{e}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(config(400))]

        #[test]
        fn fuzz_esb_any_bytes_in_any_encoding(
            query in prop_oneof![odd_string(60), bytes(60).prop_map(|b| String::from_utf8_lossy(&b).into_owned())],
            content_type in content_types(),
            body in prop_oneof![
                bytes(300),
                json_text().prop_map(String::into_bytes),
                odd_string(200).prop_map(String::into_bytes),
            ],
        ) {
            read(&query, content_type, &body);
        }

        /// A valid send with hostile values, as JSON, a form and a query string.
        #[test]
        fn fuzz_esb_hostile_values_in_a_send(doc in send().prop_flat_map(mutated), content_type in content_types()) {
            read("", content_type, doc.to_string().as_bytes());
            read("", Some("application/x-www-form-urlencoded"), form(&doc).as_bytes());
            read(&form(&doc), None, b"");
        }

        /// Any text goes through a form and a query string unchanged (or is refused for a
        /// NUL, naming its key); a repeated key becomes a list.
        #[test]
        fn fuzz_esb_form_round_trip(
            pairs in proptest::collection::vec((odd_string(6), odd_string(30)), 1..8),
            in_query in any::<bool>(),
        ) {
            let encoded = serde_urlencoded::to_string(&pairs).unwrap();
            let parsed = if in_query {
                Params::from_request(&encoded, None, b"")
            } else {
                Params::from_request("", Some("application/x-www-form-urlencoded"), encoded.as_bytes())
            };
            let nul = pairs.iter().find(|(k, v)| k.contains('\0') || v.contains('\0'));
            match (parsed, nul) {
                (Err(e), Some(_)) => prop_assert!(e.to_string().contains("NUL"), "{}", e),
                (Err(e), None) => prop_assert!(false, "refused: {}", e),
                (Ok(_), Some((k, _))) => prop_assert!(false, "a NUL in {:?} was taken", k),
                (Ok(p), None) => {
                    for (k, v) in &pairs {
                        let sent: Vec<&String> = pairs.iter().filter(|(k2, _)| k2 == k).map(|(_, v)| v).collect();
                        let got = &p.as_map()[k];
                        if sent.len() == 1 {
                            prop_assert_eq!(got, &Value::String(v.clone()));
                        } else {
                            prop_assert_eq!(got, &json!(sent));
                        }
                    }
                }
            }
        }

        /// The arguments of a JSON body are taken as they are.
        #[test]
        fn fuzz_esb_json_arguments_are_kept(args in proptest::collection::btree_map(odd_string(8), json_value(), 0..8)) {
            let body = Value::Object(args.into_iter().collect()).to_string();
            // As serde_json reads it: without its float_roundtrip feature a float may come
            // back a bit off, which no argument of a send is.
            let Value::Object(read) = serde_json::from_str(&body).unwrap() else { unreachable!() };
            match Params::from_request("", None, body.as_bytes()) {
                Ok(p) => prop_assert_eq!(p.as_map(), &read),
                Err(e) => prop_assert!(e.to_string().contains("NUL") && crate::sources::nul_in(&read).is_some(), "{}", e),
            }
        }
    }
}
