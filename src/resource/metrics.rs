//! `spec.metrics`: a running trace's maps exported as Prometheus metrics (on the agent's
//! `--trace-metrics-listen` endpoint), for a TraceJob and a TraceTrigger's trace template.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Labels every exported series carries, which a key part may therefore not be named.
pub const RESERVED_LABELS: [&str; 4] = ["le", "tracejob_namespace", "tracejob", "node"];

/// Which maps to export, how often, and how to name their keys' parts and histograms' units.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.labels) || self.labels.all(l, !(l in ['le', 'tracejob_namespace', 'tracejob', 'node']))").message("spec.metrics.labels: le, tracejob_namespace, tracejob and node are set by the agent; name the key's parts otherwise").field_path(".labels"))]
#[x_kube(validation = Rule::new("has(self.histogramUnit) || !has(self.histogramScale) || self.histogramScale == 1").message("spec.metrics.histogramScale needs spec.metrics.histogramUnit: the unit the scaled values are in (seconds)").field_path(".histogramScale"))]
pub struct MetricsSpec {
    /// The maps to export, by name with their `@` (`@usecs`); empty: every map of the program.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = r"^@[A-Za-z_0-9]*$")))]
    pub maps: Vec<String>,

    /// Seconds between reads of the maps (1 to 3600, default 15). Each read has bpftrace print
    /// the maps (`print()`), which pauses its event processing while it does.
    #[serde(default = "default_interval")]
    #[schemars(range(min = 1, max = 3600), default = "default_interval")]
    pub interval_seconds: i64,

    /// Label names for the parts of a map's key, in order: `[comm, dev]` for `@[comm, dev]`.
    /// Empty: the whole key in one label, `key`. A key whose parts do not match in number is
    /// put whole into the first label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(regex(pattern = r"^[a-zA-Z_][a-zA-Z0-9_]*$")))]
    pub labels: Vec<String>,

    /// The unit of the histograms' values once divided by histogramScale, as Prometheus names
    /// units (`seconds`, `bytes`): the metric's name ends in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]*$"), length(max = 32))]
    pub histogram_unit: Option<String>,

    /// What the histograms' bucket bounds are divided by: 1000000 for a histogram of
    /// microseconds exported in seconds (default 1).
    #[serde(default = "default_scale")]
    #[schemars(range(min = 1, max = 1000000000000_i64), default = "default_scale")]
    pub histogram_scale: i64,

    /// Most series this trace exports (1 to 100000, default 1000). Past it the largest values
    /// are kept; the rest are counted in tracejob_trace_metrics_dropped_series and the
    /// TraceJob's MetricsCapped condition.
    #[serde(default = "default_max_series")]
    #[schemars(range(min = 1, max = 100000), default = "default_max_series")]
    pub max_series: i64,
}

impl Default for MetricsSpec {
    fn default() -> Self {
        MetricsSpec {
            maps: Vec::new(),
            interval_seconds: default_interval(),
            labels: Vec::new(),
            histogram_unit: None,
            histogram_scale: default_scale(),
            max_series: default_max_series(),
        }
    }
}

fn default_interval() -> i64 {
    15
}
fn default_scale() -> i64 {
    1
}
fn default_max_series() -> i64 {
    1000
}
