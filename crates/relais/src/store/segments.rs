//! Segments over the store, written once for both engines: the fact table a
//! segment is evaluated on, built from a few bulk reads each engine
//! implements (`FactReads`), and the membership diff.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use relais_domain::consent::{self, ConsentChannel, ConsentFact, Purpose};
use relais_domain::segment::{Column, Fact, FactTable, ScoreColumn, TraitColumn};
use relais_domain::traits::{ComputedTraits, DayTotals, WindowTraits};
use relais_domain::{CustomerId, SegmentId};
use serde_json::{Map, Value};

use super::ingest::IngestSettings;
use super::StoreError;

/// The name of the computed event when a person enters a segment.
pub const SEGMENT_ENTERED: &str = "Segment Entered";
/// The name of the computed event when a person leaves a segment.
pub const SEGMENT_EXITED: &str = "Segment Exited";

/// A saved segment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRecord {
    /// Its id.
    pub id: SegmentId,
    /// Its unique name.
    pub name: String,
    /// Its source in the segment language.
    pub source: String,
    /// What it is for, in words.
    pub description: String,
    /// When it was first saved.
    pub created_at: DateTime<Utc>,
    /// When its source last changed.
    pub updated_at: DateTime<Utc>,
    /// When its memberships were last fully evaluated.
    pub refreshed_at: Option<DateTime<Utc>>,
    /// Its size at the last evaluation.
    pub members: i64,
}

/// What one evaluation changed in a segment's memberships.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MembershipChange {
    /// People who entered.
    pub entered: usize,
    /// People who left.
    pub exited: usize,
    /// Members now.
    pub size: i64,
}

/// One buyer's scores, as a refresh stores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerScore {
    /// The surviving profile.
    pub customer: CustomerId,
    /// Recency score.
    pub r: u8,
    /// Frequency score.
    pub f: u8,
    /// Monetary score.
    pub m: u8,
    /// The RFM group.
    pub group: relais_domain::rfm::RfmGroup,
    /// Expected value over the next 52 weeks, minor units (none when the
    /// models could not be fitted).
    pub clv_minor: Option<i64>,
}

/// What a segment's members did over a period, and their lifetime value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentFigures {
    /// Net revenue of the period, minor units.
    pub revenue_minor: i64,
    /// Sum of the members' expected values, minor units.
    pub clv_sum_minor: i64,
    /// Members with an expected value.
    pub clv_count: i64,
    /// Survey answers of the period: (NPS, CSAT).
    pub answers: Vec<(Option<i64>, Option<i64>)>,
}

/// A segment's size and mean lifetime value on one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// The day, organisation's calendar.
    pub day: NaiveDate,
    /// Members.
    pub members: i64,
    /// Mean expected value of the members, minor units.
    pub clv_mean_minor: Option<i64>,
}

/// A typology as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypologyRecord {
    /// Its id.
    pub id: relais_domain::TypologyId,
    /// Its unique name.
    pub name: String,
    /// The names of its segments, in order.
    pub segments: Vec<String>,
    /// What it is for.
    pub description: String,
    /// When first saved.
    pub created_at: DateTime<Utc>,
    /// When last changed.
    pub updated_at: DateTime<Utc>,
}

/// The name of survey events, whose `nps`, `csat` or `rating` properties
/// give satisfaction.
pub const SURVEY_ANSWERED: &str = "Survey Answered";

/// One stored score row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreRow {
    /// Recency score.
    pub r: i64,
    /// Frequency score.
    pub f: i64,
    /// Monetary score.
    pub m: i64,
    /// The group's name.
    pub group: String,
    /// Expected value over 52 weeks, minor units.
    pub clv: Option<i64>,
}

