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
    Refusal {
        field: field.into(),
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
    if let Some(field) = top.iter().find_map(|(k, v)| super::super::nul_at(v, k)) {
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
