//! The traces' own metrics (spec.metrics), on a listener of their own
//! (`--trace-metrics-listen`): trace data, however large, never slows /healthz or the agent's
//! /metrics. Each job's actor puts its newest exposition here; a scrape renders them all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::output::prom::{self, Exposed, Trace};

/// How long an ended trace's last values stay when no one scrapes them.
const KEEP_UNSCRAPED: Duration = Duration::from_secs(600);
/// Scrapes an ended trace's last values are served in before they go.
const SCRAPES_AFTER_END: u32 = 2;

/// The newest exposition of every trace with spec.metrics, by the TraceJob's UID.
#[derive(Default)]
pub struct Registry {
    traces: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    trace: Trace,
    exposed: Exposed,
    ended: Option<Instant>,
    served_after_end: u32,
}

impl Registry {
    /// The trace's newest values.
    pub fn set(&self, uid: &str, trace: Trace, exposed: Exposed) {
        if let Ok(mut t) = self.traces.lock() {
            t.insert(
                uid.to_string(),
                Entry {
                    trace,
                    exposed,
                    ended: None,
                    served_after_end: 0,
                },
            );
        }
    }

    /// The trace has ended: its last values are served in two more scrapes, then go.
    pub fn end(&self, uid: &str) {
        if let Ok(mut t) = self.traces.lock() {
            if let Some(e) = t.get_mut(uid) {
                e.ended.get_or_insert_with(Instant::now);
            }
        }
    }

    /// The exposition of every trace; counts a scrape of those ended.
    pub fn scrape(&self) -> String {
        let Ok(mut t) = self.traces.lock() else {
            return String::new();
        };
        t.retain(|_, e| {
            e.ended.is_none_or(|at| {
                e.served_after_end < SCRAPES_AFTER_END && at.elapsed() < KEEP_UNSCRAPED
            })
        });
        let mut entries: Vec<&mut Entry> = t.values_mut().collect();
        entries.sort_by(|a, b| {
            (&a.trace.namespace, &a.trace.name).cmp(&(&b.trace.namespace, &b.trace.name))
        });
        for e in entries.iter_mut() {
            if e.ended.is_some() {
                e.served_after_end += 1;
            }
        }
        let all: Vec<(&Trace, &Exposed)> = entries.iter().map(|e| (&e.trace, &e.exposed)).collect();
        prom::render(&all)
    }
}

/// Serves the traces' metrics in the background (a failure is logged: the agent goes on).
pub fn spawn(addr: SocketAddr, registry: Arc<Registry>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(registry);
    // Served like every other endpoint (`serve`: connection cap, timeouts), on a port of its own
    // so that trace data never slows the agent's health and its own metrics.
    crate::serve::spawn(addr, app, crate::serve::Limits::default());
}

async fn metrics(State(r): State<Arc<Registry>>) -> impl IntoResponse {
    // Rendering 100,000 series takes a while: off the async threads.
    let text = tokio::task::spawn_blocking(move || r.scrape())
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_trace_is_served_twice_more_then_goes() {
        let r = Registry::default();
        let trace = Trace {
            namespace: "ns".into(),
            name: "t".into(),
            node: "n".into(),
        };
        r.set("uid", trace, Exposed::default());
        for _ in 0..3 {
            assert!(r.scrape().contains("tracejob=\"t\""));
        }
        r.end("uid");
        assert!(r.scrape().contains("tracejob=\"t\""));
        assert!(r.scrape().contains("tracejob=\"t\""));
        assert_eq!(r.scrape(), "");
    }
}
