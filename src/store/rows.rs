//! How domain values map to columns, shared by both backends.

use chrono::{DateTime, Duration, Utc};
use sqlx::types::Json;
use sqlx::{Database, Encode, Type};
use uuid::Uuid;

use super::StoreError;
use crate::crypto::Sealed;
use crate::domain::{
    AccountType, ApiKey, ApiKeyHash, ApiKeyId, ApiKeyName, ApplicationId, ClientId, Connection,
    ConnectionId, ConnectionName, ConnectionStatus, Environment, LastError, MerchantToken,
    ParseError, Region, Scope,
};

/// A connection as stored: the public fields plus its sealed secrets.
#[derive(Debug, Clone)]
pub struct ConnectionRow {
    pub connection: Connection,
    pub client_secret: Sealed,
    pub refresh_token: Sealed,
    /// The access token shared by every replica.
    pub access_token: Option<StoredToken>,
    /// The client secret a new one replaced, while Amazon may still accept it.
    pub previous_client_secret: Option<PreviousSecret>,
    /// Bumped by every write; an update only lands on the version it read.
    pub version: i64,
}

/// A replaced client secret, sealed, and when its grace ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    pub sealed: Sealed,
    pub until: DateTime<Utc>,
}

/// A sealed access token with its lifetime, as stored for every replica to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub sealed: Sealed,
    pub fetched_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A create request remembered under its `Idempotency-Key`.
#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    pub api_key_id: ApiKeyId,
    pub key: String,
    /// SHA-256 of the canonical request body: the same key with another body is refused.
    pub request_hash: String,
    pub connection_id: ConnectionId,
    /// The response body sent the first time.
    pub response: String,
    pub created_at: DateTime<Utc>,
}

impl IdempotencyRecord {
    pub const LIFETIME: Duration = Duration::hours(24);

    pub fn is_fresh(&self, now: DateTime<Utc>) -> bool {
        now - self.created_at < Self::LIFETIME
    }
}

type IdempotencyColumns = (Uuid, String, String, Uuid, String, DateTime<Utc>);

impl From<IdempotencyColumns> for IdempotencyRecord {
    fn from(
        (api_key_id, key, request_hash, connection_id, response, created_at): IdempotencyColumns,
    ) -> Self {
        Self {
            api_key_id: api_key_id.into(),
            key,
            request_hash,
            connection_id: connection_id.into(),
            response,
            created_at,
        }
    }
}

/// A known plaintext sealed under one master key.
#[derive(Debug, Clone)]
pub struct KeyCheck {
    pub key_id: String,
    pub sealed: Sealed,
}

impl From<(String, String)> for KeyCheck {
    fn from((key_id, sealed): (String, String)) -> Self {
        Self {
            key_id,
            sealed: Sealed::from_stored(sealed),
        }
    }
}

/// A connection's columns in `connection_columns!` order, the order every query that
/// reads them selects them in.
pub(super) struct ConnectionColumns {
    id: Uuid,
    name: Option<String>,
    account_type: String,
    region: String,
    environment: String,
    client_id: String,
    client_secret: String,
    client_secret_hint: String,
    client_secret_expires_at: DateTime<Utc>,
    client_secret_expires_at_estimated: bool,
    client_secret_updated_at: DateTime<Utc>,
    refresh_token: String,
    merchant_token: String,
    application_id: Option<String>,
    marketplace_ids: Json<Vec<String>>,
    status: String,
    last_error_code: Option<String>,
    last_error_message: Option<String>,
    last_error_at: Option<DateTime<Utc>>,
    authorized_at: Option<DateTime<Utc>>,
    last_tested_at: Option<DateTime<Utc>>,
    access_token: Option<String>,
    access_token_fetched_at: Option<DateTime<Utc>>,
    access_token_expires_at: Option<DateTime<Utc>>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    previous_client_secret: Option<String>,
    previous_client_secret_until: Option<DateTime<Utc>>,
}

