//! The ingest algorithm, written once for every engine: prefetch what a batch of
//! messages needs, resolve identities and fold traits in memory, then write all
//! changes in bulk inside the caller's transaction.
//!
//! Engines provide the primitives (`IngestTx`). Concurrency: engines with several
//! writers (PostgreSQL) lock the touched customers one at a time in id order when
//! loading them, and report `StoreError::Race` when a claimed message id or
//! identifier was taken meanwhile; the caller then rolls back and runs the batch
//! again, which finds the other writer's rows.

use std::collections::BTreeSet;

use foldhash::{HashMap, HashMapExt};

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use relais_domain::cards::CardPolicy;
use relais_domain::message::MessageType;
use relais_domain::resolve::{resolve_in, KnownView, Target};
use relais_domain::traits::{OrderEffect, TraitInput};
use relais_domain::{ComputedTraits, CustomerId, EventId, Identifier, IdentifierKind, MergeId, TrackingMessage};
use serde::Serialize;
use serde_json::{Map, Value};

use super::seal::{EncodedEvent, Privacy, StoredValue};
use super::StoreError;

/// Organisation settings the ingest needs.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// The organisation's time zone: it sets the days of rolling windows.
    pub time_zone: Tz,
    /// The organisation's currency: revenue traits count orders in it.
    pub currency: String,
    /// How many people an identifier may be seen with before it is flagged as
    /// shared (a shop's kiosk, a family tablet) and stops linking profiles.
    pub shared_identifier_limit: i64,
    /// What to do with payment card numbers found in messages (`RELAIS_CARD_NUMBERS`).
    pub card_policy: CardPolicy,
    /// The loyalty programmes, cached by revision (earning runs in the ingest transaction).
    pub programmes: std::sync::Arc<super::loyalty::ProgrammeCache>,
    /// The organisation's language (`RELAIS_LANGUAGE`, French by default):
    /// service e-mails use it for people who declared none.
    pub language: relais_domain::loyalty::Lang,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            time_zone: chrono_tz::Europe::Paris,
            currency: "EUR".into(),
            shared_identifier_limit: 5,
            card_policy: CardPolicy::Reject,
            programmes: Default::default(),
            language: relais_domain::loyalty::Lang::Fr,
        }
    }
}

impl IngestSettings {
    /// The organisation's calendar day of an instant.
    pub fn day_of(&self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.time_zone).date_naive()
    }

    /// The trait facts of an event, with amounts in other currencies left out of revenue.
    pub fn trait_input<'a>(&self, event: &'a EventFacts<'a>) -> TraitInput<'a> {
        let order = match (event.order_kind, event.amount_minor, event.currency) {
            (Some(kind), Some(amount), Some(currency)) if currency == self.currency => Some(match kind {
                OrderKind::Completed => OrderEffect::Completed(amount),
                OrderKind::Refunded => OrderEffect::Refunded(amount),
            }),
            (Some(OrderKind::Completed), _, _) => Some(OrderEffect::Completed(0)),
            _ => None,
        };
        TraitInput {
            timestamp: event.timestamp,
            message_id: event.message_id,
            channel: event.channel,
            store: event.store,
            order,
        }
    }
}

/// Order-related kinds of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderKind {
    /// `Order Completed`.
    Completed,
    /// `Order Refunded`.
    Refunded,
}

/// The columns of a stored event that traits are computed from; shared by the
/// incremental path and the rebuild so both read the same facts.
#[derive(Debug, Clone)]
pub struct EventFacts<'a> {
    /// Event timestamp.
    pub timestamp: DateTime<Utc>,
    /// Sender's message id.
    pub message_id: &'a str,
    /// Touchpoint.
    pub channel: relais_domain::Channel,
    /// Store.
    pub store: Option<&'a str>,
    /// Whether it is an order or refund.
    pub order_kind: Option<OrderKind>,
    /// Amount in minor units.
    pub amount_minor: Option<i64>,
    /// Currency of the amount.
    pub currency: Option<&'a str>,
}

