//! Logging: `RUST_LOG` filters, `REGISTRY_LOG_FORMAT` picks json or pretty.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::cli::LogFormat;

/// Without `RUST_LOG`. Postgres's notices (`relation "_sqlx_migrations" already exists,
/// skipping` at every start) are not worth a line.
const DEFAULT_FILTER: &str = "info,sqlx::postgres::notice=warn";

/// Where log lines go: the server logs to stdout; a subcommand logs to stderr, so its
/// stdout is only its output (what a script reads: a key, a table, a count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTo {
    Stdout,
    Stderr,
}

pub fn init(format: Option<LogFormat>, to: LogTo) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let terminal = match to {
        LogTo::Stdout => std::io::stdout().is_terminal(),
        LogTo::Stderr => std::io::stderr().is_terminal(),
    };
    let format = format.unwrap_or(if terminal {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let writer = BoxMakeWriter::new(move || -> Box<dyn std::io::Write> {
        match to {
            LogTo::Stdout => Box::new(std::io::stdout()),
            LogTo::Stderr => Box::new(std::io::stderr()),
        }
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}
