//! The receiver's HTTP endpoint: `POST /alerts` (Alertmanager's webhook, with a bearer token),
//! `/healthz`, `/readyz` (TraceTriggers and their TraceJobs listed) and `/metrics`. A
//! notification is answered as soon as it is parsed and queued; the worker does the rest.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use tokio::sync::mpsc;

use super::decide::Notification;
use super::metrics::Metrics;
use crate::serve;

/// A notification waiting for the worker, with when it arrived.
pub struct Queued {
    pub received: Instant,
    pub notification: Notification,
}

#[derive(Clone)]
pub struct Shared {
    /// The file holding the bearer token (a mounted Secret: read on every call, so a rotated
    /// Secret takes effect without a restart).
    pub token_file: PathBuf,
    pub queue: mpsc::Sender<Queued>,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    /// The largest notification body read, in bytes.
    pub max_body: usize,
    /// How long a notification's body may take to arrive.
    pub read_timeout: Duration,
}

/// `POST /alerts`, and what every component serves (`serve::router`).
pub fn router(shared: Shared) -> Router {
    let metrics = shared.metrics.clone();
    let probes = serve::probes(serve::Probes {
        ready: shared.ready.clone(),
        not_ready: "TraceTriggers not listed yet\n",
        metrics: Arc::new(move || metrics.encode()),
    });
    Router::new()
        .route("/alerts", post(alerts))
        .with_state(shared)
        .merge(probes)
}

/// Whether `a` and `b` are equal, in a time that does not depend on where they differ (only on
/// the longer one's length).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box(x ^ y);
    }
    diff == 0
}

/// Whether the Authorization header carries the token (`Bearer TOKEN`). An empty or unreadable
/// token file authorizes nothing.
pub fn authorized(token: &str, header: Option<&str>) -> bool {
    let token = token.trim();
    let Some(given) = header.and_then(|h| {
        let (scheme, rest) = h.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
    }) else {
        return false;
    };
    !token.is_empty() && same_secret(token.as_bytes(), given.as_bytes())
}

async fn alerts(State(s): State<Shared>, request: Request) -> impl IntoResponse {
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    // The token first: a caller without it gets nothing read, parsed or kept.
    let token = tokio::fs::read_to_string(&s.token_file)
        .await
        .unwrap_or_default();
    let given = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !authorized(&token, given) {
        s.metrics.notification("unauthorized");
        tracing::warn!("refused a webhook call without the bearer token");
        return (StatusCode::UNAUTHORIZED, "a bearer token is required\n");
    }
    let body = match serve::read_body(&parts.headers, body, s.max_body, s.read_timeout).await {
        Ok(b) => b,
        Err(e) => {
            s.metrics.notification("invalid");
            tracing::warn!(error = %e, "refused a webhook call's body");
            return (e.status(), "the body is too large or too slow\n");
        }
    };
    let notification: Notification = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => {
            s.metrics.notification("invalid");
            tracing::warn!(error = %e, "refused a webhook call that is not Alertmanager's JSON");
            return (
                StatusCode::BAD_REQUEST,
                "not an Alertmanager webhook payload\n",
            );
        }
    };
    match s.queue.try_send(Queued {
        received,
        notification,
    }) {
        Ok(()) => {
            s.metrics.notification("accepted");
            (StatusCode::OK, "queued\n")
        }
        Err(_) => {
            // Alertmanager tries a 5xx again.
            s.metrics.notification("overloaded");
            (StatusCode::SERVICE_UNAVAILABLE, "the queue is full\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_must_match_exactly() {
        assert!(authorized("s3cret\n", Some("Bearer s3cret")));
        assert!(authorized("s3cret", Some("bearer s3cret")));
        assert!(!authorized("s3cret", Some("Bearer s3cre")));
        assert!(!authorized("s3cret", Some("Bearer s3cretx")));
        assert!(!authorized("s3cret", Some("Basic s3cret")));
        assert!(!authorized("s3cret", Some("s3cret")));
        assert!(!authorized("s3cret", None));
        assert!(
            !authorized("", Some("Bearer ")),
            "an empty token authorizes nothing"
        );
        assert!(!authorized("  \n", Some("Bearer")));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
        assert!(!same_secret(b"", b"a"));
        assert!(same_secret(b"", b""));
    }

    #[tokio::test]
    async fn answers_at_once_and_queues() {
        use tower::ServiceExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "t0ken\n").expect("write");
        let (tx, mut rx) = mpsc::channel(1);
        let metrics = Metrics::new();
        let app = router(Shared {
            token_file,
            queue: tx,
            metrics: metrics.clone(),
            ready: Arc::new(AtomicBool::new(true)),
            max_body: 1024,
            read_timeout: Duration::from_secs(5),
        });
        let body = r#"{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"A"},"fingerprint":"f"}]}"#;
        let call = |auth: Option<&str>, body: &str| {
            let mut req = axum::http::Request::post("/alerts");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            req.body(axum::body::Body::from(body.to_string()))
                .expect("request")
        };
        let status = |r: axum::response::Response| r.status().as_u16();
        let r = app.clone().oneshot(call(None, body)).await.expect("call");
        assert_eq!(status(r), 401);
        let r = app
            .clone()
            .oneshot(call(Some("Bearer wrong"), body))
            .await
            .expect("call");
        assert_eq!(status(r), 401);
        let r = app
            .clone()
            .oneshot(call(Some("Bearer t0ken"), "{"))
            .await
            .expect("call");
        assert_eq!(status(r), 400);
        // Over the limit: refused, the token given or not.
        let r = app
            .clone()
            .oneshot(call(Some("Bearer t0ken"), &"x".repeat(2000)))
            .await
            .expect("call");
        assert_eq!(status(r), 413);
        let r = app
            .clone()
            .oneshot(call(Some("Bearer t0ken"), body))
            .await
            .expect("call");
        assert_eq!(status(r), 200);
        // The queue (of one) is full now: Alertmanager is told to try again.
        let r = app
            .clone()
            .oneshot(call(Some("Bearer t0ken"), body))
            .await
            .expect("call");
        assert_eq!(status(r), 503);
        let q = rx.recv().await.expect("queued");
        assert_eq!(q.notification.alerts[0].fingerprint, "f");
        let text = metrics.encode();
        assert!(
            text.contains(r#"tracejob_trigger_notifications_total{result="unauthorized"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tracejob_trigger_notifications_total{result="accepted"} 1"#),
            "{text}"
        );
    }
}
