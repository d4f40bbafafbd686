//! `relais bench pages`: the customer room and the customer 360 rendered by
//! the real server over the demo data, timed from a client on the same
//! machine (p50 and p95 over N requests each), against the API's answers for
//! the same data in the same run (the typology report and the customer JSON).
//! The room's figures are reused for a minute (`web::RoomCache`): `room` is
//! what people see within that minute, `room_uncached` the same page once the
//! minute is over (the cache emptied before each request: figures computed).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::config::Settings;
use crate::http::AppState;
use crate::store::scratch::Scratch;
use crate::store::{Location, Store};

/// Options of `relais bench pages`.
#[derive(Debug, clap::Args)]
pub struct PagesArgs {
    /// A data folder holding a demo (`relais demo --no-serve --data DIR`);
    /// without it, a demo is loaded into a throwaway folder first.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Requests per page.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// People of the demo loaded when no folder is given.
    #[arg(long, default_value_t = 20_000)]
    people: usize,
    /// Events of the demo loaded when no folder is given.
    #[arg(long, default_value_t = 2_000_000)]
    events: usize,
}

/// Latencies of one page: median, 95th percentile, largest body.
struct Timing {
    times: Vec<Duration>,
    largest: usize,
}

impl Timing {
    fn new() -> Timing {
        Timing { times: Vec::new(), largest: 0 }
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.times.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
        sorted.get(index).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    }

    fn json(&self) -> serde_json::Value {
        json!({ "p50_ms": self.percentile(0.5), "p95_ms": self.percentile(0.95), "largest_bytes": self.largest })
    }
}

async fn timed(client: &reqwest::Client, request: reqwest::RequestBuilder, into: &mut Timing) -> anyhow::Result<()> {
    let started = Instant::now();
    let response = client.execute(request.build()?).await?;
    let status = response.status();
    let body = response.bytes().await?;
    into.times.push(started.elapsed());
    into.largest = into.largest.max(body.len());
    anyhow::ensure!(status.is_success(), "answer {status}: {}", String::from_utf8_lossy(&body));
    Ok(())
}

/// Run the benchmark; prints one JSON object on its last line.
pub fn bench_pages(args: PagesArgs, settings: &Settings) -> anyhow::Result<()> {
    anyhow::ensure!(args.requests >= 20, "--requests must be at least 20 for a 95th percentile");
    let _scratch;
    let store = match &args.data {
        Some(folder) => Store::open(&Location::Folder(folder.clone()), settings.ingest.clone())
            .with_context(|| format!("cannot open the data folder {}", folder.display()))?,
        None => {
            let scratch = Scratch::new(None, "pages")?;
            let store = scratch.open(settings.ingest.clone())?;
            eprintln!("loading a demo of {} people and {} events", args.people, args.events);
            crate::demo::load(
                &store,
                settings,
                crate::demo::DemoSize { people: args.people, events: args.events, seed: 42 },
            )?;
            _scratch = scratch;
            store
        }
    };
    let email = format!("bench-{}@relais.bench", ulid::Ulid::new().to_string().to_lowercase());
    let (_, password) = crate::users::create(&store, "bench", &email, relais_domain::Role::Admin)?;
    let (key, _) = crate::cli::create_key(&store, relais_domain::Role::Admin, Some("bench pages".into()), None)?;
    let engine = store.blocking();
    let typology = engine.typologies()?.into_iter().next().context("the demo has no typology")?.name;
    let mut customers = Vec::new();
    for segment in engine.segments()? {
        for (id, _) in engine.segment_members(segment.id, None, args.requests)? {
            if customers.len() < args.requests && !customers.contains(&id) {
                customers.push(id);
            }
        }
    }
    anyhow::ensure!(!customers.is_empty(), "the demo's segments have no members");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let state = AppState::new(store.clone(), settings.clone());
        let room_cache = state.room.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::http::launch(listener, state, async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
        let signed_in = client
            .post(format!("{base}/app/login"))
            .form(&[("email", email.as_str()), ("password", password.as_str()), ("next", "/app")])
            .send()
            .await?;
        let cookie = signed_in
            .headers()
            .get(reqwest::header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .context("signing in gave no session cookie")?
            .to_string();
        let page = |path: String| client.get(format!("{base}{path}")).header("cookie", &cookie);
        let api = |path: String| client.get(format!("{base}{path}")).bearer_auth(&key);
        let (mut room, mut flow, mut customer, mut timeline, mut room_api, mut customer_api) =
            (Timing::new(), Timing::new(), Timing::new(), Timing::new(), Timing::new(), Timing::new());
        let mut room_uncached = Timing::new();
        // Warm-up: caches and connections, not counted.
        for id in customers.iter().take(10) {
            timed(&client, page("/app/room".into()), &mut Timing::new()).await?;
            timed(&client, page(format!("/app/customers/{id}")), &mut Timing::new()).await?;
        }
        for i in 0..args.requests {
            let id = customers[i % customers.len()];
            // Alternating, so the page and its reference share the machine's moods.
            timed(&client, page("/app/room".into()), &mut room).await?;
            // The same room once its minute is over: the figures are computed.
            room_cache.clear();
            timed(&client, page("/app/room".into()), &mut room_uncached).await?;
            timed(&client, api(format!("/api/v1/typologies/{typology}")), &mut room_api).await?;
            timed(&client, page("/app/room/flow".into()), &mut flow).await?;
            timed(&client, page(format!("/app/customers/{id}")), &mut customer).await?;
            timed(&client, api(format!("/api/v1/customers/{id}")), &mut customer_api).await?;
            timed(&client, page(format!("/app/customers/{id}/timeline")), &mut timeline).await?;
        }
        let _ = stop.send(());
        let _ = server.await;
        let ratio = |a: &Timing, b: &Timing| a.percentile(0.95) / b.percentile(0.95);
        anyhow::Ok(json!({
            "engine": store.engine_name(),
            "requests": args.requests,
            "customers": customers.len(),
            "room": room.json(),
            "room_uncached": room_uncached.json(),
            "room_flow": flow.json(),
            "customer_360": customer.json(),
            "customer_timeline": timeline.json(),
            "api_typology_report": room_api.json(),
            "api_customer": customer_api.json(),
            "room_ratio_p95": ratio(&room, &room_api),
            "room_uncached_ratio_p95": ratio(&room_uncached, &room_api),
            "customer_360_ratio_p95": ratio(&customer, &customer_api),
            "targets_met": room.percentile(0.95) < 100.0 && customer.percentile(0.95) < 100.0
                && room.largest < 200_000 && customer.largest < 200_000 && timeline.largest < 200_000,
        }))
    })?;
    store.close_audit()?;
    println!("{report}");
    Ok(())
}
