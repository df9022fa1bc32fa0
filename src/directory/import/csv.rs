//! CSV with a header line naming the columns (any order, any case, unknown ones ignored).

use super::row::{Collector, Source, FIELDS};
use super::{ImportError, WHOLE_ROW};
use serde_json::Value;

pub(super) fn parse(content: &str, out: &mut Collector) -> Result<(), ImportError> {
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;

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
}
