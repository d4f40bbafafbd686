//! `relais bench journeys`: Markov attribution of order 1 and 3 on conversion-path
//! files of 1,000,000 and 5,000,000 journeys (ChannelAttribution format, from a
//! seeded generator), timed from file to result for relais and for
//! ChannelAttribution's `markov_model` with its default settings, in alternating
//! runs of the same process.
//!
//! The generator draws each journey's path by rank from a heavy-tailed
//! (Lomax) distribution, so a few paths are very common and most are rare, as in
//! real path exports; the number of distinct paths grows like the number of
//! journeys to the power 0.6 (about 126,000 paths for 1 M journeys, 350,000 for
//! 5 M). A rank's path is a pure function of the seed and the rank: popular
//! ranks are short paths, rare ones longer; its conversion probability depends
//! on its channels, and each journey converts or not by its own draw.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use relais_domain::journey::{markov_attribution, Order};
use serde_json::json;

use super::segments::median;

/// Channel names of the synthetic paths, most used first.
const CHANNELS: [&str; 12] = [
    "paid_search",
    "organic_search",
    "email",
    "social",
    "display",
    "direct",
    "affiliate",
    "referral",
    "video",
    "push",
    "sms",
    "print",
];
/// Relative weights of the channels.
const WEIGHTS: [f64; 12] = [30.0, 20.0, 12.0, 10.0, 8.0, 6.0, 5.0, 4.0, 2.0, 1.5, 1.0, 0.5];
/// Tail exponent and scale of the rank distribution (tuned for the path counts above).
const TAIL: f64 = 0.58;
const SCALE: f64 = 850.0;

/// Options of `relais bench journeys`.
#[derive(Debug, clap::Args)]
pub struct JourneysArgs {
    /// Journeys per file, separated by commas.
    #[arg(long, default_value = "1000000,5000000")]
    journeys: String,
    /// Markov orders to time, separated by commas.
    #[arg(long, default_value = "1,3")]
    orders: String,
    /// Alternating runs of relais and ChannelAttribution (the figures are medians).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Generator seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Keep the generated files in this folder (default: a temporary folder, removed).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Only write the files and print their sizes; no timing.
    #[arg(long)]
    generate_only: bool,
    /// Folder of the peer tools, where `install.sh` made `.venv`.
    #[arg(long, default_value = "bench/peers")]
    peers: PathBuf,
    /// Events stored (SQLite, seeded) before timing the stage model built from
    /// the event log; 0 skips it.
    #[arg(long, default_value_t = 10_000_000)]
    stored_events: usize,
    /// Keep the stored events in this data folder, and reuse them when it
    /// already holds a database (loading 10 M events takes about two minutes).
    #[arg(long)]
    stored_data: Option<PathBuf>,
    /// Time only the stage model from stored events (no attribution, so
    /// ChannelAttribution is not needed).
    #[arg(long)]
    stage_model_only: bool,
}

/// Channels of the stored events, as `context.channel`.
const STORED_CHANNELS: [&str; 6] = ["web", "app", "store", "social", "email", "catalogue"];

