//! Instants as the API writes them: RFC 3339 in UTC with `Z` and as many fractional
//! digits as needed (none, 3, 6 or 9), which is what chrono's `Serialize` writes, but
//! without chrono's `fmt` machinery. That machinery was a tenth of the token body's cost
//! and about 5 % of a list page's (six instants a connection, fifty connections a page;
//! perf, callgrind). Unit tests hold the output byte for byte to chrono's.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Serialize, Serializer};

/// Longest text written: `9999-12-31T23:59:59.999999999Z`.
const MAX_LEN: usize = 30;

/// One instant's text, on the stack.
pub struct Rfc3339 {
    bytes: [u8; MAX_LEN],
    len: usize,
}

impl Rfc3339 {
    /// `at`'s text, or `None` for what no stored instant is (years outside 0–9999, a
    /// leap second): those are left to chrono.
    pub fn new(at: DateTime<Utc>) -> Option<Self> {
        // A `DateTime<Utc>`'s accessors each apply the (zero) offset first; the naive
        // time's read the fields.
        let naive = at.naive_utc();
        let nanos = naive.nanosecond();
        if !(0..=9999).contains(&naive.year()) || nanos >= 1_000_000_000 {
            return None;
        }
        let mut text = Self {
            bytes: [0; MAX_LEN],
            len: 0,
        };
        let year = naive.year() as u32;
        text.digits(year / 100);
        text.digits(year % 100);
        text.push(b'-');
        text.digits(naive.month());
        text.push(b'-');
        text.digits(naive.day());
        text.push(b'T');
        text.digits(naive.hour());
        text.push(b':');
        text.digits(naive.minute());
        text.push(b':');
        text.digits(naive.second());
        let (fraction, places) = match nanos {
            0 => (0, 0),
            n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
            n if n % 1_000 == 0 => (n / 1_000, 6),
            n => (n, 9),
        };
        if places > 0 {
            text.push(b'.');
            let start = text.len;
            let mut rest = fraction;
            for place in (0..places).rev() {
                text.bytes[start + place] = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            text.len += places;
        }
        text.push(b'Z');
        Some(text)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).expect("digits and ASCII punctuation")
    }

    fn push(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    /// Two digits, zero-padded.
    fn digits(&mut self, value: u32) {
        self.push(b'0' + (value / 10) as u8);
        self.push(b'0' + (value % 10) as u8);
    }
}

/// `#[serde(serialize_with = "timestamp::serialize")]` for a `DateTime<Utc>`.
pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    match Rfc3339::new(*at) {
        Some(text) => serializer.serialize_str(text.as_str()),
        None => at.serialize(serializer),
    }
}

/// `#[serde(serialize_with = "timestamp::serialize_option")]` for an
/// `Option<DateTime<Utc>>`.
pub fn serialize_option<S: Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    /// Borrows the instant so `serialize_some` writes it through `serialize`.
    struct Instant<'a>(&'a DateTime<Utc>);
    impl Serialize for Instant<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serialize(self.0, serializer)
        }
    }
    // As serde's `Option` does, so formats that mark a present value see one.
    match at {
        Some(at) => serializer.serialize_some(&Instant(at)),
        None => serializer.serialize_none(),
    }
}

/// Instants that exercise every branch of `Rfc3339::new` and chrono's fallback: each
/// fraction width, the first and last years written here, years and a leap second left
/// to chrono. Shared with the token body's test.
#[cfg(test)]
pub(crate) fn sample_instants() -> Vec<DateTime<Utc>> {
    use chrono::TimeZone;
    let base = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
    vec![
        base,
        base + chrono::TimeDelta::milliseconds(7),
        base + chrono::TimeDelta::microseconds(123_450),
        base + chrono::TimeDelta::microseconds(999_999),
        base + chrono::TimeDelta::nanoseconds(1),
        base + chrono::TimeDelta::nanoseconds(999_999_999),
        Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(1, 12, 31, 23, 59, 59).unwrap(),
        Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap()
            + chrono::TimeDelta::nanoseconds(999_999_999),
        Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(-5, 1, 1, 0, 0, 0).unwrap(),
        crate::domain::now(),
        // A leap second: left to chrono.
        chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Ours {
        #[serde(serialize_with = "serialize")]
        at: DateTime<Utc>,
        #[serde(serialize_with = "serialize_option")]
        maybe: Option<DateTime<Utc>>,
    }

    #[derive(Serialize)]
    struct Chronos {
        at: DateTime<Utc>,
        maybe: Option<DateTime<Utc>>,
    }

    #[test]
    fn every_instant_is_written_as_chrono_writes_it() {
        for at in sample_instants() {
            for maybe in [None, Some(at)] {
                assert_eq!(
                    serde_json::to_string(&Ours { at, maybe }).unwrap(),
                    serde_json::to_string(&Chronos { at, maybe }).unwrap(),
                    "{at:?}"
                );
            }
        }
    }
}
