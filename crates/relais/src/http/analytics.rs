//! Analytics over the whole customer base: customer lifetime value.

use axum::extract::State;
use axum::Json;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ApiJson};
use super::AppState;

/// What to fit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClvFitBody {
    /// Last day of the calibration period (`YYYY-MM-DD`, organisation's calendar); default: today.
    pub calibration_end: Option<NaiveDate>,
    /// Horizon of the forecasts in weeks (default 52).
    pub horizon_weeks: Option<f64>,
    /// How many of the most valuable customers to list (default 20, at most 500).
    pub top: Option<usize>,
}

/// One customer's forecast.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForecastView {
    /// Customer id.
    pub customer: String,
    /// Probability the customer is still active.
    pub probability_alive: f64,
    /// Expected purchases over the horizon.
    pub expected_purchases: f64,
    /// Expected value over the horizon, major units of the currency.
    pub expected_value: f64,
}

/// The fitted models and the most valuable customers.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClvFit {
    /// Parameters (r, alpha, a, b, p, q, v), counts and totals.
    #[schema(value_type = Object)]
    pub fit: crate::clv::FitReport,
    /// The customers with the highest expected value, best first.
    pub top: Vec<ForecastView>,
}

/// Fit BG/NBD and Gamma-Gamma on the database's orders and forecast every customer.
#[utoipa::path(post, path = "/api/v1/clv/fit", tag = "analytics", request_body = ClvFitBody,
    responses((status = 200, body = ClvFit), (status = 400, body = super::error::Problem),
        (status = 409, body = super::error::Problem, description = "Too little data to fit")),
    security(("bearer" = [])))]
pub async fn clv_fit(
    State(state): State<AppState>,
    _caller: Caller,
    ApiJson(body): ApiJson<ClvFitBody>,
) -> Result<Json<ClvFit>, ApiError> {
    let horizon = body.horizon_weeks.unwrap_or(52.0);
    if !(horizon.is_finite() && horizon > 0.0 && horizon <= 520.0) {
        return Err(ApiError::field("horizon_weeks", "must be above 0 and at most 520 (ten years)"));
    }
    let top = body.top.unwrap_or(20);
    if top > 500 {
        return Err(ApiError::field("top", "at most 500"));
    }
    let ingest = state.settings.ingest.clone();
    let end = body.calibration_end.unwrap_or_else(|| ingest.day_of(chrono::Utc::now()));
    let currency = ingest.currency.clone();
    let purchases = state.store.run(move |engine| engine.purchases(&currency)).await?;
    let currency = ingest.currency.clone();
    let (fit, mut forecasts) = tokio::task::spawn_blocking(move || {
        let rows: Vec<relais_domain::clv::Transaction> = purchases
            .into_iter()
            .map(|(customer, at, amount)| relais_domain::clv::Transaction {
                customer: customer.to_string(),
                date: ingest.day_of(at),
                amount_cents: amount,
            })
            .collect();
        crate::clv::fit(&rows, end, horizon, &currency)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Conflict(format!("cannot fit the models: {e}")))?;
    forecasts.sort_by(|a, b| b.expected_value_cents.total_cmp(&a.expected_value_cents));
    let major = 10f64.powi(relais_domain::money::currency_exponent(&fit.currency) as i32);
    let top = forecasts
        .into_iter()
        .take(top)
        .map(|f| ForecastView {
            customer: f.customer,
            probability_alive: f.probability_alive,
            expected_purchases: f.expected_purchases,
            expected_value: f.expected_value_cents / major,
        })
        .collect();
    Ok(Json(ClvFit { fit, top }))
}

/// Customers in one RFM group.
#[derive(Debug, Serialize, ToSchema)]
pub struct RfmGroupCount {
    /// The group's id (`champions`, `at_risk`…).
    pub group: String,
    /// Its name.
    pub label: String,
    /// Customers in it.
    pub customers: usize,
}

/// RFM over the database's orders.
#[derive(Debug, Serialize, ToSchema)]
pub struct RfmSummary {
    /// The reference instant recency is counted from.
    pub now: chrono::DateTime<chrono::Utc>,
    /// Customers with at least one order (the others have no scores).
    pub customers: usize,
    /// Customers per named group (the map is in docs/rfm.md).
    pub groups: Vec<RfmGroupCount>,
}

/// The RFM scores of every customer with an order, as of now: how many in
/// each named group (Champions, Loyal, At risk…).
#[utoipa::path(post, path = "/api/v1/rfm", tag = "analytics",
    responses((status = 200, body = RfmSummary)), security(("bearer" = [])))]
pub async fn rfm(State(state): State<AppState>, _caller: Caller) -> Result<Json<RfmSummary>, ApiError> {
    let now = chrono::Utc::now();
    let currency = state.settings.ingest.currency.clone();
    let purchases = state.store.run(move |engine| engine.purchases(&currency)).await?;
    let scored = tokio::task::spawn_blocking(move || crate::clv::database_rfm(&purchases, now))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(RfmSummary { now, customers: scored.len(), groups: crate::clv::rfm_groups(&scored) }))
}
