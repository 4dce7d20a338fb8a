use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use tracejob_agent::agent::Config;

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
    /// Keep the status and merged output of TraceJobs on several nodes (the summarizer
    /// Deployment's command; one replica is active at a time).
    Summarize(Box<tracejob_agent::summarize::Config>),
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
            config.logs.init();
            block_on(tracejob_agent::agent::run(*config), "tracejob-agent")
        }
        Command::TriggerReceiver(c) => {
            c.logs.init();
            block_on(
                tracejob_agent::trigger::run(*c),
                "tracejob trigger receiver",
            )
        }
        Command::Summarize(s) => {
            s.logs.init();
            block_on(tracejob_agent::summarize::run(*s), "tracejob summarizer")
        }
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
