//! The loyalty ledger on PostgreSQL: the `LedgerTx` primitives and the reads.
//! Several server processes write at once, so every step locks the
//! membership rows it changes (`FOR UPDATE`, in member id order) before it
//! reads balances or lots.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use postgres::GenericClient;
use relais_domain::loyalty::tiers::Measure;
use relais_domain::loyalty::{Lot, Points, Programme, Reason};
use relais_domain::{CustomerId, Identifier, MemberId};

use super::statements::OneTrip;
use super::{parse_id, PgTx, Sql};
use crate::store::loyalty::{
    CouponRow, LedgerCheck, LedgerTx, LedgerWrite, ManualOperation, MemberRow, MemberStatus, OrderHistory, Recipient,
    RedemptionRow, RedemptionStatus, ReportRows, StatementEntry, StoredAnswer,
};
use crate::store::seal::{self, Privacy, StoredValue};
use crate::store::StoreError;

const MEMBER_COLUMNS: &str = "m.customer_id, m.member_id, m.programme_key, m.card_token, m.balance, m.status, \
     m.merged_into, m.enrolled_at, m.tier, m.tier_since, m.downgrade_on";

/// The profiles `$1` (roots) stand for: themselves and those merged into them,
/// each with its root, found by two index probes. With one condition
/// `customer_id = ANY($1) OR merged_into = ANY($1)` on a join, the generic plan
/// walked every membership and filtered each profile (0.58 ms an earn with
/// 2,000 members; 0.13 ms this way).
const FAMILY_OF_ROOTS: &str = "WITH family (customer_id, root) AS ( \
    SELECT customer_id, COALESCE(merged_into, customer_id) FROM customers WHERE customer_id = ANY($1) \
    UNION SELECT customer_id, merged_into FROM customers WHERE merged_into = ANY($1))";

/// The active memberships of `family` (see `FAMILY_OF_ROOTS`) with their
/// roots, under `condition` too, locked in member id order so that two writers
/// touching the same members cannot deadlock.
fn lock_family_members(condition: &str) -> String {
    format!(
        "SELECT {MEMBER_COLUMNS}, family.root FROM family JOIN loyalty_members m ON m.customer_id = family.customer_id \
         WHERE m.status = 'active'{condition} ORDER BY m.member_id FOR UPDATE OF m"
    )
}

/// Whether `keys` holds no key twice.
fn unique<K: Ord>(keys: impl Iterator<Item = K>) -> bool {
    let mut seen = std::collections::BTreeSet::new();
    keys.into_iter().all(|k| seen.insert(k))
}

/// A row of `lock_family_members`: the root, then the membership.
fn family_row(r: &postgres::Row) -> Result<(CustomerId, MemberRow), StoreError> {
    family_row_at(r, 0)
}

/// `family_row` from column `first` on.
fn family_row_at(r: &postgres::Row, first: usize) -> Result<(CustomerId, MemberRow), StoreError> {
    Ok((parse_id(r.get::<_, &str>(first + 11))?, to_member_at(r, first)?))
}

fn to_member(r: &postgres::Row) -> Result<MemberRow, StoreError> {
    to_member_at(r, 0)
}

/// `MEMBER_COLUMNS` from column `first` on.
fn to_member_at(r: &postgres::Row, first: usize) -> Result<MemberRow, StoreError> {
    Ok(MemberRow {
        customer: parse_id(r.get::<_, &str>(first))?,
        member: parse_id(r.get::<_, &str>(first + 1))?,
        programme: r.get(first + 2),
        card_token: r.get(first + 3),
        balance: r.get(first + 4),
        status: MemberStatus::parse(r.get::<_, &str>(first + 5))?,
        merged_into: r.get::<_, Option<&str>>(first + 6).map(parse_id).transpose()?,
        enrolled_at: r.get(first + 7),
        tier: r.get(first + 8),
        tier_since: r.get(first + 9),
        downgrade_on: r.get(first + 10),
    })
}

/// The statement of `family_and_revision`: the memberships, locked, as
/// `lock_family_members` columns after the columns `lead`, then the
/// programmes' revision; one row even when no membership matches (the outer
/// join). Its roots are `$roots`.
fn family_and_revision_sql(lead: &str, roots: usize) -> String {
    format!(
        "{}, locked AS ({}) \
         SELECT {lead}locked.*, (SELECT COALESCE(MAX(revision), 0)::bigint FROM loyalty_programmes) \
         FROM (SELECT 1) AS one LEFT JOIN locked ON true",
        FAMILY_OF_ROOTS.replace("$1", &format!("${roots}")),
        lock_family_members(" AND EXISTS (SELECT 1 FROM loyalty_programmes)")
    )
}

/// The rows of `family_and_revision_sql`: the memberships found and the revision.
fn families_of_rows<'r>(
    rows: impl IntoIterator<Item = &'r postgres::Row>,
    first: usize,
) -> Result<(Vec<(CustomerId, MemberRow)>, i64), StoreError> {
    let mut revision = 0;
    let mut members = Vec::new();
    for row in rows {
        revision = row.get::<_, i64>(first + 12);
        if row.get::<_, Option<&str>>(first + 1).is_some() {
            members.push(family_row_at(row, first)?);
        }
    }
    members.sort_by_key(|(_, m)| m.member);
    Ok((members, revision))
}

/// The memberships of a batch's profiles, locked when their owners were read
/// again (`PgTx::owners_exclusives_and_families`), for `family_and_revision`.
pub(super) struct PrefetchedFamilies {
    roots: std::collections::BTreeSet<CustomerId>,
    members: Vec<(CustomerId, MemberRow)>,
    revision: i64,
}

/// Programmes stored as JSON definitions.
pub(super) fn load_programmes(client: &mut impl Sql) -> Result<Vec<Programme>, StoreError> {
    client
        .query("SELECT definition FROM loyalty_programmes ORDER BY programme_key", &[])?
        .iter()
        .map(|r| {
            serde_json::from_str(r.get::<_, &str>(0))
                .map_err(|e| StoreError::Database(format!("bad stored programme: {e}")))
        })
        .collect()
}

/// Store a checked programme (the caller holds the table's lock).
pub(super) fn save_programme(client: &mut impl GenericClient, programme: &Programme) -> Result<i64, StoreError> {
    let definition = serde_json::to_string(programme).map_err(|e| StoreError::Database(e.to_string()))?;
    let revision: i64 = client.query_one("SELECT COALESCE(MAX(revision), 0) + 1 FROM loyalty_programmes", &[])?.get(0);
    client.execute(
        "INSERT INTO loyalty_programmes (programme_key, definition, revision, updated_at) VALUES ($1, $2, $3, now()) \
         ON CONFLICT (programme_key) DO UPDATE SET definition = excluded.definition, revision = excluded.revision, \
         updated_at = excluded.updated_at",
        &[&programme.head.key, &definition, &revision],
    )?;
    Ok(revision)
}

/// What a group of manual operations read before its first operation, in two
/// round trips instead of two per operation: the memberships, locked in
/// member id order, and for the first request on each membership its stored
/// answer and, for a debit, the open lots. Each row serves the first read of
/// its membership only and is dropped as soon as a ledger write touches its
/// customer, so no read ever sees a state from before this transaction's own
/// writes. For an ingest batch, the memberships its earning will lock
/// (`families`), dropped by any ledger write and by the batch's merges.
#[derive(Default)]
pub(super) struct Prefetched {
    members: HashMap<MemberId, MemberRow>,
    answers: HashMap<MemberId, PrefetchedAnswer>,
    /// Taken by the first `family_and_revision` whose roots it covers.
    pub(super) families: Option<PrefetchedFamilies>,
}

