//! Computed traits: facts about a customer kept up to date event by event, so reads
//! never scan the log. Every update here is commutative, so the order in which
//! events arrive (late, out of order, merged) does not change the result, and a
//! rebuild from the log equals the incremental values.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::channel::Channel;
use crate::money::MinorUnits;

/// The facts of one event that traits depend on.
#[derive(Debug, Clone, PartialEq)]
pub struct TraitInput<'a> {
    /// When it happened.
    pub timestamp: DateTime<Utc>,
    /// The sender's message id, which breaks ties between equal timestamps.
    pub message_id: &'a str,
    /// The touchpoint.
    pub channel: Channel,
    /// The store, if any.
    pub store: Option<&'a str>,
    /// Money effect: an order (positive) or a refund (negative), in the
    /// organisation's currency.
    pub order: Option<OrderEffect>,
}

/// What an order-related event does to revenue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderEffect {
    /// A completed order of this amount.
    Completed(MinorUnits),
    /// A refund of this amount.
    Refunded(MinorUnits),
}

/// Lifetime traits of one customer. Instants serialise as microseconds since
/// the epoch, so every encoding (JSON on PostgreSQL, compact binary on SQLite)
/// keeps them small and exact.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputedTraits {
    /// Earliest event.
    #[serde(with = "chrono::serde::ts_microseconds_option")]
    pub first_seen: Option<DateTime<Utc>>,
    /// Latest event.
    #[serde(with = "chrono::serde::ts_microseconds_option")]
    pub last_seen: Option<DateTime<Utc>>,
    /// Message id of the latest event (tie-break for `last_channel`).
    pub last_message_id: Option<String>,
    /// Channel of the latest event.
    pub last_channel: Option<Channel>,
    /// Every channel used, as bits (`Channel::bit`).
    pub channel_bits: u32,
    /// Number of events.
    pub event_count: i64,
    /// Number of completed orders.
    pub order_count: i64,
    /// Number of refunds.
    pub refund_count: i64,
    /// Revenue net of refunds, in minor units of the organisation's currency.
    pub revenue_minor: MinorUnits,
    /// Earliest completed order.
    #[serde(with = "chrono::serde::ts_microseconds_option")]
    pub first_order_at: Option<DateTime<Utc>>,
    /// Latest completed order.
    #[serde(with = "chrono::serde::ts_microseconds_option")]
    pub last_order_at: Option<DateTime<Utc>>,
    /// Events per store, from which the favourite store is read.
    pub store_events: BTreeMap<String, i64>,
}

impl ComputedTraits {
    /// Fold one event in.
    pub fn apply(&mut self, event: &TraitInput<'_>) {
        self.event_count += 1;
        self.first_seen = Some(self.first_seen.map_or(event.timestamp, |t| t.min(event.timestamp)));
        // Ties on (timestamp, messageId), such as one message sent through two
        // sources, are broken by the channel so that arrival order never matters.
        let newer = match (self.last_seen, self.last_message_id.as_deref(), self.last_channel) {
            (Some(seen), Some(id), Some(channel)) => {
                (event.timestamp, event.message_id, event.channel) > (seen, id, channel)
            }
            _ => true,
        };
        if newer {
            self.last_seen = Some(event.timestamp);
            self.last_message_id = Some(event.message_id.to_string());
            self.last_channel = Some(event.channel);
        }
        self.channel_bits |= event.channel.bit();
        if let Some(store) = event.store {
            *self.store_events.entry(store.to_string()).or_default() += 1;
        }
        match event.order {
            Some(OrderEffect::Completed(amount)) => {
                self.order_count += 1;
                self.revenue_minor += amount;
                self.first_order_at = Some(self.first_order_at.map_or(event.timestamp, |t| t.min(event.timestamp)));
                self.last_order_at = Some(self.last_order_at.map_or(event.timestamp, |t| t.max(event.timestamp)));
            }
            Some(OrderEffect::Refunded(amount)) => {
                self.refund_count += 1;
                self.revenue_minor -= amount;
            }
            None => {}
        }
    }

    /// Fold another customer's traits in (a merge): the result equals folding both
    /// customers' events into one.
    pub fn absorb(&mut self, other: &ComputedTraits) {
        self.event_count += other.event_count;
        self.order_count += other.order_count;
        self.refund_count += other.refund_count;
        self.revenue_minor += other.revenue_minor;
        self.channel_bits |= other.channel_bits;
        self.first_seen = min_option(self.first_seen, other.first_seen);
        self.first_order_at = min_option(self.first_order_at, other.first_order_at);
        self.last_order_at = self.last_order_at.max(other.last_order_at);
        let other_newer = match (other.last_seen, &other.last_message_id, self.last_seen, &self.last_message_id) {
            (Some(theirs), Some(their_id), Some(ours), Some(our_id)) => {
                (theirs, their_id, other.last_channel) > (ours, our_id, self.last_channel)
            }
            (Some(_), _, None, _) => true,
            _ => false,
        };
        if other_newer {
            self.last_seen = other.last_seen;
            self.last_message_id = other.last_message_id.clone();
            self.last_channel = other.last_channel;
        }
        for (store, count) in &other.store_events {
            *self.store_events.entry(store.clone()).or_default() += count;
        }
    }

    /// Every channel used.
    pub fn channels(&self) -> Vec<Channel> {
        Channel::from_bits(self.channel_bits)
    }

    /// The store with the most events (ties go to the first name in order).
    pub fn favourite_store(&self) -> Option<&str> {
        self.store_events.iter().max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0))).map(|(store, _)| store.as_str())
    }

    /// Mean completed-order value, in minor units, rounded down.
    pub fn average_basket_minor(&self) -> Option<MinorUnits> {
        (self.order_count > 0).then(|| self.revenue_minor / self.order_count)
    }
}

