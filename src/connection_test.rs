//! Testing a connection: get its access token (through the token cache) and make one
//! SP-API call with it, as a seller (`marketplaceParticipations`) or a vendor (one
//! purchase-order query), then record what Amazon said.
//!
//! - Success: `marketplace_ids` (the marketplaces the seller takes part in) and
//!   `last_tested_at` are stored, the connection becomes `active`, `last_error` clears.
//! - A rejected access token is dropped and the call tried once more with a fresh one.
//! - An expired client secret sets `client_secret_expired`, so workers stop at once.
//! - Any other failure is recorded in `last_error`; the status stays.

use std::time::Instant;

use serde::Serialize;

use crate::amazon::spapi::{Participation, SpApiClient, SpApiError};
use crate::connections::{ConnectionError, Connections};
use crate::domain::{
    AccountType, ConnectionId, ConnectionStatus, LastError, Marketplace, Region, now,
};
use crate::tokens::{Grant, TokenError, TokenService};

/// Asked for a test: a token that will last the call.
const MIN_TTL_SECS: i64 = 60;

const SELLER_CALL: &str = "GET /sellers/v1/marketplaceParticipations";
const VENDOR_CALL: &str = "GET /vendor/orders/v1/purchaseOrders";

#[derive(Debug, Serialize)]
pub struct TestReport {
    pub ok: bool,
    pub marketplaces: Vec<MarketplaceReport>,
    /// Time spent on SP-API, both attempts included.
    pub latency_ms: u64,
    /// What looks wrong without failing the test (a marketplace of another region).
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct MarketplaceReport {
    pub id: String,
    pub name: String,
    pub country_code: String,
    pub default_currency_code: String,
    pub is_participating: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// No access token could be had.
    #[error(transparent)]
    Token(TokenError),
    /// SP-API did not accept the call; `call` names it.
    #[error("{}", describe(.call, .error))]
    SpApi {
        call: &'static str,
        error: SpApiError,
    },
    #[error(transparent)]
    Connection(#[from] ConnectionError),
}

/// What went wrong, and what the customer should do about it.
fn describe(call: &str, error: &SpApiError) -> String {
    match error {
        SpApiError::RoleMissing => format!(
            "SP-API refused {call} without details: the app most likely lacks the role this \
             call needs (or the connection's region is wrong). Give the app the role in \
             Developer Central, then authorize it again in Seller Central"
        ),
        SpApiError::ClientSecretExpired => format!(
            "SP-API refused {call}: the application's LWA client secret has expired. \
             Generate a new client secret in Developer Central and store it on the connection"
        ),
        SpApiError::AccessTokenRejected(details) => format!(
            "SP-API refused {call} twice, the second time with a freshly issued access token \
             ({details}). Authorize the connection again"
        ),
        SpApiError::Throttled { .. } => {
            format!("SP-API throttled {call}; retry after the time given")
        }
        other => format!("{call}: {other}"),
    }
}

#[derive(Clone)]
pub struct ConnectionTester {
    connections: Connections,
    tokens: TokenService,
    spapi: SpApiClient,
}

impl ConnectionTester {
    pub fn new(connections: Connections, tokens: TokenService, spapi: SpApiClient) -> Self {
        Self {
            connections,
            tokens,
            spapi,
        }
    }

    pub async fn test(&self, id: ConnectionId) -> Result<TestReport, TestError> {
        let connection = self.connections.get(id).await?;
        let (grant, _) = self
            .tokens
            .get(id, MIN_TTL_SECS, false, crate::domain::now())
            .await
            .map_err(TestError::Token)?;
        let started = Instant::now();
        let mut tested = grant.token.fetched_at;
        let mut outcome = self.call(connection.account_type, &grant).await;
        if let Err(SpApiError::AccessTokenRejected(_)) = outcome.1 {
            let fresh = self
                .tokens
                .refetch(id, &grant.token)
                .await
                .map_err(TestError::Token)?;
            tested = fresh.token.fetched_at;
            outcome = self.call(connection.account_type, &fresh).await;
        }
        let latency_ms = started.elapsed().as_millis() as u64;
        let (call, result) = outcome;
        let at = now();
        match result {
            Ok(participations) => {
                let participating: Vec<String> = participations
                    .iter()
                    .filter(|p| p.is_participating)
                    .map(|p| p.marketplace_id.clone())
                    .collect();
                let is_seller = connection.account_type == AccountType::Seller;
                let recorded = self
                    .connections
                    .record(id, tested, |c| {
                        // A test that succeeded later has recorded already.
                        if c.last_tested_at >= Some(at) {
                            return;
                        }
                        if is_seller {
                            c.marketplace_ids = participating.clone();
                        }
                        c.last_tested_at = Some(at);
                        c.status = ConnectionStatus::Active;
                        c.last_error = None;
                    })
                    .await;
                outlive_a_lost_race(id, recorded)?;
                Ok(TestReport {
                    ok: true,
                    warnings: warnings(&participations, connection.region),
                    marketplaces: participations.into_iter().map(report).collect(),
                    latency_ms,
                })
            }
            Err(error) => {
                let expired = error == SpApiError::ClientSecretExpired;
                let code = error.code();
                let failure = TestError::SpApi { call, error };
                let last_error = LastError {
                    code: code.to_owned(),
                    message: failure.to_string(),
                    at,
                };
                let recorded = self
                    .connections
                    .record(id, tested, |c| {
                        if expired {
                            c.status = ConnectionStatus::ClientSecretExpired;
                        }
                        c.last_error = Some(last_error.clone());
                    })
                    .await;
                outlive_a_lost_race(id, recorded)?;
                Err(failure)
            }
        }
    }

    /// The one call that tests this kind of account; vendors report no marketplaces.
    async fn call(
        &self,
        account_type: AccountType,
        grant: &Grant,
    ) -> (&'static str, Result<Vec<Participation>, SpApiError>) {
        match account_type {
            AccountType::Seller => (
                SELLER_CALL,
                self.spapi
                    .marketplace_participations(&grant.endpoint, &grant.token)
                    .await,
            ),
            AccountType::Vendor => (
                VENDOR_CALL,
                self.spapi
                    .probe_vendor_orders(&grant.endpoint, &grant.token, now())
                    .await
                    .map(|()| Vec::new()),
            ),
        }
    }
}

/// A test's findings that could not be recorded because other writes of the same row
/// kept winning (many tests of one connection at once, each retrying): the test itself
/// happened, and its caller gets its outcome rather than a 409; the row holds what the
/// concurrent writers recorded. Any other failure to record is the caller's answer.
fn outlive_a_lost_race(
    id: ConnectionId,
    recorded: Result<crate::domain::Connection, ConnectionError>,
) -> Result<(), TestError> {
    match recorded {
        Ok(_) => Ok(()),
        Err(ConnectionError::Store(crate::store::StoreError::Conflict)) => {
            tracing::warn!(connection_id = %id, "a connection test's findings lost the race to other writes; not recorded");
            Ok(())
        }
        Err(err) => Err(err.into()),
    }
}

/// Marketplaces that do not belong to the connection's region, or that the service does
/// not know.
fn warnings(participations: &[Participation], region: Region) -> Vec<String> {
    participations
        .iter()
        .filter_map(|p| match Marketplace::find(&p.marketplace_id) {
            Some(known) if known.region == region => None,
            Some(known) => Some(format!(
                "marketplace {} ({}) belongs to region {}, not to this connection's region {}",
                known.id,
                known.name,
                known.region.as_str(),
                region.as_str()
            )),
            None => Some(format!(
                "marketplace {} is not one this service knows",
                p.marketplace_id
            )),
        })
        .collect()
}

/// Amazon's name, or the service's when Amazon gave none.
fn report(p: Participation) -> MarketplaceReport {
    let known = Marketplace::find(&p.marketplace_id);
    let or_known = |given: String, known_value: Option<&str>| {
        if given.is_empty() {
            known_value.unwrap_or_default().to_owned()
        } else {
            given
        }
    };
    MarketplaceReport {
        name: or_known(p.name, known.map(|m| m.name)),
        country_code: or_known(p.country_code, known.map(|m| m.country_code)),
        id: p.marketplace_id,
        default_currency_code: p.default_currency_code,
        is_participating: p.is_participating,
    }
}
