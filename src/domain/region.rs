//! Where a connection lives at Amazon: region, environment and account type.

use serde::{Deserialize, Serialize};

use super::{ParseError, parse_enum};

/// SP-API region; each has its own hosts and AWS region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    Na,
    Eu,
    Fe,
}

impl Region {
    const ALL: [(&'static str, Region); 3] =
        [("na", Region::Na), ("eu", Region::Eu), ("fe", Region::Fe)];

    pub fn parse(input: &str) -> Result<Self, ParseError> {
        parse_enum(input, &Self::ALL)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Region::Na => "na",
            Region::Eu => "eu",
            Region::Fe => "fe",
        }
    }
}

/// Production or the SP-API sandbox (same LWA tokens, other hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Production,
    Sandbox,
}

impl Environment {
    const ALL: [(&'static str, Environment); 2] = [
        ("production", Environment::Production),
        ("sandbox", Environment::Sandbox),
    ];

    pub fn parse(input: &str) -> Result<Self, ParseError> {
        parse_enum(input, &Self::ALL)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Production => "production",
            Environment::Sandbox => "sandbox",
        }
    }
}

/// Seller Central or Vendor Central account; decides which SP-API call tests it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountType {
    #[default]
    Seller,
    Vendor,
}

impl AccountType {
    const ALL: [(&'static str, AccountType); 2] = [
        ("seller", AccountType::Seller),
        ("vendor", AccountType::Vendor),
    ];

    pub fn parse(input: &str) -> Result<Self, ParseError> {
        parse_enum(input, &Self::ALL)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AccountType::Seller => "seller",
            AccountType::Vendor => "vendor",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_lowercase_names_only() {
        assert_eq!(Region::parse("eu"), Ok(Region::Eu));
        assert_eq!(Environment::parse("sandbox"), Ok(Environment::Sandbox));
        assert_eq!(AccountType::parse("vendor"), Ok(AccountType::Vendor));
        let err = Region::parse("EU").unwrap_err();
        assert_eq!(err.0, "must be one of `na`, `eu`, `fe`");
        assert!(Environment::parse("prod").is_err());
    }

    #[test]
    fn names_round_trip() {
        for (name, region) in Region::ALL {
            assert_eq!(region.as_str(), name);
        }
        for (name, env) in Environment::ALL {
            assert_eq!(env.as_str(), name);
        }
        for (name, account) in AccountType::ALL {
            assert_eq!(account.as_str(), name);
        }
    }
}
