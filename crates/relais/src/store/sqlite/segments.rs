//! Segments on SQLite: the bulk reads facts are built from, saved segments
//! and memberships. Writes run on the writer thread.

use chrono::{DateTime, NaiveDate, Utc};
use relais_domain::segment::{Column, FactTable};
use relais_domain::traits::{ComputedTraits, DayTotals};
use relais_domain::{CustomerId, EventId, SegmentId};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{Map, Value};

use super::{decode_traits, from_micros, micros, parse_id, SqliteEngine};
use crate::store::segments::{
    build_facts, membership_diff, membership_event, ConsentRow, CustomerScore, FactReads, MembershipChange, ScoreRow,
    SegmentFigures, SegmentRecord, Snapshot, TypologyRecord, SEGMENT_ENTERED, SEGMENT_EXITED, SURVEY_ANSWERED,
};
use crate::store::StoreError;

/// The filter on the surviving profile `{survivor}` when only some profiles
/// are read: the ids travel as one JSON parameter, never in the SQL text.
fn only_clause(survivor: &str, only: Option<&[CustomerId]>, param: usize) -> String {
    match only {
        Some(_) => format!(" AND {survivor} IN (SELECT value FROM json_each(?{param}))"),
        None => String::new(),
    }
}

fn only_json(only: Option<&[CustomerId]>) -> String {
    serde_json::to_string(&only.unwrap_or_default().iter().map(|c| c.to_string()).collect::<Vec<_>>())
        .unwrap_or_else(|_| "[]".into())
}

/// Every row of a query, each read by `read`.
fn read_all<T>(
    mut rows: rusqlite::Rows<'_>,
    read: impl Fn(&rusqlite::Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(read(row)?);
    }
    Ok(out)
}

struct Reads<'c> {
    conn: &'c Connection,
}

impl FactReads for Reads<'_> {
    fn profiles(
        &mut self,
        only: Option<&[CustomerId]>,
        with_profile: bool,
        each: &mut dyn FnMut(CustomerId, Option<Map<String, Value>>, ComputedTraits),
    ) -> Result<(), StoreError> {
        let sql = format!(
            "SELECT customer_id, {}, traits FROM customers WHERE merged_into IS NULL{} ORDER BY customer_id",
            if with_profile { "profile" } else { "NULL" },
            only_clause("customer_id", only, 1)
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let json = only_json(only);
        let mut rows = if only.is_some() { stmt.query([&json])? } else { stmt.query([])? };
        while let Some(row) = rows.next()? {
            let customer: CustomerId = parse_id(&row.get::<_, String>(0)?)?;
            let profile = row.get::<_, Option<String>>(1)?.map(|text| serde_json::from_str(&text).unwrap_or_default());
            let traits = decode_traits(row.get::<_, Option<Vec<u8>>>(2)?.as_deref())?;
            each(customer, profile, traits);
        }
        Ok(())
    }

    fn day_totals(
        &mut self,
        only: Option<&[CustomerId]>,
        since: NaiveDate,
    ) -> Result<Vec<(CustomerId, DayTotals)>, StoreError> {
        let sql = format!(
            "SELECT customer_id, day, orders, revenue_minor FROM customer_days WHERE day >= ?1{}",
            only_clause("customer_id", only, 2)
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let since = since.format("%Y-%m-%d").to_string();
        let json = only_json(only);
        let mut rows = if only.is_some() { stmt.query(params![since, json])? } else { stmt.query(params![since])? };
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let day: String = row.get(1)?;
            let day = NaiveDate::parse_from_str(&day, "%Y-%m-%d")
                .map_err(|_| StoreError::Database(format!("bad stored day `{day}`")))?;
            out.push((
                parse_id(&row.get::<_, String>(0)?)?,
                DayTotals { day, orders: row.get(2)?, revenue_minor: row.get(3)? },
            ));
        }
        Ok(out)
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
             WHERE e.name = ?1 AND e.ts >= ?2{} GROUP BY survivor",
            only_clause("COALESCE(c.merged_into, c.customer_id)", only, 3)
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let json = only_json(only);
        let mut rows = if only.is_some() {
            stmt.query(params![name, micros(since), json])?
        } else {
            stmt.query(params![name, micros(since)])?
        };
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push((parse_id(&row.get::<_, String>(0)?)?, row.get(1)?));
        }
        Ok(out)
    }

    fn consents(&mut self, only: Option<&[CustomerId]>) -> Result<Vec<ConsentRow>, StoreError> {
        let sql = format!(
            "SELECT COALESCE(c.merged_into, c.customer_id), k.purpose, k.channel, k.granted, k.at FROM consents k \
             JOIN customers c ON c.customer_id = k.customer_id WHERE true{}",
            only_clause("COALESCE(c.merged_into, c.customer_id)", only, 1)
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let json = only_json(only);
        let mut rows = if only.is_some() { stmt.query([&json])? } else { stmt.query([])? };
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push((
                parse_id(&row.get::<_, String>(0)?)?,
                row.get(1)?,
                row.get(2)?,
                row.get::<_, i64>(3)? != 0,
                from_micros(row.get(4)?),
            ));
        }
        Ok(out)
    }

    fn scores(&mut self, only: Option<&[CustomerId]>) -> Result<Vec<(CustomerId, ScoreRow)>, StoreError> {
        let sql = format!(
            "SELECT customer_id, r, f, m, rfm_group, clv_minor FROM customer_scores WHERE true{}",
            only_clause("customer_id", only, 1)
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let json = only_json(only);
        let mut rows = if only.is_some() { stmt.query([&json])? } else { stmt.query([])? };
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push((
                parse_id(&row.get::<_, String>(0)?)?,
                ScoreRow { r: row.get(1)?, f: row.get(2)?, m: row.get(3)?, group: row.get(4)?, clv: row.get(5)? },
            ));
        }
        Ok(out)
    }
}