impl EventFacts<'_> {
    /// Order kind from a stored event's type and name.
    pub fn order_kind_of(kind: &str, name: Option<&str>) -> Option<OrderKind> {
        match (kind, name) {
            ("track", Some(relais_domain::message::events::ORDER_COMPLETED)) => Some(OrderKind::Completed),
            ("track", Some(relais_domain::message::events::ORDER_REFUNDED)) => Some(OrderKind::Refunded),
            _ => None,
        }
    }
}

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Stored now.
    Stored {
        /// The profile it went to.
        customer_id: CustomerId,
        /// The stored event.
        event_id: EventId,
    },
    /// Already stored earlier under the same `messageId` and source.
    Duplicate {
        /// The profile it went to then.
        customer_id: CustomerId,
        /// The event stored then.
        event_id: EventId,
    },
}

/// A customer's mutable state as the batch sees it.
#[derive(Debug, Clone, Default)]
pub struct CustomerState {
    /// Identify traits.
    pub profile: Map<String, Value>,
    /// Computed traits.
    pub traits: ComputedTraits,
    /// Set when the row says this profile was merged away (a concurrent merge).
    pub merged_into: Option<CustomerId>,
    /// Whether this batch changed the profile (so engines rewrite it only then).
    pub profile_changed: bool,
    /// Sealed profile fields as loaded, not yet opened (the ingest opens them
    /// with the customer's key).
    pub sealed_profile: Option<Vec<u8>>,
}

/// An event row to insert.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    /// Owner at storage time.
    pub customer_id: CustomerId,
    /// New id.
    pub event_id: EventId,
    /// Source of the key that sent it.
    pub source: &'a str,
    /// The message.
    pub message: &'a TrackingMessage,
    /// Its payload as stored: clear columns and tokens.
    pub encoded: &'a EncodedEvent,
    /// The sealed part of its payload, sealed with the customer's key.
    pub sealed: Option<Vec<u8>>,
}

/// An identifier to link to a customer.
#[derive(Debug, Clone)]
pub struct NewIdentifier {
    /// Its lookup token (the primary key).
    pub token: Identifier,
    /// Its value, clear or sealed by its class.
    pub value: StoredValue,
    /// Owner.
    pub customer: CustomerId,
    /// When.
    pub at: DateTime<Utc>,
}

/// A merge to write.
#[derive(Debug, Clone)]
pub struct MergeWrite {
    /// Its id.
    pub merge_id: MergeId,
    /// Surviving profile.
    pub survivor: CustomerId,
    /// Profile merged away.
    pub merged: CustomerId,
    /// When.
    pub at: DateTime<Utc>,
    /// Why.
    pub reason: String,
}

