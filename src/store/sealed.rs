//! Every sealed column, for the master-key tools: how many ciphertexts each key made,
//! and rewrapping them under another key in batches, while replicas keep serving.
//!
//! A ciphertext starts `v1:<key id>:`, so "made by key k" is a prefix test, written with
//! `substr` to mean the same on both backends (`LIKE` would read `_` in a key id as a
//! wildcard).

use sqlx::Row;
use uuid::Uuid;

use super::{Store, StoreError};
use crate::crypto::Sealed;
use crate::domain::ConnectionId;

/// The sealed columns: (table, column).
const SEALED_COLUMNS: [(&str, &str); 5] = [
    ("connections", "client_secret"),
    ("connections", "previous_client_secret"),
    ("connections", "refresh_token"),
    ("connections", "access_token"),
    ("grantless_tokens", "access_token"),
];

/// The prefix of every ciphertext made by `key_id`, and its length in characters.
fn prefix(key_id: &str) -> (String, i32) {
    let prefix = format!("v1:{key_id}:");
    let len = i32::try_from(prefix.len()).expect("key ids are short");
    (prefix, len)
}

/// A connection's ciphertexts at one version.
#[derive(Debug, Clone)]
pub struct SealedConnection {
    pub id: ConnectionId,
    pub version: i64,
    pub client_secret: Sealed,
    pub refresh_token: Sealed,
    pub access_token: Option<Sealed>,
    pub previous_client_secret: Option<Sealed>,
}

/// One grantless token's ciphertext, with what names its owner.
#[derive(Debug, Clone)]
pub struct SealedGrantless {
    pub client_id: String,
    pub scope: String,
    pub secret_fingerprint: String,
    pub access_token: Sealed,
}

/// One row of per-key counts over every sealed column: key `i` is bound as its prefix
/// `$2i+1` and that prefix's length `$2i+2`. Each table is read once, whatever the number
/// of keys.
fn count_by_key_sql(keys: usize) -> String {
    // 1 where `column` holds a ciphertext key `key` made.
    let made_by = |column: &str, key: usize| {
        format!(
            "CASE WHEN substr({column}, 1, ${}) = ${} THEN 1 ELSE 0 END",
            2 * key + 2,
            2 * key + 1
        )
    };
    let mut tables: Vec<&str> = Vec::new();
    for (table, _) in SEALED_COLUMNS {
        if !tables.contains(&table) {
            tables.push(table);
        }
    }
    // Per table, one column per key: how many of the row's ciphertexts that key made.
    let per_table = tables.iter().map(|table| {
        let per_key = (0..keys).map(|key| {
            let made: Vec<String> = SEALED_COLUMNS
                .iter()
                .filter(|(of, _)| of == table)
                .map(|(_, column)| made_by(column, key))
                .collect();
            format!("{} AS k{key}", made.join(" + "))
        });
        format!(
            "SELECT {} FROM {table}",
            per_key.collect::<Vec<_>>().join(", ")
        )
    });
    let sums: Vec<String> = (0..keys)
        .map(|key| format!("CAST(COALESCE(SUM(k{key}), 0) AS BIGINT)"))
        .collect();
    format!(
        "SELECT {} FROM ({}) AS sealed",
        sums.join(", "),
        per_table.collect::<Vec<_>>().join(" UNION ALL ")
    )
}

type ConnectionCiphertexts = (Uuid, i64, String, String, Option<String>, Option<String>);

impl Store {
    /// How many stored ciphertexts `key_id` made, over every sealed column.
    pub async fn count_sealed_with(&self, key_id: &str) -> Result<u64, StoreError> {
        let counts = self.count_sealed_by_key(&[key_id]).await?;
        Ok(counts[0])
    }

    /// How many stored ciphertexts each of `key_ids` made, in their order, counted in one
    /// statement: one snapshot, so while a rewrap commits, a ciphertext it moves is counted
    /// under exactly one key (counts taken one key at a time can count it under both).
    pub async fn count_sealed_by_key(&self, key_ids: &[&str]) -> Result<Vec<u64>, StoreError> {
        if key_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = count_by_key_sql(key_ids.len());
        let counts: Vec<i64> = on_pool!(self, pool => {
            let mut query = sqlx::query(&sql);
            for key_id in key_ids {
                let (prefix, len) = prefix(key_id);
                query = query.bind(prefix).bind(len);
            }
            let row = query.fetch_one(pool).await?;
            (0..key_ids.len())
                .map(|i| row.try_get::<i64, _>(i))
                .collect::<Result<_, _>>()?
        });
        Ok(counts
            .into_iter()
            .map(|count| u64::try_from(count).unwrap_or(0))
            .collect())
    }

