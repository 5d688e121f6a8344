//! Logging: `RUST_LOG` filters, `REGISTRY_LOG_FORMAT` picks json or pretty.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Without `RUST_LOG`. Postgres's notices (`relation "_sqlx_migrations" already exists,
/// skipping` at every start) are not worth a line, and would otherwise precede a
/// subcommand's own output on stdout (`api-keys create` prints the key alone there).
const DEFAULT_FILTER: &str = "info,sqlx::postgres::notice=warn";

pub fn init(format: Option<LogFormat>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let format = format.unwrap_or(if std::io::stdout().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}
