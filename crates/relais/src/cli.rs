//! The command line: `relais serve`, `demo`, `keys create`, `import events`,
//! `traits rebuild`, `bench ingest`. `anyhow` lives here, at the binary's edge.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use chrono::Utc;
use clap::{Args, Parser, Subcommand};
use relais_domain::message::Envelope;
use relais_domain::{KeyId, Role, TrackingMessage};

use crate::config::Settings;
use crate::http::AppState;
use crate::store::{new_api_key_secret, ApiKey, Location, Outcome, Store};

/// relais: one customer database fed by every touchpoint.
#[derive(Debug, Parser)]
#[command(name = "relais", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the data lives (SQLite folder by default, or a PostgreSQL URL).
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Data folder for the embedded SQLite database.
    #[arg(long, env = "RELAIS_DATA", default_value = "relais-data")]
    data: PathBuf,
    /// PostgreSQL URL (postgres://user@host/db); overrides --data.
    #[arg(long, env = "RELAIS_DATABASE_URL")]
    database_url: Option<String>,
}

impl StoreArgs {
    fn location(&self) -> anyhow::Result<Location> {
        Ok(Location::from_args(Some(self.data.clone()), self.database_url.clone())?)
    }

    fn open(&self, settings: &Settings) -> anyhow::Result<Store> {
        let location = self.location()?;
        Store::open(&location, settings.ingest.clone()).with_context(|| match &location {
            Location::Folder(folder) => format!("cannot open the data folder {}", folder.display()),
            Location::Postgres(_) => "cannot open the PostgreSQL database".to_string(),
        })
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        /// Address to listen on.
        #[arg(long, env = "RELAIS_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Fill a data folder with a realistic French demo, print an admin key, and serve.
    Demo {
        #[command(flatten)]
        store: StoreArgs,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Load the demo and exit without serving.
        #[arg(long)]
        no_serve: bool,
        /// Number of people.
        #[arg(long, default_value_t = 20_000)]
        people: usize,
        /// Approximate number of events.
        #[arg(long, default_value_t = 2_000_000)]
        events: usize,
        /// Seed of the generator (same seed, same data).
        #[arg(long, default_value_t = 2026)]
        seed: u64,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Import files.
    Import {
        #[command(subcommand)]
        command: ImportCommand,
    },
    /// Computed traits.
    Traits {
        #[command(subcommand)]
        command: TraitsCommand,
    },
    /// Benchmarks of the whole system.
    Bench {
        #[command(subcommand)]
        command: crate::demo::BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key and print it on stdout (and nothing else).
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// Role: admin, dpo, marketing, analyst, agent, store or ingest.
        #[arg(long)]
        role: String,
        /// A label.
        #[arg(long)]
        name: Option<String>,
        /// Source under which this key's messageIds deduplicate (default: the key's own id).
        #[arg(long)]
        source: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ImportCommand {
    /// Import Segment messages from a JSONL file (one message per line).
    Events {
        #[command(flatten)]
        store: StoreArgs,
        /// The file.
        file: PathBuf,
        /// Source under which messageIds deduplicate.
        #[arg(long, default_value = "import")]
        source: String,
        /// Where rejected lines go, with their reasons (default: FILE.rejected.jsonl).
        #[arg(long)]
        rejected: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TraitsCommand {
    /// Recompute every customer's traits from the event log.
    Rebuild {
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RELAIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    match cli.command {
        Command::Serve { store, listen } => {
            let store = store.open(&settings)?;
            runtime()?.block_on(serve(store, settings, listen, None))
        }
        Command::Demo { store, listen, no_serve, people, events, seed } => {
            let opened = store.open(&settings)?;
            crate::demo::load(&opened, &settings, crate::demo::DemoSize { people, events, seed })?;
            let (secret, _) = create_key(&opened, Role::Admin, Some("demo admin".into()), None)?;
            if no_serve {
                println!("admin API key: {secret}");
                return Ok(());
            }
            runtime()?.block_on(serve(opened, settings, listen, Some(secret)))
        }
        Command::Keys { command: KeysCommand::Create { store, role, name, source } } => {
            let role = Role::parse(&role).with_context(|| {
                format!("unknown role `{role}`; use one of admin, dpo, marketing, analyst, agent, store, ingest")
            })?;
            let store = store.open(&settings)?;
            let (secret, _) = create_key(&store, role, name, source)?;
            println!("{secret}");
            Ok(())
        }
        Command::Import { command: ImportCommand::Events { store, file, source, rejected } } => {
            let store = store.open(&settings)?;
            import_events(&store, &settings, &file, &source, rejected)
        }
        Command::Traits { command: TraitsCommand::Rebuild { store } } => {
            let store = store.open(&settings)?;
            let count = store.blocking().rebuild_traits(&settings.ingest)?;
            eprintln!("rebuilt the traits of {count} customers from the event log");
            Ok(())
        }
        Command::Bench { command } => crate::demo::bench(command, &settings),
    }
}

/// Create an API key; returns the secret (shown once) and the stored key.
pub fn create_key(
    store: &Store,
    role: Role,
    name: Option<String>,
    source: Option<String>,
) -> anyhow::Result<(String, ApiKey)> {
    let (secret, hash) = new_api_key_secret();
    let key_id = KeyId::new();
    let key = ApiKey { key_id, role, source: source.unwrap_or_else(|| key_id.to_string()), name };
    store.blocking().insert_api_key(&hash, &key)?;
    Ok((secret, key))
}

async fn serve(store: Store, settings: Settings, listen: SocketAddr, admin_key: Option<String>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
        format!("cannot listen on {listen}; is another server using it? choose another with --listen")
    })?;
    let address = listener.local_addr()?;
    println!("relais is serving on http://{address} ({} engine)", store.engine_name());
    if let Some(key) = admin_key {
        println!("admin API key: {key}");
        println!("try: curl -H 'Authorization: Bearer {key}' 'http://{address}/api/v1/customers?q=camille.martin0@example.fr'");
    }
    let _ = std::io::stdout().flush();
    let state = AppState::new(store, settings);
    crate::http::launch(listener, state, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut signal) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            signal.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

fn import_events(
    store: &Store,
    settings: &Settings,
    file: &PathBuf,
    source: &str,
    rejected: Option<PathBuf>,
) -> anyhow::Result<()> {
    let input = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let size = input.metadata().map(|m| m.len()).unwrap_or(0);
    let rejected_path = rejected.unwrap_or_else(|| {
        let mut name = file.clone().into_os_string();
        name.push(".rejected.jsonl");
        PathBuf::from(name)
    });
    let mut rejected_file: Option<std::io::BufWriter<std::fs::File>> = None;
    let progress = indicatif::ProgressBar::new(size);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let reader = std::io::BufReader::new(input);
    let (mut stored, mut duplicates, mut rejected_count) = (0usize, 0usize, 0usize);
    let mut chunk: Vec<TrackingMessage> = Vec::new();
    let flush = |chunk: &mut Vec<TrackingMessage>, stored: &mut usize, duplicates: &mut usize| -> anyhow::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        for outcome in store.blocking().ingest(source, std::mem::take(chunk))? {
            match outcome {
                Outcome::Stored { .. } => *stored += 1,
                Outcome::Duplicate { .. } => *duplicates += 1,
            }
        }
        Ok(())
    };
    for (number, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read line {} of {}", number + 1, file.display()))?;
        progress.inc(line.len() as u64 + 1);
        if line.trim().is_empty() {
            continue;
        }
        let envelope = Envelope {
            received_at: Utc::now(),
            implied_type: None,
            batch_sent_at: None,
            batch_context: None,
            default_currency: &settings.ingest.currency,
        };
        match TrackingMessage::parse_json(&line, &envelope) {
            Ok(message) => {
                chunk.push(message);
                if chunk.len() >= 5_000 {
                    flush(&mut chunk, &mut stored, &mut duplicates)?;
                }
            }
            Err(reason) => {
                rejected_count += 1;
                let out = match &mut rejected_file {
                    Some(out) => out,
                    None => rejected_file.insert(std::io::BufWriter::new(
                        std::fs::File::create(&rejected_path)
                            .with_context(|| format!("cannot create {}", rejected_path.display()))?,
                    )),
                };
                let record = serde_json::json!({"line": number + 1, "reason": reason.to_string(), "message": line});
                writeln!(out, "{record}")?;
            }
        }
    }
    flush(&mut chunk, &mut stored, &mut duplicates)?;
    progress.finish_and_clear();
    if let Some(mut out) = rejected_file {
        out.flush()?;
    }
    eprintln!("{stored} stored, {duplicates} duplicates, {rejected_count} rejected");
    if rejected_count > 0 {
        eprintln!("rejected lines and their reasons: {}", rejected_path.display());
    }
    if stored + duplicates == 0 && rejected_count > 0 {
        bail!("no line of {} could be imported", file.display());
    }
    Ok(())
}
