use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tracejob-agent", version, about = "Runs the bpftrace programs of TraceJobs on this node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the TraceJob CustomResourceDefinition as YAML.
    Crd {
        /// Declare spec.nodeName a selectable field (Kubernetes 1.31+; older servers reject it).
        #[arg(long)]
        selectable_fields: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { selectable_fields } => match tracejob_agent::crd::crd_yaml(selectable_fields) {
            Ok(yaml) => {
                print!("{yaml}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tracejob-agent: {e}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}
