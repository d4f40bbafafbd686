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
use relais_domain::CustomerId;

use crate::store::{Audit, Engine, ErasureReport, StoreError};

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
    caller: Caller,
    Json(request): Json<SubjectRequest>,
) -> Result<Json<ErasureReport>, ApiError> {
    Ok(Json(for_subject(&state, &caller, &request, "privacy.erase", erase_person).await?))
}

/// Carry out a right for the person a request names, off the async executor;
/// recorded in the audit log first. An invalid identifier is a 400 and nobody
/// holding it a 404.
async fn for_subject<T: Send + 'static>(
    state: &AppState,
    caller: &Caller,
    request: &SubjectRequest,
    action: &'static str,
    right: fn(&dyn Engine, CustomerId) -> Result<T, StoreError>,
) -> Result<T, ApiError> {
    let identifier =
        Identifier::parse(&request.identifier).map_err(|e| ApiError::field("identifier", e.to_string()))?;
    let lookup = identifier.clone();
    let actor = super::customers::actor(caller);
    state
        .store
        .run_audited(move |engine, audit| carry_out(engine, audit, &actor, action, &lookup, right))
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound(format!("nobody holds `{identifier}`")),
            other => other.into(),
        })
}

/// Find whoever holds `identifier`, record `action` about them, then carry it out.
pub fn carry_out<T>(
    engine: &dyn Engine,
    audit: &Audit<'_>,
    actor: &str,
    action: &str,
    identifier: &Identifier,
    right: fn(&dyn Engine, CustomerId) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let customer = engine.customer_id_by_identifier(identifier)?.ok_or(StoreError::NotFound)?;
    audit.record(actor, action, Some(customer), serde_json::json!({ "identifier_kind": identifier.kind() }))?;
    right(engine, customer)
}

/// Erase a person (see `Engine::erase`).
pub fn erase_person(engine: &dyn Engine, customer: CustomerId) -> Result<ErasureReport, StoreError> {
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
    caller: Caller,
    Json(request): Json<SubjectRequest>,
) -> Result<Response, ApiError> {
    let archive =
        for_subject(&state, &caller, &request, "privacy.export", crate::privacy::export::export_person).await?;
    let disposition = format!("attachment; filename=\"relais-export-{}.zip\"", archive.customer);
    Ok((
        [(header::CONTENT_TYPE, "application/zip".to_string()), (header::CONTENT_DISPOSITION, disposition)],
        archive.bytes,
    )
        .into_response())
}
