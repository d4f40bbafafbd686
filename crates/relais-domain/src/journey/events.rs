//! From a stored event log to journeys: which (stage, channel) an event stands
//! for, and where one journey ends and the next begins.
//!
//! Default mapping of the native events (the organisation can replace any entry):
//!
//! | event | stage |
//! |---|---|
//! | `page`, `screen`, `Products Searched`, `Product List Viewed`, `Product Viewed`, `Email Opened` | information |
//! | `Product Added`, `Product Added to Wishlist`, `Cart Viewed`, `Store Visited` | evaluation |
//! | `Checkout Started`, `Checkout Step Viewed`, `Payment Info Entered`, `Coupon Applied` | decision |
//! | `Order Completed` | purchase |
//! | `Review Submitted`, `Product Reviewed`, `Product Shared` | sharing |
//!
//! Other events (identify, group, alias, unmapped tracks, computed events) are
//! not part of a journey. The channel is the event's own channel (web, app,
//! store, call centre, e-mail, catalogue, social…).
//!
//! A customer's mapped events, in time order, are cut into journeys: a journey
//! ends at a purchase (an event at the purchase stage), or when the next event
//! comes more than the inactivity gap after the previous one. Events at stages
//! after the purchase stage (sharing) within the gap after a purchase belong to
//! the journey that purchase ended.

use std::collections::HashMap;

use super::estimate::JourneySet;
use super::JourneyError;

/// Which stage each event stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct StageMap {
    /// Stage of `page` events.
    pub page: Option<String>,
    /// Stage of `screen` events.
    pub screen: Option<String>,
    /// Stage of each `track` event by name.
    pub tracks: HashMap<String, String>,
}

impl Default for StageMap {
    fn default() -> Self {
        let mut tracks = HashMap::new();
        let mut map = |stage: &str, names: &[&str]| {
            for name in names {
                tracks.insert(name.to_string(), stage.to_string());
            }
        };
        map("information", &["Products Searched", "Product List Viewed", "Product Viewed", "Email Opened"]);
        map("evaluation", &["Product Added", "Product Added to Wishlist", "Cart Viewed", "Store Visited"]);
        map("decision", &["Checkout Started", "Checkout Step Viewed", "Payment Info Entered", "Coupon Applied"]);
        map("purchase", &[crate::message::events::ORDER_COMPLETED]);
        map("sharing", &["Review Submitted", "Product Reviewed", "Product Shared"]);
        Self { page: Some("information".into()), screen: Some("information".into()), tracks }
    }
}

impl StageMap {
    /// The stage an event stands for: `kind` is `page`, `screen`, `track`…, `name`
    /// the track's event name.
    pub fn stage_of(&self, kind: &str, name: Option<&str>) -> Option<&str> {
        match kind {
            "page" => self.page.as_deref(),
            "screen" => self.screen.as_deref(),
            "track" => name.and_then(|n| self.tracks.get(n)).map(String::as_str),
            _ => None,
        }
    }
}

/// One stored event, as the journey builder needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEvent<'a> {
    /// The (surviving) customer.
    pub customer: &'a str,
    /// When, in microseconds since the epoch.
    pub at_micros: i64,
    /// `page`, `screen`, `track`…
    pub kind: &'a str,
    /// The track's event name.
    pub name: Option<&'a str>,
    /// The channel it came through.
    pub channel: &'a str,
}

/// Cuts a customer-grouped, time-ordered stream of events into journeys.
#[derive(Debug)]
pub struct JourneyCutter {
    map: StageMap,
    index: HashMap<String, usize>,
    purchase: Option<usize>,
    gap_micros: i64,
    set: JourneySet,
    customer: Option<String>,
    numbered: Option<u64>,
    journey: u64,
    last_at: i64,
    purchased: bool,
    seen: u64,
}

impl JourneyCutter {
    /// A cutter over `stages` (first to last; `purchase_stage` ends a journey)
    /// with an inactivity gap in microseconds.
    pub fn new(
        map: StageMap,
        stages: Vec<String>,
        purchase_stage: &str,
        gap_micros: i64,
    ) -> Result<Self, JourneyError> {
        let purchase = stages.iter().position(|s| s == purchase_stage);
        let index = stages.iter().enumerate().map(|(i, s)| (s.clone(), i)).collect();
        let set = JourneySet::new(stages, Vec::new())?;
        Ok(Self {
            map,
            index,
            purchase,
            gap_micros,
            set,
            customer: None,
            numbered: None,
            journey: 0,
            last_at: i64::MIN,
            purchased: false,
            seen: 0,
        })
    }

