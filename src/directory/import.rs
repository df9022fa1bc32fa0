//! Parsing and validation for `ding-channel users import FILE`: bk-user (BlueKing user
//! management) profiles as a JSON array, JSON lines or CSV.
//!
//! Problems with one row become [`RowError`]s so an admin sees every bad row in one run;
//! only problems that make the whole file unreadable are an [`ImportError`].
//!
//! `wx_userid`, `qq` and `extras` may hold robot webhook tokens and signing secrets (see
//! [`Profile::field`]), so no message here quotes their values.

use super::profile::{Profile, Username};
use crate::domain::mobile::{parse_country_code, Mobile, MobileError};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    JsonLines,
    Csv,
}

impl Format {
    /// `--format` values: "json", "jsonl" (also "ndjson"), "csv".
    pub fn parse(s: &str) -> Result<Format, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Format::Json),
            "jsonl" | "ndjson" => Ok(Format::JsonLines),
            "csv" => Ok(Format::Csv),
            _ => Err(format!(
                "unknown format '{s}' (expected json, jsonl, ndjson or csv)"
            )),
        }
    }

    /// By the file extension when it is a known one, else by the first non-whitespace
    /// character: `[` is a JSON array, `{` starts JSON lines, anything else is CSV.
    pub fn detect(path: Option<&Path>, content: &str) -> Format {
        let by_extension = path
            .and_then(|p| p.extension()?.to_str())
            .and_then(|ext| Format::parse(ext).ok());
        by_extension.unwrap_or_else(|| match strip_bom(content).trim_start().chars().next() {
            Some('[') => Format::Json,
            Some('{') => Format::JsonLines,
            _ => Format::Csv,
        })
    }
}

/// One problem with one field of one row. `row` is the array element (JSON, 1-based) or
/// the line in the file (JSON lines, CSV); `field` is `-` when the row as a whole is bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub row: usize,
    pub field: String,
    pub message: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "row {}: {}: {}", self.row, self.field, self.message)
    }
}

/// The `field` of a [`RowError`] about the row as a whole.
const WHOLE_ROW: &str = "-";

/// A problem that makes the whole file unusable.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the file is empty")]
    Empty,
    // serde_json's message already ends in "at line L column C". Not a `#[source]`: the
    // message includes it, and chained reports would print it twice.
    #[error("not valid JSON: {0}")]
    Json(serde_json::Error),
    #[error(
        "expected a JSON array of user objects, found {found}{}",
        if *.found == "an object" { " (for one object per line use --format jsonl)" } else { "" }
    )]
    NotArray { found: &'static str },
    // The columns are not listed: without a header the first line is data, which may hold
    // secrets.
    #[error(
        "the CSV has no `username` column: its first line must be a header naming the \
         columns, e.g. username,display_name,telephone,email"
    )]
    NoUsernameColumn,
    #[error("the CSV header names `{0}` more than once")]
    DuplicateColumn(&'static str),
    #[error("CSV: {0}")]
    Csv(csv::Error),
}

#[derive(Debug, Default)]
pub struct Parsed {
    /// Valid rows, with their row numbers.
    pub profiles: Vec<(usize, Profile)>,
    pub errors: Vec<RowError>,
}

/// The bk-user fields an import reads; everything else (id, department, status, …) is
/// ignored.
const FIELDS: [&str; 8] = [
    "username",
    "display_name",
    "telephone",
    "country_code",
    "email",
    "wx_userid",
    "qq",
    "extras",
];

pub fn parse(content: &str, format: Format) -> Result<Parsed, ImportError> {
    let content = strip_bom(content);
    if content.trim().is_empty() {
        return Err(ImportError::Empty);
    }
    let mut out = Collector::default();
    match format {
        Format::Json => parse_json(content, &mut out)?,
        Format::JsonLines => parse_json_lines(content, &mut out),
        Format::Csv => parse_csv(content, &mut out)?,
    }
    Ok(out.parsed)
}

/// Excel and other Windows tools start files with a BOM; left in, it would glue onto the
/// first CSV header name or break JSON parsing.
fn strip_bom(content: &str) -> &str {
    content.strip_prefix('\u{feff}').unwrap_or(content)
}

