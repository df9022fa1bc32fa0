//! Time as the program sees it. Everything that depends on the time (signing timestamps,
//! token expiry, windows, backoff) takes a `Clock`, so tests move time instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

pub trait Clock: Send + Sync + 'static {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> i64;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// The system's time, in Unix milliseconds (what every stored time is).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm: no
/// calendar crate for a few dates shown to people).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Where times are shown to people (digests, the Alertmanager layout, templates): a fixed
/// UTC offset or an IANA zone, whose offset follows its daylight-saving rules at each instant.
/// The zone database is bundled, so a host without `/usr/share/zoneinfo` shows the same times.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone(jiff::tz::TimeZone);

/// A civil time: `(year, month, day, hour, minute, second)`.
pub type Civil = (i16, i8, i8, i8, i8, i8);

impl Zone {
    pub fn utc() -> Self {
        Self(jiff::tz::TimeZone::UTC)
    }

    /// `+08:00`, `-05:30`, `Z`, `UTC` or an IANA name such as `Asia/Shanghai`.
    pub fn parse(v: &str) -> Result<Self, String> {
        if v == "Z" || v == "UTC" {
            return Ok(Self::utc());
        }
        if v.starts_with(['+', '-']) {
            return fixed_minutes(v).map(|min| {
                let offset = jiff::tz::Offset::from_seconds(min * 60).expect("within ±14:59");
                Self(jiff::tz::TimeZone::fixed(offset))
            });
        }
        jiff::tz::TimeZone::get(v).map(Self).map_err(|_| {
            format!("'{v}' is neither a UTC offset nor a known time zone (use +08:00 or an IANA name such as Asia/Shanghai)")
        })
    }

    /// The civil time at `ms` (Unix milliseconds) in this zone.
    pub fn civil(&self, ms: i64) -> Civil {
        let ts = jiff::Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
            jiff::Timestamp::MIN
        } else {
            jiff::Timestamp::MAX
        });
        let dt = self.0.to_datetime(ts);
        (
            dt.year(),
            dt.month(),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
        )
    }

    /// `2026-12-01 18:00:00`.
    pub fn format(&self, ms: i64) -> String {
        let (y, mo, d, h, mi, s) = self.civil(ms);
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
    }

    /// The next local midnight after `ms` (the start of tomorrow, DST-correct): when a daily
    /// limit counted in this zone is free again.
    pub fn next_midnight(&self, ms: i64) -> i64 {
        let ts = jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::MAX);
        self.0
            .to_datetime(ts)
            .date()
            .tomorrow()
            .and_then(|d| {
                self.0
                    .to_ambiguous_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
                    .compatible()
            })
            .map_or(ms + 86_400_000, |t| t.as_millisecond())
    }

    /// The start of the month after the one `ms` falls in (local midnight of its 1st): when a
    /// monthly limit counted in this zone is free again.
    pub fn next_month(&self, ms: i64) -> i64 {
        let ts = jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::MAX);
        self.0
            .to_datetime(ts)
            .date()
            .last_of_month()
            .tomorrow()
            .and_then(|d| {
                self.0
                    .to_ambiguous_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
                    .compatible()
            })
            .map_or(ms + 31 * 86_400_000, |t| t.as_millisecond())
    }

    /// `2026-12`: the month `ms` falls in.
    pub fn month(&self, ms: i64) -> String {
        let (y, m, ..) = self.civil(ms);
        format!("{y:04}-{m:02}")
    }

    /// `18:00` or, with `seconds`, `18:00:00`.
    pub fn hh_mm(&self, ms: i64, seconds: bool) -> String {
        let (_, _, _, h, mi, s) = self.civil(ms);
        if seconds {
            format!("{h:02}:{mi:02}:{s:02}")
        } else {
            format!("{h:02}:{mi:02}")
        }
    }
}

