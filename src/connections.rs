//! The connection service: creates, reads, changes and deletes connections, sealing their
//! secrets on the way in. Handlers call this; it calls the store and the keyring.

use std::sync::Arc;

use secrecy::ExposeSecret;
use serde_json::Value;

use crate::crypto::{CryptoError, Field, Keyring, Sealed};
use crate::domain::{
    AccessToken, ApiKeyId, CLIENT_SECRET_GRACE, ClientId, ClientSecret, ClientSecrets, Connection,
    ConnectionId, ConnectionPatch, ConnectionStatus, MerchantToken, NewConnection, RefreshToken,
    SecretExpiry,
};
use crate::events::connection_events;
use crate::store::{
    ConnectionFilter, ConnectionRow, IdempotencyRecord, PreviousSecret, Store, StoreError,
    StoredToken,
};
use crate::tokens::{TokenService, open_client_secrets};

/// How often a change re-reads and retries when another write lands between its read and
/// its write (token writes are frequent on a busy connection), after a short random pause
/// that grows with each attempt, so writers racing on one row fall out of step.
const UPDATE_ATTEMPTS: u32 = 6;
const UPDATE_PAUSE_UNIT: std::time::Duration = std::time::Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("connection not found")]
    NotFound,
    #[error("idempotency key reused with a different request")]
    IdempotencyKeyReused,
    /// The credentials an operation began with are no longer the connection's.
    #[error("the connection's credentials changed meanwhile")]
    CredentialsChanged,
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl From<StoreError> for ConnectionError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => Self::NotFound,
            other => Self::Store(other),
        }
    }
}

/// An `Idempotency-Key` as presented by one caller, with the hash of its request.
pub struct IdempotencyKey {
    pub api_key_id: ApiKeyId,
    pub key: String,
    pub request_hash: String,
}

/// What a create answers: the connection's JSON, the first one again on a replay.
pub struct Created {
    pub id: ConnectionId,
    pub body: Value,
}

pub struct Page {
    pub items: Vec<Connection>,
    pub next: Option<ConnectionId>,
}

#[derive(Clone)]
pub struct Connections {
    store: Store,
    keyring: Arc<Keyring>,
    tokens: TokenService,
}

impl Connections {
    pub fn new(store: Store, keyring: Arc<Keyring>, tokens: TokenService) -> Self {
        Self {
            store,
            keyring,
            tokens,
        }
    }

