//! `TraceTrigger`: which Prometheus alerts start a trace, where it runs and within which limits.
//! The trigger receiver (`tracejob-agent trigger-receiver`, called by Alertmanager's webhook)
//! creates an ordinary TraceJob for each alert that matches, in the trigger's namespace, owned by
//! the trigger: the namespace's node scope still decides where it may run.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Alerts (by Alertmanager's label matchers) that start a bpftrace TraceJob on the node or pod
/// the alert names.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "observe.tracejob.dev",
    version = "v1alpha1",
    kind = "TraceTrigger",
    plural = "tracetriggers",
    shortname = "tt",
    namespaced,
    status = "TraceTriggerStatus",
    doc = "TraceTrigger starts a TraceJob, in its namespace, when an alert that Alertmanager sends to the trigger receiver matches it.",
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target.kind"),
    printcolumn(
        name = "Created",
        type_ = "integer",
        json_path = ".status.tracesCreated"
    ),
    printcolumn(
        name = "Suppressed",
        type_ = "integer",
        json_path = ".status.suppressedTotal"
    ),
    printcolumn(name = "Last Fired", type_ = "date", json_path = ".status.lastFired"),
    printcolumn(
        name = "Error",
        type_ = "string",
        json_path = ".status.lastError",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TraceTriggerSpec {
    /// Alertmanager label matchers, all of which an alert must match: `alertname="HighIOLatency"`,
    /// `severity=~"page|critical"`, `job!="test"`, `instance!~"10\\..*"` (regexes anchored at
    /// both ends, as Alertmanager anchors them).
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 1024)))]
    pub matchers: Vec<String>,

    /// Where the trace runs: the node (default) or the pod the alert's labels name.
    #[serde(default)]
    pub target: TriggerTarget,

    /// The TraceJob to create.
    pub trace: TraceTemplate,

    /// How many traces the trigger may start.
    #[serde(default)]
    pub limits: TriggerLimits,
}

/// What the trace runs on.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum TargetKind {
    /// The node an alert label names (spec.nodeName of the TraceJob).
    #[default]
    Node,
    /// The pod the alert's namespace and pod labels name (spec.target of the TraceJob); the
    /// namespace must be the trigger's.
    Pod,
}

/// Which alert labels name the trace's node or pod.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerTarget {
    /// Node (default) or Pod. (Not `on`: YAML 1.1, as kubectl reads it, takes `on` for true.)
    #[serde(default)]
    pub kind: TargetKind,
    /// For Node: the label naming the node (default `node`); without it, the `instance` label
    /// with any port removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_label: Option<String>,
    /// For Pod: the label naming the pod (default `pod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_label: Option<String>,
    /// The label naming the alert's namespace (default `namespace`): a Pod's namespace; for
    /// either kind, an alert naming another namespace than the trigger's starts nothing unless
    /// that namespace's `observe.tracejob.dev/alert-namespaces` annotation allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_label: Option<String>,
    /// For Pod: the label naming the container (default `container`; left out when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_label: Option<String>,
}

/// The TraceJob a trigger creates: a program (or a sample's name), arguments, and a deadline,
/// which is required so that every triggered trace ends by itself.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.program) != has(self.sample)").message("give spec.trace.program or spec.trace.sample, not both"))]
#[serde(rename_all = "camelCase")]
pub struct TraceTemplate {
    /// The bpftrace program text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    pub program: Option<String>,
    /// A sample of bpf-samples/ by name: biolatency, syscount, rwsize, runqlat, podsyscount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(biolatency|syscount|rwsize|runqlat|podsyscount)$"))]
    pub sample: Option<String>,
    /// Positional parameters: $1, $2, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub args: Vec<String>,
    /// Seconds the trace runs (from Running) before it stops itself; required.
    #[schemars(range(min = 1, max = 2592000))]
    pub deadline: i64,
    /// Seconds bpftrace gets after SIGINT to print its maps (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub deadline_grace_period: Option<i64>,
    /// Export the trace's maps as Prometheus metrics while it runs (a TraceJob's spec.metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<crate::resource::MetricsSpec>,
}

/// A trigger's limits.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerLimits {
    /// Seconds after a trace on a target during which that target gets no other (default 600).
    #[serde(default = "default_cooldown")]
    #[schemars(range(min = 0, max = 604800))]
    pub cooldown_seconds: i64,
    /// Most of this trigger's traces not yet ended at once (default 3).
    #[serde(default = "default_max_running")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_running: i64,
    /// Most traces this trigger starts in any hour (default 10).
    #[serde(default = "default_max_per_hour")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_per_hour: i64,
}

impl Default for TriggerLimits {
    fn default() -> Self {
        TriggerLimits {
            cooldown_seconds: default_cooldown(),
            max_running: default_max_running(),
            max_per_hour: default_max_per_hour(),
        }
    }
}

fn default_cooldown() -> i64 {
    600
}
fn default_max_running() -> i64 {
    3
}
fn default_max_per_hour() -> i64 {
    10
}

/// What the receiver has done for this trigger.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TraceTriggerStatus {
    /// When an alert last matched (whether a trace was started or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired: Option<Time>,
    /// TraceJobs created, in all.
    #[serde(default)]
    pub traces_created: i64,
    /// The TraceJob created last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trace: Option<String>,
    /// Matching alerts that started no trace, by reason: Cooldown, MaxRunning, MaxPerHour,
    /// NoTarget (no label names the node or pod), OtherNamespace (the alert names another
    /// namespace than the trigger's, one its Namespace's alert-namespaces does not allow).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub suppressed: BTreeMap<String, i64>,
    /// The sum of suppressed (the Suppressed column).
    #[serde(default)]
    pub suppressed_total: i64,
    /// The last error: an invalid matcher, or a TraceJob the API server refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The metadata.generation of the spec this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The program of a sample in bpf-samples/, by name.
pub fn sample_program(name: &str) -> Option<&'static str> {
    Some(match name {
        "biolatency" => include_str!("../../bpf-samples/biolatency.bt"),
        "syscount" => include_str!("../../bpf-samples/syscount.bt"),
        "rwsize" => include_str!("../../bpf-samples/rwsize.bt"),
        "runqlat" => include_str!("../../bpf-samples/runqlat.bt"),
        "podsyscount" => include_str!("../../bpf-samples/podsyscount.bt"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_the_schema_allows_exists() {
        for s in ["biolatency", "syscount", "rwsize", "runqlat", "podsyscount"] {
            assert!(sample_program(s).is_some_and(|p| !p.is_empty()), "{s}");
        }
        assert!(sample_program("nope").is_none());
    }

    #[test]
    fn defaults() {
        let spec: TraceTriggerSpec = serde_json::from_value(serde_json::json!({
            "matchers": ["alertname=\"X\""], "trace": {"sample": "biolatency", "deadline": 30}
        }))
        .expect("parses");
        assert_eq!(spec.target.kind, TargetKind::Node);
        assert_eq!(spec.limits.cooldown_seconds, 600);
        assert_eq!(spec.limits.max_running, 3);
        assert_eq!(spec.limits.max_per_hour, 10);
    }
}
