//! The embedded engine: one SQLite file in WAL mode with `synchronous=FULL`, one
//! writer thread that commits the messages of concurrent requests together (group
//! commit), and a pool of reader connections.

mod log_flush;
mod log_writes;
mod loyalty;
mod page_cache;
pub use log_writes::log_writes_shim;
pub use page_cache::page_cache_wrapper;
mod segments;
mod web;

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::thread;

use chrono::{DateTime, NaiveDate, Utc};
use relais_domain::traits::DayTotals;
use relais_domain::{
    Channel, ComputedTraits, CustomerId, ErasureId, EventId, Identifier, KeyId, MergeId, OutboxId, Role,
    TrackingMessage,
};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{Map, Value};

use super::ingest::{
    batch_items, family_traits, ingest_batch, BatchItem, Changes, CustomerState, Customers, EventFacts, Exclusives,
    IngestSettings, IngestTx, KnownMessages, Outcome, Owners, Rebuild,
};
use super::loyalty::LedgerTx as _;
use super::pool::Pool;
use super::seal::{self, EncodedEvent, Privacy};
use super::RightsRequest;
use super::{
    event_goes_back, ApiKey, CustomerLookup, CustomerRecord, DeliveryResult, Engine, ErasureReport, EventPage,
    MergeRecord, OutboxItem, OutboxStatus, StoreError, StoredEvent, TimelineCursor, UnmergeReport,
};
use crate::privacy::audit::{AuditRecord, AuditSegment};
use crate::privacy::{MasterKey, StoredKeyring};
use relais_domain::consent::ConsentFact;
use relais_domain::privacy::{Classification, DataClass};
use relais_domain::rights::RequestStatus;
use relais_domain::{ConsentId, RequestId};
use std::sync::Arc;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "customer_database", include_str!("../../migrations/sqlite/0001_customer_database.sql")),
    (2, "privacy", include_str!("../../migrations/sqlite/0002_privacy.sql")),
    (3, "loyalty", include_str!("../../migrations/sqlite/0003_loyalty.sql")),
    (4, "segments", include_str!("../../migrations/sqlite/0004_segments.sql")),
    (5, "web", include_str!("../../migrations/sqlite/0005_web.sql")),
    (6, "loyalty_gaps", include_str!("../../migrations/sqlite/0006_loyalty_gaps.sql")),
    (7, "ledger_in_time_order", include_str!("../../migrations/sqlite/0007_ledger_in_time_order.sql")),
];

/// Messages committed together at most, across concurrent requests.
const MAX_GROUP_MESSAGES: usize = 20_000;

/// Grouped writes (loyalty debits…) committed together at most.
const MAX_GROUPED_WRITES: usize = 2_000;

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        match error {
            rusqlite::Error::QueryReturnedNoRows => StoreError::NotFound,
            other => StoreError::Database(other.to_string()),
        }
    }
}

/// The newest events the live flow reads at most (a bulk import of millions
/// of rows is shown as its last part, not scanned every few seconds).
const FLOW_ROWS_READ: i64 = 200_000;

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// Column `i` as text borrowed from the row (ten million events should not
/// mean thirty million strings).
fn text<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<&'r str>> {
    row.get_ref(i)?
        .as_str_or_null()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e)))
}

fn from_micros(value: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(value).unwrap_or_default()
}

fn parse_id<T: std::str::FromStr>(text: &str) -> Result<T, StoreError> {
    text.parse().map_err(|_| StoreError::Database(format!("corrupt id `{text}` in the database")))
}

fn json_text(map: &Map<String, Value>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".into())
}

type Reply = mpsc::SyncSender<Answer<Vec<Outcome>>>;

/// The writer's answer to a caller, with the number of the log flush that makes
/// it durable (asked for by the writer right after the commit, see
/// `LogFlusher::request`); the caller waits for that flush before replying.
type Answer<T> = (Result<T, StoreError>, u64);

/// Customers cached by the writer between transactions, so a busy customer's
/// traits are not parsed from JSON at every batch. Valid while no other
/// connection wrote to the file (`PRAGMA data_version` unchanged) and cleared
/// after any other write on the writer connection (unmerge, rebuild).
struct CustomerCache {
    data_version: i64,
    entries: CustomerEntries,
    /// Identifier owners (and whether the identifier is shared) as committed,
    /// for identifiers found or linked by ingestion. Looking them up one by one
    /// in the `identifiers` index took 8% of the writer's time. Dropped whole
    /// whenever owners may have moved: a merge or a sighting written by
    /// ingestion, any other write on the writer connection, or a write by
    /// another connection.
    owners: lru::LruCache<Identifier, (CustomerId, bool), foldhash::fast::RandomState>,
}

/// Bytes of customer states the writer keeps at most, least recently used
/// evicted first. A cap on bytes rather than entries keeps memory flat: an
/// entry grows as its profile fills (identify traits arrive over a
/// customer's life), so a cap of 100,000 entries let resident memory climb
/// by a fifth over 5,000,000 events after the cache was full.
const CACHE_BYTES: usize = 128 << 20;

/// Identifier owners kept at most (about 100 bytes each).
const OWNERS_CAPACITY: usize = 200_000;

impl CustomerCache {
    /// Forget everything: rows may have changed behind the cache.
    fn clear(&mut self) {
        self.entries.clear();
        self.owners.clear();
    }
}

impl Default for CustomerCache {
    fn default() -> Self {
        CustomerCache {
            data_version: 0,
            entries: CustomerEntries::new(CACHE_BYTES),
            owners: lru::LruCache::with_hasher(
                std::num::NonZeroUsize::new(OWNERS_CAPACITY).expect("non-zero capacity"),
                Default::default(),
            ),
        }
    }
}

/// A customer's state as cached, with its exclusive identifiers.
type CachedCustomer = (CustomerState, Vec<Identifier>);

/// The writer's customer states, least recently used first out, within a
/// budget of (estimated) heap bytes.
struct CustomerEntries {
    lru: lru::LruCache<CustomerId, (CachedCustomer, usize), foldhash::fast::RandomState>,
    bytes: usize,
    budget: usize,
}

impl CustomerEntries {
    fn new(budget: usize) -> Self {
        CustomerEntries { lru: lru::LruCache::unbounded_with_hasher(Default::default()), bytes: 0, budget }
    }

    /// Whether `customer` is cached (without marking it used).
    #[cfg(test)]
    fn holds(&self, customer: &CustomerId) -> bool {
        self.lru.contains(customer)
    }

    /// Take a customer out (its state is changed, then put back).
    fn pop(&mut self, customer: &CustomerId) -> Option<CachedCustomer> {
        let (entry, bytes) = self.lru.pop(customer)?;
        self.bytes -= bytes;
        Some(entry)
    }

    fn put(&mut self, customer: CustomerId, entry: CachedCustomer) {
        let bytes = cached_bytes(&entry);
        if let Some((_, replaced)) = self.lru.put(customer, (entry, bytes)) {
            self.bytes -= replaced;
        }
        self.bytes += bytes;
        while self.bytes > self.budget {
            match self.lru.pop_lru() {
                Some((_, (_, evicted))) => self.bytes -= evicted,
                None => break,
            }
        }
    }

    fn clear(&mut self) {
        self.lru.clear();
        self.bytes = 0;
    }
}

/// Heap bytes a cached customer takes, estimated from its shape: the LRU
/// node and its hash slot, the strings, and B-tree nodes of eleven slots for
/// its maps (what the standard library allocates for a map).
fn cached_bytes((state, exclusives): &CachedCustomer) -> usize {
    const NODE: usize = std::mem::size_of::<(CustomerId, (CachedCustomer, usize))>() + 64 + 24;
    const STRING_SLOT: usize = std::mem::size_of::<String>();
    let traits = &state.traits;
    let stores: usize = traits.store_events.keys().map(|k| k.len() + 8).sum();
    NODE + map_bytes(&state.profile)
        + state.sealed_profile.as_ref().map_or(0, Vec::capacity)
        + traits.last_message_id.as_ref().map_or(0, String::capacity)
        + btree_nodes(traits.store_events.len()) * 11 * (STRING_SLOT + 8)
        + stores
        + exclusives.capacity() * std::mem::size_of::<Identifier>()
        + exclusives.iter().map(|i| i.value().len()).sum::<usize>()
}

/// Nodes of a B-tree map of `len` entries: eleven slots a node, about two
/// thirds used once the map has split.
fn btree_nodes(len: usize) -> usize {
    if len <= 11 {
        usize::from(len > 0)
    } else {
        len.div_ceil(7)
    }
}

fn map_bytes(map: &Map<String, Value>) -> usize {
    const SLOT: usize = std::mem::size_of::<String>() + std::mem::size_of::<Value>();
    btree_nodes(map.len()) * 11 * SLOT + map.iter().map(|(k, v)| k.len() + value_bytes(v)).sum::<usize>()
}

fn value_bytes(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Array(items) => {
            items.len() * std::mem::size_of::<Value>() + items.iter().map(value_bytes).sum::<usize>()
        }
        Value::Object(map) => map_bytes(map),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

/// Requests committed together: source, messages, their stored payloads
/// (encoded on the request's own thread, so the single writer does not spend
/// its time on them), where to answer.
type Group = Vec<(String, Vec<TrackingMessage>, Vec<EncodedEvent>, Reply)>;

/// Sends a grouped write's answer once its group's commit is known, with the
/// flush that makes the commit durable.
type Finish = Box<dyn FnOnce(Result<(), StoreError>, u64) + Send>;

/// A write that joins the writer's next group commit: it runs in a savepoint
/// of the group's transaction and hands back how to answer its caller, and
/// whether the transaction is still usable (a savepoint that could not be
/// undone spoils the whole group, which then fails and is retried by callers).
/// It gets no connection when the group's transaction could not even begin.
type GroupedWork = Box<dyn FnOnce(Option<&Connection>) -> (Finish, bool) + Send>;

enum Job {
    Ingest {
        source: String,
        messages: Vec<TrackingMessage>,
        encoded: Vec<EncodedEvent>,
        reply: Reply,
    },
    /// A short write of one customer's (a loyalty debit) that shares the
    /// group's commit, so that it does not cost an fsync of its own. It must
    /// not move or delete identifiers: the writer's cache of their owners
    /// survives it.
    Grouped(GroupedWork),
    /// Other writes; `touches_customers` drops the writer's customer cache after.
    Exec {
        work: Box<dyn FnOnce(&mut Connection) + Send>,
        touches_customers: bool,
    },
}

/// The SQLite engine.
pub struct SqliteEngine {
    jobs: mpsc::Sender<Job>,
    readers: Pool<Connection>,
    settings: IngestSettings,
    privacy: Arc<Privacy>,
    /// Tells the checkpoint thread to stop.
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// The writer and checkpoint threads, joined when the engine is dropped.
    threads: Vec<thread::JoinHandle<()>>,
    /// Flushes the log before writes are acknowledged (see `log_flush`).
    flusher: Arc<log_flush::LogFlusher>,
    /// The flusher's thread, joined after the writer's.
    flush_thread: Option<thread::JoinHandle<()>>,
    /// The saved segments, read once for the ingest requests that ask together.
    segment_list: super::shared_read::SharedRead<Vec<super::segments::SegmentRecord>>,
}

impl Drop for SqliteEngine {
    /// Close the database for good: the writer finishes its queued jobs and
    /// stops, the checkpoint thread stops, so no connection of this engine
    /// touches the files afterwards (a restore may replace them).
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.jobs, closed));
        for handle in self.threads.drain(..) {
            handle.thread().unpark();
            let _ = handle.join();
        }
        // The writer's last callers may still wait for their flush.
        self.flusher.stop();
        if let Some(handle) = self.flush_thread.take() {
            let _ = handle.join();
        }
    }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    // Before SQLite's first use in the process; without it SQLite still works,
    // only slower (see `page_cache`).
    if !page_cache::install() {
        tracing::debug!("SQLite was started before relais could wrap its page cache");
    }
    if !log_writes::install() {
        tracing::debug!("the write-ahead log's writes are not gathered: the default VFS is not SQLite's unix VFS");
    }
    let conn = Connection::open(path)?;
    // First, so that processes opening a new file together wait for each other
    // (switching to WAL takes an exclusive lock) instead of failing.
    conn.pragma_update(None, "busy_timeout", 10_000)?;
    // 8 KB pages for a new file (an existing one keeps its own: the pragma
    // then only reads the schema early, and would apply to a VACUUM, which
    // relais never runs). Ingest dirties pages at random in several indexes
    // at every commit; with pages twice as large there are fewer of them to
    // find, write to the log and checkpoint: 60,000–62,000 events/s against
    // 53,900–56,500 with 4 KB (bench ingest, 500,000 events). Loyalty moved
    // within its noise (5,524 tx/s against 5,626, medians of five-run medians).
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    // Decision 5: an acknowledged write is on disk. WAL with synchronous=FULL
    // fsyncs the log at every commit; the writer's connection instead leaves
    // the flush to `log_flush`, which callers wait for.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // The ingest and ledger paths use some eighty distinct statements; the
    // default cache of 16 would parse most of them again at every request.
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    migrate_through(conn, i64::MAX)
}

/// Apply the migrations up to version `last`.
fn migrate_through(conn: &mut Connection, last: i64) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )?;
    for (version, name, sql) in MIGRATIONS.iter().filter(|(version, _, _)| *version <= last) {
        // BEGIN IMMEDIATE takes the write lock, so two processes migrating at once
        // apply each migration once.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let applied: bool =
            tx.query_row("SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE version = ?1)", [version], |r| r.get(0))?;
        if !applied {
            if *version == 2 && tx.query_row("SELECT EXISTS(SELECT 1 FROM identifiers)", [], |r| r.get::<_, bool>(0))? {
                return Err(StoreError::Config(super::LEGACY_PLAINTEXT.into()));
            }
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                params![version, name, micros(Utc::now())],
            )?;
        }
        tx.commit()?;
    }
    Ok(())
}

impl SqliteEngine {
    /// Open or create the database in `folder`.
    pub fn open(
        folder: &Path,
        settings: IngestSettings,
        master: &MasterKey,
        classes: Classification,
    ) -> Result<SqliteEngine, StoreError> {
        std::fs::create_dir_all(folder)
            .map_err(|e| StoreError::Config(format!("cannot create the data folder {}: {e}", folder.display())))?;
        let path = folder.join("relais.db");
        let mut writer = open_connection(&path)?;
        migrate(&mut writer)?;
        let privacy = Arc::new(super::open_privacy(
            master,
            classes,
            || read_keyring(&writer),
            |stored| {
                let tx = writer.unchecked_transaction()?;
                for (name, wrapped) in &stored.wrapped {
                    tx.execute(
                        "INSERT OR IGNORE INTO keyring (name, wrapped, master_fingerprint, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![name, wrapped, stored.master_fingerprint, micros(Utc::now())],
                    )?;
                }
                tx.commit()?;
                Ok(())
            },
        )?);
        // Checkpoints copy the WAL back into the database on their own thread, so
        // the writer's commits never wait for them.
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        // After a restart of the log, its file is cut back to this size: twice
        // the restart length, so a restart (whose log has grown a little past
        // that length while the writer finished its group) never truncates.
        // Truncating frees the file's blocks and waits for their writeback:
        // cutting 450 MB took 154 ms, stalling the commit that did it.
        writer.pragma_update(None, "journal_size_limit", 2 * WAL_RESTART_BYTES)?;
        // The restart length in frames of this file's pages (an older file
        // keeps 4 KB pages).
        let page_size: i64 = writer.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let restart_frames = WAL_RESTART_BYTES / page_size.max(512);
        let checkpointer = open_connection(&path)?;
        checkpointer.pragma_update(None, "cache_size", -1_024)?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let checkpoint_stop = stop.clone();
        let restart_wal = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let wal_too_long = restart_wal.clone();
        let checkpoint = thread::Builder::new()
            .name("relais-sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, checkpoint_stop, wal_too_long, restart_frames))
            .map_err(|e| StoreError::Database(format!("cannot start the checkpoint thread: {e}")))?;
        // From here on the writer's commits return once written, and callers wait
        // for the log's flush before hearing of them (see `log_flush`).
        writer.pragma_update(None, "synchronous", "NORMAL")?;
        let wal = folder.join("relais.db-wal");
        let (flusher, flush_thread) = log_flush::LogFlusher::for_file(&wal).map_err(|e| {
            StoreError::Config(format!("cannot open the database log {} to flush it: {e}", wal.display()))
        })?;
        let (jobs, receiver) = mpsc::channel::<Job>();
        let writer_settings = settings.clone();
        let writer_privacy = privacy.clone();
        let writer_flusher = flusher.clone();
        let writer = thread::Builder::new()
            .name("relais-sqlite-writer".into())
            .spawn(move || writer_loop(writer, receiver, writer_settings, writer_privacy, restart_wal, writer_flusher))
            .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
        let reader_path = path.clone();
        // Readers make point lookups and short scans: a small page cache each keeps
        // the process's memory bounded (the writer keeps the large one).
        let readers = Pool::new(8, move || {
            let conn = open_connection(&reader_path)?;
            conn.pragma_update(None, "cache_size", -8_192)?;
            Ok(conn)
        });
        Ok(SqliteEngine {
            jobs,
            readers,
            settings,
            privacy,
            stop,
            threads: vec![writer, checkpoint],
            flusher,
            flush_thread: Some(flush_thread),
            segment_list: Default::default(),
        })
    }

    /// Run `work` on the writer connection, serialised with ingestion; say whether
    /// it changes customers (traits, identifiers), so the writer's cache is dropped.
    fn write<T: Send + 'static>(
        &self,
        touches_customers: bool,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let flusher = self.flusher.clone();
        self.jobs
            .send(Job::Exec {
                work: Box::new(move |conn| {
                    let result = work(conn);
                    let _ = reply.send((result, flusher.request()));
                }),
                touches_customers,
            })
            .map_err(|_| StoreError::Database("the SQLite writer has stopped".into()))?;
        self.acknowledged(answer)
    }

