//! Typed configuration, validated once at start-up. A bad value is one line naming the
//! setting (its environment variable and flag), never a panic.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use reqwest::Url;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::sqlite::SqliteConnectOptions;

use crate::amazon::lwa::LwaSettings;
use crate::amazon::spapi::SpApiSettings;
use crate::cli::Settings;
use crate::crypto::Keyring;
use crate::domain::ApiKeyToken;
use crate::http::ConnectionLimits;
use crate::tokens::TokenSettings;
use crate::webhooks::WebhookSettings;

pub const DEFAULT_DATABASE_URL: &str = "sqlite://./data/registry.db";
/// Key id of a master key generated for the embedded default.
const GENERATED_KEY_ID: &str = "local";

#[derive(Debug, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ConfigError {
    setting: &'static str,
    reason: String,
}

impl ConfigError {
    fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }
}

const DATABASE_URL: &str = "DATABASE_URL (--database-url)";
const LISTEN: &str = "REGISTRY_LISTEN (--listen)";
const MASTER_KEYS: &str = "REGISTRY_MASTER_KEYS (--master-keys)";
const BOOTSTRAP_ADMIN_KEY: &str = "REGISTRY_BOOTSTRAP_ADMIN_KEY (--bootstrap-admin-key)";
const LWA_TOKEN_URL: &str = "REGISTRY_LWA_TOKEN_URL (--lwa-token-url)";
const SPAPI_URL: &str = "REGISTRY_SPAPI_URL (--spapi-url)";
const PUBLIC_URL: &str = "REGISTRY_PUBLIC_URL (--public-url)";
const OAUTH_RETURN_URL: &str = "REGISTRY_OAUTH_RETURN_URL (--oauth-return-url)";
const REQUEST_TIMEOUT: &str = "REGISTRY_REQUEST_TIMEOUT (--request-timeout)";
/// Bounds of `REGISTRY_REQUEST_TIMEOUT`, in seconds.
const REQUEST_TIMEOUT_SECS: std::ops::RangeInclusive<u64> = 1..=600;
const HEADER_READ_TIMEOUT: &str = "REGISTRY_HEADER_READ_TIMEOUT (--header-read-timeout)";
const HEADER_READ_TIMEOUT_SECS: std::ops::RangeInclusive<u64> = 1..=300;
const MAX_CONNECTIONS: &str = "REGISTRY_MAX_CONNECTIONS (--max-connections)";
const MAX_CONNECTIONS_RANGE: std::ops::RangeInclusive<u64> = 1..=100_000;

/// `DATABASE_URL`, parsed: which backend, and its connect options.
#[derive(Clone)]
pub enum DatabaseUrl {
    Postgres {
        url: String,
        options: PgConnectOptions,
    },
    /// `dir` is where the database file lives; a generated master key goes beside it.
    Sqlite {
        url: String,
        options: SqliteConnectOptions,
        dir: PathBuf,
    },
}

/// Without the password a Postgres URL may carry.
impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.as_str().to_owned();
        if let Ok(mut url) = Url::parse(self.as_str()) {
            if url.password().is_some() && url.set_password(Some("redacted")).is_ok() {
                shown = url.to_string();
            }
        }
        f.debug_tuple("DatabaseUrl").field(&shown).finish()
    }
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)
                .map_err(|err| ConfigError::new(DATABASE_URL, err.to_string()))?;
            Ok(Self::Postgres {
                url: url.to_owned(),
                options,
            })
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|err| ConfigError::new(DATABASE_URL, err.to_string()))?;
            let dir = options
                .get_filename()
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            Ok(Self::Sqlite {
                url: url.to_owned(),
                options,
                dir,
            })
        } else {
            Err(ConfigError::new(
                DATABASE_URL,
                "must start with postgres:// or sqlite://",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Postgres { url, .. } | Self::Sqlite { url, .. } => url,
        }
    }

    /// Why the database connection could be read or altered on the way, if it could: a
    /// Postgres server off this machine reached without a verified certificate
    /// (`sslmode=verify-full` or `verify-ca`). Logged as a warning at start-up.
    pub fn tls_warning(&self) -> Option<String> {
        let Self::Postgres { options, .. } = self else {
            return None;
        };
        let host = options.get_host();
        let local = options.get_socket().is_some() || host.starts_with('/') || is_loopback(host);
        let verified = matches!(
            options.get_ssl_mode(),
            PgSslMode::VerifyFull | PgSslMode::VerifyCa
        );
        (!local && !verified).then(|| {
            format!(
                "DATABASE_URL: Postgres at `{host}` is reached without a verified TLS \
                 certificate; anyone on the path can read or change what is stored. Add \
                 sslmode=verify-full (and sslrootcert=… if the CA is private) to the URL"
            )
        })
    }
}

