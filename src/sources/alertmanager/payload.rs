//! Alertmanager's webhook payload (version 4), read field by field so a refusal names the
//! field: Alertmanager logs the answer's body, and that is all an admin sees. Grafana's webhook
//! (`sources::grafana::payload`) carries the same fields, and its own beside them.

use crate::sources::grafana::payload::{GrafanaAlert, GrafanaNotification};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "firing" => Some(Self::Firing),
            "resolved" => Some(Self::Resolved),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub receiver: String,
    pub status: Status,
    pub alerts: Vec<Alert>,
    pub group_labels: Labels,
    pub common_labels: Labels,
    pub common_annotations: Labels,
    pub external_url: String,
    pub group_key: String,
    pub truncated_alerts: u64,
    /// What Grafana's webhook adds; `None` from Alertmanager.
    pub grafana: Option<GrafanaNotification>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub status: Status,
    pub labels: Labels,
    pub annotations: Labels,
    /// Unix milliseconds.
    pub starts_at: i64,
    /// Unix milliseconds; `None` for Alertmanager's zero time (a firing alert with no end).
    pub ends_at: Option<i64>,
    pub generator_url: String,
    pub fingerprint: String,
    /// What Grafana's webhook adds per alert; `None` from Alertmanager.
    pub grafana: Option<GrafanaAlert>,
}

/// Why a payload can never be accepted: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub field: String,
    pub problem: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

pub(in crate::sources) fn refuse(field: impl Into<String>, problem: impl Into<String>) -> Refusal {
    let field = field.into();
    Refusal {
        // A key may be "" (`{"": …}`); the answer still names it.
        field: if field.is_empty() {
            "(the field with an empty name)".to_owned()
        } else {
            field
        },
        problem: problem.into(),
    }
}

pub fn parse(body: &[u8]) -> Result<Notification, Refusal> {
    let top = object(body, "Alertmanager's webhook payload")?;
    version(&top, "4", "Alertmanager's webhook payload")?;
    notification(&top)
}

/// The body as a JSON object; `what` names the payload expected.
pub(in crate::sources) fn object(body: &[u8], what: &str) -> Result<Map<String, Value>, Refusal> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| refuse("body", format!("is not JSON ({e}); send {what}")))?;
    let Value::Object(top) = value else {
        return Err(refuse("body", format!("must be a JSON object ({what})")));
    };
    if let Some(field) = super::super::nul_in(&top) {
        return Err(refuse(field, super::super::NUL_PROBLEM));
    }
    Ok(top)
}

pub(in crate::sources) fn version(
    top: &Map<String, Value>,
    expected: &str,
    what: &str,
) -> Result<(), Refusal> {
    let version: String = required(top, "", "version", "a string")?;
    if version != expected {
        return Err(refuse(
            "version",
            format!("'{version}' is not served; this receiver reads {what} version {expected}"),
        ));
    }
    Ok(())
}

/// Alertmanager's fields of a notification, which Grafana's webhook sends too.
pub(in crate::sources) fn notification(top: &Map<String, Value>) -> Result<Notification, Refusal> {
    let alerts: Vec<Value> = required(top, "", "alerts", "a list of alerts")?;
    if alerts.is_empty() {
        return Err(refuse(
            "alerts",
            "is empty; a notification holds at least one alert",
        ));
    }
    let alerts = alerts
        .iter()
        .enumerate()
        .map(|(i, a)| alert(&format!("alerts[{i}]."), a))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Notification {
        receiver: required(top, "", "receiver", "a string")?,
        status: status(top, "")?,
        alerts,
        group_labels: required(top, "", "groupLabels", "an object of strings")?,
        common_labels: required(top, "", "commonLabels", "an object of strings")?,
        common_annotations: required(top, "", "commonAnnotations", "an object of strings")?,
        external_url: optional(top, "", "externalURL", "a string")?.unwrap_or_default(),
        group_key: required(top, "", "groupKey", "a string")?,
        truncated_alerts: optional(top, "", "truncatedAlerts", "a non-negative integer")?
            .unwrap_or(0),
        grafana: None,
    })
}

