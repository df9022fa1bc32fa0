//! What getsendresult's per-person answer means for a delivery. DingTalk's limits on work
//! notifications come per person, as codes in `forbidden_list`, while the call itself succeeds.

use crate::clock::Zone;
use crate::senders::Verdict;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// The verdict for a person in `forbidden_user_id_list` / `forbidden_list` (`code`: the
/// list's code for them, if any), at `now` in the zone daily limits are counted in.
pub fn forbidden(code: Option<&str>, uid: &str, now: i64, zone: &Zone) -> Verdict {
    let retry = |code: &str, error: String, at_least: Option<Duration>| Verdict::Retry {
        code: code.to_owned(),
        error,
        at_least,
        parts_sent: None,
    };
    match code {
        Some(c @ ("143103" | "143104")) => retry(
            c,
            format!("DingTalk held back the work notification to {uid}: too many to one person within a minute ({c}); retried after a minute"),
            Some(MINUTE),
        ),
        Some(c @ "143105") => {
            let midnight = zone.next_midnight(now);
            retry(
                c,
                format!("DingTalk held back the work notification to {uid}: a person gets at most 500 a day from one app ({c}); retried after midnight ({})", zone.format(midnight)),
                Some(Duration::from_millis((midnight - now).max(0) as u64)),
            )
        }
        Some(c @ "143106") => retry(
            c,
            format!("DingTalk dropped the work notification to {uid}: the same content reached them today already ({c}); the retry carries the message id and attempt, so it differs"),
            None,
        ),
        Some(c) => retry(
            c,
            format!("DingTalk held back the work notification to {uid} (forbidden_list code {c}); retried later"),
            Some(MINUTE),
        ),
        None => retry(
            "forbidden",
            format!("DingTalk held back the work notification to {uid} (forbidden_user_id_list: too frequent, or over the daily limit); retried later"),
            Some(MINUTE),
        ),
    }
}

/// A person in `invalid_user_id_list`: not a member DingTalk lets this app reach.
pub fn invalid(uid: &str) -> Verdict {
    Verdict::failed(
        Some("invalid_user_id".into()),
        format!("DingTalk does not accept userid {uid} for this app's work notifications (invalid_user_id_list): the person must be in the organisation and in the app's visible range (可见范围)"),
    )
}

/// A person in `failed_user_id_list`.
pub fn failed(uid: &str) -> Verdict {
    Verdict::Retry {
        code: "failed_user_id".into(),
        error: format!("DingTalk could not deliver the work notification to {uid} (failed_user_id_list); retried"),
        at_least: None,
        parts_sent: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_least(v: &Verdict) -> Option<Duration> {
        match v {
            Verdict::Retry { at_least, .. } => *at_least,
            other => panic!("not a retry: {other:?}"),
        }
    }

    #[test]
    fn per_person_codes_say_when_to_retry() {
        let zone = Zone::parse("+08:00").unwrap();
        // 2026-12-01 22:30 at +08:00.
        let now = 1_796_135_400_000;
        assert_eq!(zone.format(now), "2026-12-01 22:30:00");
        for c in ["143103", "143104"] {
            assert_eq!(
                at_least(&forbidden(Some(c), "alice", now, &zone)),
                Some(MINUTE)
            );
        }
        let daily = forbidden(Some("143105"), "alice", now, &zone);
        assert_eq!(
            at_least(&daily),
            Some(Duration::from_secs(90 * 60)),
            "local midnight"
        );
        let Verdict::Retry { error, code, .. } = &daily else {
            unreachable!()
        };
        assert_eq!(code, "143105");
        assert!(
            error.contains("retried after midnight (2026-12-02 00:00:00)"),
            "{error}"
        );
        let same = forbidden(Some("143106"), "alice", now, &zone);
        assert_eq!(at_least(&same), None);
        assert!(
            matches!(&same, Verdict::Retry { error, .. } if error.contains("the same content reached them today"))
        );
        assert_eq!(
            at_least(&forbidden(None, "alice", now, &zone)),
            Some(MINUTE)
        );
        assert!(
            matches!(invalid("ghost"), Verdict::Failed { code: Some(c), .. } if c == "invalid_user_id")
        );
        assert!(matches!(failed("bob"), Verdict::Retry { .. }));
    }

    #[test]
    fn the_daily_retry_follows_the_zone_and_its_daylight_saving() {
        let utc = Zone::utc();
        let now = 1_796_135_400_000; // 14:30 UTC
        assert_eq!(utc.format(utc.next_midnight(now)), "2026-12-02 00:00:00");
        let ny = Zone::parse("America/New_York").unwrap();
        // 2026-03-07 23:30 EST; the next midnight is EDT's (the clocks move on the 8th at 02:00).
        let before = 1_772_944_200_000;
        assert_eq!(ny.format(before), "2026-03-07 23:30:00");
        assert_eq!(ny.next_midnight(before) - before, 30 * 60_000);
    }
}