const SEGMENT_COLUMNS: &str = "segment_id, name, source, description, created_at, updated_at, refreshed_at, members";

fn segment_row(row: &rusqlite::Row<'_>) -> Result<SegmentRecord, StoreError> {
    Ok(SegmentRecord {
        id: parse_id(&row.get::<_, String>(0)?)?,
        name: row.get(1)?,
        source: row.get(2)?,
        description: row.get(3)?,
        created_at: from_micros(row.get(4)?),
        updated_at: from_micros(row.get(5)?),
        refreshed_at: row.get::<_, Option<i64>>(6)?.map(from_micros),
        members: row.get(7)?,
    })
}

fn segment_by_name(conn: &Connection, name: &str) -> Result<Option<SegmentRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {SEGMENT_COLUMNS} FROM segments WHERE name = ?1"))?;
    let mut rows = stmt.query([name])?;
    rows.next()?.map(segment_row).transpose()
}

/// One segment's diff within `scope`, written in the caller's transaction.
fn sync_one(
    tx: &Connection,
    segment: &SegmentRecord,
    scope: Option<&[CustomerId]>,
    members: &[CustomerId],
    now: DateTime<Utc>,
) -> Result<MembershipChange, StoreError> {
    let id = segment.id.to_string();
    let exists: Option<i64> =
        tx.query_row("SELECT 1 FROM segments WHERE segment_id = ?1", [&id], |r| r.get(0)).optional()?;
    if exists.is_none() {
        return Err(StoreError::NotFound);
    }
    let current: Vec<CustomerId> = {
        let sql = format!(
            "SELECT customer_id FROM segment_members WHERE segment_id = ?1{}",
            only_clause("customer_id", scope, 2)
        );
        let mut stmt = tx.prepare(&sql)?;
        let json = only_json(scope);
        let mut rows = if scope.is_some() { stmt.query(params![id, json])? } else { stmt.query([&id])? };
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(parse_id(&row.get::<_, String>(0)?)?);
        }
        out
    };
    let (entered, exited) = membership_diff(&current, members, scope);
    let properties = membership_event(segment.id, &segment.name).to_string();
    let mut add = tx.prepare_cached(
        "INSERT OR IGNORE INTO segment_members (customer_id, segment_id, entered_at) VALUES (?1, ?2, ?3)",
    )?;
    let mut remove = tx.prepare_cached("DELETE FROM segment_members WHERE customer_id = ?1 AND segment_id = ?2")?;
    let mut event = tx.prepare_cached(
        "INSERT INTO events (customer_id, event_id, source, message_id, type, name, channel, ts, \
         received_at, properties, context, traits, extra, identifiers, computed) \
         VALUES (?1, ?2, 'relais', ?2, 'track', ?3, 'other', ?4, ?4, ?5, '{}', '{}', '{}', '[]', 1)",
    )?;
    for customer in &entered {
        add.execute(params![customer.to_string(), id, micros(now)])?;
        event.execute(params![
            customer.to_string(),
            EventId::new().to_string(),
            SEGMENT_ENTERED,
            micros(now),
            properties
        ])?;
    }
    for customer in &exited {
        remove.execute(params![customer.to_string(), id])?;
        event.execute(params![
            customer.to_string(),
            EventId::new().to_string(),
            SEGMENT_EXITED,
            micros(now),
            properties
        ])?;
    }
    let size: i64 = if scope.is_none() {
        let size: i64 =
            tx.query_row("SELECT count(*) FROM segment_members WHERE segment_id = ?1", [&id], |r| r.get(0))?;
        tx.execute(
            "UPDATE segments SET members = ?2, refreshed_at = ?3 WHERE segment_id = ?1",
            params![id, size, micros(now)],
        )?;
        size
    } else {
        // The live path adjusts the size instead of counting a large segment again.
        let delta = entered.len() as i64 - exited.len() as i64;
        tx.query_row(
            "UPDATE segments SET members = members + ?2 WHERE segment_id = ?1 RETURNING members",
            params![id, delta],
            |r| r.get(0),
        )?
    };
    Ok(MembershipChange { entered: entered.len(), exited: exited.len(), size })
}