    /// Takes the next event (grouped by customer, in time order within one).
    pub fn push(&mut self, event: &LoggedEvent<'_>) -> Result<(), JourneyError> {
        self.seen += 1;
        let Some(position) = self.stage_position(event.kind, event.name) else { return Ok(()) };
        let same_customer = self.customer.as_deref() == Some(event.customer);
        if !same_customer {
            self.customer = Some(event.customer.to_string());
        }
        self.advance(same_customer, event.at_micros, position, event.channel)
    }

    /// The position (in the model's stages) of the stage an event of `kind`
    /// and `name` stands for; `None` when the map has no stage for it or the
    /// model does not list that stage (sharing, by default).
    pub fn stage_position(&self, kind: &str, name: Option<&str>) -> Option<usize> {
        self.map.stage_of(kind, name).and_then(|stage| self.index.get(stage)).copied()
    }

    /// Takes the next event already placed at its stage (`stage_position`),
    /// with customers numbered by the caller: grouped by customer, in time
    /// order within one. The same cut as `push`, without a string per event.
    pub fn push_staged(
        &mut self,
        customer: u64,
        at_micros: i64,
        position: usize,
        channel: &str,
    ) -> Result<(), JourneyError> {
        self.seen += 1;
        let same_customer = self.numbered == Some(customer);
        self.numbered = Some(customer);
        self.advance(same_customer, at_micros, position, channel)
    }

    fn advance(
        &mut self,
        same_customer: bool,
        at_micros: i64,
        position: usize,
        channel: &str,
    ) -> Result<(), JourneyError> {
        let after_purchase = self.purchase.is_some_and(|p| position > p);
        let within_gap = at_micros.saturating_sub(self.last_at) <= self.gap_micros;
        if !(same_customer && within_gap && (!self.purchased || after_purchase)) {
            self.journey += 1;
            self.purchased = false;
        }
        if self.purchase == Some(position) {
            self.purchased = true;
        }
        self.last_at = at_micros;
        // Journeys are numbered from 1 as they are cut; the set counts from 0.
        self.set.push_at(self.seen, (self.journey - 1) as usize, position, channel, self.seen)
    }

    /// The journeys cut so far.
    pub fn finish(self) -> JourneySet {
        self.set
    }
}

