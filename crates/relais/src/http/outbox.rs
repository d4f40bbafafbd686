//! The outbox as administrators see it: what waits, what was sent, what failed.

use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::store::{OutboxItem, OutboxStatus};

/// Outbox filters.
#[derive(Debug, Deserialize, IntoParams)]
pub struct OutboxQuery {
    /// `pending`, `delivered` or `failed`.
    pub status: Option<String>,
    /// At most this many (1–500, default 100).
    pub limit: Option<usize>,
}

/// Outbox messages, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutboxView {
    /// The messages.
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<OutboxItem>,
}

/// List outbox messages.
#[utoipa::path(get, path = "/api/v1/outbox", tag = "operations", params(OutboxQuery),
    responses((status = 200, body = OutboxView), (status = 400, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn list_outbox(
    State(state): State<AppState>,
    _caller: Caller,
    Query(query): Query<OutboxQuery>,
) -> Result<Json<OutboxView>, ApiError> {
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(
            OutboxStatus::parse(text)
                .ok_or_else(|| ApiError::field("status", "must be pending, delivered or failed"))?,
        ),
    };
    let limit = super::error::page_limit(query.limit, 100)?;
    let messages = state.store.run(move |engine| engine.outbox(status, limit)).await?;
    Ok(Json(OutboxView { messages }))
}
