use std::process::ExitCode;

use clap::Parser;
use connection_registry::cli::{Cli, Command};
use connection_registry::commands;
use connection_registry::telemetry::{self, LogTo};

/// See Cargo.toml: less lock contention across worker threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_to = match cli.command {
        None | Some(Command::Serve) => LogTo::Stdout,
        Some(_) => LogTo::Stderr,
    };
    telemetry::init(cli.settings.log_format, log_to);
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line naming what is wrong; no backtrace.
            eprintln!("connection-registry: {err:#}");
            ExitCode::FAILURE
        }
    }
}
