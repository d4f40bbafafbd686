//! `relais bench segments`: RFM scores from one Parquet file of synthetic events,
//! computed by relais and by DuckDB on the same file in the same run, checked
//! identical, then timed in alternating runs.
//!
//! The generator is seeded and deterministic: the same `--events`,
//! `--customers` and `--seed` always write the same rows.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arrow_array::builder::{Int64Builder, StringBuilder};
use arrow_array::{RecordBatch, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use relais_domain::CustomerId;
use serde_json::json;

use crate::analytics::{self, ParquetRfm, PURCHASE_EVENT};

/// The reference instant of the synthetic events (2025-01-01T00:00:00Z, in
/// microseconds): every event is before it, over the two years that end there.
pub const SYNTHETIC_NOW_MICROS: i64 = 1_735_689_600_000_000;
const SPAN_SECONDS: i64 = 2 * 365 * 86_400;
/// Rows per row group: DuckDB's own default, so both readers get the same
/// units of parallel work.
const ROW_GROUP_ROWS: usize = 122_880;
const BATCH_ROWS: usize = 65_536;

/// Event names with their share in thousandths; purchases are 8% of events.
const EVENT_MIX: [(&str, u32); 5] =
    [(PURCHASE_EVENT, 80), ("Page Viewed", 550), ("Product Viewed", 220), ("Product Added", 100), ("Email Opened", 50)];

/// Options of `relais bench segments`.
#[derive(Debug, clap::Args)]
pub struct SegmentsArgs {
    /// Parquet file of events: used as it is when it exists, otherwise generated
    /// there and kept. Without it, the file is generated in a temporary folder
    /// and removed at the end.
    #[arg(long)]
    parquet: Option<PathBuf>,
    /// Events to generate.
    #[arg(long, default_value_t = 10_000_000)]
    events: usize,
    /// Customers the events belong to.
    #[arg(long, default_value_t = 500_000)]
    customers: usize,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Alternating runs of relais and DuckDB (the figures are medians).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Reader threads of relais (default: the machine's cores; DuckDB uses as many).
    #[arg(long)]
    threads: Option<usize>,
    /// Profiles of the segment evaluation.
    #[arg(long, default_value_t = 1_000_000)]
    profiles: usize,
    /// Folder of the peer tools, where `install.sh` made `.venv`.
    #[arg(long, default_value = "bench/peers")]
    peers: PathBuf,
}

/// Write `events` synthetic events of `customers` customers to a Parquet file:
/// columns `event_type`, `customer_id` (`cus_…` ids), `timestamp` (UTC,
/// microseconds, whole seconds, in time order like an export) and `amount_minor`
/// (cents, purchases only). Customers' activity is skewed, so some buy often, many
/// rarely and some never.
pub fn write_synthetic_events(path: &Path, events: usize, customers: usize, seed: u64) -> anyhow::Result<()> {
    anyhow::ensure!(customers >= 1, "--customers must be at least 1");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let start_seconds = SYNTHETIC_NOW_MICROS / 1_000_000 - SPAN_SECONDS;
    let ids: Vec<String> = (0..customers)
        .map(|_| {
            // Signed up at some point in the five years before the window ends.
            let signup_ms = (start_seconds + SPAN_SECONDS) as u64 * 1000 - rng.gen_range(0..5 * 365 * 86_400_000u64);
            CustomerId::from_parts(signup_ms, rng.gen::<u128>()).to_string()
        })
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new(analytics::EVENT_TYPE_COLUMN, DataType::Utf8, false),
        Field::new(analytics::CUSTOMER_ID_COLUMN, DataType::Utf8, false),
        Field::new(analytics::TIMESTAMP_COLUMN, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new(analytics::AMOUNT_COLUMN, DataType::Int64, true),
    ]));
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(properties))?;
    let mut row = 0usize;
    while row < events {
        let rows = BATCH_ROWS.min(events - row);
        let mut names = StringBuilder::with_capacity(rows, rows * 12);
        let mut buyers = StringBuilder::with_capacity(rows, rows * 30);
        let mut instants = Vec::with_capacity(rows);
        let mut amounts = Int64Builder::with_capacity(rows);
        for i in row..row + rows {
            // Customer k is drawn with density falling as 1/sqrt(k): a few very
            // active customers, a long tail of occasional ones.
            let u: f64 = rng.gen();
            let customer = ((customers as f64 * u * u) as usize).min(customers - 1);
            let mut pick = rng.gen_range(0..1000u32);
            let name = EVENT_MIX
                .iter()
                .find(|(_, share)| {
                    let hit = pick < *share;
                    pick = pick.saturating_sub(*share);
                    hit
                })
                .map_or(EVENT_MIX[1].0, |(name, _)| name);
            names.append_value(name);
            buyers.append_value(&ids[customer]);
            let seconds = start_seconds + (i as i128 * i128::from(SPAN_SECONDS) / events as i128) as i64;
            instants.push(seconds * 1_000_000);
            if name == PURCHASE_EVENT {
                let basket = rng.gen_range(500..4_000i64);
                let big = if rng.gen_bool(0.1) { rng.gen_range(0..50_000i64) } else { 0 };
                amounts.append_value(basket + big);
            } else {
                amounts.append_null();
            }
        }
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(names.finish()),
                Arc::new(buyers.finish()),
                Arc::new(TimestampMicrosecondArray::from(instants).with_timezone("UTC")),
                Arc::new(amounts.finish()),
            ],
        )?;
        writer.write(&batch)?;
        row += rows;
    }
    writer.close()?;
    Ok(())
}

