//! The rows a batch of messages writes on PostgreSQL, column by column for
//! `unnest`: its events, its customers' day totals and profiles, and its
//! message claims. A transaction may hold them back (`BatchRows::into_owned`)
//! to send them with the ledger's rows in one statement.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDate, Utc};
use postgres::types::ToSql;

use super::statements::{OneTrip, Sql};
use crate::store::ingest::Changes;
use crate::store::StoreError;

/// A statement's parameters.
pub(super) type Params<'p> = Vec<&'p (dyn ToSql + Sync)>;

const CLAIM_MESSAGES: &str = "INSERT INTO message_ids (source, message_id, customer_id, event_id, received_at) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) ON CONFLICT DO NOTHING";

const ADD_DAY_TOTALS: &str = "INSERT INTO customer_days (customer_id, day, orders, revenue_minor) \
     SELECT * FROM unnest($1::text[], $2::date[], $3::int8[], $4::int8[]) \
     ON CONFLICT (customer_id, day) DO UPDATE SET orders = customer_days.orders + excluded.orders, \
     revenue_minor = customer_days.revenue_minor + excluded.revenue_minor";

/// An unchanged profile is sent as NULL and kept as stored. The `= ANY` lets
/// a generic plan probe the key index (`GENERIC_PLANS`).
const UPDATE_CUSTOMERS: &str =
    "UPDATE customers c SET profile = COALESCE(u.p::jsonb, c.profile), traits = u.t::jsonb, \
     updated_at = statement_timestamp(), sealed = CASE WHEN u.changed THEN u.s ELSE c.sealed END \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::bytea[]) AS u(id, p, t, changed, s) \
     WHERE c.customer_id = u.id AND c.customer_id = ANY($1)";

const INSERT_EVENTS: &str = "INSERT INTO events (customer_id, event_id, source, message_id, type, name, channel, ts, \
     received_at, sent_at, original_timestamp, user_id, anonymous_id, store, order_id, amount_minor, currency, \
     properties, context, traits, extra, identifiers, sealed) \
     SELECT c, e, s, m, k, n, ch, ts, r, sa, o, u, a, st, oi, am, cu, p::jsonb, cx::jsonb, t::jsonb, x::jsonb, i::jsonb, se \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
     $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[], $12::text[], $13::text[], \
     $14::text[], $15::text[], $16::int8[], $17::text[], $18::text[], $19::text[], $20::text[], $21::text[], \
     $22::text[], $23::bytea[]) AS u(c, e, s, m, k, n, ch, ts, r, sa, o, u, a, st, oi, am, cu, p, cx, t, x, i, se)";

/// The rows of one batch's messages (different tables, so they can share a statement).
pub(super) struct BatchRows<'a> {
    events: EventColumns<'a>,
    days: DayColumns,
    customers: CustomerColumns<'a>,
    claims: ClaimColumns<'a>,
}

impl<'a> BatchRows<'a> {
    /// The rows `changes` writes, borrowing its texts.
    pub(super) fn of(changes: &'a Changes<'a>) -> Self {
        BatchRows {
            events: EventColumns::of(changes),
            days: DayColumns::of(changes),
            customers: CustomerColumns::of(changes),
            claims: ClaimColumns::of(changes),
        }
    }

