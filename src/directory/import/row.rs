//! One row's fields, whatever the file format: each checked, each problem a [`RowError`]
//! naming the row and the field.

use super::{json_problem, kind, FileImport, Parsed, RowError, WHOLE_ROW};
use crate::directory::pool::{self, POOL_KEY};
use crate::directory::profile::{Profile, Username};
use crate::directory::provider::Provider;
use crate::domain::mobile::{parse_country_code, Mobile, MobileError};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// The bk-user fields an import reads; everything else (id, department, status, …) is
/// ignored.
pub(super) const FIELDS: [&str; 8] = [
    "username",
    "display_name",
    "telephone",
    "country_code",
    "email",
    "wx_userid",
    "qq",
    "extras",
];

/// CSV cells are always text, so there `extras` arrives as JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Json,
    Csv,
}

#[derive(Default)]
pub(super) struct Collector {
    pub(super) parsed: Parsed,
    /// Each valid username and the row it first appeared in.
    seen: HashMap<Username, usize>,
}

impl Collector {
    pub(super) fn error(&mut self, row: usize, field: &str, message: String) {
        self.parsed.errors.push(RowError {
            row,
            field: field.to_owned(),
            message,
        });
    }

    pub(super) fn row(&mut self, row: usize, value: Value, source: Source) {
        let Value::Object(fields) = value else {
            let message = format!("expected a JSON object, got {}", kind(&value));
            return self.error(row, WHOLE_ROW, message);
        };
        match validate(row, fields, source, &mut self.seen) {
            Ok(profile) => self.parsed.profiles.push((row, profile)),
            Err(errors) => self.parsed.errors.extend(errors),
        }
    }
}

/// One row's fields being checked; collects an error per bad field.
struct Row {
    row: usize,
    fields: Map<String, Value>,
    errors: Vec<RowError>,
}

impl Row {
    fn check<T>(
        &mut self,
        field: &str,
        check: impl FnOnce(Option<Value>) -> Result<T, String>,
    ) -> Option<T> {
        check(self.fields.remove(field))
            .map_err(|message| self.fail(field, message))
            .ok()
    }

    fn fail(&mut self, field: &str, message: String) {
        self.errors.push(RowError {
            row: self.row,
            field: field.to_owned(),
            message,
        });
    }
}

fn validate(
    row: usize,
    fields: Map<String, Value>,
    source: Source,
    seen: &mut HashMap<Username, usize>,
) -> Result<Profile, Vec<RowError>> {
    let mut r = Row {
        row,
        fields,
        errors: Vec::new(),
    };
    let username = r.check("username", |v| {
        Username::parse(&text(v, false)?.ok_or("is required")?)
    });
    // Recorded even when other fields of the row are bad: the name is still taken there.
    if let Some(name) = &username {
        match seen.get(name) {
            Some(first) => r.fail("username", format!("duplicate: also in row {first}")),
            None => {
                seen.insert(name.clone(), row);
            }
        }
    }
    let display_name = r.check("display_name", |v| {
        text(v, false)?.map(display_name).transpose()
    });
    // An invalid country_code is reported once, then treated as absent.
    let explicit_cc = r
        .check("country_code", |v| {
            text(v, true)?
                .map(|s| parse_country_code(&s).map_err(|e| e.to_string()))
                .transpose()
        })
        .flatten();
    let telephone = r.check("telephone", |v| {
        text(v, true)?
            .map(|s| Mobile::parse_in(&s, explicit_cc.as_deref()).map_err(telephone_problem))
            .transpose()
    });
    let email = r.check("email", |v| text(v, false)?.map(email).transpose());
    let wx_userid = r.check("wx_userid", |v| {
        text(v, false)?.map(|s| max_len(s, 128)).transpose()
    });
    let qq = r.check("qq", |v| text(v, true)?.map(|s| max_len(s, 64)).transpose());
    let extras = r.check("extras", |v| extras(v, source));

    match (
        username,
        display_name,
        telephone,
        email,
        wx_userid,
        qq,
        extras,
    ) {
        (
            Some(username),
            Some(display_name),
            Some(telephone),
            Some(email),
            Some(wx_userid),
            Some(qq),
            Some(extras),
        ) if r.errors.is_empty() => Ok(Profile {
            username,
            display_name,
            country_code: explicit_cc
                .or_else(|| telephone.as_ref().map(|m| m.country_code().to_owned()))
                .unwrap_or_else(|| Profile::DEFAULT_COUNTRY_CODE.to_owned()),
            telephone,
            email,
            wx_userid,
            qq,
            extras,
            source: FileImport::SOURCE,
            standing: Default::default(),
        }),
        _ => Err(r.errors),
    }
}

