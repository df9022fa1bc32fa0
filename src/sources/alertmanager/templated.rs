//! A notification in a stored template (`?template=NAME`), or in the built-in layout when it
//! names none or the template fails: the template sees the payload as the sender posted it
//! (Grafana's extra fields included), so nothing it sent is out of a template's reach. A
//! dispatch of some of the alerts (routes by label) sees the payload narrowed to them.

use super::payload::Notification;
use super::render;
use crate::clock::Zone;
use crate::templates::Template;
use serde_json::Value;

/// The title and the markdown content.
pub fn render(
    template: Option<&Template>,
    raw: &Value,
    n: &Notification,
    zone: &Zone,
) -> (String, String) {
    if let Some(t) = template {
        match t.render(&narrowed(raw, n), zone) {
            Ok(out) => return out,
            Err(e) => tracing::warn!(
                template = %t.name,
                error = %e,
                "template failed to render; the notification is sent in the built-in layout"
            ),
        }
    }
    render::render(n, zone)
}

/// `raw` with only the alerts of `n` (matched by fingerprint and status), and what depends on
/// the alerts (status, common labels and annotations) as `n` has them; Grafana's title and
/// message, written for all the alerts, are left out of a narrowed payload.
fn narrowed(raw: &Value, n: &Notification) -> Value {
    let Some(alerts) = raw.get("alerts").and_then(Value::as_array) else {
        return raw.clone();
    };
    if alerts.len() == n.alerts.len() {
        return raw.clone();
    }
    let kept: Vec<Value> = alerts
        .iter()
        .filter(|a| {
            n.alerts.iter().any(|mine| {
                a["fingerprint"] == mine.fingerprint.as_str() && a["status"] == mine.status.as_str()
            })
        })
        .cloned()
        .collect();
    let mut out = raw.clone();
    out["alerts"] = Value::Array(kept);
    out["status"] = n.status.as_str().into();
    out["commonLabels"] = serde_json::json!(n.common_labels);
    out["commonAnnotations"] = serde_json::json!(n.common_annotations);
    if n.grafana.is_some() {
        out["title"] = "".into();
        out["message"] = "".into();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::templates::sample;

    #[test]
    fn a_template_renders_the_raw_payload_and_a_broken_one_falls_back() {
        let raw = sample::notification();
        let n = super::super::payload::parse(raw.to_string().as_bytes()).unwrap();
        let zone = Zone::parse("+08:00").unwrap();
        let t = Template::from_file(
            "ops",
            "{{ status | upper }}: {{ commonLabels.alertname }}\n{% for a in alerts %}- {{ a.labels.instance }} since {{ a.startsAt | time }}\n{% endfor %}",
        )
        .unwrap();
        let (title, body) = render(Some(&t), &raw, &n, &zone);
        assert_eq!(title, "FIRING: HighCPU");
        assert_eq!(
            body,
            "- web-1 since 2026-12-01 18:00:00\n- web-2 since 2026-12-01 17:50:00"
        );
        let broken = Template::from_file("ops", "t\n{{ alerts | no_such_filter }}").unwrap();
        assert_eq!(
            render(Some(&broken), &raw, &n, &zone),
            render::render(&n, &zone)
        );
        assert_eq!(render(None, &raw, &n, &zone), render::render(&n, &zone));
    }
}