/// One customer's line of the scores file: id, recency, frequency, monetary, R, F, M.
type ScoreLine = (String, i64, u64, i64, u8, u8, u8);

/// relais's scores as lines sorted by customer id.
fn score_lines(rfm: &ParquetRfm) -> Vec<ScoreLine> {
    let mut lines: Vec<ScoreLine> = rfm
        .totals
        .customers
        .iter()
        .zip(&rfm.scores)
        .map(|(customer, s)| (customer.to_string(), s.recency_seconds, s.frequency, s.monetary, s.r, s.f, s.m))
        .collect();
    lines.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    lines
}

/// DuckDB's scores file, already sorted by customer id.
fn read_score_file(path: &Path) -> anyhow::Result<Vec<ScoreLine>> {
    let mut reader = csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = Vec::new();
    for record in reader.deserialize() {
        lines.push(record.with_context(|| format!("bad line in {}", path.display()))?);
    }
    Ok(lines)
}

/// Run DuckDB's RFM once; the seconds it measured around its query, and its version.
fn run_duckdb(
    python: &Path,
    script: &Path,
    parquet: &Path,
    threads: usize,
    out: Option<&Path>,
) -> anyhow::Result<(f64, String)> {
    let mut command = Command::new(python);
    command
        .arg(script)
        .arg(parquet)
        .arg("--now-micros")
        .arg(SYNTHETIC_NOW_MICROS.to_string())
        .arg("--threads")
        .arg(threads.to_string());
    if let Some(out) = out {
        command.arg("--out").arg(out);
    }
    let output = command.output().with_context(|| format!("cannot run {}", python.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "{} failed ({}): {}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let answer: serde_json::Value =
        serde_json::from_str(last).with_context(|| format!("{} printed no JSON: {stdout}", script.display()))?;
    let seconds = answer["seconds"].as_f64().context("DuckDB's answer has no `seconds`")?;
    Ok((seconds, answer["duckdb"].as_str().unwrap_or("unknown").to_owned()))
}

/// The median of `values` (the mean of the middle two for an even count).
pub(super) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// relais's RFM of the file, the same steps as `analytics::rfm_from_parquet`,
/// with the seconds spent reading and folding (scoring is the rest).
fn relais_rfm(parquet: &Path, threads: usize) -> anyhow::Result<(ParquetRfm, f64)> {
    let started = Instant::now();
    let (totals, events) = analytics::read_purchase_totals(parquet, PURCHASE_EVENT, threads)?;
    let read_seconds = started.elapsed().as_secs_f64();
    let scores = relais_domain::rfm::score(&totals.customers, &totals.totals, SYNTHETIC_NOW_MICROS)?;
    Ok((ParquetRfm { totals, scores, events }, read_seconds))
}

/// The result of `f` and the seconds it took.
fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, f64)> {
    let started = Instant::now();
    let value = f()?;
    Ok((value, started.elapsed().as_secs_f64()))
}

/// The segment of the evaluation benchmark: three conditions over a number,
/// a channel and a profile attribute.
pub const SEGMENT: &str = r#"orders_90d >= 2 and last_channel = "store" and city in ("Lyon", "Nantes")"#;

const CITIES: [&str; 12] = [
    "Paris",
    "Lyon",
    "Marseille",
    "Nantes",
    "Lille",
    "Bordeaux",
    "Toulouse",
    "Rennes",
    "Nice",
    "Strasbourg",
    "Dijon",
    "Brest",
];

struct SegmentTimes {
    members: usize,
    ours_ms: f64,
    duckdb_ms: f64,
}

/// Seeded facts of `profiles` people: orders in 90 days (skewed, 0 to 12),
/// last channel, city (5% unknown).
fn synthetic_facts(profiles: usize, seed: u64) -> Vec<(i64, &'static str, Option<&'static str>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5e9);
    (0..profiles)
        .map(|_| {
            let orders = (rng.gen::<f64>().powi(3) * 13.0) as i64;
            let channel = relais_domain::Channel::ALL[rng.gen_range(0..relais_domain::Channel::ALL.len())].as_str();
            let city = (rng.gen::<f64>() >= 0.05).then(|| CITIES[rng.gen_range(0..CITIES.len())]);
            (orders, channel, city)
        })
        .collect()
}

