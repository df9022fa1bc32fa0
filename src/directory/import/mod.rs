//! Parsing and validation for `ding-channel users import FILE`: bk-user (BlueKing user
//! management) profiles as a JSON array, JSON lines or CSV, one file per format, sharing the
//! row validation in `row`. [`FileImport`] is the first directory provider.
//!
//! Problems with one row become [`RowError`]s so an admin sees every bad row in one run;
//! only problems that make the whole file unreadable are an [`ImportError`].
//!
//! `wx_userid`, `qq` and `extras` may hold robot webhook tokens and signing secrets (see
//! [`Profile::field`]), so no message here quotes their values.

mod csv;
mod json;
mod row;

use super::profile::{Profile, ProfileSource};
use super::provider::{Batch, Provider};
use row::Collector;
use serde_json::Value;
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
    Csv(::csv::Error),
}

#[derive(Debug, Default)]
pub struct Parsed {
    /// Valid rows, with their row numbers.
    pub profiles: Vec<(usize, Profile)>,
    pub errors: Vec<RowError>,
}

/// The first directory provider: a file's text, in `format`.
#[derive(Debug)]
pub struct FileImport {
    pub content: String,
    pub format: Format,
}

impl Provider for FileImport {
    const SOURCE: ProfileSource = ProfileSource::File;
    type Rejection = RowError;
    type Error = ImportError;

    fn read(&self) -> Result<Batch<RowError>, ImportError> {
        let parsed = parse(&self.content, self.format)?;
        Ok(Batch {
            profiles: parsed.profiles.into_iter().map(|(_, p)| p).collect(),
            rejected: parsed.errors,
        })
    }
}

pub fn parse(content: &str, format: Format) -> Result<Parsed, ImportError> {
    let content = strip_bom(content);
    if content.trim().is_empty() {
        return Err(ImportError::Empty);
    }
    let mut out = Collector::default();
    match format {
        Format::Json => json::parse_array(content, &mut out)?,
        Format::JsonLines => json::parse_lines(content, &mut out),
        Format::Csv => csv::parse(content, &mut out)?,
    }
    Ok(out.parsed)
}

/// bk-user's own records (JSON objects, as its API returns them), checked as the rows of a
/// JSON import, numbered from 1 in the order given: another provider reads the same fields
/// the same way.
pub(crate) fn parse_records(records: Vec<Value>) -> Parsed {
    let mut out = Collector::default();
    for (i, record) in records.into_iter().enumerate() {
        out.row(i + 1, record, row::Source::Json);
    }
    out.parsed
}

