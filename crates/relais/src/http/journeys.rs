//! Journey analytics over the API: what-ifs on a stage model, attribution of
//! conversion paths, and the pictures (a Sankey diagram of a model, before/after
//! bars of a what-if) drawn as SVG on the server. Models and paths travel in the
//! request body; nothing is stored.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use relais_domain::journey::{JourneyError, Order, PathSet, StageModel, StageModelSpec, WhatIf};
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ApiJson};

/// The most conversion paths one request may carry.
const MAX_PATHS: usize = 200_000;

/// A what-if on a stage model.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WhatIfBody {
    /// The model: channels, stages, initial distribution, one row-stochastic matrix per step.
    #[schema(value_type = Object)]
    pub model: StageModelSpec,
    /// Changes applied in order, each `{"into_stage", "op": "mix"|"set"|"edit_row", "channel", "share"}`
    /// or `{"into_stage", "op": "edit_row", "from_channel", "row"}`.
    #[schema(value_type = Vec<Object>)]
    pub what_ifs: Vec<WhatIf>,
}

/// A stage model to draw.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SankeyBody {
    /// The model: channels, stages, initial distribution, one row-stochastic matrix per step.
    #[schema(value_type = Object)]
    pub model: StageModelSpec,
}

/// One distinct conversion path (ChannelAttribution format).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PathRowBody {
    /// Channels joined by `" > "`.
    pub path: String,
    /// Journeys on this path that converted.
    pub total_conversions: f64,
    /// Value of those conversions (default 0).
    #[serde(default)]
    pub total_conversion_value: f64,
    /// Journeys on this path that did not convert (default 0).
    #[serde(default)]
    pub total_null: f64,
}

/// Paths to attribute.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttributionBody {
    /// The paths; errors name a path by its position, counted from 1 (`line`).
    pub paths: Vec<PathRowBody>,
    /// Order of the Markov model, 1 to 4 (default 1).
    pub order: Option<u32>,
}

/// A domain refusal as a problem naming the field at fault.
fn refused(field: &str, error: JourneyError) -> ApiError {
    ApiError::field(field, error.to_string())
}

fn checked_model(spec: StageModelSpec) -> Result<StageModel, ApiError> {
    StageModel::new(spec).map_err(|e| refused("model", e))
}

fn svg(body: String) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("image/svg+xml"));
    response
}

