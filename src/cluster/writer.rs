//! Everything the agent writes to the cluster, in one place: TraceJob status (through the status
//! subresource, by server-side apply), the output ConfigMap, and Events.
//!
//! Status goes through one writer task per job: the job's actor hands it the status it wants
//! and goes on; the task writes the newest one, retries transient failures with jittered
//! backoff (a newer status replaces the one being retried), and reports each outcome back, so
//! the actor never waits on a write.
//!
//! A TraceJob run on several nodes (spec.nodeSelector) has one part per node, a `TraceJobNode`:
//! each node's agent creates and writes only its own, so a write costs the same whatever the
//! number of nodes. The TraceJob's own status (a summary) is the summarizer's (`summarize`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tracing::{warn, Instrument};

use crate::cluster::parts::Parts;
use crate::output::fit::Contents;
use crate::resource::node::controller;
use crate::resource::vocabulary::{Annotation, ConditionType, Label};
use crate::resource::{TraceJob, TraceJobNode, TraceJobNodeStatus, TraceJobStatus};

/// The field manager of the agent's server-side applies.
pub const MANAGER: &str = "tracejob-agent";

/// Where a job's writer writes its status.
#[derive(Debug, Clone)]
enum Shape {
    /// The TraceJob's status: it runs on one node.
    Whole,
    /// This node's TraceJobNode (created on its first write) of a TraceJob on several nodes.
    Part(Box<Part>),
}

#[derive(Debug, Clone)]
struct Part {
    api: Api<TraceJobNode>,
    part: TraceJobNode,
    job: TraceJob,
    created: bool,
    /// This node's parts as the agent knows them: each write's result is recorded there.
    known: Arc<Parts>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("ConfigMaps of the output's names exist and do not belong to this run (the last: {0}); they were left untouched")]
    NotOurs(String),
}

impl Error {
    /// The one rule for every write: retry (with jittered backoff) only while no verdict on the
    /// write was reached: the API server could not be reached or did not answer (connection,
    /// TLS, timeout, the credentials could not be refreshed), or answered 429 or 5xx (overloaded
    /// or failing). A verdict is final and ends the attempt with its reason: any other status
    /// (400 malformed, 403 refused, 404 gone, 409 changed since it was read: the caller reads
    /// it again and decides anew, 422 invalid), and a request this client cannot even build or
    /// send as configured (its body or URL cannot be encoded, a proxy or TLS setting it does not
    /// support), which would fail the same way every time.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Kube(kube::Error::Api(s)) => s.code == 429 || s.code >= 500,
            Error::Kube(
                kube::Error::BuildRequest(_)
                | kube::Error::HttpError(_)
                | kube::Error::ProxyProtocolUnsupported { .. }
                | kube::Error::ProxyProtocolDisabled { .. }
                | kube::Error::TlsRequired
                | kube::Error::InferConfig(_)
                | kube::Error::InferKubeconfig(_)
                | kube::Error::Discovery(_),
            ) => false,
            Error::Kube(_) => true,
            Error::NotOurs(_) => false,
        }
    }

    /// The API server refuses this write for this client (RBAC or an admission policy).
    pub fn is_refused(&self) -> bool {
        self.code() == Some(403)
    }

    fn code(&self) -> Option<u16> {
        match self {
            Error::Kube(kube::Error::Api(s)) => Some(s.code),
            _ => None,
        }
    }
}

/// Delays between retries of a failed write: exponential from 200 ms to 30 s, with jitter so
/// that many jobs failing together do not retry together.
pub fn backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

pub fn now() -> Time {
    Time(Timestamp::now())
}

#[derive(Clone)]
pub struct Writer {
    client: Client,
    recorder: Recorder,
    node: String,
    /// `bpftrace --version`, recorded in each TraceJobNode.
    bpftrace: String,
    parts: Arc<Parts>,
}

/// A status for the writer to write: the whole status as the agent knows it.
#[derive(Debug, Clone)]
pub struct Desired {
    /// Increases with each status the actor hands over; outcomes carry it back.
    pub seq: u64,
    pub status: TraceJobStatus,
    /// Write only if the object is still at this resourceVersion (the claim).
    pub precondition: Option<String>,
}

