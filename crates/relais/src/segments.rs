//! Saved segments, written once for the command line, the API and the ingest
//! path: checking a source for a role, saving, evaluating over the store,
//! keeping memberships live, and the scheduled refresh (RFM scores first,
//! then every segment from one fact table).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use relais_domain::segment::{CheckContext, Column, Segment, SegmentError};
use relais_domain::{CustomerId, Role, SegmentId};
use serde::Serialize;

use crate::store::ingest::IngestSettings;
use crate::store::segments::{CustomerScore, MembershipChange, SegmentRecord, Snapshot};
use crate::store::{Engine, SegmentsMark, StoreError};

/// Why a segment operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SegmentsError {
    /// The source is wrong (with where and why).
    #[error("{0}")]
    Source(#[from] SegmentError),
    /// The name is unusable.
    #[error("{0}")]
    Name(String),
    /// No segment has that name.
    #[error("no segment is named `{0}`; `relais segment list` shows them")]
    Unknown(String),
    /// No typology has that name.
    #[error("no typology is named `{0}`; `relais typology list` shows them")]
    UnknownTypology(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Check a source as `role` would run it.
pub fn compile(
    engine: &dyn Engine,
    settings: &IngestSettings,
    source: &str,
    role: Role,
) -> Result<Segment, SegmentError> {
    let classification = &engine.privacy().classes;
    let context = CheckContext {
        role,
        classification,
        currency_exponent: relais_domain::money::currency_exponent(&settings.currency),
    };
    Segment::compile(source, &context)
}

/// A segment name: 1 to 64 letters, digits, `-` or `_`, so it is safe in
/// URLs, file names and event properties.
pub fn check_name(name: &str) -> Result<(), SegmentsError> {
    let ok = (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SegmentsError::Name(format!(
            "`{name}` is not a segment name: use 1 to 64 letters, digits, `-` or `_` (for example lyon-regulars)"
        )))
    }
}

/// A segment's size and a few members, evaluated now.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    /// People in it.
    pub size: usize,
    /// Profiles evaluated.
    pub profiles: usize,
    /// The first members by id.
    pub sample: Vec<CustomerId>,
    /// Whether memberships can change with time alone.
    pub moves_with_time: bool,
    /// Time to read the facts, milliseconds.
    pub read_ms: f64,
    /// Time to evaluate, milliseconds.
    pub evaluate_ms: f64,
}

