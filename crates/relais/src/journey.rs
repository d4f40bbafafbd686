//! Journeys at the application's edge: conversion-path files (ChannelAttribution
//! format) and journey files read into the domain's types, the attribution and
//! what-if reports the command line and the API print, and the SVG pictures
//! (a Sankey diagram of a stage model, before/after bars of a what-if). The
//! models themselves are `relais_domain::journey`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use relais_domain::journey::{
    self, heuristic_attribution, markov_attribution, Credit, EstimateOptions, EstimatedModel, JourneyCutter,
    JourneyError, JourneySet, Order, PathSet, StageMap, StageModel, WhatIf,
};
use serde::Serialize;

/// What can go wrong reading a journey or path file.
#[derive(Debug, thiserror::Error)]
pub enum JourneyFileError {
    /// The file cannot be opened or read.
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// The CSV itself is broken (unbalanced quotes, bad UTF-8…).
    #[error("line {line}: {message}")]
    Csv { line: u64, message: String },
    /// A required column is missing from the header.
    #[error("the header has no `{column}` column; expected {expected}")]
    MissingColumn { column: &'static str, expected: &'static str },
    /// A number that does not parse.
    #[error("line {line}: {column} `{text}` is not a number")]
    BadNumber { line: u64, column: &'static str, text: String },
    /// The rows are readable but wrong.
    #[error(transparent)]
    Journey(#[from] JourneyError),
    /// The event log could not be read.
    /// The stage map file is wrong.
    #[error("stage map: {0}")]
    Map(String),
    #[error("cannot read the event log: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// The columns of a path file.
const PATH_COLUMNS: &str = "path, total_conversions and optionally total_conversion_value and total_null";

/// The delimiter of a CSV file, from its header: `;` (ChannelAttribution's sample
/// files) when the header has one and no comma, else `,`.
fn delimiter(header: &[u8]) -> u8 {
    let line = header.split(|&b| b == b'\n').next().unwrap_or_default();
    if line.contains(&b';') && !line.contains(&b',') {
        b';'
    } else {
        b','
    }
}

fn csv_error(error: csv::Error) -> JourneyFileError {
    let line = error.position().map_or(0, |p| p.line());
    JourneyFileError::Csv { line, message: error.to_string() }
}

/// Reads conversion paths from a file.
pub fn read_paths(path: &Path) -> Result<PathSet, JourneyFileError> {
    let bytes =
        std::fs::read(path).map_err(|source| JourneyFileError::Io { path: path.display().to_string(), source })?;
    read_paths_from(&bytes[..])
}

/// Reads conversion paths from CSV text (header `path,total_conversions,…`).
pub fn read_paths_from(bytes: &[u8]) -> Result<PathSet, JourneyFileError> {
    // No csv-level trimming (it costs a pass over every field): names are trimmed
    // by the domain, numbers here.
    let mut reader = csv::ReaderBuilder::new().delimiter(delimiter(bytes)).from_reader(bytes);
    let headers = reader.byte_headers().map_err(csv_error)?.clone();
    let find = |name: &str| headers.iter().position(|h| h.trim_ascii().eq_ignore_ascii_case(name.as_bytes()));
    let path_column = find("path").ok_or(JourneyFileError::MissingColumn { column: "path", expected: PATH_COLUMNS })?;
    let conversions_column = find("total_conversions")
        .ok_or(JourneyFileError::MissingColumn { column: "total_conversions", expected: PATH_COLUMNS })?;
    let value_column = find("total_conversion_value");
    let null_column = find("total_null");
    let mut paths = PathSet::new();
    let mut record = csv::ByteRecord::new();
    while reader.read_byte_record(&mut record).map_err(csv_error)? {
        let line = record.position().map_or(0, |p| p.line());
        let text = |i: usize| -> Result<&str, JourneyFileError> {
            std::str::from_utf8(record.get(i).unwrap_or_default())
                .map_err(|_| JourneyFileError::Csv { line, message: "not UTF-8".into() })
        };
        let number = |column: Option<usize>, name: &'static str| -> Result<f64, JourneyFileError> {
            let Some(i) = column else { return Ok(0.0) };
            let field = text(i)?.trim();
            if field.is_empty() {
                return Ok(0.0);
            }
            field.parse::<f64>().map_err(|_| JourneyFileError::BadNumber { line, column: name, text: field.into() })
        };
        let conversions = number(Some(conversions_column), "total_conversions")?;
        let value = number(value_column, "total_conversion_value")?;
        let nulls = number(null_column, "total_null")?;
        paths.push(line, text(path_column)?, conversions, value, nulls)?;
    }
    Ok(paths)
}

/// Credit of one channel in a report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ChannelCredit {
    /// Conversions credited.
    pub conversions: f64,
    /// Conversion value credited.
    pub value: f64,
}

/// Per channel name.
pub type ByChannel<T> = BTreeMap<String, T>;

/// The four attribution models over one set of paths.
#[derive(Debug, Clone, Serialize)]
pub struct AttributionReport {
    /// First-touch credit per channel.
    pub first_touch: ByChannel<ChannelCredit>,
    /// Last-touch credit per channel.
    pub last_touch: ByChannel<ChannelCredit>,
    /// Linear credit per channel.
    pub linear: ByChannel<ChannelCredit>,
    /// Markov removal-effect credit per channel.
    pub markov: ByChannel<ChannelCredit>,
    /// Removal effect of each channel.
    pub removal_effects: ByChannel<f64>,
    /// Order of the Markov model.
    pub order: usize,
    /// Distinct paths read.
    pub paths: usize,
    /// Conversions over all paths.
    pub total_conversions: f64,
    /// Conversion value over all paths.
    pub total_conversion_value: f64,
    /// Probability that a journey converts (Markov chain).
    pub conversion_probability: f64,
    /// Transient states of the Markov chain.
    pub states: usize,
    /// Things a reader should know (channels seen only on paths without conversion).
    pub notes: Vec<String>,
}

/// All four models on `paths`, the Markov one of order `order`.
pub fn attribute(paths: &PathSet, order: Order) -> Result<AttributionReport, JourneyError> {
    let markov = markov_attribution(paths, order)?;
    let heuristics = heuristic_attribution(paths);
    let by_channel = |credits: &[Credit]| -> ByChannel<ChannelCredit> {
        paths
            .channels()
            .iter()
            .zip(credits)
            .map(|(name, c)| (name.clone(), ChannelCredit { conversions: c.conversions, value: c.value }))
            .collect()
    };
    let notes = paths
        .channels_without_conversion()
        .into_iter()
        .map(|c| format!("channel `{c}` appears only on paths without conversion: the heuristic models give it 0"))
        .collect();
    Ok(AttributionReport {
        first_touch: by_channel(&heuristics.first_touch),
        last_touch: by_channel(&heuristics.last_touch),
        linear: by_channel(&heuristics.linear),
        markov: by_channel(&markov.credit),
        removal_effects: paths.channels().iter().cloned().zip(markov.removal_effects.iter().copied()).collect(),
        order: order.get(),
        paths: paths.len(),
        total_conversions: paths.total_conversions(),
        total_conversion_value: paths.total_value(),
        conversion_probability: markov.conversion_probability,
        states: markov.states,
        notes,
    })
}

/// The report as a readable table: one line per channel, conversions per model.
pub fn attribution_table(report: &AttributionReport) -> String {
    let width = report.markov.keys().map(|k| k.chars().count()).max().unwrap_or(7).max(7);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:width$}  {:>12}  {:>12}  {:>12}  {:>12}  {:>8}",
        "channel",
        "first touch",
        "last touch",
        "linear",
        format!("markov (k={})", report.order),
        "removal"
    );
    for (channel, markov) in &report.markov {
        let _ = writeln!(
            out,
            "{channel:width$}  {:>12.2}  {:>12.2}  {:>12.2}  {:>12.2}  {:>7.1}%",
            report.first_touch[channel].conversions,
            report.last_touch[channel].conversions,
            report.linear[channel].conversions,
            markov.conversions,
            report.removal_effects[channel] * 100.0
        );
    }
    let _ = writeln!(
        out,
        "{} paths, {} conversions, value {:.2}; P(conversion) = {:.4}",
        report.paths, report.total_conversions, report.total_conversion_value, report.conversion_probability
    );
    out
}