fn min_option<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Orders and revenue of one customer on one day of the organisation's calendar:
/// the unit from which rolling windows are read "as of now".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayTotals {
    /// The day, in the organisation's time zone.
    pub day: NaiveDate,
    /// Completed orders that day.
    pub orders: i64,
    /// Net revenue that day, minor units.
    pub revenue_minor: MinorUnits,
}

/// Rolling-window traits as of a given day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowTraits {
    /// Orders in the last 30 days (today included).
    pub orders_30d: i64,
    /// Orders in the last 90 days.
    pub orders_90d: i64,
    /// Orders in the last 365 days.
    pub orders_365d: i64,
    /// Net revenue in the last 90 days.
    pub revenue_90d_minor: MinorUnits,
    /// Net revenue in the last 365 days.
    pub revenue_365d_minor: MinorUnits,
}

impl WindowTraits {
    /// Sum the day totals that fall in each window ending on `today`.
    pub fn as_of(today: NaiveDate, days: &[DayTotals]) -> WindowTraits {
        let mut windows = WindowTraits::default();
        for totals in days {
            let age = (today - totals.day).num_days();
            if !(0..365).contains(&age) {
                continue;
            }
            windows.orders_365d += totals.orders;
            windows.revenue_365d_minor += totals.revenue_minor;
            if age < 90 {
                windows.orders_90d += totals.orders;
                windows.revenue_90d_minor += totals.revenue_minor;
            }
            if age < 30 {
                windows.orders_30d += totals.orders;
            }
        }
        windows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn input<'a>(ts: &str, id: &'a str, channel: Channel, order: Option<OrderEffect>) -> TraitInput<'a> {
        TraitInput { timestamp: at(ts), message_id: id, channel, store: None, order }
    }

    #[test]
    fn a_late_event_does_not_move_the_last_channel() {
        let mut traits = ComputedTraits::default();
        traits.apply(&input("2026-03-02T10:00:00Z", "b", Channel::Store, None));
        traits.apply(&input("2026-03-01T10:00:00Z", "a", Channel::Web, None));
        assert_eq!(traits.last_channel, Some(Channel::Store));
        assert_eq!(traits.first_seen, Some(at("2026-03-01T10:00:00Z")));
        assert_eq!(traits.channels(), vec![Channel::Web, Channel::Store]);
    }

    #[test]
    fn arrival_order_does_not_change_the_traits() {
        let events = [
            input("2026-03-01T10:00:00Z", "a", Channel::Web, Some(OrderEffect::Completed(1000))),
            input("2026-03-01T10:00:00Z", "b", Channel::App, None),
            input("2026-03-05T10:00:00Z", "c", Channel::Store, Some(OrderEffect::Refunded(250))),
        ];
        let mut forward = ComputedTraits::default();
        events.iter().for_each(|e| forward.apply(e));
        let mut backward = ComputedTraits::default();
        events.iter().rev().for_each(|e| backward.apply(e));
        assert_eq!(forward, backward);
        assert_eq!(forward.revenue_minor, 750);
        assert_eq!(forward.average_basket_minor(), Some(750));
    }

    #[test]
    fn absorbing_equals_folding_both_event_streams() {
        let mine = [input("2026-01-01T00:00:00Z", "a", Channel::Web, Some(OrderEffect::Completed(500)))];
        let theirs = [
            input("2026-02-01T00:00:00Z", "b", Channel::Store, None),
            input("2025-12-01T00:00:00Z", "c", Channel::Email, Some(OrderEffect::Completed(300))),
        ];
        let mut merged = ComputedTraits::default();
        mine.iter().for_each(|e| merged.apply(e));
        let mut other = ComputedTraits::default();
        theirs.iter().for_each(|e| other.apply(e));
        merged.absorb(&other);
        let mut all = ComputedTraits::default();
        mine.iter().chain(theirs.iter()).for_each(|e| all.apply(e));
        assert_eq!(merged, all);
    }

    #[test]
    fn traits_survive_their_stored_encodings() {
        let mut traits = ComputedTraits::default();
        traits.apply(&TraitInput {
            store: Some("nantes"),
            ..input("2026-03-01T10:00:00.123456Z", "a", Channel::Store, Some(OrderEffect::Completed(990)))
        });
        let json = serde_json::to_string(&traits).unwrap();
        assert_eq!(serde_json::from_str::<ComputedTraits>(&json).unwrap(), traits);
    }

    #[test]
    fn windows_are_read_as_of_a_day_and_expire_with_time() {
        let day = |s: &str| s.parse::<NaiveDate>().unwrap();
        let days = [
            DayTotals { day: day("2026-01-01"), orders: 1, revenue_minor: 100 },
            DayTotals { day: day("2026-03-15"), orders: 2, revenue_minor: 300 },
        ];
        let march = WindowTraits::as_of(day("2026-03-20"), &days);
        assert_eq!((march.orders_30d, march.orders_90d, march.revenue_90d_minor), (2, 3, 400));
        let april_end = WindowTraits::as_of(day("2026-04-14"), &days);
        assert_eq!((april_end.orders_30d, april_end.orders_90d), (0, 2));
    }

    #[test]
    fn the_favourite_store_has_the_most_events() {
        let mut traits = ComputedTraits::default();
        for store in ["nantes", "lyon", "lyon"] {
            traits
                .apply(&TraitInput { store: Some(store), ..input("2026-01-01T00:00:00Z", "x", Channel::Store, None) });
        }
        assert_eq!(traits.favourite_store(), Some("lyon"));
    }
}