/// Evaluate a source over every profile without saving it.
pub fn preview(
    engine: &dyn Engine,
    settings: &IngestSettings,
    source: &str,
    role: Role,
    sample: usize,
    now: DateTime<Utc>,
) -> Result<Preview, SegmentsError> {
    let segment = compile(engine, settings, source, role)?;
    let started = Instant::now();
    let (customers, table) = engine.segment_facts(segment.columns(), None, now)?;
    let read = started.elapsed();
    let started = Instant::now();
    let members = segment.evaluate(&table);
    let evaluate = started.elapsed();
    Ok(Preview {
        size: members.count(),
        profiles: customers.len(),
        sample: members.rows().take(sample).map(|row| customers[row]).collect(),
        moves_with_time: segment.moves_with_time(),
        read_ms: millis(read),
        evaluate_ms: millis(evaluate),
    })
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Save a segment (new, or a new source for an existing name) as `role`, then
/// evaluate it over every profile so its memberships are right at once.
pub fn save(
    engine: &dyn Engine,
    settings: &IngestSettings,
    name: &str,
    source: &str,
    description: &str,
    role: Role,
    now: DateTime<Utc>,
) -> Result<(SegmentRecord, MembershipChange), SegmentsError> {
    check_name(name)?;
    let segment = compile(engine, settings, source, role)?;
    let record = engine.segment_put(&SegmentRecord {
        id: SegmentId::new(),
        name: name.to_string(),
        source: segment.source().to_string(),
        description: description.trim().to_string(),
        created_at: now,
        updated_at: now,
        refreshed_at: None,
        members: 0,
    })?;
    let change = evaluate_all(engine, &[(record.clone(), segment)], None, now)?.remove(0).2;
    let record = find(engine, name)?;
    Ok((record, change))
}

/// The saved segment of that name.
pub fn find(engine: &dyn Engine, name: &str) -> Result<SegmentRecord, SegmentsError> {
    engine.segments()?.into_iter().find(|s| s.name == name).ok_or_else(|| SegmentsError::Unknown(name.to_string()))
}

/// The saved segment of that name with its first `sample` members.
pub fn with_sample(
    engine: &dyn Engine,
    name: &str,
    sample: usize,
) -> Result<(SegmentRecord, Vec<CustomerId>), SegmentsError> {
    let record = find(engine, name)?;
    let members = engine.segment_members(record.id, None, sample)?.into_iter().map(|(c, _)| c).collect();
    Ok((record, members))
}

/// Saved segments compiled for evaluation (as read after `after`, or now).
/// They were checked for their author's role when saved; evaluation runs as
/// the system.
fn compiled(
    engine: &dyn Engine,
    settings: &IngestSettings,
    after: Option<SegmentsMark>,
) -> Result<Vec<(SegmentRecord, Segment)>, StoreError> {
    let records = match after {
        Some(mark) => engine.segments_after(mark)?,
        None => engine.segments()?,
    };
    let mut out = Vec::new();
    for record in records {
        match compile(engine, settings, &record.source, Role::Admin) {
            Ok(segment) => out.push((record, segment)),
            // A source saved under an older version of the language that no
            // longer checks is skipped, not fatal; `segment list` shows it.
            Err(e) => tracing::warn!(segment = %record.name, error = %e, "saved segment no longer compiles; skipped"),
        }
    }
    Ok(out)
}

fn evaluate_all(
    engine: &dyn Engine,
    segments: &[(SegmentRecord, Segment)],
    only: Option<&[CustomerId]>,
    now: DateTime<Utc>,
) -> Result<Vec<(SegmentRecord, Vec<CustomerId>, MembershipChange)>, StoreError> {
    if segments.is_empty() {
        return Ok(Vec::new());
    }
    // One fact table with every column any segment reads.
    let mut columns: Vec<Column> = Vec::new();
    for (_, segment) in segments {
        for column in segment.columns() {
            if !columns.contains(column) {
                columns.push(column.clone());
            }
        }
    }
    let (customers, table) = engine.segment_facts(&columns, only, now)?;
    let evaluated: Vec<(SegmentRecord, Vec<CustomerId>)> = segments
        .iter()
        .map(|(record, segment)| (record.clone(), segment.evaluate(&table).rows().map(|row| customers[row]).collect()))
        .collect();
    let changes = engine.segment_sync(&evaluated, only, now)?;
    Ok(evaluated.into_iter().zip(changes).map(|((record, members), change)| (record, members, change)).collect())
}

/// Bring the memberships of the profiles an ingest batch touched up to date
/// (their survivors and the profiles merged away, which leave every segment).
/// `after`: a mark from right after the batch committed, if the engine took
/// one (the read of the saved segments must start after that commit).
pub fn update_members(
    engine: &dyn Engine,
    settings: &IngestSettings,
    customers: &[CustomerId],
    now: DateTime<Utc>,
    after: Option<SegmentsMark>,
) -> Result<usize, StoreError> {
    if customers.is_empty() {
        return Ok(0);
    }
    let segments = compiled(engine, settings, after)?;
    if segments.is_empty() {
        return Ok(0);
    }
    // Profiles merged away read as absent, so they leave every segment.
    let mut scope = customers.to_vec();
    scope.extend(engine.merged_into(customers)?);
    scope.sort();
    scope.dedup();
    let changes = evaluate_all(engine, &segments, Some(&scope), now)?;
    Ok(changes.iter().map(|(_, _, c)| c.entered + c.exited).sum())
}

/// After an ingest batch committed: update the memberships of the profiles it
/// stored events for. A failure here loses nothing (the events are stored);
/// it is logged, and the next refresh repairs the memberships. `after`: the
/// engine's mark from right after the batch's commit, if it took one (a read
/// of the saved segments from before the commit could miss a segment saved
/// meanwhile).
pub fn after_ingest(
    engine: &dyn Engine,
    settings: &IngestSettings,
    outcomes: &[crate::store::ingest::Outcome],
    after: Option<SegmentsMark>,
) {
    let mut touched: Vec<CustomerId> = outcomes
        .iter()
        .filter_map(|o| match o {
            crate::store::ingest::Outcome::Stored { customer_id, .. } => Some(*customer_id),
            crate::store::ingest::Outcome::Duplicate { .. } => None,
        })
        .collect();
    touched.sort();
    touched.dedup();
    if let Err(error) = update_members(engine, settings, &touched, Utc::now(), after) {
        tracing::warn!(%error, customers = touched.len(), "live segment update failed; the next refresh repairs it");
    }
}

/// Refresh when a saved segment has not been evaluated over everyone today
/// (in the organisation's calendar): windows move at midnight without any
/// event. `relais serve` calls this every hour.
pub fn refresh_if_due(
    engine: &dyn Engine,
    settings: &IngestSettings,
    now: DateTime<Utc>,
) -> Result<Option<RefreshReport>, SegmentsError> {
    let today = settings.day_of(now);
    let due = engine.segments()?.iter().any(|s| s.refreshed_at.is_none_or(|at| settings.day_of(at) < today));
    if due {
        refresh(engine, settings, now).map(Some)
    } else {
        Ok(None)
    }
}

/// What a refresh did.
#[derive(Debug, Clone, Serialize)]
pub struct RefreshReport {
    /// When it ran.
    pub at: DateTime<Utc>,
    /// Buyers scored by RFM.
    pub rfm_scored: usize,
    /// Buyers given a lifetime value.
    pub clv_scored: usize,
    /// Per segment: name, entered, exited, size.
    pub segments: Vec<SegmentChange>,
}

/// One segment's change in a refresh.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentChange {
    /// The segment.
    pub name: String,
    /// People who entered.
    pub entered: usize,
    /// People who left.
    pub exited: usize,
    /// Members now.
    pub size: i64,
}

