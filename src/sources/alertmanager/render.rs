//! The built-in markdown layout of a notification: a title Alertmanager users know
//! (`[FIRING:3] HighCPU (prod)`), the firing alerts, then the resolved ones; Grafana's layout
//! (`sources::grafana::render`) is this one with Grafana's values and links. Every label and
//! annotation value is escaped: they are free text written by whoever wrote the rule.

use super::payload::{Alert, Labels, Notification, Status};
use crate::clock::Zone;
use crate::senders::markdown::{from_text, inline};

/// The title and the markdown content: Grafana's layout for Grafana's notifications.
pub fn render(n: &Notification, zone: &Zone) -> (String, String) {
    if let Some(g) = &n.grafana {
        return crate::sources::grafana::render::render(n, g, zone);
    }
    let title = title(n);
    let source = |a: &Alert| Extras {
        links: vec![("source", a.generator_url.clone())],
        ..Extras::default()
    };
    let content = layout(n, &title, zone, &source, "Alertmanager");
    (title, content)
}

/// What a source shows of an alert beyond Alertmanager's fields.
#[derive(Default)]
pub(in crate::sources) struct Extras {
    /// A line after the description (Grafana's query values), markdown already.
    pub values: Option<String>,
    /// Named links on one line; those that are not http(s) are left out.
    pub links: Vec<(&'static str, String)>,
    /// An image shown under the alert.
    pub image: Option<String>,
}

/// The firing alerts, then the resolved ones, under `title`, and a link to `home` (the
/// notification's external URL).
pub(in crate::sources) fn layout(
    n: &Notification,
    title: &str,
    zone: &Zone,
    extras: &dyn Fn(&Alert) -> Extras,
    home: &str,
) -> String {
    let firing: Vec<&Alert> = n
        .alerts
        .iter()
        .filter(|a| a.status == Status::Firing)
        .collect();
    let resolved: Vec<&Alert> = n
        .alerts
        .iter()
        .filter(|a| a.status == Status::Resolved)
        .collect();
    let mut out = format!("### {}\n\n", inline(title));
    // The title names the group labels; labels all the alerts share are shown once, above
    // them (a lone alert shows all its own); each alert shows the rest.
    let shown = |k: &str| k != "alertname" && k != "severity" && !n.group_labels.contains_key(k);
    let shared: Labels = if n.alerts.len() > 1 {
        n.common_labels
            .iter()
            .filter(|(k, _)| shown(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    } else {
        Labels::new()
    };
    if !shared.is_empty() {
        out.push_str(&format!("labels of all: {}\n\n", labels(&shared)));
    }
    let mut hidden = shared;
    hidden.extend(n.group_labels.clone());
    for (name, alerts) in [("Firing", &firing), ("Resolved", &resolved)] {
        if alerts.is_empty() {
            continue;
        }
        out.push_str(&format!("**{name}** ({})\n\n", alerts.len()));
        for a in alerts.iter() {
            out.push_str(&item(a, &hidden, zone, &extras(a)));
        }
    }
    if n.truncated_alerts > 0 {
        out.push_str(&format!(
            "and {} more (truncated by {home}'s max_alerts)\n\n",
            n.truncated_alerts
        ));
    }
    if let Some(url) = link(&n.external_url) {
        out.push_str(&format!("[{home}]({url})\n"));
    }
    out.trim_end().to_owned()
}

/// Alertmanager's own default: the count of the notification's status, the alert name, and
/// the other labels the alerts were grouped by.
pub(in crate::sources) fn title(n: &Notification) -> String {
    let counted = |s: Status| n.alerts.iter().filter(|a| a.status == s).count();
    let (word, count) = match n.status {
        Status::Firing => ("FIRING", counted(Status::Firing)),
        Status::Resolved => ("RESOLVED", counted(Status::Resolved)),
    };
    let name = n
        .common_labels
        .get("alertname")
        .or_else(|| n.group_labels.get("alertname"))
        .map(String::as_str)
        .unwrap_or("alerts");
    let others: Vec<&str> = n
        .group_labels
        .iter()
        .filter(|(k, _)| k.as_str() != "alertname")
        .map(|(_, v)| v.as_str())
        .collect();
    if others.is_empty() {
        format!("[{word}:{count}] {name}")
    } else {
        format!("[{word}:{count}] {name} ({})", others.join(" "))
    }
}

/// `k=v, k=v`, escaped.
fn labels(l: &Labels) -> String {
    l.iter()
        .map(|(k, v)| format!("{}={}", inline(k), inline(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `hidden`: the labels shown elsewhere (the title's, and those all the alerts share).
fn item(a: &Alert, hidden: &Labels, zone: &Zone, extras: &Extras) -> String {
    let mut head = String::from("- ");
    if let Some(sev) = a.labels.get("severity") {
        head.push_str(&format!("**{}** ", inline(sev)));
    }
    let name = a
        .labels
        .get("alertname")
        .map(String::as_str)
        .unwrap_or("alert");
    head.push_str(&inline(name));
    if let Some(summary) = a.annotations.get("summary") {
        head.push_str(&format!(": {}", inline(summary)));
    }
    let mut lines = vec![head];
    if let Some(description) = a.annotations.get("description") {
        lines.push(from_text(description));
    }
    lines.extend(extras.values.clone());
    let own: Labels = a
        .labels
        .iter()
        .filter(|(k, v)| {
            k.as_str() != "alertname" && k.as_str() != "severity" && hidden.get(*k) != Some(v)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !own.is_empty() {
        lines.push(format!("labels: {}", labels(&own)));
    }
    let since = zone.format(a.starts_at);
    lines.push(match (a.status, a.ends_at) {
        (Status::Resolved, Some(end)) => format!(
            "started {since}, resolved after {}",
            crate::clock::duration(end - a.starts_at)
        ),
        _ => format!("started {since}"),
    });
    let links: Vec<String> = extras
        .links
        .iter()
        .filter_map(|(name, url)| link(url).map(|url| format!("[{name}]({url})")))
        .collect();
    if !links.is_empty() {
        lines.push(links.join(" · "));
    }
    if let Some(url) = extras.image.as_deref().and_then(link) {
        lines.push(format!("![image]({url})"));
    }
    // DingTalk's hard line break, indented so the lines stay in the list item.
    format!("{}\n\n", lines.join("  \n  "))
}

/// A link target that cannot end the markdown link early: http(s) only, with the characters
/// markdown reads percent-encoded.
fn link(url: &str) -> Option<String> {
    let url = url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return None;
    }
    Some(
        url.chars()
            .map(|c| match c {
                ' ' => "%20".to_owned(),
                '(' => "%28".to_owned(),
                ')' => "%29".to_owned(),
                '<' => "%3C".to_owned(),
                '>' => "%3E".to_owned(),
                c if c.is_control() => String::new(),
                c => c.to_string(),
            })
            .collect(),
    )
}
