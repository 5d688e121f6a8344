//! Assembles the service: opens the store, checks the master keys, binds the listener,
//! and serves until a shutdown future completes.

use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::amazon::endpoints::SpApiHosts;
use crate::amazon::lwa::LwaClient;
use crate::amazon::spapi::SpApiClient;
use crate::api_keys::{ApiKeys, BootstrapKey};
use crate::client_secrets::ApplicationSecrets;
use crate::config::{Config, DatabaseUrl, write_private_file};
use crate::connection_test::ConnectionTester;
use crate::connections::Connections;
use crate::domain::{ApiKeyName, Scope};
use crate::handouts::HandoutTrail;
use crate::store::Store;
use crate::tokens::TokenService;
use crate::webhooks::Webhooks;
use crate::website_auth::WebsiteAuthorization;

/// Where the first admin key goes when there is no terminal to show it on.
pub const FIRST_ADMIN_KEY_FILE: &str = "first-admin.key";

/// Everything a handler needs, behind one `Arc`: axum clones the state for every request
/// (and again for each `State` extractor), so a clone must be one reference count, not
/// one per service.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

pub struct Services {
    pub store: Store,
    pub connections: Connections,
    pub api_keys: ApiKeys,
    pub tokens: TokenService,
    pub tester: ConnectionTester,
    pub website_auth: WebsiteAuthorization,
    pub secrets: ApplicationSecrets,
    pub handouts: HandoutTrail,
    pub webhooks: Webhooks,
    pub metrics: PrometheusHandle,
    /// The longest a request may take.
    pub request_timeout: std::time::Duration,
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
    limits: crate::http::ConnectionLimits,
}

impl Application {
    /// Opens and migrates the database, proves the master keys, provisions API keys and
    /// binds the listener. Every failure here is a start-up error with a clear message.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        if let Some(warning) = config.database_url.tls_warning() {
            tracing::warn!("{warning}");
        }
        let keyring = Arc::new(config.master_keys.load()?);
        let store = open_database(&config.database_url).await?;
        crate::master_keys::verify_at_startup(&store, &keyring).await?;

        let api_keys = ApiKeys::new(store.clone());
        if let Some(token) = &config.bootstrap_admin_key {
            let provisioned = api_keys
                .provision_bootstrap_admin(token)
                .await
                .context("cannot store REGISTRY_BOOTSTRAP_ADMIN_KEY")?;
            if let BootstrapKey::Revoked(id) = provisioned {
                tracing::error!(
                    api_key_id = %id,
                    "REGISTRY_BOOTSTRAP_ADMIN_KEY names a key that was revoked; it stays \
                     revoked and does not work. Remove the setting, or set a new key"
                );
            }
        } else if let DatabaseUrl::Sqlite { dir, .. } = &config.database_url {
            create_first_admin_key(&store, &api_keys, dir).await?;
        }
        api_keys.reload().await.context("cannot load API keys")?;

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("REGISTRY_LISTEN: cannot listen on {}", config.listen))?;
        let lwa = LwaClient::new(config.lwa_token_url.clone(), config.lwa.clone());
        let tokens = TokenService::new(
            store.clone(),
            keyring.clone(),
            lwa.clone(),
            SpApiHosts::new(config.spapi_url.clone()),
            SpApiClient::new(&config.spapi),
            config.tokens.clone(),
        );
        let connections = Connections::new(store.clone(), keyring.clone(), tokens.clone());
        let secrets = ApplicationSecrets::new(
            store.clone(),
            keyring.clone(),
            tokens.clone(),
            SpApiClient::new(&config.spapi),
        );
        let tester = ConnectionTester::new(
            connections.clone(),
            tokens.clone(),
            SpApiClient::new(&config.spapi),
        );
        let website_auth = WebsiteAuthorization::new(
            store.clone(),
            connections.clone(),
            lwa,
            config.website_auth.clone(),
        );
        let handouts = HandoutTrail::new(store.clone(), config.tokens.handout_flush);
        let webhooks = Webhooks::new(store.clone(), keyring.clone(), config.webhooks.clone());
        let state = AppState(Arc::new(Services {
            handouts,
            webhooks,
            connections,
            tester,
            website_auth,
            secrets,
            api_keys,
            tokens,
            store,
            metrics: crate::metrics::handle(),
            request_timeout: config.request_timeout,
        }));
        Ok(Self {
            listener,
            state,
            limits: config.connections,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let changes = self.state.tokens.listen_for_changes().await;
        let background: Vec<JoinHandle<()>> = vec![
            tokio::spawn(self.state.api_keys.clone().reload_periodically()),
            tokio::spawn(self.state.tokens.clone().refresh_ahead_periodically()),
            tokio::spawn(self.state.tokens.clone().follow_changes(changes)),
            tokio::spawn(self.state.tokens.clone().recheck_cached_periodically()),
            tokio::spawn(self.state.handouts.clone().flush_periodically()),
            tokio::spawn(self.state.webhooks.clone().deliver_periodically()),
            tokio::spawn(self.state.webhooks.clone().warn_expiring_periodically()),
            tokio::spawn(crate::metrics::gauges_periodically(
                self.state.store.clone(),
            )),
            tokio::spawn(crate::metrics::upkeep_periodically(
                self.state.metrics.clone(),
            )),
        ];
        let store = self.state.store.clone();
        let handouts = self.state.handouts.clone();
        tracing::info!(address = %self.local_addr(), "listening");
        let limits = self.limits;
        crate::http::serve(
            self.listener,
            crate::http::api(self.state),
            limits,
            shutdown,
        )
        .await;
        for task in background {
            task.abort();
        }
        // What was counted since the last flush.
        handouts.flush().await;
        store.close().await;
        Ok(())
    }
}

/// Connects to the database and brings its schema up to date: what serving and every
/// subcommand do first.
pub async fn open_database(url: &DatabaseUrl) -> anyhow::Result<Store> {
    let store = Store::open(url)
        .await
        .context("DATABASE_URL: cannot open the database")?;
    store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    Ok(store)
}

/// The embedded default with no key at all: make one admin key and hand it over once.
/// On a terminal it is printed there; otherwise (a container, a service manager) stderr
/// is usually kept like a log, so it goes to a file only this user can read, in the data
/// directory, and the log says where.
async fn create_first_admin_key(
    store: &Store,
    api_keys: &ApiKeys,
    data_dir: &Path,
) -> anyhow::Result<()> {
    if store.has_api_keys().await? {
        return Ok(());
    }
    let name = ApiKeyName::parse("first admin").expect("a valid constant name");
    let created = api_keys.create(name, vec![Scope::Admin]).await?;
    if std::io::stderr().is_terminal() {
        eprintln!(
            "\n  First start: created an admin API key. It is shown only this once:\n\n    {}\n\n  \
             Use it as `Authorization: Bearer <key>`; create narrower keys with POST /api-keys.\n",
            created.token.expose()
        );
        return Ok(());
    }
    let path = data_dir.join(FIRST_ADMIN_KEY_FILE);
    write_private_file(&path, &format!("{}\n", created.token.expose()))
        .with_context(|| format!("cannot write the first admin key to {}", path.display()))?;
    // Absolute, so an operator reading the log finds it whatever the working directory.
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    tracing::warn!(
        path = %path.display(),
        api_key_id = %created.key.id,
        "first start: created an admin API key and wrote it to this file (mode 0600); \
         read it, then delete the file"
    );
    Ok(())
}
