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
    selectable = ".spec.nodeName",
    // Checked when a part is created (its name and spec cannot change after): parts named
    // before this rule keep being written.
    validation = Rule::new("oldSelf.hasValue() || self.metadata.name == self.spec.traceJob + '.' + self.spec.nodeName").message("a TraceJobNode is named TRACEJOB.NODE: its spec.traceJob, a dot and its spec.nodeName").optional_old_self(true)
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

/// The name of a TraceJob's part on a node: `TRACEJOB.NODE`. A fan-out TraceJob's name is a
/// label value without a dot (the TraceJob CRD refuses others), and a node joins a fan-out only
/// when its name is a label value (`joinable`), so the name is at most 127 characters and names
/// one TraceJob and one node: admission (the TraceJobNode CRD and the agents' fence) requires it,
/// so a node's token creates its own part and no other, and each TraceJob has at most one part
/// per node.
pub fn part_name(tracejob: &str, node: &str) -> String {
    format!("{tracejob}.{node}")
}

/// Whether a node may join TraceJobs on several nodes: its name is a label value (at most 63
/// characters, alphanumerics, '-', '_' and '.', beginning and ending with an alphanumeric), as
/// its parts and outputs carry it in `observe.tracejob.dev/node`.
pub fn joinable(node: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    !node.is_empty()
        && node.len() <= 63
        && alnum(node.chars().next())
        && alnum(node.chars().last())
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Why a part is not one its TraceJob counts: its name, labels and owner are not those its
/// node's agent gives it (`TraceJobNode::part_of`). None: it is.
pub fn invalid_part(job: &TraceJob, part: &TraceJobNode) -> Option<String> {
    let job_name = job.name_any();
    let node = &part.spec.node_name;
    let name = part.name_any();
    if part.spec.trace_job != job_name {
        return Some(format!(
            "{name} is the part of TraceJob {}",
            part.spec.trace_job
        ));
    }
    if name != part_name(&job_name, node) {
        return Some(format!(
            "{name} is not named {}",
            part_name(&job_name, node)
        ));
    }
    match written_for(part, job, node) {
        Written::Yes => None,
        Written::NotLabelled => Some(format!("{name} is not labelled with its TraceJob and node")),
        Written::NotOwned => Some(format!(
            "{name} does not have this TraceJob as its one (controller) owner"
        )),
    }
}

/// Whether an object (a part, or a node's output) is as `node`'s agent writes it for `job`.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    Yes,
    /// Not labelled with the TraceJob's name and the node.
    NotLabelled,
    /// Its owners are not exactly the TraceJob, as controller, by UID.
    NotOwned,
}

/// Whether `object` is labelled with `job`'s name and `node`, and owned by `job` alone (its
/// controller, by UID): what every object a node's agent writes for a fan-out carries.
pub fn written_for<K: ResourceExt>(object: &K, job: &TraceJob, node: &str) -> Written {
    let job_name = job.name_any();
    let labels = object.labels();
    if labels.get(Label::TraceJob.as_str()) != Some(&job_name)
        || labels.get(Label::Node.as_str()).map(String::as_str) != Some(node)
    {
        return Written::NotLabelled;
    }
    match object.owner_references() {
        [o] if o.controller == Some(true)
            && o.kind == TraceJob::kind(&())
            && o.name == job_name
            && job.uid().is_some_and(|uid| o.uid == uid) =>
        {
            Written::Yes
        }
        _ => Written::NotOwned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_name_one_tracejob_and_one_node() {
        assert_eq!(part_name("biolat", "node-1"), "biolat.node-1");
        // Names of fan-outs have no dot: `a` on `b-c` and `a-b` on `c` differ.
        assert_ne!(part_name("a", "b-c"), part_name("a-b", "c"));
        assert_ne!(part_name("a", "b.c"), part_name("a", "b-c"));
        assert!(part_name(&"t".repeat(63), &"n".repeat(63)).len() <= 253);
    }

    #[test]
    fn only_label_values_join_fan_outs() {
        for ok in ["n1", "node-1.example.com", "a_b", &"n".repeat(63)] {
            assert!(joinable(ok), "{ok}");
        }
        for bad in ["", &"n".repeat(64), "-n", "n.", "n/1", "n:1"] {
            assert!(!joinable(bad), "{bad}");
        }
    }

    #[test]
    fn parts_other_than_their_agents_are_invalid() {
        let mut job = crate::resource::example();
        job.metadata.namespace = Some("ns".into());
        job.metadata.uid = Some("u1".into());
        let part = TraceJobNode::part_of(&job, "n1");
        assert_eq!(invalid_part(&job, &part), None);
        let mut renamed = part.clone();
        renamed.metadata.name = Some("t-n2".into());
        assert!(invalid_part(&job, &renamed).is_some());
        let mut two_owners = part.clone();
        let mut other = controller(&job);
        other.controller = None;
        other.uid = "u2".into();
        two_owners
            .metadata
            .owner_references
            .as_mut()
            .expect("owners")
            .push(other);
        assert!(invalid_part(&job, &two_owners).is_some());
        let mut stale = part.clone();
        stale.metadata.owner_references.as_mut().expect("owners")[0].uid = "u0".into();
        assert!(invalid_part(&job, &stale).is_some());
        let mut relabelled = part.clone();
        relabelled
            .metadata
            .labels
            .as_mut()
            .expect("labels")
            .insert(Label::Node.as_str().into(), "n2".into());
        assert!(invalid_part(&job, &relabelled).is_some());
        let mut other_job = part;
        other_job.spec.trace_job = "u".into();
        assert!(invalid_part(&job, &other_job).is_some());
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
