//! Splitting long message text into parts that each fit a byte budget (DingTalk group robots
//! reject JSON bodies over 20000 bytes). The caller adds titles/numbering and measures the JSON
//! overhead; these functions only cut the text.
//!
//! Markdown parts stay renderable on their own: a fenced code block open at a cut is closed at
//! the end of the part and reopened at the start of the next one. The added lines follow a fixed
//! shape, so [`join_markdown`] removes them by shape alone, without knowing the budget:
//! - a part that ends inside a fence gets its closing fence appended: the marker alone when the
//!   part ends with '\n' (a cut between lines), `"\n" + marker + " "` when it ends mid-line (the
//!   trailing space, which markdown ignores, tells the two cases apart);
//! - the next part then starts with the reopening fence line plus '\n';
//! - any other part but the last ends with '\n' or, after its reopening line, holds no '\n' (a
//!   line is cut mid-line only when not even the first line fits: the part is a piece of it).
//!
//! Fences are tracked as each part renders them: the piece of a line cut in two counts as a line.

/// The smallest budget the splitters accept: room for a reopened fence, one character of
/// content (up to 4 bytes) and the closing fence.
pub const MIN_BUDGET: usize = 16;

/// Splits markdown `text` into parts of at most `max_bytes` bytes each (UTF-8 length).
///
/// Cuts after a '\n' when possible (taking as many whole lines as fit); a line that does not fit
/// on its own is cut at character boundaries. A fenced code block (a line starting with at least
/// three backticks or tildes, indented at most 3 spaces, with an optional info string) that is
/// open at a cut is closed at the end of that part and reopened at the start of the next one
/// with its opening line, info string included; these added lines count toward the budget.
/// Fallbacks for absurd fences: an opening line longer than `max_bytes / 4` is reopened without
/// its info string, and a fence whose marker (indentation and backticks) is longer than that is
/// neither closed nor reopened.
///
/// Returns `vec![text]` when the text fits, so `""` gives one empty part; otherwise no part is
/// empty. [`join_markdown`] restores the text.
///
/// # Panics
/// If `max_bytes < MIN_BUDGET`.
pub fn split_markdown(text: &str, max_bytes: usize) -> Vec<String> {
    split(text, max_bytes, true)
}

/// Splits plain `text` like [`split_markdown`], without fence handling: parts concatenate to the
/// text.
///
/// # Panics
/// If `max_bytes < MIN_BUDGET`.
pub fn split_text(text: &str, max_bytes: usize) -> Vec<String> {
    split(text, max_bytes, false)
}

/// Reassembles the parts of [`split_markdown`]: removes the fence lines the splitter added and
/// concatenates. `join_markdown(&split_markdown(t, n)) == t` for every `t` and `n`.
pub fn join_markdown(parts: &[String]) -> String {
    let mut out = String::new();
    let mut reopened = false;
    for (i, part) in parts.iter().enumerate() {
        let mut s = part.as_str();
        if reopened {
            s = s.split_once('\n').map_or("", |(_, rest)| rest);
        }
        // A closing fence was added iff a non-last part ends mid-line after a '\n' (see the
        // module docs): it is the last line, and with a trailing space the '\n' before it too.
        reopened = false;
        if i + 1 < parts.len() && !s.ends_with('\n') {
            if let Some(nl) = s.rfind('\n') {
                reopened = true;
                s = if s.ends_with(' ') {
                    &s[..nl]
                } else {
                    &s[..=nl]
                };
            }
        }
        out.push_str(s);
    }
    out
}

/// An open fenced code block.
#[derive(Clone, Copy, Debug)]
struct Fence<'a> {
    /// The opening line (without '\n'), info string included.
    line: &'a str,
    /// Indentation and fence run: closes the block, and reopens it when `line` is too long.
    marker: &'a str,
    ch: u8,
    run: usize,
}

/// Splits a fence line into (marker, fence char, run length, rest of the line).
fn fence_marker(line: &str) -> Option<(&str, u8, usize, &str)> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    let ch = *line.as_bytes().get(indent)?;
    if indent > 3 || (ch != b'`' && ch != b'~') {
        return None;
    }
    let run = line[indent..].bytes().take_while(|&b| b == ch).count();
    let end = indent + run;
    (run >= 3).then(|| (&line[..end], ch, run, &line[end..]))
}

/// The fence state after `line` (CommonMark rules: a closing fence has the same char, a run at
/// least as long and nothing but whitespace after it; a backtick info string has no backtick).
fn step<'a>(open: Option<Fence<'a>>, line: &'a str) -> Option<Fence<'a>> {
    let Some((marker, ch, run, rest)) = fence_marker(line) else {
        return open;
    };
    match open {
        Some(f)
            if ch == f.ch && run >= f.run && rest.trim_matches([' ', '\t', '\r']).is_empty() =>
        {
            None
        }
        Some(f) => Some(f),
        None if ch == b'`' && rest.contains('`') => None,
        None => Some(Fence {
            line,
            marker,
            ch,
            run,
        }),
    }
}

