use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracejob_agent::handover::PodRef;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "tracejob-agent",
    version,
    about = "Runs the bpftrace programs of TraceJobs on this node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent for one node (the DaemonSet's command).
    Run(Box<RunArgs>),
    /// Print the TraceJob CustomResourceDefinition as YAML.
    Crd {
        /// Declare spec.nodeName a selectable field (Kubernetes 1.31+; older servers reject it).
        #[arg(long)]
        selectable_fields: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The node this agent serves; the DaemonSet sets NODE_NAME from the downward API.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Where programs, bpftrace output and job records are kept (a hostPath in the DaemonSet).
    #[arg(long, default_value = "/var/lib/tracejob-agent")]
    state_dir: PathBuf,
    /// The bpftrace command.
    #[arg(long, default_value = "bpftrace")]
    bpftrace: PathBuf,
    /// Bytes of bpftrace output kept on disk per job; a trace that prints more is stopped (its
    /// maps are still collected), so a printf in a hot probe cannot fill the node's disk.
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    max_output_bytes: u64,
    /// Seconds between copies of a running trace's output into its ConfigMap (only when it
    /// changed); 0 turns live output off.
    #[arg(long, default_value_t = 5)]
    live_interval: u64,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "LISTEN_ADDRESS", default_value = "0.0.0.0:9469")]
    listen: std::net::SocketAddr,
    /// The host's /sys/fs/cgroup as mounted in the agent's container. Each bpftrace moves into
    /// a `tracejob-traces` cgroup there, so traces outlive the agent's container and the next
    /// agent takes them over. Unset: bpftrace stays in the agent's cgroup.
    #[arg(long)]
    host_cgroup_root: Option<PathBuf>,
    /// The agent's pod and its namespace (the DaemonSet sets them from the downward API). On
    /// exit, the agent stops its traces only if its DaemonSet is gone: nothing would take
    /// them over.
    #[arg(long, env = "POD_NAME", requires = "pod_namespace")]
    pod_name: Option<String>,
    #[arg(long, env = "POD_NAMESPACE", requires = "pod_name")]
    pod_namespace: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level filter (RUST_LOG syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { selectable_fields } => {
            match tracejob_agent::crd::crd_yaml(selectable_fields) {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tracejob-agent: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => run(*args),
    }
}

fn run(args: RunArgs) -> ExitCode {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&args.log_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tracejob-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let config = tracejob_agent::agent::Config {
            node: args.node_name,
            bpftrace: args.bpftrace,
            state_dir: args.state_dir,
            max_output_bytes: args.max_output_bytes,
            listen: args.listen,
            live_interval: (args.live_interval > 0)
                .then(|| std::time::Duration::from_secs(args.live_interval)),
            pod: args
                .pod_name
                .zip(args.pod_namespace)
                .map(|(name, namespace)| PodRef { namespace, name }),
            host_cgroup_root: args.host_cgroup_root,
        };
        tracejob_agent::agent::run(config).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tracejob-agent failed");
            ExitCode::FAILURE
        }
    }
}
