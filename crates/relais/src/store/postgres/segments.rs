//! Segments on PostgreSQL: the bulk reads facts are built from, saved
//! segments and memberships. Profile ids travel as `text[]` parameters.

use chrono::{DateTime, NaiveDate, Utc};
use postgres::{GenericClient, IsolationLevel};
use relais_domain::segment::{Column, FactTable};
use relais_domain::traits::{ComputedTraits, DayTotals};
use relais_domain::{CustomerId, EventId, SegmentId};
use serde_json::{Map, Value};

use super::{parse_id, PgConn, PgEngine, Sql};
use crate::store::segments::{
    build_facts, membership_diff, membership_event, ConsentRow, CustomerScore, FactReads, MembershipChange, ScoreRow,
    SegmentFigures, SegmentRecord, Snapshot, TypologyRecord, SEGMENT_ENTERED, SEGMENT_EXITED, SURVEY_ANSWERED,
};
use crate::store::StoreError;

fn ids(only: Option<&[CustomerId]>) -> Vec<String> {
    only.unwrap_or_default().iter().map(|c| c.to_string()).collect()
}

/// `AND {survivor} = ANY($n)` when only some profiles are read.
fn only_clause(survivor: &str, only: Option<&[CustomerId]>, param: usize) -> String {
    match only {
        Some(_) => format!(" AND {survivor} = ANY(${param})"),
        None => String::new(),
    }
}

struct Reads<'t, C: GenericClient> {
    client: &'t mut C,
}

impl<C: GenericClient> FactReads for Reads<'_, C> {
    fn profiles(
        &mut self,
        only: Option<&[CustomerId]>,
        with_profile: bool,
        each: &mut dyn FnMut(CustomerId, Option<Map<String, Value>>, ComputedTraits),
    ) -> Result<(), StoreError> {
        let sql = format!(
            "SELECT customer_id, {}, traits FROM customers WHERE merged_into IS NULL{} ORDER BY customer_id",
            if with_profile { "profile" } else { "NULL::jsonb" },
            only_clause("customer_id", only, 1)
        );
        let list = ids(only);
        let rows = if only.is_some() { self.client.query(&sql, &[&list])? } else { self.client.query(&sql, &[])? };
        for row in rows {
            let profile = match row.get::<_, Option<Value>>(1) {
                Some(Value::Object(map)) => Some(map),
                Some(_) => Some(Map::new()),
                None => None,
            };
            let traits: ComputedTraits = serde_json::from_value(row.get(2)).unwrap_or_default();
            each(parse_id(row.get::<_, &str>(0))?, profile, traits);
        }
        Ok(())
    }

    fn day_totals(
        &mut self,
        only: Option<&[CustomerId]>,
        since: NaiveDate,
    ) -> Result<Vec<(CustomerId, DayTotals)>, StoreError> {
        let sql = format!(
            "SELECT customer_id, day, orders, revenue_minor FROM customer_days WHERE day >= $1{}",
            only_clause("customer_id", only, 2)
        );
        let list = ids(only);
        let rows = if only.is_some() {
            self.client.query(&sql, &[&since, &list])?
        } else {
            self.client.query(&sql, &[&since])?
        };
        rows.iter()
            .map(|r| {
                Ok((
                    parse_id(r.get::<_, &str>(0))?,
                    DayTotals { day: r.get(1), orders: r.get(2), revenue_minor: r.get(3) },
                ))
            })
            .collect()
    }

    fn event_counts(
        &mut self,
        only: Option<&[CustomerId]>,
        name: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(CustomerId, i64)>, StoreError> {
        let sql = format!(
            "SELECT COALESCE(c.merged_into, c.customer_id) AS survivor, count(*) FROM events e \
             JOIN customers c ON c.customer_id = e.customer_id \
             WHERE e.name = $1 AND e.ts >= $2{} GROUP BY survivor",
            only_clause("COALESCE(c.merged_into, c.customer_id)", only, 3)
        );
        let list = ids(only);
        let rows = if only.is_some() {
            self.client.query(&sql, &[&name, &since, &list])?
        } else {
            self.client.query(&sql, &[&name, &since])?
        };
        rows.iter().map(|r| Ok((parse_id(r.get::<_, &str>(0))?, r.get(1)))).collect()
    }

    fn consents(&mut self, only: Option<&[CustomerId]>) -> Result<Vec<ConsentRow>, StoreError> {
        let sql = format!(
            "SELECT COALESCE(c.merged_into, c.customer_id), k.purpose, k.channel, k.granted, k.at FROM consents k \
             JOIN customers c ON c.customer_id = k.customer_id WHERE true{}",
            only_clause("COALESCE(c.merged_into, c.customer_id)", only, 1)
        );
        let list = ids(only);
        let rows = if only.is_some() { self.client.query(&sql, &[&list])? } else { self.client.query(&sql, &[])? };
        rows.iter().map(|r| Ok((parse_id(r.get::<_, &str>(0))?, r.get(1), r.get(2), r.get(3), r.get(4)))).collect()
    }

    fn scores(&mut self, only: Option<&[CustomerId]>) -> Result<Vec<(CustomerId, ScoreRow)>, StoreError> {
        let sql = format!(
            "SELECT customer_id, r, f, m, rfm_group, clv_minor FROM customer_scores WHERE true{}",
            only_clause("customer_id", only, 1)
        );
        let list = ids(only);
        let rows = if only.is_some() { self.client.query(&sql, &[&list])? } else { self.client.query(&sql, &[])? };
        rows.iter()
            .map(|r| {
                Ok((
                    parse_id(r.get::<_, &str>(0))?,
                    ScoreRow {
                        r: i64::from(r.get::<_, i16>(1)),
                        f: i64::from(r.get::<_, i16>(2)),
                        m: i64::from(r.get::<_, i16>(3)),
                        group: r.get(4),
                        clv: r.get(5),
                    },
                ))
            })
            .collect()
    }
}