/// An identity conflict to record.
#[derive(Debug, Clone)]
pub struct ConflictWrite {
    /// Profile the message went to (or created).
    pub customer: CustomerId,
    /// Profile not merged.
    pub other: CustomerId,
    /// Kind whose values differ.
    pub kind: IdentifierKind,
    /// The message that linked them.
    pub message_id: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// Everything a batch writes. An engine may write parts that touch different
/// tables together, but merges after the events and day totals, and the
/// profiles after the merges.
#[derive(Debug, Default)]
pub struct Changes<'a> {
    /// Profiles to create.
    pub new_customers: Vec<(CustomerId, DateTime<Utc>)>,
    /// Data keys of new customers (and of older ones that had none), wrapped.
    pub new_keys: Vec<(CustomerId, Vec<u8>)>,
    /// Identifiers to link (must not exist yet; else `Race`).
    pub new_identifiers: Vec<NewIdentifier>,
    /// Events to append.
    pub events: Vec<NewEvent<'a>>,
    /// Message ids to remember (must not exist yet; else `Race`).
    pub message_claims: Vec<(&'a str, &'a str, CustomerId, EventId, DateTime<Utc>)>,
    /// Per-customer per-day order totals to add.
    pub day_deltas: Vec<DayRow>,
    /// Merges, in order; each moves identifiers, day totals and memberships.
    pub merges: Vec<MergeWrite>,
    /// Conflicts to record.
    pub conflicts: Vec<ConflictWrite>,
    /// Final state of every touched customer.
    pub customers: Vec<(CustomerId, CustomerState)>,
    /// Stored form (clear JSON, sealed fields) of every profile this batch changed.
    pub profiles: HashMap<CustomerId, super::seal::StoredProfile>,
    /// Name tokens of every profile this batch changed (they replace the old ones).
    pub name_tokens: Vec<(CustomerId, Vec<String>)>,
    /// Final exclusive identifiers of every touched customer (for engines that cache them).
    pub exclusives: Vec<(CustomerId, Vec<Identifier>)>,
    /// Identifiers seen with another person than their owner: identifier, that
    /// person, when. Engines count distinct people and flag the identifier as
    /// shared past the limit.
    pub sightings: Vec<(Identifier, CustomerId, DateTime<Utc>)>,
    /// People an identifier may be seen with before it is shared.
    pub shared_limit: i64,
    /// Accounts (groups) to create or update: group id, traits, when.
    pub accounts: Vec<(&'a str, &'a Map<String, Value>, DateTime<Utc>)>,
    /// Field paths no data-class mapping names, first seen in this batch.
    pub unclassified: Vec<&'a str>,
    /// Account memberships to add: customer, group id, when.
    pub memberships: Vec<(CustomerId, &'a str, DateTime<Utc>)>,
}

/// Where earlier messages went, by (source, messageId).
pub type KnownMessages = HashMap<(String, String), (CustomerId, EventId)>;
/// Owners of identifiers, with whether each is flagged as shared.
pub type Owners = HashMap<Identifier, (CustomerId, bool)>;
/// Exclusive-kind identifiers held by each customer.
pub type Exclusives = HashMap<CustomerId, Vec<Identifier>>;
/// Customers' states as a batch loads and folds them.
pub type Customers = HashMap<CustomerId, CustomerState>;
/// A day-totals row: customer, day, orders, net revenue in minor units.
pub type DayRow = (CustomerId, NaiveDate, i64, i64);

/// Engine primitives for one ingest transaction.
pub trait IngestTx {
    /// Message ids already stored, with where they went.
    fn existing_message_ids(&mut self, ids: &[(&str, &str)]) -> Result<KnownMessages, StoreError>;
    /// Owners of known identifiers, with whether each is flagged as shared.
    fn identifier_owners(&mut self, ids: &[Identifier]) -> Result<Owners, StoreError>;
    /// Exclusive-kind identifiers held by each customer.
    fn exclusive_identifiers(&mut self, customers: &[CustomerId]) -> Result<Exclusives, StoreError>;
    /// The two reads a batch starts with, `existing_message_ids` and
    /// `identifier_owners`: one round trip where the engine can.
    fn claims_and_owners(
        &mut self,
        claims: &[(&str, &str)],
        identifiers: &[Identifier],
    ) -> Result<(KnownMessages, Owners), StoreError> {
        Ok((self.existing_message_ids(claims)?, self.identifier_owners(identifiers)?))
    }
    /// `claims_and_owners`; an engine with concurrent writers may also load
    /// and lock the profiles owning the unshared identifiers found, in id
    /// order as `load_customers` would, in the same round trip (`None`: the
    /// batch loads them with `load_customers`).
    fn claims_owners_and_profiles(
        &mut self,
        claims: &[(&str, &str)],
        identifiers: &[Identifier],
    ) -> Result<(KnownMessages, Owners, Option<Customers>), StoreError> {
        let (known, owners) = self.claims_and_owners(claims, identifiers)?;
        Ok((known, owners, None))
    }
    /// `identifier_owners` and `exclusive_identifiers` together: one round
    /// trip where the engine can.
    fn owners_and_exclusives(
        &mut self,
        identifiers: &[Identifier],
        customers: &[CustomerId],
    ) -> Result<(Owners, Exclusives), StoreError> {
        Ok((self.identifier_owners(identifiers)?, self.exclusive_identifiers(customers)?))
    }
    /// `owners_and_exclusives`; where the engine can, it also locks the
    /// loyalty memberships of `families` (some of `customers`, locked) in the
    /// same round trip and keeps them for the batch's earning
    /// (`LedgerTx::family_and_revision`).
    fn owners_exclusives_and_families(
        &mut self,
        identifiers: &[Identifier],
        customers: &[CustomerId],
        families: &[CustomerId],
    ) -> Result<(Owners, Exclusives), StoreError> {
        let _ = families;
        self.owners_and_exclusives(identifiers, customers)
    }
    /// `exclusive_identifiers` and `load_customers` of the same customers, where
    /// no other writer can interleave (a cache then answers both at once).
    fn exclusives_and_customers(&mut self, customers: &[CustomerId]) -> Result<(Exclusives, Customers), StoreError> {
        Ok((self.exclusive_identifiers(customers)?, self.load_customers(customers)?))
    }
    /// Whether other writers may change identifiers concurrently (several server
    /// processes on one database): the batch then re-reads what it resolved
    /// from after locking the customers, and retries if anything moved.
    fn concurrent_writers(&self) -> bool {
        false
    }
    /// Load (and, with several writers, lock in the given sorted order) customers.
    fn load_customers(&mut self, customers: &[CustomerId]) -> Result<Customers, StoreError>;
    /// Wrapped data keys of customers (those that have one).
    fn data_keys(&mut self, customers: &[CustomerId]) -> Result<Vec<(CustomerId, Vec<u8>)>, StoreError>;
    /// Apply every change.
    fn write(&mut self, changes: &Changes<'_>) -> Result<(), StoreError>;
    /// The batch's changes once written (and earned on), to keep what the
    /// engine caches for its next transactions; moved, so nothing is copied.
    fn keep(&mut self, changes: Changes<'_>) {
        let _ = changes;
    }
}

/// The tokens of the identifiers a message links, including an alias's previous id.
fn message_identifiers(
    encoded: &EncodedEvent,
    candidates: &[Identifier],
    owners: &HashMap<Identifier, CustomerId>,
) -> Vec<Identifier> {
    let mut identifiers = encoded.tokens.clone();
    if !candidates.is_empty() {
        // `previousId` is an earlier userId or anonymousId: link whichever is known,
        // and record it as an anonymous id when neither is.
        let known: Vec<Identifier> = candidates.iter().filter(|c| owners.contains_key(*c)).cloned().collect();
        if known.is_empty() {
            identifiers.extend(candidates.iter().filter(|c| c.kind() == IdentifierKind::AnonymousId).cloned());
        } else {
            identifiers.extend(known);
        }
        identifiers.sort();
        identifiers.dedup();
    }
    identifiers
}

fn alias_candidates(message: &TrackingMessage) -> Vec<Identifier> {
    match (message.kind, message.previous_id.as_deref()) {
        (MessageType::Alias, Some(previous)) => [IdentifierKind::UserId, IdentifierKind::AnonymousId]
            .into_iter()
            .filter_map(|kind| Identifier::new(kind, previous).ok())
            .collect(),
        _ => Vec::new(),
    }
}

/// Traits sent with identify calls: top-level `traits`, or `context.traits` as some
/// libraries send them.
fn profile_traits(message: &TrackingMessage) -> Option<&Map<String, Value>> {
    if message.kind != MessageType::Identify {
        return None;
    }
    if !message.traits.is_empty() {
        return Some(&message.traits);
    }
    message.context.get("traits").and_then(Value::as_object)
}

/// One message of a batch: its source, the message, and its stored payload.
pub type BatchItem<'a> = (&'a str, &'a TrackingMessage, &'a EncodedEvent);

/// One request's messages as batch items, each with its stored payload.
pub fn batch_items<'a>(
    source: &'a str,
    messages: &'a [TrackingMessage],
    encoded: &'a [EncodedEvent],
) -> impl Iterator<Item = BatchItem<'a>> + 'a {
    messages.iter().zip(encoded).map(move |(m, e)| (source, m, e))
}