/// Builds a `ConnectionColumns` from `$row` by position (by name, sqlx looks every column
/// up in a map, which was over two fifths of decoding a list page: callgrind), each field
/// read by `$get(row, index, $check_types)`. Debug builds (every test, on both backends)
/// check that each position holds the column its field is named after.
macro_rules! connection_columns_by_position {
    ($row:expr, $get:path, $check_types:expr) => {{
        let row = $row;
        let check_types = $check_types;
        let mut index = 0;
        macro_rules! column {
            ($name:literal) => {{
                debug_assert_eq!(sqlx::Column::name(sqlx::Row::column(row, index)), $name);
                index += 1;
                $get(row, index - 1, check_types)?
            }};
        }
        ConnectionColumns {
            id: column!("id"),
            name: column!("name"),
            account_type: column!("account_type"),
            region: column!("region"),
            environment: column!("environment"),
            client_id: column!("client_id"),
            client_secret: column!("client_secret"),
            client_secret_hint: column!("client_secret_hint"),
            client_secret_expires_at: column!("client_secret_expires_at"),
            client_secret_expires_at_estimated: column!("client_secret_expires_at_estimated"),
            client_secret_updated_at: column!("client_secret_updated_at"),
            refresh_token: column!("refresh_token"),
            merchant_token: column!("merchant_token"),
            application_id: column!("application_id"),
            marketplace_ids: column!("marketplace_ids"),
            status: column!("status"),
            last_error_code: column!("last_error_code"),
            last_error_message: column!("last_error_message"),
            last_error_at: column!("last_error_at"),
            authorized_at: column!("authorized_at"),
            last_tested_at: column!("last_tested_at"),
            access_token: column!("access_token"),
            access_token_fetched_at: column!("access_token_fetched_at"),
            access_token_expires_at: column!("access_token_expires_at"),
            version: column!("version"),
            created_at: column!("created_at"),
            updated_at: column!("updated_at"),
            previous_client_secret: column!("previous_client_secret"),
            previous_client_secret_until: column!("previous_client_secret_until"),
        }
    }};
}

/// A Postgres result describes its columns' types once, for every row: so they are
/// checked against the fields once (`ConnectionResult`), from that description, and each
/// value is then decoded without sqlx checking its type again (which was a seventh of a
/// list page's instructions). Checking the description also covers a column whose first
/// values are NULL, which sqlx's check of each value skips.
impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for ConnectionColumns {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        Ok(connection_columns_by_position!(
            row,
            super::pg_columns::pg_column,
            true
        ))
    }
}

/// SQLite types each value by itself, whatever the column says: every value's type is
/// checked (sqlx's `try_get`).
impl<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> for ConnectionColumns {
    fn from_row(row: &'r sqlx::sqlite::SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(connection_columns_by_position!(row, sqlite_column, ()))
    }
}

/// A whole result of connection rows decoded, as each backend's rows call for.
pub(super) trait ConnectionResult: Sized {
    fn connection_columns(rows: &[Self]) -> Result<Vec<ConnectionColumns>, sqlx::Error>;
}

/// The column types are checked on the first row, and again on any row that does not
/// share its description (so never, for one result).
impl ConnectionResult for sqlx::postgres::PgRow {
    fn connection_columns(rows: &[Self]) -> Result<Vec<ConnectionColumns>, sqlx::Error> {
        use sqlx::Row;
        let Some(first) = rows.first() else {
            return Ok(Vec::new());
        };
        rows.iter()
            .map(|row| {
                // Rows of one result share one description, by pointer.
                let described_anew =
                    std::ptr::eq(row, first) || !std::ptr::eq(row.columns(), first.columns());
                Ok(connection_columns_by_position!(
                    row,
                    super::pg_columns::pg_column,
                    described_anew
                ))
            })
            .collect()
    }
}

impl ConnectionResult for sqlx::sqlite::SqliteRow {
    fn connection_columns(rows: &[Self]) -> Result<Vec<ConnectionColumns>, sqlx::Error> {
        rows.iter().map(sqlx::FromRow::from_row).collect()
    }
}

