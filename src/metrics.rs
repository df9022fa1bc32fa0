//! Prometheus counters (`GET /metrics`): deliveries by kind and status, DingTalk calls by API
//! and outcome, calls to the upstream CMSI by component and outcome, DingTalk's anti-abuse
//! pauses; the queue depth, the holds on the egress to DingTalk and the calls per API and month
//! (every process's, from the database) are read at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const DEFERRED: &str = "deferred";

#[derive(Debug, Default)]
pub struct Metrics {
    deliveries: Mutex<BTreeMap<(String, &'static str), u64>>,
    dingtalk: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    upstream: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    egress_pauses: AtomicU64,
}

/// The egress to DingTalk at scrape time.
#[derive(Debug, Default)]
pub struct EgressGauges {
    /// Seconds left of DingTalk's anti-abuse pause (0: none).
    pub paused_s: f64,
    pub quota_exhausted: bool,
    /// Calls DingTalk answered, by month (as DingTalk counts it) and API, of every process.
    pub calls: Vec<(String, String, i64)>,
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

    /// DingTalk's gateway paused the egress (a pause started, not one extended).
    pub fn egress_paused(&self) {
        self.egress_pauses.fetch_add(1, Ordering::Relaxed);
    }

    /// The egress's counter and gauges, after [`Self::render`].
    pub fn render_egress(&self, g: &EgressGauges) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP ding_channel_dingtalk_egress_pauses_total Pauses of every call to DingTalk its gateway asked for (anti-abuse, flow control), seen by this process.\n# TYPE ding_channel_dingtalk_egress_pauses_total counter\nding_channel_dingtalk_egress_pauses_total {}",
            self.egress_pauses.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ding_channel_dingtalk_egress_paused_seconds Seconds left of the pause of every call to DingTalk in effect (0: none).\n# TYPE ding_channel_dingtalk_egress_paused_seconds gauge\nding_channel_dingtalk_egress_paused_seconds {}",
            g.paused_s
        );
        let _ = writeln!(
            out,
            "# HELP ding_channel_dingtalk_quota_exhausted 1 while the organisation's monthly DingTalk API quota is used up (the app's calls wait).\n# TYPE ding_channel_dingtalk_quota_exhausted gauge\nding_channel_dingtalk_quota_exhausted {}",
            u8::from(g.quota_exhausted)
        );
        out.push_str("# HELP ding_channel_dingtalk_calls_total Calls DingTalk answered, by API and month (Asia/Shanghai), of every process on the database: every instance reports the same total.\n# TYPE ding_channel_dingtalk_calls_total counter\n");
        for (month, api, n) in &g.calls {
            let _ = writeln!(
                out,
                "ding_channel_dingtalk_calls_total{{api=\"{api}\",month=\"{month}\"}} {n}"
            );
        }
        out
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