fn parse_json(content: &str, out: &mut Collector) -> Result<(), ImportError> {
    let rows = match serde_json::from_str(content) {
        Ok(Value::Array(rows)) => rows,
        Ok(other) => {
            return Err(ImportError::NotArray {
                found: kind(&other),
            })
        }
        // Several objects in a row fail as "trailing characters"; the real problem is that
        // this is JSON lines.
        Err(_) if content.trim_start().starts_with('{') => {
            return Err(ImportError::NotArray { found: "an object" })
        }
        Err(e) => return Err(ImportError::Json(e)),
    };
    for (i, row) in rows.into_iter().enumerate() {
        out.row(i + 1, row, Source::Json);
    }
    Ok(())
}

fn parse_json_lines(content: &str, out: &mut Collector) {
    for (i, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(value) => out.row(i + 1, value, Source::Json),
            Err(e) => out.error(
                i + 1,
                WHOLE_ROW,
                format!("not valid JSON: {}", json_problem(&e)),
            ),
        }
    }
}

fn parse_csv(content: &str, out: &mut Collector) -> Result<(), ImportError> {
    // Flexible, so a short or long row is that row's error instead of ending the import.
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(content.as_bytes());
    let columns: Vec<Option<&'static str>> = reader
        .headers()
        .map_err(ImportError::Csv)?
        .iter()
        .map(|h| {
            let h = h.trim();
            FIELDS.into_iter().find(|f| f.eq_ignore_ascii_case(h))
        })
        .collect();
    if !columns.contains(&Some("username")) {
        return Err(ImportError::NoUsernameColumn);
    }
    for (i, column) in columns.iter().enumerate() {
        if let Some(name) = column.filter(|_| columns[..i].contains(column)) {
            return Err(ImportError::DuplicateColumn(name));
        }
    }

    let mut lines = LineCounter {
        content,
        offset: 0,
        line: 1,
    };
    for record in reader.records() {
        let record = record.map_err(ImportError::Csv)?;
        let line = record.position().map_or(0, |p| lines.line_at(p.byte()));
        if record.len() != columns.len() {
            let message = format!(
                "has {} cells but the header has {} columns",
                record.len(),
                columns.len()
            );
            out.error(line, WHOLE_ROW, message);
            continue;
        }
        let fields = columns
            .iter()
            .zip(record.iter())
            .filter_map(|(column, cell)| Some(((*column)?.to_owned(), Value::from(cell))))
            .collect();
        out.row(line, Value::Object(fields), Source::Csv);
    }
    Ok(())
}

/// csv's record positions point just past the previous record's terminator: before any
/// blank lines and, with CRLF, at the `\n`, so its line numbers drift in common files
/// (Excel writes CRLF). This recounts lines from the byte offset instead.
struct LineCounter<'a> {
    content: &'a str,
    offset: usize,
    line: usize,
}

impl LineCounter<'_> {
    /// The line where the record at `byte` starts; offsets must not decrease.
    fn line_at(&mut self, byte: u64) -> usize {
        let bytes = self.content.as_bytes();
        let mut start = usize::try_from(byte)
            .unwrap_or(bytes.len())
            .min(bytes.len());
        while matches!(bytes.get(start), Some(b'\r' | b'\n')) {
            start += 1;
        }
        let skipped = &bytes[self.offset.min(start)..start];
        self.line += skipped.iter().filter(|&&b| b == b'\n').count();
        self.offset = start;
        self.line
    }
}

/// CSV cells are always text, so there `extras` arrives as JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Json,
    Csv,
}

#[derive(Default)]
struct Collector {
    parsed: Parsed,
    /// Each valid username and the row it first appeared in.
    seen: HashMap<Username, usize>,
}

impl Collector {
    fn error(&mut self, row: usize, field: &str, message: String) {
        self.parsed.errors.push(RowError {
            row,
            field: field.to_owned(),
            message,
        });
    }

