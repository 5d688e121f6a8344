//! One application's client secret, shared by every connection of its client id
//! (docs/amazon.md, "Client secret lifecycle"): replaced by hand or from Amazon's
//! notification, its expiry updated, a rotation asked of Amazon. A replaced secret is kept
//! until its grace ends, for LWA calls to fall back on (`amazon::lwa`).
//!
//! Notifications come through a queue: late, twice, out of order. Each is applied once
//! (recorded by id in the transaction that applies it), and a notice older than the
//! secret a connection holds is not applied to it, so nothing brings an older secret back.

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;

use crate::amazon::spapi::{SpApiClient, SpApiError};
use crate::crypto::{CryptoError, Field, Keyring};
use crate::domain::{
    CLIENT_SECRET_GRACE, ClientId, ClientSecret, ConnectionStatus, Environment, GrantlessScope,
    SecretExpiry, SecretNotice, SpApiNotification, now,
};
use crate::events::{NewEvent, Target};
use crate::store::{NotificationRecord, SecretChange, Store, StoreError};
use crate::tokens::{TokenError, TokenService};
use serde_json::json;

/// Makes a notification's record from its outcome and the connections it changed.
type MakeRecord<'a> = dyn Fn(&str, usize) -> NotificationRecord + Sync + 'a;

