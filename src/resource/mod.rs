//! The TraceJob API (`observe.tracejob.dev/v1alpha1`). This contract is fixed: other tools read it.

pub mod crd;
pub mod metrics;
pub mod node;
pub mod trigger;
pub mod vocabulary;

pub use metrics::MetricsSpec;
pub use node::{TraceJobNode, TraceJobNodeSpec, TraceJobNodeStatus};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Largest program the API server accepts, in bytes.
pub const MAX_PROGRAM_BYTES: u32 = 64 * 1024;
/// Longest `spec.deadline` the API server accepts: 30 days.
pub const MAX_DEADLINE_SECONDS: i64 = 30 * 24 * 3600;
/// Longest `spec.deadlineGracePeriod` the API server accepts: one hour.
pub const MAX_GRACE_SECONDS: i64 = 3600;

/// A bpftrace program to run on one node until it is stopped, ends itself, or reaches its deadline.
// Several printer columns share `type_ = "string"`; clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "observe.tracejob.dev",
    version = "v1alpha1",
    kind = "TraceJob",
    plural = "tracejobs",
    shortname = "tj",
    namespaced,
    status = "TraceJobStatus",
    doc = "TraceJob runs a bpftrace program on one node; when it stops, the maps bpftrace printed are written to a ConfigMap named by status.outputRef.",
    printcolumn(name = "Node", type_ = "string", json_path = ".status.nodeName"),
    printcolumn(name = "Nodes", type_ = "string", json_path = ".status.progress"),
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
    // Each agent's watch asks the API server for its own node's TraceJobs only.
    selectable = ".spec.nodeName",
    // A fan-out's name is a label value on its parts and outputs, and the first half of its parts'
    // names (TRACEJOB.NODE, `node::part_name`): checked at creation (neither can change after),
    // so a fan-out created before this rule is still written.
    validation = Rule::new("oldSelf.hasValue() || !has(self.spec.nodeSelector) || (size(self.metadata.name) <= 63 && !self.metadata.name.contains('.'))").message("a TraceJob with spec.nodeSelector is named with at most 63 characters and no dot: its name labels its nodes' parts and outputs, and its parts are named NAME.NODE").optional_old_self(true)
)]
#[x_kube(validation = Rule::new("has(self.nodeName) || has(self.nodeSelector) || has(self.target)").message("spec.nodeName, spec.nodeSelector or spec.target must be given: where the trace runs"))]
#[x_kube(validation = Rule::new("!has(self.nodeSelector) || (has(self.nodeSelector.matchLabels) && size(self.nodeSelector.matchLabels) > 0) || (has(self.nodeSelector.matchExpressions) && size(self.nodeSelector.matchExpressions) > 0)").message("spec.nodeSelector must select something: at least one label or expression (an empty selector would select every node)").field_path(".nodeSelector"))]
#[x_kube(validation = Rule::new("!(has(self.nodeName) && has(self.nodeSelector))").message("give spec.nodeName or spec.nodeSelector, not both"))]
#[x_kube(validation = Rule::new("!(has(self.target) && has(self.nodeSelector))").message("spec.target runs on its pod's node: it takes no spec.nodeSelector"))]
// What runs where is fixed at creation: a change would make status and output describe a trace
// that never ran.
#[x_kube(validation = Rule::new("has(self.nodeName) == has(oldSelf.nodeName) && (!has(self.nodeName) || self.nodeName == oldSelf.nodeName)").message("spec.nodeName cannot change once created; create a new TraceJob").field_path(".nodeName"))]
#[x_kube(validation = Rule::new("has(self.target) == has(oldSelf.target) && (!has(self.target) || self.target == oldSelf.target)").message("spec.target cannot change once created; create a new TraceJob").field_path(".target"))]
#[x_kube(validation = Rule::new("has(self.nodeSelector) == has(oldSelf.nodeSelector) && (!has(self.nodeSelector) || self.nodeSelector == oldSelf.nodeSelector)").message("spec.nodeSelector cannot change once created; create a new TraceJob").field_path(".nodeSelector"))]
#[x_kube(validation = Rule::new("self.program == oldSelf.program").message("spec.program cannot change once created; create a new TraceJob").field_path(".program"))]
#[x_kube(validation = Rule::new("has(self.args) == has(oldSelf.args) && (!has(self.args) || self.args == oldSelf.args)").message("spec.args cannot change once created; create a new TraceJob").field_path(".args"))]
#[x_kube(validation = Rule::new("has(self.metrics) == has(oldSelf.metrics) && (!has(self.metrics) || self.metrics == oldSelf.metrics)").message("spec.metrics cannot change once created; create a new TraceJob").field_path(".metrics"))]
#[serde(rename_all = "camelCase")]
pub struct TraceJobSpec {
    /// The node whose agent runs the trace. May be left out when spec.target names a pod: the
    /// agent of the pod's node then runs it (and says so in status.nodeName).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub node_name: Option<String>,

    /// Nodes by their labels, instead of spec.nodeName: the agent of every node that matches
    /// when it first sees the TraceJob (while it is not stopped) runs the trace and reports in a
    /// TraceJobNode of its own; status holds a summary and the merged output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// A pod (and container) the program is about. The agent fills in $container_pid (the
    /// container's main process, a host PID), $container_cgroup (its cgroup v2 id, for
    /// `cgroup == $container_cgroup`) and $container_root (its root as the node sees it, for
    /// `uprobe:$container_root/usr/bin/app:fn`), and stops the trace if the container restarts
    /// (reason TargetRestarted) or the pod goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,