/// A field's trimmed text; `None` when absent, null or blank. With `numbers`, a JSON whole
/// number is accepted too: exports often write phone numbers and QQ ids as numbers.
fn text(value: Option<Value>, numbers: bool) -> Result<Option<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let s = s.trim();
            Ok((!s.is_empty()).then(|| s.to_owned()))
        }
        Some(Value::Number(n)) if numbers && n.is_u64() => Ok(Some(n.to_string())),
        Some(other) => Err(format!(
            "expected {}, got {}",
            if numbers {
                "text or a whole number"
            } else {
                "text"
            },
            kind(&other)
        )),
    }
}

/// Never quotes the value, so it is safe for secret-bearing fields.
fn max_len(s: String, max: usize) -> Result<String, String> {
    match s.chars().count() {
        n if n > max => Err(format!("longer than {max} characters (got {n})")),
        _ => Ok(s),
    }
}

fn display_name(s: String) -> Result<String, String> {
    let s = max_len(s, 128)?;
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "contains a control character (U+{:04X}); use plain text",
            u32::from(c)
        )),
        None => Ok(s),
    }
}

/// The row has a `country_code` column for this, so the hint names it.
fn telephone_problem(e: MobileError) -> String {
    match e {
        MobileError::UnsplitCountryCode(_) => format!("{e}, or set country_code"),
        e => e.to_string(),
    }
}

fn email(s: String) -> Result<String, String> {
    let len = s.chars().count();
    if len > 254 {
        return Err(format!("longer than 254 characters (got {len})"));
    }
    if s.chars().any(char::is_whitespace) {
        return Err(format!("'{s}' contains whitespace"));
    }
    match s.split_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !domain.contains('@') => {
            Ok(s)
        }
        _ => Err(format!(
            "'{s}' is not an email address (one '@' between name and domain, e.g. alice@example.com)"
        )),
    }
}