/// `localhost` or a loopback address (brackets around IPv6 allowed).
pub(crate) fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Where the master keys come from, settled once at start-up.
#[derive(Debug)]
pub enum MasterKeys {
    /// `REGISTRY_MASTER_KEYS`.
    Configured(Keyring),
    /// Embedded SQLite without `REGISTRY_MASTER_KEYS`: the key file beside the database,
    /// generated on first start with a loud warning.
    LocalFile(PathBuf),
}

impl MasterKeys {
    pub fn load(self) -> Result<Keyring, ConfigError> {
        match self {
            Self::Configured(keyring) => Ok(keyring),
            Self::LocalFile(path) => load_or_generate_local_key(&path),
        }
    }
}

#[derive(Debug)]
pub struct Config {
    pub database_url: DatabaseUrl,
    pub listen: SocketAddr,
    pub master_keys: MasterKeys,
    pub bootstrap_admin_key: Option<ApiKeyToken>,
    pub lwa_token_url: Url,
    pub spapi_url: Option<Url>,
    /// Website authorization's URLs; `None` (the feature off) without
    /// `REGISTRY_PUBLIC_URL`.
    pub website_auth: Option<WebsiteAuthUrls>,
    /// The longest a request may take; answered 503 `request_timeout` after it.
    pub request_timeout: Duration,
    /// What a client connection may cost: its header-read (and idle) time, and how many
    /// may be open at once.
    pub connections: ConnectionLimits,
    /// Timeouts and retries of the LWA exchange (not settable from outside; tests tune it).
    pub lwa: LwaSettings,
    /// Timeouts of the SP-API calls the service makes (likewise).
    pub spapi: SpApiSettings,
    /// Refresh-ahead pacing (likewise).
    pub tokens: TokenSettings,
    /// Webhook delivery pacing (likewise).
    pub webhooks: WebhookSettings,
}

impl Config {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let database_url = DatabaseUrl::parse(
            settings
                .database_url
                .as_deref()
                .unwrap_or(DEFAULT_DATABASE_URL),
        )?;
        let listen = settings.listen.parse().map_err(|_| {
            ConfigError::new(
                LISTEN,
                format!(
                    "`{}` is not an address like 127.0.0.1:8080",
                    settings.listen
                ),
            )
        })?;
        let master_keys = match (settings.master_keys.as_deref(), &database_url) {
            (Some(spec), _) => MasterKeys::Configured(
                Keyring::parse(spec)
                    .map_err(|err| ConfigError::new(MASTER_KEYS, err.to_string()))?,
            ),
            (None, DatabaseUrl::Sqlite { dir, .. }) => {
                MasterKeys::LocalFile(dir.join("master.key"))
            }
            (None, DatabaseUrl::Postgres { .. }) => {
                return Err(ConfigError::new(
                    MASTER_KEYS,
                    "required with Postgres; generate one with: echo \"k1:$(openssl rand -base64 32)\"",
                ));
            }
        };
        let bootstrap_admin_key = settings
            .bootstrap_admin_key
            .as_deref()
            .map(|key| {
                ApiKeyToken::parse(key).map_err(|err| ConfigError::new(BOOTSTRAP_ADMIN_KEY, err.0))
            })
            .transpose()?;
        let request_timeout = Duration::from_secs(parse_number(
            REQUEST_TIMEOUT,
            &settings.request_timeout,
            REQUEST_TIMEOUT_SECS,
            "a number of seconds",
        )?);
        let connections = ConnectionLimits {
            header_read_timeout: Duration::from_secs(parse_number(
                HEADER_READ_TIMEOUT,
                &settings.header_read_timeout,
                HEADER_READ_TIMEOUT_SECS,
                "a number of seconds",
            )?),
            max_connections: parse_number(
                MAX_CONNECTIONS,
                &settings.max_connections,
                MAX_CONNECTIONS_RANGE,
                "a number",
            )? as usize,
        };
        Ok(Self {
            database_url,
            listen,
            master_keys,
            bootstrap_admin_key,
            lwa_token_url: parse_https_url(LWA_TOKEN_URL, &settings.lwa_token_url)?,
            spapi_url: settings
                .spapi_url
                .as_deref()
                .map(|url| parse_https_url(SPAPI_URL, url))
                .transpose()?,
            website_auth: WebsiteAuthUrls::parse(
                settings.public_url.as_deref(),
                settings.oauth_return_url.as_deref(),
            )?,
            request_timeout,
            connections,
            lwa: LwaSettings::default(),
            spapi: SpApiSettings::default(),
            tokens: TokenSettings::default().within_request_timeout(request_timeout),
            webhooks: WebhookSettings::default(),
        })
    }
}