    fn row(&mut self, row: usize, value: Value, source: Source) {
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

/// What a JSON value is, for messages that must not quote it.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "true/false",
        Value::Number(n) if n.is_u64() => "a number",
        Value::Number(_) => "a negative or fractional number",
        Value::String(_) => "text",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// serde_json's message without its "at line 1 column C" suffix: on a JSON line, only
/// the column means anything.
fn json_problem(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let problem = full
        .rsplit_once(" at line ")
        .map_or(full.as_str(), |(p, _)| p);
    format!("{problem} at column {}", e.column())
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
        Value::Object(map) => Ok(map),
        other => Err(format!("expected a JSON object, got {}", kind(&other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_ok(content: &str, format: Format) -> Parsed {
        parse(content, format).expect("file-level parse succeeds")
    }

    /// The errors as displayed, which pins row, field and message at once.
    fn errors(content: &str, format: Format) -> Vec<String> {
        parse_ok(content, format)
            .errors
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The errors of a JSON-lines file with one line per element of `rows`.
    fn jsonl_errors(rows: &[Value]) -> Vec<String> {
        let content: Vec<String> = rows.iter().map(Value::to_string).collect();
        errors(&content.join("\n"), Format::JsonLines)
    }

    fn full_profile() -> Profile {
        Profile {
            username: Username::parse("alice").unwrap(),
            display_name: Some("Alice Li".into()),
            telephone: Some(Mobile::parse("13800000001").unwrap()),
            country_code: "86".into(),
            email: Some("alice@example.com".into()),
            wx_userid: Some("wx-alice".into()),
            qq: Some("10001".into()),
            extras: json!({"ding_token": "abc", "level": 3})
                .as_object()
                .unwrap()
                .clone(),
        }
    }

    fn full_json() -> Value {
        json!({
            "id": 7, "username": " alice ", "display_name": "Alice Li",
            "telephone": "138-0000-0001", "country_code": "+86", "email": "alice@example.com",
            "wx_userid": "wx-alice", "qq": "10001", "extras": {"ding_token": "abc", "level": 3},
            "department": [{"id": 1}], "status": "NORMAL"
        })
    }

    #[test]
    fn json_array_with_all_fields() {
        let content = json!([full_json(), {"username": "bob"}]).to_string();
        let parsed = parse_ok(&content, Format::Json);
        assert_eq!(parsed.errors, vec![]);
        let bob = Profile {
            username: Username::parse("bob").unwrap(),
            display_name: None,
            telephone: None,
            country_code: "86".into(),
            email: None,
            wx_userid: None,
            qq: None,
            extras: Map::new(),
        };
        assert_eq!(parsed.profiles, vec![(1, full_profile()), (2, bob)]);
    }

    #[test]
    fn json_lines_count_blank_lines() {
        let content = format!("\n{}\n   \n\r\n{{\"username\":\"bob\"}}\r\n\n", full_json());
        let parsed = parse_ok(&content, Format::JsonLines);
        assert_eq!(parsed.errors, vec![]);
        let rows: Vec<_> = parsed
            .profiles
            .iter()
            .map(|(row, p)| (*row, p.username.as_str()))
            .collect();
        assert_eq!(rows, vec![(2, "alice"), (5, "bob")]);
        assert_eq!(parsed.profiles[0].1, full_profile());
    }

    #[test]
    fn csv_with_all_fields_bom_quotes_and_extras() {
        let content = "\u{feff} ID ,UserName, Display_Name ,telephone,COUNTRY_CODE,email,wx_userid,qq,extras,status\n\
            7,alice,\"Li, Alice\",138 0000 0001,86,alice@example.com,wx-alice,10001,\"{\"\"ding_token\"\": \"\"abc\"\", \"\"level\"\": 3}\",NORMAL\n\
            \n\
            8,bob,\"two\nlines\",,,,,,,\n\
            9,carol,,,,,,,,\n";
        let parsed = parse_ok(content, Format::Csv);
        // bob's display_name holds a newline, a control character; his row starts on line 4.
        assert_eq!(
            errors(content, Format::Csv),
            vec!["row 4: display_name: contains a control character (U+000A); use plain text"]
        );
        let mut alice = full_profile();
        alice.display_name = Some("Li, Alice".into());
        assert_eq!(parsed.profiles.len(), 2);
        assert_eq!(parsed.profiles[0], (2, alice));
        assert_eq!(parsed.profiles[1].0, 6);
        assert_eq!(parsed.profiles[1].1.username.as_str(), "carol");
        assert_eq!(parsed.profiles[1].1.extras, Map::new());
    }

    #[test]
    fn bom_is_stripped_for_json_and_detection() {
        let content = "\u{feff}[{\"username\":\"alice\"}]";
        assert_eq!(Format::detect(None, content), Format::Json);
        assert_eq!(parse_ok(content, Format::Json).profiles.len(), 1);
    }

    #[test]
    fn format_parse() {
        assert_eq!(Format::parse("json"), Ok(Format::Json));
        assert_eq!(Format::parse("jsonl"), Ok(Format::JsonLines));
        assert_eq!(Format::parse("NDJSON"), Ok(Format::JsonLines));
        assert_eq!(Format::parse("csv"), Ok(Format::Csv));
        assert_eq!(
            Format::parse("xml"),
            Err("unknown format 'xml' (expected json, jsonl, ndjson or csv)".into())
        );
    }

    #[test]
    fn format_detect() {
        let p = |s| Some(Path::new(s));
        // The extension wins over content.
        assert_eq!(Format::detect(p("u.json"), "{}"), Format::Json);
        assert_eq!(Format::detect(p("u.JSONL"), "["), Format::JsonLines);
        assert_eq!(Format::detect(p("u.ndjson"), "["), Format::JsonLines);
        assert_eq!(Format::detect(p("u.csv"), "["), Format::Csv);
        // Unknown or missing extensions fall back to content.
        assert_eq!(Format::detect(p("u.txt"), "  \n[{}]"), Format::Json);
        assert_eq!(
            Format::detect(p("users"), "{\"username\":1}"),
            Format::JsonLines
        );
        assert_eq!(Format::detect(None, "username,email"), Format::Csv);
        assert_eq!(Format::detect(None, ""), Format::Csv);
    }

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
        assert_eq!(
            phone("+1 5551234567", Some("86")),
            Err(vec![
                "row 1: telephone: '+1 5551234567' has country code +1 but country_code is 86"
                    .into()
            ])
        );
        assert_eq!(
            phone("+8613800000001", None),
            Err(vec![
                "row 1: telephone: '+8613800000001' does not show where the country code ends; \
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

    #[test]
    fn rows_that_are_not_objects() {
        let content = json!([{"username": "a"}, "b", 3, null]).to_string();
        assert_eq!(
            errors(&content, Format::Json),
            vec![
                "row 2: -: expected a JSON object, got text",
                "row 3: -: expected a JSON object, got a number",
                "row 4: -: expected a JSON object, got null",
            ]
        );
        let content = "{\"username\":\"a\"}\n[1]\n{\"username\": \"b\",\n{\"username\":\"c\"}";
        let parsed = parse_ok(content, Format::JsonLines);
        assert_eq!(
            parsed
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            vec![
                "row 2: -: expected a JSON object, got an array",
                "row 3: -: not valid JSON: EOF while parsing a value at column 17",
            ]
        );
        assert_eq!(
            parsed
                .profiles
                .iter()
                .map(|(row, _)| *row)
                .collect::<Vec<_>>(),
            vec![1, 4]
        );
    }

    #[test]
    fn csv_row_errors() {
        let content = "username,display_name,extras\n\
            a,A\n\
            b,B,{\"x\":1},extra\n\
            c,C,\"[1]\"\n\
            d,D,\"{bad\"\n\
            e,E,\"{\"\"ok\"\":true}\"\n";
        assert_eq!(
            errors(content, Format::Csv),
            vec![
                "row 2: -: has 2 cells but the header has 3 columns",
                "row 3: -: has 4 cells but the header has 3 columns",
                "row 4: extras: expected a JSON object, got an array",
                "row 5: extras: not valid JSON: key must be a string at column 2",
            ]
        );
        let parsed = parse_ok(content, Format::Csv);
        assert_eq!(parsed.profiles[0].0, 6);
        assert_eq!(parsed.profiles[0].1.extras["ok"], json!(true));
    }

    #[test]
    fn csv_line_numbers_survive_crlf_and_blank_lines() {
        // Excel-style CRLF, blank lines, and a quoted cell spanning lines.
        let content = "\r\nusername,email\r\na,x\r\n\r\n\r\nb,\"multi\r\nline\"\r\nc,z\r\n\r\n";
        assert_eq!(
            errors(content, Format::Csv),
            vec![
                "row 3: email: 'x' is not an email address (one '@' between name and domain, e.g. alice@example.com)",
                "row 6: email: 'multi\r\nline' contains whitespace",
                "row 8: email: 'z' is not an email address (one '@' between name and domain, e.g. alice@example.com)",
            ]
        );
    }

    #[test]
    fn duplicate_username_names_the_first_row() {
        // Row 2 is invalid elsewhere but still claims "alice".
        let content = "username,email\nalice,bad\nbob,\nalice,\n alice ,\n";
        assert_eq!(
            errors(content, Format::Csv),
            vec![
                "row 2: email: 'bad' is not an email address (one '@' between name and domain, e.g. alice@example.com)",
                "row 4: username: duplicate: also in row 2",
                "row 5: username: duplicate: also in row 2",
            ]
        );
    }

    #[test]
    fn secrets_are_never_echoed() {
        let wx = format!(
            "https://oapi.dingtalk.com/robot/send?access_token={}",
            "f".repeat(100)
        );
        let qq = format!("SEC{}", "0123456789abcdef".repeat(4));
        let extras = "{\"ding_secret\": \"SECdeadbeef\" oops}";
        let row = json!({"username": "a", "wx_userid": wx, "qq": qq});
        let content = format!(
            "{row}\n{}\nusername,qq\n",
            json!({"username": "b", "extras": {"s": "SECdeadbeef"}, "qq": [qq]})
        );
        let mut all = errors(&content, Format::JsonLines);
        all.extend(errors(
            &format!("username,extras\nc,\"{}\"\n", extras.replace('"', "\"\"")),
            Format::Csv,
        ));
        assert_eq!(
            all,
            vec![
                format!(
                    "row 1: wx_userid: longer than 128 characters (got {})",
                    wx.chars().count()
                ),
                "row 1: qq: longer than 64 characters (got 67)".into(),
                "row 2: qq: expected text or a whole number, got an array".into(),
                "row 3: -: not valid JSON: expected value at column 1".into(),
                "row 2: extras: not valid JSON: expected `,` or `}` at column 31".into(),
            ]
        );
        for e in &all {
            for secret in [wx.as_str(), qq.as_str(), "SECdeadbeef", "access_token"] {
                assert!(!e.contains(secret), "{e} leaks {secret}");
            }
        }
    }

    #[test]
    fn whole_file_errors() {
        let msg = |content: &str, format| parse(content, format).unwrap_err().to_string();
        assert_eq!(msg("\u{feff} \r\n", Format::Csv), "the file is empty");
        assert_eq!(msg("\u{feff}", Format::Json), "the file is empty");
        assert_eq!(
            msg(
                "[{\"username\": \"a\"},\n  {\"username\" \"b\"}]",
                Format::Json
            ),
            "not valid JSON: expected `:` at line 2 column 15"
        );
        assert_eq!(
            msg("{\"username\":\"a\"}\n{\"username\":\"b\"}", Format::Json),
            "expected a JSON array of user objects, found an object (for one object per line use --format jsonl)"
        );
        assert_eq!(
            msg("{\"results\": []}", Format::Json),
            "expected a JSON array of user objects, found an object (for one object per line use --format jsonl)"
        );
        assert_eq!(
            msg("\"users\"", Format::Json),
            "expected a JSON array of user objects, found text"
        );
        // Without a header the first line is data, so the message must not quote it.
        let headerless = "alice,SECsecret\n";
        let e = msg(headerless, Format::Csv);
        assert_eq!(
            e,
            "the CSV has no `username` column: its first line must be a header naming the \
             columns, e.g. username,display_name,telephone,email"
        );
        assert!(matches!(
            parse("username,qq,QQ \na,1,2\n", Format::Csv),
            Err(ImportError::DuplicateColumn("qq"))
        ));
        // Unknown columns may repeat: they are ignored anyway.
        assert!(parse("username,note,note\na,1,2\n", Format::Csv).is_ok());
        // A header alone is a valid, empty import.
        let parsed = parse_ok("username\n", Format::Csv);
        assert!(parsed.profiles.is_empty() && parsed.errors.is_empty());
    }
}
