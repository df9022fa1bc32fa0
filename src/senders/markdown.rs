//! Plain text inside markdown (a text alert in a robot digest, a link's text in numbered
//! parts): every line stays a line and nothing in it turns into markup. bk-monitor's text
//! templates separate lines by a single `\n`, which DingTalk markdown joins into one
//! paragraph. DingTalk's robot documentation gives its line break as `\n` with two spaces
//! before and after it; that renders on desktop and mobile, and a blank line stays a
//! paragraph break.

use crate::domain::message::{Message, MsgKey, DETAILS};

/// What DingTalk markdown takes as a line break within a paragraph.
const HARD_BREAK: &str = "  \n  ";

/// `text` as markdown that shows the same lines, characters and nothing more.
pub fn from_text(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    text.split('\n')
        .map(line)
        .collect::<Vec<_>>()
        .join(HARD_BREAK)
}

/// One line of `text` for a place in markdown that holds a single line (a digest item's
/// title): line breaks become spaces.
pub fn inline(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    line(&one_line)
}

/// The content of `m` as markdown, followed by the link it opens when it has no button of
/// its own (digests, numbered parts). Text and a link's text are plain; markdown and an
/// action card's text are markdown already and stay as given.
pub fn content_of(m: &Message) -> String {
    let content = match m.msg_key {
        MsgKey::Text | MsgKey::Link => from_text(&m.content),
        MsgKey::Markdown | MsgKey::ActionCard => m.content.clone(),
    };
    match m.details_url() {
        Some(url) => format!("{content}\n\n[{DETAILS}]({url})"),
        None => content,
    }
}

fn line(raw: &str) -> String {
    // Leading spaces would make an indented code block after a blank line; no-break spaces
    // keep the indentation without meaning.
    let body = raw.trim_start_matches([' ', '\t']);
    let indent: String = raw[..raw.len() - body.len()]
        .chars()
        .flat_map(|c| {
            let n = if c == '\t' { 4 } else { 1 };
            std::iter::repeat_n('\u{a0}', n)
        })
        .collect();
    let mut out = indent;
    out.push_str(&block_marker(body));
    out.push_str(&escape_inline(&body[marker_len(body)..]));
    out
}

/// What at the start of a line makes it a heading, quote, list item, rule or setext
/// underline, escaped; the rest of the line is escaped inline.
fn block_marker(body: &str) -> String {
    let n = marker_len(body);
    if n == 0 {
        return String::new();
    }
    let marker = &body[..n];
    match marker.as_bytes()[0] {
        b'0'..=b'9' => {
            let (digits, punct) = marker.split_at(n - 1);
            format!("{digits}\\{punct}")
        }
        _ => format!("\\{marker}"),
    }
}

/// The length of the markup at the start of `body`, if it has some: `#`, `>`, `-`, `+`,
/// `*`, `=`, or an ordered list's `1.` / `1)` before a space (`1.5 GB` is no list).
fn marker_len(body: &str) -> usize {
    let bytes = body.as_bytes();
    match bytes.first() {
        Some(b'#' | b'>' | b'-' | b'+' | b'*' | b'=') => 1,
        Some(b'0'..=b'9') => {
            let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
            let spaced = matches!(bytes.get(digits + 1), None | Some(b' ' | b'\t'));
            match bytes.get(digits) {
                Some(b'.' | b')') if digits <= 9 && spaced => digits + 1,
                _ => 0,
            }
        }
        _ => 0,
    }
}

/// Emphasis, code spans, links and images lose their meaning; a backslash stays a backslash.
fn escape_inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut prev: Option<char> = None;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        // An underscore inside a word (`host_name_1`) is no emphasis.
        let in_word = |p: Option<char>, n: Option<&char>| {
            p.is_some_and(char::is_alphanumeric) && n.is_some_and(|n| n.is_alphanumeric())
        };
        match c {
            '_' if in_word(prev, chars.peek()) => out.push(c),
            '*' | '_' | '`' | '[' | ']' | '~' => {
                out.push('\\');
                out.push(c);
            }
            // Only before punctuation does a backslash escape something (`C:\data` stays).
            '\\' if chars.peek().is_some_and(char::is_ascii_punctuation) => out.push_str("\\\\"),
            _ => out.push(c),
        }
        prev = Some(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_of_a_text_is_kept_as_a_hard_break() {
        assert_eq!(
            from_text("告警: CPU\n主机: host-1\r\n\n级别: 严重"),
            "告警: CPU  \n  主机: host-1  \n    \n  级别: 严重"
        );
        assert_eq!(from_text("one line"), "one line");
    }

    #[test]
    fn what_would_become_markup_is_escaped() {
        for (text, md) in [
            ("# not a heading", "\\# not a heading"),
            ("> not a quote", "\\> not a quote"),
            ("- not a list", "\\- not a list"),
            ("* not a list", "\\* not a list"),
            ("+ x", "\\+ x"),
            ("---", "\\---"),
            ("===", "\\==="),
            ("1. not ordered", "1\\. not ordered"),
            ("12) not ordered", "12\\) not ordered"),
            ("1.5 GB free", "1.5 GB free"),
            ("3.", "3\\."),
            ("host_name_1 _it_", "host_name_1 \\_it\\_"),
            ("2024 is a year", "2024 is a year"),
            ("**bold** and _it_", "\\*\\*bold\\*\\* and \\_it\\_"),
            (
                "[click](http://x) ![i](y)",
                "\\[click\\](http://x) !\\[i\\](y)",
            ),
            ("`rm -rf`", "\\`rm -rf\\`"),
            (r"C:\data and \*", r"C:\data and \\\*"),
            ("a # b > c - d", "a # b > c - d"),
        ] {
            assert_eq!(from_text(text), md, "{text}");
        }
    }

    #[test]
    fn indentation_is_kept_without_becoming_code() {
        assert_eq!(
            from_text("trace:\n\n    at main()\n\t- x"),
            "trace:  \n    \n  \u{a0}\u{a0}\u{a0}\u{a0}at main()  \n  \u{a0}\u{a0}\u{a0}\u{a0}\\- x"
        );
    }

    #[test]
    fn titles_stay_on_one_line() {
        assert_eq!(inline("Disk *full*\nnow"), "Disk \\*full\\* now");
    }

    #[test]
    fn markdown_stays_as_given_and_links_close_the_content() {
        let m = |msg_key, content: &str| Message {
            msg_key,
            title: Some("t".into()),
            content: content.into(),
            url: Some("https://x/1".into()),
            pic_url: None,
            at_mobiles: vec![],
            at_user_ids: vec![],
            at_all: false,
        };
        assert_eq!(content_of(&m(MsgKey::Markdown, "## a\nb")), "## a\nb");
        assert_eq!(
            content_of(&m(MsgKey::ActionCard, "**a**")),
            format!("**a**\n\n[{DETAILS}](https://x/1)")
        );
        assert_eq!(
            content_of(&m(MsgKey::Link, "a\nb")),
            format!("a  \n  b\n\n[{DETAILS}](https://x/1)")
        );
        assert_eq!(content_of(&m(MsgKey::Text, "# a\nb")), "\\# a  \n  b");
    }
}
