//! The SP-API notifications about an application's client secret, as an operator's queue
//! consumer forwards them (docs/amazon.md, "Client secret lifecycle").

use chrono::{DateTime, Utc};

use super::{ClientId, ClientSecret, ParseError};

pub const NEW_SECRET: &str = "APPLICATION_OAUTH_CLIENT_NEW_SECRET";
pub const SECRET_EXPIRY: &str = "APPLICATION_OAUTH_CLIENT_SECRET_EXPIRY";

/// Amazon's `notificationMetadata.notificationId`: what makes a delivery a duplicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationId(String);

impl NotificationId {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let valid = (1..=128).contains(&input.len()) && input.bytes().all(|b| b.is_ascii_graphic());
        valid
            .then(|| Self(input.to_owned()))
            .ok_or_else(|| ParseError::new("must be 1 to 128 printable characters"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a notification says.
#[derive(Debug)]
pub enum SecretNotice {
    /// Amazon issued a new secret (after a rotation); the old one works until
    /// `old_expires_at`.
    NewSecret {
        secret: ClientSecret,
        expires_at: DateTime<Utc>,
        old_expires_at: DateTime<Utc>,
    },
    /// The current secret expires at `expires_at`.
    Expiry { expires_at: DateTime<Utc> },
}

#[derive(Debug)]
pub struct SpApiNotification {
    pub id: NotificationId,
    /// Amazon's `eventTime`: a notice older than the secret stored since concerns an older
    /// secret, and is not applied to it.
    pub event_time: DateTime<Utc>,
    pub client_id: ClientId,
    pub notice: SecretNotice,
}

impl SpApiNotification {
    /// Amazon's `notificationType`.
    pub fn kind(&self) -> &'static str {
        match self.notice {
            SecretNotice::NewSecret { .. } => NEW_SECRET,
            SecretNotice::Expiry { .. } => SECRET_EXPIRY,
        }
    }
}
