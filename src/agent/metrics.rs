//! What the agent counts and times, in its own registry served as Prometheus text on /metrics:
//! its traces, and its traffic with the API server (`cluster::traffic`).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::cluster::traffic::Traffic;

/// The agent's watches, whose event counts exist from the start.
const WATCHES: &[&str] = &["node", "unassigned", "nodes", "namespaces", "pods"];
const WATCHES_DESCRIBED: &str = "TraceJobs of this node (node) or of none (unassigned); its own Node (nodes), Namespaces (namespaces), pods on this node (pods)";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Version {
    pub version: String,
}

pub struct Metrics {
    registry: Arc<Registry>,
    /// Its traffic with the API server (its client and watches count it).
    pub traffic: Arc<Traffic>,
    pub running: Gauge,
    pub started: Counter,
    pub completed: Counter,
    pub failed: Family<Reason, Counter>,
    /// TraceJob first seen until bpftrace has attached its probes.
    pub start_latency: Histogram,
    /// Stop seen until the output ConfigMap is written.
    pub collect_latency: Histogram,
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
            live_bytes: Counter::default(),
            live_skipped: Counter::default(),
            record_save_failures: Counter::default(),
            collecting: Gauge::default(),
            collections: Counter::default(),
            bpftrace: Family::default(),
            fanout_refused: Family::default(),
            registry: Arc::new(Registry::default()),
            traffic: Traffic::register(&mut registry, WATCHES, WATCHES_DESCRIBED),
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
        Arc::new(Metrics {
            registry: Arc::new(registry),
            ..m
        })
    }

    pub fn failed(&self, reason: &str) {
        self.failed
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn observe(h: &Histogram, d: Duration) {
        h.observe(d.as_secs_f64());
    }

    /// The registry, for `/metrics` (`serve::router`).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    pub fn encode(&self) -> String {
        crate::serve::encode(&self.registry)
    }
}
