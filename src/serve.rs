//! The one HTTP serving layer of the agent, the summarizer and the trigger receiver: /healthz,
//! /readyz and /metrics, plus whatever routes a component adds, served so that whoever reaches
//! the port cannot exhaust the process: at most `max_connections` open at once (more wait in the
//! kernel's backlog), a request's headers read within `read_timeout` (a keep-alive connection
//! idle that long is closed too), and a connection closed after `max_age` whatever it does.
//! Bodies are read only by handlers that want one, through `read_body` (a size limit and a
//! deadline). Also the log flags, the same for every component (`Logs`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use clap::ValueEnum;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How much one endpoint lets a client hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; further ones wait in the backlog until one closes.
    pub max_connections: usize,
    /// For a request's headers, and for a keep-alive connection's next request.
    pub read_timeout: Duration,
    /// A connection is closed after this long, busy or not.
    pub max_age: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 64,
            read_timeout: Duration::from_secs(10),
            max_age: Duration::from_secs(120),
        }
    }
}

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

/// A component's own registry as /metrics serves it.
pub fn metrics_of(registry: Arc<Registry>) -> Arc<dyn Fn() -> String + Send + Sync> {
    Arc::new(move || encode(&registry))
}

/// A registry as Prometheus text.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Encoding into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// What /readyz and /metrics answer.
#[derive(Clone)]
pub struct Probes {
    pub ready: Arc<AtomicBool>,
    /// /readyz's text while not ready.
    pub not_ready: &'static str,
    /// The metrics in OpenMetrics text.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
}

/// /healthz, /readyz and /metrics; a component merges its own routes into it.
pub fn probes(p: Probes) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(p)
}

async fn readyz(State(p): State<Probes>) -> impl IntoResponse {
    if p.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, p.not_ready)
    }
}

async fn metrics(State(p): State<Probes>) -> impl IntoResponse {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], (p.metrics)())
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `app` on `listener` until the process ends; each connection runs in its own task.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        // Taken before accepting: beyond the cap, clients wait in the backlog, costing nothing.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.max_age, connection).await;
            drop(slot);
        });
    }
}

/// Serves a component's /healthz, /readyz (`not_ready` until `ready`) and /metrics (its
/// `registry`) on `addr`, in the background, with the default limits.
pub fn spawn_probes(
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
    not_ready: &'static str,
    registry: Arc<Registry>,
) {
    let app = probes(Probes {
        ready,
        not_ready,
        metrics: metrics_of(registry),
    });
    spawn(addr, app, Limits::default());
}

/// Serves `app` in the background (its failure is logged: the process goes on).
pub fn spawn(addr: SocketAddr, app: Router, limits: Limits) {
    tokio::spawn(async move {
        let result = match bind(addr).await {
            Ok(listener) => {
                if let Ok(a) = listener.local_addr() {
                    tracing::info!(addr = %a, "serving /healthz, /readyz and /metrics");
                }
                serve(listener, app, limits).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, listen = %addr, "the HTTP endpoint stopped");
        }
    });
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("the body is over {0} bytes")]
    TooLarge(usize),
    #[error("the body was not sent within {0:?}")]
    Timeout(Duration),
    #[error("reading the body failed: {0}")]
    Read(String),
}

impl BodyError {
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Read(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Reads a request body of at most `limit` bytes within `timeout`: refused from its
/// Content-Length when that says more, cut when a stream goes beyond it.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    let read = async {
        let mut body = body;
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if out.len().saturating_add(data.len()) > limit {
                    return Err(BodyError::TooLarge(limit));
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(out))
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyError::Timeout(timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn app() -> Router {
        probes(Probes {
            ready: Arc::new(AtomicBool::new(false)),
            not_ready: "not yet\n",
            metrics: Arc::new(|| "# EOF\n".to_string()),
        })
    }

    async fn start(limits: Limits) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, app(), limits));
        addr
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        c.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_the_probes() {
        let addr = start(Limits::default()).await;
        assert!(get(addr, "/healthz").await.ends_with("ok\n"));
        let r = get(addr, "/readyz").await;
        assert!(
            r.starts_with("HTTP/1.1 503") && r.ends_with("not yet\n"),
            "{r}"
        );
        assert!(get(addr, "/metrics").await.contains("openmetrics"));
    }

    #[tokio::test]
    async fn idle_and_slow_connections_are_closed() {
        let addr = start(Limits {
            read_timeout: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        // Half a request line, then nothing: closed after the read timeout.
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"GET /hea").await.expect("write");
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a stalled request was kept open");
        // Connected and silent: closed too.
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let read = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "an idle connection was kept open");
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait() {
        let addr = start(Limits {
            max_connections: 2,
            read_timeout: Duration::from_secs(60),
            ..Limits::default()
        })
        .await;
        let _a = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _b = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // Give the accept loop time to take both.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let waiting = tokio::time::timeout(Duration::from_millis(500), get(addr, "/healthz")).await;
        assert!(waiting.is_err(), "a third connection was served");
        drop(_a);
        let served = tokio::time::timeout(Duration::from_secs(10), get(addr, "/healthz")).await;
        assert!(served.is_ok_and(|r| r.ends_with("ok\n")));
    }

    #[tokio::test]
    async fn bodies_are_limited_and_timed() {
        let t = Duration::from_secs(5);
        let mut h = HeaderMap::new();
        let ok = read_body(&h, Body::from("abc"), 3, t).await;
        assert_eq!(ok, Ok(Bytes::from("abc")));
        let streamed = read_body(&h, Body::from("abcd"), 3, t).await;
        assert_eq!(streamed, Err(BodyError::TooLarge(3)));
        h.insert(header::CONTENT_LENGTH, "2000000".parse().expect("value"));
        // Refused from the header, before any byte is read (the body would never end).
        let never = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        assert_eq!(
            read_body(&h, never, 1024, t).await,
            Err(BodyError::TooLarge(1024))
        );
        let h = HeaderMap::new();
        let never = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        assert_eq!(
            read_body(&h, never, 1024, Duration::from_millis(100)).await,
            Err(BodyError::Timeout(Duration::from_millis(100)))
        );
    }
}
