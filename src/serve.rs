//! What every component serves and how it logs, in one place: `/healthz` (the process serves),
//! `/readyz` (its watches have listed what it needs), `/metrics` (its own registry, as
//! Prometheus text), and the log flags. The agent, the summarizer and the trigger receiver each
//! add their own routes, if any, to `router`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use clap::ValueEnum;
use prometheus_client::registry::Registry;

/// The log flags, the same for every component (`#[command(flatten)]`).
#[derive(clap::Args, Debug, Clone)]
pub struct Logs {
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log level filter (RUST_LOG syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Logs {
    /// Starts logging (to stdout) as the flags say; ANSI colours only on a terminal.
    pub fn init(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&self.log_level));
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        let logs = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi);
        match self.log_format {
            LogFormat::Text => logs.init(),
            LogFormat::Json => logs.json().init(),
        }
    }
}

/// A component's health: whether it is ready (and what it waits for until then), and its
/// metrics registry.
#[derive(Clone)]
pub struct Health {
    pub ready: Arc<AtomicBool>,
    /// What `/readyz` says until ready, e.g. "TraceJobs not listed yet".
    pub waiting_for: &'static str,
    pub registry: Arc<Registry>,
}

impl Health {
    pub fn new(registry: Arc<Registry>, waiting_for: &'static str) -> Health {
        Health {
            ready: Arc::new(AtomicBool::new(false)),
            waiting_for,
            registry,
        }
    }
}

/// `/healthz`, `/readyz` and `/metrics`; a component merges its own routes into it.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves `app` in the background; its failure is logged and the process goes on.
pub fn spawn(listener: tokio::net::TcpListener, app: Router) {
    tokio::spawn(async move {
        let addr = listener.local_addr().ok();
        tracing::info!(addr = ?addr, "serving /healthz, /readyz and /metrics");
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, addr = ?addr, "the HTTP endpoint stopped");
        }
    });
}

/// Binds `addr` and serves `app` there in the background (a bind that fails is logged).
pub fn spawn_at(addr: SocketAddr, app: Router) {
    tokio::spawn(async move {
        match bind(addr).await {
            Ok(listener) => spawn(listener, app),
            Err(e) => {
                tracing::warn!(error = %e, listen = %addr, "cannot serve /healthz, /readyz and /metrics")
            }
        }
    });
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if h.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", h.waiting_for),
        )
    }
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], encode(&h.registry))
}

/// A registry as Prometheus text.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Encoding into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tower::ServiceExt;

    #[tokio::test]
    async fn health_readiness_and_the_components_own_metrics() {
        let mut registry = Registry::with_prefix("tracejob_test");
        let c = Counter::<u64>::default();
        registry.register("things", "Things", c.clone());
        c.inc();
        let health = Health::new(Arc::new(registry), "things not listed yet");
        let app = router(health.clone());
        let get = |path: &str| {
            axum::http::Request::get(path)
                .body(axum::body::Body::empty())
                .expect("request")
        };
        let text = |r: axum::response::Response| async move {
            let status = r.status().as_u16();
            let body = axum::body::to_bytes(r.into_body(), 1 << 20)
                .await
                .expect("body");
            (status, String::from_utf8_lossy(&body).into_owned())
        };
        let r = app.clone().oneshot(get("/healthz")).await.expect("call");
        assert_eq!(text(r).await, (200, "ok\n".into()));
        let r = app.clone().oneshot(get("/readyz")).await.expect("call");
        assert_eq!(text(r).await, (503, "things not listed yet\n".into()));
        health.ready.store(true, Ordering::Relaxed);
        let r = app.clone().oneshot(get("/readyz")).await.expect("call");
        assert_eq!(text(r).await, (200, "ready\n".into()));
        let r = app.clone().oneshot(get("/metrics")).await.expect("call");
        let (status, body) = text(r).await;
        assert_eq!(status, 200);
        assert!(body.contains("tracejob_test_things_total 1"), "{body}");
    }
}