fn alert(prefix: &str, v: &Value) -> Result<Alert, Refusal> {
    let Value::Object(a) = v else {
        return Err(refuse(prefix.trim_end_matches('.'), "must be an object"));
    };
    let starts: String = required(a, prefix, "startsAt", "an RFC 3339 time")?;
    let ends: String = required(a, prefix, "endsAt", "an RFC 3339 time")?;
    let time = |name: &str, s: &str| {
        super::time::parse_rfc3339(s).ok_or_else(|| {
            refuse(
                format!("{prefix}{name}"),
                format!("'{s}' is not an RFC 3339 time such as 2026-12-01T10:00:00Z"),
            )
        })
    };
    let starts_at = time("startsAt", &starts)?;
    let ends_at = time("endsAt", &ends)?;
    let fingerprint: String = required(a, prefix, "fingerprint", "a string")?;
    if fingerprint.trim().is_empty() {
        return Err(refuse(format!("{prefix}fingerprint"), "is empty"));
    }
    Ok(Alert {
        status: status(a, prefix)?,
        labels: required(a, prefix, "labels", "an object of strings")?,
        annotations: required(a, prefix, "annotations", "an object of strings")?,
        starts_at,
        // Alertmanager writes the zero time `0001-01-01T00:00:00Z` for no end.
        ends_at: (ends_at > 0).then_some(ends_at),
        generator_url: optional(a, prefix, "generatorURL", "a string")?.unwrap_or_default(),
        fingerprint,
        grafana: None,
    })
}

fn status(obj: &Map<String, Value>, prefix: &str) -> Result<Status, Refusal> {
    let s: String = required(obj, prefix, "status", "\"firing\" or \"resolved\"")?;
    Status::parse(&s).ok_or_else(|| {
        refuse(
            format!("{prefix}status"),
            format!("'{s}' is neither \"firing\" nor \"resolved\""),
        )
    })
}

pub(in crate::sources) fn required<T: DeserializeOwned>(
    obj: &Map<String, Value>,
    prefix: &str,
    name: &str,
    expected: &str,
) -> Result<T, Refusal> {
    optional(obj, prefix, name, expected)?.ok_or_else(|| {
        refuse(
            format!("{prefix}{name}"),
            format!("is required ({expected})"),
        )
    })
}