    /// Run `work` in the writer's next group commit, inside a savepoint of its
    /// own (what it wrote is undone when it fails); answer once committed.
    /// For short single-customer writes whose own fsync would dominate, that
    /// never move or delete identifiers (the writer keeps their owners cached
    /// across grouped writes; use `write` for anything that does).
    fn write_grouped<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: GroupedWork = Box::new(move |conn| {
            let (result, usable) = match conn {
                Some(conn) => in_savepoint(conn, work),
                None => (Err(StoreError::Database("the SQLite writer could not begin a transaction".into())), false),
            };
            let finish: Finish = Box::new(move |committed, flush| {
                let _ = reply.send((committed.and(result), flush));
            });
            (finish, usable)
        });
        self.jobs.send(Job::Grouped(job)).map_err(|_| StoreError::Database("the SQLite writer has stopped".into()))?;
        self.acknowledged(answer)
    }

    /// The writer's answer, once the log holding what it committed is on disk.
    fn acknowledged<T>(&self, answer: mpsc::Receiver<Answer<T>>) -> Result<T, StoreError> {
        let (result, flush) =
            answer.recv().map_err(|_| StoreError::Database("the SQLite writer has stopped".into()))?;
        self.flusher.wait_for(flush)?;
        result
    }
}

/// Run `work` inside a savepoint, released when it succeeds and rolled back
/// when it fails; the flag says whether the enclosing transaction is intact.
fn in_savepoint<T>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> (Result<T, StoreError>, bool) {
    if let Err(error) = conn.execute_batch("SAVEPOINT grouped_write") {
        return (Err(error.into()), false);
    }
    let result = work(conn);
    let closing =
        if result.is_ok() { "RELEASE grouped_write" } else { "ROLLBACK TO grouped_write; RELEASE grouped_write" };
    match conn.execute_batch(closing) {
        Ok(()) => (result, true),
        Err(error) => (Err(error.into()), false),
    }
}

/// Copy committed WAL frames into the database file regularly; stops when the
/// database is no longer used by this process (the connection is the last one).
/// When the log has grown past `restart_frames` (`WAL_RESTART_BYTES` of
/// frames), asks the writer to restart it (see `restart_wal`).
fn checkpoint_loop(
    conn: Connection,
    stop: Arc<std::sync::atomic::AtomicBool>,
    restart_wal: Arc<std::sync::atomic::AtomicBool>,
    restart_frames: i64,
) {
    loop {
        // Parked rather than asleep, so that dropping the engine wakes it at once.
        thread::park_timeout(std::time::Duration::from_millis(200));
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        // PASSIVE never blocks writers or readers; it copies what it can.
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)) {
            Ok(frames) if frames > restart_frames => {
                restart_wal.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Bytes of frames after which the writer restarts the log. Each restart
/// stalls the writer while it checkpoints the log's tail and syncs the
/// database file (tens of milliseconds once the database is larger than the
/// page cache), so restarts must be rare enough that the requests they delay
/// stay well under 1% (at 64 MB, two restarts a second under loyalty traffic
/// put them at the 99th percentile). The log's length costs disk only:
/// readers search just the frames not yet checkpointed.
const WAL_RESTART_BYTES: i64 = 512 << 20;

/// The page size of a database file relais creates.
const PAGE_SIZE: i64 = 8_192;

/// Let the log start again from its beginning. Under a steady stream of
/// commits the checkpoint thread never catches up with the last frame, so
/// SQLite never rewinds the log by itself: it would grow without end
/// (gigabytes in a minute of loyalty traffic), each commit appending to new,
/// cold pages. Run by the writer between transactions, when no frame is being
/// added, a passive checkpoint completes (the checkpoint thread has already
/// copied most frames); the next commit then writes at the log's start, as
/// SQLite does after a complete checkpoint, and `journal_size_limit` trims the
/// file. Passive, because waiting for readers to leave the log (`RESTART`)
/// sleeps in the busy handler and stalled commits by tens of milliseconds.
fn restart_wal(conn: &Connection) {
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0)) {
        Ok(0) => {}
        Ok(_) => tracing::debug!("the checkpoint before a WAL restart was busy; it is tried again"),
        Err(error) => tracing::warn!(%error, "the checkpoint before a WAL restart failed"),
    }
}

fn writer_loop(
    mut conn: Connection,
    jobs: mpsc::Receiver<Job>,
    settings: IngestSettings,
    privacy: Arc<Privacy>,
    wal_too_long: Arc<std::sync::atomic::AtomicBool>,
    flusher: Arc<log_flush::LogFlusher>,
) {
    let mut pending: Option<Job> = None;
    // Freeing a committed group's messages takes the writer a few percent of its
    // time: hand them to a thread of their own instead.
    let (to_drop, dropped) = mpsc::channel::<Group>();
    let _ = thread::Builder::new().name("relais-sqlite-free".into()).spawn(move || for _ in dropped {});
    let mut cache = CustomerCache::default();
    loop {
        if wal_too_long.swap(false, std::sync::atomic::Ordering::Relaxed) {
            restart_wal(&conn);
        }
        let job = match pending.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        match job {
            Job::Exec { work, touches_customers } => {
                work(&mut conn);
                if touches_customers {
                    cache.entries.clear();
                }
                // Identifier owners are forgotten after any other write: which
                // writes move or delete identifiers is not tracked.
                cache.owners.clear();
            }
            first @ (Job::Ingest { .. } | Job::Grouped(_)) => {
                let mut cycle = Cycle::default();
                cycle.push(first);
                while cycle.messages < MAX_GROUP_MESSAGES && cycle.grouped.len() < MAX_GROUPED_WRITES {
                    match jobs.try_recv() {
                        Ok(job @ (Job::Ingest { .. } | Job::Grouped(_))) => cycle.push(job),
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let group = commit_cycle(&mut conn, cycle, &settings, &privacy, &mut cache, &flusher);
                if let Err(mpsc::SendError(group)) = to_drop.send(group) {
                    drop(group);
                }
            }
        }
    }
}

/// What the writer commits together: the ingest requests waiting, and the
/// grouped writes waiting.
#[derive(Default)]
struct Cycle {
    group: Group,
    messages: usize,
    grouped: Vec<GroupedWork>,
}

impl Cycle {
    fn push(&mut self, job: Job) {
        match job {
            Job::Ingest { source, messages, encoded, reply } => {
                self.messages += messages.len();
                self.group.push((source, messages, encoded, reply));
            }
            Job::Grouped(work) => self.grouped.push(work),
            Job::Exec { .. } => unreachable!("only ingest and grouped writes join a cycle"),
        }
    }
}

/// Commit a cycle: its ingest requests and then its grouped writes in one
/// transaction. When the ingest part fails, each request is committed alone
/// (one request's failure never takes the others down), then the grouped
/// writes in a transaction of their own.
fn commit_cycle(
    conn: &mut Connection,
    cycle: Cycle,
    settings: &IngestSettings,
    privacy: &Privacy,
    cache: &mut CustomerCache,
    flusher: &log_flush::LogFlusher,
) -> Group {
    let Cycle { group, grouped, .. } = cycle;
    if group.is_empty() {
        commit_grouped(conn, grouped, flusher);
        return group;
    }
    let batch: Vec<BatchItem<'_>> =
        group.iter().flat_map(|(source, messages, encoded, _)| batch_items(source, messages, encoded)).collect();
    let mut grouped = grouped;
    let failure = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Err(error) => Some(StoreError::from(error)),
        Ok(tx) => match ingest_into(&tx, &batch, settings, privacy, cache) {
            Err(error) => Some(error),
            Ok((outcomes, written)) => {
                let (finishes, committed) = run_and_commit(tx, std::mem::take(&mut grouped));
                let flush = flusher.request();
                match &committed {
                    Ok(()) => {
                        written.keep_in(cache);
                        let mut outcomes = outcomes.into_iter();
                        for (_, messages, _, reply) in &group {
                            let _ = reply.send((Ok(outcomes.by_ref().take(messages.len()).collect()), flush));
                        }
                    }
                    Err(error) => {
                        for (_, _, _, reply) in &group {
                            let _ = reply.send((Err(error.clone()), flush));
                        }
                    }
                }
                finish_all(finishes, &committed, flush);
                None
            }
        },
    };
    if let Some(error) = failure {
        drop(batch);
        if group.len() == 1 {
            let _ = group[0].3.send((Err(error), flusher.request()));
        } else {
            for (source, messages, encoded, reply) in &group {
                let batch: Vec<BatchItem<'_>> = batch_items(source, messages, encoded).collect();
                let result = ingest_in_transaction(conn, &batch, settings, privacy, cache);
                let _ = reply.send((result, flusher.request()));
            }
        }
        commit_grouped(conn, grouped, flusher);
    }
    group
}

/// Commit grouped writes in one transaction of their own.
fn commit_grouped(conn: &mut Connection, grouped: Vec<GroupedWork>, flusher: &log_flush::LogFlusher) {
    if grouped.is_empty() {
        return;
    }
    match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => {
            let (finishes, committed) = run_and_commit(tx, grouped);
            finish_all(finishes, &committed, flusher.request());
        }
        Err(error) => {
            // Nothing ran: each caller hears why.
            let error = StoreError::from(error);
            let flush = flusher.request();
            for work in grouped {
                work(None).0(Err(error.clone()), flush);
            }
        }
    }
}

/// Run grouped writes one after the other in `tx`, then commit it, unless one
/// of them spoiled it (it is rolled back then); their answers, and the result.
fn run_and_commit(tx: rusqlite::Transaction<'_>, grouped: Vec<GroupedWork>) -> (Vec<Finish>, Result<(), StoreError>) {
    let mut finishes = Vec::with_capacity(grouped.len());
    let mut usable = true;
    for work in grouped {
        let (finish, intact) = work(Some(&tx));
        finishes.push(finish);
        usable &= intact;
    }
    let committed = if usable {
        tx.commit().map_err(StoreError::from)
    } else {
        Err(StoreError::Database("a grouped write could not be undone; the group was rolled back".into()))
    };
    (finishes, committed)
}

/// Answer every grouped write with the group's commit result.
fn finish_all(finishes: Vec<Finish>, committed: &Result<(), StoreError>, flush: u64) {
    for finish in finishes {
        finish(committed.clone(), flush);
    }
}

fn ingest_in_transaction(
    conn: &mut Connection,
    batch: &[BatchItem<'_>],
    settings: &IngestSettings,
    privacy: &Privacy,
    cache: &mut CustomerCache,
) -> Result<Vec<Outcome>, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (outcomes, written) = ingest_into(&tx, batch, settings, privacy, cache)?;
    tx.commit()?;
    written.keep_in(cache);
    Ok(outcomes)
}

/// What an ingest transaction read and wrote, for the cache once it commits.
#[derive(Default)]
struct Written {
    /// Customers as written, with their exclusive identifiers.
    customers: Vec<(CustomerId, (CustomerState, Vec<Identifier>))>,
    /// Identifier owners as read or linked (none once owners moved).
    owners: Vec<(Identifier, (CustomerId, bool))>,
}

impl Written {
    /// Put what the committed transaction knew into the writer's cache.
    fn keep_in(self, cache: &mut CustomerCache) {
        for (customer, entry) in self.customers {
            cache.entries.put(customer, entry);
        }
        for (identifier, owner) in self.owners {
            cache.owners.put(identifier, owner);
        }
    }
}

/// Ingest `batch` inside the open transaction `tx` (not committed here).
fn ingest_into(
    tx: &Connection,
    batch: &[BatchItem<'_>],
    settings: &IngestSettings,
    privacy: &Privacy,
    cache: &mut CustomerCache,
) -> Result<(Vec<Outcome>, Written), StoreError> {
    let data_version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0))?;
    if data_version != cache.data_version {
        cache.clear();
        cache.data_version = data_version;
    }
    let mut sqlite_tx = SqliteTx { tx, cache: Some(cache), written: Written::default(), privacy: Some(privacy) };
    let outcomes = ingest_batch(&mut sqlite_tx, batch, settings, privacy)?;
    Ok((outcomes, std::mem::take(&mut sqlite_tx.written)))
}

struct SqliteTx<'t, 'c> {
    /// The connection, inside the caller's transaction.
    tx: &'t Connection,
    /// The writer's cache: entries are taken out while a transaction uses them.
    cache: Option<&'c mut CustomerCache>,
    /// Customers as written, to cache once the transaction commits.
    written: Written,
    /// Keys, for steps that seal values (a loyalty card's identifier).
    privacy: Option<&'t Privacy>,
}

impl<'t, 'c> SqliteTx<'t, 'c> {
    /// Ledger and ingest primitives on `tx`, without the writer's cache.
    fn plain(tx: &'t Connection) -> Self {
        SqliteTx { tx, cache: None, written: Written::default(), privacy: None }
    }

    /// `plain`, with the keys for steps that seal values.
    fn sealing(tx: &'t Connection, privacy: &'t Privacy) -> Self {
        SqliteTx { privacy: Some(privacy), ..SqliteTx::plain(tx) }
    }
}