/// Store `events` seeded events (about 20 per customer: visits, additions to
/// cart, checkouts and orders on several channels) in a scratch SQLite
/// database by the raw path, then time `relais journey model` on it (default
/// stages, 30-day gap, 200 bootstrap replicates): the median of three runs.
fn stage_model_seconds(events: usize, seed: u64, keep: Option<&Path>) -> anyhow::Result<(f64, u64, u64)> {
    let settings = crate::config::Settings::default();
    let scratch;
    let (location, reuse) = match keep {
        Some(folder) => {
            let reuse = folder.join("relais.db").exists();
            (crate::store::Location::Folder(folder.to_path_buf()), reuse)
        }
        None => {
            scratch = crate::store::scratch::Scratch::new(None, "journeys")?;
            (scratch.location.clone(), false)
        }
    };
    let store = crate::store::Store::open(&location, settings.ingest.clone())?;
    let envelope = super::bench_envelope(&settings);
    let steps: [(&str, Option<&str>); 4] = [
        ("page", None),
        ("track", Some("Product Added")),
        ("track", Some("Checkout Started")),
        ("track", Some("Order Completed")),
    ];
    let start = chrono::Utc::now() - chrono::Duration::days(730);
    let per_chunk = 25_000;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x570_4ed);
    let mut made = 0usize;
    let mut chunks = std::iter::from_fn(|| {
        if made >= events {
            return None;
        }
        let mut chunk = Vec::with_capacity(per_chunk);
        while chunk.len() < per_chunk && made < events {
            let customer = made / 20;
            // A journey: up to four steps, a day or two apart, each on a channel.
            let begins = start + chrono::Duration::minutes(rng.gen_range(0..725 * 24 * 60));
            let depth = rng.gen_range(1..=4);
            for (step, (kind, name)) in steps.iter().take(depth).enumerate() {
                let at = (begins + chrono::Duration::hours(step as i64 * 30)).to_rfc3339();
                let channel = STORED_CHANNELS[rng.gen_range(0..STORED_CHANNELS.len())];
                let mut message = json!({"type": kind, "userId": format!("u{customer}"), "messageId": format!("m{made}"),
                    "timestamp": at, "context": {"channel": channel}});
                match name {
                    Some(name) => message["event"] = json!(name),
                    None => message["name"] = json!("Accueil"),
                }
                chunk.push(
                    relais_domain::TrackingMessage::parse_value(message, &envelope).expect("bench messages are valid"),
                );
                made += 1;
            }
        }
        Some(chunk)
    });
    if reuse {
        eprintln!(
            "reusing the events stored in {}",
            keep.map(Path::display).map(|d| d.to_string()).unwrap_or_default()
        );
    } else {
        let started = Instant::now();
        crate::store::raw_load(&location, store.privacy(), &mut chunks)?;
        eprintln!("stored {events} events in {:.1}s", started.elapsed().as_secs_f64());
    }
    let stages: Vec<String> = ["information", "evaluation", "decision", "purchase"].map(String::from).to_vec();
    let mut times = Vec::new();
    let mut last = (0, 0);
    for run in 0..3 {
        let started = Instant::now();
        let (estimated, read) = crate::journey::model_from_store(
            store.blocking(),
            relais_domain::journey::StageMap::default(),
            None,
            None,
            stages.clone(),
            30,
            relais_domain::journey::EstimateOptions { purchasers_only: false, replicates: 200, seed },
            None,
        )?;
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("stage model run {}: {read} events, {} journeys, {seconds:.2}s", run + 1, estimated.journeys);
        times.push(seconds);
        last = (read, estimated.journeys as u64);
    }
    Ok((median(&times), last.0, last.1))
}

/// SplitMix64: a rank's own random stream, independent of every other rank's.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The path of rank `rank` (channel indices) and its conversion probability.
fn path_of(seed: u64, rank: u64) -> (Vec<u8>, f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ mix(rank)));
    let total: f64 = WEIGHTS.iter().sum();
    let draw = |rng: &mut ChaCha8Rng| {
        let mut x = rng.gen::<f64>() * total;
        WEIGHTS
            .iter()
            .position(|w| {
                x -= w;
                x < 0.0
            })
            .unwrap_or(WEIGHTS.len() - 1) as u8
    };
    // Popular ranks are short journeys, rare ones longer (up to 20 touches).
    let length = (1 + (rank as f64 + 1.0).log2() as usize / 2 + rng.gen_range(0..3)).min(20);
    let mut path = vec![draw(&mut rng)];
    while path.len() < length {
        let previous = *path.last().expect("not empty");
        // A fifth of the touches repeat the channel; others depend on the previous one.
        let next = if rng.gen_bool(0.2) { previous } else { (previous + draw(&mut rng)) % CHANNELS.len() as u8 };
        path.push(next);
    }
    let email = path.iter().filter(|&&c| c == 2).count() as f64;
    let search = path.contains(&0) as u8 as f64;
    let probability = (0.02 + 0.04 * email + 0.03 * search + 0.01 * path.len() as f64).min(0.6);
    (path, probability)
}