/// Shares per stage name, then channel name.
pub type ByStage = BTreeMap<String, ByChannel<f64>>;

/// A what-if's result: baseline and scenario at every stage, change at the last.
#[derive(Debug, Clone, Serialize)]
pub struct WhatIfReport {
    /// Channel shares at every stage without the change.
    pub baseline: ByStage,
    /// Channel shares at every stage with the change.
    pub scenario: ByStage,
    /// Percent change at the last stage; `null` where the baseline is 0.
    pub change_pct: ByChannel<Option<f64>>,
    /// Change of share at the last stage (scenario − baseline).
    pub change: ByChannel<f64>,
    /// The last stage, where the changes are read.
    pub last_stage: String,
    /// What was applied, in words, in order.
    pub applied: Vec<String>,
    /// Stage names in order (the maps above are sorted by name).
    pub stages: Vec<String>,
    /// Channel names in the model's order.
    pub channels: Vec<String>,
}

/// Applies `what_ifs` to `model` and reports.
pub fn what_if(model: &StageModel, what_ifs: &[WhatIf]) -> Result<WhatIfReport, JourneyError> {
    let comparison = journey::compare(model, what_ifs)?;
    let channels = model.channels();
    let by_stage = |shares: &[Vec<f64>]| -> ByStage {
        model
            .stages()
            .iter()
            .zip(shares)
            .map(|(stage, row)| (stage.clone(), channels.iter().cloned().zip(row.iter().copied()).collect()))
            .collect()
    };
    Ok(WhatIfReport {
        baseline: by_stage(&comparison.baseline.shares),
        scenario: by_stage(&comparison.scenario.shares),
        change_pct: channels.iter().cloned().zip(comparison.change_pct.iter().copied()).collect(),
        change: channels.iter().cloned().zip(comparison.change.iter().copied()).collect(),
        last_stage: model.stages().last().cloned().unwrap_or_default(),
        applied: what_ifs.iter().map(|w| format!("into {}: {}", w.into_stage, w.operation.describe())).collect(),
        stages: model.stages().to_vec(),
        channels: channels.to_vec(),
    })
}