/// Column `index` as `T`, its value's own type checked (SQLite has no other).
fn sqlite_column<'r, T>(
    row: &'r sqlx::sqlite::SqliteRow,
    index: usize,
    _every_value_checked: (),
) -> Result<T, sqlx::Error>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + Type<sqlx::Sqlite>,
{
    sqlx::Row::try_get(row, index)
}

impl From<&ConnectionRow> for ConnectionColumns {
    fn from(row: &ConnectionRow) -> Self {
        let c = &row.connection;
        Self {
            id: c.id.as_uuid(),
            name: c.name.as_ref().map(|name| name.as_str().to_owned()),
            account_type: c.account_type.as_str().to_owned(),
            region: c.region.as_str().to_owned(),
            environment: c.environment.as_str().to_owned(),
            client_id: c.client_id.as_str().to_owned(),
            client_secret: row.client_secret.as_str().to_owned(),
            client_secret_hint: c.client_secret_hint.clone(),
            client_secret_expires_at: c.client_secret_expires_at,
            client_secret_expires_at_estimated: c.client_secret_expires_at_estimated,
            client_secret_updated_at: c.client_secret_updated_at,
            refresh_token: row.refresh_token.as_str().to_owned(),
            merchant_token: c.merchant_token.as_str().to_owned(),
            application_id: c.application_id.as_ref().map(|id| id.as_str().to_owned()),
            marketplace_ids: Json(c.marketplace_ids.clone()),
            status: c.status.as_str().to_owned(),
            last_error_code: c.last_error.as_ref().map(|e| e.code.clone()),
            last_error_message: c.last_error.as_ref().map(|e| e.message.clone()),
            last_error_at: c.last_error.as_ref().map(|e| e.at),
            authorized_at: c.authorized_at,
            last_tested_at: c.last_tested_at,
            access_token: row
                .access_token
                .as_ref()
                .map(|token| token.sealed.as_str().to_owned()),
            access_token_fetched_at: row.access_token.as_ref().map(|token| token.fetched_at),
            access_token_expires_at: row.access_token.as_ref().map(|token| token.expires_at),
            version: row.version,
            created_at: c.created_at,
            updated_at: c.updated_at,
            previous_client_secret: row
                .previous_client_secret
                .as_ref()
                .map(|previous| previous.sealed.as_str().to_owned()),
            previous_client_secret_until: row
                .previous_client_secret
                .as_ref()
                .map(|previous| previous.until),
        }
    }
}

fn corrupt(column: &str) -> impl Fn(ParseError) -> StoreError + '_ {
    move |err| StoreError::Corrupt(format!("column {column}: {err}"))
}

impl TryFrom<ConnectionColumns> for ConnectionRow {
    type Error = StoreError;