/// Writes `journeys` synthetic journeys as distinct paths; returns the number of paths.
pub fn write_paths(file: &Path, journeys: usize, seed: u64) -> anyhow::Result<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Journeys per rank first, then each journey of a rank converts or not with
    // its path's probability (ranks in order, so the draws are reproducible).
    let mut by_rank: HashMap<u64, u64> = HashMap::new();
    for _ in 0..journeys {
        let u: f64 = rng.gen();
        let rank = (SCALE * ((1.0 - u).powf(-1.0 / TAIL) - 1.0)).min(1e15) as u64;
        *by_rank.entry(rank).or_default() += 1;
    }
    let mut ranks: Vec<(u64, u64)> = by_rank.into_iter().collect();
    ranks.sort_unstable();
    // path → (conversions, value in cents, nulls); two ranks may draw the same path.
    let mut by_path: HashMap<Vec<u8>, (u64, u64, u64)> = HashMap::new();
    for (rank, count) in ranks {
        let (path, probability) = path_of(seed, rank);
        let entry = by_path.entry(path).or_default();
        for _ in 0..count {
            if rng.gen_bool(probability) {
                entry.0 += 1;
                entry.1 += rng.gen_range(2_000..20_000);
            } else {
                entry.2 += 1;
            }
        }
    }
    let mut rows: Vec<_> = by_path.into_iter().collect();
    rows.sort_unstable();
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(file).with_context(|| format!("cannot write {}", file.display()))?,
    );
    writeln!(out, "path,total_conversions,total_conversion_value,total_null")?;
    for (path, (conversions, cents, nulls)) in &rows {
        let names: Vec<&str> = path.iter().map(|&c| CHANNELS[c as usize]).collect();
        writeln!(out, "{},{conversions},{}.{:02},{nulls}", names.join(" > "), cents / 100, cents % 100)?;
    }
    out.flush()?;
    Ok(rows.len())
}

/// relais from file to result: (total seconds, model seconds, conversions per channel).
fn relais_run(file: &Path, order: Order) -> anyhow::Result<(f64, f64, HashMap<String, f64>)> {
    let started = Instant::now();
    let paths = crate::journey::read_paths(file)?;
    let read = Instant::now();
    let markov = markov_attribution(&paths, order)?;
    let done = Instant::now();
    let conversions = paths.channels().iter().cloned().zip(markov.credit.iter().map(|c| c.conversions)).collect();
    Ok(((done - started).as_secs_f64(), (done - read).as_secs_f64(), conversions))
}