/// What became of a status write.
#[derive(Debug)]
pub enum Written {
    Done {
        seq: u64,
        job: Box<TraceJob>,
    },
    /// The precondition failed: the object changed; here is the newest, if it could be read.
    Conflict {
        seq: u64,
        newest: Option<Box<TraceJob>>,
    },
    /// The TraceJob is gone.
    Gone {
        seq: u64,
    },
    /// The API server refuses this status for good (invalid, forbidden).
    Rejected {
        seq: u64,
        error: String,
        /// Refused for this client (403: RBAC or an admission policy), not for its content.
        forbidden: bool,
    },
}

/// The actor's end of its job's status writer.
pub struct StatusWriter {
    tx: watch::Sender<Option<Desired>>,
    pub written: mpsc::UnboundedReceiver<Written>,
}

impl StatusWriter {
    /// Hands over the status to write; an older one not yet written is dropped.
    pub fn write(&self, desired: Desired) {
        // The task ends only after the actor drops this sender.
        let _ = self.tx.send(Some(desired));
    }
}

impl Writer {
    pub fn new(client: Client, node: &str, bpftrace: &str) -> Writer {
        let reporter = Reporter {
            controller: "tracejob-agent".into(),
            instance: Some(node.to_string()),
        };
        Writer {
            parts: Arc::new(Parts::default()),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            node: node.to_string(),
            bpftrace: bpftrace.to_string(),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// This node's parts of TraceJobs on several nodes, as this agent wrote them.
    pub fn parts(&self) -> &Arc<Parts> {
        &self.parts
    }

    fn api(&self, job: &TraceJob) -> Api<TraceJob> {
        Api::namespaced(self.client.clone(), &job.namespace().unwrap_or_default())
    }

    /// Starts the status writer of one job; it ends when the returned handle is dropped.
    pub fn status_writer(&self, job: &TraceJob) -> StatusWriter {
        let (tx, rx) = watch::channel(None);
        let (done, written) = mpsc::unbounded_channel();
        let api = self.api(job);
        let name = job.name_any();
        let shape = match job.spec.node_selector {
            Some(_) => Shape::Part(Box::new(Part {
                api: Api::namespaced(self.client.clone(), &job.namespace().unwrap_or_default()),
                part: TraceJobNode::part_of(job, &self.node),
                job: job.clone(),
                created: false,
                known: self.parts.clone(),
            })),
            None => Shape::Whole,
        };
        let bpftrace = self.bpftrace.clone();
        tokio::spawn(write_statuses(api, name, shape, bpftrace, rx, done).in_current_span());
        StatusWriter { tx, written }
    }

    /// The TraceJob as the server has it now (None: gone).
    pub async fn get(&self, job: &TraceJob) -> Result<Option<TraceJob>, Error> {
        Ok(self.api(job).get_opt(&job.name_any()).await?)
    }

    /// Stores output in a ConfigMap owned by the TraceJob. `ours` names the ConfigMap this run
    /// already wrote (its status.outputRef): that one is replaced whole (a PUT without a
    /// resourceVersion: nothing of the live copy's stays). Otherwise a new one is created; if a
    /// ConfigMap of that name exists it is not ours (the agent never reads ConfigMaps, so it
    /// cannot tell otherwise), and it is left alone for a second name with the whole run id.
    /// `live` marks live output and where it begins in the whole output. One attempt: the caller
    /// retries.
    pub async fn output(
        &self,
        job: &TraceJob,
        run_id: &str,
        contents: &Contents,
        live: Option<u64>,
        ours: Option<&str>,
    ) -> Result<String, Error> {
        let ns = job.namespace().unwrap_or_default();
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
        if let Some(name) = ours {
            let cm = self.configmap(job, run_id, name, contents, live);
            match api.replace(name, &PostParams::default(), &cm).await {
                Ok(_) => return Ok(name.to_string()),
                // Deleted meanwhile: created again below.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        let short = output_name(&job.name_any(), run_id.split('-').next().unwrap_or(run_id));
        let long = output_name(&job.name_any(), run_id);
        for name in [short, long] {
            let cm = self.configmap(job, run_id, &name, contents, live);
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => return Ok(name),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    warn!(
                        configmap = name,
                        "a ConfigMap of the output's name exists and is not ours; leaving it alone"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::NotOurs(output_name(&job.name_any(), run_id)))
    }

    fn configmap(
        &self,
        job: &TraceJob,
        run_id: &str,
        name: &str,
        contents: &Contents,
        live: Option<u64>,
    ) -> ConfigMap {
        let annotations = live.map(|offset| {
            BTreeMap::from([
                (Annotation::Live.as_str().to_string(), "true".to_string()),
                (
                    Annotation::LiveOffset.as_str().to_string(),
                    offset.to_string(),
                ),
            ])
        });
        let (data, binary) = contents.configmap_data();
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: job.namespace(),
                labels: Some(BTreeMap::from([
                    (Label::TraceJob.as_str().to_string(), job.name_any()),
                    (Label::Node.as_str().to_string(), self.node.clone()),
                    (Label::RunId.as_str().to_string(), run_id.to_string()),
                ])),
                annotations,
                owner_references: Some(vec![controller(job)]),
                ..Default::default()
            },
            data: Some(data),
            binary_data: Some(binary),
            ..Default::default()
        }
    }

    /// Publishes an Event on the TraceJob, in the background: Events are best effort, and never
    /// hold anything up.
    pub fn event(&self, job: &TraceJob, warning: bool, reason: &str, note: String) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note),
            action: reason.to_string(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        let object = job.object_ref(&());
        let reason = reason.to_string();
        tokio::spawn(
            async move {
                let published = tokio::time::timeout(
                    Duration::from_secs(10),
                    recorder.publish(&event, &object),
                )
                .await;
                match published {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(error = %e, reason, "could not publish event"),
                    Err(_) => warn!(reason, "could not publish event in 10 s"),
                }
            }
            .in_current_span(),
        );
    }
}

/// The status writer of one job: writes the newest status it was handed, until the actor goes.
async fn write_statuses(
    api: Api<TraceJob>,
    name: String,
    mut shape: Shape,
    bpftrace: String,
    mut rx: watch::Receiver<Option<Desired>>,
    done: mpsc::UnboundedSender<Written>,
) {
    while rx.changed().await.is_ok() {
        let mut delays = backoff();
        loop {
            let Some(desired) = rx.borrow_and_update().clone() else {
                break;
            };
            let seq = desired.seq;
            let written = match apply_status(&api, &name, &mut shape, &bpftrace, &desired).await {
                Ok(job) => Written::Done {
                    seq,
                    job: Box::new(job),
                },
                Err(e) if e.code() == Some(409) => Written::Conflict {
                    seq,
                    newest: api.get_opt(&name).await.ok().flatten().map(Box::new),
                },
                Err(e) if e.code() == Some(404) => Written::Gone { seq },
                Err(e) if e.is_transient() => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(30));
                    warn!(error = %e, retry_in = ?delay, "writing status failed");
                    // A newer status is tried at once; otherwise this one after the delay.
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        changed = rx.changed() => if changed.is_err() { return },
                    }
                    continue;
                }
                Err(e) => Written::Rejected {
                    seq,
                    forbidden: e.is_refused(),
                    error: e.to_string(),
                },
            };
            if done.send(written).is_err() {
                return;
            }
            break;
        }
    }
}