impl SqliteEngine {
    pub(super) fn put_segment(&self, record: &SegmentRecord) -> Result<SegmentRecord, StoreError> {
        let record = record.clone();
        self.write(false, move |conn| {
            let tx = conn.transaction()?;
            if let Some(old) = segment_by_name(&tx, &record.name)? {
                tx.execute(
                    "UPDATE segments SET source = ?2, description = ?3, updated_at = ?4 WHERE segment_id = ?1",
                    params![old.id.to_string(), record.source, record.description, micros(record.updated_at)],
                )?;
            } else {
                tx.execute(
                    "INSERT INTO segments (segment_id, name, source, description, created_at, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        record.id.to_string(),
                        record.name,
                        record.source,
                        record.description,
                        micros(record.created_at),
                        micros(record.updated_at)
                    ],
                )?;
            }
            let stored = segment_by_name(&tx, &record.name)?
                .ok_or_else(|| StoreError::Database("the segment just saved is missing".into()))?;
            tx.commit()?;
            Ok(stored)
        })
    }

    /// Every row of a parameterless query on a reader connection.
    fn read_table<T>(
        &self,
        sql: &str,
        read: impl Fn(&rusqlite::Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        self.readers.with(|conn| {
            let mut stmt = conn.prepare(sql)?;
            let rows = read_all(stmt.query([])?, read);
            rows
        })
    }

    pub(super) fn all_segments(&self) -> Result<Vec<SegmentRecord>, StoreError> {
        self.read_table(&format!("SELECT {SEGMENT_COLUMNS} FROM segments ORDER BY name"), segment_row)
    }

    pub(super) fn delete_segment(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write(false, move |conn| {
            let tx = conn.transaction()?;
            let Some(old) = segment_by_name(&tx, &name)? else { return Ok(false) };
            tx.execute("DELETE FROM segment_members WHERE segment_id = ?1", [old.id.to_string()])?;
            tx.execute("DELETE FROM segment_snapshots WHERE segment_id = ?1", [old.id.to_string()])?;
            tx.execute("DELETE FROM segments WHERE segment_id = ?1", [old.id.to_string()])?;
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
        self.readers.with(|conn| {
            // One read transaction, so every column sees the same state.
            conn.execute_batch("BEGIN")?;
            let built = build_facts(&mut Reads { conn }, columns, only, &self.settings, now);
            conn.execute_batch("COMMIT")?;
            built
        })
    }

    pub(super) fn sync_segments(
        &self,
        evaluated: &[(SegmentRecord, Vec<CustomerId>)],
        scope: Option<&[CustomerId]>,
        now: DateTime<Utc>,
    ) -> Result<Vec<MembershipChange>, StoreError> {
        let (evaluated, scope) = (evaluated.to_vec(), scope.map(<[_]>::to_vec));
        self.write(false, move |conn| {
            let tx = conn.transaction()?;
            let mut changes = Vec::with_capacity(evaluated.len());
            for (segment, members) in &evaluated {
                changes.push(sync_one(&tx, segment, scope.as_deref(), members, now)?);
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
        self.readers.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT customer_id, entered_at FROM segment_members WHERE segment_id = ?1 AND customer_id > ?2 \
                 ORDER BY customer_id LIMIT ?3",
            )?;
            let after = after.map(|c| c.to_string()).unwrap_or_default();
            let mut rows = stmt.query(params![segment.to_string(), after, limit as i64])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push((parse_id(&row.get::<_, String>(0)?)?, from_micros(row.get(1)?)));
            }
            Ok(out)
        })
    }

    pub(super) fn overlap(&self, a: SegmentId, b: SegmentId) -> Result<i64, StoreError> {
        self.readers.with(|conn| {
            Ok(conn.query_row(
                "SELECT count(*) FROM segment_members x JOIN segment_members y \
                 ON y.customer_id = x.customer_id AND y.segment_id = ?2 WHERE x.segment_id = ?1",
                params![a.to_string(), b.to_string()],
                |r| r.get(0),
            )?)
        })
    }

    pub(super) fn put_scores(&self, scores: &[CustomerScore], at: DateTime<Utc>) -> Result<(), StoreError> {
        let scores = scores.to_vec();
        self.write(false, move |conn| {
            let tx = conn.transaction()?;
            tx.execute("DELETE FROM customer_scores", [])?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO customer_scores (customer_id, r, f, m, rfm_group, clv_minor, scored_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for s in &scores {
                    insert.execute(params![
                        s.customer.to_string(),
                        s.r,
                        s.f,
                        s.m,
                        s.group.as_str(),
                        s.clv_minor,
                        micros(at)
                    ])?;
                }
            }
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
        let day = |d: NaiveDate| d.format("%Y-%m-%d").to_string();
        self.readers.with(|conn| {
            let id = segment.to_string();
            let revenue_minor: i64 = conn.query_row(
                "SELECT COALESCE(sum(d.revenue_minor), 0) FROM segment_members m \
                 JOIN customer_days d ON d.customer_id = m.customer_id \
                 WHERE m.segment_id = ?1 AND d.day >= ?2 AND d.day <= ?3",
                params![id, day(first_day), day(last_day)],
                |r| r.get(0),
            )?;
            let (clv_sum_minor, clv_count): (i64, i64) = conn.query_row(
                "SELECT COALESCE(sum(s.clv_minor), 0), count(s.clv_minor) FROM segment_members m \
                 JOIN customer_scores s ON s.customer_id = m.customer_id WHERE m.segment_id = ?1",
                [&id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let number = |path: &str| {
                format!(
                    "CASE WHEN json_type(e.properties, '{path}') IN ('integer', 'real') \
                     THEN CAST(json_extract(e.properties, '{path}') AS INTEGER) END"
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
                 JOIN segment_members m ON m.customer_id = COALESCE(c.merged_into, c.customer_id) AND m.segment_id = ?1 \
                 WHERE e.name = '{SURVEY_ANSWERED}' AND e.ts >= ?2 AND e.ts < ?3",
                number("$.nps"),
                number("$.csat"),
                number("$.rating")
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let answers = stmt
                .query_map(params![id, micros(from), micros(to)], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(SegmentFigures { revenue_minor, clv_sum_minor, clv_count, answers })
        })
    }

    pub(super) fn put_snapshot(
        &self,
        segment: SegmentId,
        snapshot: &Snapshot,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let snapshot = *snapshot;
        self.write(false, move |conn| {
            conn.execute(
                "INSERT INTO segment_snapshots (segment_id, day, members, clv_mean_minor, taken_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (segment_id, day) DO UPDATE SET \
                 members = excluded.members, clv_mean_minor = excluded.clv_mean_minor, taken_at = excluded.taken_at",
                params![
                    segment.to_string(),
                    snapshot.day.format("%Y-%m-%d").to_string(),
                    snapshot.members,
                    snapshot.clv_mean_minor,
                    micros(at)
                ],
            )?;
            Ok(())
        })
    }

    pub(super) fn all_snapshots(&self, segment: SegmentId) -> Result<Vec<Snapshot>, StoreError> {
        self.readers.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT day, members, clv_mean_minor FROM segment_snapshots WHERE segment_id = ?1 ORDER BY day",
            )?;
            let rows = stmt
                .query_map([segment.to_string()], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, Option<i64>>(2)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(day, members, clv_mean_minor)| {
                    let day = NaiveDate::parse_from_str(&day, "%Y-%m-%d")
                        .map_err(|_| StoreError::Database(format!("bad stored day `{day}`")))?;
                    Ok(Snapshot { day, members, clv_mean_minor })
                })
                .collect()
        })
    }

    pub(super) fn put_typology(&self, record: &TypologyRecord) -> Result<TypologyRecord, StoreError> {
        let record = record.clone();
        self.write(false, move |conn| {
            let segments = serde_json::to_string(&record.segments).map_err(|e| StoreError::Database(e.to_string()))?;
            conn.execute(
                "INSERT INTO typologies (typology_id, name, segments, description, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name) DO UPDATE SET segments = excluded.segments, \
                 description = excluded.description, updated_at = excluded.updated_at",
                params![
                    record.id.to_string(),
                    record.name,
                    segments,
                    record.description,
                    micros(record.created_at),
                    micros(record.updated_at)
                ],
            )?;
            typology_by_name(conn, &record.name)?
                .ok_or_else(|| StoreError::Database("the typology just saved is missing".into()))
        })
    }

    pub(super) fn all_typologies(&self) -> Result<Vec<TypologyRecord>, StoreError> {
        self.read_table(&format!("SELECT {TYPOLOGY_COLUMNS} FROM typologies ORDER BY name"), typology_row)
    }

    pub(super) fn delete_typology(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write(false, move |conn| Ok(conn.execute("DELETE FROM typologies WHERE name = ?1", [&name])? > 0))
    }
}

const TYPOLOGY_COLUMNS: &str = "typology_id, name, segments, description, created_at, updated_at";

fn typology_row(row: &rusqlite::Row<'_>) -> Result<TypologyRecord, StoreError> {
    let segments: String = row.get(2)?;
    Ok(TypologyRecord {
        id: parse_id(&row.get::<_, String>(0)?)?,
        name: row.get(1)?,
        segments: serde_json::from_str(&segments)
            .map_err(|e| StoreError::Database(format!("bad stored typology: {e}")))?,
        description: row.get(3)?,
        created_at: from_micros(row.get(4)?),
        updated_at: from_micros(row.get(5)?),
    })
}

fn typology_by_name(conn: &Connection, name: &str) -> Result<Option<TypologyRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {TYPOLOGY_COLUMNS} FROM typologies WHERE name = ?1"))?;
    let mut rows = stmt.query([name])?;
    rows.next()?.map(typology_row).transpose()
}