/// Ingest `batch` through `tx`; one outcome per message, in order.
///
/// Identity resolution works on lookup tokens only (keyed hashes of the
/// identifiers), so clear identifier values meet storage only as sealed values.
pub fn ingest_batch<'a>(
    tx: &mut (impl IngestTx + super::loyalty::LedgerTx),
    batch: &[BatchItem<'a>],
    settings: &IngestSettings,
    privacy: &Privacy,
) -> Result<Vec<Outcome>, StoreError> {
    // 1. Prefetch: which messages are duplicates, who owns the identifiers.
    let claims: Vec<(&str, &str)> = batch
        .iter()
        .filter(|(_, m, _)| m.message_id_given)
        .map(|(source, m, _)| (*source, m.message_id.as_str()))
        .collect();

    // Clear identifiers by token, for the values of identifiers linked now.
    let mut alias_tokens: Vec<Vec<Identifier>> = Vec::with_capacity(batch.len());
    let mut alias_clear: Vec<(Identifier, Identifier)> = Vec::new();
    for (_, message, _) in batch {
        let candidates = alias_candidates(message);
        let tokens: Vec<Identifier> = candidates.iter().map(|c| privacy.keyring.token(c)).collect();
        alias_clear.extend(tokens.iter().cloned().zip(candidates));
        alias_tokens.push(tokens);
    }
    let mut clear_of: HashMap<&Identifier, &Identifier> = HashMap::with_capacity(batch.len() * 2);
    for (_, message, encoded) in batch {
        clear_of.extend(encoded.tokens.iter().zip(&message.identifiers));
    }
    for (token, clear) in &alias_clear {
        clear_of.entry(token).or_insert(clear);
    }
    let all_identifiers: BTreeSet<Identifier> = batch
        .iter()
        .zip(&alias_tokens)
        .flat_map(|((_, _, encoded), aliases)| encoded.tokens.iter().cloned().chain(aliases.iter().cloned()))
        .collect();
    let all_identifiers: Vec<Identifier> = all_identifiers.into_iter().collect();
    let (existing, known_owners, locked) = tx.claims_owners_and_profiles(&claims, &all_identifiers)?;
    let first_read = tx.concurrent_writers().then(|| known_owners.clone());
    // Shared identifiers neither decide nor link: they are left out of resolution.
    let shared: foldhash::HashSet<Identifier> =
        known_owners.iter().filter(|(_, (_, shared))| *shared).map(|(i, _)| i.clone()).collect();
    let mut owners: HashMap<Identifier, CustomerId> =
        known_owners.into_iter().filter(|(_, (_, shared))| !shared).map(|(i, (c, _))| (i, c)).collect();
    let mut owner_ids: Vec<CustomerId> = owners.values().copied().collect();
    owner_ids.sort();
    owner_ids.dedup();
    let (mut exclusives, mut customers) = match first_read {
        // Lock the owners first, then check that no concurrent merge, unmerge or
        // attach moved an identifier since it was read, and read the exclusive
        // identifiers under the lock.
        Some(first_read) => {
            let customers = match locked {
                Some(customers) => customers,
                None => tx.load_customers(&owner_ids)?,
            };
            check_not_merged_away(&customers, &owner_ids)?;
            // The owners of what may earn have their memberships locked now
            // too: the earning would lock them next, in a round trip of its own.
            let earners = earning_owners(batch, &alias_tokens, &existing, &owners);
            let (owners_now, exclusives) = tx.owners_exclusives_and_families(&all_identifiers, &owner_ids, &earners)?;
            if owners_now != first_read {
                return Err(StoreError::Race);
            }
            (exclusives, customers)
        }
        None => tx.exclusives_and_customers(&owner_ids)?,
    };
    check_not_merged_away(&customers, &owner_ids)?;
    let mut changes = Changes { shared_limit: settings.shared_identifier_limit, ..Changes::default() };
    let mut keys = super::seal::data_keys(&privacy.keyring, &owner_ids, |missing| tx.data_keys(missing))?;
    for id in &owner_ids {
        if !keys.contains_key(id) {
            // A profile stored before encryption at rest had no key yet.
            let (key, wrapped) = privacy.keyring.new_data_key(*id);
            keys.insert(*id, key);
            changes.new_keys.push((*id, wrapped));
        }
    }
    for (id, state) in customers.iter_mut() {
        if let Some(sealed) = state.sealed_profile.take() {
            super::seal::open_profile(&mut state.profile, Some(&sealed), keys.get(id))?;
        }
    }
    // Name words as loaded: name tokens are rewritten only when they change.
    let names_before: HashMap<CustomerId, Vec<String>> = customers
        .iter()
        .map(|(id, state)| (*id, relais_domain::privacy::profile_name_words(&state.profile)))
        .filter(|(_, words)| !words.is_empty())
        .collect();

    // 2. Resolve and fold, message by message, in memory.
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut seen_in_batch: HashMap<(&str, &str), (CustomerId, EventId)> = HashMap::with_capacity(batch.len());
    let mut day_deltas: HashMap<(CustomerId, NaiveDate), (i64, i64)> = HashMap::new();
    let mut touched: BTreeSet<CustomerId> = BTreeSet::new();

    for ((source, message, encoded), aliases) in batch.iter().zip(&alias_tokens) {
        let key = (*source, message.message_id.as_str());
        if message.message_id_given {
            if let Some((customer_id, event_id)) = existing.get(&(key.0.to_string(), key.1.to_string())) {
                outcomes.push(Outcome::Duplicate { customer_id: *customer_id, event_id: *event_id });
                continue;
            }
            if let Some((customer_id, event_id)) = seen_in_batch.get(&key) {
                outcomes.push(Outcome::Duplicate { customer_id: *customer_id, event_id: *event_id });
                continue;
            }
        }

        let identifiers: Vec<Identifier> =
            message_identifiers(encoded, aliases, &owners).into_iter().filter(|i| !shared.contains(i)).collect();
        // Shared identifiers are out of `owners`, and resolution only asks about
        // the message's own identifiers: the batch's maps serve as they are.
        let resolution = resolve_in(&identifiers, KnownView { owners: &owners, exclusives: &exclusives });
        let customer_id = match resolution.target {
            Target::Existing(id) => id,
            Target::New => {
                let id = CustomerId::new();
                changes.new_customers.push((id, message.received_at));
                customers.insert(id, CustomerState::default());
                let (key, wrapped) = privacy.keyring.new_data_key(id);
                keys.insert(id, key);
                changes.new_keys.push((id, wrapped));
                id
            }
        };
        let data_key = keys.get(&customer_id).expect("every target customer has a data key").clone();
        for identifier in &resolution.attach {
            owners.insert(identifier.clone(), customer_id);
            let clear = clear_of
                .get(identifier)
                .ok_or_else(|| StoreError::Database("an identifier to link has no value in the batch".into()))?;
            changes.new_identifiers.push(NewIdentifier {
                token: identifier.clone(),
                value: StoredValue::of(&privacy.classes, clear, customer_id, &data_key),
                customer: customer_id,
                at: message.received_at,
            });
            if identifier.kind().is_exclusive() {
                exclusives.entry(customer_id).or_default().push(identifier.clone());
            }
        }
        for conflict in &resolution.conflicts {
            // The identifiers that tied this person to the other profile were seen
            // with one more person.
            for identifier in identifiers.iter().filter(|i| !i.kind().is_exclusive()) {
                if owners.get(identifier) == Some(&conflict.other) {
                    changes.sightings.push((identifier.clone(), customer_id, message.received_at));
                }
            }
            changes.conflicts.push(ConflictWrite {
                customer: customer_id,
                other: conflict.other,
                kind: conflict.kind,
                message_id: message.message_id.clone(),
                at: message.received_at,
            });
        }
        for merged in &resolution.merge {
            merge_in_memory(customer_id, *merged, &mut owners, &mut exclusives, &mut customers);
            changes.merges.push(MergeWrite {
                merge_id: MergeId::new(),
                survivor: customer_id,
                merged: *merged,
                at: message.received_at,
                reason: format!("message {} from source {} linked both profiles", message.message_id, source),
            });
            touched.insert(*merged);
        }

        let event_id = EventId::new();
        let state = customers.get_mut(&customer_id).expect("target customer is loaded");
        let facts = EventFacts {
            timestamp: message.timestamp,
            message_id: &message.message_id,
            channel: message.channel,
            store: message.store.as_deref(),
            order_kind: EventFacts::order_kind_of(message.kind.as_str(), message.name.as_deref()),
            amount_minor: message.order.as_ref().map(|o| o.amount_minor),
            currency: message.order.as_ref().map(|o| o.currency.as_str()),
        };
        let input = settings.trait_input(&facts);
        state.traits.apply(&input);
        if let Some(effect) = input.order {
            let (orders, revenue) = match effect {
                OrderEffect::Completed(amount) => (1, amount),
                OrderEffect::Refunded(amount) => (0, -amount),
            };
            let entry = day_deltas.entry((customer_id, settings.day_of(message.timestamp))).or_default();
            entry.0 += orders;
            entry.1 += revenue;
        }
        if let Some(traits) = profile_traits(message) {
            for (k, v) in traits {
                state.profile.insert(k.clone(), v.clone());
            }
            state.profile_changed |= !traits.is_empty();
        }
        if let (MessageType::Group, Some(group_id)) = (message.kind, message.group_id.as_deref()) {
            changes.accounts.push((group_id, &message.traits, message.received_at));
            changes.memberships.push((customer_id, group_id, message.received_at));
        }
        touched.insert(customer_id);
        let sealed = encoded.personal.as_deref().map(|plain| data_key.seal(customer_id, plain));
        changes.events.push(NewEvent { customer_id, event_id, source, message, encoded, sealed });
        if message.message_id_given {
            changes.message_claims.push((source, &message.message_id, customer_id, event_id, message.received_at));
            seen_in_batch.insert(key, (customer_id, event_id));
        }
        outcomes.push(Outcome::Stored { customer_id, event_id });
    }

    // Day deltas are keyed by the customer at event time; merges written later move them.
    let mut deltas: Vec<_> = day_deltas.into_iter().map(|((c, d), (o, r))| (c, d, o, r)).collect();
    deltas.sort_by_key(|(c, d, _, _)| (*c, *d));
    changes.day_deltas = deltas;
    changes.exclusives = touched.iter().map(|id| (*id, exclusives.get(id).cloned().unwrap_or_default())).collect();
    changes.customers = touched.into_iter().map(|id| (id, customers.remove(&id).unwrap_or_default())).collect();
    for (id, state) in &changes.customers {
        if state.profile_changed {
            let key = keys.get(id).expect("every touched customer has a data key");
            changes.profiles.insert(*id, super::seal::seal_profile(&privacy.classes, *id, key, &state.profile));
            let words = relais_domain::privacy::profile_name_words(&state.profile);
            if names_before.get(id).map_or(&[][..], Vec::as_slice) != words.as_slice() {
                let tokens = words.iter().map(|w| privacy.keyring.name_token(w)).collect();
                changes.name_tokens.push((*id, tokens));
            }
        }
    }

    changes.unclassified = batch.iter().flat_map(|(_, _, e)| e.unclassified.iter().map(String::as_str)).collect();

    // 3. Write.
    tx.write(&changes)?;

    // 4. Loyalty, in the same transaction: memberships follow the merges, and
    // each stored event earns once, never without being stored.
    let merges: Vec<(CustomerId, CustomerId)> = changes.merges.iter().map(|m| (m.survivor, m.merged)).collect();
    let events: Vec<super::loyalty::EarnEvent<'_>> =
        changes.events.iter().map(|e| (e.customer_id, e.event_id, e.message)).collect();
    super::loyalty::earn_batch(tx, &events, &merges, &changes.customers, settings)?;
    drop(events);
    tx.keep(changes);
    Ok(outcomes)
}

