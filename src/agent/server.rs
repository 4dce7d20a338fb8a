//! The agent's HTTP endpoint: /healthz (the process serves), /readyz (the watch has listed
//! TraceJobs at least once) and /metrics (Prometheus text), served by the shared layer
//! (`crate::serve`). The summarizer serves the same.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::metrics::Metrics;
use crate::serve;

#[derive(Clone)]
pub struct Health {
    pub ready: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
}

/// Serves the endpoint in the background (its failure is logged: the process goes on).
pub fn spawn(addr: SocketAddr, health: Health) {
    serve::spawn(addr, router(health), serve::Limits::default());
}

pub fn router(health: Health) -> axum::Router {
    let metrics = health.metrics.clone();
    serve::probes(serve::Probes {
        ready: health.ready,
        not_ready: "TraceJobs not listed yet\n",
        metrics: Arc::new(move || metrics.encode()),
    })
}