    fn try_from(c: ConnectionColumns) -> Result<Self, StoreError> {
        let last_error = match (c.last_error_code, c.last_error_message, c.last_error_at) {
            (Some(code), Some(message), Some(at)) => Some(LastError { code, message, at }),
            _ => None,
        };
        let access_token = match (
            c.access_token,
            c.access_token_fetched_at,
            c.access_token_expires_at,
        ) {
            (Some(sealed), Some(fetched_at), Some(expires_at)) => Some(StoredToken {
                sealed: Sealed::from_stored(sealed),
                fetched_at,
                expires_at,
            }),
            _ => None,
        };
        let connection = Connection {
            id: c.id.into(),
            name: c
                .name
                .as_deref()
                .map(ConnectionName::parse)
                .transpose()
                .map_err(corrupt("name"))?,
            account_type: AccountType::parse(&c.account_type).map_err(corrupt("account_type"))?,
            region: Region::parse(&c.region).map_err(corrupt("region"))?,
            environment: Environment::parse(&c.environment).map_err(corrupt("environment"))?,
            client_id: ClientId::parse(&c.client_id).map_err(corrupt("client_id"))?,
            client_secret_hint: c.client_secret_hint,
            client_secret_expires_at: c.client_secret_expires_at,
            client_secret_expires_at_estimated: c.client_secret_expires_at_estimated,
            client_secret_updated_at: c.client_secret_updated_at,
            merchant_token: MerchantToken::parse(&c.merchant_token)
                .map_err(corrupt("merchant_token"))?,
            application_id: c
                .application_id
                .as_deref()
                .map(ApplicationId::parse)
                .transpose()
                .map_err(corrupt("application_id"))?,
            marketplace_ids: c.marketplace_ids.0,
            status: ConnectionStatus::parse(&c.status).map_err(corrupt("status"))?,
            last_error,
            authorized_at: c.authorized_at,
            last_tested_at: c.last_tested_at,
            created_at: c.created_at,
            updated_at: c.updated_at,
        };
        let previous_client_secret =
            match (c.previous_client_secret, c.previous_client_secret_until) {
                (Some(sealed), Some(until)) => Some(PreviousSecret {
                    sealed: Sealed::from_stored(sealed),
                    until,
                }),
                _ => None,
            };
        Ok(ConnectionRow {
            connection,
            client_secret: Sealed::from_stored(c.client_secret),
            refresh_token: Sealed::from_stored(c.refresh_token),
            access_token,
            previous_client_secret,
            version: c.version,
        })
    }
}

/// Binds every column, in `connection_columns!` order, as `$1`…`$29`.
pub(super) fn bind_connection<'q, DB>(
    query: sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>,
    c: ConnectionColumns,
) -> sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>
where
    DB: Database,
    Uuid: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    Option<String>: Encode<'q, DB> + Type<DB>,
    bool: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
    DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
    Json<Vec<String>>: Encode<'q, DB> + Type<DB>,
{
    query
        .bind(c.id)
        .bind(c.name)
        .bind(c.account_type)
        .bind(c.region)
        .bind(c.environment)
        .bind(c.client_id)
        .bind(c.client_secret)
        .bind(c.client_secret_hint)
        .bind(c.client_secret_expires_at)
        .bind(c.client_secret_expires_at_estimated)
        .bind(c.client_secret_updated_at)
        .bind(c.refresh_token)
        .bind(c.merchant_token)
        .bind(c.application_id)
        .bind(c.marketplace_ids)
        .bind(c.status)
        .bind(c.last_error_code)
        .bind(c.last_error_message)
        .bind(c.last_error_at)
        .bind(c.authorized_at)
        .bind(c.last_tested_at)
        .bind(c.access_token)
        .bind(c.access_token_fetched_at)
        .bind(c.access_token_expires_at)
        .bind(c.version)
        .bind(c.created_at)
        .bind(c.updated_at)
        .bind(c.previous_client_secret)
        .bind(c.previous_client_secret_until)
}

#[derive(sqlx::FromRow)]
pub(super) struct ApiKeyColumns {
    pub id: Uuid,
    pub name: String,
    pub hash: String,
    pub prefix: String,
    pub scopes: Json<Vec<String>>,
    pub created_at: DateTime<Utc>,
}

impl ApiKeyColumns {
    pub fn into_hashed_key(self) -> Result<(ApiKeyHash, ApiKey), StoreError> {
        let hash = ApiKeyHash::from_base64(&self.hash)
            .ok_or_else(|| StoreError::Corrupt("column hash: not a SHA-256 digest".into()))?;
        let scopes = self
            .scopes
            .0
            .iter()
            .map(|scope| Scope::parse(scope))
            .collect::<Result<_, _>>()
            .map_err(corrupt("scopes"))?;
        let key = ApiKey {
            id: self.id.into(),
            name: ApiKeyName::parse(&self.name).map_err(corrupt("name"))?,
            scopes,
            prefix: self.prefix,
            created_at: self.created_at,
        };
        Ok((hash, key))
    }
}
