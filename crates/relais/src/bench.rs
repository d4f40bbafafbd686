//! `relais bench …`: whole-system benchmarks, each printing one JSON object on its
//! last line. `ingest` starts the real server on a fresh database, sends Segment
//! batches over HTTP from concurrent clients, then measures the engine's best case
//! on the same rows (already parsed, same tables and indexes, one thread, large
//! transactions); `loyalty` (in `bench/loyalty.rs`) drives loyalty transactions
//! against pgbench; `segments` (in `bench/segments.rs`) compares RFM scores from
//! a Parquet file with DuckDB's; `pages` (in `bench/pages.rs`) times the
//! customer room and the customer 360 against the API's answers.

use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::Utc;
use clap::Subcommand;
use relais_domain::message::Envelope;
use relais_domain::TrackingMessage;
use serde_json::json;

use crate::config::Settings;
use crate::http::AppState;
use crate::store::scratch::Scratch;
use crate::store::Store;

mod journeys;
mod loyalty;
mod pages;
mod segments;

pub use segments::{write_synthetic_events, SegmentsArgs, SYNTHETIC_NOW_MICROS};

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Loyalty transactions (earn and redeem) through the HTTP API; against
    /// pgbench's TPC-B-like transaction on the same PostgreSQL server.
    Loyalty {
        /// Concurrent clients (and pgbench's scale factor).
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Members (each client works on its own share).
        #[arg(long, default_value_t = 2_000)]
        members: usize,
        /// Seconds per run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Runs (alternating with pgbench on PostgreSQL); medians are reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// PostgreSQL URL (a throwaway schema, pgbench tables beside it); without it, SQLite.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Ingest throughput over HTTP against the engine's raw insert speed.
    Ingest {
        /// Events to send.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Distinct people the events belong to (default: events / 20).
        #[arg(long)]
        people: Option<usize>,
        /// Messages per batch request.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Concurrent HTTP clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// PostgreSQL URL; the benchmark works in a throwaway schema and drops it.
        /// Without it, a throwaway SQLite folder is used.
        #[arg(long)]
        database_url: Option<String>,
        /// Encryption at rest of personal fields: `on` (the default configuration)
        /// or `off` (every data class stored in clear), to measure its cost.
        #[arg(long, default_value = "on", value_parser = ["on", "off"])]
        encryption: String,
    },
    /// Time to build the access export of one person with many events.
    Export {
        /// Events of the person.
        #[arg(long, default_value_t = 10_000)]
        events: usize,
        /// PostgreSQL URL (a throwaway schema); without it, a throwaway SQLite folder.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Erasure time of one person on a database of many profiles.
    Erase {
        /// Profiles in the database (each with an identify and an order).
        #[arg(long, default_value_t = 1_000_000)]
        profiles: usize,
        /// People erased (timed one by one).
        #[arg(long, default_value_t = 20)]
        erasures: usize,
        /// PostgreSQL URL (a throwaway schema); without it, a throwaway SQLite folder.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// RFM scores of a Parquet file of events (10 M events of 500,000 customers by
    /// default), computed by relais and by DuckDB, checked identical and timed.
    Segments(SegmentsArgs),
    /// Markov attribution (orders 1 and 3) on path files of 1 M and 5 M journeys,
    /// relais against ChannelAttribution's defaults, from file to result.
    Journeys(journeys::JourneysArgs),
    /// The customer room and the customer 360 rendered over the demo data
    /// (p95 over 200 requests each), against the API's answers for the same data.
    Pages(pages::PagesArgs),
}

/// The data classes of a benchmark run: the defaults, or every class in clear.
fn bench_classes(encryption: bool) -> relais_domain::privacy::Classification {
    use relais_domain::privacy::{default_policy, ClassPolicy, Classification, DataClass};
    if encryption {
        return Classification::default();
    }
    let clear =
        DataClass::ALL.into_iter().map(|c| (c, ClassPolicy { encrypted: false, ..default_policy(c) })).collect();
    Classification::new(clear, Vec::new()).expect("the default mappings are valid")
}

/// One deterministic Segment message as JSON text: tracks, pages and identifies
/// of `people` users, with unique message ids. Written with `format!` because the
/// load generator shares the machine with the server and must stay cheap.
fn message_text(seq: usize, people: usize, timestamp: &str) -> String {
    // A cheap, well-spread pseudo-random user per message.
    let user = (seq.wrapping_mul(2_654_435_761) >> 7) % people.max(1);
    match seq % 10 {
        0 => format!(
            r#"{{"type":"identify","messageId":"bench-{seq}","userId":"u{user}","timestamp":"{timestamp}","traits":{{"email":"u{user}@example.fr","city":"Lyon"}}}}"#
        ),
        1 | 2 => format!(
            r#"{{"type":"track","event":"Order Completed","messageId":"bench-{seq}","userId":"u{user}","timestamp":"{timestamp}","properties":{{"order_id":"o{seq}","total":42.5,"currency":"EUR","store":"lyon-part-dieu"}},"context":{{"channel":"store"}}}}"#
        ),
        _ => format!(
            r#"{{"type":"page","name":"Accueil","messageId":"bench-{seq}","userId":"u{user}","timestamp":"{timestamp}","context":{{"page":{{"path":"/"}},"ip":"203.0.113.9"}}}}"#
        ),
    }
}

/// The request body of batch `n`.
fn batch_body(n: usize, size: usize, people: usize) -> Vec<u8> {
    let timestamp = (Utc::now() - chrono::Duration::seconds((n % 86_400) as i64)).to_rfc3339();
    let mut body = String::with_capacity(size * 260 + 16);
    body.push_str("{\"batch\":[");
    for i in 0..size {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&message_text(n * size + i, people, &timestamp));
    }
    body.push_str("]}");
    body.into_bytes()
}

/// The messages of batch `n`, parsed, for the raw-insert measurement.
fn batch_messages(n: usize, size: usize, people: usize) -> Vec<serde_json::Value> {
    let timestamp = (Utc::now() - chrono::Duration::seconds((n % 86_400) as i64)).to_rfc3339();
    (0..size)
        .map(|i| serde_json::from_str(&message_text(n * size + i, people, &timestamp)).expect("valid bench JSON"))
        .collect()
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The two messages of profile `k` in the erasure benchmark.
fn profile_messages(k: usize, timestamp: &str) -> [String; 2] {
    [
        format!(
            r#"{{"type":"identify","messageId":"p{k}","userId":"u{k}","timestamp":"{timestamp}","traits":{{"email":"u{k}@example.fr","firstName":"Camille","city":"Lyon"}}}}"#
        ),
        format!(
            r#"{{"type":"track","event":"Order Completed","messageId":"o{k}","userId":"u{k}","timestamp":"{timestamp}","properties":{{"order_id":"o{k}","total":42.5,"currency":"EUR","store":"lyon-part-dieu"}}}}"#
        ),
    ]
}

/// The envelope of messages the benchmarks parse themselves.
fn bench_envelope(settings: &Settings) -> Envelope<'_> {
    Envelope {
        received_at: Utc::now(),
        implied_type: None,
        batch_sent_at: None,
        batch_context: None,
        default_currency: &settings.ingest.currency,
        card_policy: settings.ingest.card_policy,
    }
}

/// `relais bench erase`: load `profiles` people with the raw path, then erase
/// some of them one by one through the engine, timing each erasure.
fn bench_erase(
    profiles: usize,
    erasures: usize,
    database_url: Option<String>,
    settings: &Settings,
) -> anyhow::Result<()> {
    let scratch = Scratch::new(database_url.as_deref(), "erase")?;
    let store = scratch.open(settings.ingest.clone())?;
    let envelope = bench_envelope(settings);
    let timestamp = (Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    let per_chunk = 25_000;
    let mut chunks = (0..profiles).step_by(per_chunk).map(|first| {
        (first..(first + per_chunk).min(profiles))
            .flat_map(|k| profile_messages(k, &timestamp))
            .map(|text| TrackingMessage::parse_json(&text, &envelope).expect("bench messages are valid"))
            .collect::<Vec<_>>()
    });
    let started = Instant::now();
    crate::store::raw_load(&scratch.location, store.privacy(), &mut chunks)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let mut times = Vec::with_capacity(erasures);
    for i in 0..erasures {
        // Spread over the whole population.
        let k = (i * 7_919 + 13) * profiles / (erasures * 7_919 + 13);
        let identifier = relais_domain::Identifier::parse(&format!("email:u{k}@example.fr"))?;
        let started = Instant::now();
        let report = store.blocking_audited(|engine, audit| {
            crate::privacy::rights::carry_out(
                engine,
                audit,
                "bench",
                "privacy.erase",
                &identifier,
                crate::privacy::rights::erase_person,
            )
        })?;
        times.push(started.elapsed());
        anyhow::ensure!(report.keys_destroyed == 1, "erasure {i} destroyed {} keys", report.keys_destroyed);
    }
    times.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 10_000.0).round() / 10.0;
    let median = times[times.len() / 2];
    eprintln!(
        "{}: {profiles} profiles loaded in {load_seconds:.1}s; erasure median {} ms, max {} ms",
        store.engine_name(),
        ms(median),
        ms(*times.last().expect("at least one erasure"))
    );
    println!(
        "{}",
        json!({
            "engine": store.engine_name(),
            "profiles": profiles,
            "erasures": erasures,
            "erase_ms_median": ms(median),
            "erase_ms_max": ms(*times.last().expect("at least one erasure")),
            "load_seconds": (load_seconds * 10.0).round() / 10.0,
        })
    );
    Ok(())
}

/// `relais bench export`: one person with `events` events (identify, orders and
/// page views through the ingest path, personal fields sealed), exported five
/// times; prints the median.
fn bench_export(events: usize, database_url: Option<String>, settings: &Settings) -> anyhow::Result<()> {
    let scratch = Scratch::new(database_url.as_deref(), "export")?;
    let store = scratch.open(settings.ingest.clone())?;
    let envelope = bench_envelope(settings);
    let timestamp = (Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    for first in (0..events).step_by(500) {
        let messages = (first..(first + 500).min(events))
            .map(|seq| {
                // One person: every message carries the same user id.
                let text = message_text(seq, 1, &timestamp);
                TrackingMessage::parse_json(&text, &envelope).expect("bench messages are valid")
            })
            .collect();
        store.blocking().ingest("bench", messages)?;
    }
    let identifier = relais_domain::Identifier::parse("user_id:u0")?;
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..5 {
        let started = Instant::now();
        let archive = store.blocking_audited(|engine, audit| {
            crate::privacy::rights::carry_out(
                engine,
                audit,
                "bench",
                "privacy.export",
                &identifier,
                crate::privacy::rights::export_person,
            )
        })?;
        times.push(started.elapsed());
        anyhow::ensure!(archive.events == events, "exported {} of {events} events", archive.events);
        size = archive.bytes.len();
    }
    times.sort();
    let median_ms = (times[2].as_secs_f64() * 10_000.0).round() / 10.0;
    eprintln!(
        "{}: export of one person with {events} events: median {median_ms} ms, {size} bytes",
        store.engine_name()
    );
    println!(
        "{}",
        json!({ "engine": store.engine_name(), "events": events, "export_ms_median": median_ms, "archive_bytes": size })
    );
    Ok(())
}

/// Run a benchmark command.
pub fn bench(command: BenchCommand, settings: &Settings) -> anyhow::Result<()> {
    let (events, people, batch, clients, database_url, encryption) = match command {
        BenchCommand::Ingest { events, people, batch, clients, database_url, encryption } => {
            (events, people, batch, clients, database_url, encryption)
        }
        BenchCommand::Export { events, database_url } => return bench_export(events, database_url, settings),
        BenchCommand::Loyalty { clients, members, seconds, runs, database_url } => {
            return loyalty::run(clients, members, seconds, runs, database_url, settings)
        }
        BenchCommand::Erase { profiles, erasures, database_url } => {
            anyhow::ensure!(erasures >= 1 && profiles >= erasures, "erase at least one of at least as many profiles");
            return bench_erase(profiles, erasures, database_url, settings);
        }
        BenchCommand::Segments(args) => return segments::bench_segments(args),
        BenchCommand::Journeys(args) => return journeys::bench_journeys(args),
        BenchCommand::Pages(args) => return pages::bench_pages(args, settings),
    };
    let encryption = encryption == "on";
    let people = people.unwrap_or((events / 20).max(1));
    let batches = events.div_ceil(batch);
    let events = batches * batch;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;

    // 1. Through the server.
    let served = Scratch::new(database_url.as_deref(), "http")?;
    let store = Store::open_with(
        &served.location,
        settings.ingest.clone(),
        &served.master,
        bench_classes(encryption),
        served.audit_dir.clone(),
    )?;
    let engine = store.engine_name();
    let (secret, _) = crate::cli::create_key(&store, relais_domain::Role::Ingest, Some("bench".into()), None)?;
    let rss_before = rss_mb();
    let (elapsed, mut latencies, stored, quarters) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let state = AppState::new(store.clone(), settings.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::http::launch(listener, state, async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder().pool_max_idle_per_host(clients).build()?;
        let auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{secret}:")));
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Resident memory when a quarter, half, three quarters and all of the
        // batches have been taken: flat memory shows as equal figures.
        let quarters = std::sync::Arc::new(std::sync::Mutex::new([0.0f64; 4]));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let client = client.clone();
            let auth = auth.clone();
            let next = next.clone();
            let quarters = quarters.clone();
            let url = format!("http://{address}/v1/batch");
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut stored = 0usize;
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= batches {
                        break;
                    }
                    for q in 1..=4 {
                        if n + 1 == (batches * q / 4).max(1) {
                            quarters.lock().expect("quarters")[q - 1] = rss_mb();
                        }
                    }
                    let body = batch_body(n, batch, people);
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .header("authorization", &auth)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await?;
                    let status = response.status();
                    let answer: serde_json::Value = response.json().await?;
                    latencies.push(sent.elapsed());
                    anyhow::ensure!(status.is_success(), "batch {n} failed with {status}: {answer}");
                    stored += answer["stored"].as_u64().unwrap_or(0) as usize;
                }
                anyhow::Ok((latencies, stored))
            }));
        }
        let mut latencies: Vec<Duration> = Vec::new();
        let mut stored = 0;
        for task in tasks {
            let (l, s) = task.await??;
            latencies.extend(l);
            stored += s;
        }
        let elapsed = started.elapsed();
        let _ = stop.send(());
        server.await??;
        let quarters = *quarters.lock().expect("quarters");
        anyhow::Ok((elapsed, latencies, stored, quarters))
    })?;
    let rss_after = rss_mb();
    anyhow::ensure!(stored == events, "the server stored {stored} of {events} events");
    drop(store);
    drop(served);
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    let events_per_sec = events as f64 / elapsed.as_secs_f64();

    // 2. The engine's best case on the same rows.
    let raw = Scratch::new(database_url.as_deref(), "raw")?;
    let envelope = bench_envelope(settings);
    let per_chunk = (50_000 / batch).max(1);
    let mut chunks = (0..batches).step_by(per_chunk).map(|first| {
        (first..(first + per_chunk).min(batches))
            .flat_map(|n| batch_messages(n, batch, people))
            .map(|value| TrackingMessage::parse_value(value, &envelope).expect("bench messages are valid"))
            .collect::<Vec<_>>()
    });
    let raw_elapsed = crate::store::raw_load(&raw.location, &crate::store::raw_privacy(), &mut chunks)?;
    drop(raw);
    let raw_per_sec = events as f64 / raw_elapsed.as_secs_f64();

    eprintln!(
        "{engine}: {events} events over HTTP in {:.2}s ({events_per_sec:.0}/s, p99 batch {:.1} ms); raw insert {:.2}s ({raw_per_sec:.0}/s)",
        elapsed.as_secs_f64(),
        p99.as_secs_f64() * 1000.0,
        raw_elapsed.as_secs_f64()
    );
    println!(
        "{}",
        json!({
            "engine": engine,
            "encryption": encryption,
            "events": events,
            "people": people,
            "batch": batch,
            "clients": clients,
            "seconds": elapsed.as_secs_f64(),
            "events_per_sec": events_per_sec.round(),
            "p99_batch_ms": (p99.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
            "raw_insert_events_per_sec": raw_per_sec.round(),
            "ratio": (events_per_sec / raw_per_sec * 1000.0).round() / 1000.0,
            "rss_mb_before": rss_before.round(),
            "rss_mb_after": rss_after.round(),
            "rss_mb_by_quarter": quarters.iter().map(|m| m.round()).collect::<Vec<_>>(),
        })
    );
    Ok(())
}