impl IngestTx for SqliteTx<'_, '_> {
    fn existing_message_ids(&mut self, ids: &[(&str, &str)]) -> Result<KnownMessages, StoreError> {
        let mut found = KnownMessages::default();
        let mut stmt = self.tx.prepare_cached(
            "SELECT e.customer_id, e.event_id FROM message_ids m JOIN events e ON e.seq = m.event_seq \
             WHERE m.source = ?1 AND m.message_id = ?2",
        )?;
        for (source, message_id) in ids {
            let row: Option<(String, String)> =
                stmt.query_row(params![source, message_id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
            if let Some((customer, event)) = row {
                found.insert((source.to_string(), message_id.to_string()), (parse_id(&customer)?, parse_id(&event)?));
            }
        }
        Ok(found)
    }

    fn identifier_owners(&mut self, ids: &[Identifier]) -> Result<Owners, StoreError> {
        let mut found = Owners::default();
        let mut stmt = self.tx.prepare_cached("SELECT customer_id, shared FROM identifiers WHERE identifier = ?1")?;
        for identifier in ids {
            if let Some(owner) = self.cache.as_mut().and_then(|c| c.owners.get(identifier)) {
                found.insert(identifier.clone(), *owner);
                continue;
            }
            let owner: Option<(String, bool)> =
                stmt.query_row([identifier.to_string()], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
            if let Some((owner, shared)) = owner {
                let owner = (parse_id(&owner)?, shared);
                found.insert(identifier.clone(), owner);
                if self.cache.is_some() {
                    self.written.owners.push((identifier.clone(), owner));
                }
            }
        }
        Ok(found)
    }

    /// From the table; the writer's cache is read by `exclusives_and_customers`.
    fn exclusive_identifiers(&mut self, customers: &[CustomerId]) -> Result<Exclusives, StoreError> {
        let mut found = Exclusives::default();
        let mut stmt = self.tx.prepare_cached(
            "SELECT identifier FROM identifiers WHERE customer_id = ?1 AND kind IN ('user_id', 'customer_number')",
        )?;
        for customer in customers {
            let rows = stmt.query_map([customer.to_string()], |r| r.get::<_, String>(0))?;
            for row in rows {
                found.entry(*customer).or_default().push(seal::parse_token(&row?)?);
            }
        }
        Ok(found)
    }

    fn exclusives_and_customers(&mut self, customers: &[CustomerId]) -> Result<(Exclusives, Customers), StoreError> {
        let mut exclusives = Exclusives::default();
        let mut found = Customers::default();
        let mut missing = Vec::new();
        for customer in customers {
            // Taken out of the cache whole: the exclusives move instead of
            // being copied (the transaction puts the entry back once written).
            match self.cache.as_mut().and_then(|c| c.entries.pop(customer)) {
                Some((state, held)) => {
                    if !held.is_empty() {
                        exclusives.insert(*customer, held);
                    }
                    found.insert(*customer, state);
                }
                None => missing.push(*customer),
            }
        }
        if !missing.is_empty() {
            // Not cached: from the tables.
            exclusives.extend(self.exclusive_identifiers(&missing)?);
            found.extend(self.load_customers(&missing)?);
        }
        Ok((exclusives, found))
    }

    /// From the table; the writer's cache is read by `exclusives_and_customers`.
    fn load_customers(&mut self, customers: &[CustomerId]) -> Result<Customers, StoreError> {
        let mut found = Customers::default();
        let mut stmt = self
            .tx
            .prepare_cached("SELECT profile, traits, merged_into, sealed FROM customers WHERE customer_id = ?1")?;
        for customer in customers {
            let row: Option<CustomerStateRow> = stmt
                .query_row([customer.to_string()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?;
            if let Some((profile, traits, merged_into, sealed)) = row {
                let mut state = customer_state(&profile, traits.as_deref(), merged_into.as_deref())?;
                state.sealed_profile = sealed;
                found.insert(*customer, state);
            }
        }
        Ok(found)
    }

    fn data_keys(&mut self, customers: &[CustomerId]) -> Result<Vec<(CustomerId, Vec<u8>)>, StoreError> {
        read_data_keys(self.tx, customers)
    }

    fn write(&mut self, changes: &Changes<'_>) -> Result<(), StoreError> {
        let tx = self.tx;
        {
            let mut stmt =
                tx.prepare_cached("INSERT INTO customers (customer_id, created_at, updated_at) VALUES (?1, ?2, ?2)")?;
            for (id, at) in &changes.new_customers {
                stmt.execute(params![id.to_string(), micros(*at)])?;
            }
            let mut stmt =
                tx.prepare_cached("INSERT INTO data_keys (customer_id, wrapped, created_at) VALUES (?1, ?2, ?3)")?;
            let now = micros(Utc::now());
            for (id, wrapped) in &changes.new_keys {
                stmt.execute(params![id.to_string(), wrapped, now])?;
            }
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO identifiers (identifier, kind, customer_id, created_at, value, sealed) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for new in &changes.new_identifiers {
                stmt.execute(params![
                    new.token.to_string(),
                    new.token.kind().as_str(),
                    new.customer.to_string(),
                    micros(new.at),
                    new.value.clear(),
                    new.value.sealed(),
                ])?;
            }
        }
        let mut event_seqs: foldhash::HashMap<EventId, i64> = foldhash::HashMapExt::with_capacity(changes.events.len());
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO events (customer_id, event_id, source, message_id, type, name, channel, ts, received_at, \
                 sent_at, original_timestamp, user_id, anonymous_id, store, order_id, amount_minor, currency, \
                 properties, context, traits, extra, identifiers, sealed) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
            )?;
            for event in &changes.events {
                let m = event.message;
                let json = event.encoded;
                stmt.execute(params![
                    event.customer_id.to_string(),
                    event.event_id.to_string(),
                    event.source,
                    m.message_id,
                    m.kind.as_str(),
                    m.name,
                    m.channel.as_str(),
                    micros(m.timestamp),
                    micros(m.received_at),
                    m.sent_at.map(micros),
                    m.original_timestamp.map(micros),
                    json.user_id,
                    json.anonymous_id,
                    m.store,
                    m.order.as_ref().and_then(|o| o.order_id.as_deref()),
                    m.order.as_ref().map(|o| o.amount_minor),
                    m.order.as_ref().map(|o| o.currency.as_str()),
                    json.properties,
                    json.context,
                    json.traits,
                    json.extra,
                    json.tokens_json,
                    event.sealed,
                ])?;
                event_seqs.insert(event.event_id, tx.last_insert_rowid());
            }
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO message_ids (source, message_id, event_seq, received_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (source, message_id, _, event, at) in &changes.message_claims {
                let seq = event_seqs
                    .get(event)
                    .ok_or_else(|| StoreError::Database(format!("message {message_id} claims an event not written")))?;
                stmt.execute(params![source, message_id, seq, micros(*at)])?;
            }
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO customer_days (customer_id, day, orders, revenue_minor) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (customer_id, day) DO UPDATE SET orders = orders + excluded.orders, \
                 revenue_minor = revenue_minor + excluded.revenue_minor",
            )?;
            for (customer, day, orders, revenue) in &changes.day_deltas {
                stmt.execute(params![customer.to_string(), day.to_string(), orders, revenue])?;
            }
        }
        for merge in &changes.merges {
            let survivor = merge.survivor.to_string();
            let merged = merge.merged.to_string();
            let moved: Vec<String> = {
                let mut stmt = tx.prepare_cached("SELECT identifier FROM identifiers WHERE customer_id = ?1")?;
                let rows = stmt.query_map([&merged], |r| r.get::<_, String>(0))?;
                rows.collect::<Result<_, _>>()?
            };
            tx.execute("UPDATE identifiers SET customer_id = ?1 WHERE customer_id = ?2", [&survivor, &merged])?;
            tx.execute(
                "UPDATE customers SET merged_into = ?1, merged_at = ?3 WHERE customer_id = ?2 OR merged_into = ?2",
                params![survivor, merged, micros(merge.at)],
            )?;
            tx.execute(
                "INSERT INTO customer_days (customer_id, day, orders, revenue_minor) \
                 SELECT ?1, day, orders, revenue_minor FROM customer_days WHERE customer_id = ?2 AND true \
                 ON CONFLICT (customer_id, day) DO UPDATE SET orders = orders + excluded.orders, \
                 revenue_minor = revenue_minor + excluded.revenue_minor",
                [&survivor, &merged],
            )?;
            tx.execute("DELETE FROM customer_days WHERE customer_id = ?1", [&merged])?;
            tx.execute(
                "INSERT OR IGNORE INTO account_members (customer_id, group_id, joined_at) \
                 SELECT ?1, group_id, joined_at FROM account_members WHERE customer_id = ?2",
                [&survivor, &merged],
            )?;
            tx.execute("DELETE FROM account_members WHERE customer_id = ?1", [&merged])?;
            tx.execute(
                "INSERT INTO merges (merge_id, survivor_id, merged_id, at, reason, identifiers) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    merge.merge_id.to_string(),
                    survivor,
                    merged,
                    micros(merge.at),
                    merge.reason,
                    serde_json::to_string(&moved).unwrap_or_default()
                ],
            )?;
        }
        for (identifier, customer, at) in &changes.sightings {
            let identifier = identifier.to_string();
            tx.execute(
                "INSERT OR IGNORE INTO identifier_sightings (identifier, customer_id, at) VALUES (?1, ?2, ?3)",
                params![identifier, customer.to_string(), micros(*at)],
            )?;
            tx.execute(
                "UPDATE identifiers SET people_seen = 1 + (SELECT count(*) FROM identifier_sightings WHERE identifier = ?1), \
                 shared = (1 + (SELECT count(*) FROM identifier_sightings WHERE identifier = ?1) > ?2) WHERE identifier = ?1",
                params![identifier, changes.shared_limit],
            )?;
        }
        if !changes.name_tokens.is_empty() {
            let mut clear = tx.prepare_cached("DELETE FROM name_tokens WHERE customer_id = ?1")?;
            let mut insert =
                tx.prepare_cached("INSERT OR IGNORE INTO name_tokens (token, customer_id) VALUES (?1, ?2)")?;
            for (customer, tokens) in &changes.name_tokens {
                let customer = customer.to_string();
                clear.execute([&customer])?;
                for token in tokens {
                    insert.execute(params![token, customer])?;
                }
            }
        }
        if !changes.unclassified.is_empty() {
            let mut stmt =
                tx.prepare_cached("INSERT OR IGNORE INTO unclassified_fields (path, first_seen) VALUES (?1, ?2)")?;
            let now = micros(Utc::now());
            for path in &changes.unclassified {
                stmt.execute(params![path, now])?;
            }
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO identity_conflicts (customer_id, other_customer_id, kind, message_id, at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for c in &changes.conflicts {
                stmt.execute(params![
                    c.customer.to_string(),
                    c.other.to_string(),
                    c.kind.as_str(),
                    c.message_id,
                    micros(c.at)
                ])?;
            }
        }
        {
            // Shallow merge in Rust, as on PostgreSQL (`||`): newer keys replace
            // older ones, nested objects are replaced whole, nulls are kept.
            let mut current = tx.prepare_cached("SELECT traits FROM accounts WHERE group_id = ?1")?;
            let mut account = tx.prepare_cached(
                "INSERT INTO accounts (group_id, account_id, traits, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4) \
                 ON CONFLICT (group_id) DO UPDATE SET traits = excluded.traits, updated_at = excluded.updated_at",
            )?;
            for (group_id, traits, at) in &changes.accounts {
                let existing: Option<String> = current.query_row([group_id], |r| r.get(0)).optional()?;
                let mut merged: Map<String, Value> =
                    existing.and_then(|text| serde_json::from_str(&text).ok()).unwrap_or_default();
                merged.extend(traits.iter().map(|(k, v)| (k.clone(), v.clone())));
                account.execute(params![
                    group_id,
                    super::new_account_id().to_string(),
                    json_text(&merged),
                    micros(*at)
                ])?;
            }
            let mut member = tx.prepare_cached(
                "INSERT OR IGNORE INTO account_members (customer_id, group_id, joined_at) VALUES (?1, ?2, ?3)",
            )?;
            for (customer, group_id, at) in &changes.memberships {
                member.execute(params![customer.to_string(), group_id, micros(*at)])?;
            }
        }
        {
            let mut with_profile = tx.prepare_cached(
                "UPDATE customers SET profile = ?2, traits = ?3, updated_at = ?4, sealed = ?5 WHERE customer_id = ?1",
            )?;
            let mut traits_only =
                tx.prepare_cached("UPDATE customers SET traits = ?2, updated_at = ?3 WHERE customer_id = ?1")?;
            let now = micros(Utc::now());
            for (id, state) in &changes.customers {
                if let Some((clear, sealed)) = changes.profiles.get(id) {
                    with_profile.execute(params![id.to_string(), clear, encode_traits(&state.traits), now, sealed])?;
                } else {
                    traits_only.execute(params![id.to_string(), encode_traits(&state.traits), now])?;
                }
            }
        }
        if let Some(cache) = self.cache.as_mut() {
            if changes.merges.is_empty() && changes.sightings.is_empty() {
                let linked = changes.new_identifiers.iter().map(|n| (n.token.clone(), (n.customer, false)));
                self.written.owners.extend(linked);
            } else {
                // Owners moved or became shared: forget them, from now on (later
                // reads in this transaction see the table), and what this
                // transaction read before.
                cache.owners.clear();
                self.written.owners.clear();
            }
        }
        Ok(())
    }

    fn keep(&mut self, changes: Changes<'_>) {
        if self.cache.is_none() {
            return;
        }
        let mut exclusives: HashMap<CustomerId, Vec<Identifier>> = changes.exclusives.into_iter().collect();
        for (id, state) in changes.customers {
            if state.merged_into.is_none() && !changes.merges.iter().any(|m| m.merged == id) {
                let held = exclusives.remove(&id).unwrap_or_default();
                self.written.customers.push((id, (CustomerState { profile_changed: false, ..state }, held)));
            }
        }
    }
}

/// What ingest reads of a `customers` row: profile, traits, merged_into, sealed profile fields.
type CustomerStateRow = (String, Option<Vec<u8>>, Option<String>, Option<Vec<u8>>);

/// A `customers` row: created_at, merged_into, profile, traits, sealed profile fields.
type CustomerRow = (i64, Option<String>, String, Option<Vec<u8>>, Option<Vec<u8>>);

/// Traits as SQLite stores them: postcard, a compact binary serde format.
fn encode_traits(traits: &ComputedTraits) -> Vec<u8> {
    postcard::to_allocvec(traits).unwrap_or_default()
}

/// Decode stored traits; a profile without traits yet has the defaults.
fn decode_traits(bytes: Option<&[u8]>) -> Result<ComputedTraits, StoreError> {
    match bytes {
        None | Some([]) => Ok(ComputedTraits::default()),
        Some(bytes) => postcard::from_bytes(bytes).map_err(|e| {
            StoreError::Database(format!("stored traits do not decode: {e}; run `relais traits rebuild`"))
        }),
    }
}

fn customer_state(
    profile: &str,
    traits: Option<&[u8]>,
    merged_into: Option<&str>,
) -> Result<CustomerState, StoreError> {
    Ok(CustomerState {
        profile: serde_json::from_str(profile).unwrap_or_default(),
        traits: decode_traits(traits)?,
        merged_into: merged_into.map(parse_id).transpose()?,
        profile_changed: false,
        sealed_profile: None,
    })
}

/// The columns traits are computed from, as read from `events` (owned, since a
/// SQLite row borrows its statement).
const FACT_COLUMNS: &str = "customer_id, ts, message_id, channel, store, type, name, amount_minor, currency";

struct FactRow {
    customer: String,
    ts: i64,
    message_id: String,
    channel: String,
    store: Option<String>,
    kind: String,
    name: Option<String>,
    amount: Option<i64>,
    currency: Option<String>,
}

impl FactRow {
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<FactRow> {
        Ok(FactRow {
            customer: row.get(0)?,
            ts: row.get(1)?,
            message_id: row.get(2)?,
            channel: row.get(3)?,
            store: row.get(4)?,
            kind: row.get(5)?,
            name: row.get(6)?,
            amount: row.get(7)?,
            currency: row.get(8)?,
        })
    }

    fn facts(&self) -> Result<(CustomerId, EventFacts<'_>), StoreError> {
        Ok((
            parse_id(&self.customer)?,
            EventFacts {
                timestamp: from_micros(self.ts),
                message_id: &self.message_id,
                channel: Channel::parse(&self.channel).unwrap_or(Channel::Other),
                store: self.store.as_deref(),
                order_kind: EventFacts::order_kind_of(&self.kind, self.name.as_deref()),
                amount_minor: self.amount,
                currency: self.currency.as_deref(),
            },
        ))
    }
}

const OUTBOX_COLUMNS: &str =
    "outbox_id, kind, customer_id, payload, status, attempts, next_attempt_at, last_error, created_at, delivered_at";

fn outbox_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<OutboxItem, StoreError>> {
    let id: String = row.get(0)?;
    let customer: Option<String> = row.get(2)?;
    let payload: String = row.get(3)?;
    let status: String = row.get(4)?;
    let (attempts, next, error, created, delivered): (i32, i64, Option<String>, i64, Option<i64>) =
        (row.get(5)?, row.get(6)?, row.get(7)?, row.get(8)?, row.get(9)?);
    let kind: String = row.get(1)?;
    Ok((|| {
        Ok(OutboxItem {
            outbox_id: parse_id(&id)?,
            kind,
            customer_id: customer.as_deref().map(parse_id).transpose()?,
            payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
            status: OutboxStatus::parse(&status)
                .ok_or_else(|| StoreError::Database(format!("unknown outbox status `{status}`")))?,
            attempts,
            next_attempt_at: from_micros(next),
            last_error: error,
            created_at: from_micros(created),
            delivered_at: delivered.map(from_micros),
        })
    })())
}

const EVENT_COLUMNS: &str = "event_id, customer_id, message_id, type, name, channel, ts, received_at, sent_at, \
     store, user_id, anonymous_id, properties, context, traits, computed, sealed";

/// A stored event with its sealed part, not yet opened.
type SealedEvent = (StoredEvent, Option<Vec<u8>>);

fn event_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<SealedEvent, StoreError>> {
    let event_id: String = row.get(0)?;
    let customer_id: String = row.get(1)?;
    let channel: String = row.get(5)?;
    let properties: String = row.get(12)?;
    let context: String = row.get(13)?;
    let traits: String = row.get(14)?;
    let build = || -> Result<StoredEvent, StoreError> {
        Ok(StoredEvent {
            event_id: parse_id(&event_id)?,
            customer_id: parse_id(&customer_id)?,
            message_id: row.get(2)?,
            kind: row.get(3)?,
            name: row.get(4)?,
            channel: Channel::parse(&channel).unwrap_or(Channel::Other),
            timestamp: from_micros(row.get(6)?),
            received_at: from_micros(row.get(7)?),
            sent_at: row.get::<_, Option<i64>>(8)?.map(from_micros),
            store: row.get(9)?,
            user_id: row.get(10)?,
            anonymous_id: row.get(11)?,
            properties: serde_json::from_str(&properties).unwrap_or(Value::Null),
            context: serde_json::from_str(&context).unwrap_or(Value::Null),
            traits: serde_json::from_str(&traits).unwrap_or(Value::Null),
            computed: row.get(15)?,
        })
    };
    let sealed: Option<Vec<u8>> = row.get(16)?;
    Ok(build().map(|event| (event, sealed)))
}

/// The erasure itself, in one transaction; returns the report and the profiles erased.
fn erase_in_transaction(
    conn: &mut Connection,
    customer: CustomerId,
    today: NaiveDate,
) -> Result<(ErasureReport, Vec<CustomerId>), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let merged_into: Option<Option<String>> = tx
        .query_row("SELECT merged_into FROM customers WHERE customer_id = ?1", [customer.to_string()], |r| r.get(0))
        .optional()?;
    let root = match merged_into {
        None => return Err(StoreError::NotFound),
        Some(Some(survivor)) => survivor,
        Some(None) => customer.to_string(),
    };
    let cluster: Vec<String> = tx
        .prepare("SELECT customer_id FROM customers WHERE customer_id = ?1 OR merged_into = ?1")?
        .query_map([&root], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let ids = placeholders(cluster.len(), 0);
    let values = || rusqlite::params_from_iter(cluster.iter());
    let run = |sql: String| -> Result<usize, StoreError> { Ok(tx.execute(&sql, values())?) };
    // Decision 10: the person's loyalty accounts close with a final entry, and
    // their entries stay, de-identified, so the ledger still sums to zero.
    let mut ledger = SqliteTx::plain(&tx);
    let people: Vec<CustomerId> = cluster.iter().map(|c| parse_id(c)).collect::<Result<_, _>>()?;
    super::loyalty::close_for_erasure(&mut ledger, &[parse_id(&root)?], &people, today)?;
    // The ledger and its lots are in time order: they are found through the
    // person's memberships, whose customer their rows carry.
    let members = format!("SELECT member_id FROM loyalty_members WHERE customer_id IN ({ids})");
    run(format!(
        "UPDATE loyalty_entries SET customer_id = '{erased}', event_id = NULL, message_id = NULL, order_id = NULL, \
         actor = NULL, reason = json_remove(reason, '$.order_id', '$.reason', '$.actor') \
         WHERE member_id IN ({members}) AND customer_id IN ({ids})",
        erased = super::ERASED_CUSTOMER
    ))?;
    run(format!("DELETE FROM loyalty_lots WHERE member_id IN ({members}) AND customer_id IN ({ids})"))?;
    run(format!(
        "UPDATE loyalty_draws SET customer_id = '{erased}', member_id = '', event_id = '' WHERE customer_id IN ({ids})",
        erased = super::ERASED_CUSTOMER
    ))?;
    // The erased leave their segments; sizes follow.
    run(format!(
        "UPDATE segments SET members = members - (SELECT count(*) FROM segment_members m \
         WHERE m.segment_id = segments.segment_id AND m.customer_id IN ({ids}))"
    ))?;
    for table in [
        "loyalty_idempotency",
        "loyalty_progress",
        "loyalty_badges",
        "loyalty_coupon_uses",
        "loyalty_redemptions",
        "loyalty_tier_changes",
        "loyalty_members",
        "segment_members",
        "customer_scores",
    ] {
        run(format!("DELETE FROM {table} WHERE customer_id IN ({ids})"))?;
    }
    run(format!(
        "DELETE FROM identifier_sightings WHERE customer_id IN ({ids}) \
         OR identifier IN (SELECT identifier FROM identifiers WHERE customer_id IN ({ids}))"
    ))?;
    let identifiers = run(format!("DELETE FROM identifiers WHERE customer_id IN ({ids})"))?;
    let linking: String = super::LINKING_PROPERTIES.iter().map(|p| format!(", '$.{p}'")).collect();
    let events = run(format!(
        "UPDATE events SET customer_id = '{erased}', message_id = event_id, user_id = NULL, anonymous_id = NULL, \
         sealed = NULL, traits = '{{}}', extra = '{{}}', identifiers = '[]', order_id = NULL, \
         properties = json_remove(properties{linking}) WHERE customer_id IN ({ids})",
        erased = super::ERASED_CUSTOMER
    ))?;
    run(format!(
        "INSERT INTO customer_days (customer_id, day, orders, revenue_minor) \
         SELECT '{erased}', day, orders, revenue_minor FROM customer_days WHERE customer_id IN ({ids}) AND true \
         ON CONFLICT (customer_id, day) DO UPDATE SET orders = orders + excluded.orders, \
         revenue_minor = revenue_minor + excluded.revenue_minor",
        erased = super::ERASED_CUSTOMER
    ))?;
    run(format!("DELETE FROM customer_days WHERE customer_id IN ({ids})"))?;
    run(format!("DELETE FROM identity_conflicts WHERE customer_id IN ({ids}) OR other_customer_id IN ({ids})"))?;
    run(format!("DELETE FROM merges WHERE survivor_id IN ({ids}) OR merged_id IN ({ids})"))?;
    run(format!("DELETE FROM account_members WHERE customer_id IN ({ids})"))?;
    run(format!("DELETE FROM outbox WHERE customer_id IN ({ids})"))?;
    run(format!("DELETE FROM consents WHERE customer_id IN ({ids})"))?;
    run(format!("DELETE FROM name_tokens WHERE customer_id IN ({ids})"))?;
    run(format!("DELETE FROM sign_in_codes WHERE customer_id IN ({ids})"))?;
    run(format!("DELETE FROM web_sessions WHERE kind = 'member' AND subject IN ({ids})"))?;
    let profiles = run(format!("DELETE FROM customers WHERE customer_id IN ({ids})"))?;
    let keys = run(format!("DELETE FROM data_keys WHERE customer_id IN ({ids})"))?;
    let report = ErasureReport {
        erasure_id: ErasureId::new(),
        erased_at: Utc::now(),
        profiles_erased: profiles,
        identifiers_erased: identifiers,
        events_deidentified: events,
        keys_destroyed: keys,
        customers: Vec::new(),
    };
    tx.execute(
        "INSERT INTO erasures (erasure_id, erased_at, customer_ids, profiles, identifiers, events, keys) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            report.erasure_id.to_string(),
            micros(report.erased_at),
            serde_json::to_string(&cluster).unwrap_or_default(),
            profiles,
            identifiers,
            events,
            keys
        ],
    )?;
    tx.commit()?;
    let cluster = cluster.iter().map(|c| parse_id(c)).collect::<Result<Vec<CustomerId>, _>>()?;
    let report = ErasureReport { customers: cluster.clone(), ..report };
    Ok((report, cluster))
}

const REQUEST_COLUMNS: &str =
    "request_id, kind, customer_id, received_at, due_at, completed_at, status, outcome, recorded_by";

fn request_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<RightsRequest, StoreError>> {
    let (id, kind, customer): (String, String, Option<String>) = (r.get(0)?, r.get(1)?, r.get(2)?);
    let times = (from_micros(r.get(3)?), from_micros(r.get(4)?), r.get::<_, Option<i64>>(5)?.map(from_micros));
    let (status, outcome, by): (String, String, String) = (r.get(6)?, r.get(7)?, r.get(8)?);
    Ok(super::rights_request(&id, &kind, customer.as_deref(), times, &status, &outcome, by))
}

const AUDIT_COLUMNS: &str = "segment_id, seq, at, actor, action, subject, detail, prev_hash, hash";

fn audit_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        segment_id: r.get(0)?,
        seq: r.get(1)?,
        at: from_micros(r.get(2)?),
        actor: r.get(3)?,
        action: r.get(4)?,
        subject: r.get(5)?,
        detail: r.get(6)?,
        prev_hash: r.get(7)?,
        hash: r.get(8)?,
    })
}