/// Excel and other Windows tools start files with a BOM; left in, it would glue onto the
/// first CSV header name or break JSON parsing.
fn strip_bom(content: &str) -> &str {
    content.strip_prefix('\u{feff}').unwrap_or(content)
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

/// Helpers for the tests of each format.
#[cfg(test)]
mod testing {
    use super::*;
    pub(super) use crate::directory::profile::Username;
    pub(super) use crate::domain::mobile::Mobile;
    pub(super) use serde_json::{json, Map};

    pub(super) fn parse_ok(content: &str, format: Format) -> Parsed {
        parse(content, format).expect("file-level parse succeeds")
    }

    /// The errors as displayed, which pins row, field and message at once.
    pub(super) fn errors(content: &str, format: Format) -> Vec<String> {
        parse_ok(content, format)
            .errors
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The errors of a JSON-lines file with one line per element of `rows`.
    pub(super) fn jsonl_errors(rows: &[Value]) -> Vec<String> {
        let content: Vec<String> = rows.iter().map(Value::to_string).collect();
        errors(&content.join("\n"), Format::JsonLines)
    }

    pub(super) fn full_profile() -> Profile {
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
            source: ProfileSource::File,
            standing: Default::default(),
        }
    }

    pub(super) fn full_json() -> Value {
        json!({
            "id": 7, "username": " alice ", "display_name": "Alice Li",
            "telephone": "138-0000-0001", "country_code": "+86", "email": "alice@example.com",
            "wx_userid": "wx-alice", "qq": "10001", "extras": {"ding_token": "abc", "level": 3},
            "department": [{"id": 1}], "status": "NORMAL"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

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

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzz::{bytes, config, json_text, mutated, odd_string};
    use proptest::prelude::*;
    use proptest::sample::select;
    use serde_json::json;

    /// Values the import must never quote: robot credentials kept in these fields.
    const SECRETS: [&str; 3] = ["wx-secret-1c7e", "qq-secret-2d8f", "SECextras3e9a"];

    fn profile(i: usize) -> Value {
        json!({
            "username": format!("user{i}"), "display_name": "Alice Li", "telephone": "138-0000-0001",
            "country_code": "+86", "email": "alice@example.com", "wx_userid": SECRETS[0],
            "qq": SECRETS[1], "extras": {"ding_secret": SECRETS[2], "level": 3},
        })
    }

    /// Rows written in `format`: a CSV cell holds a string as it is and anything else as JSON.
    fn file(rows: &[Value], format: Format) -> String {
        match format {
            Format::Json => Value::from(rows.to_vec()).to_string(),
            Format::JsonLines => rows
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
            Format::Csv => {
                let mut w = ::csv::Writer::from_writer(vec![]);
                w.write_record(row::FIELDS).unwrap();
                for r in rows {
                    let cells = row::FIELDS.map(|f| match &r[f] {
                        Value::Null => String::new(),
                        Value::String(s) => s.clone(),
                        v => v.to_string(),
                    });
                    w.write_record(cells).unwrap();
                }
                String::from_utf8(w.into_inner().unwrap()).unwrap()
            }
        }
    }

    /// Every data row is a profile or has errors, not both, each username once; nothing
    /// quotes a secret. `rows`: how many data rows the file has, when known.
    fn check(content: &str, format: Format, rows: Option<usize>) {
        let parsed = match parse(content, format) {
            Ok(p) => p,
            Err(e) => {
                assert!(SECRETS.iter().all(|s| !e.to_string().contains(s)), "{e}");
                return;
            }
        };
        let good: Vec<usize> = parsed.profiles.iter().map(|(r, _)| *r).collect();
        for (i, (r, p)) in parsed.profiles.iter().enumerate() {
            assert!(parsed.profiles[..i]
                .iter()
                .all(|(r2, p2)| r2 < r && p2.username != p.username));
            assert!(p
                .display_name
                .as_ref()
                .is_none_or(|d| !d.contains(char::is_control)));
        }
        for e in &parsed.errors {
            assert!(
                !good.contains(&e.row),
                "row {} is both taken and refused: {e}",
                e.row
            );
            assert!(e.row >= 1 && !e.field.is_empty() && !e.message.is_empty());
            assert!(SECRETS.iter().all(|s| !e.to_string().contains(s)), "{e}");
        }
        if let Some(n) = rows {
            let mut seen: Vec<usize> = good
                .iter()
                .copied()
                .chain(parsed.errors.iter().map(|e| e.row))
                .collect();
            seen.sort_unstable();
            seen.dedup();
            let first = if format == Format::Csv { 2 } else { 1 };
            assert_eq!(
                seen,
                (first..first + n).collect::<Vec<_>>(),
                "every row accounted for"
            );
        }
    }

    fn formats() -> impl Strategy<Value = Format> {
        select(vec![Format::Json, Format::JsonLines, Format::Csv])
    }

    proptest! {
        #![proptest_config(config(300))]

        #[test]
        fn fuzz_import_any_text(
            content in prop_oneof![
                json_text(),
                odd_string(300),
                bytes(300).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
                json_text().prop_map(|t| format!("username,extras\na,\"{}\"\n", t.replace('"', "\"\""))),
            ],
            format in formats(),
        ) {
            check(&content, format, None);
        }

        /// Rows of profiles with hostile values, in each format.
        #[test]
        fn fuzz_import_hostile_rows(
            rows in proptest::collection::vec((0..4usize).prop_flat_map(|i| mutated(profile(i))), 1..6),
            format in formats(),
        ) {
            // A CSV row is numbered by its line, and a quoted cell may span lines: only the
            // JSON formats' rows are counted (serde writes no raw line break in a JSON line).
            let rows: Vec<Value> = rows.into_iter().filter(Value::is_object).collect();
            let known = (format != Format::Csv).then_some(rows.len());
            if !rows.is_empty() {
                check(&file(&rows, format), format, known);
            }
        }
    }
}
