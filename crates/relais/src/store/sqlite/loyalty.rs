//! The loyalty ledger on SQLite: the `LedgerTx` primitives and the reads.
//! Every write runs on the writer thread, so steps never race; days are
//! stored as `YYYY-MM-DD` text and instants as microseconds.

use std::collections::HashMap;

use chrono::NaiveDate;
use relais_domain::loyalty::tiers::Measure;
use relais_domain::loyalty::{Lot, Points, Programme, Reason};
use relais_domain::{CustomerId, Identifier, MemberId};
use rusqlite::{params, Connection, OptionalExtension};

use super::{from_micros, micros, parse_id, SqliteTx};
use crate::store::loyalty::{
    CouponRow, LedgerCheck, LedgerTx, LedgerWrite, MemberRow, MemberStatus, OrderHistory, Recipient, RedemptionRow,
    RedemptionStatus, ReportRows, StatementEntry, StoredAnswer,
};
use crate::store::seal::{self, Privacy, StoredValue};
use crate::store::StoreError;

fn day_text(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

fn parse_day(text: &str) -> Result<NaiveDate, StoreError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| StoreError::Database(format!("bad stored day `{text}`")))
}

const MEMBER_COLUMNS: &str = "m.customer_id, m.member_id, m.programme_key, m.card_token, m.balance, m.status, \
     m.merged_into, m.enrolled_at, m.tier, m.tier_since, m.downgrade_on";

/// A lot from a `SELECT lot_id, remaining, expires_on` row.
fn lot_row(row: &rusqlite::Row<'_>) -> Result<Lot, StoreError> {
    let expires: Option<String> = row.get(2)?;
    Ok(Lot { id: row.get(0)?, remaining: row.get(1)?, expires_on: expires.as_deref().map(parse_day).transpose()? })
}

/// A membership row as read; ids and states are parsed after the row is read.
struct RawMember {
    customer: String,
    member: String,
    programme: String,
    card_token: String,
    balance: i64,
    status: String,
    merged_into: Option<String>,
    enrolled_at: i64,
    tier: Option<String>,
    tier_since: Option<i64>,
    downgrade_on: Option<String>,
}

fn member_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawMember> {
    Ok(RawMember {
        customer: r.get(0)?,
        member: r.get(1)?,
        programme: r.get(2)?,
        card_token: r.get(3)?,
        balance: r.get(4)?,
        status: r.get(5)?,
        merged_into: r.get(6)?,
        enrolled_at: r.get(7)?,
        tier: r.get(8)?,
        tier_since: r.get(9)?,
        downgrade_on: r.get(10)?,
    })
}

fn to_member(raw: RawMember) -> Result<MemberRow, StoreError> {
    Ok(MemberRow {
        customer: parse_id(&raw.customer)?,
        member: parse_id(&raw.member)?,
        programme: raw.programme,
        card_token: raw.card_token,
        balance: raw.balance,
        status: MemberStatus::parse(&raw.status)?,
        merged_into: raw.merged_into.as_deref().map(parse_id).transpose()?,
        enrolled_at: from_micros(raw.enrolled_at),
        tier: raw.tier,
        tier_since: raw.tier_since.map(from_micros),
        downgrade_on: raw.downgrade_on.as_deref().map(parse_day).transpose()?,
    })
}

/// Programmes stored as JSON definitions.
pub(super) fn load_programmes(conn: &Connection) -> Result<Vec<Programme>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT definition FROM loyalty_programmes ORDER BY programme_key")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
    rows.iter()
        .map(|text| serde_json::from_str(text).map_err(|e| StoreError::Database(format!("bad stored programme: {e}"))))
        .collect()
}

/// Store a checked programme (new, or a change already checked against the old one).
pub(super) fn save_programme(conn: &Connection, programme: &Programme) -> Result<i64, StoreError> {
    let definition = serde_json::to_string(programme).map_err(|e| StoreError::Database(e.to_string()))?;
    let revision: i64 =
        conn.query_row("SELECT COALESCE(MAX(revision), 0) + 1 FROM loyalty_programmes", [], |r| r.get(0))?;
    conn.execute(
        "INSERT INTO loyalty_programmes (programme_key, definition, revision, updated_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (programme_key) DO UPDATE SET definition = excluded.definition, revision = excluded.revision, \
         updated_at = excluded.updated_at",
        params![programme.head.key, definition, revision, micros(chrono::Utc::now())],
    )?;
    Ok(revision)
}

impl LedgerTx for SqliteTx<'_, '_> {
    fn programmes_revision(&mut self) -> Result<i64, StoreError> {
        Ok(self
            .tx
            .prepare_cached("SELECT COALESCE(MAX(revision), 0) FROM loyalty_programmes")?
            .query_row([], |r| r.get(0))?)
    }