/// A lost race when an identifier pointed at a profile that a concurrent
/// writer merged away (or that is gone): `customers` are the profiles loaded
/// for `owners`.
fn check_not_merged_away(customers: &Customers, owners: &[CustomerId]) -> Result<(), StoreError> {
    if customers.values().any(|c| c.merged_into.is_some()) || customers.len() != owners.len() {
        return Err(StoreError::Race);
    }
    Ok(())
}

/// The known owners of the identifiers of the batch's messages that may earn
/// and are not duplicates: the profiles whose memberships its earning locks,
/// unless the batch creates or merges profiles.
fn earning_owners(
    batch: &[BatchItem<'_>],
    alias_tokens: &[Vec<Identifier>],
    existing: &KnownMessages,
    owners: &HashMap<Identifier, CustomerId>,
) -> Vec<CustomerId> {
    let mut earners: Vec<CustomerId> = batch
        .iter()
        .zip(alias_tokens)
        .filter(|((source, message, _), _)| {
            super::loyalty::may_earn(message)
                && !(message.message_id_given
                    && existing.contains_key(&(source.to_string(), message.message_id.clone())))
        })
        .flat_map(|((_, _, encoded), aliases)| encoded.tokens.iter().chain(aliases))
        .filter_map(|token| owners.get(token).copied())
        .collect();
    earners.sort();
    earners.dedup();
    earners
}

/// Merge `merged` into `survivor` in the batch's view: identifiers follow, traits
/// and profile combine.
fn merge_in_memory(
    survivor: CustomerId,
    merged: CustomerId,
    owners: &mut HashMap<Identifier, CustomerId>,
    exclusives: &mut Exclusives,
    customers: &mut Customers,
) {
    for owner in owners.values_mut() {
        if *owner == merged {
            *owner = survivor;
        }
    }
    if let Some(moved) = exclusives.remove(&merged) {
        exclusives.entry(survivor).or_default().extend(moved);
    }
    let absorbed = customers.get(&merged).cloned().unwrap_or_default();
    let state = customers.entry(survivor).or_default();
    state.traits.absorb(&absorbed.traits);
    for (k, v) in absorbed.profile {
        if let serde_json::map::Entry::Vacant(slot) = state.profile.entry(k) {
            slot.insert(v);
            state.profile_changed = true;
        }
    }
    if let Some(m) = customers.get_mut(&merged) {
        m.merged_into = Some(survivor);
    }
}

/// Recomputes traits and day totals from the event log: events are fed in any
/// order, grouped by the profile they were stored under, then merged profiles are
/// folded into their survivors, exactly as the incremental path does.
#[derive(Debug, Default)]
pub struct Rebuild {
    traits: HashMap<CustomerId, ComputedTraits>,
    days: HashMap<(CustomerId, NaiveDate), (i64, i64)>,
}

impl Rebuild {
    /// Fold one stored event in.
    pub fn add(&mut self, customer: CustomerId, facts: &EventFacts<'_>, settings: &IngestSettings) {
        let input = settings.trait_input(facts);
        self.traits.entry(customer).or_default().apply(&input);
        if let Some(effect) = input.order {
            let entry = self.days.entry((customer, settings.day_of(facts.timestamp))).or_default();
            match effect {
                OrderEffect::Completed(amount) => {
                    entry.0 += 1;
                    entry.1 += amount;
                }
                OrderEffect::Refunded(amount) => entry.1 -= amount,
            }
        }
    }

    /// Final traits per customer (merged profiles keep their own; survivors absorb
    /// theirs) and day totals per surviving customer. `merged_into` maps every
    /// merged-away profile to its survivor.
    pub fn finish<S: std::hash::BuildHasher>(
        mut self,
        merged_into: &std::collections::HashMap<CustomerId, CustomerId, S>,
    ) -> (HashMap<CustomerId, ComputedTraits>, Vec<DayRow>) {
        let mut sorted: Vec<(&CustomerId, &CustomerId)> = merged_into.iter().collect();
        sorted.sort();
        for (merged, survivor) in sorted {
            if let Some(own) = self.traits.get(merged).cloned() {
                self.traits.entry(*survivor).or_default().absorb(&own);
            }
        }
        let mut days: HashMap<(CustomerId, NaiveDate), (i64, i64)> = HashMap::new();
        for ((customer, day), (orders, revenue)) in self.days {
            let owner = merged_into.get(&customer).copied().unwrap_or(customer);
            let entry = days.entry((owner, day)).or_default();
            entry.0 += orders;
            entry.1 += revenue;
        }
        let mut days: Vec<_> = days.into_iter().map(|((c, d), (o, r))| (c, d, o, r)).collect();
        days.sort_by_key(|(c, d, _, _)| (*c, *d));
        (self.traits, days)
    }
}

/// Traits and day totals of one surviving profile from its events and those of
/// the profiles merged into it (`(stored customer, facts)` pairs).
pub fn family_traits<'a>(
    root: CustomerId,
    events: impl IntoIterator<Item = (CustomerId, EventFacts<'a>)>,
    settings: &IngestSettings,
) -> (ComputedTraits, Vec<DayRow>) {
    let mut rebuild = Rebuild::default();
    let mut members = HashMap::new();
    for (customer, facts) in events {
        if customer != root {
            members.insert(customer, root);
        }
        rebuild.add(customer, &facts, settings);
    }
    let (mut traits, days) = rebuild.finish(&members);
    (traits.remove(&root).unwrap_or_default(), days.into_iter().filter(|d| d.0 == root).collect())
}
