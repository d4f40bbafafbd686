//! Segments: check and preview a source, save, list, show, members export,
//! overlap, delete, refresh. The language is checked for the caller's role.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiError, ApiJson};
use super::AppState;
use crate::segments::{self, ExportFormat, Overlap, Preview, RefreshReport, SegmentView};
use crate::typologies::{self, TypologyReport, TypologyView};

/// A segment to save.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentBody {
    /// Its name: 1 to 64 letters, digits, `-` or `_`.
    pub name: String,
    /// Its source in the segment language, for example `orders_90d >= 2 and city = "Lyon"`.
    pub source: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
}

/// A source to check or preview.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewBody {
    /// The segment's source.
    pub source: String,
    /// How many members to list (default 10, at most 500).
    pub sample: Option<usize>,
}

/// A saved segment and what saving it changed.
#[derive(Debug, Serialize, ToSchema)]
pub struct SavedSegment {
    /// The segment.
    pub segment: SegmentView,
    /// People who entered.
    pub entered: usize,
    /// People who left.
    pub exited: usize,
}

/// A segment with its first members.
#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentDetail {
    /// The segment.
    pub segment: SegmentView,
    /// Its first members by customer id.
    pub sample: Vec<String>,
}

/// Query of the members export.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ExportQuery {
    /// `csv` (default) or `jsonl`.
    pub format: Option<String>,
}

/// Saved segments.
#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentList {
    /// Every saved segment, by name.
    pub segments: Vec<SegmentView>,
}

/// One field or function of the language.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldView {
    /// Its name, or a call showing its arguments.
    pub name: String,
    /// What values it holds.
    pub kind: String,
    /// What it means.
    pub description: String,
}

/// Save a segment (or give an existing one a new source), then evaluate it over every profile.
#[utoipa::path(post, path = "/api/v1/segments", tag = "segments", request_body = SegmentBody,
    responses((status = 200, body = SavedSegment),
        (status = 400, body = super::error::Problem, description = "The source does not parse or check; `errors[0]` has the position"),
        (status = 403, body = super::error::Problem, description = "The source reads data the role may not see")),
    security(("bearer" = [])))]
pub async fn save(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<SegmentBody>,
) -> Result<Json<SavedSegment>, ApiError> {
    let settings = state.settings.ingest.clone();
    let role = caller.role;
    let (record, change) = state
        .store
        .run(move |engine| {
            Ok(segments::save(engine, &settings, &body.name, &body.source, &body.description, role, chrono::Utc::now()))
        })
        .await??;
    Ok(Json(SavedSegment { segment: SegmentView::from(&record), entered: change.entered, exited: change.exited }))
}

/// Evaluate a source over every profile now, without saving it: size, sample, timings.
#[utoipa::path(post, path = "/api/v1/segments/preview", tag = "segments", request_body = PreviewBody,
    responses((status = 200, body = Object), (status = 400, body = super::error::Problem),
        (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn preview(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<PreviewBody>,
) -> Result<Json<Preview>, ApiError> {
    let sample = super::error::page_limit(body.sample, 10)
        .map_err(|_| ApiError::field("sample", "must be between 1 and 500"))?;
    let settings = state.settings.ingest.clone();
    let role = caller.role;
    let preview = state
        .store
        .run(move |engine| Ok(segments::preview(engine, &settings, &body.source, role, sample, chrono::Utc::now())))
        .await??;
    Ok(Json(preview))
}

/// Every saved segment with its size.
#[utoipa::path(get, path = "/api/v1/segments", tag = "segments",
    responses((status = 200, body = SegmentList)), security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, _caller: Caller) -> Result<Json<SegmentList>, ApiError> {
    let records = state.store.run(|engine| engine.segments()).await?;
    Ok(Json(SegmentList { segments: records.iter().map(SegmentView::from).collect() }))
}

/// The fields and functions of the segment language.
#[utoipa::path(get, path = "/api/v1/segments/fields", tag = "segments",
    responses((status = 200, body = Vec<FieldView>)), security(("bearer" = [])))]
pub async fn fields(_caller: Caller) -> Json<Vec<FieldView>> {
    Json(
        relais_domain::segment::field_catalogue()
            .into_iter()
            .map(|f| FieldView { name: f.name.into(), kind: f.kind.into(), description: f.description.into() })
            .collect(),
    )
}