/// The what-if as a readable table: shares per stage, before → after, and the
/// change at the last stage.
pub fn what_if_table(report: &WhatIfReport) -> String {
    let width = report.stages.iter().map(|s| s.chars().count()).max().unwrap_or(5).max(9);
    let mut out = String::new();
    for line in &report.applied {
        let _ = writeln!(out, "applied: {line}");
    }
    let _ = write!(out, "{:width$}", "stage");
    for channel in &report.channels {
        let _ = write!(out, "  {channel:>17}");
    }
    out.push('\n');
    for stage in &report.stages {
        let _ = write!(out, "{stage:width$}");
        for channel in &report.channels {
            let cell = format!(
                "{:.2}% → {:.2}%",
                report.baseline[stage][channel] * 100.0,
                report.scenario[stage][channel] * 100.0
            );
            let _ = write!(out, "  {cell:>17}");
        }
        out.push('\n');
    }
    let _ = write!(out, "{:width$}", "change");
    for channel in &report.channels {
        let cell = match report.change_pct[channel] {
            Some(pct) => format!("{pct:+.2}%"),
            None => "n/a (0 before)".to_string(),
        };
        let _ = write!(out, "  {cell:>17}");
    }
    out.push('\n');
    out
}

/// The stages of the founding text, the default order of a journey file's stages.
pub const DEFAULT_STAGES: [&str; 4] = ["information", "evaluation", "decision", "purchase"];

/// The columns of a journey file.
const JOURNEY_COLUMNS: &str = "journey_id, stage, channel and optionally timestamp";

/// Reads a journey file (one event a row: `journey_id,stage,channel[,timestamp]`)
/// and estimates the stage model. Events are ordered by `timestamp` (RFC 3339)
/// when the column is there, else by their line.
pub fn model_from_journeys(
    bytes: &[u8],
    stages: Vec<String>,
    options: EstimateOptions,
) -> Result<EstimatedModel, JourneyFileError> {
    let mut set = JourneySet::new(stages, Vec::new())?;
    let mut reader = csv::ReaderBuilder::new().delimiter(delimiter(bytes)).trim(csv::Trim::All).from_reader(bytes);
    let headers = reader.headers().map_err(csv_error)?.clone();
    let find = |names: &[&str]| headers.iter().position(|h| names.iter().any(|n| h.eq_ignore_ascii_case(n)));
    let journey_column = find(&["journey_id", "journey"])
        .ok_or(JourneyFileError::MissingColumn { column: "journey_id", expected: JOURNEY_COLUMNS })?;
    let stage_column =
        find(&["stage"]).ok_or(JourneyFileError::MissingColumn { column: "stage", expected: JOURNEY_COLUMNS })?;
    let channel_column =
        find(&["channel"]).ok_or(JourneyFileError::MissingColumn { column: "channel", expected: JOURNEY_COLUMNS })?;
    let time_column = find(&["timestamp", "ts", "time"]);
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).map_err(csv_error)? {
        let line = record.position().map_or(0, |p| p.line());
        let order = match time_column {
            Some(i) => {
                let text = record.get(i).unwrap_or_default();
                let at = chrono::DateTime::parse_from_rfc3339(text).map_err(|_| JourneyFileError::BadNumber {
                    line,
                    column: "timestamp",
                    text: text.into(),
                })?;
                // Shifted so that instants before 1970 still order correctly as u64.
                (at.timestamp_micros() as i128 - i64::MIN as i128) as u64
            }
            None => line,
        };
        let field = |i: usize| record.get(i).unwrap_or_default();
        set.push(line, field(journey_column), field(stage_column), field(channel_column), order)?;
    }
    Ok(set.estimate(options)?)
}