/// The stored answer and open lots read ahead for one request.
struct PrefetchedAnswer {
    customer: CustomerId,
    scope: String,
    key: String,
    answer: Option<StoredAnswer>,
    /// Read for a debit only (as `answer_and_lots` does).
    lots: Option<Vec<Lot>>,
}

impl Prefetched {
    /// Forget what `write` may have changed.
    fn forget_written(&mut self, write: &LedgerWrite) {
        self.families = None;
        if self.members.is_empty() && self.answers.is_empty() {
            return;
        }
        let touched = touched_customers(write);
        self.members.retain(|_, m| !touched.contains(&m.customer));
        self.answers.retain(|_, a| !touched.contains(&a.customer));
    }
}

/// The customers whose rows `write` inserts or updates (as `LedgerRows` and
/// the reads it may make stale count them).
fn touched_customers(write: &LedgerWrite) -> std::collections::BTreeSet<CustomerId> {
    let mut touched = std::collections::BTreeSet::new();
    touched.extend(write.transactions.iter().flat_map(|t| t.legs.iter().map(|l| l.customer)));
    touched.extend(write.member_updates.iter().chain(&write.new_members).map(|m| m.customer));
    touched.extend(write.new_lots.iter().map(|l| l.customer));
    touched.extend(write.lot_updates.iter().chain(&write.lot_restores).map(|(c, _, _)| *c));
    touched.extend(write.answer.iter().map(|(c, _, _, _)| *c));
    touched
}

impl PgTx<'_, '_> {
    /// The statement `reads` (rows of four columns, the first an `int`,
    /// with parameters `$1` and `$2`) with the memberships of `roots` (`$3`)
    /// locked as `family_and_revision` would, in one round trip; the
    /// memberships are kept for it (`Prefetched::families`). The rows of
    /// `reads` come back; the memberships' rows are not among them.
    pub(super) fn reads_and_families(
        &mut self,
        reads: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
        roots: &[CustomerId],
    ) -> Result<Vec<postgres::Row>, StoreError> {
        // The memberships' rows come first, marked -1 in the first column and
        // with NULLs for the other three columns of the reads, which are padded
        // with NULLs for the memberships' columns (11, the root, the revision).
        const READ_COLUMNS: usize = 4;
        let padding = ", NULL".repeat(13);
        let sql = format!(
            "{} UNION ALL SELECT r.*{padding} FROM ({reads}) AS r",
            family_and_revision_sql("-1, NULL, NULL, NULL, ", 3)
        );
        let rows = self.query(&sql, params)?;
        let (families, reads): (Vec<postgres::Row>, Vec<postgres::Row>) =
            rows.into_iter().partition(|r| r.get::<_, Option<i32>>(0) == Some(-1));
        let (members, revision) = families_of_rows(&families, READ_COLUMNS)?;
        self.prefetched.families =
            Some(PrefetchedFamilies { roots: roots.iter().copied().collect(), members, revision });
        Ok(reads)
    }

    /// Read ahead what `requests` (operated next, in order, in this
    /// transaction) will read first: see `Prefetched`.
    pub(super) fn prefetch_operations(&mut self, requests: &[ManualOperation]) -> Result<(), StoreError> {
        let mut ids: Vec<String> = requests.iter().map(|r| r.member.to_string()).collect();
        ids.sort_unstable();
        ids.dedup();
        let members: HashMap<MemberId, MemberRow> = self
            .query(
                &format!(
                    "SELECT {MEMBER_COLUMNS} FROM loyalty_members m WHERE m.member_id = ANY($1) \
                     ORDER BY m.member_id FOR UPDATE"
                ),
                &[&ids],
            )?
            .iter()
            .map(|r| to_member(r).map(|m| (m.member, m)))
            .collect::<Result<_, StoreError>>()?;
        // The first request on each membership that is not merged away (a
        // merged one reads its survivor, found only by following the chain).
        let mut answers: HashMap<MemberId, PrefetchedAnswer> = HashMap::new();
        for request in requests {
            let Some(row) = members.get(&request.member).filter(|m| m.status != MemberStatus::Merged) else {
                continue;
            };
            let debits = request.reward.is_some() || request.points < 0;
            answers.entry(row.member).or_insert_with(|| PrefetchedAnswer {
                customer: row.customer,
                scope: request.scope.clone(),
                key: request.key.clone(),
                answer: None,
                lots: debits.then(Vec::new),
            });
        }
        if !answers.is_empty() {
            let customers: Vec<String> = answers.values().map(|a| a.customer.to_string()).collect();
            let scopes: Vec<&str> = answers.values().map(|a| a.scope.as_str()).collect();
            let keys: Vec<&str> = answers.values().map(|a| a.key.as_str()).collect();
            let debitors: Vec<String> =
                answers.iter().filter(|(_, a)| a.lots.is_some()).map(|(m, _)| m.to_string()).collect();
            // Part 0 the stored answers, part 1 the open lots (as in
            // `answer_and_lots`). The answers are matched on exact triples (as
            // three sets, the index would be probed for every combination);
            // the `= ANY` lets the generic plan probe the key index. A
            // membership belongs to one customer, so its lots match exactly.
            let rows = self.query(
                "SELECT 0, i.customer_id, i.scope, i.idem_key, i.request_hash, i.status::bigint, NULL::date, \
                 i.response FROM loyalty_idempotency i \
                 JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(customer_id, scope, idem_key) \
                 ON i.customer_id = k.customer_id AND i.scope = k.scope AND i.idem_key = k.idem_key \
                 WHERE i.customer_id = ANY($1) \
                 UNION ALL SELECT 1, customer_id, member_id, NULL, lot_id, remaining, expires_on, NULL FROM loyalty_lots \
                 WHERE customer_id = ANY($1) AND member_id = ANY($4) AND remaining > 0",
                &[&customers, &scopes, &keys, &debitors],
            )?;
            let by_key: HashMap<(CustomerId, &str, &str), MemberId> =
                answers.iter().map(|(m, a)| ((a.customer, a.scope.as_str(), a.key.as_str()), *m)).collect();
            let mut found_answers = Vec::new();
            let mut found_lots: Vec<(MemberId, Lot)> = Vec::new();
            for r in &rows {
                let customer = parse_id(r.get::<_, &str>(1))?;
                if r.get::<_, i32>(0) == 0 {
                    if let Some(member) = by_key.get(&(customer, r.get::<_, &str>(2), r.get::<_, &str>(3))) {
                        let status = r.get::<_, i64>(5) as u16;
                        found_answers.push((*member, StoredAnswer { request_hash: r.get(4), status, body: r.get(7) }));
                    }
                } else {
                    found_lots.push((parse_id(r.get::<_, &str>(2))?, lot_at(r, 4)));
                }
            }
            for (member, answer) in found_answers {
                if let Some(asked) = answers.get_mut(&member) {
                    asked.answer = Some(answer);
                }
            }
            for (member, lot) in found_lots {
                if let Some(lots) = answers.get_mut(&member).and_then(|a| a.lots.as_mut()) {
                    lots.push(lot);
                }
            }
        }
        self.prefetched = Prefetched { members, answers, families: None };
        Ok(())
    }
}