/// Whether `s` starts like a fence line (only the first few bytes are looked at).
fn starts_fence_run(s: &str) -> bool {
    let b = s.as_bytes();
    let k = b.iter().take(3).take_while(|&&x| x == b' ').count();
    matches!(b.get(k..k + 3), Some(b"```" | b"~~~"))
}

/// The fence if it gets closed and reopened at a cut: its marker fits the reserved quarter.
fn closable(open: Option<Fence<'_>>, quarter: usize) -> Option<Fence<'_>> {
    open.filter(|f| f.marker.len() <= quarter)
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn split(text: &str, max: usize, markdown: bool) -> Vec<String> {
    assert!(
        max >= MIN_BUDGET,
        "split budget {max} is below the minimum of {MIN_BUDGET} bytes"
    );
    // A quarter of the budget is the most a reopened line or a closing marker may take, which
    // leaves at least `max / 2 - 3` bytes (one character or more) of content per part.
    let quarter = max / 4;
    let mut parts = Vec::new();
    let mut start = 0;
    // The fence the previous part closed, reopened at the start of this one.
    let mut open: Option<Fence> = None;
    loop {
        let reopen = open.map(|f| {
            if f.line.len() <= quarter {
                f.line
            } else {
                f.marker
            }
        });
        let mut part = String::with_capacity(max.min(text.len() - start + quarter + 2));
        if let Some(line) = reopen {
            part.push_str(line);
            part.push('\n');
        }
        let avail = max - part.len(); // for content and closing fence
        if text.len() - start <= avail {
            part.push_str(&text[start..]);
            parts.push(part);
            return parts;
        }

        // The last line boundary at which content plus closing fence fit.
        let limit = start + avail;
        let mut best = None;
        let mut first_nl = None;
        let mut state = open;
        let mut line_start = start;
        for nl in (start..limit).filter(|&i| text.as_bytes()[i] == b'\n') {
            first_nl.get_or_insert(nl);
            let before = state;
            if markdown {
                state = step(state, &text[line_start..nl]);
            }
            line_start = nl + 1;
            let closing = closable(state, quarter).map_or(0, |f| f.marker.len());
            // Right after an opening fence line the part would end with an empty code block.
            let just_opened = before.is_none() && state.is_some();
            if line_start - start + closing <= avail && (!just_opened || best.is_none()) {
                best = Some((line_start, state));
            }
        }
        let (end, state) = best.unwrap_or_else(|| {
            cut_line(
                text,
                start,
                first_nl.unwrap_or(limit),
                open,
                avail,
                markdown,
                quarter,
            )
        });

        part.push_str(&text[start..end]);
        open = closable(state, quarter);
        if let Some(f) = open {
            if !part.ends_with('\n') {
                part.push('\n');
                part.push_str(f.marker);
                part.push(' ');
            } else {
                part.push_str(f.marker);
            }
        }
        debug_assert!(part.len() <= max && end > start);
        parts.push(part);
        start = end;
    }
}

/// Cuts the line starting at `start` (ending at or after `hi`) at a character boundary:
/// returns the cut and the fence state after the piece.
fn cut_line<'a>(
    text: &'a str,
    start: usize,
    hi: usize,
    open: Option<Fence<'a>>,
    avail: usize,
    markdown: bool,
    quarter: usize,
) -> (usize, Option<Fence<'a>>) {
    // Reserve room for the closing fence the piece needs; a shorter piece may need a longer one
    // (it may end inside another fence), so retry. The reserve grows and is at most
    // `quarter + 2`, which always fits and keeps a character (`MIN_BUDGET`).
    let mut reserve = 0;
    loop {
        let mut cut = floor_boundary(text, hi.min(start + avail - reserve));
        if !markdown {
            return (cut, None);
        }
        // The next part would render a rest starting with ``` as a fence line: cut earlier.
        if starts_fence_run(&text[cut..]) {
            let piece = &text[start..cut];
            if let Some(i) = piece
                .rfind(|c| !matches!(c, ' ' | '`' | '~'))
                .filter(|&i| i > 0)
            {
                cut = start + i;
            }
        }
        let state = step(open, &text[start..cut]);
        let closing = closable(state, quarter).map_or(0, |f| f.marker.len() + 2);
        if cut - start + closing <= avail {
            return (cut, state);
        }
        reserve = closing;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether every fence opened in `part` is closed in it, and its fence lines are even.
    fn balanced(part: &str) -> bool {
        let mut state = None;
        let mut fence_lines = 0;
        for line in part.split('\n') {
            let next = step(state, line);
            fence_lines += usize::from(next.is_some() != state.is_some());
            state = next;
        }
        state.is_none() && fence_lines % 2 == 0
    }

    /// Lines starting with ``` or ~~~ after up to 3 spaces (an independent, naive count).
    fn naive_fence_lines(part: &str) -> usize {
        part.split('\n').filter(|l| starts_fence_run(l)).count()
    }

    fn check_sizes(parts: &[String], text: &str, budget: usize) {
        assert!(!parts.is_empty());
        if text.len() <= budget {
            assert_eq!(parts, [text]);
        }
        for p in parts {
            assert!(
                p.len() <= budget,
                "part of {} bytes > {budget}: {p:?}",
                p.len()
            );
            assert!(!p.is_empty() || text.is_empty());
        }
    }

    /// All properties of both splitters for one text and budget; returns the markdown parts.
    fn check(text: &str, budget: usize) -> Vec<String> {
        let plain = split_text(text, budget);
        check_sizes(&plain, text, budget);
        assert_eq!(plain.concat(), text);

        let parts = split_markdown(text, budget);
        check_sizes(&parts, text, budget);
        assert_eq!(
            join_markdown(&parts),
            text,
            "budget {budget}, parts {parts:#?}"
        );
        // Balance holds for markers that fit the reserved quarter; the last part is balanced when
        // the text is and no line was cut (a piece of a line renders as a line of its own).
        let longest_run = text
            .split(|c| c != '`' && c != '~')
            .map(str::len)
            .max()
            .unwrap_or(0);
        if longest_run + 3 <= budget / 4 {
            let text_balanced = balanced(text);
            let intact = text.split('\n').all(|l| l.len() < budget / 4);
            for (i, p) in parts.iter().enumerate() {
                if i + 1 < parts.len() || (text_balanced && intact) {
                    assert!(balanced(p), "unbalanced part {i} at budget {budget}: {p:?}");
                }
            }
        }
        parts
    }

    #[test]
    fn fits_in_one_part_unchanged() {
        let text = "# 磁盘已满\n```sh\ndf -h\n```\n";
        assert_eq!(split_markdown(text, 100), [text]);
        assert_eq!(split_text(text, text.len()), [text]);
        assert_eq!(split_markdown("", 16), [""]);
        assert_eq!(split_text("", 16), [""]);
        assert_eq!(join_markdown(&[String::new()]), "");
    }

    #[test]
    fn fence_rules() {
        let open = |line| step(None, line);
        assert!(open("```rust").is_some() && open("   ~~~ x ` y").is_some());
        assert!(open("    ```").is_none() && open("``").is_none() && open("``` a ` b").is_none());
        let f = open("````");
        assert!(step(f, "````").is_none() && step(f, " `````\t\r").is_none());
        assert!(
            step(f, "```").is_some() && step(f, "~~~~").is_some() && step(f, "```` x").is_some()
        );
    }

    #[test]
    #[should_panic(expected = "below the minimum")]
    fn rejects_tiny_budget() {
        split_text("abc", MIN_BUDGET - 1);
    }

    #[test]
    fn long_mixed_markdown() {
        let mut text = String::new();
        let mut i = 0;
        while text.len() < 60_000 {
            match i % 7 {
                0 => text.push_str(&format!("## 告警 {i}: 磁盘已满\n")),
                1 => text.push_str(&format!("- host-{i}.example.com 磁盘已满 {}%\n", i % 100)),
                2 => text.push_str(&"磁盘已满，请尽快清理。".repeat(i % 23)),
                3 => text.push_str(&"x".repeat(i % 200)),
                _ => text.push_str("plain ascii line with some words\n"),
            }
            text.push('\n');
            i += 1;
        }
        let parts = check(&text, 19_000);
        assert!(parts.len() >= 3);
        // Cuts fall after a '\n'.
        assert!(parts[..parts.len() - 1].iter().all(|p| p.ends_with('\n')));
    }

    #[test]
    fn long_line_of_three_byte_chars() {
        let text = "磁".repeat(16_667);
        assert!(text.len() > 50_000);
        for parts in [check(&text, 19_000), split_text(&text, 19_000)] {
            assert_eq!(parts.len(), 3);
            assert!(parts
                .iter()
                .all(|p| p.len() % 3 == 0 && p.chars().all(|c| c == '磁')));
        }
    }

    #[test]
    fn fence_spanning_a_cut_is_closed_and_reopened() {
        for (open, close) in [
            ("```rust", "```"),
            ("~~~ text", "~~~"),
            ("  ```sh", "  ```"),
        ] {
            let body = "let used = 99; // 磁盘已满\n".repeat(60);
            let text = format!("intro\n{open}\n{body}{close}\noutro\n");
            let parts = check(&text, 1000);
            assert!(parts.len() >= 2);
            for p in &parts {
                assert_eq!(naive_fence_lines(p) % 2, 0, "{p:?}");
            }
            assert!(parts[0].ends_with(&format!("\n{close}")));
            assert!(parts[1].starts_with(&format!("{open}\nlet used")));
        }
        // A cut right after an opening line would leave an empty code block: cut before it.
        let text = format!("{}\n```sh\n{}```\n", "a".repeat(40), "b\n".repeat(40));
        let parts = check(&text, 50);
        assert_eq!(parts[0], format!("{}\n", "a".repeat(40)));
    }

    #[test]
    fn long_line_inside_a_fence() {
        let text = format!("```\n{}\n```\n", "x".repeat(300));
        let parts = check(&text, 100);
        // The first line only fits alone, then the long line is cut.
        assert_eq!(parts[0], "```\n```");
        assert_eq!(parts[1], format!("```\n{}\n``` ", "x".repeat(91)));
        assert!(parts[2].starts_with("```\nxxx"));
        assert!(parts.iter().all(|p| naive_fence_lines(p) % 2 == 0));
    }

    #[test]
    fn rest_of_a_cut_line_does_not_start_with_a_fence() {
        let text = format!("{}```sh{}", "a".repeat(64), "b".repeat(100));
        let parts = check(&text, 64);
        assert_eq!(parts[0], "a".repeat(63));
        assert!(parts.iter().all(|p| !starts_fence_run(p)));
        assert_eq!(parts.concat(), text, "nothing added");
    }

    #[test]
    fn tricky_texts_at_every_budget() {
        let texts = [
            "```\ncode\n```",
            "```\ncode\n```\n",
            "```\n```\n```\nb\n```\n",
            "text\n```\n",
            "```rust\nfn main() {}\n",
            "~~~~\n~~~\nstill code\n~~~~ \nafter\n",
            "```\n``` not a close\n`````\n",
            "``` a ` b\nnot a fence\n",
            "    ```\nindented code, not a fence\n",
            "``````````\nten backticks\n``````````\n",
            "```\r\ncrlf\r\n```\r\n",
            "\n\n\n```\n\n\n\n```\n\n\n",
            "```\nline ending with spaces   \nand one with a space \n```\n",
        ];
        for text in texts {
            let long = format!("{text}{}", text.repeat(9));
            for budget in MIN_BUDGET..=long.len() + 1 {
                check(text, budget);
                check(&long, budget);
            }
        }
    }

    #[test]
    fn random_texts() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let pieces = [
            "a",
            "é",
            "磁",
            "\n",
            "\n",
            "```",
            "```sh\n",
            "~~~\n",
            "   ~~~~ info\n",
            " ",
            "#",
            "`",
        ];
        let (mut multi, mut reopened) = (0, 0);
        for _ in 0..300 {
            let mut text = String::new();
            for _ in 0..next(200) {
                match next(pieces.len() + 2) {
                    i if i < pieces.len() => text.push_str(pieces[i]),
                    i if i == pieces.len() => text.push_str(&"a".repeat(next(300))),
                    _ => text.push_str(&"磁".repeat(next(100))),
                }
            }
            let budget = 64 + next(337);
            let parts = check(&text, budget);
            multi += usize::from(parts.len() > 1);
            reopened += parts[1..].iter().filter(|p| starts_fence_run(p)).count();
            check(&text, MIN_BUDGET + next(48));
        }
        // The generator does exercise cuts and reopened fences.
        assert!(
            multi > 100 && reopened > 50,
            "multi {multi}, reopened {reopened}"
        );
    }

    mod fuzz {
        use super::*;
        use crate::fuzz::{config, long_text, odd_string};
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(config(300))]

            /// Any text at any budget: every part within the budget, the plain parts
            /// concatenating and the markdown parts joining to the text, fences balanced.
            #[test]
            fn fuzz_split_any_text_at_any_budget(
                text in prop_oneof![odd_string(200), long_text(3_000)],
                budget in prop_oneof![MIN_BUDGET..64usize, 64..2_000usize],
            ) {
                check(&text, budget);
            }
        }

        proptest! {
            #![proptest_config(config(24))]

            /// DingTalk's budget on texts of up to 100 KB.
            #[test]
            fn fuzz_split_long_text_at_the_webhook_budget(text in long_text(100_000)) {
                check(&text, 19_000);
            }
        }
    }
}