/// The system keys, if the database has them yet.
fn read_keyring(conn: &Connection) -> Result<Option<StoredKeyring>, StoreError> {
    let rows: Vec<(String, Vec<u8>, String)> = conn
        .prepare("SELECT name, wrapped, master_fingerprint FROM keyring")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    Ok(super::stored_keyring(rows))
}

/// Wrapped data keys of customers that have one.
fn read_data_keys(conn: &Connection, customers: &[CustomerId]) -> Result<Vec<(CustomerId, Vec<u8>)>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT wrapped FROM data_keys WHERE customer_id = ?1")?;
    let mut found = Vec::with_capacity(customers.len());
    for customer in customers {
        if let Some(wrapped) = stmt.query_row([customer.to_string()], |r| r.get(0)).optional()? {
            found.push((*customer, wrapped));
        }
    }
    Ok(found)
}

/// The clear `kind:value` of stored identifier tokens (a token whose identifier
/// is gone, or whose key was destroyed, stays a token).
fn reveal(conn: &Connection, privacy: &Privacy, tokens: Vec<String>) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT value, sealed FROM identifiers WHERE identifier = ?1")?;
    let mut rows = Vec::with_capacity(tokens.len());
    for token in &tokens {
        if let Some((value, sealed)) = stmt.query_row([token], |r| Ok((r.get(0)?, r.get(1)?))).optional()? {
            rows.push((token.clone(), value, sealed, token.clone()));
        }
    }
    Ok(seal::reveal_tokens(tokens, open_identifiers(conn, privacy, rows)?))
}

/// Identifiers (clear) of stored rows, dropping those whose key was destroyed.
fn open_identifiers<T>(
    conn: &Connection,
    privacy: &Privacy,
    rows: Vec<seal::IdentifierRow<T>>,
) -> Result<Vec<(Identifier, T)>, StoreError> {
    seal::open_identifier_rows(&privacy.keyring, rows, |missing| read_data_keys(conn, missing))
}

fn placeholders(n: usize, offset: usize) -> String {
    (0..n).map(|i| format!("?{}", i + offset + 1)).collect::<Vec<_>>().join(", ")
}

impl Engine for SqliteEngine {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn privacy(&self) -> &Privacy {
        &self.privacy
    }

