//! Website authorization of public applications, beside self-authorization: the seller
//! consents on Amazon's site and Amazon sends their browser back with a one-time code,
//! which is exchanged for the seller's refresh token (docs/amazon.md, "Website
//! authorization").
//!
//! 1. `consent_url` hands out the Seller (or Vendor) Central consent URL of a connection,
//!    with a random `state` bound to it: stored as a hash, single use, valid 10 minutes.
//! 2. `complete` takes the browser's return: it uses the state up (whatever happens
//!    next), checks that the seller named in the return is the connection's, exchanges
//!    the code with `grant_type=authorization_code` (once: a code is good once), and
//!    stores the refresh token sealed.
//!
//! The state proves the browser comes back from a consent URL this service handed out
//! for this connection. `selling_partner_id` is what the browser says; its check stops a
//! seller consenting with the wrong account, not someone who holds the consent URL and
//! edits the return (the URL is a credential for its 10 minutes; the frontend shows it
//! only to its signed-in customer).
//!
//! What the browser brings is untrusted: each value is parsed before anything is looked
//! up, and none is ever logged or echoed back.

use chrono::{DateTime, Duration, Utc};
use reqwest::Url;

use crate::amazon::lwa::{LwaClient, LwaError};
use crate::config::WebsiteAuthUrls;
use crate::connections::{ConnectionError, Connections};
use crate::domain::{
    AuthorizationCode, ConnectionId, ConnectionStatus, Marketplace, OAuthStateToken, ParseError,
    now,
};
use crate::store::{OAuthState, Store, StoreError};

/// How long a consent URL's state is accepted.
pub const STATE_LIFETIME: Duration = Duration::minutes(10);

/// What the caller asks of a consent URL.
#[derive(Debug, Default)]
pub struct ConsentRequest {
    /// `version=beta`: the application is still a draft.
    pub draft: bool,
    /// Whose Seller Central to send the seller to; by default the connection's first
    /// known marketplace, else its region's main one.
    pub marketplace: Option<&'static Marketplace>,
}

