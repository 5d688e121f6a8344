//! One application's client secret, shared by every connection of its client id
//! (docs/amazon.md, "Client secret lifecycle"): replaced by hand or from Amazon's
//! notification, its expiry updated, a rotation asked of Amazon. A replaced secret is kept
//! until its grace ends, for LWA calls to fall back on (`amazon::lwa`).

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;

use crate::amazon::spapi::{SpApiClient, SpApiError};
use crate::connections::changed as changed_row;
use crate::crypto::{CryptoError, Field, Keyring};
use crate::domain::{
    CLIENT_SECRET_GRACE, ClientId, ClientSecret, ConnectionStatus, GrantlessScope, SecretExpiry,
    SecretNotice, SpApiNotification, now,
};
use crate::store::{ConnectionRow, NotificationRecord, PreviousSecret, Store, StoreError};
use crate::tokens::{TokenError, TokenService};

/// How often a change to every connection of a client id is tried again when one of them
/// changes meanwhile.
const ATTEMPTS: usize = 3;

/// A new client secret for every connection of an application.
#[derive(Debug)]
pub struct NewSecret {
    pub secret: ClientSecret,
    /// Amazon's date, if known; otherwise estimated at 180 days.
    pub expires_at: Option<DateTime<Utc>>,
    /// Until when the replaced secret is still tried (Amazon accepts it for 7 days).
    pub previous_until: DateTime<Utc>,
}

impl NewSecret {
    /// A secret stored by hand: the old one is kept for Amazon's 7 days.
    pub fn by_hand(secret: ClientSecret, expires_at: Option<DateTime<Utc>>) -> Self {
        Self {
            secret,
            expires_at,
            previous_until: now() + CLIENT_SECRET_GRACE,
        }
    }
}

/// What a change to an application's connections did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    /// Connections using the client id.
    pub connections: usize,
    /// Of those, the ones that changed (the others held this already).
    pub changed: usize,
}

