//! The server engine: PostgreSQL through a pool of blocking clients. Concurrent
//! ingest requests are written together (`combine`), each group one transaction
//! of a few set-based statements (`unnest` arrays); touched customers are locked
//! in id order; a lost race is retried.
//!
//! Citus: customer-scoped tables are distributed by `customer_id`, `identifiers` by
//! `identifier`, `message_ids` by `message_id`, `accounts` by `group_id`; `api_keys`
//! is a reference table. See ARCHITECTURE.md for the steps that touch two customers.

mod loyalty;
mod rows;
mod segments;
mod statements;
mod web;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row};
use relais_domain::traits::DayTotals;
use relais_domain::{
    Channel, ComputedTraits, CustomerId, ErasureId, Identifier, KeyId, MergeId, OutboxId, Role, TrackingMessage,
};
use serde_json::{Map, Value};

use self::rows::BatchRows;
use self::statements::{Cached, PgConn, Sql, Statements};
use super::combine::Combiner;
use super::ingest::{
    batch_items, family_traits, ingest_batch, BatchItem, Changes, CustomerState, Customers, EventFacts, Exclusives,
    IngestSettings, IngestTx, KnownMessages, Outcome, Owners, Rebuild,
};
use super::pool::Pool;
use super::seal::{self, EncodedEvent, Privacy};
use super::shared_read::SharedRead;
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

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "customer_database", include_str!("../../migrations/postgres/0001_customer_database.sql")),
    (2, "privacy", include_str!("../../migrations/postgres/0002_privacy.sql")),
    (3, "loyalty", include_str!("../../migrations/postgres/0003_loyalty.sql")),
    (4, "segments", include_str!("../../migrations/postgres/0004_segments.sql")),
    (5, "web", include_str!("../../migrations/postgres/0005_web.sql")),
    (6, "loyalty_gaps", include_str!("../../migrations/postgres/0006_loyalty_gaps.sql")),
];

/// Key of the advisory lock that serialises migrations across processes.
const MIGRATION_LOCK: i64 = 0x7265_6c61_6973;
/// How many times a batch that lost a race with another writer is retried.
const MAX_ATTEMPTS: usize = 20;

impl From<postgres::Error> for StoreError {
    fn from(error: postgres::Error) -> Self {
        use postgres::error::SqlState;
        match error.code() {
            // Match SQLSTATE, never constraint names (Citus suffixes them per shard).
            Some(code)
                if *code == SqlState::T_R_SERIALIZATION_FAILURE
                    || *code == SqlState::T_R_DEADLOCK_DETECTED
                    || *code == SqlState::UNIQUE_VIOLATION =>
            {
                StoreError::Race
            }
            _ => StoreError::Database(error.to_string()),
        }
    }
}

fn parse_id<T: std::str::FromStr>(text: &str) -> Result<T, StoreError> {
    text.parse().map_err(|_| StoreError::Database(format!("corrupt id `{text}` in the database")))
}

/// The PostgreSQL engine.
pub struct PgEngine {
    pool: Pool<PgConn>,
    /// Connections whose sessions plan generically (`GENERIC_PLANS`).
    generic_pool: Arc<Pool<PgConn>>,
    settings: IngestSettings,
    privacy: Privacy,
    /// Concurrent ingest requests written together (group commit).
    ingests: Combiner<IngestRequest, super::Ingested>,
    /// The saved segments, read once for the callers that ask together.
    segment_list: SharedRead<Vec<super::segments::SegmentRecord>>,
    /// Concurrent manual operations (redemptions, adjustments) written together.
    operations: Combiner<super::loyalty::ManualOperation, super::loyalty::OperationAnswer>,
}

/// An ingest request waiting for its group: source, messages, and their stored
/// payloads (encoded on the caller's thread).
type IngestRequest = (String, Vec<TrackingMessage>, Vec<EncodedEvent>);

/// Ingest groups written at once by one process, each in a transaction of its
/// own. More writers make smaller groups, hence more statements for the same
/// work: measured with `relais bench loyalty` on 2 cores, one writer gave a
/// ratio of 0.60 and 0.595, two 0.54 and 0.52, three 0.49 and 0.47. Small
/// requests only (below); other processes and large requests run beside it.
const INGEST_WRITERS: usize = 1;

/// Messages in one ingest group, at most.
const INGEST_GROUP_MESSAGES: usize = 1_000;

/// Requests of this many messages or more are written at once, in their own
/// transaction: they already amortise their statements, and grouping them
/// would only cut the parallelism PostgreSQL needs for large batches (measured:
/// 500-message batches from 16 clients, 25,290 events/s alone, 21,540 grouped).
const INGEST_ALONE_FROM: usize = 100;

/// How a transaction's statements are planned.
#[derive(Clone, Copy)]
enum Plans {
    /// As PostgreSQL chooses (mostly a custom plan at every call).
    PostgresChoice,
    /// Generic plans, whole-table scans and JIT disabled (`GENERIC_PLANS`).
    Generic,
}

/// The settings of the connections that run transactions on generic plans
/// (`PgEngine::generic_pool`).
///
/// PostgreSQL otherwise plans most statements again at every call, since a
/// custom plan, which knows the arrays' lengths, always looks cheaper than
/// the generic one: in a 10-second `relais bench loyalty` run planning took
/// 3.3 s against 5.0 s of execution, and a redemption's ledger write cost
/// as much to plan as to run. A generic plan is made once, possibly while
/// a table is still empty, and kept until the table's statistics change;
/// `enable_seqscan = off` keeps it from scanning a table grown large since
/// (without it, batches of 500 messages from an empty database ran several
/// times slower). A scan that cannot be avoided (the few programmes) then
/// carries PostgreSQL's "disabled" cost, which would make it compile the
/// statement with JIT at every call (170 ms), hence `jit = off`.
///
/// Set for the session of connections kept for these transactions, rather
/// than with `SET LOCAL` in each: that saves a round trip per transaction,
/// and a prepared statement (plans are cached per connection and statement)
/// never takes a plan made under the other settings.
/// Only for transactions whose every statement finds its rows by key (an
/// `= ANY($n)` beside each join on `unnest`): the manual operations' and
/// small ingest transactions (`GENERIC_PLANS_UP_TO`).
const GENERIC_PLANS: &str = "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; SET jit = off";

/// Connections kept for transactions on generic plans, at most: one for each
/// combined writer (ingest groups, and operation groups); a group's requests
/// written again one by one take the same connection in turn.
const GENERIC_CONNECTIONS: usize = INGEST_WRITERS + OPERATION_WRITERS;

/// Ingest transactions of at most this many messages run on generic plans
/// (`GENERIC_PLANS`). Larger ones keep PostgreSQL's choice:
/// planning is then small beside the work, and a custom plan knows the arrays'
/// lengths (measured with batches of 500 messages: the same speed either way).
const GENERIC_PLANS_UP_TO: usize = 64;

/// Groups of manual operations written at once by one process.
const OPERATION_WRITERS: usize = 1;

/// Manual operations in one group, at most.
const OPERATION_GROUP: usize = 64;

fn connect(url: &str) -> Result<Client, StoreError> {
    let mut client = Client::connect(url, NoTls).map_err(|e| {
        StoreError::Config(format!("cannot connect to PostgreSQL: {e}; check --database-url and that the server is up"))
    })?;
    // Decision 5: a commit returns only once it is flushed to disk.
    client.batch_execute("SET synchronous_commit = on; SET application_name = 'relais'")?;
    Ok(client)
}

fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let result = (|| -> Result<(), StoreError> {
        client.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )?;
        for (version, name, sql) in MIGRATIONS {
            let mut tx = client.transaction()?;
            let applied = tx.query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[version])?.is_some();
            if !applied {
                if *version == 2 && tx.query_one("SELECT EXISTS(SELECT 1 FROM identifiers)", &[])?.get::<_, bool>(0) {
                    return Err(StoreError::Config(super::LEGACY_PLAINTEXT.into()));
                }
                tx.batch_execute(sql)?;
                tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[version, name])?;
            }
            tx.commit()?;
        }
        Ok(())
    })();
    client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])?;
    result
}

impl PgEngine {
    /// Run a transaction, running it again when it lost a race with another
    /// writer (a claimed identifier, a deadlock, a merge that moved the ground).
    fn retrying<T>(&self, work: impl Fn(&mut PgConn) -> Result<T, StoreError>) -> Result<T, StoreError> {
        Self::retrying_on(&self.pool, work)
    }

    /// `retrying`, on a connection of `pool`.
    fn retrying_on<T>(
        pool: &Pool<PgConn>,
        work: impl Fn(&mut PgConn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match pool.with(&work) {
                Err(StoreError::Race) if attempt < MAX_ATTEMPTS => {
                    std::thread::sleep(std::time::Duration::from_millis(attempt as u64 * 2));
                }
                other => return other,
            }
        }
    }

    /// Write a group of ingest requests in one transaction, answering each in
    /// order (see `answer_group`; a retry by the sender of a group whose commit
    /// failed is deduplicated by its `messageId`).
    ///
    /// Each request gets a mark from right after the group's commit: their live
    /// segment updates then share one read of the saved segments (`segments_after`)
    /// instead of one each, which was a fifth of the statements under loyalty
    /// traffic, and that read stays off the group's serial path.
    fn ingest_group(&self, group: &[IngestRequest]) -> Vec<Result<super::Ingested, StoreError>> {
        let answers = answer_group(group, |group| {
            let batch: Vec<BatchItem<'_>> =
                group.iter().flat_map(|(source, messages, encoded)| batch_items(source, messages, encoded)).collect();
            let (result, at_commit) = self.ingest_in_transaction(&batch);
            let answers = result.map(|outcomes| {
                let mut outcomes = outcomes.into_iter();
                group.iter().map(|(_, messages, _)| outcomes.by_ref().take(messages.len()).collect()).collect()
            });
            (answers, at_commit)
        });
        // Every request of the group has committed by now.
        let mark = super::SegmentsMark::of(&self.segment_list);
        answers
            .into_iter()
            .map(|answer| answer.map(|outcomes| super::Ingested { outcomes, segments_mark: Some(mark) }))
            .collect()
    }

    /// Write a group of manual operations (no rewards) in one transaction, in
    /// order, after reading what each reads first in two round trips
    /// (`prefetch_operations`); answers as `answer_group` does. A redemption
    /// then costs about three statements instead of five, and the group one
    /// commit. Every statement of an operation finds its rows by key, so the
    /// group runs on generic plans, which halves the cost of a redemption's
    /// ledger write.
    ///
    /// An unknown membership is found before the operation writes or fails
    /// any statement, so it is answered within the group instead of failing
    /// it: a client repeating a wrong id would otherwise make every group it
    /// joins be written again request by request.
    fn operation_group(
        &self,
        group: &[super::loyalty::ManualOperation],
    ) -> Vec<Result<super::loyalty::OperationAnswer, StoreError>> {
        let answers = answer_group(group, |group| {
            self.in_transaction(None, Plans::Generic, |tx| {
                tx.prefetch_operations(group)?;
                // Operations on different members send their rows together.
                tx.hold_back_ledger = true;
                group
                    .iter()
                    .map(|request| match super::loyalty::operate(tx, request) {
                        Err(StoreError::NotFound) => Ok(Err(StoreError::NotFound)),
                        other => other.map(Ok),
                    })
                    .collect()
            })
        });
        answers.into_iter().map(|answer| answer.and_then(|inner| inner)).collect()
    }