async fn apply_status(
    api: &Api<TraceJob>,
    name: &str,
    shape: &mut Shape,
    bpftrace: &str,
    desired: &Desired,
) -> Result<TraceJob, Error> {
    let Shape::Part(p) = shape else {
        let mut object = json!({
            "apiVersion": TraceJob::api_version(&()),
            "kind": TraceJob::kind(&()),
            "metadata": { "name": name },
            "status": desired.status,
        });
        if let Some(rv) = &desired.precondition {
            object["metadata"]["resourceVersion"] = json!(rv);
        }
        let params = PatchParams::apply(MANAGER).force();
        return Ok(api
            .patch_status(name, &params, &Patch::Apply(object))
            .await?);
    };
    let Part {
        api: parts,
        part,
        job,
        created,
        known,
    } = p.as_mut();
    let part_name = part.name_any();
    let params = PatchParams::apply(MANAGER).force();
    if !*created {
        // Creates the part, or finds it as an earlier agent of this node left it.
        parts
            .patch(&part_name, &params, &Patch::Apply(&*part))
            .await?;
        *created = true;
    }
    let object = json!({
        "apiVersion": TraceJobNode::api_version(&()),
        "kind": TraceJobNode::kind(&()),
        "metadata": { "name": part_name },
        "status": part_status(&desired.status, bpftrace),
    });
    match parts
        .patch_status(&part_name, &params, &Patch::Apply(object))
        .await
    {
        Ok(written) => {
            let view = job.view_with(Some(&written));
            known.record(written);
            Ok(view)
        }
        Err(e) => {
            if matches!(&e, kube::Error::Api(s) if s.code == 404) {
                // Deleted by hand: made again on the next write, unless its TraceJob is gone.
                *created = false;
            }
            Err(e.into())
        }
    }
}

