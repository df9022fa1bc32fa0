//! Grafana unified alerting's webhook payload (version 1, grafana/alerting
//! `receivers/webhook`): Alertmanager's fields, read as Alertmanager's are, and Grafana's own
//! beside them. Grafana does not retry a refused notification, so only what the layout needs
//! to be right is required: its own fields are checked for their type, and may be absent.

use crate::sources::alertmanager::payload::{
    notification, object, optional, version, Notification, Refusal,
};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Grafana's additions to a notification.
#[derive(Debug, Clone, PartialEq)]
pub struct GrafanaNotification {
    pub org_id: i64,
    /// Grafana's templated title (`[FIRING:1] HighCPU (folder)` by default); may be empty.
    pub title: String,
    /// `alerting` or `ok`, as Grafana words the status.
    pub state: String,
    /// Grafana's templated text of the whole notification.
    pub message: String,
}

/// Grafana's additions to an alert; each URL is empty when Grafana has none.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GrafanaAlert {
    pub silence_url: String,
    pub dashboard_url: String,
    pub panel_url: String,
    pub image_url: String,
    /// The value of each query and expression (`A`, `B`, …) that decided the state.
    pub values: BTreeMap<String, f64>,
    /// The same, with the labels, as one line: `[ var='A' labels={…} value=95 ]`.
    pub value_string: String,
}

const WHAT: &str = "Grafana's webhook payload";

pub fn parse(body: &[u8]) -> Result<Notification, Refusal> {
    let top = object(body, WHAT)?;
    version(&top, "1", WHAT)?;
    let mut n = notification(&top)?;
    n.grafana = Some(GrafanaNotification {
        org_id: optional(&top, "", "orgId", "an integer")?.unwrap_or(0),
        title: shown(optional(&top, "", "title", "a string")),
        state: shown(optional(&top, "", "state", "a string")),
        message: shown(optional(&top, "", "message", "a string")),
    });
    let objects = top["alerts"].as_array().expect("read as a list above");
    for (i, (alert, raw)) in n.alerts.iter_mut().zip(objects).enumerate() {
        let raw = raw.as_object().expect("read as an object above");
        alert.grafana = Some(extras(&format!("alerts[{i}]."), raw));
    }
    Ok(n)
}

/// A field that is only shown: Grafana does not retry a refused notification, so one of the
/// wrong type is left out (and logged) rather than costing the alert.
fn shown<T: Default>(field: Result<Option<T>, Refusal>) -> T {
    field
        .unwrap_or_else(|r| {
            tracing::warn!(field = %r.field, error = %r, "Grafana field left out");
            None
        })
        .unwrap_or_default()
}

fn extras(prefix: &str, a: &Map<String, Value>) -> GrafanaAlert {
    let text = |name: &str| shown(optional(a, prefix, name, "a string"));
    GrafanaAlert {
        silence_url: text("silenceURL"),
        dashboard_url: text("dashboardURL"),
        panel_url: text("panelURL"),
        image_url: text("imageURL"),
        values: shown(optional(a, prefix, "values", "an object of numbers")),
        value_string: text("valueString"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(alert: Value) -> Vec<u8> {
        json!({
            "receiver": "ding", "status": "firing", "orgId": 1,
            "groupLabels": {"alertname": "HighCPU"}, "commonLabels": {"alertname": "HighCPU"},
            "commonAnnotations": {}, "externalURL": "http://grafana:3000/", "version": "1",
            "groupKey": "{}/{}:{alertname=\"HighCPU\"}", "truncatedAlerts": 0,
            "title": "[FIRING:1] HighCPU", "state": "alerting", "message": "**Firing**",
            "alerts": [alert],
        })
        .to_string()
        .into_bytes()
    }

    fn alert() -> Value {
        json!({
            "status": "firing", "labels": {"alertname": "HighCPU"}, "annotations": {},
            "startsAt": "2026-12-01T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://grafana:3000/alerting/grafana/abc/view",
            "fingerprint": "57c6d9296de2ad39",
            "silenceURL": "http://grafana:3000/alerting/silence/new?matcher=alertname%3DHighCPU",
            "dashboardURL": "http://grafana:3000/d/dash", "panelURL": "http://grafana:3000/d/dash?viewPanel=2",
            "values": {"A": 95.5, "C": 1}, "valueString": "[ var='A' labels={} value=95.5 ]",
        })
    }

    #[test]
    fn reads_grafanas_fields_beside_alertmanagers() {
        let n = parse(&body(alert())).unwrap();
        let g = n.grafana.unwrap();
        assert_eq!((g.org_id, g.state.as_str()), (1, "alerting"));
        assert_eq!(g.title, "[FIRING:1] HighCPU");
        let a = n.alerts[0].grafana.clone().unwrap();
        assert_eq!(
            a.values,
            BTreeMap::from([("A".into(), 95.5), ("C".into(), 1.0)])
        );
        assert_eq!(a.dashboard_url, "http://grafana:3000/d/dash");
        assert_eq!(a.image_url, "", "absent (omitempty)");
        assert_eq!(n.alerts[0].ends_at, None);
    }

    #[test]
    fn null_values_are_none_and_a_shown_field_of_a_wrong_type_is_left_out() {
        let mut a = alert();
        a["values"] = Value::Null;
        let n = parse(&body(a)).unwrap();
        assert!(n.alerts[0].grafana.as_ref().unwrap().values.is_empty());
        let mut a = alert();
        a["values"] = json!({"A": "high"});
        a["panelURL"] = json!(3);
        let n = parse(&body(a)).unwrap();
        let g = n.alerts[0].grafana.clone().unwrap();
        assert!(g.values.is_empty() && g.panel_url.is_empty(), "{g:?}");
        assert_eq!(g.dashboard_url, "http://grafana:3000/d/dash");
        let mut v: Value = serde_json::from_slice(&body(alert())).unwrap();
        v["orgId"] = json!("one");
        let e = parse(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field, "orgId", "the dedup key needs it");
    }

    #[test]
    fn only_version_1_is_read() {
        let mut v: Value = serde_json::from_slice(&body(alert())).unwrap();
        v["version"] = json!("4");
        let e = parse(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field, "version");
        assert!(
            e.problem.contains("Grafana's webhook payload version 1"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod fuzz {
    use crate::fuzz::config;
    use crate::sources::alertmanager::payload::fuzz::{bodies, check, notifications, zones};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(config(200))]

        #[test]
        fn fuzz_grafana_any_body(body in bodies(), zone in zones()) {
            check(super::parse, &body, &zone);
        }

        #[test]
        fn fuzz_grafana_hostile_values(doc in notifications(true), zone in zones()) {
            check(super::parse, doc.to_string().as_bytes(), &zone);
        }
    }
}