/// Cuts events into journeys (see [`JourneyCutter`]).
pub fn journeys_from_events<'a>(
    events: impl IntoIterator<Item = LoggedEvent<'a>>,
    map: &StageMap,
    stages: Vec<String>,
    purchase_stage: &str,
    gap_micros: i64,
) -> Result<JourneySet, JourneyError> {
    let mut cutter = JourneyCutter::new(map.clone(), stages, purchase_stage, gap_micros)?;
    for event in events {
        cutter.push(&event)?;
    }
    Ok(cutter.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journey::EstimateOptions;

    const DAY: i64 = 86_400_000_000;

    fn event<'a>(
        customer: &'a str,
        day: i64,
        kind: &'a str,
        name: Option<&'a str>,
        channel: &'a str,
    ) -> LoggedEvent<'a> {
        LoggedEvent { customer, at_micros: day * DAY, kind, name, channel }
    }

    fn stages(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_purchase_or_a_long_silence_ends_a_journey_and_sharing_joins_the_purchase() {
        let events = vec![
            event("a", 0, "page", None, "web"),
            event("a", 1, "track", Some("Product Added"), "web"),
            event("a", 2, "track", Some("Order Completed"), "store"),
            event("a", 3, "track", Some("Review Submitted"), "social"), // joins the journey above
            event("a", 4, "screen", None, "app"),                       // a new journey
            event("a", 90, "track", Some("Product Viewed"), "web"),     // after the gap: another
            event("a", 91, "identify", None, "web"),                    // not a journey event
            event("b", 91, "track", Some("Store Visited"), "store"),
            event("b", 92, "track", Some("Order Completed"), "store"),
        ];
        let all = stages(&["information", "evaluation", "decision", "purchase", "sharing"]);
        let set = journeys_from_events(events, &StageMap::default(), all, "purchase", 30 * DAY).unwrap();
        let options = EstimateOptions { replicates: 0, ..Default::default() };
        let estimated = set.estimate(options);
        // Nobody reached `decision`: a stage without data, named.
        assert!(matches!(estimated, Err(JourneyError::StageWithoutData { ref stage, .. }) if stage == "decision"));

        let events = vec![
            event("a", 0, "page", None, "web"),
            event("a", 1, "track", Some("Product Added"), "web"),
            event("a", 2, "track", Some("Order Completed"), "store"),
            event("a", 3, "track", Some("Review Submitted"), "social"),
            event("a", 4, "screen", None, "app"),
            event("a", 90, "track", Some("Product Viewed"), "web"),
            event("b", 91, "track", Some("Store Visited"), "store"),
            event("b", 92, "track", Some("Order Completed"), "store"),
        ];
        let few = stages(&["information", "evaluation", "purchase", "sharing"]);
        let set = journeys_from_events(events, &StageMap::default(), few, "purchase", 30 * DAY).unwrap();
        let estimated = set.estimate(options).unwrap();
        assert_eq!(estimated.model.channels(), ["web", "store", "social", "app"]);
        // Journeys: a(web, web, store, social), a(app), a(web), b(-, store, store).
        assert_eq!(estimated.journeys, 4);
        assert_eq!(estimated.purchasers, 1, "only a's first journey reached sharing, the last stage");
        assert_eq!(estimated.counts.initial, vec![2, 0, 0, 1]);
        assert_eq!(estimated.counts.transitions[1][1][1], 1, "b: store at evaluation, store at purchase");
        assert_eq!(estimated.counts.transitions[2][1][2], 1, "a: bought in store, shared on social");
    }

    #[test]
    fn the_default_map_names_the_native_events_and_can_be_changed() {
        let mut map = StageMap::default();
        assert_eq!(map.stage_of("track", Some("Order Completed")), Some("purchase"));
        assert_eq!(map.stage_of("page", None), Some("information"));
        assert_eq!(map.stage_of("identify", None), None);
        assert_eq!(map.stage_of("track", Some("Points Expired")), None);
        map.tracks.insert("Catalogue Requested".into(), "information".into());
        assert_eq!(map.stage_of("track", Some("Catalogue Requested")), Some("information"));
    }

    #[test]
    fn staged_events_cut_the_same_journeys_as_logged_ones() {
        let stages: Vec<String> = ["information", "evaluation", "decision", "purchase"].map(String::from).to_vec();
        let day = 86_400_000_000i64;
        let events = [
            ("a", 0, "page", None, "web"),
            ("a", day, "track", Some("Product Added"), "app"),
            ("a", 2 * day, "track", Some("Order Completed"), "store"),
            ("a", 3 * day, "track", Some("Product Added"), "web"),
            ("a", 90 * day, "page", None, "web"),
            ("b", 0, "track", Some("Review Submitted"), "social"),
            ("b", day / 2, "track", Some("Product Added"), "social"),
            ("b", day, "track", Some("Checkout Started"), "web"),
            ("b", 2 * day, "track", Some("Order Completed"), "web"),
        ];
        let map = StageMap::default();
        let mut logged = JourneyCutter::new(map.clone(), stages.clone(), "purchase", 30 * day).unwrap();
        let mut staged = JourneyCutter::new(map, stages, "purchase", 30 * day).unwrap();
        for (customer, at, kind, name, channel) in events {
            logged.push(&LoggedEvent { customer, at_micros: at, kind, name, channel }).unwrap();
            if let Some(position) = staged.stage_position(kind, name) {
                staged.push_staged(u64::from(customer.as_bytes()[0]), at, position, channel).unwrap();
            }
        }
        let options = crate::journey::EstimateOptions { replicates: 0, ..Default::default() };
        let (a, b) = (logged.finish().estimate(options).unwrap(), staged.finish().estimate(options).unwrap());
        assert_eq!(a.journeys, 4);
        assert_eq!(a, b);
    }
}
