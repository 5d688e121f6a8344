//! What each subcommand does.

use anyhow::Context;

use crate::api_keys::ApiKeys;
use crate::app::{Application, open_database};
use crate::cli::{ApiKeysCommand, Cli, Command, ConnectionsCommand, KeysCommand};
use crate::config::Config;
use crate::crypto::Keyring;
use crate::domain::{ApiKeyId, ApiKeyName, Scope};
use crate::master_keys;
use crate::store::{ConnectionFilter, Store};
use std::io::IsTerminal;

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Needs no configuration: a key is made before anything can use it.
    if let Some(Command::Keys(KeysCommand::Generate { id })) = &cli.command {
        return generate_key(id.as_deref());
    }
    let config = Config::from_settings(&cli.settings)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            open_database(&config.database_url).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::ApiKeys(command) => manage_api_keys(&config, command).await,
        Command::Keys(command) => manage_master_keys(config, command).await,
        Command::Connections(ConnectionsCommand::Expiring { within, json }) => {
            expiring(&config, &within, json).await
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    app.run_until(shutdown_signal()).await
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down; letting in-flight requests finish");
}

async fn manage_api_keys(config: &Config, command: ApiKeysCommand) -> anyhow::Result<()> {
    let api_keys = ApiKeys::new(open_database(&config.database_url).await?);
    match command {
        ApiKeysCommand::Create { name, scopes } => {
            let name = ApiKeyName::parse(&name).map_err(|err| anyhow::anyhow!("--name {err}"))?;
            let scopes = scopes
                .iter()
                .map(|scope| {
                    Scope::parse(scope).map_err(|err| anyhow::anyhow!("--scope `{scope}` {err}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let created = api_keys.create(name, scopes).await?;
            eprintln!("created API key {} (shown only this once):", created.key.id);
            println!("{}", created.token.expose());
        }
        ApiKeysCommand::List => {
            for key in api_keys.list().await? {
                let scopes: Vec<_> = key.scopes.iter().map(|scope| scope.as_str()).collect();
                println!(
                    "{}\t{}…\t{}\t{}\t{}",
                    key.id,
                    key.prefix,
                    scopes.join(","),
                    key.created_at.to_rfc3339(),
                    key.name.as_str()
                );
            }
        }
        ApiKeysCommand::Revoke { id } => {
            let id = ApiKeyId::parse(&id).map_err(|err| anyhow::anyhow!("id {err}"))?;
            api_keys
                .revoke(id)
                .await
                .with_context(|| format!("cannot revoke {id}"))?;
            println!("revoked {id}");
        }
    }
    Ok(())
}

/// `keys generate`: the entry on stdout (for `$(…)`), what to do with it on stderr.
fn generate_key(id: Option<&str>) -> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    let id = id.map_or_else(
        || format!("k{}", chrono::Utc::now().format("%Y%m%d")),
        str::to_owned,
    );
    let spec = Keyring::generate_spec(&id);
    Keyring::parse(spec.expose_secret()).map_err(|err| anyhow::anyhow!("--id: {err}"))?;
    println!("{}", spec.expose_secret());
    eprintln!(
        "add it to REGISTRY_MASTER_KEYS after the current key on every replica, then move it \
         first and run `keys rewrap` (README: Rotate the master key)"
    );
    Ok(())
}

async fn manage_master_keys(config: Config, command: KeysCommand) -> anyhow::Result<()> {
    let keyring = config.master_keys.load()?;
    let store = open_database(&config.database_url).await?;
    match command {
        KeysCommand::Generate { .. } => unreachable!("handled before the configuration is read"),
        KeysCommand::Status { json } => {
            let report = master_keys::status(&store, &keyring).await?;
            if json {
                for key in &report {
                    println!("{}", serde_json::to_string(key)?);
                }
            } else {
                print_key_table(&report);
            }
        }
        KeysCommand::Rewrap {
            batch_size,
            pause_ms,
            busy_percent,
        } => {
            let settings = master_keys::RewrapSettings {
                batch_size,
                pause: std::time::Duration::from_millis(pause_ms),
                busy_percent,
            };
            rewrap(&store, &keyring, settings).await?
        }
    }
    store.close().await;
    Ok(())
}

fn print_key_table(report: &[master_keys::KeyStatus]) {
    println!(
        "{:<32}  {:<10}  {:>10}  note",
        "key id", "configured", "encrypts"
    );
    for key in report {
        let note = match key {
            key if key.primary => "first: encrypts new secrets".to_owned(),
            key if key.removable() => {
                "no longer needed: remove it from REGISTRY_MASTER_KEYS".to_owned()
            }
            key if !key.configured && key.ciphertexts > 0 => {
                "MISSING: add it back to REGISTRY_MASTER_KEYS".to_owned()
            }
            key if !key.configured => "removed; encrypts nothing".to_owned(),
            _ => "still needed: run `keys rewrap`".to_owned(),
        };
        let configured = if key.configured { "yes" } else { "no" };
        println!(
            "{:<32}  {:<10}  {:>10}  {note}",
            key.key_id, configured, key.ciphertexts
        );
    }
}

/// `keys rewrap`: a progress bar on a terminal, counts in the log otherwise; the outcome
/// on stdout.
async fn rewrap(
    store: &Store,
    keyring: &Keyring,
    settings: master_keys::RewrapSettings,
) -> anyhow::Result<()> {
    // The first key must be the one this database knows under its id before anything is
    // sealed with it; this also records it for the replicas.
    master_keys::verify_at_startup(store, keyring).await?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "rewrapping {bar:40} {pos}/{len} secrets ({eta} left)",
            )
            .expect("a valid template"),
        );
        bar
    });
    let report = master_keys::rewrap(store, keyring, settings, |progress| match &bar {
        Some(bar) => {
            bar.set_length(progress.total);
            bar.set_position(progress.done);
        }
        None => tracing::info!(done = progress.done, total = progress.total, "rewrapping"),
    })
    .await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = report?;
    println!(
        "rewrapped {} secrets with key `{}`",
        report.rewrapped,
        keyring.primary_id()
    );
    if !report.unreadable.is_empty() {
        for what in &report.unreadable {
            eprintln!("cannot open {what}");
        }
        anyhow::bail!(
            "{} stored secrets could not be opened; they keep their old key",
            report.unreadable.len()
        );
    }
    for key in master_keys::status(store, keyring).await? {
        if key.removable() {
            println!(
                "key `{}` encrypts nothing now: remove it from REGISTRY_MASTER_KEYS",
                key.key_id
            );
        }
    }
    Ok(())
}