/// `+08:00`, `-05:30` → minutes east of UTC.
fn fixed_minutes(v: &str) -> Result<i32, String> {
    let bad = || format!("'{v}' is not a UTC offset (use +HH:MM, e.g. +08:00)");
    let (sign, rest) = match v.split_at_checked(1) {
        Some(("+", r)) => (1, r),
        Some(("-", r)) => (-1, r),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    match (h.parse::<i32>(), m.parse::<i32>()) {
        (Ok(h), Ok(m)) if (0..=14).contains(&h) && (0..60).contains(&m) => Ok(sign * (h * 60 + m)),
        _ => Err(bad()),
    }
}

/// `1h 5m`, `3m 20s`, `45s`, `2d 3h`.
pub fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// A clock that stands still until told to move.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(now_ms)))
    }

    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn set_ms(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// A number in [0, 1) for jitter; quality doesn't matter, spread does.
pub fn jitter_unit() -> f64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01T10:00:00Z.
    const T: i64 = 1_796_119_200_000;

    #[test]
    fn fixed_offsets() {
        assert_eq!(
            Zone::parse("+08:00").unwrap().format(T),
            "2026-12-01 18:00:00"
        );
        assert_eq!(
            Zone::parse("-10:00").unwrap().format(T),
            "2026-12-01 00:00:00"
        );
        assert_eq!(
            Zone::parse("-11:00").unwrap().format(T),
            "2026-11-30 23:00:00"
        );
        assert_eq!(Zone::parse("+05:30").unwrap().hh_mm(T, true), "15:30:00");
        assert_eq!(Zone::parse("Z").unwrap(), Zone::utc());
        assert_eq!(Zone::utc().format(0), "1970-01-01 00:00:00");
    }

    #[test]
    fn named_zones_follow_daylight_saving() {
        let shanghai = Zone::parse("Asia/Shanghai").unwrap();
        assert_eq!(shanghai.format(T), "2026-12-01 18:00:00");
        let berlin = Zone::parse("Europe/Berlin").unwrap();
        // Winter: +01:00; summer (2026-07-01T10:00:00Z): +02:00.
        assert_eq!(berlin.hh_mm(T, false), "11:00");
        assert_eq!(berlin.hh_mm(1_782_900_000_000, false), "12:00");
        // The spring-forward night: 00:59:59Z is 01:59:59 CET, 01:00:00Z is 03:00:00 CEST.
        let spring = 1_774_746_000_000; // 2026-03-29T01:00:00Z
        assert_eq!(berlin.format(spring - 1000), "2026-03-29 01:59:59");
        assert_eq!(berlin.format(spring), "2026-03-29 03:00:00");
    }

    #[test]
    fn months_turn_at_local_midnight() {
        let shanghai = Zone::parse("Asia/Shanghai").unwrap();
        // 2026-12-31T15:59:59Z is the last second of December in Shanghai.
        let last = 1_798_732_799_000;
        assert_eq!(shanghai.month(last), "2026-12");
        assert_eq!(
            shanghai.next_month(last),
            last + 1000,
            "2027-01-01 00:00 +08:00"
        );
        assert_eq!(shanghai.month(last + 1000), "2027-01");
        assert_eq!(Zone::utc().month(last), "2026-12");
        assert_eq!(
            shanghai.format(shanghai.next_month(T)),
            "2027-01-01 00:00:00"
        );
        assert_eq!(
            Zone::utc().format(Zone::utc().next_month(1_769_904_000_000)),
            "2026-03-01 00:00:00",
            "February 2026 has 28 days"
        );
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(-5), "0s");
        assert_eq!(duration(45_000), "45s");
        assert_eq!(duration(303_000), "5m 3s");
        assert_eq!(duration(3_900_000), "1h 5m");
        assert_eq!(duration(183_600_000), "2d 3h");
    }

    #[test]
    fn bad_zones_are_refused_with_an_example() {
        for bad in [
            "Mars/Olympus",
            "+8",
            "+08:60",
            "+15:00",
            "08:00",
            "",
            "+08:00x",
        ] {
            let e = Zone::parse(bad).unwrap_err();
            assert!(e.contains("+08:00"), "{bad}: {e}");
        }
        assert!(Zone::parse("Mars/Olympus")
            .unwrap_err()
            .contains("Asia/Shanghai"));
    }

    #[test]
    fn times_out_of_range_are_clamped_not_a_panic() {
        assert!(Zone::utc().format(i64::MAX).starts_with("9999-"));
        assert!(Zone::utc().format(i64::MIN).starts_with("-9999-"));
    }
}
