//! The plugin's command line, in kubectl's conventions.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-tracejob",
    bin_name = "kubectl tracejob",
    version,
    about = "Run bpftrace on a node or in a pod's container, and read what it printed",
    after_help = "Exit codes: 0 done; 1 the trace failed (bpftrace's error on stderr); 2 usage error;\n3 the cluster could not be reached, refused, or has no such TraceJob; 130 left with a second\nCtrl-C while the trace was stopping."
)]
pub struct Cli {
    /// Path to the kubeconfig file to use.
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The name of the kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum)]
    pub output: Option<Format>,
    /// Write what came from a trace or the cluster as it is, control bytes and all (by default
    /// they are shown escaped, as \x1b, on stdout and stderr, terminal or pipe, so a traced
    /// process cannot drive your terminal).
    #[arg(long, global = true)]
    pub raw: bool,
    /// Largest output the plugin expands from a compressed ConfigMap, in bytes (it refuses,
    /// with an error, rather than use more memory).
    #[arg(long, global = true, default_value_t = crate::output::read::DEFAULT_EXPANDED_LIMIT)]
    pub max_output_bytes: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Json,
    Yaml,
    Name,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a program on a node or in a pod's container; Ctrl-C stops it and prints its output.
    Run(Box<RunArgs>),
    /// List TraceJobs, or show one.
    Get {
        /// A TraceJob's name.
        name: Option<String>,
        /// Only the TraceJobs this TraceTrigger made (by their observe.tracejob.dev/trigger
        /// label).
        #[arg(long, conflicts_with = "name")]
        trigger: Option<String>,
    },
    /// Stop a trace: bpftrace prints its maps, and they are stored.
    Stop {
        /// The TraceJob's name.
        name: String,
    },
    /// Print a trace's output as bpftrace printed it (-o json: its maps).
    Output {
        /// The TraceJob's name.
        name: String,
        /// For a TraceJob on several nodes: each node's output apart, not merged.
        #[arg(long)]
        per_node: bool,
        /// Draw the first map keyed by a stack (kstack, ustack, alone or with other key parts)
        /// as a flame graph, SVG on stdout; a TraceJob on several nodes: their stacks added.
        #[arg(long, conflicts_with = "per_node")]
        flamegraph: bool,
    },
    /// Print a running trace's newest output (-f: and what it prints next, until it ends).
    Logs {
        /// The TraceJob's name.
        name: String,
        /// Follow the output until the trace ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Delete a TraceJob (and its output).
    Delete {
        /// The TraceJob's name.
        name: String,
    },
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Where: node/NAME, pod/NAME (a pod of the namespace; its node runs the trace), or nodes
    /// with -l SELECTOR (every node whose labels match).
    pub what: String,
    /// With `nodes`: the nodes' label selector (the syntax of `kubectl get -l`).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// The pod's container, when it has several.
    #[arg(short, long)]
    pub container: Option<String>,
    /// The program.
    #[arg(short, long, conflicts_with = "file")]
    pub expression: Option<String>,
    /// A file holding the program.
    #[arg(short, long)]
    pub file: Option<PathBuf>,
    /// How long the trace may run (30s, 5m, 1h); then it stops as if interrupted.
    #[arg(long)]
    pub deadline: Option<humantime::Duration>,
    /// How long bpftrace gets to print its maps once stopped.
    #[arg(long)]
    pub grace: Option<humantime::Duration>,
    /// The TraceJob's name (default: generated, trace-XXXXX).
    #[arg(long)]
    pub name: Option<String>,
    /// Return once the trace runs, printing its name.
    #[arg(long)]
    pub detach: bool,
    /// Positional parameters of the program ($1, $2, ...).
    #[arg(last = true)]
    pub args: Vec<String>,
}
