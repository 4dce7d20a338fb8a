//! What the summarizer counts, in its own registry served on its /metrics: whether this replica
//! leads, the parts and outputs it did not count or merge, and its traffic with the API server.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cluster::traffic::Traffic;
use crate::serve;

pub struct Metrics {
    registry: Arc<Registry>,
    pub traffic: Arc<Traffic>,
    /// 1 while this replica holds the Lease and summarizes.
    pub leading: Gauge,
    /// Parts and node outputs not counted or merged, by reason.
    rejected: Family<Reason, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
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
        let rejected = Family::<Reason, Counter>::default();
        registry.register(
            "rejected",
            "Parts of fan-outs and node outputs not counted or merged, by reason: InvalidParts (not named, labelled or owned as their node's agent writes them), InvalidOutputs (likewise, or over a limit)",
            rejected.clone(),
        );
        Arc::new(Metrics {
            registry: Arc::new(registry),
            traffic,
            leading,
            rejected,
        })
    }

    /// `n` parts or outputs not counted or merged, for `reason`.
    pub fn rejected(&self, reason: &str, n: u64) {
        self.rejected
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc_by(n);
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    pub fn encode(&self) -> String {
        serve::encode(&self.registry)
    }
}
