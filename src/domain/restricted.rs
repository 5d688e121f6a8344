//! A request for a Restricted Data Token: the operations (method and path) whose
//! personal data a worker needs, parsed and checked before Amazon sees it.

use serde::Serialize;

use super::{ApplicationId, ParseError, parse_enum};

/// Most resources in one request (Amazon's limit).
pub const MAX_RESOURCES: usize = 50;
/// Longest path accepted; SP-API paths are well under this.
const MAX_PATH_LEN: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum HttpMethod {
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "PUT")]
    Put,
    #[serde(rename = "POST")]
    Post,
    #[serde(rename = "DELETE")]
    Delete,
}

impl HttpMethod {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        parse_enum(
            input,
            &[
                ("GET", Self::Get),
                ("PUT", Self::Put),
                ("POST", Self::Post),
                ("DELETE", Self::Delete),
            ],
        )
    }
}

/// The restricted data elements an operation may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DataElement {
    BuyerInfo,
    ShippingAddress,
    BuyerTaxInformation,
}

impl DataElement {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        parse_enum(
            input,
            &[
                ("buyerInfo", Self::BuyerInfo),
                ("shippingAddress", Self::ShippingAddress),
                ("buyerTaxInformation", Self::BuyerTaxInformation),
            ],
        )
    }
}

/// A path of an SP-API operation, with the ids it names (`/orders/v0/orders/123-…`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ResourcePath(String);

impl ResourcePath {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let fine = input.starts_with('/')
            && input.len() <= MAX_PATH_LEN
            && input.bytes().all(|b| b.is_ascii_graphic())
            && !input.contains("//")
            && !input.contains('?');
        if fine {
            Ok(Self(input.to_owned()))
        } else {
            Err(ParseError::new(format!(
                "must be an SP-API path starting with `/`, without a query, at most \
                 {MAX_PATH_LEN} printable characters"
            )))
        }
    }
}

/// One operation, in the shape `createRestrictedDataToken` takes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestrictedResource {
    pub method: HttpMethod,
    pub path: ResourcePath,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub data_elements: Vec<DataElement>,
}

/// A whole request, in the shape `createRestrictedDataToken` takes. Equal requests are
/// equal values (data elements are kept sorted), so they can share one token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestrictedDataRequest {
    pub restricted_resources: Vec<RestrictedResource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_application: Option<ApplicationId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        assert!(ResourcePath::parse("/orders/v0/orders/902-3159896-1390916/address").is_ok());
        for bad in ["orders/v0", "/a b", "/a?b=c", "//evil.example/x", "/\u{7f}"] {
            assert!(ResourcePath::parse(bad).is_err(), "{bad}");
        }
        assert!(ResourcePath::parse(&format!("/{}", "x".repeat(MAX_PATH_LEN))).is_err());
    }

    #[test]
    fn a_request_serializes_as_amazon_takes_it() {
        let request = RestrictedDataRequest {
            restricted_resources: vec![RestrictedResource {
                method: HttpMethod::Get,
                path: ResourcePath::parse("/orders/v0/orders/1/address").unwrap(),
                data_elements: vec![DataElement::BuyerInfo, DataElement::ShippingAddress],
            }],
            target_application: None,
        };
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            serde_json::json!({"restrictedResources": [{"method": "GET",
                "path": "/orders/v0/orders/1/address",
                "dataElements": ["buyerInfo", "shippingAddress"]}]})
        );
    }
}