/// `connections expiring`: soonest first; a table for people, JSON for scripts.
async fn expiring(config: &Config, within: &str, json: bool) -> anyhow::Result<()> {
    let period =
        crate::domain::parse_period(within).map_err(|err| anyhow::anyhow!("--within {err}"))?;
    let store = open_database(&config.database_url).await?;
    let mut filter = ConnectionFilter {
        client_secret_expires_before: Some(crate::domain::now() + period),
        ..ConnectionFilter::default()
    };
    let mut found = Vec::new();
    const PAGE: u32 = 500;
    loop {
        let page = store.list_connections(&filter, PAGE).await?;
        let Some(last) = page.last() else { break };
        filter.after = Some(last.id);
        // A short page was the last: asking past it can be slow (an expiry filter's
        // final page walks the rest of the table to find nothing).
        let last_page = page.len() < PAGE as usize;
        found.extend(page);
        if last_page {
            break;
        }
    }
    store.close().await;
    found.sort_by_key(|c| (c.client_secret_expires_at, c.id));
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(());
    }
    println!(
        "{:<27}  {:<9}  {:<36}  {:<62}  {:<26}  name",
        "client secret expires", "estimate", "connection", "client id", "status"
    );
    for c in &found {
        println!(
            "{:<27}  {:<9}  {:<36}  {:<62}  {:<26}  {}",
            c.client_secret_expires_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            if c.client_secret_expires_at_estimated {
                "estimated"
            } else {
                "amazon"
            },
            c.id,
            c.client_id.as_str(),
            c.status.as_str(),
            c.name.as_ref().map_or("", |name| name.as_str()),
        );
    }
    Ok(())
}