    fn load_programmes(&mut self) -> Result<Vec<Programme>, StoreError> {
        load_programmes(self.tx)
    }

    fn family_members(&mut self, roots: &[CustomerId]) -> Result<Vec<(CustomerId, MemberRow)>, StoreError> {
        let mut found = Vec::new();
        for root in roots {
            found.extend(members_of(self.tx, *root)?.into_iter().map(|m| (*root, m)));
        }
        Ok(found)
    }

    fn member(&mut self, id: MemberId) -> Result<Option<MemberRow>, StoreError> {
        member(self.tx, id)
    }

    fn cap_used(
        &mut self,
        member: &MemberRow,
        rule: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Points, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT COALESCE(SUM(points), 0) FROM loyalty_entries WHERE member_id = ?2 AND account = 'member' \
                 AND rule = ?3 AND day BETWEEN ?4 AND ?5 AND leg = 0 AND customer_id = ?1",
            )?
            .query_row(
                params![member.customer.to_string(), member.member.to_string(), rule, day_text(from), day_text(to)],
                |r| r.get(0),
            )?)
    }

    fn rules_paid(&mut self, member: &MemberRow, kind: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT DISTINCT rule FROM loyalty_entries WHERE member_id = ?2 AND account = 'member' AND kind = ?3 \
             AND leg = 0 AND rule IS NOT NULL AND customer_id = ?1",
        )?;
        let rules = stmt
            .query_map(params![member.customer.to_string(), member.member.to_string(), kind], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(rules)
    }

    fn order_history(&mut self, member: &MemberRow, order_id: &str) -> Result<OrderHistory, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT kind, points, basis_minor FROM loyalty_entries WHERE member_id = ?2 AND account = 'member' \
             AND order_id = ?3 AND leg = 0 AND customer_id = ?1",
        )?;
        let rows = stmt
            .query_map(params![member.customer.to_string(), member.member.to_string(), order_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, Option<i64>>(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(crate::store::loyalty::order_history_of(rows))
    }

    fn open_lots(&mut self, member: &MemberRow) -> Result<Vec<Lot>, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT lot_id, remaining, expires_on FROM loyalty_lots WHERE member_id = ?2 AND remaining > 0 \
             AND customer_id = ?1",
        )?;
        let mut rows = stmt.query(params![member.customer.to_string(), member.member.to_string()])?;
        let mut lots = Vec::new();
        while let Some(row) = rows.next()? {
            lots.push(lot_row(row)?);
        }
        Ok(lots)
    }

    fn lots_by_id(&mut self, member: &MemberRow, ids: &[String]) -> Result<Vec<Lot>, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT lot_id, remaining, expires_on FROM loyalty_lots WHERE customer_id = ?1 AND lot_id = ?3 \
             AND member_id = ?2",
        )?;
        let (customer, id) = (member.customer.to_string(), member.member.to_string());
        let mut lots = Vec::new();
        for lot in ids {
            if let Some(found) = stmt.query_row(params![customer, id, lot], |r| Ok(lot_row(r))).optional()? {
                lots.push(found?);
            }
        }
        Ok(lots)
    }

    fn lots_to_cover(&mut self, member: &MemberRow, points: Points) -> Result<Vec<Lot>, StoreError> {
        // `allocate`'s order: lots with an expiry day first, soonest first, then
        // those without, each by id; `loyalty_lots_by_member` holds both ranges
        // in that order.
        let (customer, id) = (member.customer.to_string(), member.member.to_string());
        let mut lots = Vec::new();
        let mut held: Points = 0;
        for sql in [
            "SELECT lot_id, remaining, expires_on FROM loyalty_lots WHERE member_id = ?2 AND expires_on IS NOT NULL \
             AND remaining > 0 AND customer_id = ?1 ORDER BY expires_on, lot_id",
            "SELECT lot_id, remaining, expires_on FROM loyalty_lots WHERE member_id = ?2 AND expires_on IS NULL \
             AND remaining > 0 AND customer_id = ?1 ORDER BY lot_id",
        ] {
            let mut stmt = self.tx.prepare_cached(sql)?;
            let mut rows = stmt.query(params![customer, id])?;
            while held < points {
                let Some(row) = rows.next()? else { break };
                let lot = lot_row(row)?;
                held += lot.remaining;
                lots.push(lot);
            }
        }
        Ok(lots)
    }

    fn tier_value(
        &mut self,
        member: &MemberRow,
        measure: Measure,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<i64, StoreError> {
        Ok(self
            .tx
            .prepare_cached(&format!(
                "SELECT COALESCE({}, 0) FROM loyalty_entries WHERE member_id = ?2 AND account = 'member' \
                 AND day BETWEEN ?3 AND ?4 AND customer_id = ?1",
                crate::store::loyalty::tier_measure_sql(measure)
            ))?
            .query_row(
                params![member.customer.to_string(), member.member.to_string(), day_text(from), day_text(to)],
                |r| r.get(0),
            )?)
    }

    fn idempotent_answer(
        &mut self,
        customer: CustomerId,
        scope: &str,
        key: &str,
    ) -> Result<Option<StoredAnswer>, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT request_hash, status, response FROM loyalty_idempotency WHERE customer_id = ?1 AND scope = ?2 \
                 AND idem_key = ?3",
            )?
            .query_row(params![customer.to_string(), scope, key], |r| {
                Ok(StoredAnswer { request_hash: r.get(0)?, status: r.get(1)?, body: r.get(2)? })
            })
            .optional()?)
    }

    fn write_ledger(&mut self, write: &LedgerWrite) -> Result<(), StoreError> {
        let now = micros(chrono::Utc::now());
        {
            let mut stmt = self.tx.prepare_cached(
                "INSERT INTO loyalty_members (customer_id, member_id, programme_key, card_token, balance, status, \
                 merged_into, enrolled_at, tier, tier_since, downgrade_on) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for m in &write.new_members {
                stmt.execute(params![
                    m.customer.to_string(),
                    m.member.to_string(),
                    m.programme,
                    m.card_token,
                    m.balance,
                    m.status.as_str(),
                    m.merged_into.map(|id| id.to_string()),
                    micros(m.enrolled_at),
                    m.tier,
                    m.tier_since.map(micros),
                    m.downgrade_on.map(day_text)
                ])?;
            }
        }
        {
            let mut stmt = self.tx.prepare_cached(
                "INSERT INTO loyalty_entries (customer_id, tx_id, leg, member_id, account, points, kind, rule, event_id, \
                 message_id, order_id, basis_minor, day, reason, expires_on, actor, created_at, programme_key, store) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
            )?;
            for t in &write.transactions {
                for (leg, l) in t.legs.iter().enumerate() {
                    stmt.execute(params![
                        l.customer.to_string(),
                        t.id.to_string(),
                        leg as i64,
                        l.member.to_string(),
                        l.account.as_str(),
                        l.points,
                        t.kind,
                        t.rule,
                        t.event_id.map(|e| e.to_string()),
                        t.message_id,
                        t.order_id,
                        t.basis_minor,
                        day_text(t.day),
                        serde_json::to_string(&l.reason).map_err(|e| StoreError::Database(e.to_string()))?,
                        l.expires_on.map(day_text),
                        t.actor,
                        now,
                        t.programme,
                        t.store
                    ])?;
                }
            }
        }
        {
            let mut stmt = self.tx.prepare_cached(
                "INSERT INTO loyalty_lots (customer_id, lot_id, member_id, points, remaining, expires_on) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for lot in &write.new_lots {
                stmt.execute(params![
                    lot.customer.to_string(),
                    lot.lot_id,
                    lot.member.to_string(),
                    lot.points,
                    lot.remaining,
                    lot.expires_on.map(day_text)
                ])?;
            }
        }
        {
            let mut stmt = self
                .tx
                .prepare_cached("UPDATE loyalty_lots SET remaining = ?3 WHERE lot_id = ?2 AND customer_id = ?1")?;
            for (customer, lot, remaining) in &write.lot_updates {
                stmt.execute(params![customer.to_string(), lot, remaining])?;
            }
        }
        {
            // SQLite rewrites an index whenever an UPDATE assigns one of its
            // columns (including those of a partial index's condition), changed
            // or not: the balance, which nearly every write changes, is set on
            // its own, and the columns the membership indexes read only when
            // they differ.
            let mut balance = self
                .tx
                .prepare_cached("UPDATE loyalty_members SET balance = ?3 WHERE customer_id = ?1 AND member_id = ?2")?;
            let mut state = self.tx.prepare_cached(
                "UPDATE loyalty_members SET status = ?3, merged_into = ?4, tier = ?5, tier_since = ?6, downgrade_on = ?7 \
                 WHERE customer_id = ?1 AND member_id = ?2 AND (status IS NOT ?3 OR merged_into IS NOT ?4 \
                 OR tier IS NOT ?5 OR tier_since IS NOT ?6 OR downgrade_on IS NOT ?7)",
            )?;
            for m in &write.member_updates {
                let (customer, member) = (m.customer.to_string(), m.member.to_string());
                balance.execute(params![customer, member, m.balance])?;
                state.execute(params![
                    customer,
                    member,
                    m.status.as_str(),
                    m.merged_into.map(|id| id.to_string()),
                    m.tier,
                    m.tier_since.map(micros),
                    m.downgrade_on.map(day_text)
                ])?;
            }
        }
        {
            let mut stmt = self.tx.prepare_cached(
                "INSERT INTO loyalty_tier_changes (customer_id, change_id, member_id, kind, from_tier, to_tier, \
                 effective_on, measured, day, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for c in &write.tier_changes {
                stmt.execute(params![
                    c.customer.to_string(),
                    relais_domain::LedgerTxId::new().to_string(),
                    c.member.to_string(),
                    c.kind,
                    c.from,
                    c.to,
                    c.effective_on.map(day_text),
                    c.measured,
                    day_text(c.day),
                    now
                ])?;
            }
        }
        {
            let mut stmt = self.tx.prepare_cached(
                "UPDATE loyalty_lots SET remaining = remaining + ?3 WHERE lot_id = ?2 AND customer_id = ?1",
            )?;
            for (customer, lot, points) in &write.lot_restores {
                stmt.execute(params![customer.to_string(), lot, points])?;
            }
        }
        for (programme, reward, change) in &write.stock_changes {
            self.tx.execute(
                "UPDATE loyalty_rewards SET stock_left = stock_left + ?3 WHERE programme_key = ?1 AND reward_id = ?2 \
                 AND stock_left IS NOT NULL",
                params![programme, reward, change],
            )?;
        }
        for r in &write.new_redemptions {
            self.tx.execute(
                "INSERT INTO loyalty_redemptions (customer_id, redemption_id, member_id, programme_key, reward_id, points, \
                 status, allocation, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
                params![
                    r.customer.to_string(),
                    r.id,
                    r.member.to_string(),
                    r.programme,
                    r.reward,
                    r.points,
                    r.status.as_str(),
                    serde_json::to_string(&r.allocation).map_err(|e| StoreError::Database(e.to_string()))?,
                    micros(r.created_at)
                ],
            )?;
        }
        for (customer, id, status) in &write.redemption_updates {
            self.tx.execute(
                "UPDATE loyalty_redemptions SET status = ?3, updated_at = ?4 WHERE customer_id = ?1 AND redemption_id = ?2",
                params![customer.to_string(), id, status.as_str(), now],
            )?;
        }
        if let Some(u) = &write.coupon_use {
            self.tx.execute(
                "UPDATE loyalty_coupon_codes SET customer_id = ?2, member_id = ?3, order_id = ?4, used_at = ?5 \
                 WHERE code_hash = ?1",
                params![u.code_hash, u.customer.to_string(), u.member.to_string(), u.order_id, now],
            )?;
            self.tx.execute(
                "INSERT INTO loyalty_coupon_uses (customer_id, code_hash, member_id, programme_key, campaign_id, order_id, \
                 day, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    u.customer.to_string(),
                    u.code_hash,
                    u.member.to_string(),
                    u.programme,
                    u.campaign,
                    u.order_id,
                    day_text(u.day),
                    now
                ],
            )?;
            self.tx.execute(
                "UPDATE loyalty_coupon_campaigns SET used = used + 1 WHERE programme_key = ?1 AND campaign_id = ?2",
                params![u.programme, u.campaign],
            )?;
        }
        for d in &write.draws {
            self.tx.execute(
                "INSERT INTO loyalty_draws (customer_id, draw_id, member_id, programme_key, rule_id, event_id, roll, odds, \
                 won, points, day) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    d.customer.to_string(),
                    relais_domain::LedgerTxId::new().to_string(),
                    d.member.to_string(),
                    d.programme,
                    d.rule,
                    d.event_id.to_string(),
                    d.roll.to_string(),
                    d.odds,
                    d.won,
                    d.points,
                    day_text(d.day)
                ],
            )?;
        }
        for (programme, rule, points) in &write.budget_spent {
            self.tx.execute(
                "INSERT INTO loyalty_draw_budgets (programme_key, rule_id, spent) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (programme_key, rule_id) DO UPDATE SET spent = spent + excluded.spent",
                params![programme, rule, points],
            )?;
        }
        for (customer, member, rule, period, state) in &write.progress {
            self.tx.execute(
                "INSERT INTO loyalty_progress (customer_id, member_id, rule_id, period_start, state) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (customer_id, member_id, rule_id, period_start) \
                 DO UPDATE SET state = excluded.state",
                params![customer.to_string(), member.to_string(), rule, day_text(*period), state],
            )?;
        }
        for (customer, member, badge, rule, day) in &write.badges {
            self.tx.execute(
                "INSERT OR IGNORE INTO loyalty_badges (customer_id, member_id, badge, rule_id, day) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![customer.to_string(), member.to_string(), badge, rule, day_text(*day)],
            )?;
        }
        for e in &write.computed_events {
            let id = e.event_id.to_string();
            self.tx.execute(
                "INSERT INTO events (customer_id, event_id, source, message_id, type, name, channel, ts, received_at, \
                 properties, context, traits, extra, identifiers, computed) \
                 VALUES (?1, ?2, 'relais', ?2, 'track', ?3, 'other', ?4, ?4, ?5, '{}', '{}', '{}', '[]', 1)",
                params![e.customer.to_string(), id, e.name, micros(e.at), e.properties.to_string()],
            )?;
        }
        if !write.emails.is_empty() {
            let privacy = self.privacy.ok_or_else(|| StoreError::Database("no keys on this connection".into()))?;
            let mut stmt = self.tx.prepare_cached(
                "INSERT INTO outbox (outbox_id, kind, customer_id, payload, status, next_attempt_at, created_at) \
                 VALUES (?1, 'email', ?2, ?3, 'pending', ?4, ?4)",
            )?;
            for (customer, payload) in &write.emails {
                // Sealed with the person's key, like every message to a person.
                let key =
                    seal::data_key_of(&privacy.keyring, *customer, |missing| super::read_data_keys(self.tx, missing))?;
                let payload = seal::seal_payload(Some((*customer, &key)), payload);
                stmt.execute(params![relais_domain::OutboxId::new().to_string(), customer.to_string(), payload, now])?;
            }
        }
        if let Some((customer, scope, key, answer)) = &write.answer {
            self.tx.execute(
                "INSERT INTO loyalty_idempotency (customer_id, scope, idem_key, request_hash, status, response, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![customer.to_string(), scope, key, answer.request_hash, answer.status, answer.body, now],
            )?;
        }
        Ok(())
    }

    fn reward(
        &mut self,
        programme: &str,
        reward: &str,
    ) -> Result<Option<(relais_domain::loyalty::rewards::Reward, Option<i64>)>, StoreError> {
        let row: Option<(String, Option<i64>)> = self
            .tx
            .prepare_cached(
                "SELECT definition, stock_left FROM loyalty_rewards WHERE programme_key = ?1 AND reward_id = ?2",
            )?
            .query_row(params![programme, reward], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        row.map(|(definition, left)| Ok((crate::store::loyalty::reward_from_json(&definition)?, left))).transpose()
    }

    fn coupon(&mut self, code_hash: &str) -> Result<Option<CouponRow>, StoreError> {
        let row = self
            .tx
            .prepare_cached(
                "SELECT programme_key, campaign_id, customer_id, member_id, order_id FROM loyalty_coupon_codes \
                 WHERE code_hash = ?1",
            )?
            .query_row([code_hash], |r| {
                let used: (Option<String>, Option<String>, Option<String>) = (r.get(2)?, r.get(3)?, r.get(4)?);
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, used))
            })
            .optional()?;
        row.map(|(programme, campaign, (customer, member, order))| {
            let used_by = match (customer, member) {
                (Some(c), Some(m)) => Some((parse_id(&c)?, parse_id(&m)?, order)),
                _ => None,
            };
            Ok(CouponRow { programme, campaign, used_by })
        })
        .transpose()
    }

    fn campaign(
        &mut self,
        programme: &str,
        campaign: &str,
    ) -> Result<Option<(relais_domain::loyalty::coupons::Campaign, i64)>, StoreError> {
        let row: Option<(String, i64)> = self
            .tx
            .prepare_cached(
                "SELECT definition, used FROM loyalty_coupon_campaigns WHERE programme_key = ?1 AND campaign_id = ?2",
            )?
            .query_row(params![programme, campaign], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        row.map(|(d, used)| Ok((crate::store::loyalty::campaign_from_json(&d)?, used))).transpose()
    }

    fn coupon_uses(&mut self, member: &MemberRow, campaign: &str) -> Result<i64, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT COUNT(*) FROM loyalty_coupon_uses WHERE customer_id = ?1 AND member_id = ?2 AND campaign_id = ?3",
            )?
            .query_row(params![member.customer.to_string(), member.member.to_string(), campaign], |r| r.get(0))?)
    }

    fn merged_members(&mut self, roots: &[CustomerId]) -> Result<Vec<MemberRow>, StoreError> {
        let mut stmt = self.tx.prepare_cached(&format!(
            "SELECT {MEMBER_COLUMNS} FROM loyalty_members m WHERE m.status = 'merged' AND (m.customer_id = ?1 \
             OR m.customer_id IN (SELECT customer_id FROM customers WHERE merged_into = ?1)) ORDER BY m.member_id"
        ))?;
        let mut found = Vec::new();
        for root in roots {
            for raw in stmt.query_map([root.to_string()], member_row)? {
                found.push(to_member(raw?)?);
            }
        }
        Ok(found)
    }

    fn merge_transfer(&mut self, member: &MemberRow) -> Result<Points, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT COALESCE(-SUM(points), 0) FROM loyalty_entries WHERE member_id = ?2 AND account = 'member' \
                 AND kind = 'merge' AND points < 0 AND customer_id = ?1",
            )?
            .query_row(params![member.customer.to_string(), member.member.to_string()], |r| r.get(0))?)
    }

    fn given_back_for(&mut self, member: &MemberRow, reserved_by: MemberId) -> Result<Points, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT COALESCE(SUM(points), 0) FROM loyalty_entries WHERE member_id = ?2 AND account = 'member' \
                 AND kind = 'cancellation' AND json_extract(reason, '$.reserved_by') = ?3 AND customer_id = ?1",
            )?
            .query_row(
                params![member.customer.to_string(), member.member.to_string(), reserved_by.to_string()],
                |r| r.get(0),
            )?)
    }

    fn event_points(&mut self, member: &MemberRow, events: &[String]) -> Result<Points, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT COALESCE(SUM(points), 0) FROM loyalty_entries WHERE member_id = ?2 AND account = 'member' \
             AND event_id = ?3 AND customer_id = ?1",
        )?;
        let mut total = 0;
        for event in events {
            total += stmt.query_row(params![member.customer.to_string(), member.member.to_string(), event], |r| {
                r.get::<_, i64>(0)
            })?;
        }
        Ok(total)
    }

    fn roll(&mut self, seed: &str) -> Result<u64, StoreError> {
        let privacy = self.privacy.ok_or_else(|| StoreError::Database("no keys on this connection".into()))?;
        Ok(crate::store::loyalty::roll_of(&privacy.keyring, seed))
    }

    fn draw_spent(&mut self, programme: &str, rule: &str) -> Result<Points, StoreError> {
        Ok(self
            .tx
            .prepare_cached("SELECT spent FROM loyalty_draw_budgets WHERE programme_key = ?1 AND rule_id = ?2")?
            .query_row(params![programme, rule], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    fn progress(&mut self, member: &MemberRow, rule: &str, period: NaiveDate) -> Result<Option<String>, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT state FROM loyalty_progress WHERE customer_id = ?1 AND member_id = ?2 AND rule_id = ?3 \
                 AND period_start = ?4",
            )?
            .query_row(params![member.customer.to_string(), member.member.to_string(), rule, day_text(period)], |r| {
                r.get(0)
            })
            .optional()?)
    }

    fn redemption(&mut self, id: &str) -> Result<Option<RedemptionRow>, StoreError> {
        let row = self
            .tx
            .prepare_cached(
                "SELECT customer_id, redemption_id, member_id, programme_key, reward_id, points, status, allocation, \
                 created_at FROM loyalty_redemptions WHERE redemption_id = ?1",
            )?
            .query_row([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, i64>(8)?,
                ))
            })
            .optional()?;
        row.map(|(customer, id, member, programme, reward, points, status, allocation, created)| {
            Ok(RedemptionRow {
                customer: parse_id(&customer)?,
                id,
                member: parse_id(&member)?,
                programme,
                reward,
                points,
                status: RedemptionStatus::parse(&status)?,
                allocation: serde_json::from_str(&allocation).map_err(|e| StoreError::Database(e.to_string()))?,
                created_at: from_micros(created),
            })
        })
        .transpose()
    }

    fn root_of(&mut self, customer: CustomerId) -> Result<Option<CustomerId>, StoreError> {
        let row: Option<Option<String>> = self
            .tx
            .query_row("SELECT merged_into FROM customers WHERE customer_id = ?1", [customer.to_string()], |r| r.get(0))
            .optional()?;
        Ok(match row {
            None => None,
            Some(None) => Some(customer),
            Some(Some(survivor)) => Some(parse_id(&survivor)?),
        })
    }

    fn attach_card(&mut self, customer: CustomerId, card: &Identifier) -> Result<Option<String>, StoreError> {
        let privacy = self.privacy.ok_or_else(|| StoreError::Database("no keys on this connection".into()))?;
        let token = privacy.keyring.token(card);
        let key = seal::data_key_of(&privacy.keyring, customer, |missing| super::read_data_keys(self.tx, missing))?;
        let value = StoredValue::of(&privacy.classes, card, customer, &key);
        let inserted = self.tx.execute(
            "INSERT OR IGNORE INTO identifiers (identifier, kind, customer_id, created_at, value, sealed) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                token.to_string(),
                token.kind().as_str(),
                customer.to_string(),
                micros(chrono::Utc::now()),
                value.clear(),
                value.sealed()
            ],
        )?;
        Ok((inserted == 1).then(|| token.to_string()))
    }

    fn segments_of(&mut self, root: CustomerId) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT s.name FROM segment_members m JOIN segments s ON s.segment_id = m.segment_id \
             WHERE m.customer_id = ?1 ORDER BY s.name",
        )?;
        let names = stmt.query_map([root.to_string()], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
        Ok(names)
    }

    fn recipient(&mut self, customer: CustomerId) -> Result<Option<Recipient>, StoreError> {
        let privacy = self.privacy.ok_or_else(|| StoreError::Database("no keys on this connection".into()))?;
        let Some(root) = self.root_of(customer)? else { return Ok(None) };
        let row: Option<(String, Option<Vec<u8>>)> = self
            .tx
            .prepare_cached("SELECT profile, sealed FROM customers WHERE customer_id = ?1")?
            .query_row([root.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((profile, sealed)) = row else { return Ok(None) };
        let mut profile: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&profile).unwrap_or_default();
        let keys = seal::data_keys(&privacy.keyring, &[root], |missing| super::read_data_keys(self.tx, missing))?;
        seal::open_profile(&mut profile, sealed.as_deref(), keys.get(&root))?;
        let rows = self
            .tx
            .prepare_cached(
                "SELECT identifier, value, sealed, shared FROM identifiers WHERE customer_id = ?1 AND kind = 'email' \
                 ORDER BY created_at",
            )?
            .query_map([root.to_string()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, bool>(3)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        let email = super::open_identifiers(self.tx, privacy, rows)?
            .into_iter()
            .find(|(_, shared)| !shared)
            .map(|(identifier, _)| identifier.value().to_string());
        Ok(Some(Recipient { customer: root, email, profile }))
    }

    fn reservations_before(
        &mut self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<crate::store::loyalty::Reservation>, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT redemption_id, programme_key, reward_id, created_at FROM loyalty_redemptions \
             WHERE status = 'reserved' AND created_at <= ?1 ORDER BY created_at, redemption_id",
        )?;
        let rows = stmt
            .query_map([micros(before)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, from_micros(r.get(3)?))))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn reserved_rewards(&mut self, customers: &[CustomerId]) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT programme_key, reward_id FROM loyalty_redemptions WHERE customer_id = ?1 AND status = 'reserved'",
        )?;
        let mut rewards = Vec::new();
        for customer in customers {
            let rows = stmt.query_map([customer.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rewards.extend(rows.collect::<Result<Vec<(String, String)>, _>>()?);
        }
        rewards.sort();
        Ok(rewards)
    }
}

/// One membership by id.
pub(super) fn member(conn: &Connection, id: MemberId) -> Result<Option<MemberRow>, StoreError> {
    conn.prepare_cached(&format!("SELECT {MEMBER_COLUMNS} FROM loyalty_members m WHERE m.member_id = ?1"))?
        .query_row([id.to_string()], member_row)
        .optional()?
        .map(to_member)
        .transpose()
}

/// Active memberships of a person (a profile, its survivor, and the profiles merged into it).
pub(super) fn members_of(conn: &Connection, root: CustomerId) -> Result<Vec<MemberRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MEMBER_COLUMNS} FROM loyalty_members m WHERE m.status = 'active' AND (m.customer_id = ?1 \
         OR m.customer_id IN (SELECT customer_id FROM customers WHERE merged_into = ?1)) ORDER BY m.member_id"
    ))?;
    let rows = stmt.query_map([root.to_string()], member_row)?.collect::<Result<Vec<_>, _>>()?;
    rows.into_iter().map(to_member).collect()
}