pub(in crate::sources) fn optional<T: DeserializeOwned>(
    obj: &Map<String, Value>,
    prefix: &str,
    name: &str,
    expected: &str,
) -> Result<Option<T>, Refusal> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => T::deserialize(v).map(Some).map_err(|e| {
            refuse(
                format!("{prefix}{name}"),
                format!("must be {expected} ({e})"),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_nul_under_an_empty_key_is_refused_naming_it() {
        // The fuzz target found this refused naming nothing.
        let refused = super::parse(br#"{"":"\u0000"}"#).unwrap_err();
        assert_eq!(refused.field, "(the field with an empty name)");
        assert!(refused.problem.contains("NUL"), "{refused}");
    }
}

/// The fuzz targets of both webhook payloads, Alertmanager's and Grafana's: parsed or refused
/// naming a field; once parsed, laid out with every alert exactly once, in parts that fit a
/// robot and reassemble to the layout.
#[cfg(test)]
pub(in crate::sources) mod fuzz {
    use super::*;
    use crate::clock::Zone;
    use crate::domain::message::{Message, MsgKey};
    use crate::fuzz::{bytes, config, json_text, mutated, odd_string};
    use crate::senders::digest;
    use crate::senders::split::join_markdown;
    use proptest::prelude::*;
    use proptest::sample::select;
    use serde_json::json;

    pub fn marker(i: usize) -> String {
        format!("QZX{i:04}Q")
    }

    /// A notification of `alerts` (version 4, or Grafana's version 1 with its fields).
    pub fn notification(alerts: Vec<Value>, grafana: bool) -> Value {
        let mut n = json!({
            "version": "4", "receiver": "ding", "status": "firing", "alerts": alerts,
            "groupLabels": {"alertname": "HighCPU"}, "commonLabels": {"alertname": "HighCPU", "env": "prod"},
            "commonAnnotations": {}, "externalURL": "http://am:9093", "truncatedAlerts": 2,
            "groupKey": "{}:{alertname=\"HighCPU\"}",
        });
        if grafana {
            for (k, v) in [
                ("version", json!("1")),
                ("orgId", json!(1)),
                ("title", json!("[FIRING] HighCPU")),
                ("state", json!("alerting")),
                ("message", json!("**Firing**")),
            ] {
                n[k] = v;
            }
        }
        n
    }

    /// Alert `i`, its summary the marker that finds it in the layout.
    pub fn alert(i: usize, resolved: bool, grafana: bool) -> Value {
        let mut a = json!({
            "status": if resolved { "resolved" } else { "firing" },
            "labels": {"alertname": "HighCPU", "instance": format!("host-{i}"), "severity": "critical", "env": "prod"},
            "annotations": {"summary": marker(i), "description": "CPU at 97%\nfor 5m"},
            "startsAt": "2026-12-01T10:00:00.123+08:00",
            "endsAt": if resolved { "2026-12-01T11:30:00Z" } else { "0001-01-01T00:00:00Z" },
            "generatorURL": "http://prom:9090/graph?g0.expr=up", "fingerprint": format!("f{i}"),
        });
        if grafana {
            for (k, v) in [
                ("silenceURL", json!("http://g/s")),
                ("dashboardURL", json!("http://g/d (1)")),
                ("panelURL", json!("")),
                ("imageURL", json!("https://g/i.png")),
                ("values", json!({"A": 97.5, "B": 1e300})),
                ("valueString", json!("[ var='A' value=97.5 ]")),
            ] {
                a[k] = v;
            }
        }
        a
    }

    pub fn notifications(grafana: bool) -> impl Strategy<Value = Value> {
        proptest::collection::vec(any::<bool>(), 1..40).prop_flat_map(move |resolved| {
            let alerts = resolved
                .iter()
                .enumerate()
                .map(|(i, r)| alert(i, *r, grafana))
                .collect();
            mutated(notification(alerts, grafana))
        })
    }

    pub fn bodies() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            bytes(300),
            json_text().prop_map(String::into_bytes),
            odd_string(200).prop_map(String::into_bytes),
        ]
    }

    pub fn zones() -> impl Strategy<Value = Zone> {
        select(vec![
            "+08:00",
            "-12:00",
            "+14:00",
            "Asia/Shanghai",
            "America/New_York",
        ])
        .prop_map(|z| Zone::parse(z).unwrap())
    }

    /// What a parsed notification must hold, and what its layout and parts must.
    pub fn check(parse: fn(&[u8]) -> Result<Notification, Refusal>, body: &[u8], zone: &Zone) {
        let n = match parse(body) {
            Ok(n) => n,
            Err(r) => {
                assert!(!r.field.is_empty() && !r.problem.is_empty(), "{r}");
                return;
            }
        };
        assert!(!n.alerts.is_empty());
        let (title, content) = super::super::render::render(&n, zone);
        assert!(!title.is_empty() && !title.contains('\n'), "{title:?}");
        // Each alert still carrying its marker shows once, the firing ones first.
        let (mut last_firing, mut first_resolved) = (None, None::<usize>);
        for (i, a) in n.alerts.iter().enumerate() {
            if a.annotations.get("summary") != Some(&marker(i)) {
                continue;
            }
            assert_eq!(content.matches(&marker(i)).count(), 1, "alert {i}");
            let at = content.find(&marker(i)).unwrap();
            match a.status {
                Status::Firing => last_firing = last_firing.max(Some(at)),
                Status::Resolved => first_resolved = Some(first_resolved.map_or(at, |r| r.min(at))),
            }
        }
        if let (Some(f), Some(r)) = (last_firing, first_resolved) {
            assert!(f < r, "a resolved alert shows before a firing one");
        }
        let m = Message {
            msg_key: MsgKey::Markdown,
            title: Some(title),
            content: content.clone(),
            url: None,
            pic_url: None,
            at_mobiles: vec![],
            at_user_ids: vec![],
            at_all: false,
        };
        let parts = digest::parts(&m, 0);
        let mut texts = vec![];
        for (p, at) in &parts {
            assert!(digest::body_len(p, at) <= crate::dingtalk::client::WEBHOOK_MAX_BODY);
            let crate::dingtalk::Message::Markdown { text, .. } = p else {
                panic!("a markdown part")
            };
            texts.push(text.clone());
        }
        if parts.len() > 1 {
            assert_eq!(join_markdown(&texts), content);
        }
    }

    proptest! {
        #![proptest_config(config(200))]

        #[test]
        fn fuzz_alertmanager_any_body(body in bodies(), zone in zones()) {
            check(parse, &body, &zone);
        }

        #[test]
        fn fuzz_alertmanager_hostile_values(doc in notifications(false), zone in zones()) {
            check(parse, doc.to_string().as_bytes(), &zone);
        }
    }
}