/// ChannelAttribution on the same file: (total seconds, model seconds, answer).
fn peer_run(python: &Path, script: &Path, file: &Path, order: Order) -> anyhow::Result<(f64, f64, serde_json::Value)> {
    let output = Command::new(python)
        .arg(script)
        .arg(file)
        .arg(order.get().to_string())
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    anyhow::ensure!(output.status.success(), "ChannelAttribution failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let answer: serde_json::Value =
        serde_json::from_str(last).with_context(|| format!("{} printed no JSON: {stdout}", script.display()))?;
    let total = answer["total_seconds"].as_f64().context("no total_seconds")?;
    let model = answer["model_seconds"].as_f64().context("no model_seconds")?;
    Ok((total, model, answer))
}

fn numbers<T: std::str::FromStr>(list: &str, what: &str) -> anyhow::Result<Vec<T>> {
    list.split(',')
        .map(|x| x.trim().parse::<T>().map_err(|_| anyhow::anyhow!("{what}: `{x}` is not a number")))
        .collect()
}

/// Run `relais bench journeys`.
pub fn bench_journeys(args: JourneysArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    let sizes: Vec<usize> = numbers(&args.journeys, "--journeys")?;
    let orders =
        numbers::<u32>(&args.orders, "--orders")?.into_iter().map(Order::new).collect::<Result<Vec<_>, _>>()?;
    let python = args.peers.join(".venv/bin/python");
    let script = args.peers.join("markov_ca.py");
    anyhow::ensure!(
        args.generate_only || args.stage_model_only || (python.exists() && script.exists()),
        "ChannelAttribution is not installed in {}: run `bash bench/peers/install.sh` from the repository root, or give --peers",
        args.peers.display()
    );
    let temporary = args.dir.is_none();
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("relais-bench-journeys-{}", std::process::id())));
    std::fs::create_dir_all(&dir)?;
    let result = run(&args, &sizes, &orders, &python, &script, &dir);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run(
    args: &JourneysArgs,
    sizes: &[usize],
    orders: &[Order],
    python: &Path,
    script: &Path,
    dir: &Path,
) -> anyhow::Result<()> {
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let mut cases = Vec::new();
    let mut version = serde_json::Value::Null;
    for &journeys in sizes.iter().filter(|_| !args.stage_model_only) {
        let file = dir.join(format!("paths-{journeys}-seed{}.csv", args.seed));
        let started = Instant::now();
        let paths = write_paths(&file, journeys, args.seed)?;
        let mb = std::fs::metadata(&file)?.len() as f64 / 1e6;
        eprintln!(
            "{journeys} journeys: {paths} distinct paths, {mb:.1} MB, written in {:.1}s to {}",
            started.elapsed().as_secs_f64(),
            file.display()
        );
        if args.generate_only {
            cases.push(json!({"journeys": journeys, "paths": paths, "file_mb": (mb * 10.0).round() / 10.0}));
            continue;
        }
        for &order in orders {
            let (mut ours, mut ours_model, mut theirs, mut theirs_model, mut ratios) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let mut gap = 0.0f64;
            for run in 0..args.runs {
                // Alternate who goes first so neither always finds the machine as the other left it.
                let ((total, model, credit), (peer_total, peer_model, answer)) = if run % 2 == 0 {
                    let a = relais_run(&file, order)?;
                    (a, peer_run(python, script, &file, order)?)
                } else {
                    let b = peer_run(python, script, &file, order)?;
                    (relais_run(&file, order)?, b)
                };
                // How far the simulation's estimate is from the exact figures (largest channel gap).
                for (channel, value) in answer["conversions"].as_object().into_iter().flatten() {
                    let exact = credit.get(channel).copied().unwrap_or(0.0);
                    if let Some(estimate) = value.as_f64() {
                        gap = gap.max((estimate - exact).abs() / exact.max(1.0));
                    }
                }
                version = answer["version"].clone();
                eprintln!(
                    "{journeys} journeys, order {}, run {}: relais {total:.3}s (model {model:.3}s), ChannelAttribution {peer_total:.3}s (model {peer_model:.3}s), ratio {:.3}",
                    order.get(),
                    run + 1,
                    total / peer_total
                );
                ours.push(total);
                ours_model.push(model);
                theirs.push(peer_total);
                theirs_model.push(peer_model);
                ratios.push(total / peer_total);
            }
            cases.push(json!({
                "journeys": journeys,
                "paths": paths,
                "order": order.get(),
                "relais_seconds": round3(median(&ours)),
                "relais_model_seconds": round3(median(&ours_model)),
                "channelattribution_seconds": round3(median(&theirs)),
                "channelattribution_model_seconds": round3(median(&theirs_model)),
                "ratio": round3(median(&ratios)),
                "largest_channel_gap": round3(gap),
            }));
        }
    }
    let stage = if args.stored_events > 0 {
        Some(stage_model_seconds(args.stored_events, args.seed, args.stored_data.as_deref())?)
    } else {
        None
    };
    let worst = cases
        .iter()
        .filter_map(|c| c["ratio"].as_f64())
        .fold(None, |w: Option<f64>, r| Some(w.map_or(r, |w| w.max(r))));
    println!(
        "{}",
        json!({
            "seed": args.seed,
            "runs": args.runs,
            "threads": std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            "channelattribution_version": version,
            "cases": cases,
            // The worst case's ratio: every case must be at most the target (0.2).
            "ratio": worst,
            "stored_events": stage.map(|s| s.1),
            "stage_model_journeys": stage.map(|s| s.2),
            "stage_model_seconds": stage.map(|s| round3(s.0)),
        })
    );
    Ok(())
}
