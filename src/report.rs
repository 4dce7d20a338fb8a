//! Everything the agent writes to the cluster, in one place: TraceJob status (through the status
//! subresource), the output ConfigMap, and Events.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::api::{OutputRef, Phase, TraceJob, TraceJobStatus};
use crate::output::Maps;
use crate::storage::{self, Contents, Stored};

pub const LABEL_TRACEJOB: &str = "observe.tracejob.dev/tracejob";
pub const LABEL_NODE: &str = "observe.tracejob.dev/node";
pub const LABEL_RUN: &str = "observe.tracejob.dev/run-id";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("ConfigMap {0} exists and does not belong to this TraceJob; it was left untouched")]
    NotOurs(String),
    #[error("encoding maps.json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// Worth retrying: the API server is unreachable, overloaded or failing. Anything else (the
    /// object is gone, was changed since it was read, or the write is invalid) will not heal.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Kube(kube::Error::Api(s)) => s.code == 429 || s.code >= 500,
            Error::Kube(_) => true,
            Error::NotOurs(_) | Error::Json(_) => false,
        }
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s)) if s.code == 404)
    }
}

#[derive(Clone)]
pub struct Writer {
    client: Client,
    recorder: Recorder,
    node: String,
}

impl Writer {
    pub fn new(client: Client, node: &str) -> Writer {
        let reporter = Reporter {
            controller: "tracejob-agent".into(),
            instance: Some(node.to_string()),
        };
        Writer {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            node: node.to_string(),
        }
    }

    fn api(&self, job: &TraceJob) -> Api<TraceJob> {
        Api::namespaced(self.client.clone(), &job.namespace().unwrap_or_default())
    }

    /// Claims a TraceJob for a run: status.id and Pending, only if nobody changed it since it was
    /// read (resourceVersion precondition), so one TraceJob is never started twice.
    pub async fn claim(&self, job: &TraceJob, run_id: &str) -> Result<TraceJob, Error> {
        let status = TraceJobStatus {
            phase: Some(Phase::Pending),
            id: Some(run_id.to_string()),
            message: Some(format!("starting bpftrace on node {}", self.node)),
            observed_generation: job.metadata.generation,
            conditions: conditions(Phase::Pending, "Starting", "", job, now()),
            ..Default::default()
        };
        self.patch_status(
            job,
            json!({
                "metadata": { "resourceVersion": job.resource_version() },
                "status": status,
            }),
        )
        .await
    }

    /// Writes `status` (merged over what is there) and the conditions its phase implies.
    pub async fn status(
        &self,
        job: &TraceJob,
        mut status: TraceJobStatus,
        reason: &str,
    ) -> Result<TraceJob, Error> {
        let phase = status.phase.unwrap_or(Phase::Pending);
        let message = status.message.clone().unwrap_or_default();
        let mut extra: Vec<Condition> = std::mem::take(&mut status.conditions)
            .into_iter()
            .filter(|c| !PHASE_CONDITIONS.contains(&c.type_.as_str()))
            .collect();
        status.conditions = conditions(phase, reason, &message, job, now());
        status.conditions.append(&mut extra);
        status.observed_generation = job.metadata.generation;
        self.patch_status(job, json!({ "status": status })).await
    }

    /// A merge patch of the status subresource: the only way status is written.
    async fn patch_status(
        &self,
        job: &TraceJob,
        patch: serde_json::Value,
    ) -> Result<TraceJob, Error> {
        let params = PatchParams::default();
        Ok(self
            .api(job)
            .patch_status(&job.name_any(), &params, &Patch::Merge(patch))
            .await?)
    }

    /// Stores the output in a ConfigMap owned by the TraceJob, or updates it if it is already ours
    /// (a retried write). If a ConfigMap of that name exists and is not ours, it is left alone
    /// and a second name (with the whole run id) is used.
    pub async fn output(
        &self,
        job: &TraceJob,
        run_id: &str,
        stdout: &str,
        maps: &Maps,
    ) -> Result<(OutputRef, Stored), Error> {
        let (contents, stored) = storage::fit(
            stdout,
            &serde_json::to_string(maps)?,
            storage::CONFIGMAP_BUDGET,
        );
        let short = output_name(&job.name_any(), run_id.split('-').next().unwrap_or(run_id));
        let long = output_name(&job.name_any(), run_id);
        let name = match self.write_configmap(job, run_id, &short, &contents).await {
            Err(Error::NotOurs(_)) => self.write_configmap(job, run_id, &long, &contents).await?,
            other => other?,
        };
        Ok((OutputRef { name }, stored))
    }

