//! Data-subject rights carried out by the data-protection officer: access
//! (export) and erasure.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use relais_domain::Identifier;
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::store::ErasureReport;

/// Whom a right applies to.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubjectRequest {
    /// Any identifier of the person, `kind:value` (`email:ana@example.fr`).
    pub identifier: String,
}

/// Erase a person: their profile and every profile merged into it, identifiers,
/// identity records and queued messages are deleted, their events are kept
/// de-identified for totals, and their data keys are destroyed, so any copy of
/// their encrypted data (write-ahead log, replica, backup) is unreadable.
#[utoipa::path(post, path = "/api/v1/privacy/erasures", tag = "privacy", request_body = SubjectRequest,
    responses(
        (status = 200, description = "What was erased", body = Object),
        (status = 400, body = super::error::Problem),
        (status = 404, description = "Nobody holds this identifier", body = super::error::Problem),
    ),
    security(("bearer" = [])))]
pub async fn erase(
    State(state): State<AppState>,
    _caller: Caller,
    Json(request): Json<SubjectRequest>,
) -> Result<Json<ErasureReport>, ApiError> {
    Ok(Json(for_subject(&state, &request, erase_holder).await?))
}

/// Run `right` for the person a request names, off the async executor; an
/// invalid identifier is a 400 and nobody holding it a 404.
async fn for_subject<T: Send + 'static>(
    state: &AppState,
    request: &SubjectRequest,
    right: fn(&dyn crate::store::Engine, &Identifier) -> Result<T, crate::store::StoreError>,
) -> Result<T, ApiError> {
    let identifier =
        Identifier::parse(&request.identifier).map_err(|e| ApiError::field("identifier", e.to_string()))?;
    let lookup = identifier.clone();
    state.store.run(move |engine| right(engine, &lookup)).await.map_err(|e| match e {
        crate::store::StoreError::NotFound => ApiError::NotFound(format!("nobody holds `{identifier}`")),
        other => other.into(),
    })
}

/// Erase whoever holds `identifier`; `NotFound` when nobody does.
pub fn erase_holder(
    engine: &dyn crate::store::Engine,
    identifier: &Identifier,
) -> Result<ErasureReport, crate::store::StoreError> {
    let customer = engine.customer_id_by_identifier(identifier)?.ok_or(crate::store::StoreError::NotFound)?;
    engine.erase(customer)
}

/// Access and portability: everything relais holds about a person, as one zip
/// archive of JSON and CSV files (profile, identifiers, every event, merges).
#[utoipa::path(post, path = "/api/v1/privacy/exports", tag = "privacy", request_body = SubjectRequest,
    responses(
        (status = 200, description = "The archive", content_type = "application/zip"),
        (status = 400, body = super::error::Problem),
        (status = 404, description = "Nobody holds this identifier", body = super::error::Problem),
    ),
    security(("bearer" = [])))]
pub async fn export(
    State(state): State<AppState>,
    _caller: Caller,
    Json(request): Json<SubjectRequest>,
) -> Result<Response, ApiError> {
    let archive = for_subject(&state, &request, crate::privacy::export::export_person).await?;
    let disposition = format!("attachment; filename=\"relais-export-{}.zip\"", archive.customer);
    Ok((
        [(header::CONTENT_TYPE, "application/zip".to_string()), (header::CONTENT_DISPOSITION, disposition)],
        archive.bytes,
    )
        .into_response())
}