/// What a forwarded notification did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationOutcome {
    Applied(Changed),
    /// No connection uses the client id; recorded.
    Ignored,
    /// Seen before (same `notificationId`); nothing done.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("no connection uses this client id")]
    UnknownClient,
    #[error("the connections of this client id kept changing; retry")]
    KeptChanging,
    /// Getting the grantless rotation token.
    #[error(transparent)]
    Token(TokenError),
    #[error("Amazon refused or failed the rotation: {0}")]
    SpApi(SpApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

#[derive(Clone)]
pub struct ApplicationSecrets {
    store: Store,
    keyring: std::sync::Arc<Keyring>,
    tokens: TokenService,
    spapi: SpApiClient,
}

impl ApplicationSecrets {
    pub fn new(
        store: Store,
        keyring: std::sync::Arc<Keyring>,
        tokens: TokenService,
        spapi: SpApiClient,
    ) -> Self {
        Self {
            store,
            keyring,
            tokens,
            spapi,
        }
    }

    /// Replaces the secret of every connection of `client_id` in one transaction. Each
    /// keeps the secret it had until `previous_until`; connections whose credentials
    /// were refused go back to `pending`; their stored access tokens are dropped on every
    /// replica. A connection that already has this secret only takes the expiry.
    pub async fn replace(
        &self,
        client_id: &ClientId,
        new: &NewSecret,
    ) -> Result<Changed, SecretError> {
        let changed = self
            .change_all(client_id, |row, now| self.put_secret(row, new, now))
            .await?;
        if changed.changed > 0 {
            tracing::info!(
                client_id = %client_id,
                connections = changed.changed,
                "stored a new client secret"
            );
        }
        Ok(changed)
    }

    /// Sets Amazon's expiry date on every connection of `client_id`.
    pub async fn set_expiry(
        &self,
        client_id: &ClientId,
        expires_at: DateTime<Utc>,
    ) -> Result<Changed, SecretError> {
        self.change_all(client_id, |row, _| {
            row.connection
                .set_secret_expiry(SecretExpiry::known(expires_at));
            Ok(())
        })
        .await
    }

    /// Asks Amazon for a new secret, with the application's grantless rotation token
    /// (fetched for the first connection of the client id). The secret comes later, by
    /// notification.
    pub async fn rotate(&self, client_id: &ClientId) -> Result<(), SecretError> {
        let first = self
            .store
            .connections_of_client(client_id)
            .await?
            .into_iter()
            .next()
            .ok_or(SecretError::UnknownClient)?;
        let (grant, _) = self
            .tokens
            .grantless(
                first.connection.id,
                GrantlessScope::ClientSecretRotation,
                60,
                false,
            )
            .await
            .map_err(SecretError::Token)?;
        self.spapi
            .rotate_client_secret(&grant.endpoint, &grant.token)
            .await
            .map_err(SecretError::SpApi)?;
        tracing::info!(client_id = %client_id, "Amazon accepted a client secret rotation");
        Ok(())
    }

    /// Applies a forwarded notification once: a duplicate (same id) does nothing, one
    /// about a client id no connection uses is recorded as ignored.
    pub async fn apply(
        &self,
        notification: &SpApiNotification,
    ) -> Result<NotificationOutcome, SecretError> {
        let id = notification.id.as_str();
        if self.store.find_notification(id).await?.is_some() {
            return Ok(NotificationOutcome::Duplicate);
        }
        let client_id = &notification.client_id;
        let applied = match &notification.notice {
            SecretNotice::NewSecret {
                secret,
                expires_at,
                old_expires_at,
            } => {
                let new = NewSecret {
                    secret: secret.clone(),
                    expires_at: Some(*expires_at),
                    previous_until: *old_expires_at,
                };
                self.replace(client_id, &new).await
            }
            SecretNotice::Expiry { expires_at } => self.set_expiry(client_id, *expires_at).await,
        };
        let outcome = match applied {
            Ok(changed) => NotificationOutcome::Applied(changed),
            Err(SecretError::UnknownClient) => NotificationOutcome::Ignored,
            Err(err) => return Err(err),
        };
        let (label, connections) = match outcome {
            NotificationOutcome::Applied(changed) => ("applied", changed.changed),
            _ => ("ignored", 0),
        };
        let record = NotificationRecord {
            notification_id: id.to_owned(),
            notification_type: notification.kind().to_owned(),
            client_id: client_id.as_str().to_owned(),
            outcome: label.to_owned(),
            connections: connections as i64,
            received_at: now(),
        };
        // Applying twice is harmless (the second finds the secret stored): a duplicate
        // delivered at the same moment only loses the race to record.
        if !self.store.insert_notification(&record).await? {
            return Ok(NotificationOutcome::Duplicate);
        }
        tracing::info!(
            notification_id = id,
            notification_type = notification.kind(),
            client_id = %client_id,
            outcome = label,
            "SP-API notification handled"
        );
        Ok(outcome)
    }

    /// Applies `change` to every connection of `client_id` and writes those it changed,
    /// all in one transaction; again from a fresh read when one changed meanwhile.
    async fn change_all(
        &self,
        client_id: &ClientId,
        change: impl Fn(&mut ConnectionRow, DateTime<Utc>) -> Result<(), SecretError>,
    ) -> Result<Changed, SecretError> {
        for _ in 0..ATTEMPTS {
            let rows = self.store.connections_of_client(client_id).await?;
            if rows.is_empty() {
                return Err(SecretError::UnknownClient);
            }
            let now = now();
            let mut changed = Vec::new();
            for row in &rows {
                let mut new = row.clone();
                change(&mut new, now)?;
                if changed_row(row, &new) {
                    new.connection.updated_at = now;
                    new.version += 1;
                    changed.push(new);
                }
            }
            match self
                .store
                .update_connections_of_client(client_id, rows.len(), &changed)
                .await
            {
                Ok(()) => {
                    for row in &changed {
                        self.tokens.invalidate(row.connection.id);
                    }
                    return Ok(Changed {
                        connections: rows.len(),
                        changed: changed.len(),
                    });
                }
                Err(StoreError::Conflict) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(SecretError::KeptChanging)
    }

    /// One connection takes the new secret (if it is new to it) and its expiry.
    fn put_secret(
        &self,
        row: &mut ConnectionRow,
        new: &NewSecret,
        now: DateTime<Utc>,
    ) -> Result<(), SecretError> {
        let owner = row.connection.id.to_string();
        let current = self
            .keyring
            .open(&owner, Field::ClientSecret, &row.client_secret)?;
        let c = &mut row.connection;
        if current.expose_secret() != new.secret.expose() {
            row.previous_client_secret = Some(PreviousSecret {
                sealed: row.client_secret.clone(),
                until: new.previous_until,
            });
            row.client_secret = self
                .keyring
                .seal(&owner, Field::ClientSecret, new.secret.expose());
            c.client_secret_hint = new.secret.hint();
            c.client_secret_updated_at = now;
            c.set_secret_expiry(SecretExpiry::estimated_from(now));
            row.access_token = None;
            if matches!(
                c.status,
                ConnectionStatus::ClientCredentialsInvalid | ConnectionStatus::ClientSecretExpired
            ) {
                c.status = ConnectionStatus::Pending;
                c.last_error = None;
            }
        }
        if let Some(at) = new.expires_at {
            c.set_secret_expiry(SecretExpiry::known(at));
        }
        Ok(())
    }
}
