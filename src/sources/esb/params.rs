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
        let mut params = Self::default();
        params.merge_form(query.as_bytes(), "query string")?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(params);
        }
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        let is_json = if ct.starts_with("application/json") || ct.contains("+json") {
            true
        } else if ct.starts_with("application/x-www-form-urlencoded") {
            false
        } else if ct.starts_with("multipart/") {
            return Err(EsbError::bad(
                "body",
                "multipart bodies are not accepted; send JSON (application/json) or a form (application/x-www-form-urlencoded)",
            ));
        } else {
            body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
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

    /// A list given as a comma-separated string or a JSON list of strings; items trimmed,
    /// empty items dropped, duplicates removed (first occurrence kept).
    pub fn list(&self, key: &str) -> Result<Vec<String>, EsbError> {
        let items: Vec<String> = match self.map.get(key) {
            None | Some(Value::Null) => vec![],
            Some(Value::String(s)) => s.split([',', ';']).map(str::to_owned).collect(),
            Some(Value::Number(n)) => vec![n.to_string()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => {
                        Ok(s.split([',', ';']).map(str::to_owned).collect::<Vec<_>>())
                    }
                    Value::Number(n) => Ok(vec![n.to_string()]),
                    _ => Err(EsbError::bad(key, "must be a list of strings")),
                })
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect(),
            Some(_) => {
                return Err(EsbError::bad(
                    key,
                    "must be a comma-separated string or a list of strings",
                ))
            }
        };
        let mut out: Vec<String> = Vec::with_capacity(items.len());
        for item in items {
            let item = item.trim();
            if !item.is_empty() && !out.iter().any(|o| o == item) {
                out.push(item.to_owned());
            }
        }
        Ok(out)
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
