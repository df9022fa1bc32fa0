//! A JSON array of profiles, or JSON lines (one object per line).

use super::row::{Collector, Source};
use super::{json_problem, kind, ImportError, WHOLE_ROW};
use serde_json::Value;

pub(super) fn parse_array(content: &str, out: &mut Collector) -> Result<(), ImportError> {
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

pub(super) fn parse_lines(content: &str, out: &mut Collector) {
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;

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
            source: ProfileSource::File,
            standing: Default::default(),
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
}