/// Estimates the stage model from the stored event log between `from` and `to`:
/// events mapped to stages by the default [`StageMap`], cut into journeys at a
/// purchase or after `gap_days` without events (`relais_domain::journey::events`).
///
/// With `members`, only those customers' journeys count (a segment's members);
/// `map` replaces the default stage map (`read_stage_map`).
#[allow(clippy::too_many_arguments)]
pub fn model_from_store(
    engine: &dyn crate::store::Engine,
    map: StageMap,
    from: Option<chrono::DateTime<chrono::Utc>>,
    to: Option<chrono::DateTime<chrono::Utc>>,
    stages: Vec<String>,
    gap_days: u32,
    options: EstimateOptions,
    members: Option<&std::collections::HashSet<String>>,
) -> Result<(EstimatedModel, u64), JourneyFileError> {
    let gap_micros = i64::from(gap_days) * 86_400_000_000;
    let mut cutter = JourneyCutter::new(map, stages, "purchase", gap_micros)?;
    // The events that stand for a stage, 24 bytes each: customers and channels
    // numbered, so sorting ten million of them by person and time takes about
    // a second (a database sort of the rows took longer than everything else).
    let mut customers: HashMap<String, u32> = HashMap::new();
    let mut channels: Vec<String> = Vec::new();
    let mut staged: Vec<StagedEvent> = Vec::new();
    let read = engine.journey_events(from, to, &mut |event| {
        if members.is_some_and(|members| !members.contains(event.customer)) {
            return true;
        }
        let Some(position) = cutter.stage_position(event.kind, event.name) else { return true };
        let next = customers.len() as u32;
        let customer = match customers.get(event.customer) {
            Some(&n) => n,
            None => *customers.entry(event.customer.to_string()).or_insert(next),
        };
        let channel = match channels.iter().position(|c| c == event.channel) {
            Some(i) => i,
            None => {
                channels.push(event.channel.to_string());
                channels.len() - 1
            }
        };
        staged.push(StagedEvent {
            customer,
            at_micros: event.at_micros,
            position: position as u16,
            channel: channel as u16,
        });
        true
    })?;
    // Stable: a person's events with the same instant keep the order they were stored in.
    staged.sort_by_key(|e| (e.customer, e.at_micros));
    for event in &staged {
        cutter.push_staged(
            u64::from(event.customer),
            event.at_micros,
            usize::from(event.position),
            &channels[usize::from(event.channel)],
        )?;
    }
    Ok((cutter.finish().estimate(options)?, read))
}

/// One event placed at its stage, its person and channel numbered.
struct StagedEvent {
    customer: u32,
    at_micros: i64,
    position: u16,
    channel: u16,
}

/// A stage map file (TOML): which stage `page` and `screen` events stand for
/// (leave one out to ignore those events), and the track events of each stage.
///
/// ```toml
/// page = "information"
/// screen = "information"
/// [stages]
/// information = ["Products Searched", "Product Viewed"]
/// evaluation = ["Product Added", "Store Visited"]
/// purchase = ["Order Completed"]
/// ```
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StageMapFile {
    page: Option<String>,
    screen: Option<String>,
    stages: std::collections::BTreeMap<String, Vec<String>>,
}

