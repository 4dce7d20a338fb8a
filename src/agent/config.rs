//! The agent's one configuration: its command-line flags (and the environment the DaemonSet sets).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::handover::PodRef;
use crate::decide::scope::{self, Unannotated};
use crate::output::fit::CONFIGMAP_BUDGET;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
/// A day, the longest timeout that makes sense for a start or a pod to appear.
const DAY: u64 = 24 * 3600;

#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// The node this agent serves; the DaemonSet sets NODE_NAME from the downward API.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// Where programs, bpftrace output and run records are kept (a hostPath in the DaemonSet).
    #[arg(long, default_value = "/var/lib/tracejob-agent")]
    pub state_dir: PathBuf,

    /// The bpftrace command.
    #[arg(long, default_value = "bpftrace")]
    pub bpftrace: PathBuf,

    /// Bytes of bpftrace's stdout kept on disk per run, at most. A trace is stopped (SIGINT) once
    /// it has printed all but the last quarter (at most 8 MiB) of this; that last part keeps the
    /// newest output, the maps printed at the end among it. What is printed beyond is dropped,
    /// and the TraceJob says how much. 64 KiB to 64 GiB.
    #[arg(long, default_value_t = 32 * MIB, value_parser = clap::value_parser!(u64).range(64 * KIB..=64 * GIB))]
    pub max_output_bytes: u64,

    /// Seconds a started bpftrace may take to attach its probes before it is stopped and the
    /// TraceJob fails. 1 to 86400 (a day).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=DAY))]
    pub start_timeout: u64,

    /// Seconds a TraceJob's target container may take to be running before the TraceJob fails.
    /// 1 to 86400 (a day).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=DAY))]
    pub target_timeout: u64,

    /// Seconds after its creation a TraceJob may wait for what this agent's watches must bring
    /// before it can be decided (this node's Node object, its namespace) before it fails with
    /// NodeUnknown or NamespaceUnknown; from 2 s of waiting its status says what it waits for.
    /// 5 to 86400.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(5..=DAY))]
    pub wait_timeout: u64,

    /// Seconds between copies of a running trace's newest output into its ConfigMap; 0 turns
    /// live output off. At most 3600.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub live_interval: u64,

    /// Bytes of the newest output each live copy holds: 1 KiB to what fits a ConfigMap
    /// (1024000), and at most --max-output-bytes.
    #[arg(long, default_value_t = 64 * KIB, value_parser = clap::value_parser!(u64).range(KIB..=CONFIGMAP_BUDGET))]
    pub live_window_bytes: u64,

    /// Bytes of live output this node's agent may write to the API server per minute, for all
    /// its traces together; copies wait while the budget is spent. 1 KiB to 1 GiB.
    #[arg(long, default_value_t = 2 * MIB, value_parser = clap::value_parser!(u64).range(KIB..=GIB))]
    pub live_budget_bytes_per_minute: u64,

    /// Traces this node runs at once, at most; a TraceJob beyond waits Pending (condition
    /// Waiting, reason MaxRunningTraces) and starts when one ends.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_running_traces: u32,

    /// Traces of one namespace this node runs at once, at most (at most --max-running-traces);
    /// a TraceJob beyond waits Pending (condition Waiting, reason
    /// MaxRunningTracesPerNamespace) and starts when one of its namespace's traces ends. Default:
    /// a quarter of --max-running-traces (8 of 32), so one namespace cannot take all of a node.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_running_traces_per_namespace: Option<u32>,

    /// Memory all traces together may use (their cgroup's memory.max, or the v1
    /// memory.limit_in_bytes), in bytes; needs --host-cgroup-root.
    #[arg(long, default_value_t = 4 * 1024 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(64 * 1024 * 1024..))]
    pub traces_memory_max: u64,

    /// Processes and threads all traces together may have (their cgroup's pids.max); needs
    /// --host-cgroup-root. 16 to 4194304 (the kernel's limit).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(16..=4_194_304))]
    pub traces_pids_max: u64,

    /// How many finished runs are read, parsed and compressed at once. 1 to 64.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_concurrent_collections: u16,

    /// What namespaces without the `observe.tracejob.dev/node-selector` annotation may trace:
    /// nothing (deny), or every node but protected nodes (allow).
    #[arg(long, value_enum, default_value = "deny")]
    pub unannotated_namespaces: Unannotated,

    /// The labels that make a node protected (comma-separated keys): a node with any of them
    /// runs TraceJobs only from namespaces whose `observe.tracejob.dev/node-selector` names one
    /// of its protected labels. Empty: no node is protected.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = scope::protected_label,
        default_value = "node-role.kubernetes.io/control-plane,node-role.kubernetes.io/master,node-role.kubernetes.io/etcd,node-role.kubernetes.io/controlplane"
    )]
    pub protected_node_labels: Vec<String>,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "LISTEN_ADDRESS", default_value = "0.0.0.0:9469")]
    pub listen: SocketAddr,

    /// Address of the traces' own metrics (TraceJobs' spec.metrics), served apart from the
    /// agent's /metrics so that trace data never slows it.
    #[arg(long, env = "TRACE_METRICS_LISTEN", default_value = "0.0.0.0:9472")]
    pub trace_metrics_listen: SocketAddr,

    /// The host's /sys/fs/cgroup as mounted in the agent's container. Each trace moves into a
    /// `tracejob-traces` cgroup there, so it outlives the agent's container and the next agent
    /// takes it over. Unset: traces stay in the agent's cgroup.
    #[arg(long)]
    pub host_cgroup_root: Option<PathBuf>,

    /// The agent's pod (the DaemonSet sets it from the downward API). On exit, the agent stops
    /// its traces only if its DaemonSet is gone: nothing would take them over.
    #[arg(long, env = "POD_NAME", requires = "pod_namespace")]
    pub pod_name: Option<String>,

    /// The agent pod's namespace.
    #[arg(long, env = "POD_NAMESPACE", requires = "pod_name")]
    pub pod_namespace: Option<String>,

    #[command(flatten)]
    pub logs: crate::serve::Logs,
}