/// The bulk reads a fact table is built from. Every read returns rows under
/// the surviving profile (merged profiles' rows are mapped to their
/// survivor), for every surviving profile or only those of `only`.
pub(crate) trait FactReads {
    /// Each surviving profile with its traits, and its clear profile when asked.
    fn profiles(
        &mut self,
        only: Option<&[CustomerId]>,
        with_profile: bool,
        each: &mut dyn FnMut(CustomerId, Option<Map<String, Value>>, ComputedTraits),
    ) -> Result<(), StoreError>;
    /// Day totals from `since` on.
    fn day_totals(
        &mut self,
        only: Option<&[CustomerId]>,
        since: NaiveDate,
    ) -> Result<Vec<(CustomerId, DayTotals)>, StoreError>;
    /// How many events named `name` each profile has from `since` on.
    fn event_counts(
        &mut self,
        only: Option<&[CustomerId]>,
        name: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(CustomerId, i64)>, StoreError>;
    /// Consent facts (purpose, channel, granted, at).
    fn consents(&mut self, only: Option<&[CustomerId]>) -> Result<Vec<ConsentRow>, StoreError>;
    /// Stored scores.
    fn scores(&mut self, only: Option<&[CustomerId]>) -> Result<Vec<(CustomerId, ScoreRow)>, StoreError>;
}

/// A consent fact as read for segments: the survivor, purpose, channel,
/// granted, when.
pub(crate) type ConsentRow = (CustomerId, String, String, bool, DateTime<Utc>);

enum Owned {
    Int(i64),
    Text(String),
    Missing,
}

/// Build the fact table of `columns` for every surviving profile (or those of
/// `only` that survive), as of `now` in the organisation's calendar.
pub(crate) fn build_facts(
    reads: &mut dyn FactReads,
    columns: &[Column],
    only: Option<&[CustomerId]>,
    settings: &IngestSettings,
    now: DateTime<Utc>,
) -> Result<(Vec<CustomerId>, FactTable), StoreError> {
    let today = settings.day_of(now);
    let needs_windows = columns.iter().any(|c| {
        matches!(
            c,
            Column::Trait(
                TraitColumn::Orders30d
                    | TraitColumn::Orders90d
                    | TraitColumn::Orders365d
                    | TraitColumn::Revenue90d
                    | TraitColumn::Revenue365d
            )
        )
    });
    let mut days: HashMap<CustomerId, Vec<DayTotals>> = HashMap::new();
    if needs_windows {
        for (customer, totals) in reads.day_totals(only, today - Duration::days(364))? {
            days.entry(customer).or_default().push(totals);
        }
    }
    let mut counts: Vec<HashMap<CustomerId, i64>> = Vec::new();
    for column in columns {
        let map = match column {
            Column::EventCount { name, days } => {
                // The window counts whole days of the organisation's calendar, today included.
                let first_day = today - Duration::days(days - 1);
                let since = first_day
                    .and_hms_opt(0, 0, 0)
                    .and_then(|t| t.and_local_timezone(settings.time_zone).earliest())
                    .map_or(now - Duration::days(*days), |t| t.with_timezone(&Utc));
                reads.event_counts(only, name, since)?.into_iter().collect()
            }
            _ => HashMap::new(),
        };
        counts.push(map);
    }
    let mut consents: HashMap<CustomerId, Vec<ConsentFact>> = HashMap::new();
    if columns.iter().any(|c| matches!(c, Column::Consent(..))) {
        for (customer, purpose, channel, granted, at) in reads.consents(only)? {
            let (Some(purpose), Some(channel)) = (Purpose::parse(&purpose), ConsentChannel::parse(&channel)) else {
                continue;
            };
            consents.entry(customer).or_default().push(ConsentFact {
                purpose,
                channel,
                granted,
                at,
                source: consent::ConsentSource::Paper,
                wording_version: String::new(),
                proof: Default::default(),
            });
        }
    }
    let rfm: HashMap<CustomerId, ScoreRow> = if columns.iter().any(|c| matches!(c, Column::Score(_))) {
        reads.scores(only)?.into_iter().collect()
    } else {
        HashMap::new()
    };
    let with_profile = columns.iter().any(|c| matches!(c, Column::Profile(_)));

    let mut table = FactTable::new(columns);
    let mut customers = Vec::new();
    let mut owned: Vec<Owned> = Vec::with_capacity(columns.len());
    let no_days: Vec<DayTotals> = Vec::new();
    reads.profiles(only, with_profile, &mut |customer, profile, traits| {
        let windows = if needs_windows {
            WindowTraits::as_of(today, days.get(&customer).unwrap_or(&no_days))
        } else {
            WindowTraits::default()
        };
        owned.clear();
        for (i, column) in columns.iter().enumerate() {
            owned.push(match column {
                Column::Trait(t) => trait_fact(*t, &traits, &windows, today, settings),
                Column::ChannelUsed(channel) => Owned::Int(i64::from(traits.channel_bits & channel.bit() != 0)),
                Column::Profile(paths) => profile.as_ref().map_or(Owned::Missing, |p| profile_fact(p, paths)),
                Column::EventCount { .. } => Owned::Int(counts[i].get(&customer).copied().unwrap_or(0)),
                Column::Consent(purpose, channel) => Owned::Int(i64::from(
                    consents.get(&customer).is_some_and(|facts| consent::may(facts, *purpose, *channel, now)),
                )),
                Column::Score(field) => match rfm.get(&customer) {
                    None => Owned::Missing,
                    Some(row) => match field {
                        ScoreColumn::Group => Owned::Text(row.group.clone()),
                        ScoreColumn::R => Owned::Int(row.r),
                        ScoreColumn::F => Owned::Int(row.f),
                        ScoreColumn::M => Owned::Int(row.m),
                        ScoreColumn::Clv => row.clv.map_or(Owned::Missing, Owned::Int),
                    },
                },
            });
        }
        let row: Vec<Fact<'_>> = owned
            .iter()
            .map(|o| match o {
                Owned::Int(v) => Fact::Int(*v),
                Owned::Text(t) => Fact::Text(t),
                Owned::Missing => Fact::Missing,
            })
            .collect();
        table.push(&row);
        customers.push(customer);
    })?;
    Ok((customers, table))
}

fn trait_fact(
    column: TraitColumn,
    traits: &ComputedTraits,
    windows: &WindowTraits,
    today: NaiveDate,
    settings: &IngestSettings,
) -> Owned {
    let days_since =
        |at: Option<DateTime<Utc>>| at.map_or(Owned::Missing, |t| Owned::Int((today - settings.day_of(t)).num_days()));
    match column {
        TraitColumn::Orders => Owned::Int(traits.order_count),
        TraitColumn::Refunds => Owned::Int(traits.refund_count),
        TraitColumn::Events => Owned::Int(traits.event_count),
        TraitColumn::Revenue => Owned::Int(traits.revenue_minor),
        TraitColumn::AverageBasket => traits.average_basket_minor().map_or(Owned::Missing, Owned::Int),
        TraitColumn::Orders30d => Owned::Int(windows.orders_30d),
        TraitColumn::Orders90d => Owned::Int(windows.orders_90d),
        TraitColumn::Orders365d => Owned::Int(windows.orders_365d),
        TraitColumn::Revenue90d => Owned::Int(windows.revenue_90d_minor),
        TraitColumn::Revenue365d => Owned::Int(windows.revenue_365d_minor),
        TraitColumn::LastChannel => traits.last_channel.map_or(Owned::Missing, |c| Owned::Text(c.as_str().into())),
        TraitColumn::FavouriteStore => traits.favourite_store().map_or(Owned::Missing, |s| Owned::Text(s.into())),
        TraitColumn::DaysSinceLastOrder => days_since(traits.last_order_at),
        TraitColumn::DaysSinceLastSeen => days_since(traits.last_seen),
        TraitColumn::DaysSinceFirstSeen => days_since(traits.first_seen),
    }
}

/// The first path that holds a text or a number.
fn profile_fact(profile: &Map<String, Value>, paths: &[String]) -> Owned {
    for path in paths {
        let mut parts = path.split('.');
        let mut value = parts.next().and_then(|first| profile.get(first));
        for part in parts {
            value = value.and_then(|v| v.get(part));
        }
        match value {
            Some(Value::String(s)) => return Owned::Text(s.clone()),
            Some(Value::Number(n)) => return Owned::Text(n.to_string()),
            Some(Value::Bool(b)) => return Owned::Text(b.to_string()),
            _ => {}
        }
    }
    Owned::Missing
}

/// Who enters and who leaves: `members` against `current`, within `scope`
/// (everyone when `None`). Both lists come back sorted.
pub(crate) fn membership_diff(
    current: &[CustomerId],
    members: &[CustomerId],
    scope: Option<&[CustomerId]>,
) -> (Vec<CustomerId>, Vec<CustomerId>) {
    let scope: Option<HashSet<&CustomerId>> = scope.map(|s| s.iter().collect());
    let in_scope = |c: &CustomerId| scope.as_ref().is_none_or(|s| s.contains(c));
    let now: HashSet<&CustomerId> = members.iter().filter(|c| in_scope(c)).collect();
    let before: HashSet<&CustomerId> = current.iter().filter(|c| in_scope(c)).collect();
    let mut entered: Vec<CustomerId> = now.difference(&before).map(|c| **c).collect();
    let mut exited: Vec<CustomerId> = before.difference(&now).map(|c| **c).collect();
    entered.sort();
    exited.sort();
    (entered, exited)
}

/// The properties of a `Segment Entered` / `Segment Exited` event.
pub(crate) fn membership_event(segment: SegmentId, name: &str) -> Value {
    serde_json::json!({"segment": name, "segment_id": segment.to_string()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_stays_within_its_scope() {
        let ids: Vec<CustomerId> = (0..4).map(|_| CustomerId::new()).collect();
        let (entered, exited) = membership_diff(&[ids[0], ids[1]], &[ids[1], ids[2]], None);
        assert_eq!((entered, exited), (vec![ids[2]], vec![ids[0]]));
        // Only ids[2] and ids[3] were evaluated: ids[0] stays, whatever `members` says.
        let (entered, exited) = membership_diff(&[ids[0], ids[3]], &[ids[2]], Some(&[ids[2], ids[3]]));
        assert_eq!((entered, exited), (vec![ids[2]], vec![ids[3]]));
    }

    #[test]
    fn profile_attributes_are_read_by_path_first_hit_wins() {
        let profile: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"city": "Paris", "address": {"city": "Lyon"}, "zip": 69001}))
                .unwrap();
        let text =
            |paths: &[&str]| match profile_fact(&profile, &paths.iter().map(|p| p.to_string()).collect::<Vec<_>>()) {
                Owned::Text(t) => Some(t),
                _ => None,
            };
        assert_eq!(text(&["address.city", "city"]).as_deref(), Some("Lyon"));
        assert_eq!(text(&["address.town", "city"]).as_deref(), Some("Paris"));
        assert_eq!(text(&["zip"]).as_deref(), Some("69001"));
        assert_eq!(text(&["address"]), None);
    }
}