/// Read a stage map from TOML text; an event listed under two stages, or a
/// stage outside `stages`, is refused.
pub fn read_stage_map(text: &str, stages: &[String]) -> Result<StageMap, JourneyFileError> {
    let file: StageMapFile = toml::from_str(text).map_err(|e| JourneyFileError::Map(e.to_string()))?;
    let known = |stage: &str| -> Result<(), JourneyFileError> {
        if stages.iter().any(|s| s == stage) {
            Ok(())
        } else {
            Err(JourneyFileError::Map(format!(
                "stage `{stage}` is not one of the model's stages ({})",
                stages.join(", ")
            )))
        }
    };
    for stage in file.page.iter().chain(&file.screen).chain(file.stages.keys()) {
        known(stage)?;
    }
    let mut tracks = std::collections::HashMap::new();
    for (stage, events) in &file.stages {
        for event in events {
            if let Some(other) = tracks.insert(event.clone(), stage.clone()) {
                return Err(JourneyFileError::Map(format!("event `{event}` is listed under `{other}` and `{stage}`")));
            }
        }
    }
    Ok(StageMap { page: file.page, screen: file.screen, tracks })
}

/// Colours of channels, in the model's order (a palette readable by most
/// colour-blind readers, after Okabe and Ito).
const PALETTE: [&str; 8] = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999"];