    /// Ingest `batch` in one transaction (see `in_transaction`), on generic
    /// plans when it is small (`GENERIC_PLANS_UP_TO`).
    fn ingest_in_transaction(&self, batch: &[BatchItem<'_>]) -> (Result<Vec<Outcome>, StoreError>, bool) {
        let plans = if batch.len() <= GENERIC_PLANS_UP_TO { Plans::Generic } else { Plans::PostgresChoice };
        self.in_transaction(Some(&self.privacy), plans, |tx| ingest_batch(tx, batch, &self.settings, &self.privacy))
    }

    /// Run `work` in one transaction, retried when it lost a race; and whether
    /// it failed while committing (its outcome then unknown).
    fn in_transaction<T>(
        &self,
        privacy: Option<&Privacy>,
        plans: Plans,
        work: impl Fn(&mut PgTx<'_, '_>) -> Result<T, StoreError>,
    ) -> (Result<T, StoreError>, bool) {
        let committing = std::cell::Cell::new(false);
        let pool = match plans {
            Plans::PostgresChoice => &self.pool,
            Plans::Generic => &*self.generic_pool,
        };
        // Connections of the generic pool only ever run these transactions,
        // so each commit there opens the next one in its own round trip.
        let reopen = matches!(plans, Plans::Generic);
        let result = Self::retrying_on(pool, |conn| {
            committing.set(false);
            let (client, statements) = conn.open_transaction()?;
            let mut tx = PgTx::open(client, statements, privacy);
            let outcome = match work(&mut tx).and_then(|done| tx.finish().map(|()| done)) {
                // Whatever failed after it, the transaction lost a race: retried.
                Err(_) if tx.lost_race => Err(StoreError::Race),
                outcome => outcome,
            };
            match outcome {
                Ok(done) => {
                    committing.set(true);
                    conn.commit(reopen)?;
                    Ok(done)
                }
                Err(error) => {
                    // A connection that cannot roll back is broken: its
                    // error makes the pool drop it, even after a lost race.
                    conn.roll_back()?;
                    Err(error)
                }
            }
        });
        let failed_at_commit = result.is_err() && committing.get();
        (result, failed_at_commit)
    }

    /// Connect, migrate and build the pool.
    pub fn open(
        url: &str,
        settings: IngestSettings,
        master: &MasterKey,
        classes: Classification,
    ) -> Result<PgEngine, StoreError> {
        let mut first = connect(url)?;
        migrate(&mut first)?;
        let first = std::cell::RefCell::new(first);
        let privacy = super::open_privacy(
            master,
            classes,
            || read_keyring(&mut *first.borrow_mut()),
            |stored| {
                let mut client = first.borrow_mut();
                let mut tx = client.transaction()?;
                for (name, wrapped) in &stored.wrapped {
                    tx.execute(
                        "INSERT INTO keyring (name, wrapped, master_fingerprint) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                        &[&name, wrapped, &stored.master_fingerprint],
                    )?;
                }
                tx.commit()?;
                Ok(())
            },
        )?;
        drop(first);
        let url = url.to_string();
        let generic_url = url.clone();
        let pool = Pool::new(16, move || connect(&url).map(PgConn::new));
        let generic_pool = Arc::new(Pool::new(GENERIC_CONNECTIONS, move || {
            let mut client = connect(&generic_url)?;
            client.batch_execute(GENERIC_PLANS)?;
            Ok(PgConn::new(client))
        }));
        close_idle_transactions(Arc::downgrade(&generic_pool))?;
        let ingests = Combiner::new(INGEST_WRITERS, INGEST_GROUP_MESSAGES);
        let operations = Combiner::new(OPERATION_WRITERS, OPERATION_GROUP);
        Ok(PgEngine { pool, generic_pool, settings, privacy, ingests, segment_list: SharedRead::default(), operations })
    }
}

/// How long a transaction opened ahead (`PgConn::commit`) may wait unused
/// before `close_idle_transactions` commits it; under load the next group
/// takes it within milliseconds. Its `now()` is when it opened, so the
/// statements of grouped transactions stamp rows with `statement_timestamp()`:
/// a request sent after another's answer never gets an earlier time.
const OPENED_AHEAD_FOR: Duration = Duration::from_millis(100);

/// Commit the transactions that connections of `pool` opened ahead and that
/// wait unused, every `OPENED_AHEAD_FOR`, until the pool is dropped (its
/// engine closed).
fn close_idle_transactions(pool: std::sync::Weak<Pool<PgConn>>) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name("relais-pg-idle".into())
        .spawn(move || loop {
            std::thread::sleep(OPENED_AHEAD_FOR);
            let Some(pool) = pool.upgrade() else { break };
            pool.tidy_idle(|conn| conn.idle_ahead(OPENED_AHEAD_FOR), |conn| Ok(conn.commit_if_idle()?));
        })
        .map(drop)
        .map_err(|e| StoreError::Database(format!("cannot start the thread that closes idle transactions: {e}")))
}

const REQUEST_COLUMNS: &str =
    "request_id, kind, customer_id, received_at, due_at, completed_at, status, outcome, recorded_by";

fn request_from_row(r: &postgres::Row) -> Result<RightsRequest, StoreError> {
    super::rights_request(r.get(0), r.get(1), r.get(2), (r.get(3), r.get(4), r.get(5)), r.get(6), r.get(7), r.get(8))
}

const AUDIT_COLUMNS: &str = "segment_id, seq, at, actor, action, subject, detail, prev_hash, hash";

fn audit_from_row(r: &postgres::Row) -> AuditRecord {
    AuditRecord {
        segment_id: r.get(0),
        seq: r.get(1),
        at: r.get(2),
        actor: r.get(3),
        action: r.get(4),
        subject: r.get(5),
        detail: r.get(6),
        prev_hash: r.get(7),
        hash: r.get(8),
    }
}

/// The system keys, if the database has them yet.
fn read_keyring(client: &mut impl postgres::GenericClient) -> Result<Option<StoredKeyring>, StoreError> {
    let rows = client.query("SELECT name, wrapped, master_fingerprint FROM keyring", &[])?;
    Ok(super::stored_keyring(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()))
}

/// Wrapped data keys of customers that have one.
fn read_data_keys(client: &mut impl Sql, customers: &[CustomerId]) -> Result<Vec<(CustomerId, Vec<u8>)>, StoreError> {
    if customers.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = customers.iter().map(ToString::to_string).collect();
    client
        .query("SELECT customer_id, wrapped FROM data_keys WHERE customer_id = ANY($1)", &[&ids])?
        .iter()
        .map(|r| Ok((parse_id(r.get::<_, &str>(0))?, r.get(1))))
        .collect()
}

/// The clear `kind:value` of stored identifier tokens (a token whose identifier
/// is gone, or whose key was destroyed, stays a token).
fn reveal(client: &mut impl Sql, privacy: &Privacy, tokens: Vec<String>) -> Result<Vec<String>, StoreError> {
    let rows = client
        .query("SELECT identifier, value, sealed FROM identifiers WHERE identifier = ANY($1)", &[&tokens])?
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get(1), r.get(2), r.get::<_, String>(0)))
        .collect();
    Ok(seal::reveal_tokens(tokens, open_identifiers(client, privacy, rows)?))
}

/// Identifiers (clear) of stored rows, dropping those whose key was destroyed.
fn open_identifiers<T>(
    client: &mut impl Sql,
    privacy: &Privacy,
    rows: Vec<seal::IdentifierRow<T>>,
) -> Result<Vec<(Identifier, T)>, StoreError> {
    seal::open_identifier_rows(&privacy.keyring, rows, |missing| read_data_keys(client, missing))
}

/// Answer each request of a group that `write` wrote in one transaction
/// (answers in order, and whether it failed while committing). When the group
/// fails before its commit was asked for (nothing was written; a lost race is
/// retried whole first), each request is written alone, so one request's
/// failure never takes the others down. A failure while committing leaves the
/// outcome unknown: every request hears of it and none is written again.
fn answer_group<R, T>(
    group: &[R],
    write: impl Fn(&[R]) -> (Result<Vec<T>, StoreError>, bool),
) -> Vec<Result<T, StoreError>> {
    match write(group) {
        (Ok(answers), _) => answers.into_iter().map(Ok).collect(),
        (Err(error), at_commit) if group.len() == 1 || at_commit => group.iter().map(|_| Err(error.clone())).collect(),
        (Err(_), _) => {
            let mut answers: Vec<Result<T, StoreError>> = Vec::with_capacity(group.len());
            for request in group {
                // Without a database to talk to, the others would only wait
                // for the same answer.
                if let Some(Err(error @ StoreError::Config(_))) = answers.last() {
                    answers.push(Err(error.clone()));
                    continue;
                }
                let alone = write(std::slice::from_ref(request)).0.and_then(|mut one| {
                    one.pop().ok_or_else(|| StoreError::Database("a request written alone got no answer".into()))
                });
                answers.push(alone);
            }
            answers
        }
    }
}

/// One transaction of the ingest and ledger primitives. Every statement goes
/// through the connection's statement cache (`Sql`).
struct PgTx<'c, 't> {
    tx: TxClient<'c, 't>,
    /// The prepared statements of the connection `tx` runs on.
    statements: &'c mut Statements,
    /// Keys, for steps that seal values (a loyalty card's identifier).
    privacy: Option<&'c Privacy>,
    /// Rows read ahead: by a group of manual operations (`prefetch_operations`),
    /// or an ingest batch's memberships (`owners_exclusives_and_families`).
    prefetched: loyalty::Prefetched,
    /// Whether `write` may hold a batch's rows back (`held_rows`): only where
    /// the transaction ends with `finish`.
    hold_back_rows: bool,
    /// A batch's rows not sent yet: the ledger's write takes them into its
    /// statement; any other statement sends them first, as does `finish`.
    held_rows: Option<rows::BatchRows<'static>>,
    /// Rows sent ahead of another statement found a message claimed by
    /// another writer: the transaction lost a race and must not commit.
    lost_race: bool,
    /// Whether `write_ledger` may hold the usual rows of its steps back
    /// (`held_ledger`): set by a group of manual operations (a step on a
    /// customer already held sends them first, see `LedgerRows`).
    hold_back_ledger: bool,
    /// The usual rows of ledger steps not sent yet: sent before any other
    /// statement (`query_leaving_rows` included) and before the commit.
    held_ledger: Option<loyalty::LedgerRows>,
}

impl<'c, 't> PgTx<'c, 't> {
    fn new(
        tx: &'c mut postgres::Transaction<'t>,
        statements: &'c mut Statements,
        privacy: Option<&'c Privacy>,
    ) -> Self {
        PgTx {
            tx: TxClient::Transaction(tx),
            statements,
            privacy,
            prefetched: loyalty::Prefetched::default(),
            hold_back_rows: false,
            held_rows: None,
            lost_race: false,
            hold_back_ledger: false,
            held_ledger: None,
        }
    }

    /// A transaction already open on `client` (`PgConn::open_transaction`),
    /// whose batches' rows may be held back until `finish`.
    fn open(client: &'c mut Client, statements: &'c mut Statements, privacy: Option<&'c Privacy>) -> Self {
        PgTx {
            tx: TxClient::Open(client),
            statements,
            privacy,
            prefetched: loyalty::Prefetched::default(),
            hold_back_rows: true,
            held_rows: None,
            lost_race: false,
            hold_back_ledger: false,
            held_ledger: None,
        }
    }

    /// Send the rows held back, if any (before any other statement, which
    /// may read them).
    fn send_held_rows(&mut self) -> Result<(), postgres::Error> {
        // Both taken first: sending one goes through `Sql`, which calls this again.
        let (ledger, rows) = (self.held_ledger.take(), self.held_rows.take());
        if let Some(ledger) = ledger {
            ledger.send(self)?;
        }
        if let Some(rows) = rows {
            let written = rows.send(self)?;
            self.lost_race |= !rows.claims_complete(written);
        }
        Ok(())
    }

    /// Before the commit: the rows held back are sent, and a race lost on the way is reported.
    fn finish(&mut self) -> Result<(), StoreError> {
        self.send_held_rows()?;
        if self.lost_race {
            return Err(StoreError::Race);
        }
        Ok(())
    }
}

/// What a `PgTx` runs its statements on.
enum TxClient<'c, 't> {
    /// The driver's transaction, which began and ends with its own round trips.
    Transaction(&'c mut postgres::Transaction<'t>),
    /// A connection inside a transaction it opened itself (`PgConn::open_transaction`).
    Open(&'c mut Client),
}

/// Runs one `Sql` method on whichever client the transaction holds.
macro_rules! on_client {
    ($tx:expr, $method:ident($($arg:expr),*)) => {
        match &mut $tx.tx {
            TxClient::Transaction(client) => {
                Cached { client: &mut **client, statements: &mut *$tx.statements }.$method($($arg),*)
            }
            TxClient::Open(client) => Cached { client: &mut **client, statements: &mut *$tx.statements }.$method($($arg),*),
        }
    };
}

impl Sql for PgTx<'_, '_> {
    fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, postgres::Error> {
        self.send_held_rows()?;
        on_client!(self, query(sql, params))
    }

