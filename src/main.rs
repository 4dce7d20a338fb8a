use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracejob_agent::config::{Config, LogFormat};
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
    Run(Box<Config>),
    /// Print the TraceJob CustomResourceDefinition as YAML.
    Crd,
    /// Supervise one bpftrace run (started by the agent, one per trace).
    #[command(hide = true)]
    Shim(tracejob_agent::host::shim::ShimArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match tracejob_agent::resource::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tracejob-agent: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Shim(args) => tracejob_agent::host::shim::run(args),
        Command::Run(config) => run(*config),
    }
}

fn run(config: Config) -> ExitCode {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match config.log_format {
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
    match runtime.block_on(tracejob_agent::agent::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tracejob-agent failed");
            ExitCode::FAILURE
        }
    }
}
