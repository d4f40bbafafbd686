//! Typologies: named sets of saved segments that the customer room follows —
//! for each segment its size, revenue, mean lifetime value and satisfaction,
//! and how they changed from the previous period.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use relais_domain::typology::{change_pct, Satisfaction};
use relais_domain::TypologyId;
use serde::Serialize;

use crate::segments::{self, SegmentsError};
use crate::store::ingest::IngestSettings;
use crate::store::segments::TypologyRecord;
use crate::store::Engine;

/// Save a typology (new, or new segments for an existing name). Every segment
/// must be saved already.
pub fn save(
    engine: &dyn Engine,
    name: &str,
    segment_names: &[String],
    description: &str,
    now: DateTime<Utc>,
) -> Result<TypologyRecord, SegmentsError> {
    segments::check_name(name)?;
    if segment_names.is_empty() {
        return Err(SegmentsError::Name("a typology needs at least one segment".into()));
    }
    let saved: Vec<String> = engine.segments()?.into_iter().map(|s| s.name).collect();
    let mut seen = Vec::new();
    for segment in segment_names {
        if !saved.contains(segment) {
            return Err(SegmentsError::Unknown(segment.clone()));
        }
        if seen.contains(segment) {
            return Err(SegmentsError::Name(format!("segment `{segment}` is listed twice")));
        }
        seen.push(segment.clone());
    }
    Ok(engine.typology_put(&TypologyRecord {
        id: TypologyId::new(),
        name: name.to_string(),
        segments: seen,
        description: description.trim().to_string(),
        created_at: now,
        updated_at: now,
    })?)
}

/// The typology of that name.
pub fn find(engine: &dyn Engine, name: &str) -> Result<TypologyRecord, SegmentsError> {
    engine
        .typologies()?
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| SegmentsError::UnknownTypology(name.to_string()))
}

/// One day of a segment's history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HistoryPoint {
    /// The day.
    pub day: NaiveDate,
    /// Members that day.
    pub members: i64,
    /// Mean lifetime value that day, major units.
    pub clv_mean: Option<f64>,
}

/// One segment of a typology, now and over the previous period.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SegmentRoom {
    /// The segment.
    pub segment: String,
    /// Members now.
    pub size: i64,
    /// Members at the end of the previous period (from the daily snapshots).
    pub size_before: Option<i64>,
    /// Change of size, percent.
    pub size_change_pct: Option<f64>,
    /// Net revenue of today's members over the period, major units.
    pub revenue: f64,
    /// The same members' net revenue over the previous period.
    pub revenue_before: f64,
    /// Change of revenue, percent.
    pub revenue_change_pct: Option<f64>,
    /// Mean expected value over the next 52 weeks, major units.
    pub clv_mean: Option<f64>,
    /// The mean at the end of the previous period.
    pub clv_mean_before: Option<f64>,
    /// Change of mean value, percent.
    pub clv_change_pct: Option<f64>,
    /// Satisfaction of the members over the period.
    #[schema(value_type = Object)]
    pub satisfaction: Satisfaction,
    /// Satisfaction over the previous period.
    #[schema(value_type = Object)]
    pub satisfaction_before: Satisfaction,
    /// Size and mean value on each day it was refreshed, oldest first.
    pub history: Vec<HistoryPoint>,
}

/// A typology's figures.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TypologyReport {
    /// The typology.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// The last day of the period (today, organisation's calendar).
    pub as_of: NaiveDate,
    /// Length of the period and of the previous one, days.
    pub period_days: i64,
    /// The currency of the amounts.
    pub currency: String,
    /// One entry per segment, in the typology's order.
    pub segments: Vec<SegmentRoom>,
}

/// The figures of a typology over the last `period_days` days against the period before.
pub fn report(
    engine: &dyn Engine,
    settings: &IngestSettings,
    name: &str,
    period_days: i64,
    now: DateTime<Utc>,
) -> Result<TypologyReport, SegmentsError> {
    if !(1..=366).contains(&period_days) {
        return Err(SegmentsError::Name(format!("the period must be 1 to 366 days, not {period_days}")));
    }
    let typology = find(engine, name)?;
    let saved = engine.segments()?;
    let today = settings.day_of(now);
    let first = today - Duration::days(period_days - 1);
    let previous_first = first - Duration::days(period_days);
    let start_of = |day: NaiveDate| -> DateTime<Utc> {
        day.and_hms_opt(0, 0, 0)
            .and_then(|t| t.and_local_timezone(settings.time_zone).earliest())
            .map_or_else(|| day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc(), |t| t.with_timezone(&Utc))
    };
    let major = 10f64.powi(relais_domain::money::currency_exponent(&settings.currency) as i32);
    let mut rooms = Vec::new();
    for segment_name in &typology.segments {
        // A segment deleted since the typology was saved is left out.
        let Some(segment) = saved.iter().find(|s| &s.name == segment_name) else { continue };
        let now_figures =
            engine.segment_figures(segment.id, first, today, start_of(first), start_of(today + Duration::days(1)))?;
        let before_figures = engine.segment_figures(
            segment.id,
            previous_first,
            first - Duration::days(1),
            start_of(previous_first),
            start_of(first),
        )?;
        let history = engine.snapshots(segment.id)?;
        let before = history.iter().rev().find(|s| s.day < first);
        let clv_mean = relais_domain::typology::mean_minor(now_figures.clv_sum_minor, now_figures.clv_count)
            .map(|v| v as f64 / major);
        let clv_mean_before = before.and_then(|s| s.clv_mean_minor).map(|v| v as f64 / major);
        let revenue = now_figures.revenue_minor as f64 / major;
        let revenue_before = before_figures.revenue_minor as f64 / major;
        rooms.push(SegmentRoom {
            segment: segment.name.clone(),
            size: segment.members,
            size_before: before.map(|s| s.members),
            size_change_pct: change_pct(segment.members as f64, before.map(|s| s.members as f64)),
            revenue,
            revenue_before,
            revenue_change_pct: change_pct(revenue, Some(revenue_before)),
            clv_mean,
            clv_mean_before,
            clv_change_pct: clv_mean.and_then(|now| change_pct(now, clv_mean_before)),
            satisfaction: Satisfaction::of(now_figures.answers),
            satisfaction_before: Satisfaction::of(before_figures.answers),
            history: history
                .iter()
                .map(|s| HistoryPoint {
                    day: s.day,
                    members: s.members,
                    clv_mean: s.clv_mean_minor.map(|v| v as f64 / major),
                })
                .collect(),
        });
    }
    Ok(TypologyReport {
        name: typology.name,
        description: typology.description,
        as_of: today,
        period_days,
        currency: settings.currency.clone(),
        segments: rooms,
    })
}

/// A typology as the API and the command line show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TypologyView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its segments, in order.
    pub segments: Vec<String>,
    /// What it is for.
    pub description: String,
    /// When first saved.
    pub created_at: DateTime<Utc>,
    /// When last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<&TypologyRecord> for TypologyView {
    fn from(t: &TypologyRecord) -> TypologyView {
        TypologyView {
            id: t.id.to_string(),
            name: t.name.clone(),
            segments: t.segments.clone(),
            description: t.description.clone(),
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// Delete a typology (its segments stay).
pub fn delete(engine: &dyn Engine, name: &str) -> Result<(), SegmentsError> {
    if engine.typology_delete(name)? {
        Ok(())
    } else {
        Err(SegmentsError::UnknownTypology(name.to_string()))
    }
}
