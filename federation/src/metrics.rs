//! Per-flow metrics through the `metrics` facade (the binary installs the Prometheus recorder).
//!
//! Handles are resolved once per flow so the per-message cost is an atomic add. Every series
//! carries `link`, `upstream` and `exchange`; URIs appear only masked.

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};
use std::sync::Once;

/// The metric handles of one flow.
#[derive(Debug, Clone)]
pub(crate) struct FlowMetrics {
    labels: [(&'static str, String); 3],
    pub forwarded: Counter,
    pub dropped_max_hops: Counter,
    pub dropped_cycle: Counter,
    pub redelivered: Counter,
    pub nacked: Counter,
    pub returned: Counter,
    pub reconnects: Counter,
    backoff_nack: Counter,
    backoff_returned: Counter,
    pub confirm_latency: Histogram,
    /// Routed destinations: messages with no key.
    pub unkeyed: Counter,
    pub queue_depth: Gauge,
    pub running: Gauge,
}

impl FlowMetrics {
    pub fn new(link: &str, upstream: &str, exchange: &str) -> FlowMetrics {
        describe();
        let labels = [
            ("link", link.to_string()),
            ("upstream", upstream.to_string()),
            ("exchange", exchange.to_string()),
        ];
        let dropped = |reason: &'static str| {
            let mut l = labels.to_vec();
            l.push(("reason", reason.to_string()));
            counter!("setgate_federation_dropped_total", &l)
        };
        let backoff = |reason: &'static str| {
            let mut l = labels.to_vec();
            l.push(("reason", reason.to_string()));
            counter!("setgate_federation_backoffs_total", &l)
        };
        FlowMetrics {
            backoff_nack: backoff("nack"),
            backoff_returned: backoff("returned"),
            forwarded: counter!("setgate_federation_forwarded_total", &labels),
            dropped_max_hops: dropped("max_hops"),
            dropped_cycle: dropped("cycle"),
            redelivered: counter!("setgate_federation_redelivered_total", &labels),
            nacked: counter!("setgate_federation_nacked_total", &labels),
            returned: counter!("setgate_federation_returned_total", &labels),
            reconnects: counter!("setgate_federation_reconnects_total", &labels),
            confirm_latency: histogram!("setgate_federation_confirm_latency_seconds", &labels),
            unkeyed: counter!("setgate_flow_unkeyed_total", "flow" => link.to_string()),
            queue_depth: gauge!("setgate_federation_upstream_queue_messages", &labels),
            running: gauge!("setgate_federation_flow_running", &labels),
            labels,
        }
    }

    /// `setgate_federation_backoffs_total{reason}`: `nack` or `returned`.
    pub fn backoff(&self, reason: &str) -> &Counter {
        match reason {
            "nack" => &self.backoff_nack,
            _ => &self.backoff_returned,
        }
    }

    /// `setgate_flow_held_total{flow, set}`: messages parked because their SET was down.
    pub fn held(&self, set: &str) -> Counter {
        counter!("setgate_flow_held_total", "flow" => self.labels[0].1.clone(), "set" => set.to_string())
    }

    /// `setgate_federation_connected_uri{side, uri}`: 1 for the URI in use, 0 after it was left.
    pub fn connected_uri(&self, side: &'static str, masked_uri: &str, on: bool) {
        let mut l = self.labels.to_vec();
        l.push(("side", side.to_string()));
        l.push(("uri", masked_uri.to_string()));
        gauge!("setgate_federation_connected_uri", &l).set(if on { 1.0 } else { 0.0 });
    }
}

fn describe() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        describe_counter!(
            "setgate_federation_forwarded_total",
            "Messages republished downstream (and confirmed, with ack_mode on-confirm)."
        );
        describe_counter!(
            "setgate_federation_dropped_total",
            "Messages not forwarded by loop prevention (reason: max_hops or cycle)."
        );
        describe_counter!(
            "setgate_federation_redelivered_total",
            "Upstream deliveries flagged redelivered."
        );
        describe_counter!(
            "setgate_federation_nacked_total",
            "Publishes the downstream nacked; requeued upstream."
        );
        describe_counter!(
            "setgate_federation_returned_total",
            "Mandatory publishes the downstream returned as unroutable; requeued upstream."
        );
        describe_counter!(
            "setgate_federation_backoffs_total",
            "Pauses in consuming after the downstream refused publishes (reason: nack or returned)."
        );
        describe_counter!(
            "setgate_federation_reconnects_total",
            "Connection attempts after a failure or a lost connection."
        );
        describe_histogram!(
            "setgate_federation_confirm_latency_seconds",
            Unit::Seconds,
            "Time from publish to downstream confirm."
        );
        describe_gauge!(
            "setgate_federation_upstream_queue_messages",
            "Ready messages in the upstream queue at the last look."
        );
        describe_counter!(
            "setgate_flow_unkeyed_total",
            "Routed destinations: messages without a key, sent to the default cluster."
        );
        describe_counter!(
            "setgate_flow_held_total",
            "Routed destinations: messages parked in a hold queue because their SET was down."
        );
        describe_gauge!(
            "setgate_federation_flow_running",
            "1 while the flow forwards, else 0."
        );
        describe_gauge!(
            "setgate_federation_connected_uri",
            "1 for the URI a flow is connected to (masked)."
        );
    });
}