/// Evaluate `SEGMENT` over `--profiles` profiles held in memory, checked
/// against a row-by-row evaluation and against DuckDB on the same facts, then
/// timed (medians of eleven) against DuckDB's query over an in-memory table.
fn segment_eval(args: &SegmentsArgs, python: &Path, threads: usize, scratch: &Path) -> anyhow::Result<SegmentTimes> {
    use relais_domain::segment::{CheckContext, Column, Fact, FactTable, Segment, TraitColumn};
    let classification = relais_domain::privacy::Classification::default();
    let context =
        CheckContext { role: relais_domain::Role::Admin, classification: &classification, currency_exponent: 2 };
    let segment = Segment::compile(SEGMENT, &context)?;
    let facts = synthetic_facts(args.profiles, args.seed);
    let mut table = FactTable::new(segment.columns());
    table.reserve(facts.len());
    for (orders, channel, city) in &facts {
        let row: Vec<Fact<'_>> = segment
            .columns()
            .iter()
            .map(|column| match column {
                Column::Trait(TraitColumn::Orders90d) => Fact::Int(*orders),
                Column::Trait(TraitColumn::LastChannel) => Fact::Text(channel),
                Column::Profile(_) => city.map_or(Fact::Missing, Fact::Text),
                other => unreachable!("the benchmark's segment reads no {other:?}"),
            })
            .collect();
        table.push(&row);
    }
    let members: Vec<usize> = segment.evaluate(&table).rows().collect();
    let expected: Vec<usize> = facts
        .iter()
        .enumerate()
        .filter(|(_, (orders, channel, city))| {
            *orders >= 2 && *channel == "store" && matches!(city, Some("Lyon") | Some("Nantes"))
        })
        .map(|(row, _)| row)
        .collect();
    anyhow::ensure!(members == expected, "the segment found {} members, row by row {}", members.len(), expected.len());

    let parquet = scratch.join("facts.parquet");
    write_facts(&parquet, &facts)?;
    let output = Command::new(python)
        .arg(args.peers.join("segment_duckdb.py"))
        .arg(&parquet)
        .arg("--threads")
        .arg(threads.to_string())
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    anyhow::ensure!(output.status.success(), "segment_duckdb.py failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answer: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .with_context(|| format!("segment_duckdb.py printed no JSON: {stdout}"))?;
    let row_sum: u64 = members.iter().map(|r| *r as u64).sum();
    anyhow::ensure!(
        answer["members"].as_u64() == Some(members.len() as u64) && answer["row_id_sum"].as_u64() == Some(row_sum),
        "DuckDB found other members: {answer} against {} (row id sum {row_sum})",
        members.len()
    );
    let mut times = Vec::with_capacity(11);
    for _ in 0..11 {
        let started = Instant::now();
        let found = segment.evaluate(&table).count();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(found == members.len(), "an evaluation found {found} members");
    }
    let ours_ms = median(&times);
    let duckdb_ms = answer["seconds"].as_f64().context("no seconds from DuckDB")? * 1000.0;
    eprintln!(
        "segment over {} profiles: {} members, relais {ours_ms:.2} ms, DuckDB {duckdb_ms:.2} ms (medians of 11, identical members)",
        args.profiles,
        members.len()
    );
    Ok(SegmentTimes { members: members.len(), ours_ms, duckdb_ms })
}

fn write_facts(path: &Path, facts: &[(i64, &str, Option<&str>)]) -> anyhow::Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("row_id", DataType::Int64, false),
        Field::new("orders_90d", DataType::Int64, false),
        Field::new("last_channel", DataType::Utf8, false),
        Field::new("city", DataType::Utf8, true),
    ]));
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path)?, schema.clone(), None)?;
    for (start, chunk) in (0..).step_by(BATCH_ROWS).zip(facts.chunks(BATCH_ROWS)) {
        let (mut ids, mut orders) = (Int64Builder::new(), Int64Builder::new());
        let (mut channels, mut cities) = (StringBuilder::new(), StringBuilder::new());
        for (i, (o, channel, city)) in chunk.iter().enumerate() {
            ids.append_value((start + i) as i64);
            orders.append_value(*o);
            channels.append_value(channel);
            cities.append_option(*city);
        }
        let columns: Vec<arrow_array::ArrayRef> = vec![
            Arc::new(ids.finish()),
            Arc::new(orders.finish()),
            Arc::new(channels.finish()),
            Arc::new(cities.finish()),
        ];
        writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
    }
    writer.close()?;
    Ok(())
}