/// The card numbers behind card tokens.
pub(super) fn card_numbers(
    conn: &Connection,
    privacy: &Privacy,
    tokens: Vec<String>,
) -> Result<HashMap<String, String>, StoreError> {
    let values = super::reveal(conn, privacy, tokens.clone())?;
    Ok(tokens.into_iter().zip(values).map(|(t, v)| (t, v.strip_prefix("card:").unwrap_or(&v).to_string())).collect())
}

/// A member's own entries (its side of every transaction), oldest first.
pub(super) fn entries(conn: &Connection, row: &MemberRow) -> Result<Vec<StatementEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT tx_id, kind, points, rule, message_id, reason, expires_on, actor, created_at FROM loyalty_entries \
         WHERE member_id = ?2 AND account = 'member' AND customer_id = ?1 ORDER BY created_at, tx_id, leg",
    )?;
    let rows = stmt
        .query_map(params![row.customer.to_string(), row.member.to_string()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, i64>(8)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(tx_id, kind, points, rule, message_id, reason, expires, actor, created)| {
            Ok(StatementEntry {
                tx_id,
                kind,
                points,
                rule,
                message_id,
                reason: serde_json::from_str::<Reason>(&reason)
                    .map_err(|e| StoreError::Database(format!("bad stored reason: {e}")))?,
                expires_on: expires.as_deref().map(parse_day).transpose()?,
                actor,
                created_at: from_micros(created),
            })
        })
        .collect()
}