pub struct ConsentUrl {
    pub authorization_url: Url,
    pub state: OAuthStateToken,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    #[error("website authorization is off: REGISTRY_PUBLIC_URL is not set")]
    NotConfigured,
    #[error("the connection has no application_id")]
    NoApplicationId,
    #[error("marketplace {marketplace} is not in the connection's region")]
    MarketplaceOutsideRegion { marketplace: &'static str },
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The query Amazon sends the browser back with, as it came. No `Debug`: the state and
/// the code are credentials until used.
#[derive(Default, serde::Deserialize)]
pub struct CallbackQuery {
    pub state: Option<String>,
    pub spapi_oauth_code: Option<String>,
    pub selling_partner_id: Option<String>,
}

/// A completed authorization.
#[derive(Debug)]
pub struct Authorized {
    pub connection_id: ConnectionId,
    pub status: ConnectionStatus,
}

/// Why a callback changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("website authorization is off")]
    NotConfigured,
    #[error("`{field}` {problem}")]
    InvalidRequest {
        field: &'static str,
        problem: String,
    },
    /// Unknown, or already used.
    #[error("this authorization link is unknown or was already used")]
    UnknownState,
    #[error("this authorization link expired")]
    StateExpired { connection_id: ConnectionId },
    #[error("the connection was deleted")]
    ConnectionGone { connection_id: ConnectionId },
    #[error("the seller who consented is not the connection's merchant")]
    MerchantMismatch { connection_id: ConnectionId },
    #[error("the connection's credentials changed during the authorization")]
    CredentialsChanged { connection_id: ConnectionId },
    /// LWA refused the exchange (`invalid_grant`: the code is wrong, used or expired;
    /// `invalid_client`: the client id or secret), or answered without a refresh token.
    #[error("{error}")]
    Refused {
        connection_id: ConnectionId,
        error: LwaError,
    },
    #[error("{error}")]
    Unavailable {
        connection_id: ConnectionId,
        error: LwaError,
    },
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl CallbackError {
    /// The connection concerned, once the state named one.
    pub fn connection_id(&self) -> Option<ConnectionId> {
        match self {
            Self::StateExpired { connection_id }
            | Self::ConnectionGone { connection_id }
            | Self::MerchantMismatch { connection_id }
            | Self::CredentialsChanged { connection_id }
            | Self::Refused { connection_id, .. }
            | Self::Unavailable { connection_id, .. } => Some(*connection_id),
            Self::NotConfigured
            | Self::InvalidRequest { .. }
            | Self::UnknownState
            | Self::Internal(_) => None,
        }
    }
}

#[derive(Clone)]
pub struct WebsiteAuthorization {
    store: Store,
    connections: Connections,
    lwa: LwaClient,
    urls: Option<WebsiteAuthUrls>,
}

impl WebsiteAuthorization {
    pub fn new(
        store: Store,
        connections: Connections,
        lwa: LwaClient,
        urls: Option<WebsiteAuthUrls>,
    ) -> Self {
        Self {
            store,
            connections,
            lwa,
            urls,
        }
    }

    /// Where the browser goes afterwards, if configured.
    pub fn return_url(&self) -> Option<&Url> {
        self.urls.as_ref().and_then(|urls| urls.return_url.as_ref())
    }

    /// Where Amazon sends the browser back, if configured.
    pub fn redirect_uri(&self) -> Option<&Url> {
        self.urls.as_ref().map(|urls| &urls.redirect_uri)
    }

    /// A consent URL for the connection, with a new state.
    pub async fn consent_url(
        &self,
        id: ConnectionId,
        request: ConsentRequest,
    ) -> Result<ConsentUrl, ConsentError> {
        let urls = self.urls.as_ref().ok_or(ConsentError::NotConfigured)?;
        let connection = self.connections.get(id).await?;
        let application_id = connection
            .application_id
            .as_ref()
            .ok_or(ConsentError::NoApplicationId)?;
        let marketplace = match request.marketplace {
            Some(marketplace) if marketplace.region != connection.region => {
                return Err(ConsentError::MarketplaceOutsideRegion {
                    marketplace: marketplace.id,
                });
            }
            Some(marketplace) => marketplace,
            None => connection
                .marketplace_ids
                .iter()
                .filter_map(|id| Marketplace::find(id))
                .find(|marketplace| marketplace.region == connection.region)
                .unwrap_or_else(|| Marketplace::home_of(connection.region)),
        };
        let central = marketplace.central_url(connection.account_type);
        let mut url = Url::parse(&format!("{central}/apps/authorize/consent"))
            .expect("the marketplace table holds URLs");
        let state = OAuthStateToken::generate();
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("application_id", application_id.as_str())
                .append_pair("state", state.expose())
                .append_pair("redirect_uri", urls.redirect_uri.as_str());
            if request.draft {
                query.append_pair("version", "beta");
            }
        }
        let created_at = now();
        let expires_at = created_at + STATE_LIFETIME;
        let stored = OAuthState {
            state_hash: state.hash(),
            connection_id: id,
            created_at,
            expires_at,
        };
        self.store.insert_oauth_state(&stored, created_at).await?;
        tracing::info!(connection_id = %id, draft = request.draft, "issued a consent URL");
        Ok(ConsentUrl {
            authorization_url: url,
            state,
            expires_at,
        })
    }

    /// Finishes an authorization from the browser's return. Nothing changes unless it
    /// succeeds, except that the state is used up.
    pub async fn complete(&self, query: CallbackQuery) -> Result<Authorized, CallbackError> {
        let urls = self.urls.as_ref().ok_or(CallbackError::NotConfigured)?;
        let state = required(query.state.as_deref(), "state", OAuthStateToken::parse)?;
        // Used up before anything else is looked at: whatever follows, it cannot be
        // presented again.
        let taken = self
            .store
            .take_oauth_state(&state.hash())
            .await
            .map_err(|err| CallbackError::Internal(err.into()))?
            .ok_or(CallbackError::UnknownState)?;
        let connection_id = taken.connection_id;
        if taken.expires_at <= now() {
            return Err(CallbackError::StateExpired { connection_id });
        }
        let code = required(
            query.spapi_oauth_code.as_deref(),
            "spapi_oauth_code",
            AuthorizationCode::parse,
        )?;
        let selling_partner_id = required(
            query.selling_partner_id.as_deref(),
            "selling_partner_id",
            selling_partner_id,
        )?;
        let (connection, client_secrets) =
            match self.connections.client_secrets(connection_id).await {
                Ok(found) => found,
                Err(ConnectionError::NotFound) => {
                    return Err(CallbackError::ConnectionGone { connection_id });
                }
                Err(err) => return Err(CallbackError::Internal(err.into())),
            };
        if connection.merchant_token.as_str() != selling_partner_id {
            tracing::warn!(
                %connection_id,
                "website authorization by another seller than the connection's; refused"
            );
            return Err(CallbackError::MerchantMismatch { connection_id });
        }

        let exchanged = self
            .lwa
            .authorization_code(
                &connection.client_id,
                &client_secrets,
                &code,
                urls.redirect_uri.as_str(),
            )
            .await;
        let grant = match exchanged {
            Ok(grant) => grant,
            Err(error @ LwaError::Unavailable { .. }) => {
                tracing::warn!(%connection_id, %error, "authorization code exchange failed");
                return Err(CallbackError::Unavailable {
                    connection_id,
                    error,
                });
            }
            Err(error) => {
                tracing::warn!(%connection_id, %error, "LWA refused the authorization code");
                return Err(CallbackError::Refused {
                    connection_id,
                    error,
                });
            }
        };
        let Some(refresh_token) = grant.refresh_token else {
            return Err(CallbackError::Refused {
                connection_id,
                error: LwaError::Protocol("the answer holds no refresh token".into()),
            });
        };
        let stored = self
            .connections
            .store_authorization(
                connection_id,
                (&connection.client_id, &connection.merchant_token),
                &refresh_token,
                &grant.access_token,
            )
            .await;
        match stored {
            Ok(connection) => {
                tracing::info!(%connection_id, "website authorization completed");
                Ok(Authorized {
                    connection_id,
                    status: connection.status,
                })
            }
            Err(ConnectionError::NotFound) => Err(CallbackError::ConnectionGone { connection_id }),
            Err(ConnectionError::CredentialsChanged) => {
                Err(CallbackError::CredentialsChanged { connection_id })
            }
            Err(err) => Err(CallbackError::Internal(err.into())),
        }
    }
}

fn required<T>(
    value: Option<&str>,
    field: &'static str,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<T, CallbackError> {
    let value = value.ok_or(CallbackError::InvalidRequest {
        field,
        problem: "is missing".into(),
    })?;
    parse(value).map_err(|err| CallbackError::InvalidRequest {
        field,
        problem: err.0,
    })
}

/// The seller (or vendor) id Amazon names: letters and digits, compared as given.
fn selling_partner_id(input: &str) -> Result<String, ParseError> {
    let valid = (1..=64).contains(&input.len()) && input.bytes().all(|b| b.is_ascii_alphanumeric());
    valid
        .then(|| input.to_owned())
        .ok_or_else(|| ParseError::new("must be 1 to 64 letters or digits"))
}
