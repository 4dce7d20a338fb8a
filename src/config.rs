//! The agent's one configuration: its command-line flags (and the environment the DaemonSet sets).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;

use crate::cluster::handover::PodRef;
use crate::decide::scope::Unannotated;

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
    /// and the TraceJob says how much.
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    pub max_output_bytes: u64,

    /// Seconds a started bpftrace may take to attach its probes before it is stopped and the
    /// TraceJob fails.
    #[arg(long, default_value_t = 60)]
    pub start_timeout: u64,

    /// Seconds a TraceJob's target container may take to be running before the TraceJob fails.
    #[arg(long, default_value_t = 120)]
    pub target_timeout: u64,

    /// Seconds between copies of a running trace's newest output into its ConfigMap; 0 turns
    /// live output off.
    #[arg(long, default_value_t = 5)]
    pub live_interval: u64,

    /// Bytes of the newest output each live copy holds.
    #[arg(long, default_value_t = 64 * 1024)]
    pub live_window_bytes: u64,

    /// Bytes of live output this node's agent may write to the API server per minute, for all
    /// its traces together; copies wait while the budget is spent.
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    pub live_budget_bytes_per_minute: u64,

    /// How many finished runs are read, parsed and compressed at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_collections: u16,

    /// What namespaces without the `observe.tracejob.dev/node-selector` annotation may trace:
    /// every node but control-plane nodes (allow), or nothing (deny).
    #[arg(long, value_enum, default_value = "allow")]
    pub unannotated_namespaces: Unannotated,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "LISTEN_ADDRESS", default_value = "0.0.0.0:9469")]
    pub listen: SocketAddr,

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

    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log level filter (RUST_LOG syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    pub fn live_interval(&self) -> Option<Duration> {
        (self.live_interval > 0).then(|| Duration::from_secs(self.live_interval))
    }

    pub fn start_timeout(&self) -> Duration {
        Duration::from_secs(self.start_timeout)
    }

    pub fn target_timeout(&self) -> Duration {
        Duration::from_secs(self.target_timeout)
    }

    pub fn pod(&self) -> Option<PodRef> {
        Some(PodRef {
            name: self.pod_name.clone()?,
            namespace: self.pod_namespace.clone()?,
        })
    }
}
