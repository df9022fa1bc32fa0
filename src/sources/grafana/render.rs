//! Grafana's layout: Alertmanager's (`sources::alertmanager::render`) under Grafana's own
//! title, with each alert's query values and its links to the dashboard, the panel, the
//! silence form and the rule, and the panel's image when Grafana took one.

use super::payload::{GrafanaAlert, GrafanaNotification};
use crate::senders::markdown::inline;
use crate::sources::alertmanager::payload::{Alert, Notification};
use crate::sources::alertmanager::render::{layout, title, Extras};

/// The title and the markdown content.
pub fn render(n: &Notification, g: &GrafanaNotification, utc_offset_min: i32) -> (String, String) {
    // Grafana's title is a template's output: it may span lines, or be empty.
    let own = g.title.split_whitespace().collect::<Vec<_>>().join(" ");
    let title = if own.is_empty() { title(n) } else { own };
    let extras = |a: &Alert| {
        a.grafana
            .as_ref()
            .map(|ga| extras(a, ga))
            .unwrap_or_default()
    };
    let content = layout(n, &title, utc_offset_min, &extras, "Grafana");
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