/// One saved segment with its first members.
#[utoipa::path(get, path = "/api/v1/segments/{name}", tag = "segments",
    params(("name" = String, Path, description = "The segment's name")),
    responses((status = 200, body = SegmentDetail), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    _caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<SegmentDetail>, ApiError> {
    let (record, sample) = state.store.run(move |engine| Ok(segments::with_sample(engine, &name, 10))).await??;
    Ok(Json(SegmentDetail {
        segment: SegmentView::from(&record),
        sample: sample.into_iter().map(|c| c.to_string()).collect(),
    }))
}

/// Every member of a segment (customer id, entry time) as CSV or JSON lines.
#[utoipa::path(get, path = "/api/v1/segments/{name}/members", tag = "segments",
    params(("name" = String, Path, description = "The segment's name"), ExportQuery),
    responses((status = 200, description = "text/csv or application/x-ndjson"), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn members(
    State(state): State<AppState>,
    _caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let format = ExportFormat::parse(query.format.as_deref().unwrap_or("csv"))
        .map_err(|_| ApiError::field("format", "must be csv or jsonl"))?;
    let body = state
        .store
        .run(move |engine| {
            let mut out = Vec::new();
            Ok(segments::export(engine, &name, format, &mut out).map(|_| out))
        })
        .await??;
    let content_type = match format {
        ExportFormat::Csv => "text/csv; charset=utf-8",
        ExportFormat::Jsonl => "application/x-ndjson",
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// How many people two segments share.
#[utoipa::path(get, path = "/api/v1/segments/{name}/overlap/{other}", tag = "segments",
    params(("name" = String, Path, description = "One segment"), ("other" = String, Path, description = "The other")),
    responses((status = 200, body = Overlap), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn overlap(
    State(state): State<AppState>,
    _caller: Caller,
    Path((name, other)): Path<(String, String)>,
) -> Result<Json<Overlap>, ApiError> {
    let overlap = state.store.run(move |engine| Ok(segments::overlap(engine, &name, &other))).await??;
    Ok(Json(overlap))
}

/// Delete a segment and its memberships.
#[utoipa::path(delete, path = "/api/v1/segments/{name}", tag = "segments",
    params(("name" = String, Path, description = "The segment's name")),
    responses((status = 204), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    _caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let missing = name.clone();
    if state.store.run(move |engine| engine.segment_delete(&name)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(segments::SegmentsError::Unknown(missing).into())
    }
}

/// Score RFM, then evaluate every saved segment over every profile now.
#[utoipa::path(post, path = "/api/v1/segments/refresh", tag = "segments",
    responses((status = 200, body = Object)), security(("bearer" = [])))]
pub async fn refresh(State(state): State<AppState>, _caller: Caller) -> Result<Json<RefreshReport>, ApiError> {
    let settings = state.settings.ingest.clone();
    let report = state.store.run(move |engine| Ok(segments::refresh(engine, &settings, chrono::Utc::now()))).await??;
    Ok(Json(report))
}

/// A typology to save.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TypologyBody {
    /// Its name: 1 to 64 letters, digits, `-` or `_`.
    pub name: String,
    /// Its saved segments, in order.
    pub segments: Vec<String>,
    /// What it is for.
    #[serde(default)]
    pub description: String,
}

/// Query of a typology's report.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ReportQuery {
    /// Length of the period, days (default 30, at most 366).
    pub period_days: Option<i64>,
}

/// Typologies.
#[derive(Debug, Serialize, ToSchema)]
pub struct TypologyList {
    /// Every typology, by name.
    pub typologies: Vec<TypologyView>,
}

/// Save a typology: a named set of saved segments.
#[utoipa::path(post, path = "/api/v1/typologies", tag = "segments", request_body = TypologyBody,
    responses((status = 200, body = TypologyView), (status = 400, body = super::error::Problem),
        (status = 404, body = super::error::Problem, description = "A segment is not saved")),
    security(("bearer" = [])))]
pub async fn save_typology(
    State(state): State<AppState>,
    _caller: Caller,
    ApiJson(body): ApiJson<TypologyBody>,
) -> Result<Json<TypologyView>, ApiError> {
    let saved = state
        .store
        .run(move |engine| {
            Ok(typologies::save(engine, &body.name, &body.segments, &body.description, chrono::Utc::now()))
        })
        .await??;
    Ok(Json(TypologyView::from(&saved)))
}

/// Every typology.
#[utoipa::path(get, path = "/api/v1/typologies", tag = "segments",
    responses((status = 200, body = TypologyList)), security(("bearer" = [])))]
pub async fn list_typologies(State(state): State<AppState>, _caller: Caller) -> Result<Json<TypologyList>, ApiError> {
    let records = state.store.run(|engine| engine.typologies()).await?;
    Ok(Json(TypologyList { typologies: records.iter().map(TypologyView::from).collect() }))
}

/// A typology's figures per segment (size, revenue, mean lifetime value,
/// NPS and CSAT) over the period, against the previous period.
#[utoipa::path(get, path = "/api/v1/typologies/{name}", tag = "segments",
    params(("name" = String, Path, description = "The typology's name"), ReportQuery),
    responses((status = 200, body = TypologyReport), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn typology_report(
    State(state): State<AppState>,
    _caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<ReportQuery>,
) -> Result<Json<TypologyReport>, ApiError> {
    let period = query.period_days.unwrap_or(30);
    if !(1..=366).contains(&period) {
        return Err(ApiError::field("period_days", "must be between 1 and 366"));
    }
    let settings = state.settings.ingest.clone();
    let report = state
        .store
        .run(move |engine| Ok(typologies::report(engine, &settings, &name, period, chrono::Utc::now())))
        .await??;
    Ok(Json(report))
}

/// Delete a typology (its segments stay).
#[utoipa::path(delete, path = "/api/v1/typologies/{name}", tag = "segments",
    params(("name" = String, Path, description = "The typology's name")),
    responses((status = 204), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn delete_typology(
    State(state): State<AppState>,
    _caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.store.run(move |engine| Ok(typologies::delete(engine, &name))).await??;
    Ok(StatusCode::NO_CONTENT)
}
