//! Data-subject rights carried out by the data-protection officer: erasure.

use axum::extract::State;
use axum::Json;
use relais_domain::Identifier;
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::store::ErasureReport;

/// Whom to erase.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErasureRequest {
    /// Any identifier of the person, `kind:value` (`email:ana@example.fr`).
    pub identifier: String,
}

/// Erase a person: their profile and every profile merged into it, identifiers,
/// identity records and queued messages are deleted, their events are kept
/// de-identified for totals, and their data keys are destroyed, so any copy of
/// their encrypted data (write-ahead log, replica, backup) is unreadable.
#[utoipa::path(post, path = "/api/v1/privacy/erasures", tag = "privacy", request_body = ErasureRequest,
    responses(
        (status = 200, description = "What was erased", body = Object),
        (status = 400, body = super::error::Problem),
        (status = 404, description = "Nobody holds this identifier", body = super::error::Problem),
    ),
    security(("bearer" = [])))]
pub async fn erase(
    State(state): State<AppState>,
    _caller: Caller,
    Json(request): Json<ErasureRequest>,
) -> Result<Json<ErasureReport>, ApiError> {
    let identifier =
        Identifier::parse(&request.identifier).map_err(|e| ApiError::field("identifier", e.to_string()))?;
    let report = state.store.run(move |engine| erase_holder(engine, &identifier)).await?;
    Ok(Json(report))
}

/// Erase whoever holds `identifier`; `NotFound` when nobody does.
pub fn erase_holder(
    engine: &dyn crate::store::Engine,
    identifier: &Identifier,
) -> Result<ErasureReport, crate::store::StoreError> {
    let customer = engine.customer_id_by_identifier(identifier)?.ok_or(crate::store::StoreError::NotFound)?;
    engine.erase(customer)
}
