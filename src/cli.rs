//! The command line: subcommands, and every setting as a flag or environment variable.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// No `Debug`: the settings hold the master keys and the bootstrap key in plain text.
#[derive(Parser)]
#[command(name = "connection-registry", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Raw settings as given; `config::Config::from_settings` validates them.
#[derive(Clone, Args)]
pub struct Settings {
    /// `postgres://…` or `sqlite://…` [default: sqlite://./data/registry.db]
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Address to listen on.
    #[arg(
        long = "listen",
        env = "REGISTRY_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: String,

    /// Comma-separated `key_id:base64(32 bytes)`; the first encrypts, all decrypt.
    #[arg(
        long,
        env = "REGISTRY_MASTER_KEYS",
        global = true,
        hide_env_values = true
    )]
    pub master_keys: Option<String>,

    /// If set, an admin API key with exactly this value exists after start-up.
    #[arg(
        long,
        env = "REGISTRY_BOOTSTRAP_ADMIN_KEY",
        global = true,
        hide_env_values = true
    )]
    pub bootstrap_admin_key: Option<String>,

    /// Login with Amazon token endpoint.
    #[arg(
        long,
        env = "REGISTRY_LWA_TOKEN_URL",
        default_value = "https://api.amazon.com/auth/o2/token",
        global = true
    )]
    pub lwa_token_url: String,

    /// Replaces the SP-API base URL of every region and environment (fakes, proxies).
    #[arg(long = "spapi-url", env = "REGISTRY_SPAPI_URL", global = true)]
    pub spapi_url: Option<String>,

    /// The service's external base URL, as sellers' browsers reach it (https). Enables
    /// website authorization; its redirect URI is this URL + `/oauth/callback`.
    #[arg(long, env = "REGISTRY_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,

    /// Where a seller's browser is sent after website authorization, with
    /// `connection_id` and `status` (or `error`) added to its query.
    #[arg(long, env = "REGISTRY_OAUTH_RETURN_URL", global = true)]
    pub oauth_return_url: Option<String>,

    /// Seconds a request may take before it is answered 503 `request_timeout` (1–600).
    #[arg(
        long,
        env = "REGISTRY_REQUEST_TIMEOUT",
        default_value = "60",
        global = true
    )]
    pub request_timeout: String,

    /// Seconds a client has to send a request's headers (1–300); on a kept-alive
    /// connection the clock starts when it goes idle, so this also closes idle ones.
    #[arg(
        long,
        env = "REGISTRY_HEADER_READ_TIMEOUT",
        default_value = "10",
        global = true
    )]
    pub header_read_timeout: String,

    /// Most connections open at once (1–100000); more wait to be accepted.
    #[arg(
        long,
        env = "REGISTRY_MAX_CONNECTIONS",
        default_value = "10000",
        global = true
    )]
    pub max_connections: String,

    /// Log format [default: pretty on a terminal, else json]. The filter is RUST_LOG.
    #[arg(long, env = "REGISTRY_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    ApiKeys(ApiKeysCommand),
    /// Look at connections.
    #[command(subcommand)]
    Connections(ConnectionsCommand),
    /// Master keys: make one, see what each encrypts, re-encrypt under the first.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConnectionsCommand {
    /// Connections whose client secret expires within a period, soonest first: what needs
    /// a new secret.
    Expiring {
        /// How far ahead: days or hours, like `14d` or `36h`.
        #[arg(long, default_value = "14d")]
        within: String,
        /// A JSON array of the connections (as the API shows them) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new `key_id:base64` entry for REGISTRY_MASTER_KEYS (needs no database).
    Generate {
        /// The key id: 1–32 letters, digits, `-` or `_` [default: k<today>, e.g. k20261128].
        #[arg(long)]
        id: Option<String>,
    },
    /// Per key id: configured or not, how many stored secrets it encrypts, and whether
    /// it can be removed from the configuration.
    Status {
        /// One JSON object per key instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-encrypt every stored secret with the first configured key, in batches, while
    /// replicas keep serving. Safe to stop and run again.
    Rewrap {
        /// Rows per batch (each batch is one short transaction), 1–10000.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        batch_size: u32,
        /// Milliseconds to wait after each batch, to spare a busy database.
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
        /// At most this share of the time working, 1–100: after a batch that took t, the
        /// rewrap waits t × (100 − P) / P, plus --pause-ms. The default (50) leaves
        /// replicas sharing its machine or database at least half of what it would take;
        /// 100 runs flat out.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(1..=100))]
        busy_percent: u8,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeysCommand {
    /// Create a key and print it once.
    Create {
        /// What the key is for, e.g. `frontend` or `sync-workers`.
        #[arg(long)]
        name: String,
        /// `admin`, `connections:write`, `connections:read` or `tokens:read`; repeatable.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// List keys that are not revoked.
    List,
    /// Revoke a key by id.
    Revoke { id: String },
}