    /// The same rows with their own copies of the texts, to be written once
    /// the batch they came from is gone.
    pub(super) fn into_owned(self) -> BatchRows<'static> {
        BatchRows {
            events: self.events.into_owned(),
            days: self.days,
            customers: self.customers.into_owned(),
            claims: self.claims.into_owned(),
        }
    }

    /// Add every row's statement to `trip`, the message claims last: the
    /// statement's row count is then theirs (`check_claims`).
    pub(super) fn add_to<'p>(&'p self, trip: &mut OneTrip<'p>) {
        let params = [self.events.params(), self.days.params(), self.customers.params(), self.claims.params()];
        for (sql, params) in [INSERT_EVENTS, ADD_DAY_TOTALS, UPDATE_CUSTOMERS, CLAIM_MESSAGES].into_iter().zip(&params)
        {
            if let Some(params) = params {
                trip.add(sql, params);
            }
        }
    }

    /// Whether a statement that ends with the claims (`add_to`) and wrote
    /// `written` rows inserted every claim: if not, another writer claimed one
    /// of the batch's messages meanwhile.
    pub(super) fn claims_complete(&self, written: u64) -> bool {
        let claimed = self.claims.message_ids.len();
        claimed == 0 || written as usize == claimed
    }

    /// `claims_complete`, as the lost race it reports.
    pub(super) fn check_claims(&self, written: u64) -> Result<(), StoreError> {
        if self.claims_complete(written) {
            Ok(())
        } else {
            Err(StoreError::Race)
        }
    }

    /// Write every row in one statement; the rows it wrote, as `claims_complete` counts them.
    pub(super) fn send(&self, sql: &mut impl Sql) -> Result<u64, postgres::Error> {
        let mut trip = OneTrip::default();
        self.add_to(&mut trip);
        match trip.sql() {
            Some(text) => sql.execute(&text, &trip.params),
            None => Ok(0),
        }
    }

    /// Write every row in one statement.
    pub(super) fn write(&self, sql: &mut impl Sql) -> Result<(), StoreError> {
        let written = self.send(sql)?;
        self.check_claims(written)
    }

    /// Before a batch's merges move day totals and identifiers: the claims,
    /// the events and the day totals, statement by statement.
    pub(super) fn write_before_merges(&self, sql: &mut impl Sql) -> Result<(), StoreError> {
        if let Some(params) = self.claims.params() {
            self.check_claims(sql.execute(CLAIM_MESSAGES, &params)?)?;
        }
        for (text, params) in [(INSERT_EVENTS, self.events.params()), (ADD_DAY_TOTALS, self.days.params())] {
            if let Some(params) = params {
                sql.execute(text, &params)?;
            }
        }
        Ok(())
    }

    /// After a batch's merges: the profiles and traits of the customers it touched.
    pub(super) fn write_profiles(&self, sql: &mut impl Sql) -> Result<(), StoreError> {
        if let Some(params) = self.customers.params() {
            sql.execute(UPDATE_CUSTOMERS, &params)?;
        }
        Ok(())
    }
}

/// Texts that own their data.
fn owned<B: ?Sized + ToOwned + 'static>(column: Vec<Cow<'_, B>>) -> Vec<Cow<'static, B>> {
    column.into_iter().map(|text| Cow::Owned(text.into_owned())).collect()
}

/// Optional texts that own their data.
fn owned_opt<B: ?Sized + ToOwned + 'static>(column: Vec<Option<Cow<'_, B>>>) -> Vec<Option<Cow<'static, B>>> {
    column.into_iter().map(|text| text.map(|t| Cow::Owned(t.into_owned()))).collect()
}

/// The batch's message claims, sorted (concurrent batches insert in one order).
struct ClaimColumns<'a> {
    sources: Vec<Cow<'a, str>>,
    message_ids: Vec<Cow<'a, str>>,
    customers: Vec<String>,
    events: Vec<String>,
    ats: Vec<DateTime<Utc>>,
}

impl<'a> ClaimColumns<'a> {
    fn of(changes: &Changes<'a>) -> Self {
        let mut sorted: Vec<_> = changes.message_claims.iter().collect();
        sorted.sort_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)));
        ClaimColumns {
            sources: sorted.iter().map(|c| Cow::Borrowed(c.0)).collect(),
            message_ids: sorted.iter().map(|c| Cow::Borrowed(c.1)).collect(),
            customers: sorted.iter().map(|c| c.2.to_string()).collect(),
            events: sorted.iter().map(|c| c.3.to_string()).collect(),
            ats: sorted.iter().map(|c| c.4).collect(),
        }
    }

    fn into_owned(self) -> ClaimColumns<'static> {
        ClaimColumns {
            sources: owned(self.sources),
            message_ids: owned(self.message_ids),
            customers: self.customers,
            events: self.events,
            ats: self.ats,
        }
    }

    fn params(&self) -> Option<Params<'_>> {
        let params: Params<'_> = vec![&self.sources, &self.message_ids, &self.customers, &self.events, &self.ats];
        (!self.sources.is_empty()).then_some(params)
    }
}

