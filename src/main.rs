use std::process::ExitCode;

use clap::Parser;
use connection_registry::{cli::Cli, commands, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.settings.log_format);
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line naming what is wrong; no backtrace.
            eprintln!("connection-registry: {err:#}");
            ExitCode::FAILURE
        }
    }
}
