//! Prometheus counters (`GET /metrics`): deliveries by kind and status, DingTalk calls by API
//! and outcome, calls to the upstream CMSI by component and outcome; the queue depth is read
//! from the database at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

const DEFERRED: &str = "deferred";

#[derive(Debug, Default)]
pub struct Metrics {
    deliveries: Mutex<BTreeMap<(String, &'static str), u64>>,
    dingtalk: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    upstream: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    /// One recorded outcome (`sent`, `retry`, `failed`, `deferred`).
    pub fn delivery(&self, kind: &str, outcome: &'static str) {
        self.count(kind, outcome, 1);
    }

    /// Deliveries queued at acceptance for a robot that can't send yet.
    pub fn deferred(&self, kind: &str, n: u64) {
        if n > 0 {
            self.count(kind, DEFERRED, n);
        }
    }

    fn count(&self, kind: &str, status: &'static str, n: u64) {
        *self
            .deliveries
            .lock()
            .expect("metrics lock")
            .entry((kind.to_owned(), status))
            .or_default() += n;
    }

    pub fn dingtalk(&self, api: &'static str, outcome: &'static str) {
        *self
            .dingtalk
            .lock()
            .expect("metrics lock")
            .entry((api, outcome))
            .or_default() += 1;
    }

    /// One call to the upstream CMSI; `component` comes from a fixed list, so the series stay few.
    pub fn upstream(&self, component: &'static str, outcome: &'static str) {
        *self
            .upstream
            .lock()
            .expect("metrics lock")
            .entry((component, outcome))
            .or_default() += 1;
    }

    pub fn render(&self, queue_depth: Option<i64>) -> String {
        let mut out = String::new();
        out.push_str("# HELP ding_channel_deliveries_total Delivery attempts by receiver kind and outcome.\n# TYPE ding_channel_deliveries_total counter\n");
        for ((kind, status), n) in self.deliveries.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "ding_channel_deliveries_total{{kind=\"{kind}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP ding_channel_dingtalk_requests_total Requests to DingTalk by API and outcome.\n# TYPE ding_channel_dingtalk_requests_total counter\n");
        for ((api, outcome), n) in self.dingtalk.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "ding_channel_dingtalk_requests_total{{api=\"{api}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        out.push_str("# HELP ding_channel_upstream_requests_total Requests passed to the upstream CMSI by component and outcome.\n# TYPE ding_channel_upstream_requests_total counter\n");
        for ((component, outcome), n) in self.upstream.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "ding_channel_upstream_requests_total{{component=\"{component}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        if let Some(depth) = queue_depth {
            out.push_str("# HELP ding_channel_queue_depth Deliveries waiting to be sent.\n# TYPE ding_channel_queue_depth gauge\n");
            let _ = writeln!(out, "ding_channel_queue_depth {depth}");
        }
        out
    }
}
