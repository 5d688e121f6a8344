//! What each subcommand does.

use anyhow::Context;

use crate::api_keys::ApiKeys;
use crate::app::{Application, open_database};
use crate::cli::{ApiKeysCommand, Cli, Command};
use crate::config::Config;
use crate::domain::{ApiKeyId, ApiKeyName, Scope};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::from_settings(&cli.settings)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            open_database(&config.database_url).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::ApiKeys(command) => manage_api_keys(&config, command).await,
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