/// A node's part, from the status its actor wants.
fn part_status(s: &TraceJobStatus, bpftrace: &str) -> TraceJobNodeStatus {
    let reason = s
        .conditions
        .iter()
        .find(|c| {
            c.status == "True"
                && [
                    ConditionType::Running,
                    ConditionType::Completed,
                    ConditionType::Failed,
                ]
                .iter()
                .any(|t| c.type_ == *t)
        })
        .map(|c| c.reason.clone());
    TraceJobNodeStatus {
        phase: s.phase,
        reason,
        id: s.id.clone(),
        pid: s.pid,
        probes: s.probes,
        start_time: s.start_time.clone(),
        completion_time: s.completion_time.clone(),
        exit_code: s.exit_code,
        message: s.message.clone(),
        output_ref: s.output_ref.clone(),
        bpftrace_version: Some(bpftrace.to_string()),
    }
}

/// The ConfigMap name for a run: the TraceJob's name and (part of) the run id, so a TraceJob
/// created again under the same name never meets the previous run's ConfigMap.
pub fn output_name(tracejob: &str, run_id: &str) -> String {
    let suffix = format!("-output-{run_id}");
    let room = 253 - suffix.len();
    let base: String = tracejob.chars().take(room).collect();
    format!("{}{suffix}", base.trim_end_matches(['-', '.']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_are_valid_and_unique_per_run() {
        let a = output_name("biolatency", "0b6c1f1e");
        assert_eq!(a, "biolatency-output-0b6c1f1e");
        let long = output_name(&"x".repeat(253), "0b6c1f1e-0000-4000-8000-000000000000");
        assert!(
            long.len() <= 253 && long.ends_with("-output-0b6c1f1e-0000-4000-8000-000000000000")
        );
    }

    #[test]
    fn only_writes_without_a_verdict_are_retried() {
        let api = |code: u16| {
            Error::Kube(kube::Error::Api(Box::new(
                kube::core::Status::failure("x", "Reason").with_code(code),
            )))
        };
        for code in [429, 500, 503, 504] {
            assert!(api(code).is_transient(), "{code}");
        }
        for code in [400, 403, 404, 409, 410, 413, 422] {
            assert!(!api(code).is_transient(), "{code}");
        }
        // A body that cannot be built fails the same way every time.
        let unbuildable = Error::Kube(kube::Error::BuildRequest(
            kube::core::request::Error::Validation("the body".into()),
        ));
        assert!(!unbuildable.is_transient());
        assert!(!Error::Kube(kube::Error::TlsRequired).is_transient());
        assert!(!Error::NotOurs("x".into()).is_transient());
        // The connection broke mid-answer: nothing was decided.
        let broken = Error::Kube(kube::Error::ReadEvents(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(broken.is_transient());
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let a: Vec<Duration> = backoff().take(12).collect();
        let b: Vec<Duration> = backoff().take(12).collect();
        assert!(a.iter().all(|d| *d <= Duration::from_secs(60)), "{a:?}");
        assert!(a[0] >= Duration::from_millis(200), "{a:?}");
        assert_ne!(a, b, "two jobs do not retry in step");
    }
}