/// Apply what-ifs to a stage model: distributions at every stage before and
/// after, and the change per channel at the last stage (`null` where the
/// baseline is 0).
#[utoipa::path(post, path = "/api/v1/journeys/whatif", tag = "analytics", request_body = WhatIfBody,
    responses((status = 200, description = "baseline, scenario, change_pct, change, applied", content_type = "application/json"),
        (status = 400, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn what_if(_caller: Caller, ApiJson(body): ApiJson<WhatIfBody>) -> Result<Response, ApiError> {
    Ok(Json(what_if_report(body)?).into_response())
}

/// The what-if report of a request body, refusals naming the field.
fn what_if_report(body: WhatIfBody) -> Result<crate::journey::WhatIfReport, ApiError> {
    let model = checked_model(body.model)?;
    crate::journey::what_if(&model, &body.what_ifs).map_err(|e| refused("what_ifs", e))
}

/// The same what-if drawn as before/after bars at the last stage (SVG).
#[utoipa::path(post, path = "/api/v1/journeys/whatif.svg", tag = "analytics", request_body = WhatIfBody,
    responses((status = 200, description = "SVG image", content_type = "image/svg+xml"),
        (status = 400, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn what_if_svg(_caller: Caller, ApiJson(body): ApiJson<WhatIfBody>) -> Result<Response, ApiError> {
    Ok(svg(crate::journey::what_if_bars_svg(&what_if_report(body)?)))
}

/// A stage model drawn as a Sankey diagram from stage to stage (SVG).
#[utoipa::path(post, path = "/api/v1/journeys/sankey.svg", tag = "analytics", request_body = SankeyBody,
    responses((status = 200, description = "SVG image", content_type = "image/svg+xml"),
        (status = 400, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn sankey_svg(_caller: Caller, ApiJson(body): ApiJson<SankeyBody>) -> Result<Response, ApiError> {
    let model = checked_model(body.model)?;
    Ok(svg(crate::journey::sankey_svg(&model, &crate::journey::SankeyWords::default())))
}

/// First-touch, last-touch, linear and Markov removal-effect attribution of
/// conversion paths (exact, order 1 to 4).
#[utoipa::path(post, path = "/api/v1/journeys/attribution", tag = "analytics", request_body = AttributionBody,
    responses((status = 200, description = "first_touch, last_touch, linear, markov: channel → {conversions, value}", content_type = "application/json"),
        (status = 400, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn attribution(_caller: Caller, ApiJson(body): ApiJson<AttributionBody>) -> Result<Response, ApiError> {
    if body.paths.len() > MAX_PATHS {
        return Err(ApiError::field("paths", format!("at most {MAX_PATHS} paths per request; use the command line")));
    }
    let order = Order::new(body.order.unwrap_or(1)).map_err(|e| refused("order", e))?;
    let mut paths = PathSet::new();
    for (i, row) in body.paths.iter().enumerate() {
        paths
            .push(i as u64 + 1, &row.path, row.total_conversions, row.total_conversion_value, row.total_null)
            .map_err(|e| refused(&format!("paths[{i}]"), e))?;
    }
    // The solve is CPU work: keep it off the async workers.
    let report = tokio::task::spawn_blocking(move || crate::journey::attribute(&paths, order))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| refused("paths", e))?;
    Ok(Json(report).into_response())
}

/// Most bootstrap replicates one request may ask for.
const MAX_REPLICATES: usize = 1_000;

/// What to estimate a stage model from: the stored event log (the default) or
/// a CSV of journeys.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelBody {
    /// Stages, first to last (default information, evaluation, decision, purchase).
    pub stages: Option<Vec<String>>,
    /// Event log: first instant read (RFC 3339, inclusive).
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// Event log: last instant read (exclusive).
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    /// Event log: days without an event after which a journey ends (default 30).
    pub gap_days: Option<u32>,
    /// Event log: only the journeys of this saved segment's members.
    pub segment: Option<String>,
    /// Event log: a stage map in TOML (`page`, `screen`, `[stages]`), instead of the default.
    pub map: Option<String>,
    /// A CSV of journeys (`journey_id,stage,channel[,timestamp]`) instead of the event log.
    pub journeys: Option<String>,
    /// Only journeys that reached the last stage feed the model (default false).
    #[serde(default)]
    pub purchasers_only: bool,
    /// Bootstrap replicates for the intervals (0 to 1000, default 200).
    pub replicates: Option<usize>,
    /// Seed of the bootstrap (default 2026).
    pub seed: Option<u64>,
}

/// A journey file or event-log refusal as a problem naming the field at fault.
fn model_refused(field: &str, error: crate::journey::JourneyFileError) -> ApiError {
    match error {
        crate::journey::JourneyFileError::Store(e) => e.into(),
        other => ApiError::field(field, other.to_string()),
    }
}

/// Estimate the stage model — the distribution over channels at the first
/// stage and one transition matrix per step, with counts and bootstrap
/// intervals — from the stored event log (or a CSV of journeys). The answer
/// is a MODEL.json that the what-if endpoints take.
#[utoipa::path(post, path = "/api/v1/journeys/model", tag = "analytics", request_body = ModelBody,
    responses((status = 200, description = "channels, stages, initial, transitions, journeys, purchasers, counts, intervals, events_read", content_type = "application/json"),
        (status = 400, body = super::error::Problem),
        (status = 404, description = "No such segment", body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn model(
    axum::extract::State(state): axum::extract::State<super::AppState>,
    _caller: Caller,
    ApiJson(body): ApiJson<ModelBody>,
) -> Result<Response, ApiError> {
    let replicates = body.replicates.unwrap_or(200);
    if replicates > MAX_REPLICATES {
        return Err(ApiError::field("replicates", format!("at most {MAX_REPLICATES}, not {replicates}")));
    }
    let options = relais_domain::journey::EstimateOptions {
        purchasers_only: body.purchasers_only,
        replicates,
        seed: body.seed.unwrap_or(2026),
    };
    let stages = body
        .stages
        .clone()
        .unwrap_or_else(|| ["information", "evaluation", "decision", "purchase"].map(String::from).to_vec());
    if let Some(csv) = body.journeys {
        if body.segment.is_some() || body.map.is_some() || body.from.is_some() || body.to.is_some() {
            return Err(ApiError::field(
                "journeys",
                "`segment`, `map`, `from` and `to` read the event log: leave them out with `journeys`",
            ));
        }
        let estimated = crate::journey::model_from_journeys(csv.as_bytes(), stages, options)
            .map_err(|e| model_refused("journeys", e))?;
        return Ok(Json(estimated).into_response());
    }
    let gap_days = body.gap_days.unwrap_or(30);
    if gap_days == 0 {
        return Err(ApiError::field("gap_days", "must be at least 1"));
    }
    let map = match &body.map {
        Some(text) => crate::journey::read_stage_map(text, &stages).map_err(|e| model_refused("map", e))?,
        None => relais_domain::journey::StageMap::default(),
    };
    let (from, to, segment) = (body.from, body.to, body.segment.clone());
    let built = state
        .store
        .run(move |engine| {
            let members = match &segment {
                Some(name) => match crate::segments::member_ids(engine, name) {
                    Ok(ids) => Some(ids),
                    Err(crate::segments::SegmentsError::Store(e)) => return Err(e),
                    Err(other) => return Ok(Err(ApiError::from(other))),
                },
                None => None,
            };
            Ok(Ok(crate::journey::model_from_store(engine, map, from, to, stages, gap_days, options, members.as_ref())))
        })
        .await??;
    let (estimated, read) = built.map_err(|e| model_refused("stages", e))?;
    let mut answer = serde_json::to_value(&estimated).map_err(|e| ApiError::Internal(e.to_string()))?;
    answer["events_read"] = serde_json::json!(read);
    Ok(Json(answer).into_response())
}
