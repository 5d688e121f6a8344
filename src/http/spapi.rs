//! SP-API on a connection's behalf: `POST /connections/{id}/test`.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};

use super::error::ApiError;
use super::extract::{Caller, ConnectionsWrite, Id};
use crate::app::AppState;
use crate::connection_test::TestReport;
use crate::domain::ConnectionId;

pub fn router() -> Router<AppState> {
    Router::new().route("/connections/{id}/test", post(test))
}

async fn test(
    _caller: Caller<ConnectionsWrite>,
    State(state): State<AppState>,
    Id(id): Id<ConnectionId>,
) -> Result<Json<TestReport>, ApiError> {
    Ok(Json(state.tester.test(id).await?))
}