/// Where website authorization sends sellers' browsers.
#[derive(Debug, Clone)]
pub struct WebsiteAuthUrls {
    /// `REGISTRY_PUBLIC_URL` + `/oauth/callback`: where Amazon sends the browser back. It
    /// must be one of the application's registered OAuth redirect URIs.
    pub redirect_uri: Url,
    /// Where the browser goes afterwards; without it the callback answers a short page.
    pub return_url: Option<Url>,
}

impl WebsiteAuthUrls {
    fn parse(
        public_url: Option<&str>,
        return_url: Option<&str>,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(public_url) = public_url else {
            if return_url.is_some() {
                return Err(ConfigError::new(
                    OAUTH_RETURN_URL,
                    "needs REGISTRY_PUBLIC_URL, the address Amazon sends sellers back to",
                ));
            }
            return Ok(None);
        };
        let public_url = parse_https_url(PUBLIC_URL, public_url)?;
        if public_url.query().is_some() || public_url.fragment().is_some() {
            return Err(ConfigError::new(
                PUBLIC_URL,
                "must be a base URL without a query or fragment, like https://registry.example.com",
            ));
        }
        let base = public_url.as_str().trim_end_matches('/');
        let redirect_uri = Url::parse(&format!("{base}/oauth/callback"))
            .map_err(|err| ConfigError::new(PUBLIC_URL, err.to_string()))?;
        let return_url = return_url
            .map(|url| parse_https_url(OAUTH_RETURN_URL, url))
            .transpose()?;
        Ok(Some(Self {
            redirect_uri,
            return_url,
        }))
    }
}

/// A whole number within `range`; `what` names it in the error ("a number of seconds").
fn parse_number(
    setting: &'static str,
    input: &str,
    range: std::ops::RangeInclusive<u64>,
    what: &str,
) -> Result<u64, ConfigError> {
    input
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            ConfigError::new(
                setting,
                format!(
                    "`{input}` is not {what} from {} to {}",
                    range.start(),
                    range.end()
                ),
            )
        })
}

/// Where credentials are sent (Amazon), or a seller's browser with a state and code in
/// the query (website authorization): https, or plain http only to a loopback host (a
/// local fake, a developer's machine), so a typo cannot send them across a network in
/// the clear.
fn parse_https_url(setting: &'static str, input: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(input)
        .map_err(|err| ConfigError::new(setting, format!("`{input}` is not a URL: {err}")))?;
    let loopback = url.host_str().is_some_and(is_loopback);
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err(ConfigError::new(
            setting,
            "must be an https:// URL (plain http:// only to localhost or a loopback address)",
        )),
        _ => Err(ConfigError::new(setting, "must be an https:// URL")),
    }
}

fn load_or_generate_local_key(path: &Path) -> Result<Keyring, ConfigError> {
    let setting = MASTER_KEYS;
    let io_error =
        |err: std::io::Error| ConfigError::new(setting, format!("{}: {err}", path.display()));
    if path.exists() {
        let spec = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(io_error)?);
        return Keyring::parse(spec.trim()).map_err(|err| {
            ConfigError::new(
                setting,
                format!("{} is not a valid key file: {err}", path.display()),
            )
        });
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_error)?;
    }
    let spec = Keyring::generate_spec(GENERATED_KEY_ID);
    write_private_file(path, spec.expose_secret()).map_err(io_error)?;
    tracing::warn!(
        path = %path.display(),
        "REGISTRY_MASTER_KEYS is not set: GENERATED A NEW MASTER KEY into this file (mode 0600). \
         Everything stored is encrypted with it: losing it loses every secret. \
         This is for trying the service out; in production set REGISTRY_MASTER_KEYS."
    );
    Keyring::parse(spec.expose_secret()).map_err(|err| ConfigError::new(setting, err.to_string()))
}