    async fn write_configmap(
        &self,
        job: &TraceJob,
        run_id: &str,
        name: &str,
        contents: &Contents,
    ) -> Result<String, Error> {
        let ns = job.namespace().unwrap_or_default();
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(ns),
                labels: Some(BTreeMap::from([
                    (LABEL_TRACEJOB.to_string(), job.name_any()),
                    (LABEL_NODE.to_string(), self.node.clone()),
                    (LABEL_RUN.to_string(), run_id.to_string()),
                ])),
                owner_references: Some(vec![owner(job)]),
                ..Default::default()
            },
            data: Some(contents.data.clone()),
            binary_data: Some(
                contents
                    .binary
                    .iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                    .collect(),
            ),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &cm).await {
            Ok(_) => Ok(name.to_string()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let existing = api.get(name).await?;
                let ours = existing
                    .owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == job.uid().as_ref());
                if !ours {
                    tracing::warn!(
                        configmap = name,
                        "a ConfigMap of the output's name exists and is not ours; leaving it alone"
                    );
                    return Err(Error::NotOurs(name.to_string()));
                }
                let mut updated = cm;
                updated.metadata.resource_version = existing.resource_version();
                api.replace(name, &PostParams::default(), &updated).await?;
                Ok(name.to_string())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Publishes an Event on the TraceJob. Events are best effort: a failure is logged, not fatal.
    pub async fn event(&self, job: &TraceJob, warning: bool, reason: &str, note: String) {
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
        if let Err(e) = self.recorder.publish(&event, &job.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }
}

pub fn now() -> Time {
    Time(Timestamp::now())
}

/// The ConfigMap name for a run: the TraceJob's name and (part of) the run id, so a TraceJob
/// created again under the same name never meets the previous run's ConfigMap.
pub fn output_name(tracejob: &str, run_id: &str) -> String {
    let suffix = format!("-output-{run_id}");
    let room = 253 - suffix.len();
    let base: String = tracejob.chars().take(room).collect();
    format!("{}{suffix}", base.trim_end_matches(['-', '.']))
}

fn owner(job: &TraceJob) -> OwnerReference {
    OwnerReference {
        api_version: TraceJob::api_version(&()).to_string(),
        kind: TraceJob::kind(&()).to_string(),
        name: job.name_any(),
        uid: job.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// The condition types derived from the phase.
const PHASE_CONDITIONS: [&str; 3] = ["Running", "Completed", "Failed"];

/// The `OutputStored` condition: how the output was stored (Stored, Compressed or Truncated).
pub fn output_condition(stored: &Stored, configmap: &str, job: &TraceJob) -> Condition {
    let (reason, message) = stored.describe(configmap);
    Condition {
        type_: "OutputStored".to_string(),
        status: "True".to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: now(),
        observed_generation: job.metadata.generation,
    }
}

/// The conditions for `phase`: `Running` (True while tracing), `Completed` and `Failed`, keeping
/// each one's lastTransitionTime while its status does not change.
pub fn conditions(
    phase: Phase,
    reason: &str,
    message: &str,
    job: &TraceJob,
    now: Time,
) -> Vec<Condition> {
    let previous = job
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let wanted = [
        ("Running", phase == Phase::Running),
        ("Completed", phase == Phase::Completed),
        ("Failed", phase == Phase::Failed),
    ];
    wanted
        .iter()
        .map(|(kind, on)| {
            let status = if *on { "True" } else { "False" };
            let last = previous
                .iter()
                .find(|c| c.type_ == *kind && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: kind.to_string(),
                status: status.to_string(),
                reason: if *on {
                    reason.to_string()
                } else {
                    format!("Phase{phase}")
                },
                message: if *on {
                    message.to_string()
                } else {
                    format!("phase is {phase}")
                },
                last_transition_time: last,
                observed_generation: job.metadata.generation,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::example as job;

    #[test]
    fn conditions_follow_the_phase_and_keep_transition_times() {
        let t0 = Time(Timestamp::from_second(1_000).expect("time"));
        let t1 = Time(Timestamp::from_second(2_000).expect("time"));
        let mut tj = job();
        let running = conditions(
            Phase::Running,
            "ProbesAttached",
            "3 probes",
            &tj,
            t0.clone(),
        );
        assert_eq!(running.iter().filter(|c| c.status == "True").count(), 1);
        assert_eq!(running[0].type_, "Running");
        assert_eq!(running[0].reason, "ProbesAttached");
        tj.status = Some(TraceJobStatus {
            conditions: running,
            ..Default::default()
        });
        let done = conditions(Phase::Completed, "Collected", "", &tj, t1.clone());
        let by = |t: &str| {
            done.iter()
                .find(|c| c.type_ == t)
                .cloned()
                .expect("condition")
        };
        assert_eq!(by("Completed").status, "True");
        assert_eq!(by("Completed").last_transition_time, t1);
        assert_eq!(by("Running").status, "False");
        assert_eq!(
            by("Failed").last_transition_time,
            t0,
            "Failed stayed False since t0"
        );
    }

    #[test]
    fn output_names_are_valid_and_unique_per_run() {
        let a = output_name("biolatency", "0b6c1f1e");
        assert_eq!(a, "biolatency-output-0b6c1f1e");
        let long = output_name(&"x".repeat(253), "0b6c1f1e-0000-4000-8000-000000000000");
        assert!(
            long.len() <= 253 && long.ends_with("-output-0b6c1f1e-0000-4000-8000-000000000000")
        );
    }
}