    pub async fn create(
        &self,
        new: NewConnection,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Created, ConnectionError> {
        if let Some(key) = &idempotency {
            if let Some(replay) = self.replay(key).await? {
                return Ok(replay);
            }
        }
        warn_if_undocumented(&new.client_secret);
        let now = crate::domain::now();
        let id = ConnectionId::generate();
        let expiry = match new.client_secret_expires_at {
            Some(at) => SecretExpiry::known(at),
            None => SecretExpiry::estimated_from(now),
        };
        let connection = Connection {
            id,
            name: new.name,
            account_type: new.account_type,
            region: new.region,
            environment: new.environment,
            client_id: new.client_id,
            client_secret_hint: new.client_secret.hint(),
            client_secret_expires_at: expiry.at,
            client_secret_expires_at_estimated: expiry.estimated,
            client_secret_updated_at: now,
            merchant_token: new.merchant_token,
            application_id: new.application_id,
            marketplace_ids: Vec::new(),
            status: ConnectionStatus::Pending,
            last_error: None,
            authorized_at: None,
            last_tested_at: None,
            created_at: now,
            updated_at: now,
        };
        let row = ConnectionRow {
            client_secret: self.seal(id, Field::ClientSecret, new.client_secret.expose()),
            refresh_token: self.seal(id, Field::RefreshToken, new.refresh_token.expose()),
            access_token: None,
            previous_client_secret: None,
            version: 1,
            connection,
        };
        let body = serde_json::to_value(&row.connection).expect("a connection serializes");
        let record = idempotency.map(|key| IdempotencyRecord {
            api_key_id: key.api_key_id,
            key: key.key,
            request_hash: key.request_hash,
            connection_id: id,
            response: body.to_string(),
            created_at: now,
        });
        let events = connection_events(None, Some(&row));
        match self
            .store
            .insert_connection(&row, record.as_ref(), &events)
            .await
        {
            Ok(()) => Ok(Created { id, body }),
            // The same key won a race with this request: answer what it created.
            Err(StoreError::Conflict) if record.is_some() => {
                let record = record.expect("checked above");
                let key = IdempotencyKey {
                    api_key_id: record.api_key_id,
                    key: record.key,
                    request_hash: record.request_hash,
                };
                self.replay(&key)
                    .await?
                    .ok_or(ConnectionError::Store(StoreError::Conflict))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// The first answer to this idempotency key, if it was used in the last 24 hours.
    async fn replay(&self, key: &IdempotencyKey) -> Result<Option<Created>, ConnectionError> {
        let Some(record) = self
            .store
            .find_idempotency(key.api_key_id, &key.key)
            .await?
        else {
            return Ok(None);
        };
        if record.request_hash != key.request_hash {
            return Err(ConnectionError::IdempotencyKeyReused);
        }
        let body = serde_json::from_str(&record.response)
            .map_err(|err| StoreError::Corrupt(format!("idempotency response: {err}")))?;
        Ok(Some(Created {
            id: record.connection_id,
            body,
        }))
    }

    pub async fn get(&self, id: ConnectionId) -> Result<Connection, ConnectionError> {
        Ok(self.store.get_connection(id).await?.connection)
    }

    pub async fn list(
        &self,
        filter: ConnectionFilter,
        limit: u32,
    ) -> Result<Page, ConnectionError> {
        // One more than asked tells whether another page follows.
        let mut items = self.store.list_connections(&filter, limit + 1).await?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|connection| connection.id)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    pub async fn update(
        &self,
        id: ConnectionId,
        patch: ConnectionPatch,
    ) -> Result<Connection, ConnectionError> {
        self.modify(id, |row| self.apply(row, &patch)).await
    }

    /// Records what a test of the connection found (`connection_test.rs` decides what),
    /// if the token tested with (fetched at `token_fetched_at`) is still the connection's:
    /// new credentials or a refusal since then drop it, and the finding would concern
    /// credentials that are no longer the connection's.
    pub async fn record(
        &self,
        id: ConnectionId,
        token_fetched_at: chrono::DateTime<chrono::Utc>,
        change: impl Fn(&mut Connection),
    ) -> Result<Connection, ConnectionError> {
        self.modify(id, |row| {
            let same_token = row.access_token.as_ref().map(|token| token.fetched_at);
            if same_token == Some(token_fetched_at) {
                change(&mut row.connection);
            }
            Ok(())
        })
        .await
    }

    /// Stores what a website authorization brought, sealed: the seller's refresh token
    /// and the first access token; the connection is `active`. Refused with
    /// `CredentialsChanged` when the connection's client id or merchant token is no
    /// longer the one the authorization was made for.
    pub async fn store_authorization(
        &self,
        id: ConnectionId,
        made_for: (&ClientId, &MerchantToken),
        refresh_token: &RefreshToken,
        access_token: &AccessToken,
    ) -> Result<Connection, ConnectionError> {
        self.modify(id, |row| {
            let c = &mut row.connection;
            if (&c.client_id, &c.merchant_token) != made_for {
                return Err(ConnectionError::CredentialsChanged);
            }
            let now = crate::domain::now();
            row.refresh_token = self.seal(id, Field::RefreshToken, refresh_token.expose());
            row.access_token = Some(StoredToken {
                sealed: self.seal(id, Field::AccessToken, access_token.expose()),
                fetched_at: access_token.fetched_at,
                expires_at: access_token.expires_at,
            });
            c.status = ConnectionStatus::Active;
            c.last_error = None;
            c.authorized_at = Some(now);
            Ok(())
        })
        .await
    }

    /// The connection's client secrets, opened: for an exchange made on its behalf.
    pub async fn client_secrets(
        &self,
        id: ConnectionId,
    ) -> Result<(Connection, ClientSecrets), ConnectionError> {
        let row = self.store.get_connection(id).await?;
        let secrets = open_client_secrets(&self.keyring, &row, crate::domain::now())?;
        Ok((row.connection, secrets))
    }

    /// Reads the row, applies `change` and writes it if anything changed, version-checked:
    /// when another write lands in between, reads and applies again (a few times).
    async fn modify(
        &self,
        id: ConnectionId,
        change: impl Fn(&mut ConnectionRow) -> Result<(), ConnectionError>,
    ) -> Result<Connection, ConnectionError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut row = self.store.get_connection(id).await?;
            let before = row.clone();
            change(&mut row)?;
            if !changed(&before, &row) {
                return Ok(before.connection);
            }
            row.connection.updated_at = crate::domain::now();
            row.version += 1;
            let events = connection_events(Some(&before), Some(&row));
            match self.store.update_connection(&row, &events).await {
                Ok(()) => {
                    // New credentials, or what a token response shows: re-read it here at
                    // once (the other replicas hear of it from the store).
                    self.tokens.invalidate(id);
                    return Ok(row.connection);
                }
                Err(StoreError::Conflict) if attempts < UPDATE_ATTEMPTS => {
                    let bound = UPDATE_PAUSE_UNIT * attempts;
                    let pause = rand::Rng::gen_range(&mut rand::thread_rng(), bound / 4..=bound);
                    tokio::time::sleep(pause).await;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Applies `patch` to `row`. New credentials send the connection back to `pending`
    /// and drop its cached access token.
    fn apply(
        &self,
        row: &mut ConnectionRow,
        patch: &ConnectionPatch,
    ) -> Result<(), ConnectionError> {
        let id = row.connection.id;
        let now = crate::domain::now();
        let c = &mut row.connection;
        let mut new_credentials = false;

        if let Some(name) = &patch.name {
            c.name = name.clone();
        }
        if let Some(account_type) = patch.account_type {
            c.account_type = account_type;
        }
        if let Some(merchant_token) = &patch.merchant_token {
            c.merchant_token = *merchant_token;
        }
        if let Some(application_id) = &patch.application_id {
            c.application_id = application_id.clone();
        }
        if let Some(region) = patch.region.filter(|region| *region != c.region) {
            c.region = region;
            new_credentials = true;
        }
        if let Some(environment) = patch.environment.filter(|env| *env != c.environment) {
            c.environment = environment;
            new_credentials = true;
        }
        if let Some(client_id) = patch.client_id.as_ref().filter(|id| **id != c.client_id) {
            c.client_id = client_id.clone();
            new_credentials = true;
        }
        if let Some(secret) = &patch.client_secret {
            let current =
                self.keyring
                    .open(&id.to_string(), Field::ClientSecret, &row.client_secret)?;
            if current.expose_secret() != secret.expose() {
                // Amazon accepts a replaced secret a while longer: kept for LWA to fall
                // back on should the new one be refused meanwhile.
                row.previous_client_secret = Some(PreviousSecret {
                    sealed: row.client_secret.clone(),
                    until: now + CLIENT_SECRET_GRACE,
                });
                row.client_secret = self.seal(id, Field::ClientSecret, secret.expose());
                c.client_secret_hint = secret.hint();
                c.client_secret_updated_at = now;
                // A new secret restarts the estimate unless a date comes with it.
                if c.client_secret_expires_at_estimated || patch.client_secret_expires_at.is_none()
                {
                    c.set_secret_expiry(SecretExpiry::estimated_from(now));
                }
                new_credentials = true;
                warn_if_undocumented(secret);
            }
        }
        if let Some(expires_at) = patch.client_secret_expires_at {
            c.set_secret_expiry(match expires_at {
                Some(at) => SecretExpiry::known(at),
                None => SecretExpiry::estimated_from(c.client_secret_updated_at),
            });
        }
        if let Some(token) = &patch.refresh_token {
            let current =
                self.keyring
                    .open(&id.to_string(), Field::RefreshToken, &row.refresh_token)?;
            if current.expose_secret() != token.expose() {
                row.refresh_token = self.seal(id, Field::RefreshToken, token.expose());
                new_credentials = true;
            }
        }
        if new_credentials {
            // What Amazon said about the old credentials no longer applies.
            c.status = ConnectionStatus::Pending;
            c.last_error = None;
            row.access_token = None;
        }
        Ok(())
    }

    pub async fn delete(&self, id: ConnectionId) -> Result<(), ConnectionError> {
        let row = self.store.get_connection(id).await?;
        let events = connection_events(Some(&row), None);
        self.store.delete_connection(id, &events).await?;
        self.tokens.invalidate(id);
        Ok(())
    }

    fn seal(&self, id: ConnectionId, field: Field, plaintext: &str) -> Sealed {
        self.keyring.seal(&id.to_string(), field, plaintext)
    }
}

/// Whether a change is worth a write (an empty or same-value PATCH changes nothing, not
/// even `updated_at`).
pub(crate) fn changed(before: &ConnectionRow, after: &ConnectionRow) -> bool {
    let public = |row: &ConnectionRow| serde_json::to_value(&row.connection).ok();
    public(before) != public(after)
        || before.client_secret != after.client_secret
        || before.refresh_token != after.refresh_token
        || before.access_token != after.access_token
        || before.previous_client_secret != after.previous_client_secret
}

fn warn_if_undocumented(secret: &ClientSecret) {
    if !secret.is_documented_format() {
        tracing::warn!("client secret is not in Amazon's documented format; accepted anyway");
    }
}