    fn rotate_master(&self, old: &MasterKey, new: &MasterKey) -> Result<(), StoreError> {
        let (old, new) = (old.clone(), new.clone());
        self.write(false, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let stored = read_keyring(&tx)?.ok_or_else(|| StoreError::Keys("the database has no keyring".into()))?;
            let rotated = crate::privacy::Keyring::rewrap(&stored, &old, &new)?;
            for (name, wrapped) in &rotated.wrapped {
                tx.execute(
                    "UPDATE keyring SET wrapped = ?2, master_fingerprint = ?3, rotated_at = ?4 WHERE name = ?1",
                    params![name, wrapped, rotated.master_fingerprint, micros(Utc::now())],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn ingest(&self, source: &str, messages: Vec<TrackingMessage>) -> Result<Vec<Outcome>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let encoded = messages.iter().map(|m| EncodedEvent::of(m, &self.privacy)).collect();
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs
            .send(Job::Ingest { source: source.to_string(), messages, encoded, reply })
            .map_err(|_| StoreError::Database("the SQLite writer has stopped".into()))?;
        self.acknowledged(answer)
    }

    fn insert_api_key(&self, key_hash: &str, key: &ApiKey) -> Result<(), StoreError> {
        let key_hash = key_hash.to_string();
        let key = key.clone();
        self.write(false, move |conn| {
            conn.execute(
                "INSERT INTO api_keys (key_hash, key_id, role, source, name, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![key_hash, key.key_id.to_string(), key.role.as_str(), key.source, key.name, micros(Utc::now())],
            )?;
            Ok(())
        })
    }

    fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        self.readers.with(|conn| {
            let row: Option<(String, String, String, Option<String>)> = conn
                .prepare_cached(
                    "SELECT key_id, role, source, name FROM api_keys WHERE key_hash = ?1 AND revoked_at IS NULL",
                )?
                .query_row([key_hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?;
            row.map(|(key_id, role, source, name)| {
                Ok(ApiKey {
                    key_id: parse_id::<KeyId>(&key_id)?,
                    role: Role::parse(&role).ok_or_else(|| StoreError::Database(format!("unknown role `{role}`")))?,
                    source,
                    name,
                })
            })
            .transpose()
        })
    }

    fn customer(&self, id: CustomerId) -> Result<CustomerLookup, StoreError> {
        self.readers.with(|conn| {
            let key = id.to_string();
            let row: Option<CustomerRow> = conn
                .prepare_cached(
                    "SELECT created_at, merged_into, profile, traits, sealed FROM customers WHERE customer_id = ?1",
                )?
                .query_row([&key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                .optional()?;
            let Some((created_at, merged_into, profile, traits, sealed)) = row else {
                return Ok(CustomerLookup::NotFound);
            };
            if let Some(survivor) = merged_into {
                return Ok(CustomerLookup::MergedInto(parse_id(&survivor)?));
            }
            let mut state = customer_state(&profile, traits.as_deref(), None)?;
            let keys = seal::data_keys(&self.privacy.keyring, &[id], |missing| read_data_keys(conn, missing))?;
            seal::open_profile(&mut state.profile, sealed.as_deref(), keys.get(&id))?;
            let rows = conn
                .prepare_cached("SELECT identifier, value, sealed, shared FROM identifiers WHERE customer_id = ?1")?
                .query_map([&key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, bool>(3)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            let mut identifiers = open_identifiers(conn, &self.privacy, rows)?;
            identifiers.sort();
            let shared_identifiers = identifiers.iter().filter(|(_, shared)| *shared).map(|(i, _)| i.clone()).collect();
            let identifiers = identifiers.into_iter().map(|(i, _)| i).collect();
            let merged_from = conn
                .prepare_cached("SELECT customer_id FROM customers WHERE merged_into = ?1 ORDER BY customer_id")?
                .query_map([&key], |r| r.get::<_, String>(0))?
                .map(|r| parse_id(&r?))
                .collect::<Result<Vec<CustomerId>, StoreError>>()?;
            let days = conn
                .prepare_cached(
                    "SELECT day, orders, revenue_minor FROM customer_days WHERE customer_id = ?1 ORDER BY day",
                )?
                .query_map([&key], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))?
                .map(|r| {
                    let (day, orders, revenue_minor) = r?;
                    Ok(DayTotals {
                        day: day.parse::<NaiveDate>().map_err(|e| StoreError::Database(e.to_string()))?,
                        orders,
                        revenue_minor,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let accounts = conn
                .prepare_cached("SELECT group_id FROM account_members WHERE customer_id = ?1 ORDER BY group_id")?
                .query_map([&key], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(CustomerLookup::Found(Box::new(CustomerRecord {
                id,
                created_at: from_micros(created_at),
                profile: state.profile,
                traits: state.traits,
                identifiers,
                shared_identifiers,
                merged_from,
                days,
                accounts,
            })))
        })
    }

    fn customer_id_by_identifier(&self, identifier: &Identifier) -> Result<Option<CustomerId>, StoreError> {
        self.readers.with(|conn| {
            let owner: Option<String> = conn
                .prepare_cached("SELECT customer_id FROM identifiers WHERE identifier = ?1")?
                .query_row([self.privacy.keyring.token(identifier).to_string()], |r| r.get(0))
                .optional()?;
            owner.map(|o| parse_id(&o)).transpose()
        })
    }

    fn events(&self, id: CustomerId, after: Option<&TimelineCursor>, limit: usize) -> Result<EventPage, StoreError> {
        let after = after.cloned();
        self.readers.with(move |conn| {
            let key = id.to_string();
            let mut owners: Vec<String> = conn
                .prepare_cached("SELECT customer_id FROM customers WHERE merged_into = ?1")?
                .query_map([&key], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            owners.push(key);
            let mut values: Vec<rusqlite::types::Value> =
                owners.iter().map(|o| rusqlite::types::Value::Text(o.clone())).collect();
            let mut sql =
                format!("SELECT {EVENT_COLUMNS} FROM events WHERE customer_id IN ({})", placeholders(owners.len(), 0));
            if let Some(cursor) = &after {
                let n = values.len();
                sql.push_str(&format!(" AND (ts < ?{} OR (ts = ?{} AND event_id < ?{}))", n + 1, n + 1, n + 2));
                values.push(rusqlite::types::Value::Integer(micros(cursor.timestamp)));
                values.push(rusqlite::types::Value::Text(cursor.event_id.to_string()));
            }
            sql.push_str(&format!(" ORDER BY ts DESC, event_id DESC LIMIT {}", limit + 1));
            let mut stmt = conn.prepare_cached(&sql)?;
            let sealed_events = stmt
                .query_map(rusqlite::params_from_iter(values), event_from_row)?
                .map(|r| r.map_err(StoreError::from).and_then(|inner| inner))
                .collect::<Result<Vec<_>, StoreError>>()?;
            let mut events =
                seal::open_events(&self.privacy.keyring, sealed_events, |missing| read_data_keys(conn, missing))?;
            let next = if events.len() > limit {
                events.truncate(limit);
                events.last().map(|e| TimelineCursor { timestamp: e.timestamp, event_id: e.event_id })
            } else {
                None
            };
            Ok(EventPage { events, next })
        })
    }

    fn merges(&self, id: CustomerId) -> Result<Vec<MergeRecord>, StoreError> {
        self.readers.with(|conn| {
            conn.prepare_cached(
                "SELECT merge_id, survivor_id, merged_id, at, reason, identifiers FROM merges \
                 WHERE survivor_id = ?1 AND undone_at IS NULL ORDER BY merge_id",
            )?
            .query_map([id.to_string()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?
            .map(|r| {
                let (merge_id, survivor, merged, at, reason, identifiers) = r?;
                Ok(MergeRecord {
                    merge_id: parse_id(&merge_id)?,
                    survivor_id: parse_id(&survivor)?,
                    merged_id: parse_id(&merged)?,
                    at: from_micros(at),
                    reason,
                    identifiers: reveal(conn, &self.privacy, serde_json::from_str(&identifiers).unwrap_or_default())?,
                })
            })
            .collect()
        })
    }

    fn enqueue(&self, kind: &str, customer: Option<CustomerId>, payload: &Value) -> Result<OutboxId, StoreError> {
        let (kind, payload) = (kind.to_string(), payload.clone());
        let privacy = self.privacy.clone();
        self.write(false, move |conn| {
            let key = match customer {
                Some(c) => Some(seal::data_key_of(&privacy.keyring, c, |missing| read_data_keys(conn, missing))?),
                None => None,
            };
            let payload = seal::seal_payload(customer.zip(key.as_ref()), &payload);
            let id = OutboxId::new();
            let now = micros(Utc::now());
            conn.execute(
                "INSERT INTO outbox (outbox_id, kind, customer_id, payload, status, next_attempt_at, created_at) \
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5)",
                params![id.to_string(), kind, customer.map(|c| c.to_string()), payload, now],
            )?;
            Ok(id)
        })
    }

    fn claim_outbox(&self, limit: usize, lease: chrono::Duration) -> Result<Vec<OutboxItem>, StoreError> {
        let privacy = self.privacy.clone();
        self.write(false, move |conn| {
            let now = Utc::now();
            let sql = format!(
                "UPDATE outbox SET lease_until = ?1, attempts = attempts + 1 WHERE outbox_id IN \
                 (SELECT outbox_id FROM outbox WHERE status = 'pending' AND next_attempt_at <= ?2 \
                  AND (lease_until IS NULL OR lease_until <= ?2) ORDER BY next_attempt_at LIMIT ?3) \
                 RETURNING {OUTBOX_COLUMNS}"
            );
            let mut stmt = conn.prepare(&sql)?;
            let items = stmt
                .query_map(params![micros(now + lease), micros(now), limit as i64], outbox_from_row)?
                .map(|r| r.map_err(StoreError::from).and_then(|inner| inner))
                .collect::<Result<Vec<_>, _>>()?;
            drop(stmt);
            seal::open_outbox(&privacy.keyring, items, |missing| read_data_keys(conn, missing))
        })
    }

    fn finish_outbox(&self, id: OutboxId, result: &DeliveryResult) -> Result<(), StoreError> {
        let result = result.clone();
        self.write(false, move |conn| {
            let key = id.to_string();
            let now = micros(Utc::now());
            match result {
                DeliveryResult::Delivered => conn.execute(
                    "UPDATE outbox SET status = 'delivered', delivered_at = ?2, lease_until = NULL, last_error = NULL \
                     WHERE outbox_id = ?1 AND status = 'pending'",
                    params![key, now],
                )?,
                DeliveryResult::Retry { at, error } => conn.execute(
                    "UPDATE outbox SET next_attempt_at = ?2, lease_until = NULL, last_error = ?3 WHERE outbox_id = ?1 AND status = 'pending'",
                    params![key, micros(at), error],
                )?,
                DeliveryResult::GiveUp { error } => conn.execute(
                    "UPDATE outbox SET status = 'failed', lease_until = NULL, last_error = ?2 WHERE outbox_id = ?1 AND status = 'pending'",
                    params![key, error],
                )?,
            };
            Ok(())
        })
    }

    fn outbox(&self, status: Option<OutboxStatus>, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        self.readers.with(|conn| {
            let sql = format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE (?1 IS NULL OR status = ?1) ORDER BY outbox_id DESC LIMIT ?2"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let items = stmt
                .query_map(params![status.map(OutboxStatus::as_str), limit as i64], outbox_from_row)?
                .map(|r| r.map_err(StoreError::from).and_then(|inner| inner))
                .collect::<Result<Vec<_>, _>>()?;
            seal::open_outbox(&self.privacy.keyring, items, |missing| read_data_keys(conn, missing))
        })
    }

    fn unmerge(&self, merge_id: MergeId, settings: &IngestSettings) -> Result<UnmergeReport, StoreError> {
        let settings = settings.clone();
        let mut report = self.write(true, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let key = merge_id.to_string();
            let (merged, at, moved, undone): (String, i64, String, Option<i64>) = tx
                .query_row(
                    "SELECT merged_id, at, identifiers, undone_at FROM merges WHERE merge_id = ?1",
                    [&key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?
                .ok_or(StoreError::NotFound)?;
            if undone.is_some() {
                return Err(StoreError::Conflict(format!("merge {key} was already undone")));
            }
            let survivor: String = tx
                .query_row("SELECT merged_into FROM customers WHERE customer_id = ?1", [&merged], |r| {
                    r.get::<_, Option<String>>(0)
                })?
                .ok_or_else(|| StoreError::Conflict(format!("profile {merged} is not merged any more")))?;
            let moved: Vec<String> = serde_json::from_str(&moved).unwrap_or_default();
            for identifier in &moved {
                tx.execute(
                    "UPDATE identifiers SET customer_id = ?1 WHERE identifier = ?2 AND customer_id = ?3",
                    params![merged, identifier, survivor],
                )?;
            }
            tx.execute("UPDATE customers SET merged_into = NULL, merged_at = NULL WHERE customer_id = ?1", [&merged])?;
            tx.execute(&super::unmerge_descendants_sqlite(), [&merged, &survivor])?;
            let owned = |customer: &str| -> Result<std::collections::HashSet<String>, StoreError> {
                Ok(tx
                    .prepare("SELECT identifier FROM identifiers WHERE customer_id = ?1")?
                    .query_map([customer], |r| r.get(0))?
                    .collect::<Result<_, _>>()?)
            };
            let (restored_set, survivor_set) = (owned(&merged)?, owned(&survivor)?);
            let later: Vec<(i64, String, String)> = tx
                .prepare("SELECT seq, identifiers, event_id FROM events WHERE customer_id = ?1 AND received_at >= ?2")?
                .query_map(params![survivor, at], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            let mut events_moved = 0;
            let mut going_back = Vec::new();
            for (seq, identifiers, event_id) in later {
                if event_goes_back(&identifiers, &restored_set, &survivor_set) {
                    tx.execute("UPDATE events SET customer_id = ?1 WHERE seq = ?2", params![merged, seq])?;
                    events_moved += 1;
                    going_back.push(event_id);
                }
            }
            // Loyalty: the restored profile's membership gets back its points.
            let mut ledger = SqliteTx::plain(&tx);
            super::loyalty::unmerge_members(&mut ledger, parse_id(&merged)?, &going_back, settings.day_of(Utc::now()))?;
            for root in [&survivor, &merged] {
                let (traits, days) = {
                    let rows: Vec<FactRow> = tx
                        .prepare(&format!(
                            "SELECT {FACT_COLUMNS} FROM events WHERE NOT computed AND (customer_id = ?1 \
                             OR customer_id IN (SELECT customer_id FROM customers WHERE merged_into = ?1))"
                        ))?
                        .query_map([root], FactRow::read)?
                        .collect::<Result<_, _>>()?;
                    let facts = rows.iter().map(FactRow::facts).collect::<Result<Vec<_>, _>>()?;
                    family_traits(parse_id(root)?, facts, &settings)
                };
                tx.execute(
                    "UPDATE customers SET traits = ?2, updated_at = ?3 WHERE customer_id = ?1",
                    params![root, encode_traits(&traits), micros(Utc::now())],
                )?;
                tx.execute("DELETE FROM customer_days WHERE customer_id = ?1", [root])?;
                for (_, day, orders, revenue) in days {
                    tx.execute(
                        "INSERT INTO customer_days (customer_id, day, orders, revenue_minor) VALUES (?1, ?2, ?3, ?4)",
                        params![root, day.to_string(), orders, revenue],
                    )?;
                }
            }
            tx.execute("UPDATE merges SET undone_at = ?2 WHERE merge_id = ?1", params![key, micros(Utc::now())])?;
            tx.commit()?;
            Ok(UnmergeReport {
                merge_id,
                survivor_id: parse_id(&survivor)?,
                restored_id: parse_id(&merged)?,
                identifiers: moved,
                events_moved,
            })
        })?;
        report.identifiers = self.readers.with(|conn| reveal(conn, &self.privacy, report.identifiers.clone()))?;
        Ok(report)
    }

    fn erase(&self, customer: CustomerId) -> Result<ErasureReport, StoreError> {
        let today = self.settings.day_of(Utc::now());
        let (report, cluster) = self.write(true, move |conn| {
            // Deleted rows (the data keys above all) are overwritten with zeros,
            // not left in free pages.
            conn.pragma_update(None, "secure_delete", "ON")?;
            let result = erase_in_transaction(conn, customer, today);
            conn.pragma_update(None, "secure_delete", "OFF")?;
            result
        })?;
        for id in &cluster {
            self.privacy.keyring.forget(*id);
        }
        // Copy the zeroed pages into the database and empty the write-ahead log,
        // so no older copy of a destroyed key stays in it.
        self.write(false, |conn| {
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(())
        })?;
        Ok(report)
    }

    fn record_consent(
        &self,
        customer: CustomerId,
        fact: &ConsentFact,
        recorded_by: &str,
        token_id: Option<&str>,
    ) -> Result<(CustomerId, ConsentId), StoreError> {
        let (fact, recorded_by, token_id) = (fact.clone(), recorded_by.to_string(), token_id.map(str::to_string));
        let privacy = self.privacy.clone();
        self.write(false, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let merged_into: Option<Option<String>> = tx
                .query_row("SELECT merged_into FROM customers WHERE customer_id = ?1", [customer.to_string()], |r| {
                    r.get(0)
                })
                .optional()?;
            let owner = match merged_into {
                None => return Err(StoreError::NotFound),
                Some(Some(survivor)) => parse_id::<CustomerId>(&survivor)?,
                Some(None) => customer,
            };
            if let Some(token) = &token_id {
                let fresh = tx.execute(
                    "INSERT OR IGNORE INTO consent_tokens (token_id, used_at) VALUES (?1, ?2)",
                    params![token, micros(Utc::now())],
                )?;
                if fresh == 0 {
                    return Err(StoreError::Conflict("this link was already used; a link works once".into()));
                }
            }
            let key = seal::data_key_of(&privacy.keyring, owner, |missing| read_data_keys(&tx, missing))?;
            let proof = key.seal(owner, &serde_json::to_vec(&fact.proof).unwrap_or_default());
            let id = ConsentId::new();
            tx.execute(
                "INSERT INTO consents (customer_id, consent_id, purpose, channel, granted, at, source, wording_version, \
                 proof, recorded_by, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    owner.to_string(),
                    id.to_string(),
                    fact.purpose.as_str(),
                    fact.channel.as_str(),
                    fact.granted,
                    micros(fact.at),
                    fact.source.as_str(),
                    fact.wording_version,
                    proof,
                    recorded_by,
                    micros(Utc::now())
                ],
            )?;
            tx.commit()?;
            Ok((owner, id))
        })
    }

    fn consents(&self, customer: CustomerId) -> Result<Vec<ConsentFact>, StoreError> {
        self.readers.with(|conn| {
            let key = customer.to_string();
            let rows = conn
                .prepare_cached(
                    "SELECT purpose, channel, granted, at, source, wording_version, proof FROM consents \
                     WHERE customer_id = ?1 OR customer_id IN (SELECT customer_id FROM customers WHERE merged_into = ?1) \
                     ORDER BY at, consent_id",
                )?
                .query_map([&key], |r| {
                    Ok(super::ConsentRow {
                        purpose: r.get(0)?,
                        channel: r.get(1)?,
                        granted: r.get(2)?,
                        at: from_micros(r.get(3)?),
                        source: r.get(4)?,
                        wording_version: r.get(5)?,
                        proof: r.get(6)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            super::open_consents(&self.privacy.keyring, rows, |missing| read_data_keys(conn, missing))
        })
    }

    fn audit_write(&self, segment: &AuditSegment, records: &[AuditRecord]) -> Result<(), StoreError> {
        let (segment, records) = (segment.clone(), records.to_vec());
        self.write(false, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO audit_segments (segment_id, process, day, opened_at, closed_at, records, last_hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (segment_id) DO UPDATE SET \
                 closed_at = excluded.closed_at, records = excluded.records, last_hash = excluded.last_hash",
                params![
                    segment.segment_id,
                    segment.process,
                    segment.day,
                    micros(segment.opened_at),
                    segment.closed_at.map(micros),
                    segment.records,
                    segment.last_hash
                ],
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO audit_log (segment_id, seq, at, actor, action, subject, detail, prev_hash, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for r in &records {
                insert.execute(params![
                    r.segment_id,
                    r.seq,
                    micros(r.at),
                    r.actor,
                    r.action,
                    r.subject,
                    r.detail,
                    r.prev_hash,
                    r.hash
                ])?;
            }
            drop(insert);
            tx.commit()?;
            Ok(())
        })
    }

    fn open_request(&self, request: &RightsRequest) -> Result<(), StoreError> {
        let r = request.clone();
        self.write(false, move |conn| {
            conn.execute(
                "INSERT INTO rights_requests (request_id, kind, customer_id, received_at, due_at, status, outcome, recorded_by) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    r.request_id.to_string(),
                    r.kind.as_str(),
                    r.customer_id.map(|c| c.to_string()),
                    micros(r.received_at),
                    micros(r.due_at),
                    r.status.as_str(),
                    r.outcome.to_string(),
                    r.recorded_by
                ],
            )?;
            Ok(())
        })
    }

    fn requests(&self, status: Option<RequestStatus>) -> Result<Vec<RightsRequest>, StoreError> {
        self.readers.with(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {REQUEST_COLUMNS} FROM rights_requests WHERE (?1 IS NULL OR status = ?1) ORDER BY due_at, request_id"
            ))?;
            let rows = stmt.query_map([status.map(RequestStatus::as_str)], request_from_row)?;
            rows.map(|r| r.map_err(StoreError::from).and_then(|inner| inner)).collect()
        })
    }

    fn request(&self, id: RequestId) -> Result<Option<RightsRequest>, StoreError> {
        self.readers.with(|conn| {
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {REQUEST_COLUMNS} FROM rights_requests WHERE request_id = ?1"))?;
            stmt.query_row([id.to_string()], request_from_row).optional()?.transpose()
        })
    }

    fn close_request(
        &self,
        id: RequestId,
        status: RequestStatus,
        outcome: &Value,
        forget_person: bool,
    ) -> Result<(), StoreError> {
        let outcome = outcome.to_string();
        self.write(false, move |conn| {
            let changed = conn.execute(
                "UPDATE rights_requests SET status = ?2, outcome = ?3, completed_at = ?4, \
                 customer_id = CASE WHEN ?5 THEN NULL ELSE customer_id END WHERE request_id = ?1 AND status = 'open'",
                params![id.to_string(), status.as_str(), outcome, micros(Utc::now()), forget_person],
            )?;
            if changed == 0 {
                return Err(StoreError::Conflict(format!("request {id} is not open")));
            }
            Ok(())
        })
    }

    fn customers_by_name(&self, tokens: &[String], limit: usize) -> Result<Vec<CustomerId>, StoreError> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        self.readers.with(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT customer_id FROM name_tokens WHERE token IN ({}) GROUP BY customer_id \
                 HAVING count(DISTINCT token) = {} ORDER BY customer_id LIMIT {limit}",
                placeholders(tokens.len(), 0),
                tokens.len()
            ))?;
            let rows = stmt.query_map(rusqlite::params_from_iter(tokens.iter()), |r| r.get::<_, String>(0))?;
            rows.map(|r| parse_id(&r?)).collect()
        })
    }

    fn inactive_customers(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<CustomerId>, StoreError> {
        self.readers.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT customer_id FROM customers WHERE merged_into IS NULL AND updated_at < ?1 ORDER BY customer_id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![micros(before), limit as i64], |r| r.get::<_, String>(0))?;
            rows.map(|r| parse_id(&r?)).collect()
        })
    }

    fn purge_class_from_events(&self, class: DataClass, before: DateTime<Utc>) -> Result<usize, StoreError> {
        let privacy = self.privacy.clone();
        self.write(false, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let from: i64 = tx
                .query_row("SELECT purged_before FROM retention_marks WHERE class = ?1", [class.as_str()], |r| r.get(0))
                .optional()?
                .unwrap_or(i64::MIN);
            let rows: Vec<(i64, Vec<u8>)> = tx
                .prepare("SELECT seq, sealed FROM events WHERE ts >= ?1 AND ts < ?2 AND sealed IS NOT NULL")?
                .query_map(params![from, micros(before)], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let owners = seal::owners_of(rows.iter().map(|(_, s)| s.as_slice()));
            let keys = seal::data_keys(&privacy.keyring, &owners, |missing| read_data_keys(&tx, missing))?;
            let mut changed = 0;
            {
                let mut update = tx.prepare_cached("UPDATE events SET sealed = ?2 WHERE seq = ?1")?;
                for (seq, sealed) in &rows {
                    let owner = crate::privacy::keyring::sealed_owner(sealed)?;
                    let Some(key) = keys.get(&owner) else { continue };
                    let stripped = match seal::strip_sealed(&privacy.classes, owner, key, sealed, &[class])? {
                        seal::Stripped::Unchanged => continue,
                        seal::Stripped::Sealed(rest) => Some(rest),
                        seal::Stripped::Empty => None,
                    };
                    update.execute(params![seq, stripped])?;
                    changed += 1;
                }
            }
            tx.execute(
                "INSERT INTO retention_marks (class, purged_before) VALUES (?1, ?2) \
                 ON CONFLICT (class) DO UPDATE SET purged_before = excluded.purged_before",
                params![class.as_str(), micros(before)],
            )?;
            tx.commit()?;
            Ok(changed)
        })
    }

    fn erasures(&self) -> Result<Vec<crate::privacy::backup::JournalEntry>, StoreError> {
        self.readers.with(|conn| {
            let mut stmt =
                conn.prepare("SELECT erasure_id, erased_at, customer_ids FROM erasures ORDER BY erasure_id")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)))?;
            rows.map(|row| {
                let (id, at, ids) = row?;
                let ids: Vec<String> = serde_json::from_str(&ids).unwrap_or_default();
                Ok(crate::privacy::backup::JournalEntry {
                    erasure_id: parse_id(&id)?,
                    erased_at: from_micros(at),
                    customers: ids.iter().map(|c| parse_id(c)).collect::<Result<_, _>>()?,
                })
            })
            .collect()
        })
    }

    fn unclassified_fields(&self) -> Result<Vec<String>, StoreError> {
        self.readers.with(|conn| {
            let mut stmt = conn.prepare("SELECT path FROM unclassified_fields ORDER BY path")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn audit_purge_segment(&self, segment_id: &str) -> Result<(), StoreError> {
        let segment_id = segment_id.to_string();
        self.write(false, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let marked = tx.execute(
                "UPDATE audit_segments SET purged_at = ?2 WHERE segment_id = ?1 AND closed_at IS NOT NULL AND purged_at IS NULL",
                params![segment_id, micros(Utc::now())],
            )?;
            if marked == 0 {
                return Err(StoreError::Conflict(format!("audit segment {segment_id} is not closed, or already removed")));
            }
            tx.execute("DELETE FROM audit_log WHERE segment_id = ?1", [&segment_id])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn audit_segments(&self) -> Result<Vec<AuditSegment>, StoreError> {
        self.readers.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT segment_id, process, day, opened_at, closed_at, records, last_hash, purged_at \
                 FROM audit_segments ORDER BY segment_id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(AuditSegment {
                    segment_id: r.get(0)?,
                    process: r.get(1)?,
                    day: r.get(2)?,
                    opened_at: from_micros(r.get(3)?),
                    closed_at: r.get::<_, Option<i64>>(4)?.map(from_micros),
                    records: r.get(5)?,
                    last_hash: r.get(6)?,
                    purged_at: r.get::<_, Option<i64>>(7)?.map(from_micros),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn audit_records(&self, segment_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
        self.readers.with(|conn| {
            let mut stmt =
                conn.prepare(&format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE segment_id = ?1 ORDER BY seq"))?;
            let rows = stmt.query_map([segment_id], audit_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn audit_trail(&self, subjects: &[CustomerId]) -> Result<Vec<AuditRecord>, StoreError> {
        let subjects: Vec<String> = subjects.iter().map(ToString::to_string).collect();
        self.readers.with(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE subject IN ({}) ORDER BY at, segment_id, seq",
                placeholders(subjects.len(), 0)
            ))?;
            let rows = stmt.query_map(rusqlite::params_from_iter(subjects.iter()), audit_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn rebuild_traits(&self, settings: &IngestSettings) -> Result<u64, StoreError> {
        let settings = settings.clone();
        self.write(true, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let merged_into: HashMap<CustomerId, CustomerId> = tx
                .prepare("SELECT customer_id, merged_into FROM customers WHERE merged_into IS NOT NULL")?
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .map(|r| {
                    let (a, b) = r?;
                    Ok((parse_id(&a)?, parse_id(&b)?))
                })
                .collect::<Result<_, StoreError>>()?;
            let mut rebuild = Rebuild::default();
            {
                let mut stmt = tx.prepare(&format!("SELECT {FACT_COLUMNS} FROM events WHERE computed = 0"))?;
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    let row = FactRow::read(row)?;
                    let (customer, facts) = row.facts()?;
                    rebuild.add(customer, &facts, &settings);
                }
            }
            let (traits, days) = rebuild.finish(&merged_into);
            let all: Vec<String> = tx
                .prepare("SELECT customer_id FROM customers")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            {
                let mut update = tx.prepare("UPDATE customers SET traits = ?2 WHERE customer_id = ?1")?;
                for customer in &all {
                    let id: CustomerId = parse_id(customer)?;
                    let computed = traits.get(&id).cloned().unwrap_or_else(ComputedTraits::default);
                    update.execute(params![customer, encode_traits(&computed)])?;
                }
            }
            tx.execute("DELETE FROM customer_days", [])?;
            {
                let mut insert = tx.prepare(
                    "INSERT INTO customer_days (customer_id, day, orders, revenue_minor) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (customer, day, orders, revenue) in &days {
                    insert.execute(params![customer.to_string(), day.to_string(), orders, revenue])?;
                }
            }
            tx.commit()?;
            Ok(all.len() as u64)
        })
    }

    fn purge_message_ids(&self, received_before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.write(false, move |conn| {
            Ok(conn.execute("DELETE FROM message_ids WHERE received_at < ?1", [micros(received_before)])? as u64)
        })
    }

    fn loyalty_apply(
        &self,
        programme: &relais_domain::loyalty::Programme,
        today: NaiveDate,
    ) -> Result<Result<i64, relais_domain::loyalty::ProgrammeError>, StoreError> {
        let programme = programme.clone();
        self.write(false, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let current = loyalty::load_programmes(&tx)?;
            if let Some(old) = current.iter().find(|p| p.head.key == programme.head.key) {
                if *old == programme {
                    let revision: i64 =
                        tx.query_row("SELECT COALESCE(MAX(revision), 0) FROM loyalty_programmes", [], |r| r.get(0))?;
                    return Ok(Ok(revision));
                }
                if let Err(refused) = old.check_change(&programme, today) {
                    return Ok(Err(refused));
                }
            }
            let revision = loyalty::save_programme(&tx, &programme)?;
            tx.commit()?;
            Ok(Ok(revision))
        })
    }

    fn loyalty_programmes(&self) -> Result<Vec<relais_domain::loyalty::Programme>, StoreError> {
        self.readers.with(|conn| loyalty::load_programmes(conn))
    }

    fn loyalty_enrol(
        &self,
        customer: CustomerId,
        programme: &str,
    ) -> Result<(super::loyalty::MemberView, bool), StoreError> {
        let (programme, privacy) = (programme.to_string(), self.privacy.clone());
        let enrolment = self.write(false, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut ledger = SqliteTx::sealing(&tx, &privacy);
            let enrolment = super::loyalty::enrol(&mut ledger, customer, &programme)?;
            tx.commit()?;
            Ok(enrolment)
        })?;
        let view = self.loyalty_member(enrolment.member.member)?.ok_or(StoreError::NotFound)?;
        Ok((view, enrolment.created))
    }

    fn loyalty_member(&self, id: relais_domain::MemberId) -> Result<Option<super::loyalty::MemberView>, StoreError> {
        self.readers.with(|conn| {
            let Some(row) = loyalty::member(conn, id)? else { return Ok(None) };
            let mut ledger = SqliteTx::plain(conn);
            let customer = super::loyalty::LedgerTx::root_of(&mut ledger, row.customer)?.unwrap_or(row.customer);
            let cards = loyalty::card_numbers(conn, &self.privacy, vec![row.card_token.clone()])?;
            Ok(Some(super::loyalty::MemberView { card_number: cards.get(&row.card_token).cloned(), customer, row }))
        })
    }

    fn loyalty_members_of(&self, customer: CustomerId) -> Result<Vec<super::loyalty::MemberView>, StoreError> {
        self.readers.with(|conn| {
            let mut ledger = SqliteTx::plain(conn);
            let Some(root) = super::loyalty::LedgerTx::root_of(&mut ledger, customer)? else { return Ok(Vec::new()) };
            let rows = loyalty::members_of(conn, root)?;
            let cards =
                loyalty::card_numbers(conn, &self.privacy, rows.iter().map(|r| r.card_token.clone()).collect())?;
            Ok(super::loyalty::MemberView::of_person(rows, root, &cards))
        })
    }

    fn loyalty_entries(&self, id: relais_domain::MemberId) -> Result<super::loyalty::MemberLedger, StoreError> {
        self.readers.with(|conn| {
            let row = loyalty::member(conn, id)?.ok_or(StoreError::NotFound)?;
            let lots = SqliteTx::plain(conn).open_lots(&row)?;
            Ok(super::loyalty::MemberLedger {
                entries: loyalty::entries(conn, &row)?,
                lots,
                badges: loyalty::badges(conn, &row)?,
            })
        })
    }

    fn loyalty_operate(
        &self,
        request: &super::loyalty::ManualOperation,
    ) -> Result<super::loyalty::OperationAnswer, StoreError> {
        let request = request.clone();
        // A debit is a handful of rows: it shares the next group commit.
        self.write_grouped(move |tx| super::loyalty::operate(&mut SqliteTx::plain(tx), &request))
    }

    fn loyalty_expire(&self, day: NaiveDate) -> Result<(usize, i64), StoreError> {
        let (mut members, mut points) = (0, 0);
        loop {
            let due = self.readers.with(|conn| loyalty::members_with_due_lots(conn, day, 500))?;
            if due.is_empty() {
                return Ok((members, points));
            }
            let (m, p) = self.write(false, move |conn| {
                let (mut members, mut points) = (0, 0);
                for member in due {
                    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    let mut ledger = SqliteTx::plain(&tx);
                    let expired = super::loyalty::expire_member(&mut ledger, member, day)?;
                    tx.commit()?;
                    members += usize::from(expired > 0);
                    points += expired;
                }
                Ok((members, points))
            })?;
            if m == 0 {
                return Ok((members, points));
            }
            members += m;
            points += p;
        }
    }

    fn loyalty_report(
        &self,
        programme: &str,
        since: Option<NaiveDate>,
    ) -> Result<super::loyalty::ReportRows, StoreError> {
        self.readers.with(|conn| loyalty::report(conn, programme, since))
    }

    fn loyalty_review(&self, day: NaiveDate) -> Result<usize, StoreError> {
        let programmes = self.loyalty_programmes()?;
        let reviewing = super::loyalty::reviewing(&programmes, day);
        let due = self.readers.with(|conn| loyalty::members_to_review(conn, day, &reviewing))?;
        if due.is_empty() {
            return Ok(0);
        }
        let (privacy, language) = (self.privacy.clone(), self.settings.language);
        self.write(false, move |conn| {
            let mut changes = 0;
            for member in due {
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let mut ledger = SqliteTx::sealing(&tx, &privacy);
                changes += usize::from(super::loyalty::review_member(&mut ledger, member, day, language)?);
                tx.commit()?;
            }
            Ok(changes)
        })
    }

    fn loyalty_release(&self, now: DateTime<Utc>, day: NaiveDate) -> Result<(usize, i64), StoreError> {
        let before = now - chrono::Duration::days(1);
        let candidates = self.readers.with(|conn| SqliteTx::plain(conn).reservations_before(before))?;
        if candidates.is_empty() {
            return Ok((0, 0));
        }
        let due = super::loyalty::due_reservations(candidates, now, |programme| self.loyalty_rewards(programme))?;
        if due.is_empty() {
            return Ok((0, 0));
        }
        self.write(false, move |conn| {
            let (mut released, mut points) = (0, 0);
            for id in due {
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let mut ledger = SqliteTx::plain(&tx);
                let given = super::loyalty::release_redemption(&mut ledger, &id, now, day)?;
                tx.commit()?;
                if let Some(given) = given {
                    released += 1;
                    points += given;
                }
            }
            Ok((released, points))
        })
    }

    fn loyalty_tier_value(
        &self,
        id: relais_domain::MemberId,
        measure: relais_domain::loyalty::tiers::Measure,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<i64, StoreError> {
        self.readers.with(|conn| {
            let row = loyalty::member(conn, id)?.ok_or(StoreError::NotFound)?;
            SqliteTx::plain(conn).tier_value(&row, measure, from, to)
        })
    }

    fn loyalty_put_reward(
        &self,
        programme: &str,
        reward: &relais_domain::loyalty::rewards::Reward,
    ) -> Result<Option<i64>, StoreError> {
        let (programme, reward) = (programme.to_string(), reward.clone());
        self.write(false, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let old: Option<(String, Option<i64>)> = tx
                .query_row(
                    "SELECT definition, stock_left FROM loyalty_rewards WHERE programme_key = ?1 AND reward_id = ?2",
                    params![programme, reward.id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let old = old
                .map(|(d, left)| Ok::<_, StoreError>((super::loyalty::reward_from_json(&d)?.stock, left)))
                .transpose()?;
            let left = super::loyalty::stock_after_change(old, reward.stock);
            let definition = serde_json::to_string(&reward).map_err(|e| StoreError::Database(e.to_string()))?;
            tx.execute(
                "INSERT INTO loyalty_rewards (programme_key, reward_id, definition, stock_left, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (programme_key, reward_id) DO UPDATE SET \
                 definition = excluded.definition, stock_left = excluded.stock_left, updated_at = excluded.updated_at",
                params![programme, reward.id, definition, left, micros(Utc::now())],
            )?;
            tx.commit()?;
            Ok(left)
        })
    }

    fn loyalty_rewards(
        &self,
        programme: &str,
    ) -> Result<Vec<(relais_domain::loyalty::rewards::Reward, Option<i64>)>, StoreError> {
        self.readers.with(|conn| {
            let rows = conn
                .prepare_cached(
                    "SELECT definition, stock_left FROM loyalty_rewards WHERE programme_key = ?1 ORDER BY reward_id",
                )?
                .query_map([programme], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(|(d, left)| Ok((super::loyalty::reward_from_json(&d)?, left))).collect()
        })
    }

    fn loyalty_settle(
        &self,
        id: &str,
        confirm: bool,
        actor: &str,
        day: NaiveDate,
    ) -> Result<super::loyalty::RedemptionRow, StoreError> {
        let (id, actor) = (id.to_string(), actor.to_string());
        self.write(false, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut ledger = SqliteTx::plain(&tx);
            let row = super::loyalty::settle_redemption(&mut ledger, &id, confirm, &actor, day)?;
            tx.commit()?;
            Ok(row)
        })
    }

    fn loyalty_issue_coupons(
        &self,
        programme: &str,
        campaign: &relais_domain::loyalty::coupons::Campaign,
        code_hashes: &[String],
    ) -> Result<(i64, i64), StoreError> {
        let (programme, campaign, hashes) = (programme.to_string(), campaign.clone(), code_hashes.to_vec());
        self.write(false, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let definition = serde_json::to_string(&campaign).map_err(|e| StoreError::Database(e.to_string()))?;
            tx.execute(
                "INSERT INTO loyalty_coupon_campaigns (programme_key, campaign_id, definition, codes, used, updated_at) \
                 VALUES (?1, ?2, ?3, 0, 0, ?4) ON CONFLICT (programme_key, campaign_id) DO UPDATE SET \
                 definition = excluded.definition, updated_at = excluded.updated_at",
                params![programme, campaign.id, definition, micros(Utc::now())],
            )?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO loyalty_coupon_codes (code_hash, programme_key, campaign_id) VALUES (?1, ?2, ?3)",
                )?;
                for hash in &hashes {
                    stmt.execute(params![hash, programme, campaign.id])?;
                }
            }
            let counts = tx.query_row(
                "UPDATE loyalty_coupon_campaigns SET codes = codes + ?3 WHERE programme_key = ?1 AND campaign_id = ?2 \
                 RETURNING codes, used",
                params![programme, campaign.id, hashes.len() as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            tx.commit()?;
            Ok(counts)
        })
    }

    fn loyalty_campaigns(
        &self,
        programme: &str,
    ) -> Result<Vec<(relais_domain::loyalty::coupons::Campaign, i64, i64)>, StoreError> {
        self.readers.with(|conn| {
            let rows = conn
                .prepare_cached(
                    "SELECT definition, codes, used FROM loyalty_coupon_campaigns WHERE programme_key = ?1 \
                     ORDER BY campaign_id",
                )?
                .query_map([programme], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(d, codes, used)| Ok((super::loyalty::campaign_from_json(&d)?, codes, used)))
                .collect()
        })
    }

    fn loyalty_use_coupon(
        &self,
        request: &super::loyalty::CouponRequest,
    ) -> Result<super::loyalty::CouponAccepted, StoreError> {
        let request = request.clone();
        self.write(false, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let accepted = super::loyalty::use_coupon(&mut SqliteTx::plain(&tx), &request)?;
            tx.commit()?;
            Ok(accepted)
        })
    }

    fn loyalty_check(&self) -> Result<super::loyalty::LedgerCheck, StoreError> {
        self.readers.with(|conn| loyalty::check(conn))
    }

    fn loyalty_forget_answers(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.write(false, move |conn| {
            Ok(conn.execute("DELETE FROM loyalty_idempotency WHERE created_at < ?1", [micros(before)])? as u64)
        })
    }

    fn purchases(&self, currency: &str) -> Result<Vec<(CustomerId, DateTime<Utc>, i64)>, StoreError> {
        self.readers.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT COALESCE(c.merged_into, c.customer_id), e.ts, e.amount_minor FROM events e \
                 JOIN customers c ON c.customer_id = e.customer_id \
                 WHERE e.type = 'track' AND e.name = ?1 AND e.currency = ?2 AND e.amount_minor IS NOT NULL",
            )?;
            let rows = stmt
                .query_map(params![relais_domain::message::events::ORDER_COMPLETED, currency], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(|(c, ts, amount)| Ok((parse_id(&c)?, from_micros(ts), amount))).collect()
        })
    }

    fn segment_put(
        &self,
        record: &super::segments::SegmentRecord,
    ) -> Result<super::segments::SegmentRecord, StoreError> {
        self.put_segment(record)
    }

    fn segments(&self) -> Result<Vec<super::segments::SegmentRecord>, StoreError> {
        // Every ingest request asks once committed; those of one group share a read.
        Ok(self.segment_list.get(|| self.all_segments())?.as_ref().clone())
    }

    fn segment_delete(&self, name: &str) -> Result<bool, StoreError> {
        self.delete_segment(name)
    }

    fn segment_facts(
        &self,
        columns: &[relais_domain::segment::Column],
        only: Option<&[CustomerId]>,
        now: DateTime<Utc>,
    ) -> Result<(Vec<CustomerId>, relais_domain::segment::FactTable), StoreError> {
        self.facts(columns, only, now)
    }

    fn segment_sync(
        &self,
        evaluated: &[(super::segments::SegmentRecord, Vec<CustomerId>)],
        scope: Option<&[CustomerId]>,
        now: DateTime<Utc>,
    ) -> Result<Vec<super::segments::MembershipChange>, StoreError> {
        self.sync_segments(evaluated, scope, now)
    }

    fn segment_members(
        &self,
        segment: relais_domain::SegmentId,
        after: Option<CustomerId>,
        limit: usize,
    ) -> Result<Vec<(CustomerId, DateTime<Utc>)>, StoreError> {
        self.members_of(segment, after, limit)
    }

    fn segment_overlap(&self, a: relais_domain::SegmentId, b: relais_domain::SegmentId) -> Result<i64, StoreError> {
        self.overlap(a, b)
    }

    fn merged_into(&self, survivors: &[CustomerId]) -> Result<Vec<CustomerId>, StoreError> {
        let json = serde_json::to_string(&survivors.iter().map(|c| c.to_string()).collect::<Vec<_>>())
            .map_err(|e| StoreError::Database(e.to_string()))?;
        self.readers.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT customer_id FROM customers WHERE merged_into IN (SELECT value FROM json_each(?1))",
            )?;
            let ids = stmt.query_map([&json], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
            ids.iter().map(|id| parse_id(id)).collect()
        })
    }

    fn scores_put(&self, scores: &[super::segments::CustomerScore], at: DateTime<Utc>) -> Result<(), StoreError> {
        self.put_scores(scores, at)
    }

    fn segment_figures(
        &self,
        segment: relais_domain::SegmentId,
        first_day: NaiveDate,
        last_day: NaiveDate,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<super::segments::SegmentFigures, StoreError> {
        self.figures(segment, first_day, last_day, from, to)
    }

    fn snapshot_put(
        &self,
        segment: relais_domain::SegmentId,
        snapshot: &super::segments::Snapshot,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.put_snapshot(segment, snapshot, at)
    }

    fn snapshots(&self, segment: relais_domain::SegmentId) -> Result<Vec<super::segments::Snapshot>, StoreError> {
        self.all_snapshots(segment)
    }

    fn typology_put(
        &self,
        record: &super::segments::TypologyRecord,
    ) -> Result<super::segments::TypologyRecord, StoreError> {
        self.put_typology(record)
    }

    fn typologies(&self) -> Result<Vec<super::segments::TypologyRecord>, StoreError> {
        self.all_typologies()
    }

    fn typology_delete(&self, name: &str) -> Result<bool, StoreError> {
        self.delete_typology(name)
    }

    fn user_create(&self, user: &super::web::User, password_hash: &str) -> Result<(), StoreError> {
        self.create_user(user, password_hash)
    }

    fn user_by_email(&self, email: &str) -> Result<Option<(super::web::User, String)>, StoreError> {
        self.find_user("email", email)
    }

    fn user(&self, id: relais_domain::UserId) -> Result<Option<super::web::User>, StoreError> {
        Ok(self.find_user("user_id", &id.to_string())?.map(|(user, _)| user))
    }

    fn session_put(&self, token_hash: &str, session: &super::web::WebSession) -> Result<(), StoreError> {
        self.put_session(token_hash, session)
    }

    fn session(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<super::web::WebSession>, StoreError> {
        self.find_session(token_hash, now)
    }

    fn session_delete(&self, token_hash: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.delete_session(token_hash, now)
    }

    fn sign_in_code_put(&self, code: &super::web::SignInCode) -> Result<(), StoreError> {
        self.put_sign_in_code(code)
    }

    fn sign_in_code_use(
        &self,
        kind: super::web::CodeKind,
        customer: Option<CustomerId>,
        code_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<CustomerId>, StoreError> {
        self.use_sign_in_code(kind, customer, code_hash, now)
    }

    fn customer_score(&self, customer: CustomerId) -> Result<Option<super::segments::ScoreRow>, StoreError> {
        self.readers.with(|conn| {
            Ok(conn
                .prepare_cached("SELECT r, f, m, rfm_group, clv_minor FROM customer_scores WHERE customer_id = ?1")?
                .query_row([customer.to_string()], |r| {
                    Ok(super::segments::ScoreRow {
                        r: r.get(0)?,
                        f: r.get(1)?,
                        m: r.get(2)?,
                        group: r.get(3)?,
                        clv: r.get(4)?,
                    })
                })
                .optional()?)
        })
    }

    fn event_flow(&self, since: DateTime<Utc>, bucket_seconds: i64) -> Result<Vec<(i64, String, i64)>, StoreError> {
        // Rows are appended in the order they are received, so the newest
        // rows are the last rowids: walk back from the end, no index needed.
        self.readers.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT (received_at / 1000000 / ?2) * ?2 AS bucket, channel, count(*) FROM events \
                 WHERE seq > (SELECT COALESCE(max(seq), 0) FROM events) - ?3 AND received_at >= ?1 AND computed = 0 \
                 GROUP BY bucket, channel ORDER BY bucket, channel",
            )?;
            let rows = stmt.query_map(params![micros(since), bucket_seconds.max(1), FLOW_ROWS_READ], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn journey_events(
        &self,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        visit: &mut dyn FnMut(&relais_domain::journey::LoggedEvent<'_>) -> bool,
    ) -> Result<u64, StoreError> {
        let from = from.map_or(i64::MIN, |t| t.timestamp_micros());
        let to = to.map_or(i64::MAX, |t| t.timestamp_micros());
        self.readers.with(|conn| {
            // Merged profiles are few: their survivors are looked up in memory
            // rather than joined for every event, and the events are read in
            // the order they were stored (no sort; the caller sorts).
            let mut survivors: HashMap<String, String> = HashMap::new();
            let mut stmt =
                conn.prepare("SELECT customer_id, merged_into FROM customers WHERE merged_into IS NOT NULL")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                survivors.insert(row.get(0)?, row.get(1)?);
            }
            let mut stmt = conn.prepare(
                "SELECT e.customer_id, e.ts, e.type, e.name, e.channel FROM events e \
                 WHERE e.computed = 0 AND e.type IN ('page', 'screen', 'track') AND e.ts >= ?1 AND e.ts < ?2 \
                 AND e.customer_id <> ?3 ORDER BY e.seq",
            )?;
            let mut rows = stmt.query(params![from, to, super::ERASED_CUSTOMER])?;
            let mut read = 0;
            while let Some(row) = rows.next()? {
                read += 1;
                let stored = text(row, 0)?.unwrap_or_default();
                let event = relais_domain::journey::LoggedEvent {
                    customer: survivors.get(stored).map_or(stored, String::as_str),
                    at_micros: row.get(1)?,
                    kind: text(row, 2)?.unwrap_or_default(),
                    name: text(row, 3)?,
                    channel: text(row, 4)?.unwrap_or_default(),
                };
                if !visit(&event) {
                    break;
                }
            }
            Ok(read)
        })
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.readers.with(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
    }

    fn counts(&self) -> Result<(u64, u64), StoreError> {
        self.readers.with(|conn| {
            let customers: i64 =
                conn.query_row("SELECT count(*) FROM customers WHERE merged_into IS NULL", [], |r| r.get(0))?;
            let events: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
            Ok((customers as u64, events as u64))
        })
    }

    fn durability(&self) -> Result<Vec<(String, String)>, StoreError> {
        let _ = &self.settings;
        self.write(false, |conn| {
            let journal: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
            let synchronous: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
            let synchronous = match synchronous {
                0 => "off",
                1 => "normal",
                2 => "full",
                3 => "extra",
                _ => "unknown",
            };
            Ok(vec![
                ("journal_mode".into(), journal),
                ("synchronous".into(), synchronous.into()),
                // What makes `normal` durable here: callers wait for the log's fdatasync.
                ("log_flush".into(), "fdatasync before acknowledgement".into()),
            ])
        })
    }
}

/// The benchmark's best case on SQLite: one connection, one transaction per chunk.
pub fn raw_load(
    folder: &Path,
    privacy: &Privacy,
    chunks: &mut dyn Iterator<Item = Vec<TrackingMessage>>,
) -> Result<std::time::Duration, StoreError> {
    std::fs::create_dir_all(folder).map_err(|e| StoreError::Config(e.to_string()))?;
    let mut conn = open_connection(&folder.join("relais.db"))?;
    migrate(&mut conn)?;
    let mut loaded = super::RawLoaded::default();
    let mut spent = std::time::Duration::ZERO;
    for chunk in chunks {
        let encoded: Vec<EncodedEvent> = chunk.iter().map(|m| EncodedEvent::of(m, privacy)).collect();
        let changes = super::raw_changes(&chunk, &encoded, &mut loaded, privacy);
        let started = std::time::Instant::now();
        let tx = conn.transaction()?;
        SqliteTx::plain(&tx).write(&changes)?;
        tx.commit()?;
        spent += started.elapsed();
    }
    Ok(spent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(folder: &Path) -> SqliteEngine {
        let master = MasterKey::generate();
        SqliteEngine::open(folder, IngestSettings::default(), &master, Classification::default()).expect("open")
    }

    /// A folder of its own under the system's temporary folder (not created).
    fn unique_folder(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("relais_{name}_{}", ulid::Ulid::new().to_string().to_lowercase()))
    }

    /// A single message's envelope, received now, under `defaults`.
    fn test_envelope(defaults: &IngestSettings) -> relais_domain::message::Envelope<'_> {
        relais_domain::message::Envelope {
            received_at: Utc::now(),
            implied_type: None,
            batch_sent_at: None,
            batch_context: None,
            default_currency: &defaults.currency,
            card_policy: defaults.card_policy,
        }
    }

    /// The writer's customer cache stays within its byte budget as entries
    /// grow, evicting the least recently used first; a customer taken out
    /// and put back counts once.
    #[test]
    fn the_customer_cache_keeps_to_its_byte_budget() {
        let state = |profile_bytes: usize| {
            let mut state = CustomerState::default();
            state.profile.insert("city".into(), Value::String("L".repeat(profile_bytes)));
            (state, Vec::new())
        };
        let one = cached_bytes(&state(100));
        let mut cache = CustomerEntries::new(one * 3);
        let ids: Vec<CustomerId> = (0..4).map(|_| CustomerId::new()).collect();
        for id in &ids[..3] {
            cache.put(*id, state(100));
        }
        assert_eq!(cache.bytes, one * 3);
        // The first is used again, so the second is the least recently used.
        assert!(cache.holds(&ids[0]));
        let taken = cache.pop(&ids[0]).expect("cached");
        assert_eq!(cache.bytes, one * 2);
        cache.put(ids[0], taken);
        cache.put(ids[3], state(100));
        assert!(!cache.holds(&ids[1]), "the least recently used is evicted");
        assert!(cache.holds(&ids[0]) && cache.holds(&ids[2]) && cache.holds(&ids[3]));
        assert_eq!(cache.bytes, one * 3);
        // An entry that grew (a profile filled in) pushes out older ones.
        cache.put(ids[3], state(100 + 2 * one));
        assert!(cache.bytes <= one * 3, "{} bytes over a budget of {}", cache.bytes, one * 3);
        assert!(cache.holds(&ids[3]));
        assert!(!cache.holds(&ids[0]) && !cache.holds(&ids[2]));
        cache.clear();
        assert_eq!(cache.bytes, 0);
    }

    fn count(engine: &SqliteEngine, sql: &'static str) -> i64 {
        engine.readers.with(|conn| Ok(conn.query_row(sql, [], |r| r.get(0))?)).expect("count")
    }

    /// The log's writes are gathered (`log_writes`), yet every commit is in the
    /// file when the commit returns: a copy of the files taken then, as a
    /// crash would leave them, recovers every committed row, including
    /// transactions large enough to spill pages to the log mid-way, rewrite
    /// them in place and roll back to savepoints.
    #[test]
    fn every_commit_is_in_the_log_file_when_it_returns() {
        let root = unique_folder("log_writes");
        let (live, copy) = (root.join("live"), root.join("copy"));
        std::fs::create_dir_all(&live).expect("folder");
        // Two writers, one after the other: each finds frames in the log that
        // its own handle did not write.
        let open = || open_connection(&live.join("relais.db")).expect("connection");
        let mut writers = [open(), open()];
        assert!(log_writes::log_writes_shim(), "the shim is the default VFS");
        for conn in &writers {
            conn.pragma_update(None, "synchronous", "NORMAL").expect("the writer's setting");
        }
        writers[0]
            .execute_batch(
                "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL); CREATE INDEX t_v ON t (v); \
                 CREATE TABLE u (k INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO u VALUES (1, 0);",
            )
            .expect("tables");
        let insert = |tx: &rusqlite::Transaction<'_>, round: i64, rows: i64| {
            for i in 0..rows {
                let k = round * 10_000 + (i * 7_919) % rows;
                let v = format!("{:x}-{}", k * 2_654_435_761, "x".repeat(100));
                tx.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", params![k, v]).expect("insert");
            }
        };
        let mut expected = 0i64;
        for round in 0..16i64 {
            // Even rounds are large transactions with a cache small enough to
            // spill pages to the log mid-way; odd rounds are small commits, whose
            // frames nothing reads back before the commit returns.
            let (rows, cache) = if round % 2 == 0 { (2_000i64, 20) } else { (5, 2_000) };
            let (this, other) = if round % 3 == 2 { (1, 0) } else { (0, 1) };
            if round % 4 == 3 {
                // The other writer spills a large transaction to the log and rolls
                // it back; what it left gathered must never land on this commit.
                writers[other].pragma_update(None, "cache_size", 20).expect("cache");
                let tx = writers[other].transaction().expect("transaction");
                insert(&tx, 1_000 + round, 2_000);
                drop(tx);
            }
            writers[this].pragma_update(None, "cache_size", cache).expect("cache");
            let tx = writers[this].transaction().expect("transaction");
            insert(&tx, round, rows);
            // Change pages already in the log within the transaction.
            tx.execute("UPDATE t SET v = v || 'again' WHERE k % 3 = 0 AND k >= ?1", [round * 10_000]).expect("update");
            tx.execute_batch("SAVEPOINT s; DELETE FROM t WHERE k % 2 = 0; ROLLBACK TO s; RELEASE s;")
                .expect("savepoint");
            tx.commit().expect("commit");
            expected += rows;
            // The other writer reads the log again, then commits a single page
            // after frames its own handle did not write.
            let seen: i64 = writers[other].query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("count");
            assert_eq!(seen, expected);
            writers[other].execute("UPDATE u SET n = n + 1 WHERE k = 1", []).expect("one-page commit");
            // A crash now: the files as they are.
            let _ = std::fs::remove_dir_all(&copy);
            std::fs::create_dir_all(&copy).expect("copy folder");
            for suffix in ["", "-wal"] {
                std::fs::copy(live.join(format!("relais.db{suffix}")), copy.join(format!("relais.db{suffix}")))
                    .expect("copy");
            }
            // Recovered by SQLite's own VFS, not the shim under test.
            let recovered =
                Connection::open_with_flags_and_vfs(copy.join("relais.db"), rusqlite::OpenFlags::default(), "unix")
                    .expect("open the copy");
            let count = |sql: &str| recovered.query_row(sql, [], |r| r.get::<_, i64>(0)).expect("count");
            assert_eq!(count("SELECT count(*) FROM t"), expected, "round {round}: every committed row is in the files");
            assert_eq!(
                count("SELECT count(*) FROM t WHERE v LIKE '%again'"),
                count("SELECT count(*) FROM t WHERE k % 3 = 0"),
                "round {round}: every committed update is in the files"
            );
            assert_eq!(count("SELECT n FROM u"), round + 1, "round {round}: the one-page commit is in the files");
            let check: String = recovered.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("check");
            assert_eq!(check, "ok");
        }
        drop(writers);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A database written before the ledger was laid out in time order
    /// (migration 7) keeps every entry and lot: the member's statement, open
    /// lots and the ledger's invariants read the same afterwards, through the
    /// new indexes.
    #[test]
    fn the_ledger_survives_its_move_to_time_order() {
        let folder = unique_folder("ledger_move");
        std::fs::create_dir_all(&folder).expect("folder");
        let (customer, member) = (CustomerId::new(), relais_domain::MemberId::new());
        let day = NaiveDate::from_ymd_opt(2026, 3, 3).expect("day");
        let reason =
            |kind| serde_json::to_string(&relais_domain::loyalty::ledger::Reason { kind, day }).expect("reason");
        let earned = reason(relais_domain::loyalty::ledger::ReasonKind::Event {
            event: "Review Submitted".into(),
            capped: false,
        });
        let spent = reason(relais_domain::loyalty::ledger::ReasonKind::Redemption { reason: "gift".into() });
        {
            let mut conn = open_connection(&folder.join("relais.db")).expect("connection");
            migrate_through(&mut conn, 6).expect("migrations 1 to 6");
            let (customer, member) = (customer.to_string(), member.to_string());
            conn.execute(
                "INSERT INTO loyalty_members (customer_id, member_id, programme_key, card_token, balance, status, enrolled_at) \
                 VALUES (?1, ?2, 'club', 'token', 30, 'active', 0)",
                params![customer, member],
            )
            .expect("member");
            for (tx, points, kind, why, at) in
                [("ltx_a", 50, "event", &earned, 1), ("ltx_b", -20, "redemption", &spent, 2)]
            {
                for (leg, account, signed) in [(0, "member", points), (1, "programme", -points)] {
                    conn.execute(
                        "INSERT INTO loyalty_entries (customer_id, tx_id, leg, member_id, programme_key, account, points, \
                         kind, rule, day, reason, expires_on, created_at) \
                         VALUES (?1, ?2, ?3, ?4, 'club', ?5, ?6, ?7, 'review', '2026-03-03', ?8, NULL, ?9)",
                        params![customer, tx, leg, member, account, signed, kind, why, at],
                    )
                    .expect("entry");
                }
            }
            conn.execute(
                "INSERT INTO loyalty_lots (customer_id, lot_id, member_id, points, remaining, expires_on) \
                 VALUES (?1, 'ltx_a', ?2, 50, 20, '2027-03-31')",
                params![customer, member],
            )
            .expect("lot");
            // Lots a debit takes after `ltx_a` (no expiry) and before it (sooner;
            // one spent); the open lots hold the balance, 30 points.
            for (lot, remaining, expires) in
                [("ltx_c", 5, None), ("ltx_d", 0, Some("2026-12-31")), ("ltx_e", 5, Some("2027-01-31"))]
            {
                conn.execute(
                    "INSERT INTO loyalty_lots (customer_id, lot_id, member_id, points, remaining, expires_on) \
                     VALUES (?1, ?2, ?3, 40, ?4, ?5)",
                    params![customer, lot, member, remaining, expires],
                )
                .expect("lot");
            }
        }
        let engine = engine(&folder);
        let ledger = engine.loyalty_entries(member).expect("the member's ledger");
        let points: Vec<i64> = ledger.entries.iter().map(|e| e.points).collect();
        assert_eq!(points, vec![50, -20], "the member's side of each transaction, oldest first");
        let open: Vec<(String, i64)> = ledger.lots.iter().map(|l| (l.id.clone(), l.remaining)).collect();
        assert_eq!(open.len(), 3, "{open:?}");
        assert!(open.contains(&("ltx_a".into(), 20)), "{open:?}");
        // A debit reads the open lots it takes, in `allocate`'s order, and stops
        // once they cover it.
        let covering = |points| {
            engine
                .readers
                .with(|conn| {
                    let row = loyalty::member(conn, member)?.ok_or(StoreError::NotFound)?;
                    SqliteTx::plain(conn).lots_to_cover(&row, points)
                })
                .expect("lots")
                .into_iter()
                .map(|l| l.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(covering(5), vec!["ltx_e"]);
        assert_eq!(covering(6), vec!["ltx_e", "ltx_a"]);
        assert_eq!(covering(25), vec!["ltx_e", "ltx_a"]);
        assert_eq!(covering(26), vec!["ltx_e", "ltx_a", "ltx_c"]);
        assert_eq!(covering(1_000), vec!["ltx_e", "ltx_a", "ltx_c"], "all of them when they do not cover it");
        let plans: Vec<String> = engine
            .readers
            .with(|conn| {
                let mut plans = Vec::new();
                for order in ["expires_on IS NOT NULL ORDER BY expires_on, lot_id", "expires_on IS NULL ORDER BY lot_id"] {
                    let sql = format!(
                        "EXPLAIN QUERY PLAN SELECT lot_id, remaining, expires_on FROM loyalty_lots WHERE member_id = 'm' \
                         AND remaining > 0 AND customer_id = 'c' AND {order}"
                    );
                    let mut stmt = conn.prepare(&sql)?;
                    let details = stmt.query_map([], |r| r.get::<_, String>(3))?.collect::<Result<Vec<_>, _>>()?;
                    plans.push(details.join("; "));
                }
                Ok(plans)
            })
            .expect("plans");
        for plan in plans {
            assert!(plan.contains("loyalty_lots_by_member") && !plan.contains("TEMP B-TREE"), "{plan}");
        }
        let check = engine.loyalty_check().expect("check");
        assert!(check.holds(), "{check:?}");
        let plan: String = engine
            .readers
            .with(|conn| {
                Ok(conn.query_row(
                    "EXPLAIN QUERY PLAN SELECT SUM(points) FROM loyalty_entries WHERE member_id = 'm' AND account = 'member'",
                    [],
                    |r| r.get(3),
                )?)
            })
            .expect("plan");
        assert!(plan.contains("loyalty_entries_by_member"), "{plan}");
        drop(engine);
        let _ = std::fs::remove_dir_all(&folder);
    }

    /// New files get 8 KB pages; a file an earlier version made with 4 KB
    /// pages keeps them and still takes events, even with that version's log
    /// still holding uncheckpointed frames of 4 KB (a process killed, or still
    /// open, when relais starts).
    #[test]
    fn a_file_made_with_4_kb_pages_keeps_them_and_takes_events() {
        let root = unique_folder("page_size");
        let (fresh, older) = (root.join("fresh"), root.join("older"));
        std::fs::create_dir_all(&older).expect("folder");
        let earlier = Connection::open(older.join("relais.db")).expect("connection");
        earlier
            .execute_batch(
                "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; \
                 CREATE TABLE made_before (x); INSERT INTO made_before VALUES (1), (2), (3);",
            )
            .expect("a 4 KB file with frames in its log");
        let page_size = |engine: &SqliteEngine| count(engine, "SELECT page_size FROM pragma_page_size");
        assert_eq!(page_size(&engine(&fresh)), 8_192);
        let engine = engine(&older);
        assert_eq!(page_size(&engine), 4_096);
        assert_eq!(count(&engine, "SELECT count(*) FROM made_before"), 3);
        let defaults = IngestSettings::default();
        let envelope = test_envelope(&defaults);
        let messages = (0..500)
            .map(|i| {
                let text =
                    format!(r#"{{"type": "track", "event": "Probe", "userId": "u{}", "messageId": "m{i}"}}"#, i % 50);
                TrackingMessage::parse_json(&text, &envelope).expect("valid message")
            })
            .collect();
        let outcomes = engine.ingest("test", messages).expect("ingest");
        assert!(outcomes.iter().all(|o| matches!(o, Outcome::Stored { .. })));
        assert_eq!(count(&engine, "SELECT count(*) FROM events"), 500);
        assert_eq!(count(&engine, "SELECT count(DISTINCT customer_id) FROM events"), 50);
        let check: String =
            engine.readers.with(|c| Ok(c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)).expect("check");
        assert_eq!(check, "ok");
        drop(engine);
        drop(earlier);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// The writer remembers identifier owners between transactions; a merge, an
    /// unmerge and another connection's write each move owners behind it, and
    /// every message still lands on the profile that holds its identifiers then.
    #[test]
    fn cached_identifier_owners_follow_merges_unmerges_and_other_writers() {
        let folder = unique_folder("owners");
        let engine = engine(&folder);
        let defaults = IngestSettings::default();
        let envelope = test_envelope(&defaults);
        let send = |ids: &str| -> CustomerId {
            let text = format!(r#"{{"type": "track", "event": "Probe", {ids}}}"#);
            let message = TrackingMessage::parse_json(&text, &envelope).expect("valid message");
            match engine.ingest("test", vec![message]).expect("ingest").as_slice() {
                [Outcome::Stored { customer_id, .. }] => *customer_id,
                other => panic!("unexpected outcome {other:?}"),
            }
        };
        let device = send(r#""anonymousId": "device-1""#);
        let person = send(r#""userId": "ana""#);
        assert_ne!(device, person);
        // Read again: now from the cache.
        assert_eq!(send(r#""anonymousId": "device-1""#), device);
        // Linking both merges one profile into the other: the device follows.
        let survivor = send(r#""userId": "ana", "anonymousId": "device-1""#);
        assert_eq!(send(r#""anonymousId": "device-1""#), survivor);
        assert_eq!(send(r#""userId": "ana""#), survivor);
        // Undone: the device goes back to its own profile.
        let merge = engine.merges(survivor).expect("merges").first().expect("one merge").merge_id;
        let report = engine.unmerge(merge, &defaults).expect("unmerge");
        let restored = report.restored_id;
        let device_owner =
            if report.identifiers.iter().any(|i| i.contains("anonymous_id")) { restored } else { report.survivor_id };
        assert_eq!(send(r#""anonymousId": "device-1""#), device_owner);
        // Another connection moves the device's identifier to a new profile.
        let other = send(r#""userId": "bruno""#);
        let conn = open_connection(&folder.join("relais.db")).expect("second connection");
        conn.execute("UPDATE identifiers SET customer_id = ?1 WHERE kind = 'anonymous_id'", [other.to_string()])
            .expect("move identifier");
        drop(conn);
        assert_eq!(send(r#""anonymousId": "device-1""#), other);
    }

    /// Grouped writes share commits with each other and with ingest, yet one
    /// that fails leaves nothing behind and takes nobody down with it.
    #[test]
    fn grouped_writes_commit_together_and_fail_alone() {
        let folder = unique_folder("grouped");
        let engine = Arc::new(engine(&folder));
        engine
            .write(false, |conn| Ok(conn.execute_batch("CREATE TABLE grouped_probe (n INTEGER PRIMARY KEY)")?))
            .expect("probe table");
        let defaults = IngestSettings::default();
        let (currency, card_policy) = (defaults.currency, defaults.card_policy);
        let threads: Vec<_> = (0..32)
            .map(|n: i64| {
                let engine = engine.clone();
                let currency = currency.clone();
                thread::spawn(move || {
                    if n % 4 == 3 {
                        // Ingest requests joining the same cycles.
                        let envelope = relais_domain::message::Envelope {
                            received_at: Utc::now(),
                            implied_type: None,
                            batch_sent_at: None,
                            batch_context: None,
                            default_currency: &currency,
                            card_policy,
                        };
                        let text =
                            format!(r#"{{"type": "track", "event": "Probe", "userId": "u{n}", "messageId": "m{n}"}}"#);
                        let message = TrackingMessage::parse_json(&text, &envelope).expect("valid message");
                        engine.ingest("test", vec![message]).map(|_| ())
                    } else {
                        engine.write_grouped(move |conn| {
                            conn.execute("INSERT INTO grouped_probe (n) VALUES (?1)", [n])?;
                            if n % 4 == 1 {
                                // Wrote, then failed: its row must not survive.
                                return Err(StoreError::Conflict(format!("write {n} refused")));
                            }
                            Ok(())
                        })
                    }
                })
            })
            .collect();
        let results: Vec<Result<(), StoreError>> = threads.into_iter().map(|t| t.join().expect("thread")).collect();
        for (n, result) in results.iter().enumerate() {
            match n % 4 {
                1 => assert!(matches!(result, Err(StoreError::Conflict(_))), "write {n}: {result:?}"),
                _ => assert!(result.is_ok(), "write {n}: {result:?}"),
            }
        }
        assert_eq!(count(&engine, "SELECT COUNT(*) FROM grouped_probe"), 16, "the 16 writes that succeeded, only");
        assert_eq!(count(&engine, "SELECT COUNT(*) FROM grouped_probe WHERE n % 4 = 1"), 0);
        assert_eq!(count(&engine, "SELECT COUNT(*) FROM events WHERE name = 'Probe'"), 8);
        drop(engine);
        let _ = std::fs::remove_dir_all(folder);
    }
}
