//! SQLite: the embedded default, for one process on one machine.

use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use super::StoreError;

pub(super) static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

pub(super) async fn connect(options: SqliteConnectOptions) -> Result<SqlitePool, StoreError> {
    let options = options
        .create_if_missing(true)
        // WAL lets the operator's subcommands read and write while the server runs.
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    if let Some(dir) = options.get_filename().parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|err| {
                StoreError::Corrupt(format!("cannot create {}: {err}", dir.display()))
            })?;
        }
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options)
        .await?;
    Ok(pool)
}