/// Members holding lots whose expiry day has come.
pub(super) fn members_with_due_lots(
    conn: &Connection,
    day: NaiveDate,
    limit: usize,
) -> Result<Vec<MemberId>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT member_id FROM loyalty_lots WHERE remaining > 0 AND expires_on <= ?1 LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![day_text(day), limit as i64], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    rows.iter().map(|m| parse_id(m)).collect()
}

/// Check the ledger's invariants over the whole database.
pub(super) fn check(conn: &Connection) -> Result<LedgerCheck, StoreError> {
    let total: i64 = conn.query_row("SELECT COALESCE(SUM(points), 0) FROM loyalty_entries", [], |r| r.get(0))?;
    let unbalanced = conn
        .prepare("SELECT tx_id FROM loyalty_entries GROUP BY tx_id HAVING SUM(points) <> 0")?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let rows = conn
        .prepare(
            // Each table summed once by member (see the PostgreSQL engine).
            "SELECT m.member_id, m.balance, COALESCE(e.points, 0), COALESCE(l.remaining, 0) \
             FROM loyalty_members m \
             LEFT JOIN (SELECT member_id, SUM(points) AS points FROM loyalty_entries WHERE account = 'member' \
             GROUP BY member_id) e ON e.member_id = m.member_id \
             LEFT JOIN (SELECT member_id, SUM(remaining) AS remaining FROM loyalty_lots GROUP BY member_id) l \
             ON l.member_id = m.member_id",
        )?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(crate::store::loyalty::ledger_check(total, unbalanced, rows))
}