    fn query_one(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, postgres::Error> {
        self.send_held_rows()?;
        on_client!(self, query_one(sql, params))
    }

    fn query_opt(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, postgres::Error> {
        self.send_held_rows()?;
        on_client!(self, query_opt(sql, params))
    }

    fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, postgres::Error> {
        self.send_held_rows()?;
        on_client!(self, execute(sql, params))
    }
}

impl PgTx<'_, '_> {
    /// `query` for a statement that reads none of a batch's rows held back
    /// (see `BatchRows`), so they can wait for the ledger's write. Ledger rows
    /// held back (`held_ledger`) are sent first: such a statement may read them.
    fn query_leaving_rows(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, postgres::Error> {
        if self.held_ledger.is_some() {
            let rows = self.held_rows.take();
            let sent = self.send_held_rows();
            self.held_rows = rows;
            sent?;
        }
        on_client!(self, query(sql, params))
    }
}

impl PgTx<'_, '_> {
    /// The claims already stored among `claims`, the owners of `identifiers`
    /// and, with `lock`, the profiles owning the unshared ones, locked in id
    /// order (as `load_customers` does): three reads in one round trip.
    /// (On Citus, where profiles and identifiers are distributed apart, the
    /// lock goes back to `load_customers`, one customer per statement.)
    fn claims_owners_and_maybe_profiles(
        &mut self,
        claims: &[(&str, &str)],
        identifiers: &[Identifier],
        lock: bool,
    ) -> Result<(KnownMessages, Owners, Option<Customers>), StoreError> {
        if claims.is_empty() && identifiers.is_empty() {
            return Ok((Default::default(), Default::default(), lock.then(Customers::default)));
        }
        let mut sources: Vec<&str> = claims.iter().map(|(s, _)| *s).collect();
        sources.sort_unstable();
        sources.dedup();
        let message_ids: Vec<&str> = claims.iter().map(|(_, m)| *m).collect();
        // Results are keyed by the text queried, never by re-parsing stored text.
        let by_text: HashMap<String, &Identifier> = identifiers.iter().map(|i| (i.to_string(), i)).collect();
        let texts: Vec<&String> = by_text.keys().collect();
        // Part 0 the claims, part 1 the owners, part 2 the owners' profiles.
        // The claims are asked as two sets (sources are few), which probe the
        // key index under a generic plan too; pairs nobody asked for are
        // dropped below. The profiles are those of the owners this statement
        // reads; the batch re-reads the owners once they are locked
        // (`owners_exclusives_and_families`), as it would after `load_customers`.
        let rows = self.query(
            "WITH owned AS (SELECT identifier, customer_id, shared FROM identifiers WHERE identifier = ANY($3)), \
             locked AS (SELECT customer_id, profile, traits, merged_into, sealed FROM customers \
             WHERE $4 AND customer_id = ANY(ARRAY(SELECT customer_id FROM owned WHERE NOT shared)) \
             ORDER BY customer_id FOR UPDATE) \
             SELECT 0, m.source, m.message_id, m.customer_id, m.event_id, false, NULL::jsonb, NULL::jsonb, \
             NULL::text, NULL::bytea FROM message_ids m WHERE m.message_id = ANY($1) AND m.source = ANY($2) \
             UNION ALL SELECT 1, identifier, NULL, customer_id, NULL, shared, NULL, NULL, NULL, NULL FROM owned \
             UNION ALL SELECT 2, customer_id, NULL, customer_id, NULL, false, profile, traits, merged_into, sealed \
             FROM locked",
            &[&message_ids, &sources, &texts, &lock],
        )?;
        let asked: std::collections::HashSet<(&str, &str)> = claims.iter().copied().collect();
        let (mut known, mut owners): (KnownMessages, Owners) = Default::default();
        let mut customers = lock.then(Customers::default);
        for row in rows {
            let customer = parse_id(row.get::<_, &str>(3))?;
            match row.get::<_, i32>(0) {
                0 => {
                    let (source, message_id) = (row.get::<_, &str>(1), row.get::<_, &str>(2));
                    if asked.contains(&(source, message_id)) {
                        known.insert(
                            (source.to_string(), message_id.to_string()),
                            (customer, parse_id(row.get::<_, &str>(4))?),
                        );
                    }
                }
                1 => {
                    if let Some(identifier) = by_text.get(row.get::<_, &str>(1)) {
                        owners.insert((*identifier).clone(), (customer, row.get::<_, bool>(5)));
                    }
                }
                _ => {
                    if let Some(customers) = customers.as_mut() {
                        customers.insert(customer, customer_state(&row, 6)?);
                    }
                }
            }
        }
        Ok((known, owners, customers))
    }
}

/// A profile as stored: `profile`, `traits`, `merged_into` and `sealed` from
/// column `first` on.
fn customer_state(row: &postgres::Row, first: usize) -> Result<CustomerState, StoreError> {
    let profile: Value = row.get(first);
    let traits: Value = row.get(first + 1);
    let merged_into: Option<&str> = row.get(first + 2);
    Ok(CustomerState {
        profile: match profile {
            Value::Object(map) => map,
            _ => Map::new(),
        },
        traits: serde_json::from_value(traits).unwrap_or_default(),
        merged_into: merged_into.map(parse_id).transpose()?,
        profile_changed: false,
        sealed_profile: row.get(first + 3),
    })
}

impl IngestTx for PgTx<'_, '_> {
    fn concurrent_writers(&self) -> bool {
        true
    }

    fn existing_message_ids(&mut self, ids: &[(&str, &str)]) -> Result<KnownMessages, StoreError> {
        Ok(self.claims_and_owners(ids, &[])?.0)
    }

    fn identifier_owners(&mut self, ids: &[Identifier]) -> Result<Owners, StoreError> {
        Ok(self.owners_and_exclusives(ids, &[])?.0)
    }

    fn exclusive_identifiers(&mut self, customers: &[CustomerId]) -> Result<Exclusives, StoreError> {
        Ok(self.owners_and_exclusives(&[], customers)?.1)
    }

    fn claims_and_owners(
        &mut self,
        claims: &[(&str, &str)],
        identifiers: &[Identifier],
    ) -> Result<(KnownMessages, Owners), StoreError> {
        let (known, owners, _) = self.claims_owners_and_maybe_profiles(claims, identifiers, false)?;
        Ok((known, owners))
    }

    fn claims_owners_and_profiles(
        &mut self,
        claims: &[(&str, &str)],
        identifiers: &[Identifier],
    ) -> Result<(KnownMessages, Owners, Option<Customers>), StoreError> {
        self.claims_owners_and_maybe_profiles(claims, identifiers, true)
    }

    fn owners_and_exclusives(
        &mut self,
        identifiers: &[Identifier],
        customers: &[CustomerId],
    ) -> Result<(Owners, Exclusives), StoreError> {
        self.owners_exclusives_and_families(identifiers, customers, &[])
    }

    fn owners_exclusives_and_families(
        &mut self,
        identifiers: &[Identifier],
        customers: &[CustomerId],
        families: &[CustomerId],
    ) -> Result<(Owners, Exclusives), StoreError> {
        if identifiers.is_empty() && customers.is_empty() {
            return Ok((Default::default(), Default::default()));
        }
        let by_text: HashMap<String, &Identifier> = identifiers.iter().map(|i| (i.to_string(), i)).collect();
        let texts: Vec<&String> = by_text.keys().collect();
        let ids: Vec<String> = customers.iter().map(ToString::to_string).collect();
        // Two reads in one round trip: part 0 the owners, part 1 the exclusives
        // (and the memberships, locked, when asked).
        let reads = "SELECT 0, identifier, customer_id, shared FROM identifiers WHERE identifier = ANY($1) \
             UNION ALL SELECT 1, identifier, customer_id, false FROM identifiers \
             WHERE customer_id = ANY($2) AND kind IN ('user_id', 'customer_number')";
        let rows = if families.is_empty() {
            self.query(reads, &[&texts, &ids])?
        } else {
            let roots: Vec<String> = families.iter().map(ToString::to_string).collect();
            self.reads_and_families(reads, &[&texts, &ids, &roots], families)?
        };
        let (mut owners, mut exclusives): (Owners, Exclusives) = Default::default();
        for row in rows {
            let customer = parse_id(row.get::<_, &str>(2))?;
            if row.get::<_, i32>(0) == 0 {
                if let Some(identifier) = by_text.get(row.get::<_, &str>(1)) {
                    owners.insert((*identifier).clone(), (customer, row.get::<_, bool>(3)));
                }
            } else {
                exclusives.entry(customer).or_default().push(seal::parse_token(row.get::<_, &str>(1))?);
            }
        }
        Ok((owners, exclusives))
    }

    fn load_customers(&mut self, customers: &[CustomerId]) -> Result<Customers, StoreError> {
        if customers.is_empty() {
            return Ok(Default::default());
        }
        let ids: Vec<String> = customers.iter().map(ToString::to_string).collect();
        // Rows are locked in id order (LockRows runs above the sort), so two
        // batches touching the same customers cannot deadlock. On Citus this
        // becomes one `FOR UPDATE` per customer, in the same order.
        let rows = self.query(
            "SELECT customer_id, profile, traits, merged_into, sealed FROM customers WHERE customer_id = ANY($1) \
             ORDER BY customer_id FOR UPDATE",
            &[&ids],
        )?;
        let mut found = Customers::default();
        for row in rows {
            found.insert(parse_id(row.get::<_, &str>(0))?, customer_state(&row, 1)?);
        }
        Ok(found)
    }

    fn data_keys(&mut self, customers: &[CustomerId]) -> Result<Vec<(CustomerId, Vec<u8>)>, StoreError> {
        read_data_keys(self, customers)
    }

    fn write(&mut self, changes: &Changes<'_>) -> Result<(), StoreError> {
        // Rows of an earlier batch of this transaction go first.
        self.send_held_rows()?;
        if !changes.new_customers.is_empty() {
            let ids: Vec<String> = changes.new_customers.iter().map(|(id, _)| id.to_string()).collect();
            let ats: Vec<DateTime<Utc>> = changes.new_customers.iter().map(|(_, at)| *at).collect();
            self.execute(
                "INSERT INTO customers (customer_id, created_at, updated_at) SELECT id, at, at FROM unnest($1::text[], $2::timestamptz[]) AS u(id, at)",
                &[&ids, &ats],
            )?;
        }
        if !changes.new_keys.is_empty() {
            let ids: Vec<String> = changes.new_keys.iter().map(|(id, _)| id.to_string()).collect();
            let wrapped: Vec<&[u8]> = changes.new_keys.iter().map(|(_, w)| w.as_slice()).collect();
            self.execute(
                "INSERT INTO data_keys (customer_id, wrapped) SELECT * FROM unnest($1::text[], $2::bytea[])",
                &[&ids, &wrapped],
            )?;
        }
        if !changes.new_identifiers.is_empty() {
            let mut sorted: Vec<_> = changes.new_identifiers.iter().collect();
            sorted.sort_by(|a, b| a.token.cmp(&b.token));
            let identifiers: Vec<String> = sorted.iter().map(|n| n.token.to_string()).collect();
            let kinds: Vec<&str> = sorted.iter().map(|n| n.token.kind().as_str()).collect();
            let owners: Vec<String> = sorted.iter().map(|n| n.customer.to_string()).collect();
            let ats: Vec<DateTime<Utc>> = sorted.iter().map(|n| n.at).collect();
            let values: Vec<Option<&str>> = sorted.iter().map(|n| n.value.clear()).collect();
            let sealed: Vec<Option<&[u8]>> = sorted.iter().map(|n| n.value.sealed()).collect();
            let inserted = self.execute(
                "INSERT INTO identifiers (identifier, kind, customer_id, created_at, value, sealed) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::bytea[]) \
                 ON CONFLICT DO NOTHING",
                &[&identifiers, &kinds, &owners, &ats, &values, &sealed],
            )?;
            if inserted as usize != identifiers.len() {
                return Err(StoreError::Race);
            }
        }
        if !changes.merges.is_empty() {
            // The memberships locked ahead are not those of the merged families.
            self.prefetched.families = None;
        }
        let rows = BatchRows::of(changes);
        // Held back, the rows go with the ledger's if the batch earns, else
        // with the transaction's next statement or before its commit.
        let hold_back = self.hold_back_rows && changes.merges.is_empty();
        if !changes.merges.is_empty() {
            // Merges move day totals and identifiers: statement by statement.
            rows.write_before_merges(self)?;
        } else if !hold_back {
            rows.write(self)?;
        }
        for merge in &changes.merges {
            let survivor = merge.survivor.to_string();
            let merged = merge.merged.to_string();
            let moved: Vec<String> = self
                .query(
                    "UPDATE identifiers SET customer_id = $1 WHERE customer_id = $2 RETURNING identifier",
                    &[&survivor, &merged],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            self.execute(
                "UPDATE customers SET merged_into = $1, merged_at = $3 WHERE customer_id = $2 OR merged_into = $2",
                &[&survivor, &merged, &merge.at],
            )?;
            self.execute(
                "INSERT INTO customer_days (customer_id, day, orders, revenue_minor) \
                 SELECT $1, day, orders, revenue_minor FROM customer_days WHERE customer_id = $2 \
                 ON CONFLICT (customer_id, day) DO UPDATE SET orders = customer_days.orders + excluded.orders, \
                 revenue_minor = customer_days.revenue_minor + excluded.revenue_minor",
                &[&survivor, &merged],
            )?;
            self.execute("DELETE FROM customer_days WHERE customer_id = $1", &[&merged])?;
            self.execute(
                "INSERT INTO account_members (customer_id, group_id, joined_at) \
                 SELECT $1, group_id, joined_at FROM account_members WHERE customer_id = $2 ON CONFLICT DO NOTHING",
                &[&survivor, &merged],
            )?;
            self.execute("DELETE FROM account_members WHERE customer_id = $1", &[&merged])?;
            self.execute(
                "INSERT INTO merges (survivor_id, merge_id, merged_id, at, reason, identifiers) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&survivor, &merge.merge_id.to_string(), &merged, &merge.at, &merge.reason, &serde_json::json!(moved)],
            )?;
        }
        for (identifier, customer, at) in &changes.sightings {
            let identifier = identifier.to_string();
            self.execute(
                "INSERT INTO identifier_sightings (identifier, customer_id, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&identifier, &customer.to_string(), at],
            )?;
            self.execute(
                "UPDATE identifiers SET people_seen = (1 + s.n)::int, shared = (1 + s.n > $2::bigint) \
                 FROM (SELECT count(*) AS n FROM identifier_sightings WHERE identifier = $1) s WHERE identifier = $1",
                &[&identifier, &changes.shared_limit],
            )?;
        }
        if !changes.name_tokens.is_empty() {
            let ids: Vec<String> = changes.name_tokens.iter().map(|(c, _)| c.to_string()).collect();
            self.execute("DELETE FROM name_tokens WHERE customer_id = ANY($1)", &[&ids])?;
            let mut pairs: Vec<(&str, String)> = changes
                .name_tokens
                .iter()
                .flat_map(|(c, tokens)| tokens.iter().map(move |t| (t.as_str(), c.to_string())))
                .collect();
            pairs.sort();
            pairs.dedup();
            let tokens: Vec<&str> = pairs.iter().map(|(t, _)| *t).collect();
            let owners: Vec<&str> = pairs.iter().map(|(_, c)| c.as_str()).collect();
            self.execute(
                "INSERT INTO name_tokens (token, customer_id) SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
                &[&tokens, &owners],
            )?;
        }
        if !changes.unclassified.is_empty() {
            let mut paths: Vec<&str> = changes.unclassified.clone();
            paths.sort_unstable();
            paths.dedup();
            self.execute(
                "INSERT INTO unclassified_fields (path, first_seen) SELECT p, statement_timestamp() FROM unnest($1::text[]) AS u(p) \
                 ON CONFLICT DO NOTHING",
                &[&paths],
            )?;
        }
        for c in &changes.conflicts {
            self.execute(
                "INSERT INTO identity_conflicts (customer_id, other_customer_id, kind, message_id, at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[&c.customer.to_string(), &c.other.to_string(), &c.kind.as_str(), &c.message_id, &c.at],
            )?;
        }
        if !changes.accounts.is_empty() {
            // One row per group, traits merged in message order, so the statement
            // never updates a row twice.
            let mut accounts: BTreeMap<&str, (Map<String, Value>, DateTime<Utc>)> = BTreeMap::new();
            for (group, traits, at) in &changes.accounts {
                let entry = accounts.entry(group).or_insert_with(|| (Map::new(), *at));
                entry.0.extend(traits.iter().map(|(k, v)| (k.clone(), v.clone())));
                entry.1 = entry.1.max(*at);
            }
            for (group, (traits, at)) in accounts {
                self.execute(
                    "INSERT INTO accounts (group_id, account_id, traits, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) \
                     ON CONFLICT (group_id) DO UPDATE SET traits = accounts.traits || excluded.traits, updated_at = excluded.updated_at",
                    &[&group, &super::new_account_id().to_string(), &Value::Object(traits), &at],
                )?;
            }
            for (customer, group, at) in &changes.memberships {
                self.execute(
                    "INSERT INTO account_members (customer_id, group_id, joined_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&customer.to_string(), group, at],
                )?;
            }
        }
        if !changes.merges.is_empty() {
            rows.write_profiles(self)?;
        }
        if hold_back {
            self.held_rows = Some(rows.into_owned());
        }
        Ok(())
    }
}

/// The columns traits are computed from, as read from `events`.
const FACT_COLUMNS: &str = "customer_id, ts, message_id, channel, store, type, name, amount_minor, currency";

fn facts_from_row(row: &postgres::Row) -> Result<(CustomerId, EventFacts<'_>), StoreError> {
    Ok((
        parse_id(row.get::<_, &str>(0))?,
        EventFacts {
            timestamp: row.get(1),
            message_id: row.get(2),
            channel: Channel::parse(row.get::<_, &str>(3)).unwrap_or(Channel::Other),
            store: row.get(4),
            order_kind: EventFacts::order_kind_of(row.get(5), row.get(6)),
            amount_minor: row.get(7),
            currency: row.get(8),
        },
    ))
}

const OUTBOX_COLUMNS: &str =
    "outbox_id, kind, customer_id, payload, status, attempts, next_attempt_at, last_error, created_at, delivered_at";

fn outbox_from_row(row: &postgres::Row) -> Result<OutboxItem, StoreError> {
    let status: &str = row.get(4);
    Ok(OutboxItem {
        outbox_id: parse_id(row.get::<_, &str>(0))?,
        kind: row.get(1),
        customer_id: row.get::<_, Option<&str>>(2).map(parse_id).transpose()?,
        payload: row.get(3),
        status: OutboxStatus::parse(status)
            .ok_or_else(|| StoreError::Database(format!("unknown outbox status `{status}`")))?,
        attempts: row.get(5),
        next_attempt_at: row.get(6),
        last_error: row.get(7),
        created_at: row.get(8),
        delivered_at: row.get(9),
    })
}

const EVENT_COLUMNS: &str = "event_id, customer_id, message_id, type, name, channel, ts, received_at, sent_at, \
     store, user_id, anonymous_id, properties, context, traits, computed, sealed";

fn event_from_row(row: &postgres::Row) -> Result<(StoredEvent, Option<Vec<u8>>), StoreError> {
    let event = StoredEvent {
        event_id: parse_id(row.get::<_, &str>(0))?,
        customer_id: parse_id(row.get::<_, &str>(1))?,
        message_id: row.get(2),
        kind: row.get(3),
        name: row.get(4),
        channel: Channel::parse(row.get::<_, &str>(5)).unwrap_or(Channel::Other),
        timestamp: row.get(6),
        received_at: row.get(7),
        sent_at: row.get(8),
        store: row.get(9),
        user_id: row.get(10),
        anonymous_id: row.get(11),
        properties: row.get(12),
        context: row.get(13),
        traits: row.get(14),
        computed: row.get(15),
    };
    Ok((event, row.get(16)))
}

impl Engine for PgEngine {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn privacy(&self) -> &Privacy {
        &self.privacy
    }

    fn rotate_master(&self, old: &MasterKey, new: &MasterKey) -> Result<(), StoreError> {
        self.pool.with(|client| {
            let mut tx = client.transaction()?;
            tx.execute("LOCK TABLE keyring IN EXCLUSIVE MODE", &[])?;
            let stored =
                read_keyring(&mut tx)?.ok_or_else(|| StoreError::Keys("the database has no keyring".into()))?;
            let rotated = crate::privacy::Keyring::rewrap(&stored, old, new)?;
            for (name, wrapped) in &rotated.wrapped {
                tx.execute(
                    "UPDATE keyring SET wrapped = $2, master_fingerprint = $3, rotated_at = now() WHERE name = $1",
                    &[&name, wrapped, &rotated.master_fingerprint],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn ingest(&self, source: &str, messages: Vec<TrackingMessage>) -> Result<Vec<Outcome>, StoreError> {
        Ok(self.ingest_marked(source, messages)?.outcomes)
    }

    fn ingest_marked(&self, source: &str, messages: Vec<TrackingMessage>) -> Result<super::Ingested, StoreError> {
        if messages.is_empty() {
            return Ok(super::Ingested { outcomes: Vec::new(), segments_mark: None });
        }
        let encoded: Vec<EncodedEvent> = messages.iter().map(|m| EncodedEvent::of(m, &self.privacy)).collect();
        let units = messages.len();
        if units >= INGEST_ALONE_FROM {
            let batch: Vec<BatchItem<'_>> = batch_items(source, &messages, &encoded).collect();
            let outcomes = self.ingest_in_transaction(&batch).0?;
            return Ok(super::Ingested { outcomes, segments_mark: Some(super::SegmentsMark::of(&self.segment_list)) });
        }
        self.ingests.submit((source.to_string(), messages, encoded), units, |group| self.ingest_group(&group))
    }

    fn insert_api_key(&self, key_hash: &str, key: &ApiKey) -> Result<(), StoreError> {
        self.pool.with(|client| {
            client.execute(
                "INSERT INTO api_keys (key_hash, key_id, role, source, name, created_at) VALUES ($1, $2, $3, $4, $5, now())",
                &[&key_hash, &key.key_id.to_string(), &key.role.as_str(), &key.source, &key.name],
            )?;
            Ok(())
        })
    }

    fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        self.pool.with(|conn| {
            let client = &mut conn.cached();
            let row = client.query_opt(
                "SELECT key_id, role, source, name FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
                &[&key_hash],
            )?;
            row.map(|r| {
                let role: &str = r.get(1);
                Ok(ApiKey {
                    key_id: parse_id::<KeyId>(r.get::<_, &str>(0))?,
                    role: Role::parse(role).ok_or_else(|| StoreError::Database(format!("unknown role `{role}`")))?,
                    source: r.get(2),
                    name: r.get(3),
                })
            })
            .transpose()
        })
    }

    fn customer(&self, id: CustomerId) -> Result<CustomerLookup, StoreError> {
        self.pool.with(|conn| {
            let client = &mut conn.cached();
            let key = id.to_string();
            let Some(row) = client.query_opt(
                "SELECT created_at, merged_into, profile, traits, sealed FROM customers WHERE customer_id = $1",
                &[&key],
            )?
            else {
                return Ok(CustomerLookup::NotFound);
            };
            if let Some(survivor) = row.get::<_, Option<&str>>(1) {
                return Ok(CustomerLookup::MergedInto(parse_id(survivor)?));
            }
            let mut profile = match row.get::<_, Value>(2) {
                Value::Object(map) => map,
                _ => Map::new(),
            };
            let keys = seal::data_keys(&self.privacy.keyring, &[id], |missing| read_data_keys(client, missing))?;
            seal::open_profile(&mut profile, row.get::<_, Option<&[u8]>>(4), keys.get(&id))?;
            let traits: ComputedTraits = serde_json::from_value(row.get(3)).unwrap_or_default();
            let rows = client
                .query("SELECT identifier, value, sealed, shared FROM identifiers WHERE customer_id = $1", &[&key])?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get::<_, bool>(3)))
                .collect();
            let mut identifiers = open_identifiers(client, &self.privacy, rows)?;
            identifiers.sort();
            let shared_identifiers = identifiers.iter().filter(|(_, shared)| *shared).map(|(i, _)| i.clone()).collect();
            let identifiers = identifiers.into_iter().map(|(i, _)| i).collect();
            let merged_from = client
                .query("SELECT customer_id FROM customers WHERE merged_into = $1 ORDER BY customer_id", &[&key])?
                .iter()
                .map(|r| parse_id(r.get::<_, &str>(0)))
                .collect::<Result<Vec<CustomerId>, _>>()?;
            let days = client
                .query(
                    "SELECT day, orders, revenue_minor FROM customer_days WHERE customer_id = $1 ORDER BY day",
                    &[&key],
                )?
                .iter()
                .map(|r| DayTotals { day: r.get(0), orders: r.get(1), revenue_minor: r.get(2) })
                .collect();
            let accounts = client
                .query("SELECT group_id FROM account_members WHERE customer_id = $1 ORDER BY group_id", &[&key])?
                .iter()
                .map(|r| r.get(0))
                .collect();
            Ok(CustomerLookup::Found(Box::new(CustomerRecord {
                id,
                created_at: row.get(0),
                profile,
                traits,
                identifiers,
                shared_identifiers,
                merged_from,
                days,
                accounts,
            })))
        })
    }

    fn customer_id_by_identifier(&self, identifier: &Identifier) -> Result<Option<CustomerId>, StoreError> {
        self.pool.with(|conn| {
            let client = &mut conn.cached();
            client
                .query_opt(
                    "SELECT customer_id FROM identifiers WHERE identifier = $1",
                    &[&self.privacy.keyring.token(identifier).to_string()],
                )?
                .map(|r| parse_id(r.get::<_, &str>(0)))
                .transpose()
        })
    }

    fn events(&self, id: CustomerId, after: Option<&TimelineCursor>, limit: usize) -> Result<EventPage, StoreError> {
        self.pool.with(|conn| {
            let client = &mut conn.cached();
            let key = id.to_string();
            let mut owners: Vec<String> = client
                .query("SELECT customer_id FROM customers WHERE merged_into = $1", &[&key])?
                .iter()
                .map(|r| r.get(0))
                .collect();
            owners.push(key);
            let fetch = (limit + 1) as i64;
            let rows = match after {
                Some(cursor) => client.query(
                    &format!(
                        "SELECT {EVENT_COLUMNS} FROM events WHERE customer_id = ANY($1) AND (ts, event_id) < ($2, $3) \
                         ORDER BY ts DESC, event_id DESC LIMIT $4"
                    ),
                    &[&owners, &cursor.timestamp, &cursor.event_id.to_string(), &fetch],
                )?,
                None => client.query(
                    &format!(
                        "SELECT {EVENT_COLUMNS} FROM events WHERE customer_id = ANY($1) ORDER BY ts DESC, event_id DESC LIMIT $2"
                    ),
                    &[&owners, &fetch],
                )?,
            };
            let sealed_events = rows.iter().map(event_from_row).collect::<Result<Vec<_>, _>>()?;
            let mut events =
                seal::open_events(&self.privacy.keyring, sealed_events, |missing| read_data_keys(client, missing))?;
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
        self.pool.with(|client| {
            let rows = client.query(
                "SELECT merge_id, survivor_id, merged_id, at, reason, identifiers FROM merges \
                 WHERE survivor_id = $1 AND undone_at IS NULL ORDER BY merge_id",
                &[&id.to_string()],
            )?;
            rows.iter()
                .map(|r| {
                    Ok(MergeRecord {
                        merge_id: parse_id(r.get::<_, &str>(0))?,
                        survivor_id: parse_id(r.get::<_, &str>(1))?,
                        merged_id: parse_id(r.get::<_, &str>(2))?,
                        at: r.get(3),
                        reason: r.get(4),
                        identifiers: reveal(
                            &mut client.client,
                            &self.privacy,
                            serde_json::from_value(r.get(5)).unwrap_or_default(),
                        )?,
                    })
                })
                .collect()
        })
    }

    fn enqueue(&self, kind: &str, customer: Option<CustomerId>, payload: &Value) -> Result<OutboxId, StoreError> {
        self.pool.with(|client| {
            let key = match customer {
                Some(c) => Some(seal::data_key_of(&self.privacy.keyring, c, |missing| {
                    read_data_keys(&mut client.client, missing)
                })?),
                None => None,
            };
            let payload = seal::seal_payload(customer.zip(key.as_ref()), payload);
            let id = OutboxId::new();
            client.execute(
                "INSERT INTO outbox (outbox_id, kind, customer_id, payload, status, next_attempt_at, created_at) \
                 VALUES ($1, $2, $3, $4::text::jsonb, 'pending', now(), now())",
                &[&id.to_string(), &kind, &customer.map(|c| c.to_string()), &payload],
            )?;
            Ok(id)
        })
    }

    fn claim_outbox(&self, limit: usize, lease: chrono::Duration) -> Result<Vec<OutboxItem>, StoreError> {
        self.pool.with(|client| {
            let now = Utc::now();
            // SKIP LOCKED: several servers' workers share the queue without waiting
            // on each other or taking the same message.
            let rows = client.query(
                &format!(
                    "UPDATE outbox SET lease_until = $1, attempts = attempts + 1 WHERE outbox_id IN \
                     (SELECT outbox_id FROM outbox WHERE status = 'pending' AND next_attempt_at <= $2 \
                      AND (lease_until IS NULL OR lease_until <= $2) ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
                     RETURNING {OUTBOX_COLUMNS}"
                ),
                &[&(now + lease), &now, &(limit as i64)],
            )?;
            let items = rows.iter().map(outbox_from_row).collect::<Result<Vec<_>, _>>()?;
            seal::open_outbox(&self.privacy.keyring, items, |missing| read_data_keys(&mut client.client, missing))
        })
    }

    fn finish_outbox(&self, id: OutboxId, result: &DeliveryResult) -> Result<(), StoreError> {
        self.pool.with(|client| {
            let key = id.to_string();
            match result {
                DeliveryResult::Delivered => client.execute(
                    "UPDATE outbox SET status = 'delivered', delivered_at = now(), lease_until = NULL, last_error = NULL WHERE outbox_id = $1 AND status = 'pending'",
                    &[&key],
                )?,
                DeliveryResult::Retry { at, error } => client.execute(
                    "UPDATE outbox SET next_attempt_at = $2, lease_until = NULL, last_error = $3 WHERE outbox_id = $1 AND status = 'pending'",
                    &[&key, at, error],
                )?,
                DeliveryResult::GiveUp { error } => client.execute(
                    "UPDATE outbox SET status = 'failed', lease_until = NULL, last_error = $2 WHERE outbox_id = $1 AND status = 'pending'",
                    &[&key, error],
                )?,
            };
            Ok(())
        })
    }

    fn outbox(&self, status: Option<OutboxStatus>, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        self.pool.with(|client| {
            let rows = client.query(
                &format!(
                    "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE ($1::text IS NULL OR status = $1) ORDER BY outbox_id DESC LIMIT $2"
                ),
                &[&status.map(OutboxStatus::as_str), &(limit as i64)],
            )?;
            let items = rows.iter().map(outbox_from_row).collect::<Result<Vec<_>, _>>()?;
            seal::open_outbox(&self.privacy.keyring, items, |missing| read_data_keys(&mut client.client, missing))
        })
    }

    fn unmerge(&self, merge_id: MergeId, settings: &IngestSettings) -> Result<UnmergeReport, StoreError> {
        self.retrying(|client| {
            let (mut tx, statements) = client.begin()?;
            let key = merge_id.to_string();
            // Lock the merge row: two undo requests for one merge run one after the other.
            let row = tx
                .query_opt(
                    "SELECT survivor_id, merged_id, at, identifiers, undone_at IS NOT NULL FROM merges WHERE merge_id = $1 FOR UPDATE",
                    &[&key],
                )?
                .ok_or(StoreError::NotFound)?;
            let (merged, at, moved, undone): (String, DateTime<Utc>, Value, bool) =
                (row.get(1), row.get(2), row.get(3), row.get(4));
            if undone {
                return Err(StoreError::Conflict(format!("merge {key} was already undone")));
            }
            let survivor: String = tx
                .query_one("SELECT merged_into FROM customers WHERE customer_id = $1", &[&merged])?
                .get::<_, Option<String>>(0)
                .ok_or_else(|| StoreError::Conflict(format!("profile {merged} is not merged any more")))?;
            // Lock both profiles one at a time, in id order (the Citus-compatible form).
            let mut pair = [survivor.clone(), merged.clone()];
            pair.sort();
            for customer in &pair {
                tx.query("SELECT 1 FROM customers WHERE customer_id = $1 FOR UPDATE", &[customer])?;
            }
            // A merge of the survivor that committed while we waited for the locks
            // changes who must give the identifiers back: start again.
            let still: Option<String> =
                tx.query_one("SELECT merged_into FROM customers WHERE customer_id = $1", &[&merged])?.get(0);
            if still.as_deref() != Some(survivor.as_str()) {
                return Err(StoreError::Race);
            }
            let moved: Vec<String> = serde_json::from_value(moved).unwrap_or_default();
            tx.execute(
                "UPDATE identifiers SET customer_id = $1 WHERE identifier = ANY($2) AND customer_id = $3",
                &[&merged, &moved, &survivor],
            )?;
            tx.execute("UPDATE customers SET merged_into = NULL, merged_at = NULL WHERE customer_id = $1", &[&merged])?;
            tx.execute(&super::unmerge_descendants_pg(), &[&merged, &survivor])?;
            let owned = |tx: &mut postgres::Transaction<'_>, customer: &str| -> Result<std::collections::HashSet<String>, StoreError> {
                Ok(tx
                    .query("SELECT identifier FROM identifiers WHERE customer_id = $1", &[&customer])?
                    .iter()
                    .map(|r| r.get(0))
                    .collect())
            };
            let restored_set = owned(&mut tx, &merged)?;
            let survivor_set = owned(&mut tx, &survivor)?;
            let later = tx.query(
                "SELECT event_id, identifiers::text FROM events WHERE customer_id = $1 AND received_at >= $2",
                &[&survivor, &at],
            )?;
            let going_back: Vec<String> = later
                .iter()
                .filter(|r| event_goes_back(r.get(1), &restored_set, &survivor_set))
                .map(|r| r.get(0))
                .collect();
            // Loyalty: the restored profile's membership gets back its points.
            super::loyalty::unmerge_members(
                &mut PgTx::new(&mut tx, statements, None),
                parse_id(&merged)?,
                &going_back,
                settings.day_of(Utc::now()),
            )?;
            // The distribution column is never updated in place: insert under the
            // restored profile, then delete the survivor's copies.
            if !going_back.is_empty() {
                tx.execute(
                    "UPDATE message_ids m SET customer_id = $1 FROM events e WHERE e.customer_id = $2 \
                     AND e.event_id = ANY($3) AND m.message_id = e.message_id AND m.source = e.source",
                    &[&merged, &survivor, &going_back],
                )?;
                tx.execute(
                    "INSERT INTO events (customer_id, event_id, source, message_id, type, name, channel, ts, received_at, \
                     sent_at, original_timestamp, user_id, anonymous_id, store, order_id, amount_minor, currency, computed, \
                     properties, context, traits, extra, identifiers, sealed) \
                     SELECT $1::text, event_id, source, message_id, type, name, channel, ts, received_at, \
                     sent_at, original_timestamp, user_id, anonymous_id, store, order_id, amount_minor, currency, computed, \
                     properties, context, traits, extra, identifiers, sealed FROM events WHERE customer_id = $2 AND event_id = ANY($3)",
                    &[&merged, &survivor, &going_back],
                )?;
                tx.execute(
                    "DELETE FROM events WHERE customer_id = $1 AND event_id = ANY($2)",
                    &[&survivor, &going_back],
                )?;
            }
            for root in [&survivor, &merged] {
                let rows = tx.query(
                    &format!(
                        "SELECT {FACT_COLUMNS} FROM events WHERE NOT computed AND customer_id IN \
                         (SELECT $1::text UNION ALL SELECT customer_id FROM customers WHERE merged_into = $1)"
                    ),
                    &[root],
                )?;
                let facts = rows.iter().map(facts_from_row).collect::<Result<Vec<_>, _>>()?;
                let (traits, days) = family_traits(parse_id(root)?, facts, settings);
                tx.execute(
                    "UPDATE customers SET traits = $2::text::jsonb, updated_at = now() WHERE customer_id = $1",
                    &[root, &serde_json::to_string(&traits).unwrap_or_default()],
                )?;
                tx.execute("DELETE FROM customer_days WHERE customer_id = $1", &[root])?;
                for (_, day, orders, revenue) in days {
                    tx.execute(
                        "INSERT INTO customer_days (customer_id, day, orders, revenue_minor) VALUES ($1, $2, $3, $4)",
                        &[root, &day, &orders, &revenue],
                    )?;
                }
            }
            tx.execute("UPDATE merges SET undone_at = now() WHERE merge_id = $1 AND undone_at IS NULL", &[&key])?;
            tx.commit()?;
            Ok(UnmergeReport {
                merge_id,
                survivor_id: parse_id(&survivor)?,
                restored_id: parse_id(&merged)?,
                identifiers: reveal(&mut client.client, &self.privacy, moved)?,
                events_moved: going_back.len(),
            })
        })
    }

    fn erase(&self, customer: CustomerId) -> Result<ErasureReport, StoreError> {
        let (report, cluster) = self.pool.with(|client| {
            let (mut tx, statements) = client.begin()?;
            let key = customer.to_string();
            let Some(row) = tx.query_opt("SELECT merged_into FROM customers WHERE customer_id = $1", &[&key])? else {
                return Err(StoreError::NotFound);
            };
            let root = row.get::<_, Option<String>>(0).unwrap_or(key);
            // Lock the person's profiles one at a time, in id order, like ingest.
            let cluster: Vec<String> = tx
                .query(
                    "SELECT customer_id FROM customers WHERE customer_id = $1 OR merged_into = $1 \
                     ORDER BY customer_id FOR UPDATE",
                    &[&root],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let erased = super::ERASED_CUSTOMER;
            let linking: Vec<&str> = super::LINKING_PROPERTIES.to_vec();
            // Decision 10: the person's loyalty accounts close with a final entry,
            // and their entries stay, de-identified, so the ledger sums to zero.
            let today = self.settings.day_of(Utc::now());
            let people: Vec<CustomerId> = cluster.iter().map(|c| parse_id(c)).collect::<Result<_, _>>()?;
            super::loyalty::close_for_erasure(
                &mut PgTx::new(&mut tx, statements, None),
                &[parse_id(&root)?],
                &people,
                today,
            )?;
            tx.execute(
                "UPDATE loyalty_entries SET customer_id = $2, event_id = NULL, message_id = NULL, order_id = NULL, \
                 actor = NULL, reason = (reason::jsonb - 'order_id' - 'reason' - 'actor')::text WHERE customer_id = ANY($1)",
                &[&cluster, &erased],
            )?;
            tx.execute(
                "UPDATE loyalty_draws SET customer_id = $2, member_id = '', event_id = '' WHERE customer_id = ANY($1)",
                &[&cluster, &erased],
            )?;
            // The erased leave their segments; sizes follow.
            tx.execute(
                "UPDATE segments s SET members = s.members - m.n FROM (SELECT segment_id, count(*) AS n \
                 FROM segment_members WHERE customer_id = ANY($1) GROUP BY segment_id) m WHERE s.segment_id = m.segment_id",
                &[&cluster],
            )?;
            for table in [
                "loyalty_lots",
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
                tx.execute(&format!("DELETE FROM {table} WHERE customer_id = ANY($1)"), &[&cluster])?;
            }
            tx.execute(
                "DELETE FROM identifier_sightings WHERE customer_id = ANY($1) \
                 OR identifier IN (SELECT identifier FROM identifiers WHERE customer_id = ANY($1))",
                &[&cluster],
            )?;
            let identifiers = tx.execute("DELETE FROM identifiers WHERE customer_id = ANY($1)", &[&cluster])? as usize;
            // Citus cannot change a row's distribution value: there, this becomes
            // an insert under the erased profile and a delete (as unmerge does).
            let events = tx.execute(
                "UPDATE events SET customer_id = $2, message_id = event_id, user_id = NULL, anonymous_id = NULL, \
                 sealed = NULL, traits = '{}', extra = '{}', identifiers = '[]', order_id = NULL, \
                 properties = properties - $3::text[] WHERE customer_id = ANY($1)",
                &[&cluster, &erased, &linking],
            )? as usize;
            tx.execute("UPDATE message_ids SET customer_id = $2 WHERE customer_id = ANY($1)", &[&cluster, &erased])?;
            tx.execute(
                "INSERT INTO customer_days (customer_id, day, orders, revenue_minor) \
                 SELECT $2, day, sum(orders), sum(revenue_minor) FROM customer_days WHERE customer_id = ANY($1) GROUP BY day \
                 ON CONFLICT (customer_id, day) DO UPDATE SET orders = customer_days.orders + excluded.orders, \
                 revenue_minor = customer_days.revenue_minor + excluded.revenue_minor",
                &[&cluster, &erased],
            )?;
            tx.execute("DELETE FROM customer_days WHERE customer_id = ANY($1)", &[&cluster])?;
            tx.execute(
                "DELETE FROM identity_conflicts WHERE customer_id = ANY($1) OR other_customer_id = ANY($1)",
                &[&cluster],
            )?;
            tx.execute("DELETE FROM merges WHERE survivor_id = ANY($1) OR merged_id = ANY($1)", &[&cluster])?;
            tx.execute("DELETE FROM account_members WHERE customer_id = ANY($1)", &[&cluster])?;
            tx.execute("DELETE FROM outbox WHERE customer_id = ANY($1)", &[&cluster])?;
            tx.execute("DELETE FROM consents WHERE customer_id = ANY($1)", &[&cluster])?;
            tx.execute("DELETE FROM name_tokens WHERE customer_id = ANY($1)", &[&cluster])?;
            tx.execute("DELETE FROM sign_in_codes WHERE customer_id = ANY($1)", &[&cluster])?;
            tx.execute("DELETE FROM web_sessions WHERE kind = 'member' AND subject = ANY($1)", &[&cluster])?;
            let profiles = tx.execute("DELETE FROM customers WHERE customer_id = ANY($1)", &[&cluster])? as usize;
            let keys = tx.execute("DELETE FROM data_keys WHERE customer_id = ANY($1)", &[&cluster])? as usize;
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
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &report.erasure_id.to_string(),
                    &report.erased_at,
                    &serde_json::to_string(&cluster).unwrap_or_default(),
                    &(profiles as i32),
                    &(identifiers as i32),
                    &(events as i32),
                    &(keys as i32),
                ],
            )?;
            tx.commit()?;
            // Remove the dead key tuples from the table's pages now rather than
            // at the next autovacuum.
            client.batch_execute("VACUUM data_keys")?;
            let cluster = cluster.iter().map(|c| parse_id(c)).collect::<Result<Vec<CustomerId>, _>>()?;
            let report = ErasureReport { customers: cluster.clone(), ..report };
            Ok((report, cluster))
        })?;
        for id in &cluster {
            self.privacy.keyring.forget(*id);
        }
        Ok(report)
    }

    fn record_consent(
        &self,
        customer: CustomerId,
        fact: &ConsentFact,
        recorded_by: &str,
        token_id: Option<&str>,
    ) -> Result<(CustomerId, ConsentId), StoreError> {
        self.retrying(|client| {
            let mut tx = client.transaction()?;
            let Some(row) = tx.query_opt(
                "SELECT merged_into FROM customers WHERE customer_id = $1 FOR UPDATE",
                &[&customer.to_string()],
            )?
            else {
                return Err(StoreError::NotFound);
            };
            let owner = match row.get::<_, Option<&str>>(0) {
                Some(survivor) => parse_id::<CustomerId>(survivor)?,
                None => customer,
            };
            if let Some(token) = token_id {
                let fresh = tx.execute(
                    "INSERT INTO consent_tokens (token_id, used_at) VALUES ($1, now()) ON CONFLICT DO NOTHING",
                    &[&token],
                )?;
                if fresh == 0 {
                    return Err(StoreError::Conflict("this link was already used; a link works once".into()));
                }
            }
            let key = seal::data_key_of(&self.privacy.keyring, owner, |missing| read_data_keys(&mut tx, missing))?;
            let proof = key.seal(owner, &serde_json::to_vec(&fact.proof).unwrap_or_default());
            let id = ConsentId::new();
            tx.execute(
                "INSERT INTO consents (customer_id, consent_id, purpose, channel, granted, at, source, wording_version, \
                 proof, recorded_by, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now())",
                &[
                    &owner.to_string(),
                    &id.to_string(),
                    &fact.purpose.as_str(),
                    &fact.channel.as_str(),
                    &fact.granted,
                    &fact.at,
                    &fact.source.as_str(),
                    &fact.wording_version,
                    &proof,
                    &recorded_by,
                ],
            )?;
            tx.commit()?;
            Ok((owner, id))
        })
    }

    fn consents(&self, customer: CustomerId) -> Result<Vec<ConsentFact>, StoreError> {
        self.pool.with(|client| {
            let rows = client
                .query(
                    "SELECT purpose, channel, granted, at, source, wording_version, proof FROM consents \
                     WHERE customer_id = $1 OR customer_id IN (SELECT customer_id FROM customers WHERE merged_into = $1) \
                     ORDER BY at, consent_id",
                    &[&customer.to_string()],
                )?
                .iter()
                .map(|r| super::ConsentRow {
                    purpose: r.get(0),
                    channel: r.get(1),
                    granted: r.get(2),
                    at: r.get(3),
                    source: r.get(4),
                    wording_version: r.get(5),
                    proof: r.get(6),
                })
                .collect();
            super::open_consents(&self.privacy.keyring, rows, |missing| read_data_keys(&mut client.client, missing))
        })
    }

    fn audit_write(&self, segment: &AuditSegment, records: &[AuditRecord]) -> Result<(), StoreError> {
        self.pool.with(|client| {
            let mut tx = client.transaction()?;
            tx.execute(
                "INSERT INTO audit_segments (segment_id, process, day, opened_at, closed_at, records, last_hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (segment_id) DO UPDATE SET \
                 closed_at = excluded.closed_at, records = excluded.records, last_hash = excluded.last_hash",
                &[
                    &segment.segment_id,
                    &segment.process,
                    &segment.day,
                    &segment.opened_at,
                    &segment.closed_at,
                    &segment.records,
                    &segment.last_hash,
                ],
            )?;
            for r in records {
                tx.execute(
                    "INSERT INTO audit_log (segment_id, seq, at, actor, action, subject, detail, prev_hash, hash) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[&r.segment_id, &r.seq, &r.at, &r.actor, &r.action, &r.subject, &r.detail, &r.prev_hash, &r.hash],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn open_request(&self, request: &RightsRequest) -> Result<(), StoreError> {
        let r = request;
        self.pool.with(|client| {
            client.execute(
                "INSERT INTO rights_requests (request_id, kind, customer_id, received_at, due_at, status, outcome, recorded_by) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &r.request_id.to_string(),
                    &r.kind.as_str(),
                    &r.customer_id.map(|c| c.to_string()),
                    &r.received_at,
                    &r.due_at,
                    &r.status.as_str(),
                    &r.outcome.to_string(),
                    &r.recorded_by,
                ],
            )?;
            Ok(())
        })
    }

    fn requests(&self, status: Option<RequestStatus>) -> Result<Vec<RightsRequest>, StoreError> {
        self.pool.with(|client| {
            client
                .query(
                    &format!(
                        "SELECT {REQUEST_COLUMNS} FROM rights_requests WHERE ($1::text IS NULL OR status = $1) \
                         ORDER BY due_at, request_id"
                    ),
                    &[&status.map(RequestStatus::as_str)],
                )?
                .iter()
                .map(request_from_row)
                .collect()
        })
    }

    fn request(&self, id: RequestId) -> Result<Option<RightsRequest>, StoreError> {
        self.pool.with(|client| {
            client
                .query_opt(
                    &format!("SELECT {REQUEST_COLUMNS} FROM rights_requests WHERE request_id = $1"),
                    &[&id.to_string()],
                )?
                .as_ref()
                .map(request_from_row)
                .transpose()
        })
    }

    fn close_request(
        &self,
        id: RequestId,
        status: RequestStatus,
        outcome: &Value,
        forget_person: bool,
    ) -> Result<(), StoreError> {
        self.pool.with(|client| {
            let changed = client.execute(
                "UPDATE rights_requests SET status = $2, outcome = $3, completed_at = now(), \
                 customer_id = CASE WHEN $4 THEN NULL ELSE customer_id END WHERE request_id = $1 AND status = 'open'",
                &[&id.to_string(), &status.as_str(), &outcome.to_string(), &forget_person],
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
        self.pool.with(|client| {
            client
                .query(
                    "SELECT customer_id FROM name_tokens WHERE token = ANY($1) GROUP BY customer_id \
                     HAVING count(DISTINCT token) = $2 ORDER BY customer_id LIMIT $3",
                    &[&tokens, &(tokens.len() as i64), &(limit as i64)],
                )?
                .iter()
                .map(|r| parse_id(r.get::<_, &str>(0)))
                .collect()
        })
    }

    fn inactive_customers(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<CustomerId>, StoreError> {
        self.pool.with(|client| {
            client
                .query(
                    "SELECT customer_id FROM customers WHERE merged_into IS NULL AND updated_at < $1 ORDER BY customer_id LIMIT $2",
                    &[&before, &(limit as i64)],
                )?
                .iter()
                .map(|r| parse_id(r.get::<_, &str>(0)))
                .collect()
        })
    }

    fn purge_class_from_events(&self, class: DataClass, before: DateTime<Utc>) -> Result<usize, StoreError> {
        self.pool.with(|client| {
            let mut tx = client.transaction()?;
            // One purge per class at a time, across servers.
            tx.execute("LOCK TABLE retention_marks IN EXCLUSIVE MODE", &[])?;
            let from: Option<DateTime<Utc>> = tx
                .query_opt("SELECT purged_before FROM retention_marks WHERE class = $1", &[&class.as_str()])?
                .map(|r| r.get(0));
            let rows: Vec<(String, DateTime<Utc>, String, Vec<u8>)> = tx
                .query(
                    "SELECT customer_id, ts, event_id, sealed FROM events \
                     WHERE ($1::timestamptz IS NULL OR ts >= $1) AND ts < $2 AND sealed IS NOT NULL",
                    &[&from, &before],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect();
            let owners = seal::owners_of(rows.iter().map(|r| r.3.as_slice()));
            let keys = seal::data_keys(&self.privacy.keyring, &owners, |missing| read_data_keys(&mut tx, missing))?;
            let mut changed = 0;
            for (customer, ts, event, sealed) in &rows {
                let owner = crate::privacy::keyring::sealed_owner(sealed)?;
                let Some(key) = keys.get(&owner) else { continue };
                let stripped = match seal::strip_sealed(&self.privacy.classes, owner, key, sealed, &[class])? {
                    seal::Stripped::Unchanged => continue,
                    seal::Stripped::Sealed(rest) => Some(rest),
                    seal::Stripped::Empty => None,
                };
                tx.execute(
                    "UPDATE events SET sealed = $4 WHERE customer_id = $1 AND ts = $2 AND event_id = $3",
                    &[customer, ts, event, &stripped],
                )?;
                changed += 1;
            }
            tx.execute(
                "INSERT INTO retention_marks (class, purged_before) VALUES ($1, $2) \
                 ON CONFLICT (class) DO UPDATE SET purged_before = excluded.purged_before",
                &[&class.as_str(), &before],
            )?;
            tx.commit()?;
            Ok(changed)
        })
    }

    fn erasures(&self) -> Result<Vec<crate::privacy::backup::JournalEntry>, StoreError> {
        self.pool.with(|client| {
            client
                .query("SELECT erasure_id, erased_at, customer_ids FROM erasures ORDER BY erasure_id", &[])?
                .iter()
                .map(|r| {
                    let ids: Vec<String> = serde_json::from_str(r.get::<_, &str>(2)).unwrap_or_default();
                    Ok(crate::privacy::backup::JournalEntry {
                        erasure_id: parse_id(r.get::<_, &str>(0))?,
                        erased_at: r.get(1),
                        customers: ids.iter().map(|c| parse_id(c)).collect::<Result<_, _>>()?,
                    })
                })
                .collect()
        })
    }

    fn unclassified_fields(&self) -> Result<Vec<String>, StoreError> {
        self.pool.with(|client| {
            Ok(client
                .query("SELECT path FROM unclassified_fields ORDER BY path", &[])?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
    }

    fn audit_purge_segment(&self, segment_id: &str) -> Result<(), StoreError> {
        self.pool.with(|client| {
            let mut tx = client.transaction()?;
            let marked = tx.execute(
                "UPDATE audit_segments SET purged_at = now() WHERE segment_id = $1 AND closed_at IS NOT NULL AND purged_at IS NULL",
                &[&segment_id],
            )?;
            if marked == 0 {
                return Err(StoreError::Conflict(format!("audit segment {segment_id} is not closed, or already removed")));
            }
            tx.execute("DELETE FROM audit_log WHERE segment_id = $1", &[&segment_id])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn audit_segments(&self) -> Result<Vec<AuditSegment>, StoreError> {
        self.pool.with(|client| {
            Ok(client
                .query(
                    "SELECT segment_id, process, day, opened_at, closed_at, records, last_hash, purged_at \
                     FROM audit_segments ORDER BY segment_id",
                    &[],
                )?
                .iter()
                .map(|r| AuditSegment {
                    segment_id: r.get(0),
                    process: r.get(1),
                    day: r.get(2),
                    opened_at: r.get(3),
                    closed_at: r.get(4),
                    records: r.get(5),
                    last_hash: r.get(6),
                    purged_at: r.get(7),
                })
                .collect())
        })
    }

    fn audit_records(&self, segment_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
        self.pool.with(|client| {
            Ok(client
                .query(
                    &format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE segment_id = $1 ORDER BY seq"),
                    &[&segment_id],
                )?
                .iter()
                .map(audit_from_row)
                .collect())
        })
    }

    fn audit_trail(&self, subjects: &[CustomerId]) -> Result<Vec<AuditRecord>, StoreError> {
        let subjects: Vec<String> = subjects.iter().map(ToString::to_string).collect();
        self.pool.with(|client| {
            Ok(client
                .query(
                    &format!(
                        "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE subject = ANY($1) ORDER BY at, segment_id, seq"
                    ),
                    &[&subjects],
                )?
                .iter()
                .map(audit_from_row)
                .collect())
        })
    }

    fn rebuild_traits(&self, settings: &IngestSettings) -> Result<u64, StoreError> {
        self.pool.with(|client| {
            let mut tx = client.transaction()?;
            // Ingest waits while the rebuild runs, so no event slips between the
            // scan and the write.
            tx.batch_execute("LOCK TABLE customers, customer_days IN SHARE ROW EXCLUSIVE MODE")?;
            let merged_into: HashMap<CustomerId, CustomerId> = tx
                .query("SELECT customer_id, merged_into FROM customers WHERE merged_into IS NOT NULL", &[])?
                .iter()
                .map(|r| Ok((parse_id(r.get::<_, &str>(0))?, parse_id(r.get::<_, &str>(1))?)))
                .collect::<Result<_, StoreError>>()?;
            let mut rebuild = Rebuild::default();
            {
                use postgres::fallible_iterator::FallibleIterator;
                let params: [&(dyn postgres::types::ToSql + Sync); 0] = [];
                let mut rows =
                    tx.query_raw(&format!("SELECT {FACT_COLUMNS} FROM events WHERE NOT computed"), params)?;
                while let Some(row) = rows.next()? {
                    let (customer, facts) = facts_from_row(&row)?;
                    rebuild.add(customer, &facts, settings);
                }
            }
            let (traits, days) = rebuild.finish(&merged_into);
            let all: Vec<String> =
                tx.query("SELECT customer_id FROM customers", &[])?.iter().map(|r| r.get(0)).collect();
            let texts: Vec<String> = all
                .iter()
                .map(|c| {
                    let computed = parse_id::<CustomerId>(c)
                        .ok()
                        .and_then(|id| traits.get(&id).cloned())
                        .unwrap_or_default();
                    serde_json::to_string(&computed).unwrap_or_default()
                })
                .collect();
            tx.execute(
                "UPDATE customers c SET traits = u.t::jsonb FROM unnest($1::text[], $2::text[]) AS u(id, t) WHERE c.customer_id = u.id",
                &[&all, &texts],
            )?;
            tx.execute("DELETE FROM customer_days", &[])?;
            let customers: Vec<String> = days.iter().map(|d| d.0.to_string()).collect();
            let day: Vec<NaiveDate> = days.iter().map(|d| d.1).collect();
            let orders: Vec<i64> = days.iter().map(|d| d.2).collect();
            let revenue: Vec<i64> = days.iter().map(|d| d.3).collect();
            tx.execute(
                "INSERT INTO customer_days (customer_id, day, orders, revenue_minor) SELECT * FROM unnest($1::text[], $2::date[], $3::int8[], $4::int8[])",
                &[&customers, &day, &orders, &revenue],
            )?;
            tx.commit()?;
            Ok(all.len() as u64)
        })
    }

    fn purge_message_ids(&self, received_before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.pool
            .with(|client| Ok(client.execute("DELETE FROM message_ids WHERE received_at < $1", &[&received_before])?))
    }

    fn loyalty_apply(
        &self,
        programme: &relais_domain::loyalty::Programme,
        today: NaiveDate,
    ) -> Result<Result<i64, relais_domain::loyalty::ProgrammeError>, StoreError> {
        self.pool.with(|client| {
            let mut tx = client.transaction()?;
            tx.batch_execute("LOCK TABLE loyalty_programmes IN SHARE ROW EXCLUSIVE MODE")?;
            let current = loyalty::load_programmes(&mut tx)?;
            if let Some(old) = current.iter().find(|p| p.head.key == programme.head.key) {
                if old == programme {
                    let revision: i64 =
                        tx.query_one("SELECT COALESCE(MAX(revision), 0)::bigint FROM loyalty_programmes", &[])?.get(0);
                    return Ok(Ok(revision));
                }
                if let Err(refused) = old.check_change(programme, today) {
                    return Ok(Err(refused));
                }
            }
            let revision = loyalty::save_programme(&mut tx, programme)?;
            tx.commit()?;
            Ok(Ok(revision))
        })
    }

    fn loyalty_programmes(&self) -> Result<Vec<relais_domain::loyalty::Programme>, StoreError> {
        self.pool.with(|conn| loyalty::load_programmes(&mut conn.cached()))
    }

    fn loyalty_enrol(
        &self,
        customer: CustomerId,
        programme: &str,
    ) -> Result<(super::loyalty::MemberView, bool), StoreError> {
        let enrolment = self.retrying(|client| {
            let (mut tx, statements) = client.begin()?;
            let enrolment =
                super::loyalty::enrol(&mut PgTx::new(&mut tx, statements, Some(&self.privacy)), customer, programme)?;
            tx.commit()?;
            Ok(enrolment)
        })?;
        let view = self.loyalty_member(enrolment.member.member)?.ok_or(StoreError::NotFound)?;
        Ok((view, enrolment.created))
    }

    fn loyalty_member(&self, id: relais_domain::MemberId) -> Result<Option<super::loyalty::MemberView>, StoreError> {
        self.pool.with(|conn| {
            let client = &mut conn.cached();
            let Some(row) = loyalty::member(client, id)? else { return Ok(None) };
            let survivor = client
                .query_opt("SELECT merged_into FROM customers WHERE customer_id = $1", &[&row.customer.to_string()])?
                .and_then(|r| r.get::<_, Option<String>>(0));
            let customer = survivor.as_deref().map(parse_id).transpose()?.unwrap_or(row.customer);
            let cards = loyalty::card_numbers(client, &self.privacy, vec![row.card_token.clone()])?;
            Ok(Some(super::loyalty::MemberView { card_number: cards.get(&row.card_token).cloned(), customer, row }))
        })
    }

    fn loyalty_members_of(&self, customer: CustomerId) -> Result<Vec<super::loyalty::MemberView>, StoreError> {
        self.pool.with(|conn| {
            let client = &mut conn.cached();
            let Some(found) = client
                .query_opt("SELECT merged_into FROM customers WHERE customer_id = $1", &[&customer.to_string()])?
            else {
                return Ok(Vec::new());
            };
            let root = found.get::<_, Option<&str>>(0).map(parse_id).transpose()?.unwrap_or(customer);
            let rows = loyalty::members_of(client, root)?;
            let cards =
                loyalty::card_numbers(client, &self.privacy, rows.iter().map(|r| r.card_token.clone()).collect())?;
            Ok(super::loyalty::MemberView::of_person(rows, root, &cards))
        })
    }

    fn loyalty_entries(&self, id: relais_domain::MemberId) -> Result<super::loyalty::MemberLedger, StoreError> {
        self.pool.with(|client| {
            let row = loyalty::member(&mut client.client, id)?.ok_or(StoreError::NotFound)?;
            Ok(super::loyalty::MemberLedger {
                entries: loyalty::entries(&mut client.client, &row)?,
                lots: loyalty::open_lots(&mut client.client, &row)?,
                badges: loyalty::badges(&mut client.client, &row)?,
            })
        })
    }

    fn loyalty_operate(
        &self,
        request: &super::loyalty::ManualOperation,
    ) -> Result<super::loyalty::OperationAnswer, StoreError> {
        if request.reward.is_some() {
            // A reward's stock row stays locked until the commit: two groups
            // holding two rewards each, in other processes, could deadlock.
            return self.in_transaction(None, Plans::PostgresChoice, |tx| super::loyalty::operate(tx, request)).0;
        }
        self.operations.submit(request.clone(), 1, |group| self.operation_group(&group))
    }

    fn loyalty_expire(&self, day: NaiveDate) -> Result<(usize, i64), StoreError> {
        let (mut members, mut points) = (0, 0);
        loop {
            let due = self.pool.with(|client| loyalty::members_with_due_lots(&mut client.client, day, 500))?;
            let mut progressed = false;
            for member in due {
                let expired = self.retrying(|client| {
                    let (mut tx, statements) = client.begin()?;
                    let expired =
                        super::loyalty::expire_member(&mut PgTx::new(&mut tx, statements, None), member, day)?;
                    tx.commit()?;
                    Ok(expired)
                })?;
                if expired > 0 {
                    progressed = true;
                    members += 1;
                    points += expired;
                }
            }
            if !progressed {
                return Ok((members, points));
            }
        }
    }

    fn loyalty_report(
        &self,
        programme: &str,
        since: Option<NaiveDate>,
    ) -> Result<super::loyalty::ReportRows, StoreError> {
        self.pool.with(|client| loyalty::report(&mut client.client, programme, since))
    }

    fn loyalty_review(&self, day: NaiveDate) -> Result<usize, StoreError> {
        let programmes = self.loyalty_programmes()?;
        let reviewing = super::loyalty::reviewing(&programmes, day);
        let due = self.pool.with(|client| loyalty::members_to_review(&mut client.client, day, &reviewing))?;
        let mut changes = 0;
        let language = self.settings.language;
        for member in due {
            changes += usize::from(self.retrying(|client| {
                let (mut tx, statements) = client.begin()?;
                let mut ledger = PgTx::new(&mut tx, statements, Some(&self.privacy));
                let changed = super::loyalty::review_member(&mut ledger, member, day, language)?;
                tx.commit()?;
                Ok(changed)
            })?);
        }
        Ok(changes)
    }

    fn loyalty_release(&self, now: DateTime<Utc>, day: NaiveDate) -> Result<(usize, i64), StoreError> {
        let before = now - chrono::Duration::days(1);
        let candidates = self.pool.with(|client| {
            let (mut tx, statements) = client.begin()?;
            let found =
                super::loyalty::LedgerTx::reservations_before(&mut PgTx::new(&mut tx, statements, None), before)?;
            tx.commit()?;
            Ok(found)
        })?;
        if candidates.is_empty() {
            return Ok((0, 0));
        }
        let (mut released, mut points) = (0, 0);
        for id in super::loyalty::due_reservations(candidates, now, |programme| self.loyalty_rewards(programme))? {
            // Another process may release it first: the redemption row is
            // locked, then found cancelled, and nothing happens twice.
            let given = self.retrying(|client| {
                let (mut tx, statements) = client.begin()?;
                let given =
                    super::loyalty::release_redemption(&mut PgTx::new(&mut tx, statements, None), &id, now, day)?;
                tx.commit()?;
                Ok(given)
            })?;
            if let Some(given) = given {
                released += 1;
                points += given;
            }
        }
        Ok((released, points))
    }

    fn loyalty_tier_value(
        &self,
        id: relais_domain::MemberId,
        measure: relais_domain::loyalty::tiers::Measure,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<i64, StoreError> {
        self.pool.with(|client| {
            let row = loyalty::member(&mut client.client, id)?.ok_or(StoreError::NotFound)?;
            let (mut tx, statements) = client.begin()?;
            let value = super::loyalty::LedgerTx::tier_value(
                &mut PgTx::new(&mut tx, statements, None),
                &row,
                measure,
                from,
                to,
            )?;
            tx.commit()?;
            Ok(value)
        })
    }

    fn loyalty_put_reward(
        &self,
        programme: &str,
        reward: &relais_domain::loyalty::rewards::Reward,
    ) -> Result<Option<i64>, StoreError> {
        self.retrying(|client| {
            let mut tx = client.transaction()?;
            let old = tx
                .query_opt(
                    "SELECT definition, stock_left FROM loyalty_rewards WHERE programme_key = $1 AND reward_id = $2 \
                     FOR UPDATE",
                    &[&programme, &reward.id],
                )?
                .map(|r| {
                    Ok::<_, StoreError>((
                        super::loyalty::reward_from_json(r.get::<_, &str>(0))?.stock,
                        r.get::<_, Option<i64>>(1),
                    ))
                })
                .transpose()?;
            let left = super::loyalty::stock_after_change(old, reward.stock);
            let definition = serde_json::to_string(reward).map_err(|e| StoreError::Database(e.to_string()))?;
            tx.execute(
                "INSERT INTO loyalty_rewards (programme_key, reward_id, definition, stock_left, updated_at) \
                 VALUES ($1, $2, $3, $4, now()) ON CONFLICT (programme_key, reward_id) DO UPDATE SET \
                 definition = excluded.definition, stock_left = excluded.stock_left, updated_at = excluded.updated_at",
                &[&programme, &reward.id, &definition, &left],
            )?;
            tx.commit()?;
            Ok(left)
        })
    }

    fn loyalty_rewards(
        &self,
        programme: &str,
    ) -> Result<Vec<(relais_domain::loyalty::rewards::Reward, Option<i64>)>, StoreError> {
        self.pool.with(|client| {
            client
                .query(
                    "SELECT definition, stock_left FROM loyalty_rewards WHERE programme_key = $1 ORDER BY reward_id",
                    &[&programme],
                )?
                .iter()
                .map(|r| Ok((super::loyalty::reward_from_json(r.get::<_, &str>(0))?, r.get(1))))
                .collect()
        })
    }

    fn loyalty_settle(
        &self,
        id: &str,
        confirm: bool,
        actor: &str,
        day: NaiveDate,
    ) -> Result<super::loyalty::RedemptionRow, StoreError> {
        self.retrying(|client| {
            let (mut tx, statements) = client.begin()?;
            let row =
                super::loyalty::settle_redemption(&mut PgTx::new(&mut tx, statements, None), id, confirm, actor, day)?;
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
        self.retrying(|client| {
            let mut tx = client.transaction()?;
            let definition = serde_json::to_string(campaign).map_err(|e| StoreError::Database(e.to_string()))?;
            tx.execute(
                "INSERT INTO loyalty_coupon_campaigns (programme_key, campaign_id, definition, codes, used, updated_at) \
                 VALUES ($1, $2, $3, 0, 0, now()) ON CONFLICT (programme_key, campaign_id) DO UPDATE SET \
                 definition = excluded.definition, updated_at = excluded.updated_at",
                &[&programme, &campaign.id, &definition],
            )?;
            tx.execute(
                "INSERT INTO loyalty_coupon_codes (code_hash, programme_key, campaign_id) \
                 SELECT unnest($1::text[]), $2, $3",
                &[&code_hashes, &programme, &campaign.id],
            )?;
            let row = tx.query_one(
                "UPDATE loyalty_coupon_campaigns SET codes = codes + $3 WHERE programme_key = $1 AND campaign_id = $2 \
                 RETURNING codes, used",
                &[&programme, &campaign.id, &(code_hashes.len() as i64)],
            )?;
            tx.commit()?;
            Ok((row.get(0), row.get(1)))
        })
    }

    fn loyalty_campaigns(
        &self,
        programme: &str,
    ) -> Result<Vec<(relais_domain::loyalty::coupons::Campaign, i64, i64)>, StoreError> {
        self.pool.with(|client| {
            client
                .query(
                    "SELECT definition, codes, used FROM loyalty_coupon_campaigns WHERE programme_key = $1 \
                     ORDER BY campaign_id",
                    &[&programme],
                )?
                .iter()
                .map(|r| Ok((super::loyalty::campaign_from_json(r.get::<_, &str>(0))?, r.get(1), r.get(2))))
                .collect()
        })
    }

    fn loyalty_use_coupon(
        &self,
        request: &super::loyalty::CouponRequest,
    ) -> Result<super::loyalty::CouponAccepted, StoreError> {
        self.retrying(|client| {
            let (mut tx, statements) = client.begin()?;
            let accepted = super::loyalty::use_coupon(&mut PgTx::new(&mut tx, statements, None), request)?;
            tx.commit()?;
            Ok(accepted)
        })
    }

    fn loyalty_check(&self) -> Result<super::loyalty::LedgerCheck, StoreError> {
        self.pool.with(|conn| loyalty::check(&mut conn.client))
    }

    fn loyalty_forget_answers(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.pool
            .with(|client| Ok(client.execute("DELETE FROM loyalty_idempotency WHERE created_at < $1", &[&before])?))
    }

    fn purchases(&self, currency: &str) -> Result<Vec<(CustomerId, DateTime<Utc>, i64)>, StoreError> {
        self.pool.with(|client| {
            client
                .query(
                    "SELECT COALESCE(c.merged_into, c.customer_id), e.ts, e.amount_minor FROM events e \
                     JOIN customers c ON c.customer_id = e.customer_id \
                     WHERE e.type = 'track' AND e.name = $1 AND e.currency = $2 AND e.amount_minor IS NOT NULL",
                    &[&relais_domain::message::events::ORDER_COMPLETED, &currency],
                )?
                .iter()
                .map(|r| Ok((parse_id(r.get::<_, &str>(0))?, r.get(1), r.get(2))))
                .collect()
        })
    }

    fn segment_put(
        &self,
        record: &super::segments::SegmentRecord,
    ) -> Result<super::segments::SegmentRecord, StoreError> {
        self.put_segment(record)
    }

    fn segments(&self) -> Result<Vec<super::segments::SegmentRecord>, StoreError> {
        // Callers that ask together share a read.
        Ok(self.segment_list.get(|| self.all_segments())?.as_ref().clone())
    }

    fn segments_after(&self, mark: super::SegmentsMark) -> Result<Vec<super::segments::SegmentRecord>, StoreError> {
        Ok(self.segment_list.get_after(mark.0, || self.all_segments())?.as_ref().clone())
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
        let ids: Vec<String> = survivors.iter().map(|c| c.to_string()).collect();
        self.pool.with(|client| {
            client
                .query("SELECT customer_id FROM customers WHERE merged_into = ANY($1)", &[&ids])?
                .iter()
                .map(|r| parse_id(r.get::<_, &str>(0)))
                .collect()
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
        self.pool.with(|client| {
            let row = client.query_opt(
                "SELECT r::bigint, f::bigint, m::bigint, rfm_group, clv_minor FROM customer_scores WHERE customer_id = $1",
                &[&customer.to_string()],
            )?;
            Ok(row.map(|r| super::segments::ScoreRow {
                r: r.get(0),
                f: r.get(1),
                m: r.get(2),
                group: r.get(3),
                clv: r.get(4),
            }))
        })
    }

    fn event_flow(&self, since: DateTime<Utc>, bucket_seconds: i64) -> Result<Vec<(i64, String, i64)>, StoreError> {
        self.pool.with(|client| {
            let rows = client.query(
                "SELECT (floor(extract(epoch FROM received_at)::float8 / $2::float8) * $2::float8)::bigint AS bucket, channel, count(*) \
                 FROM events WHERE received_at >= $1 AND NOT computed GROUP BY bucket, channel ORDER BY bucket, channel",
                &[&since, &(bucket_seconds.max(1) as f64)],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
        })
    }

    fn journey_events(
        &self,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        visit: &mut dyn FnMut(&relais_domain::journey::LoggedEvent<'_>) -> bool,
    ) -> Result<u64, StoreError> {
        use postgres::fallible_iterator::FallibleIterator;
        self.pool.with(|client| {
            // A cursor (query_raw streams rows) inside a read-only transaction.
            let mut tx = client.build_transaction().read_only(true).start()?;
            let params: [&(dyn postgres::types::ToSql + Sync); 2] = [&from, &to];
            let mut rows = tx.query_raw(
                "SELECT COALESCE(c.merged_into, c.customer_id) AS who, e.ts, e.type, e.name, e.channel FROM events e \
                 JOIN customers c ON c.customer_id = e.customer_id \
                 WHERE NOT e.computed AND e.type IN ('page', 'screen', 'track') \
                 AND ($1::timestamptz IS NULL OR e.ts >= $1) AND ($2::timestamptz IS NULL OR e.ts < $2) \
                 ORDER BY who, e.ts, e.event_id",
                params,
            )?;
            let mut read = 0;
            while let Some(row) = rows.next()? {
                read += 1;
                let at: DateTime<Utc> = row.get(1);
                let event = relais_domain::journey::LoggedEvent {
                    customer: row.get(0),
                    at_micros: at.timestamp_micros(),
                    kind: row.get(2),
                    name: row.get(3),
                    channel: row.get(4),
                };
                if !visit(&event) {
                    break;
                }
            }
            drop(rows);
            tx.commit()?;
            Ok(read)
        })
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.pool.with(|client| client.simple_query("SELECT 1").map(|_| ()).map_err(StoreError::from))
    }

    fn counts(&self) -> Result<(u64, u64), StoreError> {
        self.pool.with(|client| {
            let customers: i64 =
                client.query_one("SELECT count(*) FROM customers WHERE merged_into IS NULL", &[])?.get(0);
            let events: i64 = client.query_one("SELECT count(*) FROM events", &[])?.get(0);
            Ok((customers as u64, events as u64))
        })
    }

    fn durability(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.pool.with(|client| {
            let mut settings = Vec::new();
            for name in ["synchronous_commit", "fsync"] {
                let value: String = client.query_one(&format!("SHOW {name}"), &[])?.get(0);
                settings.push((name.to_string(), value));
            }
            Ok(settings)
        })
    }
}

/// The benchmark's best case on PostgreSQL: one connection, one transaction per chunk.
pub fn raw_load(
    url: &str,
    privacy: &Privacy,
    chunks: &mut dyn Iterator<Item = Vec<TrackingMessage>>,
) -> Result<std::time::Duration, StoreError> {
    let mut client = connect(url)?;
    migrate(&mut client)?;
    let mut statements = Statements::default();
    let mut loaded = super::RawLoaded::default();
    let mut spent = std::time::Duration::ZERO;
    for chunk in chunks {
        let encoded: Vec<EncodedEvent> = chunk.iter().map(|m| EncodedEvent::of(m, privacy)).collect();
        let changes = super::raw_changes(&chunk, &encoded, &mut loaded, privacy);
        let started = std::time::Instant::now();
        let mut tx = client.transaction()?;
        PgTx::new(&mut tx, &mut statements, None).write(&changes)?;
        tx.commit()?;
        spent += started.elapsed();
    }
    Ok(spent)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs only when tests have a PostgreSQL server (`RELAIS_TEST_DATABASE_URL`).
    #[test]
    fn a_transaction_opened_ahead_is_closed_once_it_waits_unused() {
        let Some(url) = crate::store::scratch::test_database_url() else { return };
        // A plain thread: the blocking client runs a runtime of its own.
        std::thread::spawn(move || {
            let pool_url = url.clone();
            let pool = Arc::new(Pool::new(1, move || connect(&pool_url).map(PgConn::new)));
            close_idle_transactions(Arc::downgrade(&pool)).expect("closing thread");
            let pid: i32 = pool
                .with(|conn| {
                    conn.open_transaction()?;
                    let pid = conn.client.query_one("SELECT pg_backend_pid()", &[])?.get(0);
                    conn.commit(true)?;
                    Ok(pid)
                })
                .expect("a transaction");
            let mut other = connect(&url).expect("connect");
            let started = std::time::Instant::now();
            loop {
                let state: String = other
                    .query_one("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
                    .expect("state")
                    .get(0);
                if state == "idle" {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(10), "still {state} after {:?}", started.elapsed());
                std::thread::sleep(Duration::from_millis(20));
            }
            // The same connection still serves.
            let again: i32 = pool
                .with(|conn| {
                    let (client, _) = conn.open_transaction()?;
                    let pid = client.query_one("SELECT pg_backend_pid()", &[])?.get(0);
                    conn.commit(false)?;
                    Ok(pid)
                })
                .expect("another transaction");
            assert_eq!(again, pid);
            drop(pool);
        })
        .join()
        .expect("test thread");
    }

    /// Runs only when tests have a PostgreSQL server (`RELAIS_TEST_DATABASE_URL`).
    #[test]
    fn a_grouped_transaction_that_fails_leaves_nothing_and_its_connection_serves_on() {
        let Some(url) = crate::store::scratch::test_database_url() else { return };
        std::thread::spawn(move || {
            let scratch = super::super::scratch::Scratch::new(Some(&url), "failed_group").expect("scratch");
            let super::super::Location::Postgres(scoped) = &scratch.location else {
                unreachable!("a PostgreSQL scratch")
            };
            let classes = relais_domain::privacy::Classification::default();
            let engine = PgEngine::open(scoped, IngestSettings::default(), &scratch.master, classes).expect("engine");
            let write = |path: &'static str, outcome: Result<(), StoreError>| {
                engine.in_transaction(None, Plans::Generic, |tx| {
                    tx.execute("INSERT INTO unclassified_fields (path, first_seen) VALUES ($1, now())", &[&path])?;
                    outcome.clone()
                })
            };
            // Refused after a write, then a lost race (retried, lost each time).
            let (refused, at_commit) = write("refused", Err(StoreError::NotFound));
            assert!(matches!(refused, Err(StoreError::NotFound)) && !at_commit, "{refused:?}");
            let (raced, at_commit) = write("raced", Err(StoreError::Race));
            assert!(matches!(raced, Err(StoreError::Race)) && !at_commit, "{raced:?}");
            // The connections were kept: had one stayed inside its transaction,
            // this commit would take the refused writes with it.
            let (kept, _) = write("kept", Ok(()));
            kept.expect("a transaction that commits");
            let paths: Vec<String> = engine
                .pool
                .with(|conn| Ok(conn.query("SELECT path FROM unclassified_fields ORDER BY path", &[])?))
                .expect("paths")
                .iter()
                .map(|row| row.get(0))
                .collect();
            assert_eq!(paths, vec!["kept".to_string()]);
            drop(engine);
            drop(scratch);
        })
        .join()
        .expect("test thread");
    }
}