/// Text escaped for XML.
fn xml(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The words of a Sankey diagram, in the reader's language: `title` with
/// `{n}` (stages), `flow` with `{from}`, `{to}` and `{pct}`.
#[derive(Debug, Clone)]
pub struct SankeyWords {
    /// The diagram's title.
    pub title: String,
    /// The tooltip of a band between two stages.
    pub flow: String,
}

impl Default for SankeyWords {
    fn default() -> Self {
        SankeyWords { title: "Journey across {n} stages".into(), flow: "{from} → {to}: {pct}% of customers".into() }
    }
}

/// The journey as a Sankey diagram: one column per stage, one bar per channel
/// (height = share of customers), bands between stages (width = people moving).
pub fn sankey_svg(model: &StageModel, words: &SankeyWords) -> String {
    let (width, height, margin, bar, gap) = (960.0, 520.0, 60.0, 16.0, 10.0);
    let shares = model.propagate().shares;
    let stages = model.stages();
    let channels = model.channels();
    let n = channels.len() as f64;
    let usable = height - 2.0 * margin - gap * (n - 1.0);
    let column_x = |t: usize| margin + t as f64 * (width - 2.0 * margin - 140.0) / (stages.len() - 1) as f64;
    // Top of each channel's bar at each stage.
    let tops: Vec<Vec<f64>> = shares
        .iter()
        .map(|row| {
            let mut y = margin;
            row.iter()
                .map(|share| {
                    let top = y;
                    y += share * usable + gap;
                    top
                })
                .collect()
        })
        .collect();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(svg, r#"<title>{}</title>"#, xml(&words.title.replace("{n}", &stages.len().to_string())));
    for t in 0..stages.len() - 1 {
        let matrix = model.transition(t);
        let (x0, x1) = (column_x(t) + bar, column_x(t + 1));
        let middle = (x0 + x1) / 2.0;
        let mut out_offset = vec![0.0; channels.len()];
        let mut in_offset = vec![0.0; channels.len()];
        for (i, row) in matrix.iter().enumerate() {
            for (j, p) in row.iter().enumerate() {
                let flow = shares[t][i] * p * usable;
                if flow < 0.05 {
                    continue;
                }
                let y0 = tops[t][i] + out_offset[i];
                let y1 = tops[t + 1][j] + in_offset[j];
                out_offset[i] += flow;
                in_offset[j] += flow;
                let _ = write!(
                    svg,
                    r#"<path d="M{x0:.1},{y0:.1} C{middle:.1},{y0:.1} {middle:.1},{y1:.1} {x1:.1},{y1:.1} L{x1:.1},{b1:.1} C{middle:.1},{b1:.1} {middle:.1},{b0:.1} {x0:.1},{b0:.1} Z" fill="{colour}" fill-opacity="0.35"><title>{tip}</title></path>"#,
                    b0 = y0 + flow,
                    b1 = y1 + flow,
                    colour = PALETTE[i % PALETTE.len()],
                    tip = xml(&words
                        .flow
                        .replace("{from}", &channels[i])
                        .replace("{to}", &channels[j])
                        .replace("{pct}", &format!("{:.1}", shares[t][i] * p * 100.0))),
                );
            }
        }
    }
    for (t, stage) in stages.iter().enumerate() {
        let x = column_x(t);
        let _ = write!(svg, r#"<text x="{x:.1}" y="{:.1}" font-weight="bold">{}</text>"#, margin - 20.0, xml(stage));
        for (j, share) in shares[t].iter().enumerate() {
            let h = share * usable;
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{bar}" height="{h:.1}" fill="{}"><title>{}: {:.1}%</title></rect>"#,
                tops[t][j],
                PALETTE[j % PALETTE.len()],
                xml(&channels[j]),
                share * 100.0
            );
            if h >= 9.0 {
                let _ = write!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" dominant-baseline="middle">{} {:.1}%</text>"#,
                    x + bar + 4.0,
                    tops[t][j] + h / 2.0,
                    xml(&channels[j]),
                    share * 100.0
                );
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

/// A what-if as before/after bars at the last stage, with the operators applied.
pub fn what_if_bars_svg(report: &WhatIfReport) -> String {
    let (width, height, margin, bottom) = (760.0, 420.0, 50.0, 110.0);
    let n = report.channels.len() as f64;
    let group = (width - 2.0 * margin) / n;
    let bar = (group * 0.35).min(40.0);
    let baseline = &report.baseline[&report.last_stage];
    let scenario = &report.scenario[&report.last_stage];
    let top = baseline.values().chain(scenario.values()).fold(0.0f64, |a, &b| a.max(b)).max(1e-9);
    let scale = (height - margin - bottom) / top;
    let floor = height - bottom;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r#"<title>What-if at stage {}</title><text x="{margin}" y="24" font-weight="bold">Share of customers at {} — before (grey) and after</text>"#,
        xml(&report.last_stage),
        xml(&report.last_stage)
    );
    let _ = write!(svg, r##"<line x1="{margin}" y1="{floor}" x2="{}" y2="{floor}" stroke="#333"/>"##, width - margin);
    for (k, channel) in report.channels.iter().enumerate() {
        let x = margin + k as f64 * group + group / 2.0 - bar;
        let (before, after) = (baseline[channel], scenario[channel]);
        let change = match report.change_pct[channel] {
            Some(pct) => format!("{pct:+.1}%"),
            None => "n/a".to_string(),
        };
        let _ = write!(
            svg,
            r##"<rect x="{x:.1}" y="{:.1}" width="{bar:.1}" height="{:.1}" fill="#999"><title>{name} before: {:.1}%</title></rect>"##,
            floor - before * scale,
            before * scale,
            before * 100.0,
            name = xml(channel)
        );
        let _ = write!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="{bar:.1}" height="{:.1}" fill="{}"><title>{name} after: {:.1}% ({change})</title></rect>"#,
            x + bar,
            floor - after * scale,
            after * scale,
            PALETTE[k % PALETTE.len()],
            after * 100.0,
            name = xml(channel)
        );
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" text-anchor="middle">{change}</text>"#,
            x + bar,
            floor + 16.0,
            xml(channel),
            x + bar,
            floor + 32.0
        );
    }
    for (k, line) in report.applied.iter().enumerate() {
        let _ = write!(svg, r#"<text x="{margin}" y="{:.1}">{}</text>"#, floor + 58.0 + 16.0 * k as f64, xml(line));
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_file_with_semicolons_and_missing_optional_columns_reads() {
        let paths = read_paths_from(b"path;total_conversions\na > b;2\nb;1\n").unwrap();
        assert_eq!(paths.channels(), ["a", "b"]);
        assert_eq!(paths.total_conversions(), 3.0);
        let error = read_paths_from(b"route,total_conversions\na,1\n").unwrap_err();
        assert!(error.to_string().contains("no `path` column"), "{error}");
        let error = read_paths_from(b"path,total_conversions\na > b,two\n").unwrap_err();
        assert!(error.to_string().contains("line 2: total_conversions `two`"), "{error}");
    }
}

#[cfg(test)]
mod stage_map_tests {
    use super::*;

    #[test]
    fn a_stage_map_file_replaces_the_defaults_and_refuses_contradictions() {
        let stages: Vec<String> = ["information", "purchase"].map(String::from).to_vec();
        let map = read_stage_map(
            "page = \"information\"\n[stages]\npurchase = [\"Order Completed\", \"Ticket Paid\"]",
            &stages,
        )
        .unwrap();
        assert_eq!(map.stage_of("track", Some("Ticket Paid")), Some("purchase"));
        assert_eq!(map.stage_of("screen", None), None);
        assert_eq!(map.stage_of("track", Some("Product Viewed")), None);
        let twice = read_stage_map("[stages]\ninformation = [\"X\"]\npurchase = [\"X\"]", &stages).unwrap_err();
        assert!(twice.to_string().contains("listed under `information` and `purchase`"), "{twice}");
        let unknown = read_stage_map("[stages]\nsharing = [\"Review Submitted\"]", &stages).unwrap_err();
        assert!(unknown.to_string().contains("not one of the model's stages"), "{unknown}");
    }
}
