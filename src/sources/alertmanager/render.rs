//! The built-in markdown layout of a notification: a title Alertmanager users know
//! (`[FIRING:3] HighCPU (prod)`), the firing alerts, then the resolved ones. Every label and
//! annotation value is escaped: they are free text written by whoever wrote the rule.

use super::payload::{Alert, Labels, Notification, Status};
use crate::clock::Zone;
use crate::senders::markdown::{from_text, inline};

/// The title and the markdown content.
pub fn render(n: &Notification, zone: &Zone) -> (String, String) {
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
    let title = title(n, firing.len(), resolved.len());
    let mut out = format!("### {}\n\n", inline(&title));
    for (name, alerts) in [("Firing", &firing), ("Resolved", &resolved)] {
        if alerts.is_empty() {
            continue;
        }
        out.push_str(&format!("**{name}** ({})\n\n", alerts.len()));
        for a in alerts.iter() {
            out.push_str(&item(a, &n.common_labels, zone));
        }
    }
    if n.truncated_alerts > 0 {
        out.push_str(&format!(
            "and {} more (truncated by Alertmanager's max_alerts)\n\n",
            n.truncated_alerts
        ));
    }
    if let Some(url) = link(&n.external_url) {
        out.push_str(&format!("[Alertmanager]({url})\n"));
    }
    (title, out.trim_end().to_owned())
}

/// Alertmanager's own default: the count of the notification's status, the alert name, and
/// the other labels the alerts were grouped by.
fn title(n: &Notification, firing: usize, resolved: usize) -> String {
    let (word, count) = match n.status {
        Status::Firing => ("FIRING", firing),
        Status::Resolved => ("RESOLVED", resolved),
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

fn item(a: &Alert, common: &Labels, zone: &Zone) -> String {
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
    let own: Vec<String> = a
        .labels
        .iter()
        .filter(|(k, v)| {
            k.as_str() != "alertname" && k.as_str() != "severity" && common.get(*k) != Some(v)
        })
        .map(|(k, v)| format!("{}={}", inline(k), inline(v)))
        .collect();
    if !own.is_empty() {
        lines.push(format!("labels: {}", own.join(", ")));
    }
    let since = zone.format(a.starts_at);
    lines.push(match (a.status, a.ends_at) {
        (Status::Resolved, Some(end)) => format!(
            "started {since}, resolved after {}",
            crate::clock::duration(end - a.starts_at)
        ),
        _ => format!("started {since}"),
    });
    if let Some(url) = link(&a.generator_url) {
        lines.push(format!("[source]({url})"));
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