impl LedgerTx for PgTx<'_, '_> {
    fn programmes_revision(&mut self) -> Result<i64, StoreError> {
        Ok(self.query_one("SELECT COALESCE(MAX(revision), 0)::bigint FROM loyalty_programmes", &[])?.get(0))
    }

    fn load_programmes(&mut self) -> Result<Vec<Programme>, StoreError> {
        load_programmes(self)
    }

    fn family_members(&mut self, roots: &[CustomerId]) -> Result<Vec<(CustomerId, MemberRow)>, StoreError> {
        if roots.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = roots.iter().map(ToString::to_string).collect();
        let rows = self.query(&format!("{FAMILY_OF_ROOTS} {}", lock_family_members("")), &[&ids])?;
        rows.iter().map(family_row).collect()
    }

    fn family_and_revision(&mut self, roots: &[CustomerId]) -> Result<(Vec<(CustomerId, MemberRow)>, i64), StoreError> {
        if let Some(families) = self.prefetched.families.take_if(|f| roots.iter().all(|r| f.roots.contains(r))) {
            let asked: std::collections::BTreeSet<&CustomerId> = roots.iter().collect();
            let members = families.members.into_iter().filter(|(root, _)| asked.contains(root)).collect();
            return Ok((members, families.revision));
        }
        let ids: Vec<String> = roots.iter().map(ToString::to_string).collect();
        // The locking part runs as in `family_members` (not at all without a
        // programme). Nothing it reads is in the rows a batch holds back
        // (those never change `merged_into`), so they can wait for the
        // ledger's write.
        let rows = self.query_leaving_rows(&family_and_revision_sql("", 1), &[&ids])?;
        families_of_rows(&rows, 0)
    }

    fn member(&mut self, id: MemberId) -> Result<Option<MemberRow>, StoreError> {
        if let Some(row) = self.prefetched.members.remove(&id) {
            return Ok(Some(row));
        }
        self.query_opt(
            &format!("SELECT {MEMBER_COLUMNS} FROM loyalty_members m WHERE m.member_id = $1 FOR UPDATE"),
            &[&id.to_string()],
        )?
        .as_ref()
        .map(to_member)
        .transpose()
    }