/// Day totals to add.
struct DayColumns {
    customers: Vec<String>,
    days: Vec<NaiveDate>,
    orders: Vec<i64>,
    revenue: Vec<i64>,
}

impl DayColumns {
    fn of(changes: &Changes<'_>) -> Self {
        let deltas = &changes.day_deltas;
        DayColumns {
            customers: deltas.iter().map(|d| d.0.to_string()).collect(),
            days: deltas.iter().map(|d| d.1).collect(),
            orders: deltas.iter().map(|d| d.2).collect(),
            revenue: deltas.iter().map(|d| d.3).collect(),
        }
    }

    fn params(&self) -> Option<Params<'_>> {
        let params: Params<'_> = vec![&self.customers, &self.days, &self.orders, &self.revenue];
        (!self.customers.is_empty()).then_some(params)
    }
}

/// Profiles and traits of the customers the batch touched.
struct CustomerColumns<'a> {
    ids: Vec<String>,
    profiles: Vec<Option<Cow<'a, str>>>,
    traits: Vec<String>,
    changed: Vec<bool>,
    sealed: Vec<Option<Cow<'a, [u8]>>>,
}

impl<'a> CustomerColumns<'a> {
    fn of(changes: &'a Changes<'_>) -> Self {
        let stored: Vec<Option<&crate::store::seal::StoredProfile>> =
            changes.customers.iter().map(|(id, _)| changes.profiles.get(id)).collect();
        CustomerColumns {
            ids: changes.customers.iter().map(|(id, _)| id.to_string()).collect(),
            profiles: stored.iter().map(|p| p.map(|(clear, _)| Cow::Borrowed(clear.as_str()))).collect(),
            traits: changes
                .customers
                .iter()
                .map(|(_, s)| serde_json::to_string(&s.traits).unwrap_or_default())
                .collect(),
            changed: stored.iter().map(Option::is_some).collect(),
            sealed: stored.iter().map(|p| p.and_then(|(_, s)| s.as_deref().map(Cow::Borrowed))).collect(),
        }
    }

    fn into_owned(self) -> CustomerColumns<'static> {
        CustomerColumns {
            ids: self.ids,
            profiles: owned_opt(self.profiles),
            traits: self.traits,
            changed: self.changed,
            sealed: owned_opt(self.sealed),
        }
    }

    fn params(&self) -> Option<Params<'_>> {
        let params: Params<'_> = vec![&self.ids, &self.profiles, &self.traits, &self.changed, &self.sealed];
        (!self.ids.is_empty()).then_some(params)
    }
}

/// The batch's events, column by column.
struct EventColumns<'a> {
    customer: Vec<String>,
    event_id: Vec<String>,
    source: Vec<Cow<'a, str>>,
    message_id: Vec<Cow<'a, str>>,
    kind: Vec<&'static str>,
    name: Vec<Option<Cow<'a, str>>>,
    channel: Vec<&'static str>,
    ts: Vec<DateTime<Utc>>,
    received: Vec<DateTime<Utc>>,
    sent: Vec<Option<DateTime<Utc>>>,
    original: Vec<Option<DateTime<Utc>>>,
    user_id: Vec<Option<Cow<'a, str>>>,
    anonymous_id: Vec<Option<Cow<'a, str>>>,
    store: Vec<Option<Cow<'a, str>>>,
    order_id: Vec<Option<Cow<'a, str>>>,
    amount: Vec<Option<i64>>,
    currency: Vec<Option<Cow<'a, str>>>,
    properties: Vec<Cow<'a, str>>,
    context: Vec<Cow<'a, str>>,
    traits: Vec<Cow<'a, str>>,
    extra: Vec<Cow<'a, str>>,
    identifiers: Vec<Cow<'a, str>>,
    sealed: Vec<Option<Cow<'a, [u8]>>>,
}

