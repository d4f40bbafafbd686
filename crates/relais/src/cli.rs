//! The command line: `relais serve`, `demo`, `keys create`, `portal link`, `import events`,
//! `traits rebuild`, `bench ingest`, `journey whatif|attribute|model`. `anyhow`
//! lives here, at the binary's edge.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};
use relais_domain::{KeyId, Role};

use crate::config::Settings;
use crate::http::AppState;
use crate::store::{new_api_key_secret, ApiKey, Location, Store};

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
    /// Manage back-office users (who sign in to the pages at /app).
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// The customers' portal (/me).
    Portal {
        #[command(subcommand)]
        command: PortalCommand,
    },
    /// Import files.
    Import {
        #[command(subcommand)]
        command: ImportCommand,
    },
    /// The outbox of side effects (e-mail).
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Identity resolution.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Data-subject rights.
    Privacy {
        #[command(subcommand)]
        command: PrivacyCommand,
    },
    /// Consents.
    Consent {
        #[command(subcommand)]
        command: ConsentCommand,
    },
    /// Backups (with the erasure journal that a restore re-applies).
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Security: the risk register.
    Security {
        #[command(subcommand)]
        command: SecurityCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Customer lifetime value: fit BG/NBD and Gamma-Gamma, forecast every customer.
    Clv {
        #[command(subcommand)]
        command: ClvCommand,
    },
    /// RFM scores of every buyer from the database's orders: counts per named
    /// group as JSON, and each customer's scores into a CSV file.
    Rfm {
        #[command(flatten)]
        store: StoreArgs,
        /// The reference instant (ISO 8601); default: now.
        #[arg(long)]
        at: Option<chrono::DateTime<chrono::Utc>>,
        /// Write each buyer's values, scores and group to this CSV file.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Loyalty programmes, members, statements, expiry and the ledger check.
    Loyalty {
        #[command(subcommand)]
        command: LoyaltyCommand,
    },
    /// Segments: check, preview, save, list, members, overlap, refresh (the
    /// language is in docs/segments.md; `relais segment fields` lists its fields).
    Segment {
        #[command(subcommand)]
        command: SegmentCommand,
    },
    /// Typologies: named sets of segments with their size, revenue, mean
    /// lifetime value and satisfaction, against the previous period.
    Typology {
        #[command(subcommand)]
        command: TypologyCommand,
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
    /// Customer journeys across channels: stage models, what-ifs, attribution.
    Journey {
        #[command(subcommand)]
        command: JourneyCommand,
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
    /// Print a new random master key (base64) on stdout, for RELAIS_MASTER_KEY or a key file.
    NewMaster,
    /// Re-wrap the database's keys with a new master key; servers keep running and
    /// must be started with the new key from then on. Prints the new key's fingerprint.
    RotateMaster {
        #[command(flatten)]
        store: StoreArgs,
        /// File holding the new master key (from `relais keys new-master`).
        #[arg(long)]
        new_key_file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Create a user and print a generated password on stdout (and nothing else).
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// The user's e-mail address (their login).
        #[arg(long)]
        email: String,
        /// Role: admin, dpo, marketing, analyst, agent, store or ingest.
        #[arg(long)]
        role: String,
    },
}

#[derive(Debug, Subcommand)]
enum PortalCommand {
    /// Make a one-time sign-in link for a customer (valid 24 hours) and print
    /// only its URL on stdout, for staff to hand over.
    Link {
        #[command(flatten)]
        store: StoreArgs,
        /// The customer's identifier, `kind:value` (`email:marie@exemple.fr`, `card:9251…`).
        #[arg(long)]
        identifier: String,
    },
}

#[derive(Debug, Subcommand)]
enum ImportCommand {
    /// Import Segment messages: JSONL (one message per line) or CSV whose header
    /// names Segment fields (`type,userId,event,properties.total,…`).
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
    /// Import customers from CSV: identifier columns (user_id, email, phone,
    /// customer_number, card_number) and any other column as a profile trait.
    Customers {
        #[command(flatten)]
        store: StoreArgs,
        /// The CSV file.
        file: PathBuf,
        /// Where rejected rows go, with their reasons (default: FILE.rejected.jsonl).
        #[arg(long)]
        rejected: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Queue a test e-mail and deliver it now, to check the mail settings
    /// (RELAIS_SMTP_URL, RELAIS_MAIL_FROM; without SMTP, files in DATA/outbox).
    SendTest {
        #[command(flatten)]
        store: StoreArgs,
        /// Recipient.
        #[arg(long)]
        to: String,
    },
    /// Deliver every due message once.
    Deliver {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List messages, newest first, as JSON lines.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// pending, delivered or failed.
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Undo a merge (ids from GET /api/v1/customers/{id}/merges); prints what went where as JSON.
    Unmerge {
        #[command(flatten)]
        store: StoreArgs,
        /// The merge id, `mrg_…`.
        merge_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum PrivacyCommand {
    /// Enforce each data class's retention now (serve does it every hour);
    /// prints what was purged as JSON.
    Retention {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Record a data-subject rights request (due one month later); prints it as JSON.
    Request {
        #[command(flatten)]
        store: StoreArgs,
        /// access, portability, rectification, erasure, restriction or objection.
        #[arg(long)]
        kind: String,
        /// Any identifier of the person, `kind:value`.
        #[arg(long)]
        identifier: String,
    },
    /// List rights requests, soonest deadline first, as JSON lines.
    Requests {
        #[command(flatten)]
        store: StoreArgs,
        /// open, done or refused.
        #[arg(long)]
        status: Option<String>,
    },
    /// Carry out an open request (access and portability write the archive).
    Complete {
        #[command(flatten)]
        store: StoreArgs,
        /// The request id, `req_…`.
        request_id: String,
        /// Where to write the archive of an access or portability request.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Write everything held about a person into a zip archive of JSON and CSV
    /// files (access and portability); prints the file's path.
    Export {
        #[command(flatten)]
        store: StoreArgs,
        /// Any identifier of the person, `kind:value`.
        #[arg(long)]
        identifier: String,
        /// The archive to write (default: relais-export-CUSTOMER.zip).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Erase a person (profile, identifiers, personal data; events kept
    /// de-identified; data keys destroyed); prints what was erased as JSON.
    Erase {
        #[command(flatten)]
        store: StoreArgs,
        /// Any identifier of the person, `kind:value`.
        #[arg(long)]
        identifier: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConsentCommand {
    /// Print a person's consents as of a date (now by default) and their history, as JSON.
    Show {
        #[command(flatten)]
        store: StoreArgs,
        /// Any identifier of the person, `kind:value`.
        #[arg(long)]
        identifier: String,
        /// The date, ISO 8601 (default: now).
        #[arg(long)]
        at: Option<chrono::DateTime<chrono::Utc>>,
    },
}

#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// Copy the database into a file (SQLite's online backup, or pg_dump), while it serves.
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// The backup file to write.
        #[arg(long)]
        output: PathBuf,
    },
    /// Replace the database by a backup, then erase again everyone the erasure
    /// journal lists (stop the servers first).
    Restore {
        #[command(flatten)]
        store: StoreArgs,
        /// The backup file.
        #[arg(long)]
        input: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SecurityCommand {
    /// Print the risk register: data classes, their fields, readers,
    /// encryption, masks, retention and risk; parts of the application; fields
    /// seen in events that have no class yet.
    Report {
        #[command(flatten)]
        store: StoreArgs,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Remove, for retention, the closed segments of days before `--before`
    /// (verify tells them from tampering); prints the segments removed.
    Purge {
        #[command(flatten)]
        store: StoreArgs,
        /// The first day to keep, YYYY-MM-DD (UTC).
        #[arg(long)]
        before: chrono::NaiveDate,
    },
    /// Check the hash chain of every segment against the heads kept outside the
    /// database (RELAIS_AUDIT_DIR); prints the findings and fails if any.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ClvCommand {
    /// Fit the models on a transaction file (customer id, date, amount) or on
    /// the database's orders; print one JSON object with the parameters.
    Fit {
        #[command(flatten)]
        store: StoreArgs,
        /// A transaction file with a header naming customer_id, date and amount
        /// (CSV, or columns separated by spaces); without it, the database's orders.
        #[arg(long)]
        transactions: Option<PathBuf>,
        /// Last day of the calibration period (YYYY-MM-DD); later purchases are ignored.
        #[arg(long)]
        calibration_end: NaiveDate,
        /// Horizon of the forecasts, in weeks.
        #[arg(long, default_value_t = 52.0)]
        horizon_weeks: f64,
        /// Write each customer's forecast (probability alive, expected purchases, value) to this CSV file.
        #[arg(long)]
        predictions: Option<PathBuf>,
        /// Currency of the file's amounts (the organisation's by default).
        #[arg(long)]
        currency: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum LoyaltyCommand {
    /// Add a programme or change its rules from a TOML file (a bad file changes nothing).
    Apply {
        #[command(flatten)]
        store: StoreArgs,
        /// The programme file.
        file: PathBuf,
    },
    /// Enrol a person and print the membership with its card number, as JSON.
    Enrol {
        #[command(flatten)]
        store: StoreArgs,
        /// Any identifier of the person, `kind:value`.
        #[arg(long)]
        identifier: String,
        /// The programme's key (needed when there are several).
        #[arg(long)]
        programme: Option<String>,
    },
    /// Print a member's statement: every entry with its reason.
    Statement {
        #[command(flatten)]
        store: StoreArgs,
        /// The member id, `mem_…`.
        #[arg(long)]
        member: String,
        /// `fr` or `en`.
        #[arg(long, default_value = "fr")]
        lang: String,
    },
    /// Release reward reservations whose hold is over, expire the points whose expiry day has come and
    /// review tiers, e-mailing members their notices, downgrades and upgrades (`serve` does all of it every hour).
    Expire {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Add a reward to the catalogue or change it, from a TOML file (id, name, cost, stock…).
    Reward {
        #[command(flatten)]
        store: StoreArgs,
        /// The reward file.
        file: PathBuf,
        /// The programme's key (needed when there are several).
        #[arg(long)]
        programme: Option<String>,
    },
    /// Create a coupon campaign from a TOML file and issue codes into a CSV file
    /// (the only copy of the codes: relais keeps their keyed hashes). Dates are
    /// quoted: `valid_from = "2026-06-01"`.
    Coupons {
        #[command(flatten)]
        store: StoreArgs,
        /// The campaign file (id, benefit, valid_from, valid_until, per_member, total…).
        file: PathBuf,
        /// Codes to issue.
        #[arg(long)]
        count: usize,
        /// Where to write the codes.
        #[arg(long)]
        output: PathBuf,
        /// The programme's key (needed when there are several).
        #[arg(long)]
        programme: Option<String>,
    },
    /// Print the programme's liability, earn and burn by rule and store, and breakage, as JSON.
    Report {
        #[command(flatten)]
        store: StoreArgs,
        /// The programme's key (needed when there are several).
        #[arg(long)]
        programme: Option<String>,
        /// First day counted in the flows (YYYY-MM-DD); default: since the start.
        #[arg(long)]
        since: Option<NaiveDate>,
    },
    /// Check the ledger's invariants (zero sum, balanced transactions, balances).
    Check {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
enum SegmentCommand {
    /// Check a segment's source; errors show where and what was expected.
    Check {
        #[command(flatten)]
        store: StoreArgs,
        /// The segment, for example 'orders_90d >= 2 and city = "Lyon"'.
        source: String,
    },
    /// Evaluate a source over every profile now, without saving it.
    Preview {
        #[command(flatten)]
        store: StoreArgs,
        /// The segment's source.
        source: String,
        /// How many members to list.
        #[arg(long, default_value_t = 10)]
        sample: usize,
    },
    /// Save a segment (or change an existing one's source) and evaluate it.
    Save {
        #[command(flatten)]
        store: StoreArgs,
        /// Its name (letters, digits, `-`, `_`).
        name: String,
        /// Its source.
        source: String,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Every saved segment with its size.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Export a segment's members (customer id and entry date) as CSV or JSONL.
    Members {
        #[command(flatten)]
        store: StoreArgs,
        /// The segment.
        name: String,
        /// csv or jsonl.
        #[arg(long, default_value = "csv")]
        format: String,
        /// Write to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// How many people two segments share.
    Overlap {
        #[command(flatten)]
        store: StoreArgs,
        /// One segment.
        a: String,
        /// The other.
        b: String,
    },
    /// Delete a segment and its memberships.
    Delete {
        #[command(flatten)]
        store: StoreArgs,
        /// The segment.
        name: String,
    },
    /// Score RFM, then evaluate every saved segment over every profile
    /// (`relais serve` does this every night; windows move with time alone).
    Refresh {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// The fields and functions of the language.
    Fields,
}

#[derive(Debug, Subcommand)]
enum TypologyCommand {
    /// Save a typology (or give an existing one new segments).
    Save {
        #[command(flatten)]
        store: StoreArgs,
        /// Its name.
        name: String,
        /// Its saved segments, comma-separated, in order.
        #[arg(long, value_delimiter = ',', required = true)]
        segments: Vec<String>,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Every typology.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// A typology's figures over the last period against the previous one.
    Report {
        #[command(flatten)]
        store: StoreArgs,
        /// The typology.
        name: String,
        /// Length of the period, days.
        #[arg(long, default_value_t = 30)]
        period_days: i64,
    },
    /// Delete a typology (its segments stay).
    Delete {
        #[command(flatten)]
        store: StoreArgs,
        /// The typology.
        name: String,
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
        Command::Serve { store: args, listen } => {
            let store = args.open(&settings)?;
            runtime()?.block_on(serve(store, settings, listen, None, &args.data))
        }
        Command::Demo { store: args, listen, no_serve, people, events, seed } => {
            let opened = args.open(&settings)?;
            crate::demo::load(&opened, &settings, crate::demo::DemoSize { people, events, seed })?;
            let (secret, _) = create_key(&opened, Role::Admin, Some("demo admin".into()), None)?;
            let (user, password) = demo_user(&opened)?;
            let demo = DemoAccess { key: secret, email: user, password };
            if no_serve {
                println!("admin API key: {}", demo.key);
                println!("back office: sign in as {} with password {}", demo.email, demo.password);
                return Ok(());
            }
            runtime()?.block_on(serve(opened, settings, listen, Some(demo), &args.data))
        }
        Command::Keys { command: KeysCommand::Create { store, role, name, source } } => {
            let role = Role::parse(&role).with_context(|| {
                format!("unknown role `{role}`; use one of admin, dpo, marketing, analyst, agent, store, ingest")
            })?;
            let store = store.open(&settings)?;
            let (secret, _) = create_key(&store, role, name, source)?;
            store.close_audit()?;
            println!("{secret}");
            Ok(())
        }
        Command::Users { command: UsersCommand::Create { store, email, role } } => {
            let role = Role::parse(&role).with_context(|| {
                format!("unknown role `{role}`; use one of admin, dpo, marketing, analyst, agent, store, ingest")
            })?;
            let store = store.open(&settings)?;
            let (_, password) = crate::users::create(&store, &cli_actor(), &email, role)?;
            store.close_audit()?;
            println!("{password}");
            Ok(())
        }
        Command::Portal { command: PortalCommand::Link { store, identifier } } => {
            let identifier = relais_domain::Identifier::parse(&identifier)
                .with_context(|| format!("`{identifier}` is not an identifier (kind:value)"))?;
            let store = store.open(&settings)?;
            let base = settings.public_url.clone();
            let url = store
                .blocking_audited(|engine, audit| {
                    crate::web::portal::create_link(engine, audit, &cli_actor(), &identifier, &base)
                })
                .map_err(|e| match e {
                    crate::store::StoreError::NotFound => anyhow::anyhow!("nobody holds `{identifier}`"),
                    other => other.into(),
                })?;
            store.close_audit()?;
            println!("{url}");
            Ok(())
        }
        Command::Keys { command: KeysCommand::NewMaster } => {
            println!("{}", crate::privacy::MasterKey::generate().encode());
            Ok(())
        }
        Command::Keys { command: KeysCommand::RotateMaster { store: args, new_key_file } } => {
            rotate_master(&args, &settings, &new_key_file)
        }
        Command::Import { command: ImportCommand::Events { store, file, source, rejected } } => {
            let store = store.open(&settings)?;
            let rejected = rejected.unwrap_or_else(|| crate::import::default_rejected_path(&file, "jsonl"));
            let summary = crate::import::import_events(&store, &settings, &file, &source, rejected.clone())?;
            report_import(&file, &rejected, summary)
        }
        Command::Import { command: ImportCommand::Customers { store, file, rejected } } => {
            let store = store.open(&settings)?;
            let rejected = rejected.unwrap_or_else(|| crate::import::default_rejected_path(&file, "jsonl"));
            let summary = crate::import::import_customers(&store, &settings, &file, rejected.clone())?;
            report_import(&file, &rejected, summary)
        }
        Command::Outbox { command } => outbox_command(command, &settings),
        Command::Identity { command: IdentityCommand::Unmerge { store, merge_id } } => {
            let merge_id = relais_domain::MergeId::parse(&merge_id)?;
            let store = store.open(&settings)?;
            store.audit(crate::privacy::audit::AuditEntry {
                actor: cli_actor(),
                action: "identity.unmerge".into(),
                subject: None,
                detail: serde_json::json!({ "merge_id": merge_id }),
            })?;
            let report = store.blocking().unmerge(merge_id, &settings.ingest)?;
            store.close_audit()?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Privacy { command: PrivacyCommand::Retention { store } } => {
            let store = store.open(&settings)?;
            let report = store
                .blocking_audited(|engine, audit| crate::privacy::retention::run(engine, audit, chrono::Utc::now()))?;
            store.close_audit()?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Privacy { command: PrivacyCommand::Request { store, kind, identifier } } => {
            let kind = relais_domain::rights::RightKind::parse(&kind).with_context(|| {
                format!(
                    "unknown right `{kind}`; use access, portability, rectification, erasure, restriction or objection"
                )
            })?;
            let identifier = relais_domain::Identifier::parse(&identifier)?;
            let store = store.open(&settings)?;
            let zone = settings.ingest.time_zone;
            let request = match store.blocking_audited(|engine, audit| {
                crate::privacy::rights::receive(engine, audit, &cli_actor(), kind, &identifier, zone)
            }) {
                Err(crate::store::StoreError::NotFound) => bail!("nobody holds `{identifier}`"),
                other => other?,
            };
            store.close_audit()?;
            println!("{}", serde_json::to_string_pretty(&request)?);
            Ok(())
        }
        Command::Privacy { command: PrivacyCommand::Requests { store, status } } => {
            let status = status
                .map(|s| {
                    relais_domain::rights::RequestStatus::parse(&s)
                        .with_context(|| format!("unknown status `{s}`; use open, done or refused"))
                })
                .transpose()?;
            let store = store.open(&settings)?;
            let now = chrono::Utc::now();
            for request in store.blocking().requests(status)? {
                let overdue = request.overdue(now);
                let mut line = serde_json::to_value(&request)?;
                line["overdue"] = serde_json::Value::Bool(overdue);
                println!("{line}");
            }
            Ok(())
        }
        Command::Privacy { command: PrivacyCommand::Complete { store, request_id, output } } => {
            let id = relais_domain::RequestId::parse(&request_id)?;
            let store = store.open(&settings)?;
            let completion = store
                .blocking_audited(|engine, audit| crate::privacy::rights::complete(engine, audit, &cli_actor(), id))?;
            store.close_audit()?;
            match completion {
                crate::privacy::rights::Completion::Archive(archive) => {
                    let output =
                        output.unwrap_or_else(|| PathBuf::from(format!("relais-export-{}.zip", archive.customer)));
                    std::fs::write(&output, &archive.bytes)
                        .with_context(|| format!("cannot write the archive {}", output.display()))?;
                    println!("{}", output.display());
                }
                crate::privacy::rights::Completion::Done(outcome) => {
                    println!("{}", serde_json::to_string_pretty(&outcome)?)
                }
            }
            Ok(())
        }
        Command::Privacy { command: PrivacyCommand::Export { store, identifier, output } } => {
            let archive =
                for_person(&store, &settings, &identifier, "privacy.export", crate::privacy::rights::export_person)?;
            let output = output.unwrap_or_else(|| PathBuf::from(format!("relais-export-{}.zip", archive.customer)));
            std::fs::write(&output, &archive.bytes)
                .with_context(|| format!("cannot write the archive {}", output.display()))?;
            eprintln!("{} events exported", archive.events);
            println!("{}", output.display());
            Ok(())
        }
        Command::Privacy { command: PrivacyCommand::Erase { store, identifier } } => {
            let report =
                for_person(&store, &settings, &identifier, "privacy.erase", crate::privacy::rights::erase_person)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Consent { command: ConsentCommand::Show { store, identifier, at } } => {
            let at = at.unwrap_or_else(chrono::Utc::now);
            let facts =
                for_person(&store, &settings, &identifier, "consent.read", |engine, _, id| engine.consents(id))?;
            let states = relais_domain::consent::state_at(&facts, at);
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "at": at, "consents": states, "history": facts }))?
            );
            Ok(())
        }
        Command::Backup { command: BackupCommand::Create { store: args, output } } => {
            let location = args.location()?;
            let store = args.open(&settings)?;
            store.audit(crate::privacy::audit::AuditEntry {
                actor: cli_actor(),
                action: "backup.create".into(),
                subject: None,
                detail: serde_json::json!({}),
            })?;
            let report = crate::privacy::backup::create(&store, &location, &output)?;
            store.close_audit()?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Backup { command: BackupCommand::Restore { store: args, input } } => {
            let location = args.location()?;
            let journal = crate::store::audit_dir(&location);
            let ingest = settings.ingest.clone();
            let report = crate::privacy::backup::restore(&location, &input, &journal, || {
                Store::open(&location, ingest.clone())
            })?;
            let store = args.open(&settings)?;
            store.audit(crate::privacy::audit::AuditEntry {
                actor: cli_actor(),
                action: "backup.restore".into(),
                subject: None,
                detail: serde_json::json!({ "erasures_reapplied": report.erasures_reapplied }),
            })?;
            store.close_audit()?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Security { command: SecurityCommand::Report { store, json } } => {
            let store = store.open(&settings)?;
            let report = crate::privacy::report::security_report(store.blocking())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", crate::privacy::report::render(&report));
            }
            Ok(())
        }
        Command::Audit { command: AuditCommand::Purge { store, before } } => {
            let store = store.open(&settings)?;
            let removed = crate::privacy::audit::purge(store.blocking(), store.audit_dir(), &before.to_string())?;
            store.audit(crate::privacy::audit::AuditEntry {
                actor: cli_actor(),
                action: "audit.purge".into(),
                subject: None,
                detail: serde_json::json!({ "before": before, "segments": removed.len() }),
            })?;
            store.close_audit()?;
            for segment in removed {
                println!("{segment}");
            }
            Ok(())
        }
        Command::Audit { command: AuditCommand::Verify { store } } => {
            let store = store.open(&settings)?;
            let report = crate::privacy::audit::verify(store.blocking(), store.audit_dir())?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.findings.is_empty() {
                bail!(
                    "the audit log was tampered with: {} finding(s) above (segment, record, what)",
                    report.findings.len()
                );
            }
            eprintln!(
                "audit log intact: {} records in {} segments ({} removed by retention)",
                report.records, report.segments, report.purged_segments
            );
            Ok(())
        }
        Command::Loyalty { command } => loyalty_command(command, &settings),
        Command::Segment { command } => segment_command(command, &settings),
        Command::Typology { command } => typology_command(command, &settings),
        Command::Clv { command } => clv_command(command, &settings),
        Command::Rfm { store, at, output } => {
            let now = at.unwrap_or_else(chrono::Utc::now);
            let purchases = store.open(&settings)?.blocking().purchases(&settings.ingest.currency)?;
            let scored = crate::clv::database_rfm(&purchases, now)?;
            if let Some(path) = output {
                crate::clv::write_rfm(&path, &scored)?;
                eprintln!("{} customers' scores written to {}", scored.len(), path.display());
            }
            println!(
                "{}",
                serde_json::json!({ "now": now, "customers": scored.len(), "groups": crate::clv::rfm_groups(&scored) })
            );
            Ok(())
        }
        Command::Traits { command: TraitsCommand::Rebuild { store } } => {
            let store = store.open(&settings)?;
            let count = store.blocking().rebuild_traits(&settings.ingest)?;
            eprintln!("rebuilt the traits of {count} customers from the event log");
            Ok(())
        }
        Command::Bench { command } => crate::demo::bench(command, &settings),
        Command::Journey { command } => journey_command(command, &settings),
    }
}

/// `relais keys rotate-master`: re-wrap the keyring; when the old key was the
/// data folder's own `master.key`, the file is replaced by the new key.
fn rotate_master(args: &StoreArgs, settings: &Settings, new_key_file: &std::path::Path) -> anyhow::Result<()> {
    let new = crate::privacy::MasterKey::from_file(new_key_file, false)?;
    let location = args.location()?;
    let old = crate::store::master_key(&location)?;
    if old.fingerprint() == new.fingerprint() {
        bail!("the new master key is the one in use; make one with `relais keys new-master`");
    }
    let store = args.open(settings)?;
    store.audit(crate::privacy::audit::AuditEntry {
        actor: cli_actor(),
        action: "keys.rotate_master".into(),
        subject: None,
        detail: serde_json::json!({ "old_fingerprint": old.fingerprint(), "new_fingerprint": new.fingerprint() }),
    })?;
    store.blocking().rotate_master(&old, &new)?;
    store.close_audit()?;
    let uses_folder_file = std::env::var_os("RELAIS_MASTER_KEY").is_none()
        && std::env::var_os("RELAIS_MASTER_KEY_FILE").is_none()
        && matches!(location, Location::Folder(_));
    if let (true, Location::Folder(folder)) = (uses_folder_file, &location) {
        let file = folder.join("master.key");
        let aside = folder.join("master.key.new");
        let _ = std::fs::remove_file(&aside);
        crate::privacy::keyring::write_private(&aside, &new.encode())?;
        std::fs::rename(&aside, &file)?;
        eprintln!("{} now holds the new master key", file.display());
    } else {
        eprintln!("start relais with the new key from now on (RELAIS_MASTER_KEY or RELAIS_MASTER_KEY_FILE), then destroy the old one");
    }
    println!("master key rotated; new fingerprint {}", new.fingerprint());
    Ok(())
}

/// Carry out `right` for whoever holds `identifier` (recorded in the audit log
/// as `action` first), then close this run's audit segment.
fn for_person<T>(
    args: &StoreArgs,
    settings: &Settings,
    identifier: &str,
    action: &str,
    right: fn(
        &dyn crate::store::Engine,
        &crate::store::Audit<'_>,
        relais_domain::CustomerId,
    ) -> Result<T, crate::store::StoreError>,
) -> anyhow::Result<T> {
    let identifier = relais_domain::Identifier::parse(identifier)?;
    let store = args.open(settings)?;
    let result = match store.blocking_audited(|engine, audit| {
        crate::privacy::rights::carry_out(engine, audit, &cli_actor(), action, &identifier, right)
    }) {
        Err(crate::store::StoreError::NotFound) => bail!("nobody holds `{identifier}`; nothing was done"),
        other => other?,
    };
    store.close_audit()?;
    Ok(result)
}

/// `relais clv fit`.
fn clv_command(command: ClvCommand, settings: &Settings) -> anyhow::Result<()> {
    let ClvCommand::Fit { store, transactions, calibration_end, horizon_weeks, predictions, currency } = command;
    anyhow::ensure!(
        horizon_weeks.is_finite() && horizon_weeks > 0.0 && horizon_weeks <= 520.0,
        "--horizon-weeks must be above 0 and at most 520 (ten years)"
    );
    let currency = currency.unwrap_or_else(|| settings.ingest.currency.clone()).to_ascii_uppercase();
    let (rows, rejected) = match &transactions {
        Some(file) => crate::clv::read_transactions(file, &currency)?,
        None => {
            let store = store.open(settings)?;
            let purchases = store.blocking().purchases(&currency)?;
            let rows = purchases
                .into_iter()
                .map(|(customer, at, amount)| relais_domain::clv::Transaction {
                    customer: customer.to_string(),
                    date: settings.ingest.day_of(at),
                    amount_cents: amount,
                })
                .collect();
            (rows, Vec::new())
        }
    };
    for row in rejected.iter().take(20) {
        eprintln!("line {}: {}", row.line, row.reason);
    }
    if rejected.len() > 20 {
        eprintln!("… and {} more rejected rows", rejected.len() - 20);
    }
    let (report, forecasts) = crate::clv::fit(&rows, calibration_end, horizon_weeks, &currency)
        .map_err(|e| anyhow::anyhow!("cannot fit the models: {e}"))?;
    if let Some(path) = predictions {
        crate::clv::write_forecasts(&path, &forecasts, &currency)?;
        eprintln!("{} forecasts written to {}", forecasts.len(), path.display());
    }
    let mut json = serde_json::to_value(&report)?;
    json["transactions"] = serde_json::json!(rows.len());
    json["rejected_rows"] = serde_json::json!(rejected.len());
    println!("{json}");
    Ok(())
}

/// `relais loyalty …`.
fn loyalty_command(command: LoyaltyCommand, settings: &Settings) -> anyhow::Result<()> {
    use relais_domain::loyalty::Lang;
    let today = settings.ingest.day_of(chrono::Utc::now());
    match command {
        LoyaltyCommand::Apply { store, file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let programme = crate::loyalty::parse_programme(&text, crate::loyalty::FileFormat::Toml)
                .map_err(|e| anyhow::anyhow!("{}: {e}; nothing was changed", file.display()))?;
            let store = store.open(settings)?;
            let key = programme.head.key.clone();
            let applied = store.blocking_audited(|engine, audit| {
                crate::loyalty::apply(engine, audit, &cli_actor(), &programme, today)
            })?;
            store.close_audit()?;
            match applied {
                Ok(revision) => {
                    println!("programme `{key}` applied ({} versions, revision {revision})", programme.versions.len());
                    Ok(())
                }
                Err(refused) => bail!(
                    "{}: {}; nothing was changed",
                    file.display(),
                    crate::loyalty::change_refused(&text, crate::loyalty::FileFormat::Toml, refused)
                ),
            }
        }
        LoyaltyCommand::Enrol { store, identifier, programme } => {
            let identifier = relais_domain::Identifier::parse(&identifier)?;
            let store = store.open(settings)?;
            let engine = store.blocking();
            let key = only_programme(engine, programme)?;
            let customer = engine
                .customer_id_by_identifier(&identifier)?
                .ok_or_else(|| anyhow::anyhow!("nobody holds `{identifier}`; nothing was done"))?;
            let (view, created) = store.blocking_audited(|engine, audit| {
                let (view, created) = engine.loyalty_enrol(customer, &key)?;
                if created {
                    audit.record(
                        &cli_actor(),
                        "loyalty.enrol",
                        Some(view.customer),
                        serde_json::json!({ "member": view.row.member.to_string(), "programme": key }),
                    )?;
                }
                Ok((view, created))
            })?;
            store.close_audit()?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "id": view.row.member.to_string(), "customer": view.customer.to_string(),
                    "programme": view.row.programme, "card_number": view.card_number,
                    "balance": view.row.balance, "created": created,
                }))?
            );
            Ok(())
        }
        LoyaltyCommand::Statement { store, member, lang } => {
            let lang = Lang::parse(&lang).ok_or_else(|| anyhow::anyhow!("--lang must be fr or en"))?;
            let member: relais_domain::MemberId = member.parse()?;
            let store = store.open(settings)?;
            let (view, entries) = store.blocking_audited(|engine, audit| {
                let view = engine.loyalty_member(member)?.ok_or(crate::store::StoreError::NotFound)?;
                audit.record(
                    &cli_actor(),
                    "loyalty.read",
                    Some(view.customer),
                    serde_json::json!({ "member": member }),
                )?;
                Ok((view, engine.loyalty_entries(member)?.entries))
            })?;
            store.close_audit()?;
            let unit = store
                .blocking()
                .loyalty_programmes()?
                .into_iter()
                .find(|p| p.head.key == view.row.programme)
                .map(|p| p.head.unit)
                .unwrap_or_else(|| "points".into());
            for entry in entries {
                println!(
                    "{}  {}",
                    entry.created_at.format("%Y-%m-%d %H:%M"),
                    entry.reason.render(entry.points, &unit, lang)
                );
            }
            println!("balance: {} {unit}", view.row.balance);
            Ok(())
        }
        LoyaltyCommand::Expire { store } => {
            let store = store.open(settings)?;
            let done = store.blocking_audited(|engine, audit| {
                crate::loyalty::run_scheduled(engine, audit, &cli_actor(), today, true)
            })?;
            store.close_audit()?;
            println!(
                "{} points expired for {} members; {} tier changes; {} reservations released ({} points given back)",
                done.points, done.members, done.tier_changes, done.reservations_released, done.points_released
            );
            Ok(())
        }
        LoyaltyCommand::Reward { store, file, programme } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let reward: relais_domain::loyalty::rewards::Reward =
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            reward.check().map_err(|(field, reason)| anyhow::anyhow!("{}: {field}: {reason}", file.display()))?;
            let store = store.open(settings)?;
            let key = only_programme(store.blocking(), programme)?;
            let left = store.blocking_audited(|engine, audit| {
                let left = engine.loyalty_put_reward(&key, &reward)?;
                audit.record(
                    &cli_actor(),
                    "loyalty.reward.put",
                    None,
                    serde_json::json!({ "programme": key, "reward": reward.id }),
                )?;
                Ok(left)
            })?;
            store.close_audit()?;
            match left {
                Some(left) => println!("reward `{}` saved; {left} left in stock", reward.id),
                None => println!("reward `{}` saved; unlimited stock", reward.id),
            }
            Ok(())
        }
        LoyaltyCommand::Coupons { store, file, count, output, programme } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let campaign: relais_domain::loyalty::coupons::Campaign =
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            campaign.check().map_err(|(field, reason)| anyhow::anyhow!("{}: {field}: {reason}", file.display()))?;
            anyhow::ensure!((1..=100_000).contains(&count), "--count must be 1 to 100000");
            anyhow::ensure!(!output.exists(), "{} exists; choose a new file for the codes", output.display());
            let store = store.open(settings)?;
            let key = only_programme(store.blocking(), programme)?;
            let unknown = crate::loyalty::unknown_segments(store.blocking(), &campaign.segments)?;
            anyhow::ensure!(
                unknown.is_empty(),
                "{}: segments: {}",
                file.display(),
                crate::loyalty::unknown_segments_reason(&unknown)
            );
            let (codes, issued, used) = store.blocking_audited(|engine, audit| {
                crate::loyalty::issue_coupons(engine, audit, &cli_actor(), &key, &campaign, count)
            })?;
            store.close_audit()?;
            let mut writer = csv::Writer::from_path(&output)?;
            writer.write_record(["campaign", "code"])?;
            for code in &codes {
                writer.write_record([campaign.id.as_str(), code.printed().as_str()])?;
            }
            writer.flush()?;
            println!(
                "{count} codes written to {}; campaign `{}`: {issued} issued, {used} used",
                output.display(),
                campaign.id
            );
            Ok(())
        }
        LoyaltyCommand::Report { store, programme, since } => {
            let store = store.open(settings)?;
            let engine = store.blocking();
            let key = only_programme(engine, programme)?;
            let programmes = engine.loyalty_programmes()?;
            let programme = programmes.iter().find(|p| p.head.key == key).expect("found above");
            let rows = engine.loyalty_report(&programme.head.key, since)?;
            let report = crate::store::loyalty::LoyaltyReport::from_rows(programme, since, rows);
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        LoyaltyCommand::Check { store } => {
            let check = store.open(settings)?.blocking().loyalty_check()?;
            println!("{}", serde_json::to_string_pretty(&check)?);
            if !check.holds() {
                bail!("the ledger's invariants do not hold (see above)");
            }
            Ok(())
        }
    }
}

/// The programme named, or the only one.
fn only_programme(engine: &dyn crate::store::Engine, programme: Option<String>) -> anyhow::Result<String> {
    Ok(crate::loyalty::choose_programme(&engine.loyalty_programmes()?, programme)?)
}

/// Who the command line is in the audit log: `cli:` and the OS user.
fn segment_command(command: SegmentCommand, settings: &Settings) -> anyhow::Result<()> {
    use crate::segments;
    let now = chrono::Utc::now();
    let ingest = &settings.ingest;
    // The command line is the operator's: it reads as the admin role.
    let role = Role::Admin;
    fn shown<T>(source: &str, result: Result<T, segments::SegmentsError>) -> anyhow::Result<T> {
        result.map_err(|e| match e {
            segments::SegmentsError::Source(error) => anyhow::anyhow!("{}", segments::caret(source, &error)),
            other => anyhow::Error::from(other),
        })
    }
    match command {
        SegmentCommand::Check { store, source } => {
            let store = store.open(settings)?;
            let segment =
                shown(&source, segments::compile(store.blocking(), ingest, &source, role).map_err(Into::into))?;
            println!(
                "{}",
                serde_json::json!({"ok": true, "columns": segment.columns().len(), "moves_with_time": segment.moves_with_time()})
            );
        }
        SegmentCommand::Preview { store, source, sample } => {
            let store = store.open(settings)?;
            let preview = shown(&source, segments::preview(store.blocking(), ingest, &source, role, sample, now))?;
            println!("{}", serde_json::to_string_pretty(&preview)?);
        }
        SegmentCommand::Save { store, name, source, description } => {
            let store = store.open(settings)?;
            let (record, change) =
                shown(&source, segments::save(store.blocking(), ingest, &name, &source, &description, role, now))?;
            eprintln!(
                "segment `{}` saved: {} members ({} entered, {} left)",
                record.name, change.size, change.entered, change.exited
            );
            println!("{}", serde_json::to_string_pretty(&segments::SegmentView::from(&record))?);
        }
        SegmentCommand::List { store } => {
            let store = store.open(settings)?;
            let views: Vec<_> = store.blocking().segments()?.iter().map(segments::SegmentView::from).collect();
            println!("{}", serde_json::to_string_pretty(&views)?);
        }
        SegmentCommand::Members { store, name, format, output } => {
            let store = store.open(settings)?;
            let format = segments::ExportFormat::parse(&format)?;
            let mut out: Box<dyn std::io::Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let count = segments::export(store.blocking(), &name, format, &mut out)?;
            out.flush()?;
            eprintln!("{count} members of `{name}` exported");
        }
        SegmentCommand::Overlap { store, a, b } => {
            let store = store.open(settings)?;
            println!("{}", serde_json::to_string_pretty(&segments::overlap(store.blocking(), &a, &b)?)?);
        }
        SegmentCommand::Delete { store, name } => {
            let store = store.open(settings)?;
            if !store.blocking().segment_delete(&name)? {
                bail!("no segment is named `{name}`; `relais segment list` shows them");
            }
            eprintln!("segment `{name}` deleted");
        }
        SegmentCommand::Refresh { store } => {
            let store = store.open(settings)?;
            let report = segments::refresh(store.blocking(), ingest, now)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        SegmentCommand::Fields => {
            for field in relais_domain::segment::field_catalogue() {
                println!("{:<34} {:<22} {}", field.name, field.kind, field.description);
            }
        }
    }
    Ok(())
}

fn typology_command(command: TypologyCommand, settings: &Settings) -> anyhow::Result<()> {
    use crate::typologies;
    let now = chrono::Utc::now();
    match command {
        TypologyCommand::Save { store, name, segments, description } => {
            let store = store.open(settings)?;
            let saved = typologies::save(store.blocking(), &name, &segments, &description, now)?;
            println!("{}", serde_json::to_string_pretty(&typologies::TypologyView::from(&saved))?);
        }
        TypologyCommand::List { store } => {
            let store = store.open(settings)?;
            let views: Vec<_> = store.blocking().typologies()?.iter().map(typologies::TypologyView::from).collect();
            println!("{}", serde_json::to_string_pretty(&views)?);
        }
        TypologyCommand::Report { store, name, period_days } => {
            let store = store.open(settings)?;
            let report = typologies::report(store.blocking(), &settings.ingest, &name, period_days, now)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        TypologyCommand::Delete { store, name } => {
            let store = store.open(settings)?;
            typologies::delete(store.blocking(), &name)?;
            eprintln!("typology `{name}` deleted");
        }
    }
    Ok(())
}

fn cli_actor() -> String {
    format!("cli:{}", std::env::var("USER").unwrap_or_default())
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
    store.audit(crate::privacy::audit::AuditEntry {
        actor: cli_actor(),
        action: "keys.create".into(),
        subject: None,
        detail: serde_json::json!({ "key_id": key_id, "role": role }),
    })?;
    store.blocking().insert_api_key(&hash, &key)?;
    Ok((secret, key))
}

/// What the demo hands its user: an admin API key and a back-office sign-in.
struct DemoAccess {
    key: String,
    email: String,
    password: String,
}

/// The demo's back-office administrator: `admin@relais.demo`, with a new
/// password at each run (a second run of the demo on the same folder gives
/// the next free address).
fn demo_user(store: &Store) -> anyhow::Result<(String, String)> {
    for n in 0..100 {
        let email = if n == 0 { "admin@relais.demo".to_string() } else { format!("admin{n}@relais.demo") };
        match crate::users::create(store, &cli_actor(), &email, Role::Admin) {
            Ok((user, password)) => return Ok((user.email, password)),
            Err(crate::users::UsersError::Store(crate::store::StoreError::Conflict(_))) => continue,
            Err(other) => return Err(other.into()),
        }
    }
    bail!("a hundred demo administrators exist already; use `relais users create`")
}

async fn serve(
    store: Store,
    settings: Settings,
    listen: SocketAddr,
    demo: Option<DemoAccess>,
    data: &std::path::Path,
) -> anyhow::Result<()> {
    let worker = settings.delivery_worker(store.clone(), data).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
        format!("cannot listen on {listen}; is another server using it? choose another with --listen")
    })?;
    let address = listener.local_addr()?;
    println!("relais is serving on http://{address} ({} engine)", store.engine_name());
    if let Some(DemoAccess { key, email, password }) = demo {
        println!("admin API key: {key}");
        println!("try: curl -H 'Authorization: Bearer {key}' 'http://{address}/api/v1/customers?q=camille.martin0@example.fr'");
        println!("back office: http://{address}/app — sign in as {email} with password {password}");
    }
    let _ = std::io::stdout().flush();
    let retention = chrono::Duration::days(settings.message_id_retention_days);
    let purging = store.clone();
    let calendar = settings.ingest.clone();
    let state = AppState::new(store.clone(), settings);
    let (stop_worker, worker_stopped) = tokio::sync::watch::channel(false);
    let delivery = tokio::spawn(worker.run(std::time::Duration::from_secs(1), worker_stopped));
    // Forget expired message ids hourly (decision 8); events are kept.
    let purge = tokio::spawn(async move {
        loop {
            let store = purging.clone();
            let before = chrono::Utc::now() - retention;
            match store.run(move |engine| engine.purge_message_ids(before)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(forgotten = n, "expired message ids purged"),
                Err(error) => tracing::warn!(%error, "message id purge failed; will retry"),
            }
            // Each data class's retention (personal: inactive people erased).
            let retained = purging.clone();
            let now = chrono::Utc::now();
            match retained.run_audited(move |engine, audit| crate::privacy::retention::run(engine, audit, now)).await {
                Ok(report) => tracing::info!(?report, "retention enforced"),
                Err(error) => tracing::warn!(%error, "retention purge failed; will retry"),
            }
            // Loyalty: reservations past their hold, points whose expiry day
            // has come, the tier review (and its e-mails), and answers kept
            // for idempotency keys past their 24 hours (kept 48).
            let expiring = purging.clone();
            let today = calendar.day_of(chrono::Utc::now());
            match expiring
                .run_audited(move |engine, audit| {
                    let done = crate::loyalty::run_scheduled(engine, audit, "system", today, false)?;
                    engine.loyalty_forget_answers(chrono::Utc::now() - chrono::Duration::hours(48))?;
                    if done.reservations_released > 0 {
                        tracing::info!(released = done.reservations_released, "loyalty reservations released");
                    }
                    Ok(done.points)
                })
                .await
            {
                Ok(0) => {}
                Ok(points) => tracing::info!(points, "loyalty points expired"),
                Err(error) => tracing::warn!(%error, "loyalty expiry failed; will retry"),
            }
            // Segments: a full evaluation once a day, since windows move with time alone.
            let refreshing = purging.clone();
            let calendar = calendar.clone();
            match refreshing
                .run(move |engine| {
                    crate::segments::refresh_if_due(engine, &calendar, chrono::Utc::now())
                        .map_err(|e| crate::store::StoreError::Database(e.to_string()))
                })
                .await
            {
                Ok(Some(report)) => tracing::info!(segments = report.segments.len(), "segments refreshed"),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "segment refresh failed; will retry"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    });
    crate::http::launch(listener, state, shutdown_signal()).await?;
    let _ = stop_worker.send(true);
    let _ = delivery.await;
    purge.abort();
    let closing = store.clone();
    tokio::task::spawn_blocking(move || closing.close_audit()).await??;
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

fn report_import(
    file: &std::path::Path,
    rejected: &std::path::Path,
    summary: crate::import::ImportSummary,
) -> anyhow::Result<()> {
    eprintln!("{} stored, {} duplicates, {} rejected", summary.stored, summary.duplicates, summary.rejected);
    if summary.rejected > 0 {
        eprintln!("rejected rows and their reasons: {}", rejected.display());
    }
    if summary.stored + summary.duplicates == 0 && summary.rejected > 0 {
        bail!("no row of {} could be imported", file.display());
    }
    Ok(())
}

fn outbox_command(command: OutboxCommand, settings: &Settings) -> anyhow::Result<()> {
    match command {
        OutboxCommand::SendTest { store: args, to } => {
            let store = args.open(settings)?;
            let worker = settings.delivery_worker(store.clone(), &args.data).map_err(anyhow::Error::msg)?;
            let email = crate::outbox::Email {
                to,
                subject: "relais: test message".into(),
                text: "This message checks that relais can send e-mail. / Ce message vérifie que relais peut envoyer des e-mails.".into(),
                unsubscribe_url: None,
            };
            let id = crate::outbox::enqueue_email(&store, None, &email)?;
            let report = worker.run_once()?;
            let item = store.blocking().outbox(None, 500)?.into_iter().find(|i| i.outbox_id == id);
            match item {
                Some(item) if item.status == crate::store::OutboxStatus::Delivered => {
                    eprintln!("delivered {id} ({} delivered in this pass)", report.delivered);
                    Ok(())
                }
                Some(item) => bail!(
                    "the test message {id} was not delivered: {}; it stays queued and will be retried",
                    item.last_error.unwrap_or_else(|| "unknown error".into())
                ),
                None => bail!("the test message {id} vanished from the outbox"),
            }
        }
        OutboxCommand::Deliver { store: args } => {
            let store = args.open(settings)?;
            let worker = settings.delivery_worker(store, &args.data).map_err(anyhow::Error::msg)?;
            let report = worker.run_once()?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        OutboxCommand::List { store: args, status, limit } => {
            let status = status
                .map(|s| {
                    crate::store::OutboxStatus::parse(&s)
                        .with_context(|| format!("unknown status `{s}`; use pending, delivered or failed"))
                })
                .transpose()?;
            let store = args.open(settings)?;
            for item in store.blocking().outbox(status, limit)? {
                println!("{}", serde_json::to_string(&item)?);
            }
            Ok(())
        }
    }
}

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    /// A readable table.
    Text,
    /// One JSON object.
    Json,
}

/// A what-if operator on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum WhatIfOp {
    /// A share of every choice goes to the channel, whatever the previous one.
    Mix,
    /// The channel gets the share in every row, the rest rescaled.
    Set,
    /// Replace the row of `--from` with `--row`.
    Edit,
}

#[derive(Debug, Subcommand)]
enum JourneyCommand {
    /// Apply a what-if to a stage model (MODEL.json) and compare with the baseline.
    Whatif {
        /// The model: {"channels", "stages", "initial", "transitions"}.
        model: PathBuf,
        /// The stage whose incoming transition changes.
        #[arg(long)]
        into: String,
        /// mix, set (share) or edit (a row by hand).
        #[arg(long, value_enum, default_value = "mix")]
        op: WhatIfOp,
        /// The channel that gets the share (mix, set).
        #[arg(long)]
        channel: Option<String>,
        /// The share, from 0 to 1 (mix, set).
        #[arg(long)]
        share: Option<f64>,
        /// The row to replace (edit): the previous stage's channel.
        #[arg(long)]
        from: Option<String>,
        /// The new row (edit): probabilities separated by commas, in the model's channel order.
        #[arg(long)]
        row: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// Attribute conversions to channels from a path file (ChannelAttribution
    /// format: path, total_conversions, total_conversion_value, total_null).
    Attribute {
        /// The CSV file of paths.
        file: PathBuf,
        /// Order of the Markov model, 1 to 4.
        #[arg(long, default_value_t = 1)]
        order: u32,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// Estimate a stage model from a journey file, or from the stored event log,
    /// and write MODEL.json.
    Model {
        #[command(flatten)]
        store: StoreArgs,
        /// Journey file: one event a row, journey_id, stage, channel (and optionally
        /// timestamp). Without it, the database's event log.
        #[arg(long)]
        journeys: Option<PathBuf>,
        /// Event log: first instant read (ISO 8601); default: the beginning.
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Event log: instant where reading stops (ISO 8601, excluded); default: no end.
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Event log: days without an event after which a journey ends.
        #[arg(long, default_value_t = 30)]
        gap_days: u32,
        /// Stages, first to last, separated by commas.
        #[arg(long, default_value = "information,evaluation,decision,purchase")]
        stages: String,
        /// Only journeys that reached the last stage feed the model.
        #[arg(long)]
        purchasers_only: bool,
        /// Bootstrap replicates for the confidence intervals (0: none).
        #[arg(long, default_value_t = 200)]
        replicates: usize,
        /// Seed of the bootstrap.
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        /// Stage map (TOML: `page`, `screen`, and `[stages]` listing track events per
        /// stage) instead of the default one (event log only; docs/journeys.md).
        #[arg(long)]
        map: Option<PathBuf>,
        /// Only the journeys of this saved segment's members (event log only).
        #[arg(long)]
        segment: Option<String>,
        /// Where to write the model.
        #[arg(long, short, default_value = "MODEL.json")]
        output: PathBuf,
    },
}

/// `relais journey …`.
fn journey_command(command: JourneyCommand, settings: &Settings) -> anyhow::Result<()> {
    use relais_domain::journey::{EstimateOptions, Operation, Order, Share, StageModel, WhatIf};
    match command {
        JourneyCommand::Whatif { model, into, op, channel, share, from, row, format } => {
            let text = std::fs::read_to_string(&model).with_context(|| format!("cannot read {}", model.display()))?;
            let model: StageModel =
                serde_json::from_str(&text).with_context(|| format!("{} is not a valid model", model.display()))?;
            let operation = match op {
                WhatIfOp::Mix | WhatIfOp::Set => {
                    let channel = channel.context("--channel is required with --op mix or set")?;
                    let share = Share::new(share.context("--share is required with --op mix or set")?)?;
                    if op == WhatIfOp::Mix {
                        Operation::Mix { channel, share }
                    } else {
                        Operation::SetShare { channel, share }
                    }
                }
                WhatIfOp::Edit => {
                    let from_channel = from.context("--from (the row's channel) is required with --op edit")?;
                    let row = row
                        .context("--row is required with --op edit")?
                        .split(',')
                        .map(|p| p.trim().parse::<f64>().with_context(|| format!("--row: `{p}` is not a number")))
                        .collect::<anyhow::Result<Vec<f64>>>()?;
                    Operation::EditRow { from_channel, row }
                }
            };
            let report = crate::journey::what_if(&model, &[WhatIf { into_stage: into, operation }])?;
            match format {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                OutputFormat::Text => print!("{}", crate::journey::what_if_table(&report)),
            }
            Ok(())
        }
        JourneyCommand::Attribute { file, order, format } => {
            let order = Order::new(order)?;
            let paths = crate::journey::read_paths(&file)?;
            let report = crate::journey::attribute(&paths, order)?;
            for note in &report.notes {
                eprintln!("note: {note}");
            }
            match format {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                OutputFormat::Text => print!("{}", crate::journey::attribution_table(&report)),
            }
            Ok(())
        }
        JourneyCommand::Model {
            store,
            journeys,
            from,
            to,
            gap_days,
            stages,
            purchasers_only,
            replicates,
            seed,
            segment,
            map,
            output,
        } => {
            let stages = stages.split(',').map(|s| s.trim().to_string()).collect();
            let options = EstimateOptions { purchasers_only, replicates, seed };
            let estimated = match journeys {
                Some(_) if segment.is_some() || map.is_some() => {
                    bail!("--segment and --map read the event log: leave out --journeys")
                }
                Some(journeys) => {
                    let bytes =
                        std::fs::read(&journeys).with_context(|| format!("cannot read {}", journeys.display()))?;
                    crate::journey::model_from_journeys(&bytes, stages, options)?
                }
                None => {
                    anyhow::ensure!(gap_days >= 1, "--gap-days must be at least 1");
                    let store = store.open(settings)?;
                    let members = match &segment {
                        Some(name) => Some(crate::segments::member_ids(store.blocking(), name)?),
                        None => None,
                    };
                    let stage_map = match &map {
                        Some(path) => crate::journey::read_stage_map(
                            &std::fs::read_to_string(path)
                                .with_context(|| format!("cannot read {}", path.display()))?,
                            &stages,
                        )?,
                        None => relais_domain::journey::StageMap::default(),
                    };
                    let (estimated, read) = crate::journey::model_from_store(
                        store.blocking(),
                        stage_map,
                        from,
                        to,
                        stages,
                        gap_days,
                        options,
                        members.as_ref(),
                    )?;
                    eprintln!("{read} events read from the event log");
                    estimated
                }
            };
            std::fs::write(&output, serde_json::to_string_pretty(&estimated)?)
                .with_context(|| format!("cannot write {}", output.display()))?;
            eprintln!(
                "model of {} journeys ({} reached the last stage) written to {}",
                estimated.journeys,
                estimated.purchasers,
                output.display()
            );
            Ok(())
        }
    }
}