/// Score every buyer (RFM, and lifetime value when the models can be
/// fitted), store the scores, evaluate every saved segment over every
/// profile, and record each segment's size and mean value for the day.
/// Windows that expired with time, late events and merges all come out
/// right: nothing incremental is trusted.
pub fn refresh(
    engine: &dyn Engine,
    settings: &IngestSettings,
    now: DateTime<Utc>,
) -> Result<RefreshReport, SegmentsError> {
    let scores = score_customers(engine, settings, now)?;
    engine.scores_put(&scores, now)?;
    let segments = compiled(engine, settings, None)?;
    let changes = evaluate_all(engine, &segments, None, now)?;
    let today = settings.day_of(now);
    // Mean values from the scores just computed, not read back.
    let values: std::collections::HashMap<CustomerId, i64> =
        scores.iter().filter_map(|s| s.clv_minor.map(|v| (s.customer, v))).collect();
    for (record, members, change) in &changes {
        let valued: Vec<i64> = members.iter().filter_map(|c| values.get(c).copied()).collect();
        let snapshot = Snapshot {
            day: today,
            members: change.size,
            clv_mean_minor: relais_domain::typology::mean_minor(valued.iter().sum(), valued.len() as i64),
        };
        engine.snapshot_put(record.id, &snapshot, now)?;
    }
    Ok(RefreshReport {
        at: now,
        rfm_scored: scores.len(),
        clv_scored: scores.iter().filter(|s| s.clv_minor.is_some()).count(),
        segments: changes
            .into_iter()
            .map(|(record, _, c)| SegmentChange {
                name: record.name,
                entered: c.entered,
                exited: c.exited,
                size: c.size,
            })
            .collect(),
    })
}

/// RFM scores of every buyer, with the expected value over the next 52 weeks
/// when BG/NBD and Gamma-Gamma can be fitted on the orders (too little data
/// leaves lifetime value out, with a warning, and RFM in).
fn score_customers(
    engine: &dyn Engine,
    settings: &IngestSettings,
    now: DateTime<Utc>,
) -> Result<Vec<CustomerScore>, SegmentsError> {
    let purchases = engine.purchases(&settings.currency)?;
    let scored = crate::clv::database_rfm(&purchases, now)
        .map_err(|e| StoreError::Database(format!("RFM scoring failed: {e}")))?;
    let transactions: Vec<relais_domain::clv::Transaction> = purchases
        .iter()
        .map(|(customer, at, amount)| relais_domain::clv::Transaction {
            customer: customer.to_string(),
            date: settings.day_of(*at),
            amount_cents: *amount,
        })
        .collect();
    let values: std::collections::HashMap<String, i64> =
        match crate::clv::fit(&transactions, settings.day_of(now), 52.0, &settings.currency) {
            Ok((_, forecasts)) => forecasts
                .into_iter()
                .filter(|f| f.expected_value_cents.is_finite())
                .map(|f| (f.customer, f.expected_value_cents.round() as i64))
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "lifetime value left out of the scores: the models could not be fitted");
                Default::default()
            }
        };
    scored
        .into_iter()
        .map(|c| {
            Ok(CustomerScore {
                customer: c
                    .customer
                    .parse()
                    .map_err(|_| StoreError::Database(format!("bad customer id `{}`", c.customer)))?,
                r: c.rfm.r,
                f: c.rfm.f,
                m: c.rfm.m,
                group: c.rfm.group(),
                clv_minor: values.get(&c.customer).copied(),
            })
        })
        .collect()
}

