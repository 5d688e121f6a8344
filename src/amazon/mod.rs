//! Amazon's side: Login with Amazon (token exchange) and where SP-API lives; `answer`
//! holds what both do with what Amazon sends back.

pub mod answer;
pub mod endpoints;
pub mod lwa;