/// Flags that are each in range but do not go together.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(String);

impl Config {
    /// The checks across flags, made once at start (each flag's own range is its parser's):
    /// an agent with flags that cannot work exits at once saying why, instead of failing every
    /// trace later.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.node_name.trim().is_empty() {
            return Err(Invalid(
                "--node-name (or NODE_NAME) is empty: the agent must know its node".into(),
            ));
        }
        if let Some(per) = self.max_running_traces_per_namespace {
            if per > self.max_running_traces {
                return Err(Invalid(format!(
                    "--max-running-traces-per-namespace {per} is more than --max-running-traces {}: a namespace cannot run more traces than the node",
                    self.max_running_traces
                )));
            }
        }
        if self.live_interval > 0 && self.live_window_bytes > self.max_output_bytes {
            return Err(Invalid(format!(
                "--live-window-bytes {} is more than --max-output-bytes {}: a live copy cannot hold more than the node keeps of a trace's output",
                self.live_window_bytes, self.max_output_bytes
            )));
        }
        Ok(())
    }

    /// Traces of one namespace a node runs at once (`--max-running-traces-per-namespace`).
    pub fn per_namespace_traces(&self) -> u32 {
        self.max_running_traces_per_namespace
            .unwrap_or((self.max_running_traces / 4).max(1))
    }

    pub fn live_interval(&self) -> Option<Duration> {
        (self.live_interval > 0).then(|| Duration::from_secs(self.live_interval))
    }

    pub fn start_timeout(&self) -> Duration {
        Duration::from_secs(self.start_timeout)
    }

    pub fn target_timeout(&self) -> Duration {
        Duration::from_secs(self.target_timeout)
    }

    pub fn wait_timeout(&self) -> Duration {
        Duration::from_secs(self.wait_timeout)
    }

    pub fn pod(&self) -> Option<PodRef> {
        Some(PodRef {
            name: self.pod_name.clone()?,
            namespace: self.pod_namespace.clone()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let argv = ["tracejob-agent", "--node-name", "n"].iter().chain(args);
        Cli::try_parse_from(argv).map(|c| c.config)
    }

    #[test]
    fn namespaces_are_denied_by_default_and_protected_labels_are_configurable() {
        let c = parse(&[]).expect("defaults");
        assert_eq!(c.unannotated_namespaces, Unannotated::Deny);
        assert_eq!(c.protected_node_labels, scope::PROTECTED_LABELS);
        let c = parse(&[
            "--protected-node-labels",
            "example.com/secure, node-role.kubernetes.io/etcd",
        ])
        .expect("two labels");
        assert_eq!(
            c.protected_node_labels,
            ["example.com/secure", "node-role.kubernetes.io/etcd"]
        );
        let c = parse(&["--protected-node-labels="]).expect("none");
        assert!(c.protected_node_labels.iter().all(String::is_empty));
        assert!(parse(&["--protected-node-labels", "not a key"]).is_err());
        let c = parse(&["--unannotated-namespaces", "allow"]).expect("allow");
        assert_eq!(c.unannotated_namespaces, Unannotated::Allow);
    }

    /// The error of a flag out of range, as clap prints it.
    fn refused(args: &[&str]) -> String {
        match parse(args) {
            Ok(c) => panic!("{args:?} was accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_defaults_are_valid() {
        let c = parse(&[]).expect("defaults");
        c.validate().expect("valid defaults");
        assert_eq!(c.max_output_bytes, 32 * MIB);
        assert_eq!(c.live_window_bytes, 64 * KIB);
    }

    #[test]
    fn numeric_flags_out_of_range_are_refused_naming_the_flag_and_range() {
        let e = refused(&["--max-output-bytes", "0"]);
        assert!(
            e.contains("--max-output-bytes") && e.contains("65536..="),
            "{e}"
        );
        parse(&["--max-output-bytes", "65536"]).expect("the least");
        let e = refused(&["--live-window-bytes", "1048576"]);
        assert!(
            e.contains("--live-window-bytes") && e.contains("1024..=1024000"),
            "{e}"
        );
        parse(&["--live-window-bytes", &CONFIGMAP_BUDGET.to_string()]).expect("the most");
        for (flag, bad) in [
            ("--start-timeout", "0"),
            ("--start-timeout", "86401"),
            ("--target-timeout", "0"),
            ("--live-interval", "3601"),
            ("--live-window-bytes", "0"),
            ("--live-budget-bytes-per-minute", "0"),
            ("--live-budget-bytes-per-minute", "2000000000"),
            ("--max-running-traces", "0"),
            ("--traces-memory-max", "1000"),
            ("--traces-pids-max", "1"),
            ("--traces-pids-max", "4194305"),
            ("--max-concurrent-collections", "0"),
            ("--max-concurrent-collections", "65"),
            ("--max-output-bytes", "1MiB"),
        ] {
            let e = refused(&[flag, bad]);
            assert!(e.contains(flag), "{flag} {bad}: {e}");
        }
        let c = parse(&["--live-interval", "0"]).expect("live output off");
        assert_eq!(c.live_interval(), None);
    }

    #[test]
    fn flags_that_do_not_go_together_are_refused_at_start() {
        let c = parse(&[
            "--max-output-bytes",
            "65536",
            "--live-window-bytes",
            "131072",
        ])
        .expect("each in range");
        let e = c
            .validate()
            .expect_err("a window over the output limit")
            .to_string();
        assert!(
            e.contains("--live-window-bytes 131072") && e.contains("--max-output-bytes 65536"),
            "{e}"
        );
        // Without live output the window does not matter.
        parse(&[
            "--max-output-bytes",
            "65536",
            "--live-window-bytes",
            "131072",
            "--live-interval",
            "0",
        ])
        .expect("parsed")
        .validate()
        .expect("live output off");
        let e = parse(&[
            "--max-running-traces",
            "4",
            "--max-running-traces-per-namespace",
            "5",
        ])
        .expect("each in range")
        .validate()
        .expect_err("a namespace's share over the node's")
        .to_string();
        assert!(e.contains("--max-running-traces-per-namespace 5"), "{e}");
        let c = parse(&["--max-running-traces", "4"]).expect("parsed");
        c.validate().expect("the default share follows the node's");
        assert_eq!(c.per_namespace_traces(), 1);
        assert_eq!(parse(&[]).expect("defaults").per_namespace_traces(), 8);
        let mut c = parse(&[]).expect("defaults");
        c.node_name = " ".into();
        let e = c.validate().expect_err("no node").to_string();
        assert!(e.contains("--node-name"), "{e}");
    }
}
