//! Prepared statements kept per connection. Running SQL given as text makes the
//! driver prepare an unnamed statement first: one more round trip, and the
//! server parses and analyses the text again, for every statement. The hot
//! paths (ingest, the loyalty ledger, authentication, the customer reads) run
//! their SQL through `Sql` on a `PgConn`'s cache instead: each text is
//! prepared once per connection, as a named statement (session-level, so it
//! outlives the transaction it was prepared in), and run by reference after.
//!
//! A statement belongs to the connection that prepared it: the cache lives in
//! `PgConn` beside its client and is dropped with it (the pool drops a
//! connection whose work failed with a database error).

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use postgres::types::ToSql;
use postgres::{Client, GenericClient, Row, Statement, Transaction};

/// Most statements one connection keeps prepared. Texts are constants or built
/// from constants, so the set is small and fixed; past the limit the cache
/// starts over rather than grow (a guard, not an expected case).
const MAX_STATEMENTS: usize = 512;

/// Prepared statements of one connection, by SQL text.
#[derive(Default)]
pub(super) struct Statements {
    prepared: HashMap<String, Statement>,
}

impl Statements {
    /// The statement for `sql`, prepared on `client` the first time. `client`
    /// must be (a transaction of) the connection this cache belongs to.
    fn get(&mut self, client: &mut impl GenericClient, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = client.prepare(sql)?;
        if self.prepared.len() >= MAX_STATEMENTS {
            self.prepared.clear();
        }
        self.prepared.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// A pooled connection: the client and its prepared statements.
pub(super) struct PgConn {
    pub(super) client: Client,
    pub(super) statements: Statements,
    /// Since when the connection has been inside a transaction that has run
    /// nothing yet, opened by `commit`'s `reopen`.
    opened_ahead: Option<Instant>,
}

impl PgConn {
    pub(super) fn new(client: Client) -> PgConn {
        PgConn { client, statements: Statements::default(), opened_ahead: None }
    }

    /// Inside a transaction, with the statement cache to run its SQL through
    /// (`PgTx::open`): the one a `commit` opened ahead, or a new one (a
    /// round trip). Every path out of the transaction goes through `commit`
    /// or `roll_back`; a caller that panics drops the connection (`Pool::with`).
    pub(super) fn open_transaction(&mut self) -> Result<(&mut Client, &mut Statements), postgres::Error> {
        if self.opened_ahead.take().is_none() {
            self.client.batch_execute("BEGIN")?;
        }
        Ok((&mut self.client, &mut self.statements))
    }

    /// Commit the open transaction; with `reopen`, open the next one in the
    /// same round trip (one message of two statements: a failed `COMMIT`
    /// ends the transaction and skips the `BEGIN`).
    ///
    /// A transaction opened ahead holds no snapshot, no transaction id and
    /// no lock (`BEGIN` takes none of them under read committed), so it
    /// costs the server nothing while it waits. Its `now()` is the time it
    /// was opened, possibly before a request it will serve was sent, so the
    /// statements it runs stamp rows with `statement_timestamp()` instead.
    pub(super) fn commit(&mut self, reopen: bool) -> Result<(), postgres::Error> {
        self.client.batch_execute(if reopen { "COMMIT; BEGIN" } else { "COMMIT" })?;
        self.opened_ahead = reopen.then(Instant::now);
        Ok(())
    }

    /// Roll the open transaction back.
    pub(super) fn roll_back(&mut self) -> Result<(), postgres::Error> {
        self.client.batch_execute("ROLLBACK")
    }

    /// Whether a transaction opened ahead has waited `longer_than` unused.
    pub(super) fn idle_ahead(&self, longer_than: Duration) -> bool {
        self.opened_ahead.is_some_and(|since| since.elapsed() > longer_than)
    }

    /// Close a transaction opened ahead, so that no connection shows as idle
    /// in a transaction (monitoring, `idle_in_transaction_session_timeout`)
    /// once traffic stops.
    pub(super) fn commit_if_idle(&mut self) -> Result<(), postgres::Error> {
        if self.opened_ahead.take().is_some() {
            self.client.batch_execute("COMMIT")?;
        }
        Ok(())
    }

    /// A transaction, with the statement cache to run its SQL through (`PgTx`).
    pub(super) fn begin(&mut self) -> Result<(Transaction<'_>, &mut Statements), postgres::Error> {
        Ok((self.client.transaction()?, &mut self.statements))
    }

    /// The connection running its SQL through its statement cache.
    pub(super) fn cached(&mut self) -> Cached<'_, Client> {
        Cached { client: &mut self.client, statements: &mut self.statements }
    }
}

// Cold paths (migrations, reports, administration) use the client as before.
impl Deref for PgConn {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// A client or transaction with its connection's statement cache.
pub(super) struct Cached<'a, C> {
    pub(super) client: &'a mut C,
    pub(super) statements: &'a mut Statements,
}

/// Runs SQL given as text: through the statement cache (`Cached`, `PgTx`), or
/// as the driver does (`Client`, `Transaction`: the cold paths, unchanged).
/// Errors are the driver's, so callers map them to `StoreError` as before.
pub(super) trait Sql {
    fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, postgres::Error>;
    fn query_one(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, postgres::Error>;
    fn query_opt(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, postgres::Error>;
    fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, postgres::Error>;
}

impl<C: GenericClient> Sql for Cached<'_, C> {
    fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, postgres::Error> {
        let statement = self.statements.get(self.client, sql)?;
        self.client.query(&statement, params)
    }

    fn query_one(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, postgres::Error> {
        let statement = self.statements.get(self.client, sql)?;
        self.client.query_one(&statement, params)
    }

    fn query_opt(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, postgres::Error> {
        let statement = self.statements.get(self.client, sql)?;
        self.client.query_opt(&statement, params)
    }

    fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, postgres::Error> {
        let statement = self.statements.get(self.client, sql)?;
        self.client.execute(&statement, params)
    }
}

impl Sql for Client {
    fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, postgres::Error> {
        Client::query(self, sql, params)
    }

    fn query_one(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, postgres::Error> {
        Client::query_one(self, sql, params)
    }

    fn query_opt(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, postgres::Error> {
        Client::query_opt(self, sql, params)
    }

    fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, postgres::Error> {
        Client::execute(self, sql, params)
    }
}

impl Sql for Transaction<'_> {
    fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, postgres::Error> {
        Transaction::query(self, sql, params)
    }

    fn query_one(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, postgres::Error> {
        Transaction::query_one(self, sql, params)
    }

    fn query_opt(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, postgres::Error> {
        Transaction::query_opt(self, sql, params)
    }

    fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, postgres::Error> {
        Transaction::execute(self, sql, params)
    }
}

/// Writes sent as one statement, the first ones as data-modifying `WITH`
/// parts: one round trip instead of one each. Every part sees the snapshot
/// from before the statement, so parts must not touch the same rows.
#[derive(Default)]
pub(super) struct OneTrip<'p> {
    parts: Vec<String>,
    /// The parameters of every part, in order.
    pub(super) params: Vec<&'p (dyn postgres::types::ToSql + Sync)>,
}

impl<'p> OneTrip<'p> {
    /// Add a statement whose parameters are numbered from `$1`.
    pub(super) fn add(&mut self, sql: &str, params: &[&'p (dyn postgres::types::ToSql + Sync)]) {
        self.parts.push(renumber(sql, self.params.len()));
        self.params.extend_from_slice(params);
    }

    /// The statement, if there is anything to write.
    pub(super) fn sql(&self) -> Option<String> {
        let (last, first) = self.parts.split_last()?;
        let mut sql = String::new();
        for (i, part) in first.iter().enumerate() {
            sql.push_str(if i == 0 { "WITH " } else { ", " });
            sql.push_str(&format!("w{i} AS ({part})"));
        }
        if !first.is_empty() {
            sql.push(' ');
        }
        sql.push_str(last);
        Some(sql)
    }
}

/// `sql` with every parameter `$n` turned into `$(n + offset)`.
fn renumber(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '$' {
            let mut digits = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(*d);
                chars.next();
            }
            match digits.parse::<usize>() {
                Ok(n) => out.push_str(&(n + offset).to_string()),
                Err(_) => out.push_str(&digits),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use postgres::error::SqlState;

    use super::*;

    /// Runs only when tests have a PostgreSQL server (`RELAIS_TEST_DATABASE_URL`).
    #[test]
    fn statements_outlive_a_rolled_back_transaction_and_failures_keep_their_error() {
        let Some(url) = crate::store::scratch::test_database_url() else { return };
        // A plain thread: the blocking client runs a runtime of its own.
        std::thread::spawn(move || {
            let mut conn = PgConn::new(Client::connect(&url, postgres::NoTls).expect("connect"));
            conn.batch_execute("CREATE TEMP TABLE cache_probe (id int PRIMARY KEY)").expect("temp table");
            let insert = "INSERT INTO cache_probe (id) VALUES ($1)";
            {
                let (mut tx, statements) = conn.begin().expect("begin");
                let mut cached = Cached { client: &mut tx, statements };
                assert_eq!(cached.execute(insert, &[&1]).expect("first insert"), 1);
                // A failing statement surfaces the server's error (a race, for the engine).
                let error = cached.execute(insert, &[&1]).expect_err("duplicate key");
                assert_eq!(error.code(), Some(&SqlState::UNIQUE_VIOLATION));
                // Dropped without commit: rolled back.
            }
            assert_eq!(conn.statements.prepared.len(), 1);
            // The statement prepared in the rolled-back transaction still runs.
            let mut cached = conn.cached();
            assert_eq!(cached.execute(insert, &[&1]).expect("insert after rollback"), 1);
            let count: i64 = cached.query_one("SELECT count(*) FROM cache_probe", &[]).expect("count").get(0);
            assert_eq!(count, 1);
            assert!(cached.query_opt("SELECT id FROM cache_probe WHERE id = $1", &[&2]).expect("none").is_none());
            assert_eq!(conn.statements.prepared.len(), 3);
        })
        .join()
        .expect("test thread");
    }

    /// Runs only when tests have a PostgreSQL server (`RELAIS_TEST_DATABASE_URL`).
    #[test]
    fn a_commit_opens_the_next_transaction_ahead_unless_it_fails() {
        let Some(url) = crate::store::scratch::test_database_url() else { return };
        std::thread::spawn(move || {
            let mut conn = PgConn::new(Client::connect(&url, postgres::NoTls).expect("connect"));
            let mut other = Client::connect(&url, postgres::NoTls).expect("connect");
            let table = format!("opened_ahead_{}", ulid::Ulid::new().to_string().to_lowercase());
            // Deferred, so that a duplicate fails at the commit.
            conn.batch_execute(&format!(
                "CREATE TABLE {table} (id int, CONSTRAINT {table}_id UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)"
            ))
            .expect("table");
            let pid: i32 = conn.query_one("SELECT pg_backend_pid()", &[]).expect("pid").get(0);
            let state = |other: &mut Client| -> String {
                other.query_one("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid]).expect("state").get(0)
            };
            let count = |other: &mut Client, id: i32| -> i64 {
                let sql = format!("SELECT count(*) FROM {table} WHERE id = $1");
                other.query_one(&sql, &[&id]).expect("count").get(0)
            };
            let insert = format!("INSERT INTO {table} (id) VALUES ($1)");
            let write = |conn: &mut PgConn, id: i32| {
                let (client, statements) = conn.open_transaction().expect("transaction");
                Cached { client, statements }.execute(&insert, &[&id]).expect("insert");
            };

            // Committed, and the next transaction waits open.
            write(&mut conn, 1);
            conn.commit(true).expect("commit");
            assert_eq!(count(&mut other, 1), 1);
            assert_eq!(state(&mut other), "idle in transaction");
            assert!(conn.idle_ahead(Duration::ZERO));
            // The next write takes it; rolled back, nothing stays.
            write(&mut conn, 2);
            assert!(!conn.idle_ahead(Duration::ZERO));
            conn.roll_back().expect("rollback");
            assert_eq!(count(&mut other, 2), 0);
            assert_eq!(state(&mut other), "idle");
            // A commit that fails ends its transaction and opens none: the
            // next statement outside one is committed on its own.
            write(&mut conn, 1);
            let error = conn.commit(true).expect_err("a duplicate found at the commit");
            assert_eq!(error.code(), Some(&SqlState::UNIQUE_VIOLATION));
            assert!(!conn.idle_ahead(Duration::ZERO));
            assert_eq!(count(&mut other, 1), 1);
            conn.execute(&insert, &[&3]).expect("insert outside a transaction");
            assert_eq!(count(&mut other, 3), 1);
            // A transaction opened ahead and left unused is closed on demand.
            write(&mut conn, 4);
            conn.commit(true).expect("commit");
            conn.commit_if_idle().expect("close");
            assert_eq!(state(&mut other), "idle");
            assert_eq!(count(&mut other, 4), 1);
            other.batch_execute(&format!("DROP TABLE {table}")).expect("drop");
        })
        .join()
        .expect("test thread");
    }

    #[test]
    fn statements_sent_together_keep_their_own_parameters() {
        assert_eq!(renumber("SELECT $1, $2::text[], $10", 3), "SELECT $4, $5::text[], $13");
        let (a, b, c) = (1_i64, 2_i64, 3_i64);
        let mut trip = OneTrip::default();
        assert_eq!(trip.sql(), None, "nothing to write, no statement");
        trip.add("INSERT INTO x VALUES ($1)", &[&a]);
        assert_eq!(trip.sql().as_deref(), Some("INSERT INTO x VALUES ($1)"));
        trip.add("UPDATE y SET v = $2 WHERE k = $1", &[&b, &c]);
        trip.add("INSERT INTO z VALUES ($1)", &[&a]);
        assert_eq!(
            trip.sql().as_deref(),
            Some(
                "WITH w0 AS (INSERT INTO x VALUES ($1)), w1 AS (UPDATE y SET v = $3 WHERE k = $2) \
                 INSERT INTO z VALUES ($4)"
            )
        );
        assert_eq!(trip.params.len(), 4);
    }
}