/// The raw figures of a programme's report.
pub(super) fn report(conn: &Connection, programme: &str, since: Option<NaiveDate>) -> Result<ReportRows, StoreError> {
    let since = since.map(day_text).unwrap_or_default();
    let members = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(balance), 0) FROM loyalty_members WHERE programme_key = ?1 AND status = 'active'",
        [programme],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?)),
    )?;
    let expiring = conn
        .prepare(
            "SELECT COALESCE(substr(l.expires_on, 1, 7), 'never') AS month, SUM(l.remaining) FROM loyalty_lots l \
             JOIN loyalty_members m ON m.customer_id = l.customer_id AND m.member_id = l.member_id \
             WHERE m.programme_key = ?1 AND l.remaining > 0 GROUP BY month ORDER BY month",
        )?
        .query_map([programme], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let by_rule = conn
        .prepare(
            "SELECT kind, rule, SUM(CASE WHEN points > 0 THEN points ELSE 0 END), \
             SUM(CASE WHEN points < 0 THEN -points ELSE 0 END) FROM loyalty_entries WHERE programme_key = ?1 AND account = 'member' \
             AND day >= ?2 GROUP BY kind, rule ORDER BY kind, rule",
        )?
        .query_map(params![programme, since], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let by_store = conn
        .prepare(
            "SELECT store, SUM(CASE WHEN points > 0 AND kind <> 'merge' THEN points ELSE 0 END), \
             SUM(CASE WHEN points < 0 AND kind IN ('redemption', 'refund') THEN -points ELSE 0 END) \
             FROM loyalty_entries WHERE programme_key = ?1 AND account = 'member' AND day >= ?2 \
             GROUP BY store ORDER BY store",
        )?
        .query_map(params![programme, since], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ReportRows { members, expiring, by_rule, by_store })
}

/// Members whose tier must be reviewed on `day`: a downgrade due, or a tier
/// in a programme whose review date it is.
pub(super) fn members_to_review(
    conn: &Connection,
    day: NaiveDate,
    reviewing: &[String],
) -> Result<Vec<MemberId>, StoreError> {
    let mut ids: Vec<String> = conn
        .prepare_cached(
            "SELECT member_id FROM loyalty_members WHERE status = 'active' AND downgrade_on IS NOT NULL \
             AND downgrade_on <= ?1",
        )?
        .query_map([day_text(day)], |r| r.get(0))?
        .collect::<Result<Vec<_>, _>>()?;
    for programme in reviewing {
        let tiered = conn
            .prepare_cached(
                "SELECT member_id FROM loyalty_members WHERE status = 'active' AND tier IS NOT NULL \
                 AND programme_key = ?1",
            )?
            .query_map([programme], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        ids.extend(tiered);
    }
    ids.sort();
    ids.dedup();
    ids.iter().map(|m| parse_id(m)).collect()
}

/// A member's badges: badge, rule, day won.
pub(super) fn badges(conn: &Connection, row: &MemberRow) -> Result<Vec<(String, String, NaiveDate)>, StoreError> {
    let rows = conn
        .prepare_cached("SELECT badge, rule_id, day FROM loyalty_badges WHERE customer_id = ?1 AND member_id = ?2 ORDER BY day, badge")?
        .query_map(params![row.customer.to_string(), row.member.to_string()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter().map(|(b, rule, d)| Ok((b, rule, parse_day(&d)?))).collect()
}
