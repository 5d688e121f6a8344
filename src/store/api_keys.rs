//! API key rows: only hashes and descriptions, never a key.

use sqlx::types::Json;

use super::rows::ApiKeyColumns;
use super::{Store, StoreError};
use crate::domain::{ApiKey, ApiKeyHash, ApiKeyId};
use crate::events::{NewEvent, Target};

impl Store {
    pub async fn insert_api_key(&self, key: &ApiKey, hash: ApiKeyHash) -> Result<(), StoreError> {
        self.write_api_key(key, hash, "").await
    }

    /// Stores `key` unless a key with this hash is already stored (the bootstrap key, at
    /// every start). Returns the id of the stored key and whether it has been revoked: a
    /// revoked key stays revoked.
    pub async fn insert_api_key_once(
        &self,
        key: &ApiKey,
        hash: ApiKeyHash,
    ) -> Result<(ApiKeyId, bool), StoreError> {
        self.write_api_key(key, hash, "ON CONFLICT (hash) DO NOTHING")
            .await?;
        let sql = "SELECT id, revoked_at IS NOT NULL FROM api_keys WHERE hash = $1";
        let (id, revoked): (uuid::Uuid, bool) = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(hash.to_base64())
            .fetch_one(pool)
            .await)?;
        Ok((ApiKeyId::from(id), revoked))
    }

    async fn write_api_key(
        &self,
        key: &ApiKey,
        hash: ApiKeyHash,
        on_conflict: &str,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO api_keys (id, name, hash, prefix, scopes, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) {on_conflict}"
        );
        let scopes: Vec<&str> = key.scopes.iter().map(|scope| scope.as_str()).collect();
        let created = [NewEvent::new(
            "api_key.created",
            Target::ApiKey(key.id),
            serde_json::json!({"name": key.name.as_str(), "scopes": scopes, "prefix": key.prefix}),
        )];
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let inserted = sqlx::query(&sql)
                .bind(key.id.as_uuid())
                .bind(key.name.as_str())
                .bind(hash.to_base64())
                .bind(&key.prefix)
                .bind(Json(&scopes))
                .bind(key.created_at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if inserted == 1 {
                insert_events!(tx, &created);
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Every key that is not revoked, with its hash: what the API-key service keeps in memory.
    pub async fn active_api_keys(&self) -> Result<Vec<(ApiKeyHash, ApiKey)>, StoreError> {
        let sql = "SELECT id, name, hash, prefix, scopes, created_at FROM api_keys \
                   WHERE revoked_at IS NULL ORDER BY id";
        let rows: Vec<ApiKeyColumns> =
            on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)?;
        rows.into_iter()
            .map(ApiKeyColumns::into_hashed_key)
            .collect()
    }

    pub async fn find_active_api_key(
        &self,
        hash: ApiKeyHash,
    ) -> Result<Option<ApiKey>, StoreError> {
        let sql = "SELECT id, name, hash, prefix, scopes, created_at FROM api_keys \
                   WHERE hash = $1 AND revoked_at IS NULL";
        let row: Option<ApiKeyColumns> = on_pool!(self, pool =>
            sqlx::query_as(sql).bind(hash.to_base64()).fetch_optional(pool).await)?;
        row.map(|columns| columns.into_hashed_key().map(|(_, key)| key))
            .transpose()
    }

    pub async fn revoke_api_key(&self, id: ApiKeyId) -> Result<(), StoreError> {
        let sql = "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";
        let revoked_event = [NewEvent::new(
            "api_key.revoked",
            Target::ApiKey(id),
            serde_json::json!({}),
        )];
        let revoked = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let revoked = sqlx::query(sql)
                .bind(id.as_uuid())
                .bind(crate::domain::now())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if revoked == 1 {
                insert_events!(tx, &revoked_event);
            }
            tx.commit().await?;
            revoked
        });
        match revoked {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        }
    }

    pub async fn has_api_keys(&self) -> Result<bool, StoreError> {
        let sql = "SELECT COUNT(*) FROM api_keys";
        let (count,): (i64,) = on_pool!(self, pool => sqlx::query_as(sql).fetch_one(pool).await)?;
        Ok(count > 0)
    }
}
