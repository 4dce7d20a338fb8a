//! The mocked API server: tower-test's mock service, as kube-rs's controller examples test their
//! reconcilers (kube-rs/controller-rs's `ApiServerVerifier`). The agent's `kube::Client` sends
//! every request to it; the test takes them one by one (`ApiServer::next`), checks each (method,
//! path, body) and answers it (`Call::reply`, `Call::fail`, `Call::accept_status`) with JSON or
//! with an error status such as 409 Conflict. Events are answered at once and left out: they are
//! best effort, and when they go out is not what these tests are about.

use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tower_test::mock;

use crate::resource::{TraceJob, TraceJobStatus};

/// A client whose requests go to the returned `ApiServer`.
pub fn mocked(namespace: &str) -> (kube::Client, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (
        kube::Client::new(service, namespace),
        ApiServer::start(handle),
    )
}

/// The mocked API server: the requests the agent sends, in order, for the test to answer.
pub struct ApiServer {
    calls: mpsc::UnboundedReceiver<Call>,
}

impl ApiServer {
    /// Takes the mock's requests in a task of its own: Events are answered there, the rest go
    /// to the test.
    fn start(mut handle: mock::Handle<Request<Body>, Response<Body>>) -> ApiServer {
        let (tx, calls) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let call = Call {
                    method: parts.method,
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or_default().to_string(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    respond,
                };
                if call.path.starts_with("/apis/events.k8s.io/") {
                    let event = call.body.clone();
                    call.reply(201, &event);
                    continue;
                }
                if tx.send(call).is_err() {
                    break;
                }
            }
        });
        ApiServer { calls }
    }

    /// The next request (not an Event) the agent sends.
    pub async fn next(&mut self) -> Call {
        tokio::time::timeout(PATIENCE, self.calls.recv())
            .await
            .unwrap_or_else(|_| panic!("the agent sent no request within {PATIENCE:?}"))
            .expect("the mocked API server runs")
    }

    /// Asserts that the agent sends no request (but Events) for `time`.
    pub async fn assert_quiet(&mut self, time: Duration) {
        if let Ok(Some(call)) = tokio::time::timeout(time, self.calls.recv()).await {
            panic!(
                "unexpected request: {} {}?{} {}",
                call.method, call.path, call.query, call.body
            );
        }
    }
}

/// One request the agent sent; answered by one of the methods that consume it (unanswered, it
/// fails in the agent as a broken connection would).
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: String,
    /// Its JSON body (Null when it has none).
    pub body: Value,
    respond: mock::SendResponse<Response<Body>>,
}

impl Call {
    /// Asserts the request's method and path.
    pub fn assert_request(&self, method: Method, path: &str) {
        assert_eq!(
            (&self.method, self.path.as_str()),
            (&method, path),
            "{}",
            self.body
        );
    }

    /// Asserts a write of `job`'s status: a server-side apply of its status subresource by the
    /// agent's field manager.
    pub fn assert_status_write(&self, job: &TraceJob) {
        self.assert_request(Method::PATCH, &format!("{}/status", path_of(job)));
        assert!(
            self.query.contains("fieldManager=tracejob-agent"),
            "{}",
            self.query
        );
    }

    /// The status a status write asks for.
    pub fn status(&self) -> TraceJobStatus {
        serde_json::from_value(self.body["status"].clone()).expect("a TraceJob status")
    }

    /// The resourceVersion a write is conditional on (a claim's), if any.
    pub fn precondition(&self) -> Option<&str> {
        self.body["metadata"]["resourceVersion"].as_str()
    }

    /// Answers with `code` and `body` as JSON.
    pub fn reply(self, code: u16, body: &impl Serialize) {
        let response = Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).expect("JSON")))
            .expect("a response");
        self.respond.send_response(response);
    }

    /// Answers with an error, as the API server does (a `Status`): 409 Conflict, 500, ...
    pub fn fail(self, code: u16, reason: &str) {
        let status = json!({
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "message": format!("{reason} (the test's answer)"),
            "reason": reason,
            "code": code,
        });
        self.reply(code, &status);
    }

    /// Answers a create as the API server does (201, the object as created), and returns the
    /// object.
    pub fn accept_create(self) -> Value {
        let created = self.body.clone();
        self.reply(201, &created);
        created
    }

    /// Answers a status write as the API server does: `job` with the status written, at its
    /// next resourceVersion, which is returned.
    pub fn accept_status(self, job: &TraceJob) -> TraceJob {
        let mut written = next_version(job);
        written.status = Some(self.status());
        self.reply(200, &written);
        written
    }
}

/// The node of the agent under test.
pub const NODE: &str = "n";
/// The namespace of the TraceJobs, which may trace `NODE`.
pub const NAMESPACE: &str = "ns";
/// How long a test waits for what should come within milliseconds (a request, the actor's end)
/// before it fails: generous, for a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The same TraceJob at its next resourceVersion, as after any change.
pub fn next_version(job: &TraceJob) -> TraceJob {
    let version: u64 = job
        .metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut next = job.clone();
    next.metadata.resource_version = Some((version + 1).to_string());
    next
}

/// The TraceJob's path on the API server.
pub fn path_of(job: &TraceJob) -> String {
    format!(
        "/apis/observe.tracejob.dev/v1alpha1/namespaces/{NAMESPACE}/tracejobs/{}",
        job.metadata.name.as_deref().unwrap_or_default()
    )
}