/// How often a new secret is tried again when a connection of the application changed
/// meanwhile (one was added, or its secret replaced by someone else).
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
    /// Of those, the ones that changed (the others held this already, or something
    /// newer).
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
    #[error(
        "no production connection of this application has working client credentials; \
         store a working secret first (PUT /client-secrets/{{client_id}})"
    )]
    NoUsableConnection,
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
        self.store_secret(client_id, new, None, None)
            .await
            .map(|changed| changed.expect("recorded only with a notification"))
    }

    /// Asks Amazon for a new secret, with the application's grantless rotation token
    /// (fetched for a production connection whose client credentials work). The secret
    /// comes later, by notification.
    pub async fn rotate(&self, client_id: &ClientId) -> Result<(), SecretError> {
        let rows = self.store.connections_of_client(client_id).await?;
        if rows.is_empty() {
            return Err(SecretError::UnknownClient);
        }
        // A sandbox host would accept the call and rotate nothing.
        let usable = rows.iter().find(|row| {
            let c = &row.connection;
            c.environment == Environment::Production
                && !matches!(
                    c.status,
                    ConnectionStatus::ClientCredentialsInvalid
                        | ConnectionStatus::ClientSecretExpired
                )
        });
        let usable = usable.ok_or(SecretError::NoUsableConnection)?;
        let (grant, _) = self
            .tokens
            .grantless(
                usable.connection.id,
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
        let record = |outcome: &str, connections: usize| NotificationRecord {
            notification_id: id.to_owned(),
            notification_type: notification.kind().to_owned(),
            client_id: client_id.as_str().to_owned(),
            outcome: outcome.to_owned(),
            connections: connections as i64,
            received_at: now(),
        };
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
                self.store_secret(
                    client_id,
                    &new,
                    Some(notification.event_time),
                    Some(&record),
                )
                .await
            }
            SecretNotice::Expiry { expires_at } => {
                self.store_expiry(client_id, *expires_at, notification.event_time, &record)
                    .await
            }
        };
        let outcome = match applied {
            Ok(Some(changed)) => NotificationOutcome::Applied(changed),
            Ok(None) => NotificationOutcome::Duplicate,
            Err(SecretError::UnknownClient) => {
                if !self
                    .store
                    .insert_notification(&record("ignored", 0))
                    .await?
                {
                    return Ok(NotificationOutcome::Duplicate);
                }
                NotificationOutcome::Ignored
            }
            Err(err) => return Err(err),
        };
        tracing::info!(
            notification_id = id,
            notification_type = notification.kind(),
            client_id = %client_id,
            outcome = ?outcome,
            "SP-API notification handled"
        );
        Ok(outcome)
    }

    /// Amazon's expiry date on the connections of `client_id` whose secret is not newer
    /// than the notice. `Ok(None)`: recorded before.
    async fn store_expiry(
        &self,
        client_id: &ClientId,
        expires_at: DateTime<Utc>,
        event_time: DateTime<Utc>,
        record: &MakeRecord<'_>,
    ) -> Result<Option<Changed>, SecretError> {
        let connections = self.store.connections_of_client(client_id).await?.len();
        if connections == 0 {
            return Err(SecretError::UnknownClient);
        }
        let changed = self
            .store
            .set_client_secret_expiry(
                client_id,
                expires_at,
                event_time,
                &record("applied", connections),
                &[NewEvent::new(
                    "client_secret.expiry_updated",
                    Target::ClientSecret(client_id.clone()),
                    json!({"expires_at": expires_at}),
                )],
            )
            .await?;
        Ok(changed.map(|changed| Changed {
            connections,
            changed: changed as usize,
        }))
    }

    /// Stores `new` on every connection of `client_id` that does not hold it yet and,
    /// given `not_before` (a notification's time), whose secret is not newer than that.
    /// `record` makes the notification's record, written in the same transaction:
    /// `Ok(None)` if it had been recorded already.
    async fn store_secret(
        &self,
        client_id: &ClientId,
        new: &NewSecret,
        not_before: Option<DateTime<Utc>>,
        record: Option<&MakeRecord<'_>>,
    ) -> Result<Option<Changed>, SecretError> {
        for _ in 0..ATTEMPTS {
            let rows = self.store.connections_of_client(client_id).await?;
            if rows.is_empty() {
                return Err(SecretError::UnknownClient);
            }
            let now = now();
            let mut changes = Vec::new();
            for row in &rows {
                let c = &row.connection;
                if not_before.is_some_and(|at| c.client_secret_updated_at > at) {
                    continue;
                }
                let owner = c.id.to_string();
                let current = self
                    .keyring
                    .open(&owner, Field::ClientSecret, &row.client_secret)?;
                let expiry = match new.expires_at {
                    Some(at) => SecretExpiry::known(at),
                    None => SecretExpiry::estimated_from(now),
                };
                if current.expose_secret() == new.secret.expose() {
                    continue;
                }
                changes.push(SecretChange {
                    id: c.id,
                    old: row.client_secret.clone(),
                    new: self
                        .keyring
                        .seal(&owner, Field::ClientSecret, new.secret.expose()),
                    hint: new.secret.hint(),
                    updated_at: now,
                    expiry,
                    previous_until: new.previous_until,
                });
            }
            let record = record.map(|make| make("applied", changes.len()));
            let mut events = Vec::new();
            if !changes.is_empty() {
                events.push(NewEvent::new(
                    "client_secret.replaced",
                    Target::ClientSecret(client_id.clone()),
                    json!({
                        "connections": changes.len(),
                        "hint": new.secret.hint(),
                        "expires_at": new.expires_at,
                        "notification_id": record.as_ref().map(|r| r.notification_id.clone()),
                    }),
                ));
            }
            // The store sends refused connections back to `pending`.
            for row in rows.iter().filter(|row| {
                changes.iter().any(|change| change.id == row.connection.id)
                    && matches!(
                        row.connection.status,
                        ConnectionStatus::ClientCredentialsInvalid
                            | ConnectionStatus::ClientSecretExpired
                    )
            }) {
                events.push(NewEvent::new(
                    "connection.status_changed",
                    Target::Connection(row.connection.id),
                    json!({
                        "from": row.connection.status,
                        "to": ConnectionStatus::Pending,
                        "error_code": null,
                    }),
                ));
            }
            match self
                .store
                .replace_client_secret(client_id, rows.len(), &changes, record.as_ref(), &events)
                .await
            {
                Ok(false) => return Ok(None),
                Ok(true) => {
                    for change in &changes {
                        self.tokens.invalidate(change.id);
                    }
                    if !changes.is_empty() {
                        tracing::info!(
                            client_id = %client_id,
                            connections = changes.len(),
                            "stored a new client secret"
                        );
                    }
                    return Ok(Some(Changed {
                        connections: rows.len(),
                        changed: changes.len(),
                    }));
                }
                Err(StoreError::Conflict) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(SecretError::KeptChanging)
    }
}
