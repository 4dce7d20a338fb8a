//! `TraceJobNode`: one node's part of a TraceJob with spec.nodeSelector, in an object of its own
//! (as a Lease per node, or a ResourceSlice per node): a write costs the same whatever the number
//! of nodes, and no agent receives the other nodes' writes. Created and written by that node's
//! agent only; owned by its TraceJob, so it goes with it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::{CustomResource, KubeSchema, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::{OutputRef, Phase, TraceJob};
use crate::resource::vocabulary::Label;

/// One node's run of a TraceJob with spec.nodeSelector.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "observe.tracejob.dev",
    version = "v1alpha1",
    kind = "TraceJobNode",
    plural = "tracejobnodes",
    shortname = "tjn",
    namespaced,
    status = "TraceJobNodeStatus",
    doc = "TraceJobNode is one node's part of a TraceJob with spec.nodeSelector, written by that node's agent.",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Probes", type_ = "integer", json_path = ".status.probes"),
    printcolumn(
        name = "Output",
        type_ = "string",
        json_path = ".status.outputRef.name"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    // Each agent watches its own node's parts only.
    selectable = ".spec.nodeName"
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a TraceJobNode's spec cannot change"))]
#[serde(rename_all = "camelCase")]
pub struct TraceJobNodeSpec {
    /// The node that runs this part.
    #[schemars(length(min = 1, max = 253))]
    pub node_name: String,
    /// The TraceJob this is a part of (also its controller owner).
    #[schemars(length(min = 1, max = 253))]
    pub trace_job: String,
}

/// What the node's agent has observed of its run: the fields of a single node's TraceJob status.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TraceJobNodeStatus {
    /// Pending, Running, Stopping, Completed or Failed, on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Why it is in that phase (the reason of a single node's phase condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail; on failure, bpftrace's own error text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A UUID naming this node's run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Host PID of the bpftrace process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    /// Number of probes bpftrace attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// This node's output ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_ref: Option<OutputRef>,
    /// `bpftrace --version` on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpftrace_version: Option<String>,
}

impl TraceJobNode {
    /// The part of `job` that `node` runs, as its agent creates it: owned by the TraceJob (the
    /// controller owner, so the garbage collector deletes it with the TraceJob) and labelled
    /// with both names.
    pub fn part_of(job: &TraceJob, node: &str) -> TraceJobNode {
        let mut part = TraceJobNode::new(
            &part_name(&job.name_any(), node),
            TraceJobNodeSpec {
                node_name: node.to_string(),
                trace_job: job.name_any(),
            },
        );
        part.metadata = ObjectMeta {
            name: part.metadata.name,
            namespace: job.namespace(),
            labels: Some(BTreeMap::from([
                (Label::TraceJob.as_str().to_string(), job.name_any()),
                (Label::Node.as_str().to_string(), node.to_string()),
            ])),
            owner_references: Some(vec![controller(job)]),
            ..Default::default()
        };
        part
    }

    /// The UID of the TraceJob this is part of (its controller owner).
    pub fn owner_uid(&self) -> Option<&str> {
        self.owner_references()
            .iter()
            .find(|o| o.controller == Some(true) && o.kind == TraceJob::kind(&()))
            .map(|o| o.uid.as_str())
    }
}

/// The controller owner reference to a TraceJob.
pub fn controller(job: &TraceJob) -> OwnerReference {
    OwnerReference {
        api_version: TraceJob::api_version(&()).to_string(),
        kind: TraceJob::kind(&()).to_string(),
        name: job.name_any(),
        uid: job.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// The name of a TraceJob's part on a node: `TRACEJOB-NODE`, or, when that is longer than a name
/// may be, the TraceJob's name cut short and a digest of both (the same on every agent and
/// every run, so creating it twice finds the first).
pub fn part_name(tracejob: &str, node: &str) -> String {
    let name = format!("{tracejob}-{node}");
    if name.len() <= 253 {
        return name;
    }
    let digest = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).simple();
    let base: String = tracejob.chars().take(253 - 33).collect();
    format!("{}-{digest}", base.trim_end_matches(['-', '.']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_are_valid_and_stable() {
        assert_eq!(part_name("biolat", "node-1"), "biolat-node-1");
        let long = part_name(&"t".repeat(200), &"n".repeat(200));
        assert!(long.len() <= 253, "{}", long.len());
        assert_eq!(long, part_name(&"t".repeat(200), &"n".repeat(200)));
        assert_ne!(long, part_name(&"t".repeat(200), &"m".repeat(200)));
    }

    #[test]
    fn a_part_is_owned_by_its_tracejob_and_labelled() {
        let mut job = crate::resource::example();
        job.metadata.namespace = Some("ns".into());
        job.metadata.uid = Some("u1".into());
        let part = TraceJobNode::part_of(&job, "n1");
        assert_eq!(part.namespace().as_deref(), Some("ns"));
        assert_eq!(part.owner_uid(), Some("u1"));
        assert_eq!(part.labels()[Label::Node.as_str()], "n1");
        assert_eq!(part.labels()[Label::TraceJob.as_str()], "t");
        assert_eq!(part.spec.node_name, "n1");
    }
}