/// The error with its line of source and a caret under the place at fault.
pub fn caret(source: &str, error: &SegmentError) -> String {
    let line = source.lines().nth(error.line - 1).unwrap_or("");
    let width = source[error.start..error.end.min(source.len())].chars().count().max(1);
    format!(
        "{} segment error at line {}, column {}: {}\n  {line}\n  {}{}",
        error.kind.as_str(),
        error.line,
        error.column,
        error.message,
        " ".repeat(error.column - 1),
        "^".repeat(width)
    )
}

/// A saved segment as the API and the command line show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SegmentView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its source in the segment language.
    pub source: String,
    /// What it is for.
    pub description: String,
    /// Members at the last evaluation.
    pub size: i64,
    /// When it was first saved.
    pub created_at: DateTime<Utc>,
    /// When its source last changed.
    pub updated_at: DateTime<Utc>,
    /// When it was last evaluated over every profile.
    pub refreshed_at: Option<DateTime<Utc>>,
}

impl From<&SegmentRecord> for SegmentView {
    fn from(record: &SegmentRecord) -> SegmentView {
        SegmentView {
            id: record.id.to_string(),
            name: record.name.clone(),
            source: record.source.clone(),
            description: record.description.clone(),
            size: record.members,
            created_at: record.created_at,
            updated_at: record.updated_at,
            refreshed_at: record.refreshed_at,
        }
    }
}

/// The formats a segment's members export to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// `customer,entered_at` with a header.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl ExportFormat {
    /// `csv` or `jsonl`.
    pub fn parse(text: &str) -> Result<ExportFormat, SegmentsError> {
        match text {
            "csv" => Ok(ExportFormat::Csv),
            "jsonl" => Ok(ExportFormat::Jsonl),
            other => Err(SegmentsError::Name(format!("`{other}` is not an export format: use csv or jsonl"))),
        }
    }
}

/// Write every member of a segment (customer id, entry time), page by page.
pub fn export(
    engine: &dyn Engine,
    name: &str,
    format: ExportFormat,
    out: &mut dyn std::io::Write,
) -> Result<usize, SegmentsError> {
    let segment = find(engine, name)?;
    let io = |e: std::io::Error| StoreError::Database(format!("cannot write the export: {e}"));
    if format == ExportFormat::Csv {
        writeln!(out, "customer,entered_at").map_err(io)?;
    }
    Ok(for_each_member(engine, segment.id, &mut |customer, entered_at| {
        let entered_at = entered_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        match format {
            ExportFormat::Csv => writeln!(out, "{customer},{entered_at}"),
            ExportFormat::Jsonl => {
                writeln!(out, "{}", serde_json::json!({"customer": customer.to_string(), "entered_at": entered_at}))
            }
        }
        .map_err(io)
    })?)
}

/// Every member of a saved segment, as customer ids.
pub fn member_ids(engine: &dyn Engine, name: &str) -> Result<std::collections::HashSet<String>, SegmentsError> {
    let segment = find(engine, name)?;
    let mut ids = std::collections::HashSet::new();
    for_each_member(engine, segment.id, &mut |customer, _| {
        ids.insert(customer.to_string());
        Ok(())
    })?;
    Ok(ids)
}

/// Visit every member of a segment in id order, a page at a time; returns how many.
fn for_each_member(
    engine: &dyn Engine,
    segment: SegmentId,
    visit: &mut dyn FnMut(CustomerId, DateTime<Utc>) -> Result<(), StoreError>,
) -> Result<usize, StoreError> {
    let mut after = None;
    let mut count = 0;
    loop {
        let page = engine.segment_members(segment, after, 10_000)?;
        let Some(last) = page.last() else { return Ok(count) };
        after = Some(last.0);
        count += page.len();
        for (customer, entered_at) in page {
            visit(customer, entered_at)?;
        }
    }
}

/// How two segments overlap.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Overlap {
    /// One segment.
    pub a: String,
    /// The other.
    pub b: String,
    /// Members of `a`.
    pub a_size: i64,
    /// Members of `b`.
    pub b_size: i64,
    /// Members of both.
    pub both: i64,
    /// Members of both over members of either (Jaccard index), 0 when both are empty.
    pub jaccard: f64,
}

/// How many people two saved segments share.
pub fn overlap(engine: &dyn Engine, a: &str, b: &str) -> Result<Overlap, SegmentsError> {
    let (first, second) = (find(engine, a)?, find(engine, b)?);
    let both = engine.segment_overlap(first.id, second.id)?;
    let either = first.members + second.members - both;
    Ok(Overlap {
        a: first.name,
        b: second.name,
        a_size: first.members,
        b_size: second.members,
        both,
        jaccard: if either > 0 { both as f64 / either as f64 } else { 0.0 },
    })
}
