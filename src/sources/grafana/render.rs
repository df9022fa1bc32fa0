//! Grafana's layout: Alertmanager's (`sources::alertmanager::render`) under Grafana's own
//! title, with each alert's query values and its links to the dashboard, the panel, the
//! silence form and the rule, and the panel's image when Grafana took one.

use super::payload::{GrafanaAlert, GrafanaNotification};
use crate::clock::Zone;
use crate::senders::markdown::inline;
use crate::sources::alertmanager::payload::{Alert, Notification};
use crate::sources::alertmanager::render::{layout, title, Extras};

/// The title and the markdown content.
pub fn render(n: &Notification, g: &GrafanaNotification, zone: &Zone) -> (String, String) {
    // Grafana's title is a template's output: it may span lines, or be empty.
    let own = g.title.split_whitespace().collect::<Vec<_>>().join(" ");
    let title = if own.is_empty() { title(n) } else { own };
    let extras = |a: &Alert| {
        a.grafana
            .as_ref()
            .map(|ga| extras(a, ga))
            .unwrap_or_default()
    };
    let content = layout(n, &title, zone, &extras, "Grafana");
    (title, content)
}

fn extras(a: &Alert, g: &GrafanaAlert) -> Extras {
    let values = if !g.values.is_empty() {
        let pairs: Vec<String> = g
            .values
            .iter()
            .map(|(k, v)| format!("{}={}", inline(k), v))
            .collect();
        Some(format!("values: {}", pairs.join(", ")))
    } else if !g.value_string.trim().is_empty() {
        Some(format!("values: {}", inline(&g.value_string)))
    } else {
        None
    };
    Extras {
        values,
        links: vec![
            ("dashboard", g.dashboard_url.clone()),
            ("panel", g.panel_url.clone()),
            ("silence", g.silence_url.clone()),
            ("rule", a.generator_url.clone()),
        ],
        image: (!g.image_url.is_empty()).then(|| g.image_url.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_alert_in_full() {
        let body = json!({
            "receiver": "ding", "status": "firing", "orgId": 1, "version": "1",
            "groupLabels": {"alertname": "DiskFull"}, "commonLabels": {"alertname": "DiskFull"},
            "commonAnnotations": {}, "externalURL": "http://grafana:3000/",
            "groupKey": "{}:{alertname=\"DiskFull\"}", "truncatedAlerts": 2,
            "title": "[FIRING:1]\nDiskFull ", "state": "alerting", "message": "",
            "alerts": [{
                "status": "firing",
                "labels": {"alertname": "DiskFull", "severity": "warning", "mount": "/var"},
                "annotations": {"summary": "Disk 95% full"},
                "startsAt": "2026-12-01T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://grafana:3000/alerting/grafana/r1/view",
                "fingerprint": "f1",
                "silenceURL": "http://grafana:3000/alerting/silence/new?matcher=mount%3D/var",
                "dashboardURL": "", "panelURL": "",
                "values": {"B": 95.5}, "valueString": "[ var='B' value=95.5 ]",
                "imageURL": "https://img.example.com/a (1).png",
            }],
        });
        let n = crate::sources::grafana::payload::parse(body.to_string().as_bytes()).unwrap();
        let (title, text) = render(&n, n.grafana.as_ref().unwrap(), &Zone::utc());
        assert_eq!(title, "[FIRING:1] DiskFull");
        assert_eq!(
            text,
            "### \\[FIRING:1\\] DiskFull\n\n**Firing** (1)\n\n\
             - **warning** DiskFull: Disk 95% full  \n  \
             values: B=95.5  \n  \
             labels: mount=/var  \n  \
             started 2026-12-01 10:00:00  \n  \
             [silence](http://grafana:3000/alerting/silence/new?matcher=mount%3D/var) · [rule](http://grafana:3000/alerting/grafana/r1/view)  \n  \
             ![image](https://img.example.com/a%20%281%29.png)\n\n\
             and 2 more (truncated by Grafana's max_alerts)\n\n\
             [Grafana](http://grafana:3000/)"
        );
    }
}
