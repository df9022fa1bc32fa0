//! RFC 3339 times as Alertmanager writes them (the civil-date arithmetic is a few lines, after
//! Howard Hinnant's algorithms; the zone they are shown in is `clock::Zone`).

/// Unix milliseconds of `2026-12-01T10:00:00.123456789Z` or `…+08:00`; before 1970 is
/// negative (Alertmanager's zero time is year 1).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = s.get(from..to)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, min, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    // An impossible date (June 31) is refused, not read as the next month's.
    if !(1..=12).contains(&month)
        || !(1..=month_days).contains(&day)
        || hour > 23
        || min > 59
        || sec > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let first3: String = frac[..digits].chars().chain("00".chars()).take(3).collect();
        ms = first3.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let (h, m) = (num_of(&rest[1..3])?, num_of(&rest[4..6])?);
            if m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let days = crate::clock::days_from_civil(year, month, day);
    Some(((days * 86_400 + hour * 3600 + min * 60 + sec - offset_s) * 1000) + ms)
}

fn num_of(s: &str) -> Option<i64> {
    s.bytes()
        .all(|c| c.is_ascii_digit())
        .then(|| s.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_as_alertmanager_writes_them() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-12-01T10:00:00.123456789Z"),
            Some(1_796_119_200_123)
        );
        assert_eq!(
            parse_rfc3339("2026-12-01T18:00:00+08:00"),
            parse_rfc3339("2026-12-01T10:00:00Z")
        );
        assert!(parse_rfc3339("0001-01-01T00:00:00Z").unwrap() < 0);
        assert!(parse_rfc3339("2028-02-29T00:00:00Z").is_some());
        for bad in [
            "",
            "2026-12-01",
            "2026-13-01T00:00:00Z",
            "2026-12-01T10:00:00",
            "2026-12-01T10:00:00+0800",
            // Impossible dates and offsets, which the fuzz target found read as others.
            "2026-06-31T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-12-01T10:00:00+05:60",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    mod fuzz {
        use super::*;
        use crate::fuzz::{config, odd_string};
        use proptest::prelude::*;

        /// An RFC 3339 time from its fields, the day possibly past the month's end.
        fn time() -> impl Strategy<Value = String> {
            (
                (1..=9998i64, 1..=12i64, 1..=31i64),
                (0..=23i64, 0..=59i64, 0..=59i64),
                proptest::option::of("[0-9]{1,9}"),
                prop_oneof![
                    Just("Z".to_owned()),
                    (any::<bool>(), 0..=25i64, 0..=99i64).prop_map(|(east, h, m)| {
                        format!("{}{h:02}:{m:02}", if east { '+' } else { '-' })
                    })
                ],
            )
                .prop_map(|((y, mo, d), (h, mi, s), frac, offset)| {
                    let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
                    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{offset}")
                })
        }

        proptest! {
            #![proptest_config(config(2_000))]

            /// Read as jiff reads it (to the millisecond, rounded down), or refused as jiff
            /// refuses it: an impossible date or offset.
            #[test]
            fn fuzz_rfc3339_times_read_as_jiff_reads_them(s in time()) {
                let jiff = s.parse::<jiff::Timestamp>().ok()
                    .map(|t| t.as_nanosecond().div_euclid(1_000_000) as i64);
                prop_assert_eq!(parse_rfc3339(&s), jiff, "{}", s);
            }

            #[test]
            fn fuzz_rfc3339_any_text(s in prop_oneof![odd_string(40), time().prop_flat_map(|t| {
                let n = t.len();
                (Just(t), 0..n, crate::fuzz::odd_char())
            }).prop_map(|(t, at, c)| {
                let mut t: Vec<char> = t.chars().collect();
                t[at] = c;
                t.into_iter().collect()
            })]) {
                let _ = parse_rfc3339(&s);
            }
        }
    }
}
