//! What a template is test-rendered against when it is stored: one Alertmanager notification
//! (a firing and a resolved alert) and one `send_msg` message with the seed relay's extra
//! parameters. A template must render against one of them.

use serde_json::{json, Value};

pub fn notification() -> Value {
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"HighCPU\"}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "ding-channel",
        "groupLabels": {"alertname": "HighCPU"},
        "commonLabels": {"alertname": "HighCPU", "env": "prod"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example.com:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "HighCPU", "env": "prod", "instance": "web-1", "severity": "critical"},
                "annotations": {"summary": "CPU above 90%", "description": "web-1 has been busy for 10 minutes"},
                "startsAt": "2026-12-01T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.example.com:9090/graph?g0.expr=cpu",
                "fingerprint": "a1b2c3d4e5f60718"
            },
            {
                "status": "resolved",
                "labels": {"alertname": "HighCPU", "env": "prod", "instance": "web-2", "severity": "warning"},
                "annotations": {"summary": "CPU above 90%"},
                "startsAt": "2026-12-01T09:50:00Z",
                "endsAt": "2026-12-01T09:55:03Z",
                "generatorURL": "http://prometheus.example.com:9090/graph?g0.expr=cpu",
                "fingerprint": "0718a1b2c3d4e5f6"
            }
        ]
    })
}

pub fn message() -> Value {
    json!({
        "title": "Disk usage above 90%",
        "content": "/data on db-1 is 93% full",
        "msg_type": "dingbot",
        "receivers": ["ops-robot"],
        "sender": "bk_monitor",
        "url": "https://monitor.example.com/event/42",
        "level": "error",
        "owner": "alice",
        "time": "2026-12-01T10:00:00Z"
    })
}
