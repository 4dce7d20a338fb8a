//! What the agent counts and times, in one registry served as Prometheus text on /metrics.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Request {
    pub method: String,
    /// tracejobs, configmaps, events or other.
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Received {
    /// watch or other.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Watch {
    /// TraceJobs: node (spec.nodeName is this node) or unassigned (no spec.nodeName); the
    /// stores (`cluster::stores`): nodes (its own), namespaces, pods (on its node).
    pub watch: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Version {
    pub version: String,
}

pub struct Metrics {
    registry: Registry,
    pub running: Gauge,
    pub started: Counter,
    pub completed: Counter,
    pub failed: Family<Reason, Counter>,
    /// TraceJob first seen until bpftrace has attached its probes.
    pub start_latency: Histogram,
    /// Stop seen until the output ConfigMap is written.
    pub collect_latency: Histogram,
    pub api_requests: Family<Request, Counter>,
    /// Bytes received from the API server: watch streams, and everything else.
    pub api_received: Family<Received, Counter>,
    pub api_errors: Counter,
    /// Watch events that reached the agent, by watch (the API server filters them).
    pub watch_events: Family<Watch, Counter>,
    /// Bytes of live output written to the API server.
    pub live_bytes: Counter,
    /// Live copies skipped because the node's budget was spent.
    pub live_skipped: Counter,
    /// Saves of a run's record that failed (a run ends as RecordNotSaved at its first).
    pub record_save_failures: Counter,
    /// Runs being collected (read, parsed, compressed) now, and collected in all.
    pub collecting: Gauge,
    pub collections: Counter,
    pub bpftrace: Family<Version, Gauge>,
    /// TraceJobs on several nodes whose selector matches this node but which this node may not
    /// run (its namespace's scope), by reason: nothing is written for them.
    pub fanout_refused: Family<Reason, Counter>,
    /// The summarizer: fan-out parts and node outputs it did not count or merge, by reason.
    pub summarizer_rejected: Family<Reason, Counter>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("tracejob");
        let m = Metrics {
            running: Gauge::default(),
            started: Counter::default(),
            completed: Counter::default(),
            failed: Family::default(),
            start_latency: Histogram::new(exponential_buckets(0.025, 2.0, 12)),
            collect_latency: Histogram::new(exponential_buckets(0.025, 2.0, 12)),
            api_requests: Family::default(),
            api_received: Family::default(),
            api_errors: Counter::default(),
            watch_events: Family::default(),
            live_bytes: Counter::default(),
            live_skipped: Counter::default(),
            record_save_failures: Counter::default(),
            collecting: Gauge::default(),
            collections: Counter::default(),
            bpftrace: Family::default(),
            fanout_refused: Family::default(),
            summarizer_rejected: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "traces_running",
            "Traces whose bpftrace is running",
            m.running.clone(),
        );
        registry.register(
            "traces_started",
            "Traces whose probes attached",
            m.started.clone(),
        );
        registry.register(
            "traces_completed",
            "Traces that completed with their output stored",
            m.completed.clone(),
        );
        registry.register(
            "fanout_refused",
            "TraceJobs on several nodes that select this node but may not run here, by reason",
            m.fanout_refused.clone(),
        );
        registry.register(
            "summarizer_rejected",
            "Parts of TraceJobs on several nodes (InvalidParts) and node outputs (InvalidOutputs) the summarizer did not count or merge",
            m.summarizer_rejected.clone(),
        );
        registry.register(
            "traces_failed",
            "Traces that failed, by reason",
            m.failed.clone(),
        );
        registry.register(
            "start_latency_seconds",
            "From a TraceJob being seen to its probes attached",
            m.start_latency.clone(),
        );
        registry.register(
            "collect_latency_seconds",
            "From a stop being seen to the output ConfigMap written",
            m.collect_latency.clone(),
        );
        registry.register(
            "api_requests",
            "Requests to the Kubernetes API, by HTTP method (WATCH apart) and resource",
            m.api_requests.clone(),
        );
        registry.register(
            "api_received_bytes",
            "Bytes of responses received from the Kubernetes API, watch streams (kind=watch) apart",
            m.api_received.clone(),
        );
        registry.register(
            "api_errors",
            "Kubernetes API writes that failed and were retried or given up",
            m.api_errors.clone(),
        );
        // Both series exist from the start, so a count can be read before the first event.
        for watch in ["node", "unassigned", "nodes", "namespaces", "pods"] {
            let _ = m.watch_events.get_or_create(&Watch {
                watch: watch.into(),
            });
        }
        registry.register(
            "watch_events",
            "Watch events received, by watch: TraceJobs of this node (node) or of none (unassigned); its own Node (nodes), Namespaces (namespaces), pods on this node (pods)",
            m.watch_events.clone(),
        );
        registry.register(
            "live_output_bytes",
            "Bytes of live output written to ConfigMaps",
            m.live_bytes.clone(),
        );
        registry.register(
            "live_output_skipped",
            "Live output copies put off because the node's budget was spent",
            m.live_skipped.clone(),
        );
        registry.register(
            "record_save_failures",
            "Saves of a run's record in the state directory that failed (a run ends at its first)",
            m.record_save_failures.clone(),
        );
        registry.register(
            "collections",
            "Runs whose output was read, parsed and compressed",
            m.collections.clone(),
        );
        registry.register(
            "collections_running",
            "Runs whose output is being read, parsed and compressed now",
            m.collecting.clone(),
        );
        registry.register(
            "bpftrace_info",
            "The bpftrace this agent runs (version label)",
            m.bpftrace.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    pub fn failed(&self, reason: &str) {
        self.failed
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn request(&self, method: &str, resource: &str) {
        let labels = Request {
            method: method.to_string(),
            resource: resource.to_string(),
        };
        self.api_requests.get_or_create(&labels).inc();
    }

    /// The counter of bytes received of one kind (watch or other).
    pub fn received(&self, kind: &str) -> Counter {
        self.api_received
            .get_or_create(&Received {
                kind: kind.to_string(),
            })
            .clone()
    }

    pub fn observe(h: &Histogram, d: Duration) {
        h.observe(d.as_secs_f64());
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