const SEGMENT_COLUMNS: &str = "segment_id, name, source, description, created_at, updated_at, refreshed_at, members";

fn segment_row(row: &postgres::Row) -> Result<SegmentRecord, StoreError> {
    Ok(SegmentRecord {
        id: parse_id(row.get::<_, &str>(0))?,
        name: row.get(1),
        source: row.get(2),
        description: row.get(3),
        created_at: row.get(4),
        updated_at: row.get(5),
        refreshed_at: row.get(6),
        members: row.get(7),
    })
}

fn segment_by_name(
    client: &mut impl GenericClient,
    name: &str,
    lock: bool,
) -> Result<Option<SegmentRecord>, StoreError> {
    let sql =
        format!("SELECT {SEGMENT_COLUMNS} FROM segments WHERE name = $1{}", if lock { " FOR UPDATE" } else { "" });
    client.query_opt(&sql, &[&name])?.as_ref().map(segment_row).transpose()
}

/// One segment's diff within `scope`, written in the caller's transaction.
fn sync_one(
    tx: &mut postgres::Transaction<'_>,
    segment: &SegmentRecord,
    scope: Option<&[CustomerId]>,
    members: &[CustomerId],
    now: DateTime<Utc>,
) -> Result<MembershipChange, StoreError> {
    let id = segment.id.to_string();
    let list = ids(scope);
    let sql = format!(
        "SELECT customer_id FROM segment_members WHERE segment_id = $1{}",
        only_clause("customer_id", scope, 2)
    );
    let rows = if scope.is_some() { tx.query(&sql, &[&id, &list])? } else { tx.query(&sql, &[&id])? };
    let current: Vec<CustomerId> = rows.iter().map(|r| parse_id(r.get::<_, &str>(0))).collect::<Result<_, _>>()?;
    let (entered, exited) = membership_diff(&current, members, scope);
    let entered: Vec<String> = entered.iter().map(|c| c.to_string()).collect();
    let exited: Vec<String> = exited.iter().map(|c| c.to_string()).collect();
    // Without locking the segment: a concurrent sync that got there first
    // makes these rows conflict or vanish, and only the rows this transaction
    // really changed are announced, so an entry is never announced twice.
    let entered: Vec<String> = tx
        .query(
            "INSERT INTO segment_members (customer_id, segment_id, entered_at) \
             SELECT c, $2, $3 FROM unnest($1::text[]) AS c ON CONFLICT DO NOTHING RETURNING customer_id",
            &[&entered, &id, &now],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let exited: Vec<String> = tx
        .query(
            "DELETE FROM segment_members WHERE segment_id = $2 AND customer_id = ANY($1) RETURNING customer_id",
            &[&exited, &id],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let properties = membership_event(segment.id, &segment.name);
    for (customers, name) in [(&entered, SEGMENT_ENTERED), (&exited, SEGMENT_EXITED)] {
        let event_ids: Vec<String> = customers.iter().map(|_| EventId::new().to_string()).collect();
        tx.execute(
            "INSERT INTO events (customer_id, event_id, source, message_id, type, name, channel, ts, \
             received_at, properties, context, traits, extra, identifiers, computed) \
             SELECT c, e, 'relais', e, 'track', $3, 'other', $4, $4, $5, '{}', '{}', '{}', '[]', TRUE \
             FROM unnest($1::text[], $2::text[]) AS t(c, e)",
            &[customers, &event_ids, &name, &now, &properties],
        )?;
    }
    let size = if scope.is_none() {
        let size: i64 = tx.query_one("SELECT count(*) FROM segment_members WHERE segment_id = $1", &[&id])?.get(0);
        tx.query_opt(
            "UPDATE segments SET members = $2, refreshed_at = $3 WHERE segment_id = $1 RETURNING members",
            &[&id, &size, &now],
        )?
    } else {
        let delta = entered.len() as i64 - exited.len() as i64;
        tx.query_opt(
            "UPDATE segments SET members = members + $2 WHERE segment_id = $1 RETURNING members",
            &[&id, &delta],
        )?
    };
    // A segment deleted meanwhile: the transaction rolls back.
    let size: i64 = size.ok_or(StoreError::NotFound)?.get(0);
    Ok(MembershipChange { entered: entered.len(), exited: exited.len(), size })
}

impl PgEngine {
    pub(super) fn put_segment(&self, record: &SegmentRecord) -> Result<SegmentRecord, StoreError> {
        self.retrying(|client: &mut PgConn| {
            let mut tx = client.transaction()?;
            tx.execute(
                "INSERT INTO segments (segment_id, name, source, description, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO UPDATE SET source = excluded.source, \
                 description = excluded.description, updated_at = excluded.updated_at",
                &[
                    &record.id.to_string(),
                    &record.name,
                    &record.source,
                    &record.description,
                    &record.created_at,
                    &record.updated_at,
                ],
            )?;
            let stored = segment_by_name(&mut tx, &record.name, false)?
                .ok_or_else(|| StoreError::Database("the segment just saved is missing".into()))?;
            tx.commit()?;
            Ok(stored)
        })
    }

    pub(super) fn all_segments(&self) -> Result<Vec<SegmentRecord>, StoreError> {
        self.pool.with(|conn| {
            let client = &mut conn.cached();
            client
                .query(&format!("SELECT {SEGMENT_COLUMNS} FROM segments ORDER BY name"), &[])?
                .iter()
                .map(segment_row)
                .collect()
        })
    }

    pub(super) fn delete_segment(&self, name: &str) -> Result<bool, StoreError> {
        self.retrying(|client: &mut PgConn| {
            let mut tx = client.transaction()?;
            let Some(old) = segment_by_name(&mut tx, name, true)? else { return Ok(false) };
            tx.execute("DELETE FROM segment_members WHERE segment_id = $1", &[&old.id.to_string()])?;
            tx.execute("DELETE FROM segment_snapshots WHERE segment_id = $1", &[&old.id.to_string()])?;
            tx.execute("DELETE FROM segments WHERE segment_id = $1", &[&old.id.to_string()])?;
            tx.commit()?;
            Ok(true)
        })
    }

    pub(super) fn facts(
        &self,
        columns: &[Column],
        only: Option<&[CustomerId]>,
        now: DateTime<Utc>,
    ) -> Result<(Vec<CustomerId>, FactTable), StoreError> {
        self.pool.with(|client| {
            // One snapshot, so every column sees the same state.
            let mut tx =
                client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start()?;
            let built = build_facts(&mut Reads { client: &mut tx }, columns, only, &self.settings, now)?;
            tx.commit()?;
            Ok(built)
        })
    }

    pub(super) fn sync_segments(
        &self,
        evaluated: &[(SegmentRecord, Vec<CustomerId>)],
        scope: Option<&[CustomerId]>,
        now: DateTime<Utc>,
    ) -> Result<Vec<MembershipChange>, StoreError> {
        // Segment rows are updated in id order, so two syncs never deadlock.
        let mut order: Vec<usize> = (0..evaluated.len()).collect();
        order.sort_by_key(|&i| evaluated[i].0.id);
        self.retrying(|client: &mut PgConn| {
            let mut tx = client.transaction()?;
            let mut changes = vec![MembershipChange::default(); evaluated.len()];
            for &i in &order {
                let (segment, members) = &evaluated[i];
                changes[i] = sync_one(&mut tx, segment, scope, members, now)?;
            }
            tx.commit()?;
            Ok(changes)
        })
    }

    pub(super) fn members_of(
        &self,
        segment: SegmentId,
        after: Option<CustomerId>,
        limit: usize,
    ) -> Result<Vec<(CustomerId, DateTime<Utc>)>, StoreError> {
        self.pool.with(|client| {
            let after = after.map(|c| c.to_string()).unwrap_or_default();
            client
                .query(
                    "SELECT customer_id, entered_at FROM segment_members WHERE segment_id = $1 AND customer_id > $2 \
                     ORDER BY customer_id LIMIT $3",
                    &[&segment.to_string(), &after, &(limit as i64)],
                )?
                .iter()
                .map(|r| Ok((parse_id(r.get::<_, &str>(0))?, r.get(1))))
                .collect()
        })
    }

    pub(super) fn overlap(&self, a: SegmentId, b: SegmentId) -> Result<i64, StoreError> {
        self.pool.with(|client| {
            Ok(client
                .query_one(
                    "SELECT count(*) FROM segment_members x JOIN segment_members y \
                     ON y.customer_id = x.customer_id AND y.segment_id = $2 WHERE x.segment_id = $1",
                    &[&a.to_string(), &b.to_string()],
                )?
                .get(0))
        })
    }

    pub(super) fn put_scores(&self, scores: &[CustomerScore], at: DateTime<Utc>) -> Result<(), StoreError> {
        let customers: Vec<String> = scores.iter().map(|s| s.customer.to_string()).collect();
        let score = |pick: fn(&CustomerScore) -> u8| scores.iter().map(|s| i16::from(pick(s))).collect::<Vec<i16>>();
        let (r, f, m) = (score(|s| s.r), score(|s| s.f), score(|s| s.m));
        let groups: Vec<&str> = scores.iter().map(|s| s.group.as_str()).collect();
        let clv: Vec<Option<i64>> = scores.iter().map(|s| s.clv_minor).collect();
        self.retrying(|client: &mut PgConn| {
            let mut tx = client.transaction()?;
            tx.execute("DELETE FROM customer_scores", &[])?;
            tx.execute(
                "INSERT INTO customer_scores (customer_id, r, f, m, rfm_group, clv_minor, scored_at) \
                 SELECT c, r, f, m, g, v, $7 FROM unnest($1::text[], $2::int2[], $3::int2[], $4::int2[], $5::text[], \
                 $6::int8[]) AS t(c, r, f, m, g, v)",
                &[&customers, &r, &f, &m, &groups, &clv, &at],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    pub(super) fn figures(
        &self,
        segment: SegmentId,
        first_day: NaiveDate,
        last_day: NaiveDate,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<SegmentFigures, StoreError> {
        self.pool.with(|client| {
            let id = segment.to_string();
            let revenue_minor: i64 = client
                .query_one(
                    "SELECT COALESCE(sum(d.revenue_minor), 0)::int8 FROM segment_members m \
                     JOIN customer_days d ON d.customer_id = m.customer_id \
                     WHERE m.segment_id = $1 AND d.day >= $2 AND d.day <= $3",
                    &[&id, &first_day, &last_day],
                )?
                .get(0);
            let row = client.query_one(
                "SELECT COALESCE(sum(s.clv_minor), 0)::int8, count(s.clv_minor) FROM segment_members m \
                 JOIN customer_scores s ON s.customer_id = m.customer_id WHERE m.segment_id = $1",
                &[&id],
            )?;
            let (clv_sum_minor, clv_count): (i64, i64) = (row.get(0), row.get(1));
            let number = |key: &str| {
                format!(
                    "CASE WHEN jsonb_typeof(e.properties -> '{key}') = 'number' \
                     THEN trunc((e.properties ->> '{key}')::numeric)::int8 END"
                )
            };
            // The survey answers of the period through the partial index on
            // `Survey Answered` events (migration 0005), then each answer's
            // person, then their membership: a few thousand lookups rather
            // than every member's events. The event name is a constant of
            // the code written into the text, so the planner can use the index.
            let sql = format!(
                "SELECT {}, COALESCE({}, {}) FROM events e \
                 JOIN customers c ON c.customer_id = e.customer_id \
                 JOIN segment_members m ON m.customer_id = COALESCE(c.merged_into, c.customer_id) AND m.segment_id = $1 \
                 WHERE e.name = '{SURVEY_ANSWERED}' AND e.ts >= $2 AND e.ts < $3",
                number("nps"),
                number("csat"),
                number("rating")
            );
            let answers = client
                .query(&sql, &[&id, &from, &to])?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            Ok(SegmentFigures { revenue_minor, clv_sum_minor, clv_count, answers })
        })
    }

    pub(super) fn put_snapshot(
        &self,
        segment: SegmentId,
        snapshot: &Snapshot,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.pool.with(|client| {
            client.execute(
                "INSERT INTO segment_snapshots (segment_id, day, members, clv_mean_minor, taken_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (segment_id, day) DO UPDATE SET \
                 members = excluded.members, clv_mean_minor = excluded.clv_mean_minor, taken_at = excluded.taken_at",
                &[&segment.to_string(), &snapshot.day, &snapshot.members, &snapshot.clv_mean_minor, &at],
            )?;
            Ok(())
        })
    }

    pub(super) fn all_snapshots(&self, segment: SegmentId) -> Result<Vec<Snapshot>, StoreError> {
        self.pool.with(|client| {
            Ok(client
                .query(
                    "SELECT day, members, clv_mean_minor FROM segment_snapshots WHERE segment_id = $1 ORDER BY day",
                    &[&segment.to_string()],
                )?
                .iter()
                .map(|r| Snapshot { day: r.get(0), members: r.get(1), clv_mean_minor: r.get(2) })
                .collect())
        })
    }

    pub(super) fn put_typology(&self, record: &TypologyRecord) -> Result<TypologyRecord, StoreError> {
        let segments = serde_json::to_string(&record.segments).map_err(|e| StoreError::Database(e.to_string()))?;
        self.pool.with(|client| {
            client.execute(
                "INSERT INTO typologies (typology_id, name, segments, description, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO UPDATE SET segments = excluded.segments, \
                 description = excluded.description, updated_at = excluded.updated_at",
                &[
                    &record.id.to_string(),
                    &record.name,
                    &segments,
                    &record.description,
                    &record.created_at,
                    &record.updated_at,
                ],
            )?;
            let row = client
                .query_one(&format!("SELECT {TYPOLOGY_COLUMNS} FROM typologies WHERE name = $1"), &[&record.name])?;
            typology_row(&row)
        })
    }

    pub(super) fn all_typologies(&self) -> Result<Vec<TypologyRecord>, StoreError> {
        self.pool.with(|client| {
            client
                .query(&format!("SELECT {TYPOLOGY_COLUMNS} FROM typologies ORDER BY name"), &[])?
                .iter()
                .map(typology_row)
                .collect()
        })
    }

    pub(super) fn delete_typology(&self, name: &str) -> Result<bool, StoreError> {
        self.pool.with(|client| Ok(client.execute("DELETE FROM typologies WHERE name = $1", &[&name])? > 0))
    }
}

const TYPOLOGY_COLUMNS: &str = "typology_id, name, segments, description, created_at, updated_at";

fn typology_row(row: &postgres::Row) -> Result<TypologyRecord, StoreError> {
    Ok(TypologyRecord {
        id: parse_id(row.get::<_, &str>(0))?,
        name: row.get(1),
        segments: serde_json::from_str(row.get::<_, &str>(2))
            .map_err(|e| StoreError::Database(format!("bad stored typology: {e}")))?,
        description: row.get(3),
        created_at: row.get(4),
        updated_at: row.get(5),
    })
}
