//! Domain types: every value from outside is parsed into one of these once, at the edge,
//! so the rest of the service never handles an unchecked string.

mod amazon_ids;
mod api_key;
mod connection;
mod id;
mod marketplace;
mod notification;
mod oauth;
mod region;
mod restricted;
pub mod timestamp;
mod token;

pub use amazon_ids::{
    ApplicationId, ClientId, ClientSecret, ClientSecrets, MAX_TOKEN_LEN, MerchantToken,
    RefreshToken,
};
pub use api_key::{
    API_KEY_PREFIX, ApiKey, ApiKeyHash, ApiKeyName, ApiKeyToken, PresentedKey, Scope,
};
pub use connection::{
    CLIENT_SECRET_GRACE, Connection, ConnectionName, ConnectionPatch, ConnectionStatus, LastError,
    NewConnection, SecretExpiry, parse_period,
};
pub use id::{ApiKeyId, ConnectionId, ResourceId};
pub use marketplace::{MARKETPLACES, Marketplace};
pub use notification::{
    NEW_SECRET, NotificationId, SECRET_EXPIRY, SecretNotice, SpApiNotification,
};
pub use oauth::{AuthorizationCode, OAuthStateToken};
pub use region::{AccountType, Environment, Region};
pub use restricted::{
    DataElement, HttpMethod, MAX_RESOURCES, ResourcePath, RestrictedDataRequest, RestrictedResource,
};
pub use token::{AccessToken, GrantlessScope, is_json_plain};

/// The current time at the precision both databases store (microseconds), so what a
/// write returns equals what a later read returns.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::Timelike;
    let now = chrono::Utc::now();
    // Dropping the nanoseconds directly: `duration_trunc` costs ten times as much, and
    // this is called on every token request.
    let nanos = now.nanosecond();
    now.with_nanosecond(nanos - nanos % 1_000)
        .expect("fewer nanoseconds are always valid")
}

/// Why an outside value was refused; the HTTP layer adds the field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl ParseError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Parses a closed set of lowercase names; `values` lists them for the error message.
fn parse_enum<T: Copy>(input: &str, values: &[(&str, T)]) -> Result<T, ParseError> {
    values
        .iter()
        .find(|(name, _)| *name == input)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let names: Vec<_> = values.iter().map(|(name, _)| format!("`{name}`")).collect();
            ParseError::new(format!("must be one of {}", names.join(", ")))
        })
}

#[cfg(test)]
mod tests {
    use chrono::Timelike;

    #[test]
    fn now_is_whole_microseconds_and_current() {
        for _ in 0..1_000 {
            let before = chrono::Utc::now();
            let now = super::now();
            assert_eq!(now.nanosecond() % 1_000, 0, "{now:?}");
            assert!(now <= chrono::Utc::now());
            assert!(
                before - now < chrono::TimeDelta::microseconds(1),
                "{before:?} {now:?}"
            );
        }
    }
}