/// Never quotes the value: admins keep robot credentials in extras.
fn extras(value: Option<Value>, source: Source) -> Result<Map<String, Value>, String> {
    let value = match value {
        None | Some(Value::Null) => return Ok(Map::new()),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(Map::new()),
        Some(Value::String(s)) if source == Source::Csv => {
            serde_json::from_str(&s).map_err(|e| format!("not valid JSON: {}", json_problem(&e)))?
        }
        Some(v) => v,
    };
    match value {
        Value::Object(map) => {
            // A robot pool is checked here so a typo is refused at import, not at the send.
            let pool = map.get(POOL_KEY).map(pool::problems).unwrap_or_default();
            if pool.is_empty() {
                Ok(map)
            } else {
                Err(pool.join("; "))
            }
        }
        other => Err(format!("expected a JSON object, got {}", kind(&other))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn numbers_for_telephone_qq_and_country_code() {
        let content = json!([{"username": "a", "telephone": 13800000001u64, "qq": 10001, "country_code": 852}]);
        let parsed = parse_ok(&content.to_string(), Format::Json);
        assert_eq!(parsed.errors, vec![]);
        let p = &parsed.profiles[0].1;
        assert_eq!(
            p.telephone.as_ref().map(Mobile::national),
            Some("13800000001")
        );
        assert_eq!(p.qq.as_deref(), Some("10001"));
        assert_eq!(p.country_code, "852");
        assert_eq!(
            jsonl_errors(&[json!({"username": "a", "telephone": -1, "email": 5})]),
            vec![
                "row 1: telephone: expected text or a whole number, got a negative or fractional number",
                "row 1: email: expected text, got a number",
            ]
        );
    }

    #[test]
    fn null_and_empty_are_absent() {
        let rows = json!([{"username": "a", "display_name": null, "telephone": "", "country_code": " ",
            "email": null, "wx_userid": "", "qq": null, "extras": ""}]);
        let parsed = parse_ok(&rows.to_string(), Format::Json);
        assert_eq!(parsed.errors, vec![]);
        let p = &parsed.profiles[0].1;
        assert_eq!(
            (p.telephone.as_ref(), p.qq.as_ref(), p.country_code.as_str()),
            (None, None, "86")
        );
        assert!(p.extras.is_empty());
    }

    fn phone(telephone: &str, country_code: Option<&str>) -> Result<(String, String), Vec<String>> {
        let row = json!({"username": "a", "telephone": telephone, "country_code": country_code});
        let parsed = parse_ok(&json!([row]).to_string(), Format::Json);
        match parsed.profiles.first() {
            Some((_, p)) => Ok((
                p.country_code.clone(),
                p.telephone.as_ref().unwrap().national().to_owned(),
            )),
            None => Err(parsed.errors.iter().map(ToString::to_string).collect()),
        }
    }

    #[test]
    fn country_code_prefix_on_telephone() {
        let ok = |cc: &str, tel: &str| Ok((cc.to_owned(), tel.to_owned()));
        assert_eq!(phone("+86 138 0000 0001", None), ok("86", "13800000001"));
        assert_eq!(phone("+1 (555) 123-4567", None), ok("1", "5551234567"));
        assert_eq!(phone("(+852) 9123 4567", None), ok("852", "91234567"));
        assert_eq!(phone("+852-9123-4567", Some("+852")), ok("852", "91234567"));
        assert_eq!(phone("+8613800000001", Some("86")), ok("86", "13800000001"));
        assert_eq!(phone("13800000001", Some("1")), ok("1", "13800000001"));
        assert_eq!(phone("+8613800000001", None), ok("86", "13800000001"));
        assert_eq!(
            phone("+1 5551234567", Some("86")),
            Err(vec![
                "row 1: telephone: '+1 5551234567' has country code +1 but country_code is 86"
                    .into()
            ])
        );
        assert_eq!(
            phone("+85291234567", None),
            Err(vec![
                "row 1: telephone: '+85291234567' does not show where the country code ends; \
                write '+CC NUMBER' with a space after the code, or set country_code"
                    .into()
            ])
        );
        assert_eq!(
            phone("+86138 0000 0001", None),
            Err(vec!["row 1: telephone: '+86138 0000 0001' starts with '+' but '86138' is not a country code (1 to 4 digits)".into()])
        );
    }

    #[test]
    fn field_errors_name_row_and_field() {
        let long = "x".repeat(129);
        let rows = [
            json!({"display_name": "no name"}),
            json!({"username": "al ice"}),
            json!({"username": "c", "display_name": long}),
            json!({"username": "d", "display_name": "tab\there"}),
            json!({"username": "e", "telephone": "12ab"}),
            json!({"username": "f", "telephone": "1234"}),
            json!({"username": "g", "telephone": "1".repeat(21)}),
            json!({"username": "h", "country_code": "+12345"}),
            json!({"username": "i", "email": "no-at.example.com"}),
            json!({"username": "j", "email": "a@b@c"}),
            json!({"username": "k", "email": "@example.com"}),
            json!({"username": "l", "email": "a b@example.com"}),
            json!({"username": "m", "email": format!("a@{}", "b".repeat(253))}),
            json!({"username": "n", "extras": [1]}),
            json!({"username": "o", "extras": "{\"a\":1}"}),
            json!({"username": "p", "wx_userid": ["x"]}),
            // Several bad fields: one error each, in field order.
            json!({"username": "", "telephone": "x", "email": "y", "qq": {}}),
        ];
        assert_eq!(
            jsonl_errors(&rows),
            vec![
                "row 1: username: is required",
                "row 2: username: 'al ice' contains ' ' (allowed: letters, digits, _ . - @)",
                "row 3: display_name: longer than 128 characters (got 129)",
                "row 4: display_name: contains a control character (U+0009); use plain text",
                "row 5: telephone: '12ab' is not a phone number (digits only, e.g. 13800000001)",
                "row 6: telephone: '1234' has 4 digits; a phone number has 5 to 20",
                "row 7: telephone: '111111111111111111111' has 21 digits; a phone number has 5 to 20",
                "row 8: country_code: '+12345' is not a country code (1 to 4 digits, e.g. 86)",
                "row 9: email: 'no-at.example.com' is not an email address (one '@' between name and domain, e.g. alice@example.com)",
                "row 10: email: 'a@b@c' is not an email address (one '@' between name and domain, e.g. alice@example.com)",
                "row 11: email: '@example.com' is not an email address (one '@' between name and domain, e.g. alice@example.com)",
                "row 12: email: 'a b@example.com' contains whitespace",
                "row 13: email: longer than 254 characters (got 255)",
                "row 14: extras: expected a JSON object, got an array",
                "row 15: extras: expected a JSON object, got text",
                "row 16: wx_userid: expected text, got an array",
                "row 17: username: is required",
                "row 17: telephone: 'x' is not a phone number (digits only, e.g. 13800000001)",
                "row 17: email: 'y' is not an email address (one '@' between name and domain, e.g. alice@example.com)",
                "row 17: qq: expected text or a whole number, got an object",
            ]
        );
    }
}
