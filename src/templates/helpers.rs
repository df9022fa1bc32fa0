//! The helpers a template may call, beside minijinja's built-in filters (`join`, `default`,
//! `upper`, `map`, `selectattr`, …):
//!
//! - `time`: an RFC 3339 string or Unix milliseconds → `2026-12-01 18:00:00` in the configured
//!   zone; Alertmanager's zero time (`0001-01-01T00:00:00Z`, "no end") → empty.
//! - `duration(start, end)`: `5m 3s` between two such times; empty when either is missing.
//! - `md`: text made safe inside DingTalk markdown (every line kept, nothing turns into markup).
//! - `label(name, default)`: on an alert or a notification, its `labels`, then `commonLabels`,
//!   then `groupLabels` entry `name`, else `default`.

use crate::clock::{duration, Zone};
use crate::senders::markdown;
use minijinja::{Environment, Error, ErrorKind, Value};

pub fn register(env: &mut Environment<'_>, zone: Zone) {
    env.add_filter("time", move |v: Value| -> Result<String, Error> {
        Ok(instant(&v)?.map_or_else(String::new, |ms| zone.format(ms)))
    });
    env.add_function(
        "duration",
        |start: Value, end: Value| -> Result<String, Error> {
            Ok(match (instant(&start)?, instant(&end)?) {
                (Some(s), Some(e)) => duration(e - s),
                _ => String::new(),
            })
        },
    );
    env.add_filter("md", |text: Value| -> String {
        markdown::from_text(&text_of(&text))
    });
    env.add_filter(
        "label",
        |v: Value, name: String, default: Option<String>| -> String {
            ["labels", "commonLabels", "groupLabels"]
                .iter()
                .filter_map(|set| v.get_attr(set).ok()?.get_attr(&name).ok())
                .find_map(|l| l.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
                .or(default)
                .unwrap_or_default()
        },
    );
}

/// Unix milliseconds of a time given as an RFC 3339 string or a number of milliseconds;
/// `None` for nothing (undefined, none, empty) and for Alertmanager's zero time.
fn instant(v: &Value) -> Result<Option<i64>, Error> {
    if v.is_undefined() || v.is_none() {
        return Ok(None);
    }
    if let Some(ms) = v.as_i64() {
        return Ok(Some(ms));
    }
    let Some(s) = v.as_str() else {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("{v} is not a time (an RFC 3339 string such as 2026-12-01T10:00:00Z, or Unix milliseconds)"),
        ));
    };
    if s.trim().is_empty() {
        return Ok(None);
    }
    let ts: jiff::Timestamp = s.trim().parse().map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("'{s}' is not an RFC 3339 time such as 2026-12-01T10:00:00Z"),
        )
    })?;
    let ms = ts.as_millisecond();
    // Go's zero time, year 1: Alertmanager's "not ended".
    Ok((ms > 0).then_some(ms))
}

fn text_of(v: &Value) -> String {
    if v.is_undefined() || v.is_none() {
        String::new()
    } else {
        v.as_str().map_or_else(|| v.to_string(), str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(source: &str, ctx: serde_json::Value) -> Result<String, Error> {
        let mut env = Environment::new();
        register(&mut env, Zone::parse("Asia/Shanghai").unwrap());
        env.render_str(source, minijinja::value::Serde(&ctx))
    }

    #[test]
    fn time_in_the_zone_from_rfc3339_or_milliseconds() {
        let ctx = json!({"a": "2026-12-01T10:00:00.5Z", "b": 1_796_119_200_000_i64,
                         "zero": "0001-01-01T00:00:00Z", "off": "2026-12-01T12:00:00+02:00"});
        assert_eq!(
            render("{{ a | time }}|{{ b | time }}|{{ zero | time }}|{{ off | time }}|{{ nothing | time }}", ctx).unwrap(),
            "2026-12-01 18:00:00|2026-12-01 18:00:00||2026-12-01 18:00:00|"
        );
        let e = render("{{ 'yesterday' | time }}", json!({})).unwrap_err();
        assert!(
            e.to_string()
                .contains("'yesterday' is not an RFC 3339 time"),
            "{e}"
        );
    }

    #[test]
    fn duration_between_two_times() {
        let ctx = json!({"s": "2026-12-01T10:00:00Z", "e": "2026-12-01T10:05:03Z",
                         "zero": "0001-01-01T00:00:00Z"});
        assert_eq!(
            render(
                "{{ duration(s, e) }}|{{ duration(s, zero) }}|{{ duration(0, 3900000) }}",
                ctx
            )
            .unwrap(),
            "5m 3s||1h 5m"
        );
    }

    #[test]
    fn md_escapes_for_dingtalk_markdown() {
        let out = render("{{ t | md }}", json!({"t": "# not a heading\n**x**"})).unwrap();
        assert_eq!(out, markdown::from_text("# not a heading\n**x**"));
        assert_ne!(out, "# not a heading\n**x**");
        assert_eq!(render("{{ n | md }}", json!({})).unwrap(), "");
    }

    #[test]
    fn label_lookup_falls_back_to_common_labels_then_the_default() {
        let ctx = json!({
            "commonLabels": {"env": "prod"},
            "alerts": [{"labels": {"severity": "critical", "env": "dev"}}, {"labels": {}}],
        });
        assert_eq!(
            render(
                "{% for a in alerts %}{{ a | label('severity', 'none') }}/{{ a | label('env') }};{% endfor %}{{ alerts[0] | label('x') }}.",
                ctx
            )
            .unwrap(),
            "critical/dev;none/;."
        );
    }

    #[test]
    fn join_is_minijinjas_own() {
        let ctx = json!({"alerts": [{"labels": {"instance": "a"}}, {"labels": {"instance": "b"}}]});
        assert_eq!(
            render(
                "{{ alerts | map(attribute='labels.instance') | join(', ') }}",
                ctx
            )
            .unwrap(),
            "a, b"
        );
    }
}
