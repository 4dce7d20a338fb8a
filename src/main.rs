use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
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

#[derive(clap::Args)]
struct Summarizer {
    #[command(flatten)]
    config: tracejob_agent::summarize::Config,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level filter (RUST_LOG syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent for one node (the DaemonSet's command).
    Run(Box<Config>),
    /// Keep the status and merged output of TraceJobs on several nodes (the summarizer
    /// Deployment's command; one replica is active at a time).
    Summarize(Box<Summarizer>),
    /// Answer Alertmanager's webhook: start a TraceJob for each alert a TraceTrigger matches
    /// (the trigger receiver Deployment's command).
    TriggerReceiver(Box<tracejob_agent::trigger::Config>),
    /// Print the TraceJob, TraceJobNode and TraceTrigger CustomResourceDefinitions as YAML.
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
        Command::Run(config) => {
            // Flags that do not go together end the agent at once, as a usage error (exit 2).
            if let Err(e) = config.validate() {
                let mut cli = Cli::command();
                cli.build();
                let run = cli.find_subcommand_mut("run").expect("the run command");
                run.error(clap::error::ErrorKind::ArgumentConflict, e)
                    .exit();
            }
            logs(config.log_format, &config.log_level);
            block_on(tracejob_agent::agent::run(*config), "tracejob-agent")
        }
        Command::TriggerReceiver(c) => {
            logs(c.log_format, &c.log_level);
            block_on(
                tracejob_agent::trigger::run(*c),
                "tracejob trigger receiver",
            )
        }
        Command::Summarize(s) => {
            logs(s.log_format, &s.log_level);
            block_on(
                tracejob_agent::summarize::run(s.config),
                "tracejob summarizer",
            )
        }
    }
}

fn logs(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

fn block_on<E: std::fmt::Display>(
    work: impl std::future::Future<Output = Result<(), E>>,
    what: &str,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{what}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{what} failed");
            ExitCode::FAILURE
        }
    }
}
