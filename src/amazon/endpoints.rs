//! SP-API hosts and AWS regions per region and environment (docs/amazon.md, "SP-API hosts").

use std::sync::Arc;

use reqwest::Url;
use serde::Serialize;

use crate::domain::{Environment, Region};

/// Where a worker sends SP-API calls for one connection. Shared (`Arc`): every cached
/// grant holds one, and there are only six.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpApiEndpoint {
    pub sp_api_endpoint: String,
    pub aws_region: &'static str,
}

/// The real hosts, or `REGISTRY_SPAPI_URL` for every region and environment; each made
/// once.
#[derive(Debug, Clone)]
pub struct SpApiHosts {
    /// Indexed by region, then environment (production, sandbox).
    endpoints: [[Arc<SpApiEndpoint>; 2]; 3],
}

impl Default for SpApiHosts {
    fn default() -> Self {
        Self::new(None)
    }
}

const REGIONS: [Region; 3] = [Region::Na, Region::Eu, Region::Fe];
const ENVIRONMENTS: [Environment; 2] = [Environment::Production, Environment::Sandbox];

impl SpApiHosts {
    pub fn new(override_url: Option<Url>) -> Self {
        let endpoint = |region: Region, environment: Environment| {
            let aws_region = match region {
                Region::Na => "us-east-1",
                Region::Eu => "eu-west-1",
                Region::Fe => "us-west-2",
            };
            let sp_api_endpoint = match &override_url {
                Some(url) => url.as_str().trim_end_matches('/').to_owned(),
                None => {
                    let sandbox = match environment {
                        Environment::Production => "",
                        Environment::Sandbox => "sandbox.",
                    };
                    format!(
                        "https://{sandbox}sellingpartnerapi-{}.amazon.com",
                        region.as_str()
                    )
                }
            };
            Arc::new(SpApiEndpoint {
                sp_api_endpoint,
                aws_region,
            })
        };
        Self {
            endpoints: REGIONS
                .map(|region| ENVIRONMENTS.map(|environment| endpoint(region, environment))),
        }
    }

    pub fn endpoint(&self, region: Region, environment: Environment) -> Arc<SpApiEndpoint> {
        let region = REGIONS.iter().position(|r| *r == region).expect("listed");
        let environment = ENVIRONMENTS
            .iter()
            .position(|e| *e == environment)
            .expect("listed");
        self.endpoints[region][environment].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_hosts_follow_amazons_table() {
        let hosts = SpApiHosts::default();
        let cases = [
            (
                Region::Na,
                Environment::Production,
                "https://sellingpartnerapi-na.amazon.com",
                "us-east-1",
            ),
            (
                Region::Eu,
                Environment::Sandbox,
                "https://sandbox.sellingpartnerapi-eu.amazon.com",
                "eu-west-1",
            ),
            (
                Region::Fe,
                Environment::Production,
                "https://sellingpartnerapi-fe.amazon.com",
                "us-west-2",
            ),
            (
                Region::Fe,
                Environment::Sandbox,
                "https://sandbox.sellingpartnerapi-fe.amazon.com",
                "us-west-2",
            ),
        ];
        for (region, environment, host, aws_region) in cases {
            let endpoint = hosts.endpoint(region, environment);
            assert_eq!(endpoint.sp_api_endpoint, host);
            assert_eq!(endpoint.aws_region, aws_region);
        }
    }

    #[test]
    fn override_replaces_every_host_but_keeps_the_aws_region() {
        let hosts = SpApiHosts::new(Some(Url::parse("http://127.0.0.1:9000/").unwrap()));
        let endpoint = hosts.endpoint(Region::Eu, Environment::Sandbox);
        assert_eq!(endpoint.sp_api_endpoint, "http://127.0.0.1:9000");
        assert_eq!(endpoint.aws_region, "eu-west-1");
    }
}