/// Run `relais bench segments`.
pub fn bench_segments(args: SegmentsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    let python = args.peers.join(".venv/bin/python");
    let script = args.peers.join("rfm_duckdb.py");
    anyhow::ensure!(
        python.exists() && script.exists(),
        "DuckDB is not installed in {}: run `bash bench/peers/install.sh` from the repository root, or give --peers",
        args.peers.display()
    );
    let threads =
        args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get));
    let scratch = std::env::temp_dir().join(format!("relais-bench-segments-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let result = run_segments(&args, &python, &script, threads, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn run_segments(
    args: &SegmentsArgs,
    python: &Path,
    script: &Path,
    threads: usize,
    scratch: &Path,
) -> anyhow::Result<()> {
    let parquet = args.parquet.clone().unwrap_or_else(|| scratch.join("events.parquet"));
    let mut generate_seconds = None;
    if !parquet.exists() {
        let started = Instant::now();
        write_synthetic_events(&parquet, args.events, args.customers, args.seed)?;
        generate_seconds = Some(started.elapsed().as_secs_f64());
        eprintln!(
            "wrote {} events of {} customers (seed {}) to {} in {:.1}s",
            args.events,
            args.customers,
            args.seed,
            parquet.display(),
            started.elapsed().as_secs_f64()
        );
    }
    let file_mb = std::fs::metadata(&parquet)?.len() as f64 / 1e6;

    // 1. Check, untimed: both compute the scores once (which also brings the
    // file into the page cache for both), and they must be identical.
    let duckdb_scores = scratch.join("duckdb_scores.csv");
    let (checked, _) = relais_rfm(&parquet, threads)?;
    let (_, duckdb_version) = run_duckdb(python, script, &parquet, threads, Some(&duckdb_scores))?;
    let ours = score_lines(&checked);
    let theirs = read_score_file(&duckdb_scores)?;
    let differing: Vec<_> = ours.iter().zip(&theirs).filter(|(a, b)| a != b).take(3).collect();
    anyhow::ensure!(
        ours.len() == theirs.len() && differing.is_empty(),
        "relais and DuckDB disagree: {} against {} customers; first differences (relais, DuckDB): {differing:?}",
        ours.len(),
        theirs.len()
    );
    eprintln!("relais and DuckDB give identical scores for {} customers", ours.len());

    // 2. Timed runs, alternating which goes first so neither always finds the
    // machine in the state the other left it in.
    let mut rfm_times = Vec::with_capacity(args.runs);
    let mut read_times = Vec::with_capacity(args.runs);
    let mut duckdb_times = Vec::with_capacity(args.runs);
    let mut ratios = Vec::with_capacity(args.runs);
    for run in 0..args.runs {
        let (rfm, read_seconds, rfm_seconds, duckdb_seconds) = if run % 2 == 0 {
            let ((rfm, read_seconds), rfm_seconds) = timed(|| relais_rfm(&parquet, threads))?;
            let (duckdb_seconds, _) = run_duckdb(python, script, &parquet, threads, None)?;
            (rfm, read_seconds, rfm_seconds, duckdb_seconds)
        } else {
            let (duckdb_seconds, _) = run_duckdb(python, script, &parquet, threads, None)?;
            let ((rfm, read_seconds), rfm_seconds) = timed(|| relais_rfm(&parquet, threads))?;
            (rfm, read_seconds, rfm_seconds, duckdb_seconds)
        };
        anyhow::ensure!(score_lines(&rfm) == ours, "run {} of relais gave other scores than the checked ones", run + 1);
        eprintln!(
            "run {}: relais {rfm_seconds:.3}s (read and fold {read_seconds:.3}s, score {:.3}s), DuckDB {duckdb_seconds:.3}s, ratio {:.2}",
            run + 1,
            rfm_seconds - read_seconds,
            rfm_seconds / duckdb_seconds
        );
        read_times.push(read_seconds);
        rfm_times.push(rfm_seconds);
        duckdb_times.push(duckdb_seconds);
        ratios.push(rfm_seconds / duckdb_seconds);
    }
    let segment = segment_eval(args, python, threads, scratch)?;
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    println!(
        "{}",
        json!({
            "segment": SEGMENT,
            "segment_profiles": args.profiles,
            "segment_members": segment.members,
            "segment_ms": round3(segment.ours_ms),
            "segment_duckdb_ms": round3(segment.duckdb_ms),
            "segment_ratio": round3(segment.ours_ms / segment.duckdb_ms),
            "events": checked.events,
            // The population is known only when this run generated the file.
            "customers": generate_seconds.map(|_| args.customers),
            "customers_scored": ours.len(),
            "seed": args.seed,
            "file_mb": (file_mb * 10.0).round() / 10.0,
            "generate_seconds": generate_seconds.map(|s| (s * 10.0).round() / 10.0),
            "threads": threads,
            "runs": args.runs,
            "rfm_seconds": round3(median(&rfm_times)),
            "rfm_read_seconds": round3(median(&read_times)),
            "duckdb_seconds": round3(median(&duckdb_times)),
            "ratio": round3(median(&ratios)),
            "duckdb_version": duckdb_version,
            "identical": true,
        })
    );
    Ok(())
}