impl<'a> EventColumns<'a> {
    fn of(changes: &'a Changes<'a>) -> Self {
        let events = &changes.events;
        let text = |t: &'a str| Cow::Borrowed(t);
        let maybe = |t: Option<&'a str>| t.map(Cow::Borrowed);
        EventColumns {
            customer: events.iter().map(|e| e.customer_id.to_string()).collect(),
            event_id: events.iter().map(|e| e.event_id.to_string()).collect(),
            source: events.iter().map(|e| text(e.source)).collect(),
            message_id: events.iter().map(|e| text(&e.message.message_id)).collect(),
            kind: events.iter().map(|e| e.message.kind.as_str()).collect(),
            name: events.iter().map(|e| maybe(e.message.name.as_deref())).collect(),
            channel: events.iter().map(|e| e.message.channel.as_str()).collect(),
            ts: events.iter().map(|e| e.message.timestamp).collect(),
            received: events.iter().map(|e| e.message.received_at).collect(),
            sent: events.iter().map(|e| e.message.sent_at).collect(),
            original: events.iter().map(|e| e.message.original_timestamp).collect(),
            user_id: events.iter().map(|e| maybe(e.encoded.user_id.as_deref())).collect(),
            anonymous_id: events.iter().map(|e| maybe(e.encoded.anonymous_id.as_deref())).collect(),
            store: events.iter().map(|e| maybe(e.message.store.as_deref())).collect(),
            order_id: events
                .iter()
                .map(|e| maybe(e.message.order.as_ref().and_then(|o| o.order_id.as_deref())))
                .collect(),
            amount: events.iter().map(|e| e.message.order.as_ref().map(|o| o.amount_minor)).collect(),
            currency: events.iter().map(|e| maybe(e.message.order.as_ref().map(|o| o.currency.as_str()))).collect(),
            properties: events.iter().map(|e| text(&e.encoded.properties)).collect(),
            context: events.iter().map(|e| text(&e.encoded.context)).collect(),
            traits: events.iter().map(|e| text(&e.encoded.traits)).collect(),
            extra: events.iter().map(|e| text(&e.encoded.extra)).collect(),
            identifiers: events.iter().map(|e| text(&e.encoded.tokens_json)).collect(),
            sealed: events.iter().map(|e| e.sealed.as_deref().map(Cow::Borrowed)).collect(),
        }
    }

    fn into_owned(self) -> EventColumns<'static> {
        EventColumns {
            customer: self.customer,
            event_id: self.event_id,
            source: owned(self.source),
            message_id: owned(self.message_id),
            kind: self.kind,
            name: owned_opt(self.name),
            channel: self.channel,
            ts: self.ts,
            received: self.received,
            sent: self.sent,
            original: self.original,
            user_id: owned_opt(self.user_id),
            anonymous_id: owned_opt(self.anonymous_id),
            store: owned_opt(self.store),
            order_id: owned_opt(self.order_id),
            amount: self.amount,
            currency: owned_opt(self.currency),
            properties: owned(self.properties),
            context: owned(self.context),
            traits: owned(self.traits),
            extra: owned(self.extra),
            identifiers: owned(self.identifiers),
            sealed: owned_opt(self.sealed),
        }
    }

    fn params(&self) -> Option<Params<'_>> {
        let params: Params<'_> = vec![
            &self.customer,
            &self.event_id,
            &self.source,
            &self.message_id,
            &self.kind,
            &self.name,
            &self.channel,
            &self.ts,
            &self.received,
            &self.sent,
            &self.original,
            &self.user_id,
            &self.anonymous_id,
            &self.store,
            &self.order_id,
            &self.amount,
            &self.currency,
            &self.properties,
            &self.context,
            &self.traits,
            &self.extra,
            &self.identifiers,
            &self.sealed,
        ];
        (!self.customer.is_empty()).then_some(params)
    }
}
