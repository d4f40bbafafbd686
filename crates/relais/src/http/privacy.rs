//! Data-subject rights carried out by the data-protection officer: access
//! (export) and erasure.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use relais_domain::Identifier;
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ApiJson};
use super::AppState;
use relais_domain::rights::{RequestStatus, RightKind};
use relais_domain::{CustomerId, RequestId};

use crate::privacy::rights::Completion;

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
    Ok(Json(for_subject(&state, &caller, &request, "privacy.erase", crate::privacy::rights::erase_person).await?))
}

/// Carry out a right for the person a request names, off the async executor;
/// recorded in the audit log first. An invalid identifier is a 400 and nobody
/// holding it a 404.
async fn for_subject<T: Send + 'static>(
    state: &AppState,
    caller: &Caller,
    request: &SubjectRequest,
    action: &'static str,
    right: fn(&dyn Engine, &Audit<'_>, CustomerId) -> Result<T, StoreError>,
) -> Result<T, ApiError> {
    let identifier =
        Identifier::parse(&request.identifier).map_err(|e| ApiError::field("identifier", e.to_string()))?;
    let lookup = identifier.clone();
    let actor = caller.actor();
    state
        .store
        .run_audited(move |engine, audit| {
            crate::privacy::rights::carry_out(engine, audit, &actor, action, &lookup, right)
        })
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound(format!("nobody holds `{identifier}`")),
            other => other.into(),
        })
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
        for_subject(&state, &caller, &request, "privacy.export", crate::privacy::rights::export_person).await?;
    Ok(archive_response(archive))
}

/// An export archive as a download.
fn archive_response(archive: crate::privacy::export::ExportArchive) -> Response {
    let disposition = format!("attachment; filename=\"relais-export-{}.zip\"", archive.customer);
    ([(header::CONTENT_TYPE, "application/zip".to_string()), (header::CONTENT_DISPOSITION, disposition)], archive.bytes)
        .into_response()
}

/// The risk register: data classes with their fields, readers, encryption,
/// masks, retention and risk levels; the parts of the application; and every
/// field seen in events that has no class yet.
#[utoipa::path(get, path = "/api/v1/security/report", tag = "privacy",
    responses((status = 200, description = "The register", body = Object)),
    security(("bearer" = [])))]
pub async fn security_report(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<crate::privacy::report::SecurityReport>, ApiError> {
    Ok(Json(state.store.run(crate::privacy::report::security_report).await?))
}

/// A rights request to record.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RightsBody {
    /// access, portability, rectification, erasure, restriction or objection.
    pub kind: String,
    /// Any identifier of the person, `kind:value`.
    pub identifier: String,
}

/// A request as listed.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct RequestView {
    /// The request.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub request: crate::store::RightsRequest,
    /// Open after its deadline.
    pub overdue: bool,
}

fn view(request: crate::store::RightsRequest) -> RequestView {
    RequestView { overdue: request.overdue(chrono::Utc::now()), request }
}

fn request_not_found(id: RequestId) -> impl Fn(StoreError) -> ApiError {
    move |e| match e {
        StoreError::NotFound => ApiError::NotFound(format!("no request `{id}`")),
        other => other.into(),
    }
}

/// Record a data-subject rights request; it is due one month after receipt.
#[utoipa::path(post, path = "/api/v1/privacy/requests", tag = "privacy", request_body = RightsBody,
    responses((status = 201, body = RequestView), (status = 400, body = super::error::Problem), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn receive_request(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<RightsBody>,
) -> Result<Response, ApiError> {
    let kind = RightKind::parse(&body.kind).ok_or_else(|| {
        ApiError::field("kind", "must be access, portability, rectification, erasure, restriction or objection")
    })?;
    let identifier = Identifier::parse(&body.identifier).map_err(|e| ApiError::field("identifier", e.to_string()))?;
    let actor = caller.actor();
    let zone = state.settings.ingest.time_zone;
    let lookup = identifier.clone();
    let request = state
        .store
        .run_audited(move |engine, audit| crate::privacy::rights::receive(engine, audit, &actor, kind, &lookup, zone))
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound(format!("nobody holds `{identifier}`")),
            other => other.into(),
        })?;
    Ok((axum::http::StatusCode::CREATED, Json(view(request))).into_response())
}

/// `status` filter.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct RequestsQuery {
    /// open, done or refused.
    pub status: Option<String>,
}

/// Rights requests, soonest deadline first, with whether each is overdue.
#[utoipa::path(get, path = "/api/v1/privacy/requests", tag = "privacy", params(RequestsQuery),
    responses((status = 200, body = Object)),
    security(("bearer" = [])))]
pub async fn list_requests(
    State(state): State<AppState>,
    _caller: Caller,
    Query(query): Query<RequestsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let status = match query.status.as_deref() {
        Some(text) => {
            Some(RequestStatus::parse(text).ok_or_else(|| ApiError::field("status", "must be open, done or refused"))?)
        }
        None => None,
    };
    let requests = state.store.run(move |engine| engine.requests(status)).await?;
    Ok(Json(serde_json::json!({ "requests": requests.into_iter().map(view).collect::<Vec<_>>() })))
}

fn parse_request_id(text: &str) -> Result<RequestId, ApiError> {
    RequestId::parse(text).map_err(|e| ApiError::field("id", e.to_string()))
}

/// Carry out a request: access and portability answer the person's archive
/// (zip); erasure erases; objection and restriction withdraw the consents
/// concerned; rectification records that the corrections were made.
#[utoipa::path(post, path = "/api/v1/privacy/requests/{id}/complete", tag = "privacy",
    params(("id" = String, Path, description = "Request id, `req_…`")),
    responses(
        (status = 200, description = "What was done, or the archive (application/zip)", body = Object),
        (status = 404, body = super::error::Problem),
        (status = 409, description = "Not open", body = super::error::Problem),
    ),
    security(("bearer" = [])))]
pub async fn complete_request(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_request_id(&id)?;
    let actor = caller.actor();
    let completion = state
        .store
        .run_audited(move |engine, audit| crate::privacy::rights::complete(engine, audit, &actor, id))
        .await
        .map_err(request_not_found(id))?;
    Ok(match completion {
        Completion::Archive(archive) => archive_response(archive),
        Completion::Done(outcome) => {
            Json(serde_json::json!({ "request_id": id, "status": "done", "outcome": outcome })).into_response()
        }
    })
}

/// Why a request is refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefusalBody {
    /// identity_not_verified, manifestly_unfounded, excessive or legal_obligation_to_keep.
    pub reason: String,
}

/// Refuse a request, for a stated reason.
#[utoipa::path(post, path = "/api/v1/privacy/requests/{id}/refuse", tag = "privacy", request_body = RefusalBody,
    params(("id" = String, Path, description = "Request id, `req_…`")),
    responses((status = 200, body = Object), (status = 400, body = super::error::Problem), (status = 409, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn refuse_request(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RefusalBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_request_id(&id)?;
    let reason = crate::privacy::rights::REFUSAL_REASONS.into_iter().find(|r| *r == body.reason).ok_or_else(|| {
        ApiError::field("reason", format!("must be one of {}", crate::privacy::rights::REFUSAL_REASONS.join(", ")))
    })?;
    let actor = caller.actor();
    state
        .store
        .run_audited(move |engine, audit| crate::privacy::rights::refuse(engine, audit, &actor, id, reason))
        .await
        .map_err(request_not_found(id))?;
    Ok(Json(serde_json::json!({ "request_id": id, "status": "refused", "reason": reason })))
}