    /// The bpftrace program text, at most 64 KiB. It runs as root on the node, without --unsafe.
    #[schemars(length(min = 1, max = 65536))]
    pub program: String,

    /// Positional parameters for the program: $1, $2, ... (at most 64, each at most 4096 bytes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub args: Vec<String>,

    /// Set to true to end the trace: bpftrace gets SIGINT, prints its maps, and they are collected.
    #[serde(default)]
    #[schemars(default = "default_false")]
    pub stop: bool,

    /// Seconds the trace may run, counted from Running (at most 30 days); once reached it is
    /// stopped as if stop were set.
    #[serde(default = "default_deadline")]
    #[schemars(range(min = 1, max = 2592000))]
    pub deadline: i64,

    /// Seconds bpftrace gets after SIGINT to print its maps before it is killed (at most 3600).
    #[serde(default = "default_grace")]
    #[schemars(range(min = 1, max = 3600))]
    pub deadline_grace_period: i64,

    /// Export the maps as Prometheus metrics while the trace runs, on the agent's
    /// --trace-metrics-listen endpoint (see MetricsSpec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSpec>,
}

/// A container of a pod in the TraceJob's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Target {
    /// The pod's name.
    #[schemars(length(min = 1, max = 253))]
    pub pod: String,
    /// The container's name; may be left out when the pod has one container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

fn default_false() -> bool {
    false
}
fn default_deadline() -> i64 {
    3600
}
fn default_grace() -> i64 {
    30
}

/// Where the run is: Pending, Running, Stopping, Completed or Failed (the last two are final).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Seen by the agent on its node; bpftrace is starting.
    Pending,
    /// bpftrace has attached its probes and is tracing.
    Running,
    /// bpftrace was sent SIGINT and is printing its maps.
    Stopping,
    /// bpftrace exited 0 and its output is in the ConfigMap.
    Completed,
    /// bpftrace could not run, exited non-zero or was killed; see message.
    Failed,
}

impl Phase {
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Names the ConfigMap, in the TraceJob's namespace, that holds the output.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct OutputRef {
    /// Name of the ConfigMap.
    pub name: String,
}

/// What the agent on the node has observed of this TraceJob.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TraceJobStatus {
    /// Pending, Running, Stopping, Completed or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// A UUID naming this run of the program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,

    /// The node whose agent runs the trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,

    /// Host PID of the bpftrace process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,

    /// Number of probes bpftrace attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<i64>,

    /// When bpftrace had attached its probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the run ended and its output was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// bpftrace's exit status; absent when it was killed by a signal or its status is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,

    /// Human-readable detail; on failure, bpftrace's own error text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// The ConfigMap holding the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_ref: Option<OutputRef>,

    /// The metadata.generation of the spec this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// For a TraceJob with spec.nodeSelector: how many of its nodes are in each phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_counts: Option<NodeCounts>,

    /// For a TraceJob with spec.nodeSelector: nodes that failed, with their reasons (at most 20;
    /// `kubectl get tjn -l observe.tracejob.dev/tracejob=NAME` lists every node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub failed_nodes: Vec<FailedNode>,

    /// For a TraceJob with spec.nodeSelector: how many nodes' outputs the merged output in
    /// outputRef holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_nodes: Option<i64>,

    /// For a TraceJob with spec.nodeSelector: nodes done of the nodes running it ("3/4").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,

    /// Standard conditions: Running, Completed and Failed, and OutputStored once output landed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// How many nodes of a fan-out TraceJob are in each phase.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    pub pending: i64,
    pub running: i64,
    pub stopping: i64,
    pub completed: i64,
    pub failed: i64,
}

/// A node on which a fan-out TraceJob failed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedNode {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Most failed nodes a fan-out TraceJob's status lists.
pub const MAX_FAILED_NODES: usize = 20;

impl TraceJob {
    /// The TraceJob as the agent of one node sees it: for a TraceJob with spec.nodeSelector, its
    /// status is that node's TraceJobNode's (none before the node has one); any other TraceJob is
    /// as it is.
    pub fn view_with(&self, part: Option<&TraceJobNode>) -> TraceJob {
        let mut view = self.clone();
        if self.spec.node_selector.is_none() {
            return view;
        }
        view.status = part
            .and_then(|p| p.status.as_ref())
            .map(|n| TraceJobStatus {
                phase: n.phase,
                id: n.id.clone(),
                node_name: part.map(|p| p.spec.node_name.clone()),
                pid: n.pid,
                probes: n.probes,
                start_time: n.start_time.clone(),
                completion_time: n.completion_time.clone(),
                exit_code: n.exit_code,
                message: n.message.clone(),
                output_ref: n.output_ref.clone(),
                ..Default::default()
            });
        view
    }

    pub fn phase(&self) -> Option<Phase> {
        self.status.as_ref().and_then(|s| s.phase)
    }

    pub fn run_id(&self) -> Option<&str> {
        self.status.as_ref().and_then(|s| s.id.as_deref())
    }
}

/// A TraceJob for unit tests: node `n`, deadline 10 s, grace period 2 s.
#[cfg(test)]
pub(crate) fn example() -> TraceJob {
    TraceJob::new(
        "t",
        TraceJobSpec {
            node_name: Some("n".into()),
            node_selector: None,
            target: None,
            program: "BEGIN {}".into(),
            args: vec![],
            stop: false,
            deadline: 10,
            deadline_grace_period: 2,
            metrics: None,
        },
    )
}
