//! What the summarizer counts, in its own registry served on its /metrics: whether this replica
//! leads, and its traffic with the API server.

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cluster::traffic::Traffic;
use crate::serve;

pub struct Metrics {
    registry: Arc<Registry>,
    pub traffic: Arc<Traffic>,
    /// 1 while this replica holds the Lease and summarizes.
    pub leading: Gauge,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("tracejob_summarizer");
        let traffic = Traffic::register(&mut registry, &[], "none counted");
        let leading = Gauge::default();
        registry.register(
            "leading",
            "1 while this replica holds the Lease and summarizes, else 0",
            leading.clone(),
        );
        Arc::new(Metrics {
            registry: Arc::new(registry),
            traffic,
            leading,
        })
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    pub fn encode(&self) -> String {
        serve::encode(&self.registry)
    }
}