    /// How many ciphertexts are stored in all.
    pub async fn count_sealed(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for (table, column) in SEALED_COLUMNS {
            let sql = format!("SELECT COUNT({column}) FROM {table}");
            let (count,): (i64,) =
                on_pool!(self, pool => sqlx::query_as(&sql).fetch_one(pool).await)?;
            total += u64::try_from(count).unwrap_or(0);
        }
        Ok(total)
    }

    /// Up to `limit` connections after `after` (in id order) holding a ciphertext that
    /// `key_id` did not make.
    pub async fn connections_not_sealed_with(
        &self,
        key_id: &str,
        after: Option<ConnectionId>,
        limit: u32,
    ) -> Result<Vec<SealedConnection>, StoreError> {
        let (prefix, len) = prefix(key_id);
        let sql = "SELECT id, version, client_secret, refresh_token, access_token, \
                          previous_client_secret \
                   FROM connections \
                   WHERE id > $1 AND (substr(client_secret, 1, $3) <> $2 \
                     OR substr(refresh_token, 1, $3) <> $2 \
                     OR substr(access_token, 1, $3) <> $2 \
                     OR substr(previous_client_secret, 1, $3) <> $2) \
                   ORDER BY id LIMIT $4";
        let rows: Vec<ConnectionCiphertexts> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(after.map_or(Uuid::nil(), |id| id.as_uuid()))
            .bind(&prefix)
            .bind(len)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        Ok(rows
            .into_iter()
            .map(
                |(id, version, client_secret, refresh_token, access_token, previous)| {
                    SealedConnection {
                        id: ConnectionId::from(id),
                        version,
                        client_secret: Sealed::from_stored(client_secret),
                        refresh_token: Sealed::from_stored(refresh_token),
                        access_token: access_token.map(Sealed::from_stored),
                        previous_client_secret: previous.map(Sealed::from_stored),
                    }
                },
            )
            .collect())
    }

    /// Writes rewrapped ciphertexts in one short transaction, each row only if it is still
    /// at the version it was read at (the version moves on, so a write that read the row
    /// before cannot put the old ciphertexts back). Says for each row whether it was
    /// written; the others changed meanwhile.
    pub async fn write_rewrapped_connections(
        &self,
        rows: &[SealedConnection],
    ) -> Result<Vec<bool>, StoreError> {
        let sql = "UPDATE connections \
                   SET client_secret = $1, refresh_token = $2, access_token = $3, \
                       previous_client_secret = $6, version = version + 1 \
                   WHERE id = $4 AND version = $5";
        let written = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut written = Vec::with_capacity(rows.len());
            for row in rows {
                let affected = sqlx::query(sql)
                    .bind(row.client_secret.as_str())
                    .bind(row.refresh_token.as_str())
                    .bind(row.access_token.as_ref().map(Sealed::as_str))
                    .bind(row.id.as_uuid())
                    .bind(row.version)
                    .bind(row.previous_client_secret.as_ref().map(Sealed::as_str))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                written.push(affected == 1);
            }
            tx.commit().await?;
            written
        });
        Ok(written)
    }

    /// Every grantless token `key_id` did not seal (there is one per application and
    /// scope: few).
    pub async fn grantless_not_sealed_with(
        &self,
        key_id: &str,
    ) -> Result<Vec<SealedGrantless>, StoreError> {
        let (prefix, len) = prefix(key_id);
        let sql = "SELECT client_id, scope, secret_fingerprint, access_token \
                   FROM grantless_tokens WHERE substr(access_token, 1, $2) <> $1";
        let rows: Vec<(String, String, String, String)> = on_pool!(self, pool =>
            sqlx::query_as(sql).bind(&prefix).bind(len).fetch_all(pool).await)?;
        Ok(rows
            .into_iter()
            .map(
                |(client_id, scope, secret_fingerprint, sealed)| SealedGrantless {
                    client_id,
                    scope,
                    secret_fingerprint,
                    access_token: Sealed::from_stored(sealed),
                },
            )
            .collect())
    }

    /// Replaces one grantless token's ciphertext if it is still `old`: a fetch that stored
    /// a new token meanwhile wins. Returns whether it was written.
    pub async fn write_rewrapped_grantless(
        &self,
        token: &SealedGrantless,
        old: &Sealed,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE grantless_tokens SET access_token = $1 \
                   WHERE client_id = $2 AND scope = $3 AND secret_fingerprint = $4 \
                     AND access_token = $5";
        let written = on_pool!(self, pool => sqlx::query(sql)
            .bind(token.access_token.as_str())
            .bind(&token.client_id)
            .bind(&token.scope)
            .bind(&token.secret_fingerprint)
            .bind(old.as_str())
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?;
        Ok(written == 1)
    }
}