    fn cap_used(
        &mut self,
        member: &MemberRow,
        rule: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Points, StoreError> {
        // Ledger entries only: a batch's rows held back can wait (ledger rows held
        // back are sent first).
        let rows = self.query_leaving_rows(
            "SELECT COALESCE(SUM(points), 0)::bigint FROM loyalty_entries WHERE customer_id = $1 AND member_id = $2 \
             AND rule = $3 AND day BETWEEN $4 AND $5 AND leg = 0",
            &[&member.customer.to_string(), &member.member.to_string(), &rule, &from, &to],
        )?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }

    fn rules_paid(&mut self, member: &MemberRow, kind: &str) -> Result<Vec<String>, StoreError> {
        // Ledger entries only: a batch's rows held back can wait (ledger rows held
        // back are sent first).
        Ok(self
            .query_leaving_rows(
                "SELECT DISTINCT rule FROM loyalty_entries WHERE customer_id = $1 AND member_id = $2 AND kind = $3 \
                 AND leg = 0 AND rule IS NOT NULL",
                &[&member.customer.to_string(), &member.member.to_string(), &kind],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn order_history(&mut self, member: &MemberRow, order_id: &str) -> Result<OrderHistory, StoreError> {
        let rows = self
            .query(
                "SELECT kind, points, basis_minor FROM loyalty_entries WHERE customer_id = $1 AND member_id = $2 \
                 AND order_id = $3 AND leg = 0",
                &[&member.customer.to_string(), &member.member.to_string(), &order_id],
            )?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1), r.get::<_, Option<i64>>(2)))
            .collect();
        Ok(crate::store::loyalty::order_history_of(rows))
    }

    fn open_lots(&mut self, member: &MemberRow) -> Result<Vec<Lot>, StoreError> {
        open_lots(self, member)
    }

    fn lots_by_id(&mut self, member: &MemberRow, ids: &[String]) -> Result<Vec<Lot>, StoreError> {
        Ok(self
            .query(
                "SELECT lot_id, remaining, expires_on FROM loyalty_lots WHERE customer_id = $1 AND member_id = $2 \
                 AND lot_id = ANY($3)",
                &[&member.customer.to_string(), &member.member.to_string(), &ids],
            )?
            .iter()
            .map(|r| lot_at(r, 0))
            .collect())
    }

    fn tier_value(
        &mut self,
        member: &MemberRow,
        measure: Measure,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<i64, StoreError> {
        Ok(self
            .query_one(
                &format!(
                    "SELECT COALESCE({}, 0)::bigint FROM loyalty_entries WHERE customer_id = $1 AND member_id = $2 \
                     AND account = 'member' AND day BETWEEN $3 AND $4",
                    crate::store::loyalty::tier_measure_sql(measure)
                ),
                &[&member.customer.to_string(), &member.member.to_string(), &from, &to],
            )?
            .get(0))
    }

    fn idempotent_answer(
        &mut self,
        customer: CustomerId,
        scope: &str,
        key: &str,
    ) -> Result<Option<StoredAnswer>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT request_hash, status, response FROM loyalty_idempotency WHERE customer_id = $1 AND scope = $2 \
                 AND idem_key = $3",
                &[&customer.to_string(), &scope, &key],
            )?
            .map(|r| StoredAnswer { request_hash: r.get(0), status: r.get::<_, i32>(1) as u16, body: r.get(2) }))
    }

    fn answer_and_lots(
        &mut self,
        member: &MemberRow,
        scope: &str,
        key: &str,
        debits: bool,
    ) -> Result<(Option<StoredAnswer>, Option<Vec<Lot>>), StoreError> {
        if let Some(ahead) = self.prefetched.answers.remove(&member.member) {
            if ahead.customer == member.customer
                && ahead.scope == scope
                && ahead.key == key
                && ahead.lots.is_some() == debits
            {
                return Ok((ahead.answer, ahead.lots));
            }
        }
        if !debits {
            return Ok((self.idempotent_answer(member.customer, scope, key)?, None));
        }
        // Part 0 is the stored answer (at most one row), part 1 the open lots
        // (columns 1 to 3, as `open_lots` reads them from 0).
        let rows = self.query(
            "SELECT 0, request_hash, status::bigint, NULL::date, response FROM loyalty_idempotency \
             WHERE customer_id = $1 AND scope = $3 AND idem_key = $4 \
             UNION ALL SELECT 1, lot_id, remaining, expires_on, NULL FROM loyalty_lots \
             WHERE customer_id = $1 AND member_id = $2 AND remaining > 0",
            &[&member.customer.to_string(), &member.member.to_string(), &scope, &key],
        )?;
        let mut answer = None;
        let mut lots = Vec::new();
        for r in &rows {
            if r.get::<_, i32>(0) == 0 {
                answer =
                    Some(StoredAnswer { request_hash: r.get(1), status: r.get::<_, i64>(2) as u16, body: r.get(4) });
            } else {
                lots.push(lot_at(r, 1));
            }
        }
        Ok((answer, Some(lots)))
    }

    fn write_ledger(&mut self, write: &LedgerWrite) -> Result<(), StoreError> {
        self.prefetched.forget_written(write);
        // The batch's rows held back go in the same statement as the ledger's.
        let held_rows = self.held_rows.take();
        for m in &write.new_members {
            self.execute(
                "INSERT INTO loyalty_members (customer_id, member_id, programme_key, card_token, balance, status, \
                 merged_into, enrolled_at, tier, tier_since, downgrade_on) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    &m.customer.to_string(),
                    &m.member.to_string(),
                    &m.programme,
                    &m.card_token,
                    &m.balance,
                    &m.status.as_str(),
                    &m.merged_into.map(|id| id.to_string()),
                    &m.enrolled_at,
                    &m.tier,
                    &m.tier_since,
                    &m.downgrade_on,
                ],
            )?;
        }
        if self.hold_back_ledger && held_rows.is_none() && write.only_usual_rows() {
            // Sent with the next statement, or before the commit, with the
            // usual rows of the other steps held back meanwhile, as long as
            // they touch different customers.
            let touched = touched_customers(write);
            if self.held_ledger.as_ref().is_some_and(|held| !held.customers.is_disjoint(&touched)) {
                self.send_held_rows()?;
            }
            let held = self.held_ledger.get_or_insert_with(LedgerRows::default);
            held.add(write)?;
            held.customers.extend(touched);
            return Ok(());
        }
        let mut ledger = LedgerRows::default();
        ledger.add(write)?;
        let mut trip = OneTrip::default();
        ledger.add_to(&mut trip);
        if let Some(rows) = &held_rows {
            rows.add_to(&mut trip);
        }
        if let Some(sql) = trip.sql() {
            let written = self.execute(&sql, &trip.params)?;
            if let Some(rows) = &held_rows {
                rows.check_claims(written)?;
            }
        }
        for c in &write.tier_changes {
            self.execute(
                "INSERT INTO loyalty_tier_changes (customer_id, change_id, member_id, kind, from_tier, to_tier, \
                 effective_on, measured, day, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, statement_timestamp())",
                &[
                    &c.customer.to_string(),
                    &relais_domain::LedgerTxId::new().to_string(),
                    &c.member.to_string(),
                    &c.kind,
                    &c.from,
                    &c.to,
                    &c.effective_on,
                    &c.measured,
                    &c.day,
                ],
            )?;
        }
        for (customer, lot, points) in &write.lot_restores {
            self.execute(
                "UPDATE loyalty_lots SET remaining = remaining + $3 WHERE customer_id = $1 AND lot_id = $2",
                &[&customer.to_string(), lot, points],
            )?;
        }
        for (programme, reward, change) in &write.stock_changes {
            self.execute(
                "UPDATE loyalty_rewards SET stock_left = stock_left + $3 WHERE programme_key = $1 AND reward_id = $2 \
                 AND stock_left IS NOT NULL",
                &[programme, reward, change],
            )?;
        }
        for r in &write.new_redemptions {
            self.execute(
                "INSERT INTO loyalty_redemptions (customer_id, redemption_id, member_id, programme_key, reward_id, points, \
                 status, allocation, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
                &[
                    &r.customer.to_string(),
                    &r.id,
                    &r.member.to_string(),
                    &r.programme,
                    &r.reward,
                    &r.points,
                    &r.status.as_str(),
                    &serde_json::to_string(&r.allocation).map_err(|e| StoreError::Database(e.to_string()))?,
                    &r.created_at,
                ],
            )?;
        }
        for (customer, id, status) in &write.redemption_updates {
            self.execute(
                "UPDATE loyalty_redemptions SET status = $3, updated_at = statement_timestamp() WHERE customer_id = $1 AND redemption_id = $2",
                &[&customer.to_string(), id, &status.as_str()],
            )?;
        }
        if let Some(u) = &write.coupon_use {
            self.execute(
                "UPDATE loyalty_coupon_codes SET customer_id = $2, member_id = $3, order_id = $4, used_at = statement_timestamp() \
                 WHERE code_hash = $1",
                &[&u.code_hash, &u.customer.to_string(), &u.member.to_string(), &u.order_id],
            )?;
            self.execute(
                "INSERT INTO loyalty_coupon_uses (customer_id, code_hash, member_id, programme_key, campaign_id, order_id, \
                 day, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, statement_timestamp())",
                &[
                    &u.customer.to_string(),
                    &u.code_hash,
                    &u.member.to_string(),
                    &u.programme,
                    &u.campaign,
                    &u.order_id,
                    &u.day,
                ],
            )?;
            self.execute(
                "UPDATE loyalty_coupon_campaigns SET used = used + 1 WHERE programme_key = $1 AND campaign_id = $2",
                &[&u.programme, &u.campaign],
            )?;
        }
        for d in &write.draws {
            self.execute(
                "INSERT INTO loyalty_draws (customer_id, draw_id, member_id, programme_key, rule_id, event_id, roll, odds, \
                 won, points, day) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    &d.customer.to_string(),
                    &relais_domain::LedgerTxId::new().to_string(),
                    &d.member.to_string(),
                    &d.programme,
                    &d.rule,
                    &d.event_id.to_string(),
                    &d.roll.to_string(),
                    &d.odds,
                    &d.won,
                    &d.points,
                    &d.day,
                ],
            )?;
        }
        for (programme, rule, points) in &write.budget_spent {
            self.execute(
                "UPDATE loyalty_draw_budgets SET spent = spent + $3 WHERE programme_key = $1 AND rule_id = $2",
                &[programme, rule, points],
            )?;
        }
        for (customer, member, rule, period, state) in &write.progress {
            self.execute(
                "INSERT INTO loyalty_progress (customer_id, member_id, rule_id, period_start, state) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (customer_id, member_id, rule_id, period_start) \
                 DO UPDATE SET state = excluded.state",
                &[&customer.to_string(), &member.to_string(), rule, period, state],
            )?;
        }
        for (customer, member, badge, rule, day) in &write.badges {
            self.execute(
                "INSERT INTO loyalty_badges (customer_id, member_id, badge, rule_id, day) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT DO NOTHING",
                &[&customer.to_string(), &member.to_string(), badge, rule, day],
            )?;
        }
        for e in &write.computed_events {
            let id = e.event_id.to_string();
            self.execute(
                "INSERT INTO events (customer_id, event_id, source, message_id, type, name, channel, ts, received_at, \
                 properties, context, traits, extra, identifiers, computed) \
                 VALUES ($1, $2, 'relais', $2, 'track', $3, 'other', $4, $4, $5, '{}', '{}', '{}', '[]', TRUE)",
                &[&e.customer.to_string(), &id, &e.name, &e.at, &e.properties],
            )?;
        }
        if !write.emails.is_empty() {
            let privacy = self.privacy.ok_or_else(|| StoreError::Database("no keys on this connection".into()))?;
            for (customer, payload) in &write.emails {
                // Sealed with the person's key, like every message to a person.
                let key =
                    seal::data_key_of(&privacy.keyring, *customer, |missing| super::read_data_keys(self, missing))?;
                let payload = seal::seal_payload(Some((*customer, &key)), payload);
                self.execute(
                    "INSERT INTO outbox (outbox_id, kind, customer_id, payload, status, next_attempt_at, created_at) \
                     VALUES ($1, 'email', $2, $3::text::jsonb, 'pending', statement_timestamp(), statement_timestamp())",
                    &[&relais_domain::OutboxId::new().to_string(), &customer.to_string(), &payload],
                )?;
            }
        }
        Ok(())
    }

    fn reward(
        &mut self,
        programme: &str,
        reward: &str,
    ) -> Result<Option<(relais_domain::loyalty::rewards::Reward, Option<i64>)>, StoreError> {
        // Locked: the stock is shared by every member redeeming it.
        self.query_opt(
            "SELECT definition, stock_left FROM loyalty_rewards WHERE programme_key = $1 AND reward_id = $2 \
                 FOR UPDATE",
            &[&programme, &reward],
        )?
        .map(|r| Ok((crate::store::loyalty::reward_from_json(r.get::<_, &str>(0))?, r.get(1))))
        .transpose()
    }

    fn coupon(&mut self, code_hash: &str) -> Result<Option<CouponRow>, StoreError> {
        self.query_opt(
            "SELECT programme_key, campaign_id, customer_id, member_id, order_id FROM loyalty_coupon_codes \
                 WHERE code_hash = $1 FOR UPDATE",
            &[&code_hash],
        )?
        .map(|r| {
            let used_by = match (r.get::<_, Option<&str>>(2), r.get::<_, Option<&str>>(3)) {
                (Some(c), Some(m)) => Some((parse_id(c)?, parse_id(m)?, r.get(4))),
                _ => None,
            };
            Ok(CouponRow { programme: r.get(0), campaign: r.get(1), used_by })
        })
        .transpose()
    }

    fn campaign(
        &mut self,
        programme: &str,
        campaign: &str,
    ) -> Result<Option<(relais_domain::loyalty::coupons::Campaign, i64)>, StoreError> {
        self.query_opt(
            "SELECT definition, used FROM loyalty_coupon_campaigns WHERE programme_key = $1 AND campaign_id = $2 \
                 FOR UPDATE",
            &[&programme, &campaign],
        )?
        .map(|r| Ok((crate::store::loyalty::campaign_from_json(r.get::<_, &str>(0))?, r.get(1))))
        .transpose()
    }

    fn coupon_uses(&mut self, member: &MemberRow, campaign: &str) -> Result<i64, StoreError> {
        Ok(self
            .query_one(
                "SELECT COUNT(*) FROM loyalty_coupon_uses WHERE customer_id = $1 AND member_id = $2 AND campaign_id = $3",
                &[&member.customer.to_string(), &member.member.to_string(), &campaign],
            )?
            .get(0))
    }

    fn merged_members(&mut self, roots: &[CustomerId]) -> Result<Vec<MemberRow>, StoreError> {
        let ids: Vec<String> = roots.iter().map(ToString::to_string).collect();
        self.query(
            &format!(
                "{FAMILY_OF_ROOTS} SELECT {MEMBER_COLUMNS} FROM family \
                 JOIN loyalty_members m ON m.customer_id = family.customer_id \
                 WHERE m.status = 'merged' ORDER BY m.member_id FOR UPDATE OF m"
            ),
            &[&ids],
        )?
        .iter()
        .map(to_member)
        .collect()
    }

    fn merge_transfer(&mut self, member: &MemberRow) -> Result<Points, StoreError> {
        Ok(self
            .query_one(
                "SELECT COALESCE(-SUM(points), 0)::bigint FROM loyalty_entries WHERE customer_id = $1 AND member_id = $2 \
                 AND kind = 'merge' AND account = 'member' AND points < 0",
                &[&member.customer.to_string(), &member.member.to_string()],
            )?
            .get(0))
    }

    fn given_back_for(&mut self, member: &MemberRow, reserved_by: MemberId) -> Result<Points, StoreError> {
        Ok(self
            .query_one(
                "SELECT COALESCE(SUM(points), 0)::bigint FROM loyalty_entries WHERE customer_id = $1 AND member_id = $2 \
                 AND account = 'member' AND kind = 'cancellation' AND reason::jsonb ->> 'reserved_by' = $3",
                &[&member.customer.to_string(), &member.member.to_string(), &reserved_by.to_string()],
            )?
            .get(0))
    }

    fn event_points(&mut self, member: &MemberRow, events: &[String]) -> Result<Points, StoreError> {
        Ok(self
            .query_one(
                "SELECT COALESCE(SUM(points), 0)::bigint FROM loyalty_entries WHERE customer_id = $1 AND member_id = $2 \
                 AND account = 'member' AND event_id = ANY($3)",
                &[&member.customer.to_string(), &member.member.to_string(), &events],
            )?
            .get(0))
    }

    fn roll(&mut self, seed: &str) -> Result<u64, StoreError> {
        let privacy = self.privacy.ok_or_else(|| StoreError::Database("no keys on this connection".into()))?;
        Ok(crate::store::loyalty::roll_of(&privacy.keyring, seed))
    }

    fn draw_spent(&mut self, programme: &str, rule: &str) -> Result<Points, StoreError> {
        // The budget row is created (at 0) and locked: concurrent wins wait,
        // so the budget is never exceeded.
        self.execute(
            "INSERT INTO loyalty_draw_budgets (programme_key, rule_id, spent) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING",
            &[&programme, &rule],
        )?;
        Ok(self
            .query_one(
                "SELECT spent FROM loyalty_draw_budgets WHERE programme_key = $1 AND rule_id = $2 FOR UPDATE",
                &[&programme, &rule],
            )?
            .get(0))
    }

    fn progress(&mut self, member: &MemberRow, rule: &str, period: NaiveDate) -> Result<Option<String>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT state FROM loyalty_progress WHERE customer_id = $1 AND member_id = $2 AND rule_id = $3 \
                 AND period_start = $4",
                &[&member.customer.to_string(), &member.member.to_string(), &rule, &period],
            )?
            .map(|r| r.get(0)))
    }

    fn redemption(&mut self, id: &str) -> Result<Option<RedemptionRow>, StoreError> {
        self.query_opt(
            "SELECT customer_id, redemption_id, member_id, programme_key, reward_id, points, status, allocation, \
                 created_at FROM loyalty_redemptions WHERE redemption_id = $1 FOR UPDATE",
            &[&id],
        )?
        .map(|r| {
            Ok(RedemptionRow {
                customer: parse_id(r.get::<_, &str>(0))?,
                id: r.get(1),
                member: parse_id(r.get::<_, &str>(2))?,
                programme: r.get(3),
                reward: r.get(4),
                points: r.get(5),
                status: RedemptionStatus::parse(r.get::<_, &str>(6))?,
                allocation: serde_json::from_str(r.get::<_, &str>(7))
                    .map_err(|e| StoreError::Database(e.to_string()))?,
                created_at: r.get(8),
            })
        })
        .transpose()
    }

    fn root_of(&mut self, customer: CustomerId) -> Result<Option<CustomerId>, StoreError> {
        let row =
            self.query_opt("SELECT merged_into FROM customers WHERE customer_id = $1", &[&customer.to_string()])?;
        Ok(match row {
            None => None,
            Some(r) => match r.get::<_, Option<&str>>(0) {
                None => Some(customer),
                Some(survivor) => Some(parse_id(survivor)?),
            },
        })
    }

    fn attach_card(&mut self, customer: CustomerId, card: &Identifier) -> Result<Option<String>, StoreError> {
        let privacy = self.privacy.ok_or_else(|| StoreError::Database("no keys on this connection".into()))?;
        let token = privacy.keyring.token(card);
        let key = seal::data_key_of(&privacy.keyring, customer, |missing| super::read_data_keys(self, missing))?;
        let value = StoredValue::of(&privacy.classes, card, customer, &key);
        let inserted = self.execute(
            "INSERT INTO identifiers (identifier, kind, customer_id, created_at, value, sealed) \
             VALUES ($1, $2, $3, statement_timestamp(), $4, $5) ON CONFLICT DO NOTHING",
            &[&token.to_string(), &token.kind().as_str(), &customer.to_string(), &value.clear(), &value.sealed()],
        )?;
        Ok((inserted == 1).then(|| token.to_string()))
    }

    fn segments_of(&mut self, root: CustomerId) -> Result<Vec<String>, StoreError> {
        Ok(self
            .query(
                "SELECT s.name FROM segment_members m JOIN segments s ON s.segment_id = m.segment_id \
                 WHERE m.customer_id = $1 ORDER BY s.name",
                &[&root.to_string()],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn recipient(&mut self, customer: CustomerId) -> Result<Option<Recipient>, StoreError> {
        let privacy = self.privacy.ok_or_else(|| StoreError::Database("no keys on this connection".into()))?;
        let Some(root) = self.root_of(customer)? else { return Ok(None) };
        let Some(row) =
            self.query_opt("SELECT profile, sealed FROM customers WHERE customer_id = $1", &[&root.to_string()])?
        else {
            return Ok(None);
        };
        let mut profile = match row.get::<_, serde_json::Value>(0) {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        let keys = seal::data_keys(&privacy.keyring, &[root], |missing| super::read_data_keys(self, missing))?;
        seal::open_profile(&mut profile, row.get::<_, Option<&[u8]>>(1), keys.get(&root))?;
        let rows = self
            .query(
                "SELECT identifier, value, sealed, shared FROM identifiers WHERE customer_id = $1 AND kind = 'email' \
                 ORDER BY created_at",
                &[&root.to_string()],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get::<_, bool>(3)))
            .collect();
        let email = super::open_identifiers(self, privacy, rows)?
            .into_iter()
            .find(|(_, shared)| !shared)
            .map(|(identifier, _)| identifier.value().to_string());
        Ok(Some(Recipient { customer: root, email, profile }))
    }

    fn reservations_before(
        &mut self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<crate::store::loyalty::Reservation>, StoreError> {
        Ok(self
            .query(
                "SELECT redemption_id, programme_key, reward_id, created_at FROM loyalty_redemptions \
                 WHERE status = 'reserved' AND created_at <= $1 ORDER BY created_at, redemption_id",
                &[&before],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    fn reserved_rewards(&mut self, customers: &[CustomerId]) -> Result<Vec<(String, String)>, StoreError> {
        let ids: Vec<String> = customers.iter().map(ToString::to_string).collect();
        Ok(self
            .query(
                "SELECT programme_key, reward_id FROM loyalty_redemptions WHERE customer_id = ANY($1) \
                 AND status = 'reserved' ORDER BY redemption_id FOR UPDATE",
                &[&ids],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }
}

/// The usual rows of ledger steps (entries, new lots, lot and membership
/// updates, answers kept for idempotency keys), column by column, for one
/// statement of `unnest` parts (`add_to`). Its parts touch different rows:
/// `finish` folded each step's updates of its new lots into their inserts and
/// left at most one update per lot and per membership, and steps gathered
/// here touch different customers (`write_ledger`), so seeing the snapshot
/// from before the statement changes nothing. `UPDATE … FROM unnest` applies
/// one arbitrary row per key, hence the unique keys.
#[derive(Default)]
pub(super) struct LedgerRows {
    /// The customers of the steps held back in it (`PgTx::held_ledger`).
    customers: std::collections::BTreeSet<CustomerId>,
    entries: EntryColumns,
    lot_customers: Vec<String>,
    lot_ids: Vec<String>,
    lot_members: Vec<String>,
    lot_points: Vec<i64>,
    lot_remaining: Vec<i64>,
    lot_expires: Vec<Option<NaiveDate>>,
    updated_customers: Vec<String>,
    updated_ids: Vec<String>,
    updated_remaining: Vec<i64>,
    member_customers: Vec<String>,
    members: Vec<String>,
    balances: Vec<i64>,
    statuses: Vec<&'static str>,
    merged_into: Vec<Option<String>>,
    tiers: Vec<Option<String>>,
    tier_since: Vec<Option<DateTime<Utc>>>,
    downgrade_on: Vec<Option<NaiveDate>>,
    answer_customers: Vec<String>,
    answer_scopes: Vec<String>,
    answer_keys: Vec<String>,
    answer_hashes: Vec<String>,
    answer_statuses: Vec<i32>,
    answer_bodies: Vec<String>,
}

impl LedgerRows {
    /// Add the usual rows of `write`.
    fn add(&mut self, write: &LedgerWrite) -> Result<(), StoreError> {
        debug_assert!(unique(write.lot_updates.iter().map(|(c, l, _)| (c, l))), "one update per lot");
        debug_assert!(unique(write.member_updates.iter().map(|m| m.member)), "one update per membership");
        let entries = &mut self.entries;
        for t in &write.transactions {
            for (leg, l) in t.legs.iter().enumerate() {
                entries.customer.push(l.customer.to_string());
                entries.tx.push(t.id.to_string());
                entries.leg.push(leg as i32);
                entries.member.push(l.member.to_string());
                entries.account.push(l.account.as_str().to_string());
                entries.points.push(l.points);
                entries.kind.push(t.kind.to_string());
                entries.rule.push(t.rule.clone());
                entries.event.push(t.event_id.map(|e| e.to_string()));
                entries.message.push(t.message_id.clone());
                entries.order.push(t.order_id.clone());
                entries.basis.push(t.basis_minor);
                entries.day.push(t.day);
                entries.reason.push(serde_json::to_string(&l.reason).map_err(|e| StoreError::Database(e.to_string()))?);
                entries.expires.push(l.expires_on);
                entries.actor.push(t.actor.clone());
                entries.programme.push(t.programme.clone());
                entries.store.push(t.store.clone());
            }
        }
        for l in &write.new_lots {
            self.lot_customers.push(l.customer.to_string());
            self.lot_ids.push(l.lot_id.clone());
            self.lot_members.push(l.member.to_string());
            self.lot_points.push(l.points);
            self.lot_remaining.push(l.remaining);
            self.lot_expires.push(l.expires_on);
        }
        for (customer, lot, remaining) in &write.lot_updates {
            self.updated_customers.push(customer.to_string());
            self.updated_ids.push(lot.clone());
            self.updated_remaining.push(*remaining);
        }
        for m in &write.member_updates {
            self.member_customers.push(m.customer.to_string());
            self.members.push(m.member.to_string());
            self.balances.push(m.balance);
            self.statuses.push(m.status.as_str());
            self.merged_into.push(m.merged_into.map(|id| id.to_string()));
            self.tiers.push(m.tier.clone());
            self.tier_since.push(m.tier_since);
            self.downgrade_on.push(m.downgrade_on);
        }
        if let Some((customer, scope, key, answer)) = &write.answer {
            self.answer_customers.push(customer.to_string());
            self.answer_scopes.push(scope.clone());
            self.answer_keys.push(key.clone());
            self.answer_hashes.push(answer.request_hash.clone());
            self.answer_statuses.push(i32::from(answer.status));
            self.answer_bodies.push(answer.body.clone());
        }
        Ok(())
    }

    /// Add a part to `trip` for each kind of row there is.
    fn add_to<'p>(&'p self, trip: &mut OneTrip<'p>) {
        let c = &self.entries;
        if !c.customer.is_empty() {
            trip.add(
                "INSERT INTO loyalty_entries (customer_id, tx_id, leg, member_id, account, points, kind, rule, event_id, \
                 message_id, order_id, basis_minor, day, reason, expires_on, actor, programme_key, store, created_at) \
                 SELECT *, statement_timestamp() FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::bigint[], \
                 $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[], $13::date[], $14::text[], \
                 $15::date[], $16::text[], $17::text[], $18::text[])",
                &[
                    &c.customer, &c.tx, &c.leg, &c.member, &c.account, &c.points, &c.kind, &c.rule, &c.event,
                    &c.message, &c.order, &c.basis, &c.day, &c.reason, &c.expires, &c.actor, &c.programme, &c.store,
                ],
            );
        }
        if !self.lot_ids.is_empty() {
            trip.add(
                "INSERT INTO loyalty_lots (customer_id, lot_id, member_id, points, remaining, expires_on) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::date[])",
                &[
                    &self.lot_customers,
                    &self.lot_ids,
                    &self.lot_members,
                    &self.lot_points,
                    &self.lot_remaining,
                    &self.lot_expires,
                ],
            );
        }
        // Each join on `unnest` repeats its keys as `= ANY`, so a generic
        // plan (`GENERIC_PLANS`) probes the key index.
        if !self.updated_ids.is_empty() {
            trip.add(
                "UPDATE loyalty_lots l SET remaining = u.remaining \
                 FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(customer_id, lot_id, remaining) \
                 WHERE l.customer_id = u.customer_id AND l.lot_id = u.lot_id \
                 AND l.customer_id = ANY($1) AND l.lot_id = ANY($2)",
                &[&self.updated_customers, &self.updated_ids, &self.updated_remaining],
            );
        }
        if !self.members.is_empty() {
            trip.add(
                "UPDATE loyalty_members m SET balance = u.balance, status = u.status, merged_into = u.merged_into, \
                 tier = u.tier, tier_since = u.tier_since, downgrade_on = u.downgrade_on \
                 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
                 $7::timestamptz[], $8::date[]) \
                 AS u(customer_id, member_id, balance, status, merged_into, tier, tier_since, downgrade_on) \
                 WHERE m.customer_id = u.customer_id AND m.member_id = u.member_id \
                 AND m.customer_id = ANY($1) AND m.member_id = ANY($2)",
                &[
                    &self.member_customers,
                    &self.members,
                    &self.balances,
                    &self.statuses,
                    &self.merged_into,
                    &self.tiers,
                    &self.tier_since,
                    &self.downgrade_on,
                ],
            );
        }
        if !self.answer_keys.is_empty() {
            trip.add(
                "INSERT INTO loyalty_idempotency (customer_id, scope, idem_key, request_hash, status, response, \
                 created_at) SELECT *, statement_timestamp() \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[])",
                &[
                    &self.answer_customers,
                    &self.answer_scopes,
                    &self.answer_keys,
                    &self.answer_hashes,
                    &self.answer_statuses,
                    &self.answer_bodies,
                ],
            );
        }
    }

    /// Write every row in one statement.
    pub(super) fn send(&self, sql: &mut impl Sql) -> Result<(), postgres::Error> {
        let mut trip = OneTrip::default();
        self.add_to(&mut trip);
        if let Some(text) = trip.sql() {
            sql.execute(&text, &trip.params)?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct EntryColumns {
    customer: Vec<String>,
    tx: Vec<String>,
    leg: Vec<i32>,
    member: Vec<String>,
    account: Vec<String>,
    points: Vec<i64>,
    kind: Vec<String>,
    rule: Vec<Option<String>>,
    event: Vec<Option<String>>,
    message: Vec<Option<String>>,
    order: Vec<Option<String>>,
    basis: Vec<Option<i64>>,
    day: Vec<NaiveDate>,
    reason: Vec<String>,
    expires: Vec<Option<NaiveDate>>,
    actor: Vec<Option<String>>,
    programme: Vec<String>,
    store: Vec<Option<String>>,
}

/// A member's lots with points left.
pub(super) fn open_lots(client: &mut impl Sql, member: &MemberRow) -> Result<Vec<Lot>, StoreError> {
    Ok(client
        .query(
            "SELECT lot_id, remaining, expires_on FROM loyalty_lots WHERE customer_id = $1 AND member_id = $2 \
             AND remaining > 0",
            &[&member.customer.to_string(), &member.member.to_string()],
        )?
        .iter()
        .map(|r| lot_at(r, 0))
        .collect())
}

/// A lot read from columns `from` (id), `from + 1` (remaining) and `from + 2` (expiry).
fn lot_at(r: &postgres::Row, from: usize) -> Lot {
    Lot { id: r.get(from), remaining: r.get(from + 1), expires_on: r.get(from + 2) }
}

/// One membership by id (no lock).
pub(super) fn member(client: &mut impl Sql, id: MemberId) -> Result<Option<MemberRow>, StoreError> {
    client
        .query_opt(
            &format!("SELECT {MEMBER_COLUMNS} FROM loyalty_members m WHERE m.member_id = $1"),
            &[&id.to_string()],
        )?
        .as_ref()
        .map(to_member)
        .transpose()
}

/// Active memberships of a person (a profile and the profiles merged into it).
pub(super) fn members_of(client: &mut impl Sql, root: CustomerId) -> Result<Vec<MemberRow>, StoreError> {
    client
        .query(
            &format!(
                "SELECT {MEMBER_COLUMNS} FROM loyalty_members m WHERE m.status = 'active' AND (m.customer_id = $1 \
                 OR m.customer_id IN (SELECT customer_id FROM customers WHERE merged_into = $1)) ORDER BY m.member_id"
            ),
            &[&root.to_string()],
        )?
        .iter()
        .map(to_member)
        .collect()
}

/// The card numbers behind card tokens.
pub(super) fn card_numbers(
    client: &mut impl Sql,
    privacy: &Privacy,
    tokens: Vec<String>,
) -> Result<HashMap<String, String>, StoreError> {
    let values = super::reveal(client, privacy, tokens.clone())?;
    Ok(tokens.into_iter().zip(values).map(|(t, v)| (t, v.strip_prefix("card:").unwrap_or(&v).to_string())).collect())
}

/// A member's own entries (its side of every transaction), oldest first.
pub(super) fn entries(client: &mut impl GenericClient, row: &MemberRow) -> Result<Vec<StatementEntry>, StoreError> {
    client
        .query(
            "SELECT tx_id, kind, points, rule, message_id, reason, expires_on, actor, created_at FROM loyalty_entries \
             WHERE customer_id = $1 AND member_id = $2 AND account = 'member' ORDER BY created_at, tx_id, leg",
            &[&row.customer.to_string(), &row.member.to_string()],
        )?
        .iter()
        .map(|r| {
            Ok(StatementEntry {
                tx_id: r.get(0),
                kind: r.get(1),
                points: r.get(2),
                rule: r.get(3),
                message_id: r.get(4),
                reason: serde_json::from_str::<Reason>(r.get::<_, &str>(5))
                    .map_err(|e| StoreError::Database(format!("bad stored reason: {e}")))?,
                expires_on: r.get(6),
                actor: r.get(7),
                created_at: r.get::<_, DateTime<Utc>>(8),
            })
        })
        .collect()
}

/// Members holding lots whose expiry day has come.
pub(super) fn members_with_due_lots(
    client: &mut impl GenericClient,
    day: NaiveDate,
    limit: usize,
) -> Result<Vec<MemberId>, StoreError> {
    client
        .query(
            "SELECT DISTINCT member_id FROM loyalty_lots WHERE remaining > 0 AND expires_on <= $1 LIMIT $2",
            &[&day, &(limit as i64)],
        )?
        .iter()
        .map(|r| parse_id(r.get::<_, &str>(0)))
        .collect()
}

/// Check the ledger's invariants over the whole database.
pub(super) fn check(client: &mut impl GenericClient) -> Result<LedgerCheck, StoreError> {
    let total: i64 = client.query_one("SELECT COALESCE(SUM(points), 0)::bigint FROM loyalty_entries", &[])?.get(0);
    let unbalanced = client
        .query("SELECT tx_id FROM loyalty_entries GROUP BY tx_id HAVING SUM(points) <> 0", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let rows = client
        .query(
            // Each table summed once by member: correlated sums, one per
            // member, scanned the whole ledger per member (no index leads with
            // `member_id` here), two minutes for 2,000 members.
            "SELECT m.member_id, m.balance, COALESCE(e.points, 0)::bigint, COALESCE(l.remaining, 0)::bigint \
             FROM loyalty_members m \
             LEFT JOIN (SELECT member_id, SUM(points) AS points FROM loyalty_entries WHERE account = 'member' \
             GROUP BY member_id) e ON e.member_id = m.member_id \
             LEFT JOIN (SELECT member_id, SUM(remaining) AS remaining FROM loyalty_lots GROUP BY member_id) l \
             ON l.member_id = m.member_id",
            &[],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    Ok(crate::store::loyalty::ledger_check(total, unbalanced, rows))
}

/// The raw figures of a programme's report.
pub(super) fn report(
    client: &mut impl GenericClient,
    programme: &str,
    since: Option<NaiveDate>,
) -> Result<ReportRows, StoreError> {
    let row = client.query_one(
        "SELECT COUNT(*), COALESCE(SUM(balance), 0)::bigint FROM loyalty_members \
         WHERE programme_key = $1 AND status = 'active'",
        &[&programme],
    )?;
    let members = (row.get::<_, i64>(0) as u64, row.get(1));
    let expiring = client
        .query(
            "SELECT COALESCE(to_char(l.expires_on, 'YYYY-MM'), 'never') AS month, SUM(l.remaining)::bigint \
             FROM loyalty_lots l JOIN loyalty_members m ON m.customer_id = l.customer_id AND m.member_id = l.member_id \
             WHERE m.programme_key = $1 AND l.remaining > 0 GROUP BY month ORDER BY month",
            &[&programme],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let by_rule = client
        .query(
            "SELECT kind, rule, SUM(CASE WHEN points > 0 THEN points ELSE 0 END)::bigint, \
             SUM(CASE WHEN points < 0 THEN -points ELSE 0 END)::bigint FROM loyalty_entries WHERE programme_key = $1 \
             AND account = 'member' AND ($2::date IS NULL OR day >= $2) GROUP BY kind, rule ORDER BY kind, rule",
            &[&programme, &since],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let by_store = client
        .query(
            "SELECT store, SUM(CASE WHEN points > 0 AND kind <> 'merge' THEN points ELSE 0 END)::bigint, \
             SUM(CASE WHEN points < 0 AND kind IN ('redemption', 'refund') THEN -points ELSE 0 END)::bigint \
             FROM loyalty_entries WHERE programme_key = $1 AND account = 'member' AND ($2::date IS NULL OR day >= $2) \
             GROUP BY store ORDER BY store",
            &[&programme, &since],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    Ok(ReportRows { members, expiring, by_rule, by_store })
}

/// Members whose tier must be reviewed on `day`: a downgrade due, or a tier
/// in a programme whose review date it is.
pub(super) fn members_to_review(
    client: &mut impl GenericClient,
    day: NaiveDate,
    reviewing: &[String],
) -> Result<Vec<MemberId>, StoreError> {
    client
        .query(
            "SELECT member_id FROM loyalty_members WHERE status = 'active' AND \
             ((downgrade_on IS NOT NULL AND downgrade_on <= $1) OR (tier IS NOT NULL AND programme_key = ANY($2))) \
             ORDER BY member_id",
            &[&day, &reviewing],
        )?
        .iter()
        .map(|r| parse_id(r.get::<_, &str>(0)))
        .collect()
}

/// A member's badges: badge, rule, day won.
pub(super) fn badges(
    client: &mut impl GenericClient,
    row: &MemberRow,
) -> Result<Vec<(String, String, NaiveDate)>, StoreError> {
    Ok(client
        .query(
            "SELECT badge, rule_id, day FROM loyalty_badges WHERE customer_id = $1 AND member_id = $2 ORDER BY day, badge",
            &[&row.customer.to_string(), &row.member.to_string()],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership(customer: CustomerId) -> MemberRow {
        MemberRow::enrolled(customer, "club", String::new())
    }

    fn read_ahead(rows: &[&MemberRow]) -> Prefetched {
        let mut ahead = Prefetched::default();
        for row in rows {
            ahead.members.insert(row.member, (*row).clone());
            let answer = PrefetchedAnswer {
                customer: row.customer,
                scope: "s".into(),
                key: "k".into(),
                answer: None,
                lots: Some(Vec::new()),
            };
            ahead.answers.insert(row.member, answer);
        }
        ahead
    }

    #[test]
    fn a_ledger_write_drops_what_was_read_ahead_for_its_customers_only() {
        let (ana, bob) = (CustomerId::new(), CustomerId::new());
        let (ana_member, bob_member) = (membership(ana), membership(bob));
        let changed = |row: &MemberRow| LedgerWrite { member_updates: vec![row.clone()], ..Default::default() };
        let lot_of = |customer| LedgerWrite { lot_updates: vec![(customer, "lot".into(), 3)], ..Default::default() };
        let answer_of = |customer| LedgerWrite {
            answer: Some((
                customer,
                "s".into(),
                "k".into(),
                StoredAnswer { request_hash: String::new(), status: 201, body: String::new() },
            )),
            ..Default::default()
        };
        let joined = |row: &MemberRow| LedgerWrite { new_members: vec![row.clone()], ..Default::default() };
        let restored = |customer| LedgerWrite { lot_restores: vec![(customer, "lot".into(), 3)], ..Default::default() };
        let new_lot = |row: &MemberRow| LedgerWrite {
            new_lots: vec![crate::store::loyalty::NewLot {
                customer: row.customer,
                member: row.member,
                lot_id: "lot".into(),
                points: 3,
                remaining: 3,
                expires_on: None,
            }],
            ..Default::default()
        };
        let writes = [
            changed(&ana_member),
            lot_of(ana),
            answer_of(ana),
            joined(&ana_member),
            restored(ana),
            new_lot(&ana_member),
        ];
        for write in writes {
            let mut ahead = read_ahead(&[&ana_member, &bob_member]);
            ahead.forget_written(&write);
            assert!(!ahead.members.contains_key(&ana_member.member));
            assert!(!ahead.answers.contains_key(&ana_member.member));
            assert!(ahead.members.contains_key(&bob_member.member), "another customer's rows stay");
            assert!(ahead.answers.contains_key(&bob_member.member));
        }
    }
}
