//! Reading one column of a Postgres row, for the rows decoded by position
//! (`rows::ConnectionColumns`): the column's type checked against the field's when asked
//! (once per result), and instants decoded without chrono's calendar arithmetic.

use chrono::{DateTime, Utc};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgRow, PgValueFormat, PgValueRef, Postgres};
use sqlx::types::Json;
use sqlx::{Column, Decode, Row, Type, TypeInfo, ValueRef};
use uuid::Uuid;

/// Column `index` as `T`; with `check_type`, only if the column's described type is one
/// `T` decodes.
pub(super) fn pg_column<'r, T>(
    row: &'r PgRow,
    index: usize,
    check_type: bool,
) -> Result<T, sqlx::Error>
where
    T: FromPgValue<'r> + Type<Postgres>,
{
    let column_error = |source: BoxDynError| sqlx::Error::ColumnDecode {
        index: format!("{index:?}"),
        source,
    };
    if check_type {
        let described = row.try_column(index)?.type_info();
        if !T::compatible(described) {
            return Err(column_error(
                format!(
                    "the column is {}, which `{}` does not decode",
                    described.name(),
                    std::any::type_name::<T>()
                )
                .into(),
            ));
        }
    }
    T::from_pg_value(row.try_get_raw(index)?).map_err(column_error)
}

/// A value decoded from a Postgres value whose type is known to fit.
pub(super) trait FromPgValue<'r>: Sized {
    fn from_pg_value(value: PgValueRef<'r>) -> Result<Self, BoxDynError>;
}

/// What sqlx's own decoding does well.
macro_rules! from_pg_value_by_sqlx {
    ($($ty:ty),* $(,)?) => {$(
        impl<'r> FromPgValue<'r> for $ty {
            fn from_pg_value(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                <$ty as Decode<'r, Postgres>>::decode(value)
            }
        }
    )*};
}
from_pg_value_by_sqlx!(Uuid, String, bool, i64, Json<Vec<String>>);

impl<'r, T: FromPgValue<'r>> FromPgValue<'r> for Option<T> {
    fn from_pg_value(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        if value.is_null() {
            Ok(None)
        } else {
            T::from_pg_value(value).map(Some)
        }
    }
}

/// Microseconds from the Unix epoch to Postgres's (2000-01-01T00:00:00Z).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A `timestamptz` in binary is microseconds since 2000-01-01 UTC. sqlx adds them to that
/// date with chrono's calendar arithmetic, a sixth of decoding a list page (six instants
/// a row; callgrind), and panics on what chrono cannot hold (`infinity`, beyond year
/// 262143); from the Unix epoch it is one call, and those are an error. Text (a simple
/// query's format) is left to sqlx.
impl<'r> FromPgValue<'r> for DateTime<Utc> {
    fn from_pg_value(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        if value.format() != PgValueFormat::Binary {
            return <DateTime<Utc> as Decode<'r, Postgres>>::decode(value);
        }
        let micros = i64::from_be_bytes(value.as_bytes()?.try_into()?);
        micros
            .checked_add(POSTGRES_EPOCH_MICROS)
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(|| format!("{micros} µs from 2000 is no instant chrono holds").into())
    }
}
