//! `relais bench loyalty`: concurrent clients earning (order events through
//! `/v1/track`) and redeeming (`/redemptions` with an `Idempotency-Key`)
//! through the real HTTP API, each request one transaction acknowledged only
//! once durable. On PostgreSQL, pgbench's TPC-B-like transaction runs on the
//! same server, with the same clients, duration and durability, alternating
//! with relais; the ratio is the median of the per-pair ratios. After the
//! setup, both sides' tables have fresh planner statistics (`pgbench -i`
//! analyses its tables; relais's are analysed the same way).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::config::Settings;
use crate::http::AppState;
use crate::store::scratch::Scratch;
use crate::store::Store;

/// What one timed run measured.
struct Run {
    tx_per_sec: f64,
    p99_ms: f64,
    errors: usize,
}

const PROGRAMME: &str = r#"
[programme]
key = "bench"
name = "Bench"
point_value_minor = 1

[[version]]
effective_from = "2020-01-01"

[[version.rule]]
id = "spend"
kind = "spend"
points_per_euro = "1"
"#;

/// Run the benchmark and print its last-line JSON.
pub fn run(
    clients: usize,
    members: usize,
    seconds: u64,
    runs: usize,
    database_url: Option<String>,
    settings: &Settings,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        clients >= 1 && members >= clients && seconds >= 1 && runs >= 1,
        "need clients ≥ 1, members ≥ clients, seconds ≥ 1, runs ≥ 1"
    );
    let scratch = Scratch::new(database_url.as_deref(), "loyalty")?;
    let store = scratch.open(settings.ingest.clone())?;
    let ids = setup(&store, members, settings)?;
    scratch.analyze()?;
    let (admin, _) = crate::cli::create_key(&store, relais_domain::Role::Admin, Some("bench".into()), None)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (address, stop) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let state = AppState::new(store.clone(), Settings { rate_limit_per_second: 1_000_000, ..settings.clone() });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(crate::http::launch(listener, state, async {
            let _ = stopped.await;
        }));
        Ok::<_, anyhow::Error>((address, stop))
    })?;
    let pgbench = match &database_url {
        Some(url) => Some(PgBench::prepare(url, clients)?),
        None => None,
    };
    let mut relais_runs = Vec::new();
    let mut pg_runs = Vec::new();
    for round in 0..runs {
        let run = runtime.block_on(drive(&address.to_string(), &admin, &ids, clients, seconds, round))?;
        eprintln!(
            "run {}: relais {:.0} tx/s, p99 {:.1} ms, {} errors",
            round + 1,
            run.tx_per_sec,
            run.p99_ms,
            run.errors
        );
        relais_runs.push(run);
        if let Some(pgbench) = &pgbench {
            let tps = pgbench.run(clients, seconds)?;
            eprintln!("run {}: pgbench tpcb-like {tps:.0} tps", round + 1);
            pg_runs.push(tps);
        }
    }
    let _ = stop.send(());
    let check = store.blocking().loyalty_check()?;
    anyhow::ensure!(check.holds(), "the ledger's invariants broke under load: {check:?}");
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let tx = median(relais_runs.iter().map(|r| r.tx_per_sec).collect());
    let p99 = median(relais_runs.iter().map(|r| r.p99_ms).collect());
    let errors: usize = relais_runs.iter().map(|r| r.errors).sum();
    let mut result = json!({
        "engine": store.engine_name(), "clients": clients, "members": members, "seconds": seconds, "runs": runs,
        "tx_per_sec": (tx * 10.0).round() / 10.0, "p99_ms": (p99 * 100.0).round() / 100.0, "errors": errors,
    });
    if !pg_runs.is_empty() {
        let ratios: Vec<f64> = relais_runs.iter().zip(&pg_runs).map(|(r, p)| r.tx_per_sec / p).collect();
        result["pgbench_tpcb_tps"] = json!((median(pg_runs) * 10.0).round() / 10.0);
        result["ratio"] = json!((median(ratios) * 1000.0).round() / 1000.0);
    }
    println!("{result}");
    Ok(())
}

