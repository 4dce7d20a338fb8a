//! What the trigger receiver counts, served as Prometheus text on its /metrics.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::cluster::traffic::Traffic;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Result {
    /// accepted, unauthorized, invalid or overloaded.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

pub struct Metrics {
    /// Its traffic with the API server (its client counts it).
    pub traffic: Arc<Traffic>,
    registry: Arc<Registry>,
    /// Webhook calls, by what became of them.
    pub notifications: Family<Result, Counter>,
    pub created: Counter,
    pub suppressed: Family<Reason, Counter>,
    /// TraceJobs stopped early because their alert resolved.
    pub stopped: Counter,
    /// TraceJobs the API server refused.
    pub errors: Counter,
    /// From the webhook call received to the TraceJob created.
    pub create_latency: Histogram,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("tracejob_trigger");
        let m = Metrics {
            traffic: Traffic::register(&mut registry, &[], "none counted"),
            notifications: Family::default(),
            created: Counter::default(),
            suppressed: Family::default(),
            stopped: Counter::default(),
            errors: Counter::default(),
            create_latency: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            registry: Arc::new(Registry::default()),
        };
        // Every series exists from the start, so a count reads 0 before its first event.
        for r in ["accepted", "unauthorized", "invalid", "overloaded"] {
            let _ = m.notifications.get_or_create(&Result { result: r.into() });
        }
        for r in super::decide::Suppress::ALL.map(|s| s.as_str()) {
            let _ = m.suppressed.get_or_create(&Reason { reason: r.into() });
        }
        registry.register(
            "notifications",
            "Webhook calls received, by result: accepted, unauthorized (no or a wrong bearer token), invalid (not Alertmanager's JSON), overloaded (the queue was full)",
            m.notifications.clone(),
        );
        registry.register(
            "traces_created",
            "TraceJobs created for matching alerts",
            m.created.clone(),
        );
        registry.register(
            "traces_suppressed",
            "Matching alerts that started no trace, by reason",
            m.suppressed.clone(),
        );
        registry.register(
            "traces_stopped",
            "TraceJobs stopped early because their alert resolved",
            m.stopped.clone(),
        );
        registry.register(
            "errors",
            "TraceJob creations or stops the API server refused",
            m.errors.clone(),
        );
        registry.register(
            "create_latency_seconds",
            "From a webhook call received to its TraceJob created",
            m.create_latency.clone(),
        );
        Arc::new(Metrics {
            registry: Arc::new(registry),
            ..m
        })
    }

    pub fn notification(&self, result: &str) {
        self.notifications
            .get_or_create(&Result {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn suppressed(&self, reason: &str) {
        self.suppressed
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    pub fn encode(&self) -> String {
        crate::serve::encode(&self.registry)
    }
}
