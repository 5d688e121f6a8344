//! `GET /connections/{id}/token` answered ahead of axum's router: the one route sync
//! workers call all the time, and the only one worth it.
//!
//! Through the router, a request to a route with a path parameter pays for matching it,
//! percent-decoding the parameter into a string, a map of request extensions to hold it,
//! and the handler's parse of that string (callgrind: about a tenth of the whole cached
//! token request). Here the path is checked as it came: `/connections/`, a segment that
//! parses as a connection id, `/token`. Such a request goes to the same handler, under
//! the same layers as every routed request (`super::router`), with the id it parsed
//! (`ParsedId`) and its route template (`RouteTemplate`) in its extensions, for the
//! handler's `Id`, the request span and the metrics.
//!
//! One difference, outside what a client sees: the router sets `Content-Length` on the
//! response itself; here hyper writes it on the wire, as it does for any body of known
//! size.
//!
//! Anything else goes to the router as before: other methods (HEAD included, which the
//! router answers for `GET` routes), a percent-encoded id (the router decodes it first;
//! here it is not an id), a segment that is not an id (the router's 404).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::Method;
use axum::response::Response;
use futures_util::future::Either;
use tower::util::{BoxCloneSyncService, Oneshot};
use tower::{Service, ServiceExt};

use super::extract::ParsedId;
use crate::domain::ConnectionId;

/// What the router would have matched; the request span and the metrics read it as they
/// read axum's `MatchedPath`.
pub const TOKEN_ROUTE: &str = "/connections/{id}/token";

/// The route template of a request served ahead of the router.
#[derive(Debug, Clone, Copy)]
pub struct RouteTemplate(pub &'static str);

/// The HTTP API as one service: the token route, else the router.
///
/// hyper-util clones the service for every request, so the clone is one reference
/// count (as the router's own is): cloning the boxed token service would allocate a
/// copy of its whole stack of layers, on every request to any route.
#[derive(Clone)]
pub struct Api(Arc<Routes>);

struct Routes {
    token: BoxCloneSyncService<Request, Response, Infallible>,
    router: Router,
}

impl Api {
    /// `token` must be the token handler under the router's layers.
    pub fn new(token: BoxCloneSyncService<Request, Response, Infallible>, router: Router) -> Self {
        Self(Arc::new(Routes { token, router }))
    }
}

/// The connection a `GET /connections/{id}/token` request is for, if it is one that the
/// router would route there with nothing to decode.
fn token_request(method: &Method, path: &str) -> Option<ConnectionId> {
    if method != Method::GET {
        return None;
    }
    let id = path.strip_prefix("/connections/")?.strip_suffix("/token")?;
    // No id has a `%` (or a `/`) in it: a percent-encoded one is left to the router,
    // which decodes it first.
    ConnectionId::parse(id).ok()
}

impl<B> Service<axum::http::Request<B>> for Api
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        Oneshot<BoxCloneSyncService<Request, Response, Infallible>, Request>,
        <Router as Service<Request>>::Future,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both are always ready: the token service is called through a clone of its own
        // (`oneshot`), as the router calls each route, and the router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let mut request = request.map(Body::new);
        match token_request(request.method(), request.uri().path()) {
            Some(id) => {
                let extensions = request.extensions_mut();
                extensions.insert(ParsedId(id));
                extensions.insert(RouteTemplate(TOKEN_ROUTE));
                Either::Left(self.0.token.clone().oneshot(request))
            }
            None => Either::Right(self.0.router.clone().call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0190a5f0-7c4e-7d2a-9b1e-3f5c2d4e6a7b";

    #[test]
    fn only_a_plain_get_of_a_connection_token_is_taken() {
        let path = format!("/connections/{ID}/token");
        assert_eq!(
            token_request(&Method::GET, &path),
            Some(ConnectionId::parse(ID).unwrap())
        );
        for (method, path) in [
            (Method::HEAD, path.clone()),
            (Method::POST, path.clone()),
            (Method::GET, format!("/connections/{ID}/token/")),
            (Method::GET, format!("/connections/{ID}/tokens")),
            (Method::GET, format!("/connections/{ID}")),
            (Method::GET, format!("/connections/{ID}/authorize")),
            (Method::GET, format!("/api-keys/{ID}/token")),
            (Method::GET, format!("//connections/{ID}/token")),
            (Method::GET, format!("/connections/{ID}/x/token")),
            (
                Method::GET,
                format!("/connections/{}/token", ID.replace('0', "%30")),
            ),
            (Method::GET, "/connections/not-an-id/token".to_owned()),
            (Method::GET, "/connections//token".to_owned()),
            (Method::GET, "/connections/token".to_owned()),
        ] {
            assert_eq!(token_request(&method, &path), None, "{method} {path}");
        }
    }
}