/// Creates `path` readable by its owner only; refuses to overwrite.
pub fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["connection-registry"];
        argv.extend_from_slice(args);
        Config::from_settings(&Cli::try_parse_from(argv).unwrap().settings)
    }

    const KEY: &str = "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    #[test]
    fn each_bad_setting_is_named() {
        let err = config(&["--database-url", "mysql://x"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("DATABASE_URL (--database-url): ")
        );
        let err = config(&["--listen", "nowhere"]).unwrap_err();
        assert!(
            err.to_string().starts_with("REGISTRY_LISTEN (--listen): "),
            "{err}"
        );
        let err = config(&["--master-keys", "k1:c2hvcnQ="]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "REGISTRY_MASTER_KEYS (--master-keys): key `k1` is 5 bytes; AES-256 needs exactly 32"
        );
        let err = config(&["--lwa-token-url", "ftp://x"]).unwrap_err();
        assert!(err.to_string().starts_with("REGISTRY_LWA_TOKEN_URL"));
        for cleartext in [
            "http://api.amazon.com/auth/o2/token",
            "http://10.0.0.5:8080/auth/o2/token",
            "http://localhost.evil.example/auth/o2/token",
        ] {
            let err = config(&["--lwa-token-url", cleartext]).unwrap_err();
            assert_eq!(
                err.to_string(),
                "REGISTRY_LWA_TOKEN_URL (--lwa-token-url): must be an https:// URL (plain \
                 http:// only to localhost or a loopback address)"
            );
            let err = config(&["--spapi-url", cleartext]).unwrap_err();
            assert!(err.to_string().starts_with("REGISTRY_SPAPI_URL"), "{err}");
        }
        let err = config(&["--bootstrap-admin-key", "short"]).unwrap_err();
        assert!(err.to_string().starts_with("REGISTRY_BOOTSTRAP_ADMIN_KEY"));
        for bad in ["0", "601", "1.5", "60s", ""] {
            let err = config(&["--request-timeout", bad]).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "REGISTRY_REQUEST_TIMEOUT (--request-timeout): `{bad}` is not a number of \
                     seconds from 1 to 600"
                )
            );
        }
    }

    #[test]
    fn amazon_urls_are_https_or_loopback() {
        for fine in [
            "https://api.amazon.com/auth/o2/token",
            "http://127.0.0.1:9000/auth/o2/token",
            "http://localhost:9000/auth/o2/token",
            "http://[::1]:9000/auth/o2/token",
        ] {
            let parsed = config(&["--lwa-token-url", fine, "--spapi-url", fine]).unwrap();
            assert_eq!(parsed.lwa_token_url.as_str(), fine);
        }
    }

    #[test]
    fn website_authorization_urls() {
        assert!(config(&[]).unwrap().website_auth.is_none());
        for (public, redirect) in [
            (
                "https://registry.example.com",
                "https://registry.example.com/oauth/callback",
            ),
            (
                "https://example.com/registry/",
                "https://example.com/registry/oauth/callback",
            ),
            (
                "http://localhost:8080",
                "http://localhost:8080/oauth/callback",
            ),
        ] {
            let urls = config(&["--public-url", public])
                .unwrap()
                .website_auth
                .unwrap();
            assert_eq!(urls.redirect_uri.as_str(), redirect);
            assert_eq!(urls.return_url, None);
        }
        let urls = config(&[
            "--public-url",
            "https://registry.example.com",
            "--oauth-return-url",
            "https://app.example.com/amazon/done?tab=2",
        ])
        .unwrap()
        .website_auth
        .unwrap();
        assert_eq!(
            urls.return_url.unwrap().as_str(),
            "https://app.example.com/amazon/done?tab=2"
        );
        let err = config(&["--oauth-return-url", "https://app.example.com/"]).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "REGISTRY_OAUTH_RETURN_URL (--oauth-return-url): needs REGISTRY_PUBLIC_URL"
            ),
            "{err}"
        );
        for bad in [
            "http://registry.example.com",
            "https://r.example.com/?x=1",
            "registry",
        ] {
            let err = config(&["--public-url", bad]).unwrap_err();
            assert!(err.to_string().starts_with("REGISTRY_PUBLIC_URL"), "{err}");
        }
        let err = config(&[
            "--public-url",
            "https://registry.example.com",
            "--oauth-return-url",
            "http://app.example.com/",
        ])
        .unwrap_err();
        assert!(
            err.to_string().starts_with("REGISTRY_OAUTH_RETURN_URL"),
            "{err}"
        );
    }

    #[test]
    fn connection_limits_are_settable_and_bounded() {
        let default = config(&[]).unwrap();
        assert_eq!(
            default.connections,
            ConnectionLimits {
                header_read_timeout: Duration::from_secs(10),
                max_connections: 10_000,
            }
        );
        let set = config(&["--header-read-timeout", "3", "--max-connections", "64"]).unwrap();
        assert_eq!(set.connections.header_read_timeout, Duration::from_secs(3));
        assert_eq!(set.connections.max_connections, 64);
        for bad in ["0", "301", "ten"] {
            let err = config(&["--header-read-timeout", bad]).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "REGISTRY_HEADER_READ_TIMEOUT (--header-read-timeout): `{bad}` is not a \
                     number of seconds from 1 to 300"
                )
            );
        }
        for bad in ["0", "100001", "-1"] {
            let err = config(&[&format!("--max-connections={bad}")]).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "REGISTRY_MAX_CONNECTIONS (--max-connections): `{bad}` is not a number \
                     from 1 to 100000"
                )
            );
        }
    }

    #[test]
    fn the_request_timeout_bounds_the_token_lease_wait() {
        let default = config(&[]).unwrap();
        assert_eq!(default.request_timeout, Duration::from_secs(60));
        assert_eq!(default.tokens.lease_wait, Duration::from_secs(45));
        let short = config(&["--request-timeout", "8"]).unwrap();
        assert_eq!(short.request_timeout, Duration::from_secs(8));
        assert_eq!(short.tokens.lease_wait, Duration::from_secs(6));
    }

    #[test]
    fn debug_hides_the_database_password() {
        let url = DatabaseUrl::parse("postgres://registry:s3cret@db:5432/registry").unwrap();
        let shown = format!("{url:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("redacted"),
            "{shown}"
        );
    }

    #[test]
    fn unverified_tls_to_a_remote_postgres_is_warned_about() {
        let warning = |url: &str| DatabaseUrl::parse(url).unwrap().tls_warning();
        let remote = warning("postgres://registry:pw@db.internal:5432/registry").unwrap();
        assert!(
            remote.starts_with("DATABASE_URL: Postgres at `db.internal` is reached without")
                && remote.contains("sslmode=verify-full")
                && !remote.contains("pw"),
            "{remote}"
        );
        // `require` encrypts but accepts any certificate: still warned.
        assert!(warning("postgres://db.internal/registry?sslmode=require").is_some());
        for quiet in [
            "postgres://db.internal/registry?sslmode=verify-full",
            "postgres://db.internal/registry?sslmode=verify-ca",
            "postgres://postgres@127.0.0.1:5432/registry",
            "postgres://localhost/registry",
            "postgres://[::1]/registry",
            "postgres:///registry?host=/var/run/postgresql",
            "sqlite://./data/registry.db",
        ] {
            assert_eq!(warning(quiet), None, "{quiet}");
        }
    }

    #[test]
    fn postgres_requires_master_keys() {
        let err = config(&["--database-url", "postgres://localhost/db"]).unwrap_err();
        assert!(err.to_string().starts_with("REGISTRY_MASTER_KEYS"), "{err}");
        assert!(
            config(&[
                "--database-url",
                "postgres://localhost/db",
                "--master-keys",
                KEY
            ])
            .is_ok()
        );
    }

    #[test]
    fn embedded_default_generates_a_private_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/registry.db", dir.path().display());
        let first = config(&["--database-url", &url]).unwrap();
        let keyring = first.master_keys.load().unwrap();
        assert_eq!(keyring.primary_id(), GENERATED_KEY_ID);
        let path = dir.path().join("master.key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let before = std::fs::read_to_string(&path).unwrap();
        let second = config(&["--database-url", &url]).unwrap();
        second.master_keys.load().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    }
}
