//! `kubectl tracejob`: the plugin's binary (see `tracejob_agent::plugin`).

use std::process::ExitCode;

use clap::Parser;
use tracejob_agent::plugin::{self, cli::Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubectl tracejob: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(plugin::main(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(plugin::Error::Interrupted) => ExitCode::from(130),
        Err(e) => {
            // Errors carry the cluster's text (messages, names, bpftrace's error): escaped.
            eprintln!("{}", plugin::show::safe(&e.to_string()));
            ExitCode::from(e.exit_code())
        }
    }
}