/// Members with a programme, each holding enough points never to run out.
fn setup(store: &Store, members: usize, settings: &Settings) -> anyhow::Result<Vec<String>> {
    let engine = store.blocking();
    let programme = crate::loyalty::parse_programme(PROGRAMME, crate::loyalty::FileFormat::Toml)
        .map_err(|e| anyhow::anyhow!("bench programme: {e}"))?;
    let today = settings.ingest.day_of(chrono::Utc::now());
    engine.loyalty_apply(&programme, today)?.map_err(|e| anyhow::anyhow!("bench programme: {e}"))?;
    let envelope = super::bench_envelope(settings);
    let mut ids = Vec::with_capacity(members);
    for first in (0..members).step_by(500) {
        let messages = (first..(first + 500).min(members))
            .map(|n| {
                let text = format!(r#"{{"type": "identify", "userId": "m{n}", "messageId": "setup-{n}"}}"#);
                relais_domain::TrackingMessage::parse_json(&text, &envelope).expect("valid")
            })
            .collect();
        for outcome in engine.ingest("bench", messages)? {
            let crate::store::ingest::Outcome::Stored { customer_id, .. } = outcome else {
                anyhow::bail!("a setup message was not stored")
            };
            let (view, _) = engine.loyalty_enrol(customer_id, "bench")?;
            let credit = crate::store::loyalty::ManualOperation {
                kind: crate::store::loyalty::Manual::Adjustment,
                member: view.row.member,
                points: 100_000_000,
                reward: None,
                reason: "bench".into(),
                actor: "bench".into(),
                scope: "bench".into(),
                key: view.row.member.to_string(),
                request_hash: String::new(),
                day: today,
            };
            engine.loyalty_operate(&credit)?;
            ids.push(view.row.member.to_string());
        }
    }
    Ok(ids)
}

/// `clients` concurrent clients for `seconds`: 70% earn (an order), 30% redeem.
async fn drive(
    address: &str,
    key: &str,
    members: &[String],
    clients: usize,
    seconds: u64,
    round: usize,
) -> anyhow::Result<Run> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(clients).build()?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let members = std::sync::Arc::new(members.to_vec());
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, key, members, address) = (client.clone(), key.to_string(), members.clone(), address.to_string());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut n = 0u64;
            // Each client has its own members, as tills serve their own customers;
            // the setup gave member number i the user id `m{i}`.
            let mine: Vec<(usize, &String)> = members.iter().enumerate().skip(c).step_by(clients).collect();
            while Instant::now() < deadline {
                n += 1;
                let (index, member) = mine[(n as usize) % mine.len()];
                let started = Instant::now();
                let response = if n % 10 < 7 {
                    let user = format!("m{index}");
                    client
                        .post(format!("http://{address}/v1/track"))
                        .bearer_auth(&key)
                        .json(&json!({"userId": user, "event": "Order Completed",
                            "messageId": format!("b{round}-{c}-{n}"),
                            "properties": {"order_id": format!("b{round}-{c}-{n}"), "total": 42.5, "currency": "EUR"}}))
                        .send()
                        .await
                } else {
                    client
                        .post(format!("http://{address}/api/v1/loyalty/members/{member}/redemptions"))
                        .bearer_auth(&key)
                        .header("Idempotency-Key", format!("b{round}-{c}-{n}"))
                        .json(&json!({"points": 10, "reason": "bench"}))
                        .send()
                        .await
                };
                match response {
                    Ok(r) if r.status().is_success() => latencies.push(started.elapsed()),
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64().max(seconds as f64);
    latencies.sort();
    let p99 = latencies.get(latencies.len().saturating_sub(1) * 99 / 100).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    Ok(Run { tx_per_sec: latencies.len() as f64 / elapsed, p99_ms: p99, errors })
}

/// pgbench on the same server: its own tables, scale = clients.
struct PgBench {
    binary: std::path::PathBuf,
    url: String,
}

impl PgBench {
    fn prepare(url: &str, clients: usize) -> anyhow::Result<PgBench> {
        let binary = ["pgbench", "/usr/lib/postgresql/15/bin/pgbench"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| std::process::Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()))
            .ok_or_else(|| anyhow::anyhow!("pgbench is not installed (Debian: postgresql-15 or postgresql-contrib)"))?;
        let bench = PgBench { binary, url: url.to_string() };
        let output = std::process::Command::new(&bench.binary)
            .args(["-i", "-q", "-s", &clients.to_string()])
            .arg(&bench.url)
            .output()?;
        anyhow::ensure!(output.status.success(), "pgbench -i failed: {}", String::from_utf8_lossy(&output.stderr));
        Ok(bench)
    }

    /// One timed pgbench run with durable commits (as relais's); its tps.
    fn run(&self, clients: usize, seconds: u64) -> anyhow::Result<f64> {
        let output = std::process::Command::new(&self.binary)
            .env("PGOPTIONS", "-c synchronous_commit=on")
            .args(["-n", "-c", &clients.to_string(), "-j", "2", "-T", &seconds.to_string()])
            .arg(&self.url)
            .output()?;
        anyhow::ensure!(output.status.success(), "pgbench failed: {}", String::from_utf8_lossy(&output.stderr));
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines()
            .find(|l| l.starts_with("tps = "))
            .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no tps in pgbench's output: {text}"))
    }
}

impl Drop for PgBench {
    fn drop(&mut self) {
        // pgbench -i -I d drops its tables.
        let _ = std::process::Command::new(&self.binary).args(["-i", "-I", "d"]).arg(&self.url).output();
    }
}
