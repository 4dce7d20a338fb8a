//! What a component counts of its traffic with the API server: requests (by method, watches
//! apart, and resource), bytes received (watch streams apart), failures, and watch events by
//! watch. Each component registers one `Traffic` in its own metrics registry and builds its
//! client from it (`client::connect`).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

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
    pub watch: String,
}

pub struct Traffic {
    pub requests: Family<Request, Counter>,
    /// Bytes received from the API server: watch streams, and everything else.
    pub received: Family<Received, Counter>,
    pub errors: Counter,
    /// Watch events that reached the component, by watch (the API server filters them).
    pub watch_events: Family<Watch, Counter>,
}

impl Traffic {
    /// Registers the traffic's metrics in `registry` (under its prefix: `PREFIX_api_requests`,
    /// ...). `watches` names the watches whose event counts exist from the start, so a count
    /// reads 0 before the first event; `described` says what they are.
    pub fn register(registry: &mut Registry, watches: &[&str], described: &str) -> Arc<Traffic> {
        let t = Traffic {
            requests: Family::default(),
            received: Family::default(),
            errors: Counter::default(),
            watch_events: Family::default(),
        };
        registry.register(
            "api_requests",
            "Requests to the Kubernetes API, by HTTP method (WATCH apart) and resource",
            t.requests.clone(),
        );
        registry.register(
            "api_received_bytes",
            "Bytes of responses received from the Kubernetes API, watch streams (kind=watch) apart",
            t.received.clone(),
        );
        registry.register(
            "api_errors",
            "Kubernetes API requests that failed (unreachable, 429 or 5xx)",
            t.errors.clone(),
        );
        for watch in watches {
            let _ = t.watch_events.get_or_create(&Watch {
                watch: (*watch).into(),
            });
        }
        registry.register(
            "watch_events",
            format!("Watch events received, by watch: {described}"),
            t.watch_events.clone(),
        );
        Arc::new(t)
    }

    pub fn request(&self, method: &str, resource: &str) {
        let labels = Request {
            method: method.to_string(),
            resource: resource.to_string(),
        };
        self.requests.get_or_create(&labels).inc();
    }

    /// The counter of bytes received of one kind (watch or other).
    pub fn received(&self, kind: &str) -> Counter {
        self.received
            .get_or_create(&Received {
                kind: kind.to_string(),
            })
            .clone()
    }

    /// One event of the watch `watch`.
    pub fn watch_event(&self, watch: &str) {
        self.watch_events
            .get_or_create(&Watch {
                watch: watch.to_string(),
            })
            .inc();
    }
}
