//! Parses a JSON object (a body, or a query string seen as one) field by field, collecting
//! every invalid or unknown field so one 422 names them all.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::error::{ApiError, FieldError};
use crate::domain::ParseError;

pub struct Fields {
    map: Map<String, Value>,
    errors: Vec<FieldError>,
}

impl Fields {
    pub fn new(map: Map<String, Value>) -> Self {
        Self {
            map,
            errors: Vec::new(),
        }
    }

    fn reject(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.to_owned(),
            message: message.into(),
        });
    }

    fn parse_value<T>(
        &mut self,
        field: &str,
        value: &Value,
        parse: impl FnOnce(&Value) -> Result<T, ParseError>,
    ) -> Option<T> {
        parse(value).map_err(|err| self.reject(field, err.0)).ok()
    }

    /// A field that must be present and not null.
    pub fn required<T>(
        &mut self,
        field: &str,
        parse: impl FnOnce(&Value) -> Result<T, ParseError>,
    ) -> Option<T> {
        match self.map.remove(field) {
            None | Some(Value::Null) => {
                self.reject(field, "is required");
                None
            }
            Some(value) => self.parse_value(field, &value, parse),
        }
    }

    /// A field that may be absent or null; both mean "not given".
    pub fn optional<T>(
        &mut self,
        field: &str,
        parse: impl FnOnce(&Value) -> Result<T, ParseError>,
    ) -> Option<T> {
        match self.map.remove(field) {
            None | Some(Value::Null) => None,
            Some(value) => self.parse_value(field, &value, parse),
        }
    }

    /// For PATCH: absent leaves the field alone (`None`); null clears it (`Some(None)`).
    pub fn clearable<T>(
        &mut self,
        field: &str,
        parse: impl FnOnce(&Value) -> Result<T, ParseError>,
    ) -> Option<Option<T>> {
        match self.map.remove(field) {
            None => None,
            Some(Value::Null) => Some(None),
            Some(value) => self.parse_value(field, &value, parse).map(Some),
        }
    }

    /// For PATCH of a field that cannot be cleared: absent leaves it alone, null is refused.
    pub fn replaceable<T>(
        &mut self,
        field: &str,
        parse: impl FnOnce(&Value) -> Result<T, ParseError>,
    ) -> Option<T> {
        match self.map.remove(field) {
            None => None,
            Some(Value::Null) => {
                self.reject(field, "cannot be null");
                None
            }
            Some(value) => self.parse_value(field, &value, parse),
        }
    }

    /// Builds the parsed value once every field parsed and none was left over. `make`
    /// runs only then, so each required field it unwraps with `?` is there: a `None`
    /// from it is a bug in the handler, answered 500 rather than a panic.
    pub fn build<T>(self, make: impl FnOnce() -> Option<T>) -> Result<T, ApiError> {
        self.finish()?;
        make().ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "a request parser unwrapped a field it did not require"
            ))
        })
    }

    /// Ok when every field parsed and none was left over (unknown or read-only).
    pub fn finish(mut self) -> Result<(), ApiError> {
        let mut leftover: Vec<_> = self.map.keys().cloned().collect();
        leftover.sort();
        for field in leftover {
            self.reject(&field, "is not a known field");
        }
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.errors))
        }
    }
}

/// Lifts a parser of strings into a parser of JSON values.
pub fn string<T>(
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> impl FnOnce(&Value) -> Result<T, ParseError> {
    move |value| match value {
        Value::String(text) => parse(text),
        _ => Err(ParseError::new("must be a string")),
    }
}

/// A JSON `true` or `false`.
pub fn boolean(value: &Value) -> Result<bool, ParseError> {
    value
        .as_bool()
        .ok_or_else(|| ParseError::new("must be true or false"))
}

pub fn timestamp(input: &str) -> Result<DateTime<Utc>, ParseError> {
    DateTime::parse_from_rfc3339(input)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| ParseError::new("must be an RFC 3339 timestamp like 2027-05-01T00:00:00Z"))
}

/// An integer given as a JSON number or, from a query string, as decimal text.
pub fn integer_in(
    range: std::ops::RangeInclusive<u64>,
) -> impl FnOnce(&Value) -> Result<u64, ParseError> {
    move |value| {
        let number = match value {
            Value::Number(n) => n.as_u64(),
            Value::String(text) => text.parse().ok(),
            _ => None,
        };
        number.filter(|n| range.contains(n)).ok_or_else(|| {
            ParseError::new(format!(
                "must be an integer from {} to {}",
                range.start(),
                range.end()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::Region;

    fn fields(value: Value) -> Fields {
        Fields::new(value.as_object().unwrap().clone())
    }

    #[test]
    fn names_every_bad_missing_and_unknown_field() {
        let mut f = fields(json!({"region": "xx", "name": 5, "colour": "red"}));
        assert!(f.required("region", string(Region::parse)).is_none());
        assert!(f.required("environment", string(Region::parse)).is_none());
        assert!(f.optional("name", string(|s| Ok(s.to_owned()))).is_none());
        let ApiError::Validation(errors) = f.finish().unwrap_err() else {
            panic!("expected a validation error")
        };
        let named: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(named, ["region", "environment", "name", "colour"]);
        assert_eq!(errors[1].message, "is required");
        assert_eq!(errors[2].message, "must be a string");
    }

    #[test]
    fn clearable_tells_absent_from_null() {
        let mut f = fields(json!({"a": null}));
        assert_eq!(f.clearable("a", string(|s| Ok(s.to_owned()))), Some(None));
        assert_eq!(f.clearable("b", string(|s| Ok(s.to_owned()))), None);
        assert!(f.finish().is_ok());
    }

    #[test]
    fn integers_come_as_numbers_or_text() {
        assert_eq!(integer_in(1..=200)(&json!(5)), Ok(5));
        assert_eq!(integer_in(1..=200)(&json!("200")), Ok(200));
        assert!(integer_in(1..=200)(&json!(0)).is_err());
        assert!(integer_in(1..=200)(&json!("abc")).is_err());
        assert!(integer_in(1..=200)(&json!(-3)).is_err());
    }
}
