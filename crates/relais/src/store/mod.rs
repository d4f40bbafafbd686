//! Storage: one `Engine` trait, one implementation per database engine (SQLite,
//! PostgreSQL), chosen from the location's scheme. The ingest algorithm is written
//! once (`ingest.rs`) over engine primitives; only SQL differs per engine.
//!
//! Architecture invariant: nothing outside this module writes SQL.

mod combine;
pub mod ingest;
pub mod loyalty;
mod pool;
pub mod postgres;
pub mod scratch;
pub mod seal;
pub mod segments;
mod shared_read;
pub mod sqlite;
pub mod web;

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use relais_domain::traits::{DayTotals, WindowTraits};
use relais_domain::{
    AccountId, Channel, ComputedTraits, CustomerId, ErasureId, EventId, Identifier, KeyId, MergeId, OutboxId, Role,
    TrackingMessage,
};
use serde::Serialize;
use serde_json::{Map, Value};

pub use ingest::{IngestSettings, Outcome};

/// Where the data lives.
#[derive(Debug, Clone)]
pub enum Location {
    /// A data folder holding `relais.db` (SQLite, WAL).
    Folder(PathBuf),
    /// A PostgreSQL URL (`postgres://…`).
    Postgres(String),
}

impl Location {
    /// Choose the engine from a URL's scheme, or a folder when no URL is given.
    pub fn from_args(data: Option<PathBuf>, database_url: Option<String>) -> Result<Location, StoreError> {
        match (data, database_url) {
            (_, Some(url)) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Location::Postgres(url))
            }
            (_, Some(url)) if url.starts_with("sqlite://") => {
                Ok(Location::Folder(PathBuf::from(url.trim_start_matches("sqlite://"))))
            }
            (_, Some(url)) => Err(StoreError::Config(format!(
                "unsupported database URL `{}`; use postgres://… or sqlite://FOLDER, or --data FOLDER",
                url.split('@').next_back().unwrap_or("")
            ))),
            (Some(folder), None) => Ok(Location::Folder(folder)),
            (None, None) => Ok(Location::Folder(PathBuf::from("relais-data"))),
        }
    }
}

/// Errors of the storage layer, converted from each driver's errors in one place.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The thing asked for does not exist.
    #[error("not found")]
    NotFound,
    /// A concurrent writer changed what this transaction read; the caller retries.
    #[error("a concurrent change touched the same customers; retry")]
    Race,
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// The request contradicts the current state (for example a merge already undone).
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(String),
    /// Keys are wrong or missing (a master key that does not match, a value that does not decrypt).
    #[error("{0}")]
    Keys(String),
}

/// Why a database from before encryption at rest is refused (it holds
/// identifiers and payloads in clear that lookups by token cannot reach).
const LEGACY_PLAINTEXT: &str = "this database holds customer data written before encryption at rest (schema version 1), which this version does not convert in place; load the data again into a new data folder or database (re-send the events, or `relais import` your files)";

/// The system keys from `keyring` rows `(name, wrapped, master fingerprint)`,
/// when the database has them all.
fn stored_keyring(rows: Vec<(String, Vec<u8>, String)>) -> Option<crate::privacy::StoredKeyring> {
    let fingerprint = rows.first()?.2.clone();
    let complete = crate::privacy::keyring::SYSTEM_KEYS.iter().all(|name| rows.iter().any(|r| r.0 == *name));
    complete.then(|| crate::privacy::StoredKeyring {
        wrapped: rows.into_iter().map(|(name, wrapped, _)| (name, wrapped)).collect(),
        master_fingerprint: fingerprint,
    })
}

/// Open the keyring stored in the database with `master`, creating it on a
/// new database (`insert` must ignore rows another process inserted first).
fn open_privacy(
    master: &crate::privacy::MasterKey,
    classes: relais_domain::privacy::Classification,
    mut read: impl FnMut() -> Result<Option<crate::privacy::StoredKeyring>, StoreError>,
    insert: impl FnOnce(&crate::privacy::StoredKeyring) -> Result<(), StoreError>,
) -> Result<seal::Privacy, StoreError> {
    let stored = match read()? {
        Some(stored) => stored,
        None => {
            let (_, fresh) = crate::privacy::Keyring::create(master);
            insert(&fresh)?;
            read()?.ok_or_else(|| StoreError::Database("the keyring was not stored".into()))?
        }
    };
    let keyring = crate::privacy::Keyring::open(master, &stored)?;
    Ok(seal::Privacy::new(keyring, classes))
}

/// The profile that de-identified events of erased people are filed under: it
/// has no row, no identifiers and no key, so nothing links them to anyone.
pub const ERASED_CUSTOMER: &str = "cus_00000000000000000000000000";

/// Event properties that could lead back to a person through another system
/// (an order number in the shop's own database), removed at erasure.
pub const LINKING_PROPERTIES: [&str; 2] = ["order_id", "checkout_id"];

/// What an erasure did.
#[derive(Debug, Clone, Serialize)]
pub struct ErasureReport {
    /// The erasure's id.
    pub erasure_id: ErasureId,
    /// When.
    pub erased_at: DateTime<Utc>,
    /// Profiles removed (the person's profile and those merged into it).
    pub profiles_erased: usize,
    /// Identifiers removed.
    pub identifiers_erased: usize,
    /// Events kept de-identified for totals (amount, store, date, channel).
    pub events_deidentified: usize,
    /// Data keys destroyed (whatever they sealed is unreadable anywhere).
    pub keys_destroyed: usize,
    /// The profiles erased (ids that no longer lead to anything).
    pub customers: Vec<CustomerId>,
}

/// A data-subject rights request.
#[derive(Debug, Clone, Serialize)]
pub struct RightsRequest {
    /// Its id.
    pub request_id: relais_domain::RequestId,
    /// The right.
    pub kind: relais_domain::rights::RightKind,
    /// The person (cleared once they are erased).
    pub customer_id: Option<CustomerId>,
    /// When it was received.
    pub received_at: DateTime<Utc>,
    /// The legal deadline.
    pub due_at: DateTime<Utc>,
    /// Where it stands.
    pub status: relais_domain::rights::RequestStatus,
    /// When it was answered.
    pub completed_at: Option<DateTime<Utc>>,
    /// What was done (no personal data).
    pub outcome: Value,
    /// Who recorded it.
    pub recorded_by: String,
}

impl RightsRequest {
    /// Whether it is still open after its deadline.
    pub fn overdue(&self, now: DateTime<Utc>) -> bool {
        self.status == relais_domain::rights::RequestStatus::Open && now > self.due_at
    }
}

/// What an unmerge did.
#[derive(Debug, Clone, Serialize)]
pub struct UnmergeReport {
    /// The merge undone.
    pub merge_id: MergeId,
    /// The profile that had absorbed the other.
    pub survivor_id: CustomerId,
    /// The profile restored.
    pub restored_id: CustomerId,
    /// Identifiers given back to the restored profile.
    pub identifiers: Vec<String>,
    /// Events that arrived after the merge carrying only the restored profile's
    /// identifiers, moved back to it.
    pub events_moved: usize,
}

/// Re-point every profile merged, directly or through others, into the restored
/// profile (`?1`/`$1`) while it was merged into the survivor (`?2`/`$2`).
const UNMERGE_DESCENDANTS: &str = "WITH RECURSIVE descendants(id) AS ( \
       SELECT merged_id FROM merges WHERE survivor_id = {m} AND undone_at IS NULL \
       UNION SELECT m.merged_id FROM merges m JOIN descendants d ON m.survivor_id = d.id WHERE m.undone_at IS NULL) \
     UPDATE customers SET merged_into = {m} WHERE merged_into = {s} AND customer_id IN (SELECT id FROM descendants)";

/// `UNMERGE_DESCENDANTS` for SQLite's placeholders.
pub(crate) fn unmerge_descendants_sqlite() -> String {
    UNMERGE_DESCENDANTS.replace("{m}", "?1").replace("{s}", "?2")
}

/// `UNMERGE_DESCENDANTS` for PostgreSQL's placeholders.
pub(crate) fn unmerge_descendants_pg() -> String {
    UNMERGE_DESCENDANTS.replace("{m}", "$1::text").replace("{s}", "$2::text")
}

/// Whether an event stored under the survivor after a merge goes back to the
/// restored profile: it carried one of the restored profile's identifiers and
/// none of the survivor's.
pub fn event_goes_back(
    event_identifiers: &str,
    restored: &std::collections::HashSet<String>,
    survivor: &std::collections::HashSet<String>,
) -> bool {
    let identifiers: Vec<String> = serde_json::from_str(event_identifiers).unwrap_or_default();
    identifiers.iter().any(|i| restored.contains(i)) && !identifiers.iter().any(|i| survivor.contains(i))
}

/// A stored API key, without its secret.
#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    /// The key's id.
    pub key_id: KeyId,
    /// What it may do.
    pub role: Role,
    /// The source its messages deduplicate under.
    pub source: String,
    /// A label.
    pub name: Option<String>,
}

/// A customer profile as stored.
#[derive(Debug, Clone)]
pub struct CustomerRecord {
    /// The id.
    pub id: CustomerId,
    /// When the profile was created.
    pub created_at: DateTime<Utc>,
    /// Traits sent with identify calls (names, e-mail…).
    pub profile: Map<String, Value>,
    /// Computed traits.
    pub traits: ComputedTraits,
    /// Every identifier linked to the profile.
    pub identifiers: Vec<Identifier>,
    /// Those of its identifiers seen with too many people (a kiosk, a family
    /// tablet): they no longer link profiles.
    pub shared_identifiers: Vec<Identifier>,
    /// Profiles merged into this one.
    pub merged_from: Vec<CustomerId>,
    /// Orders and revenue per day, for rolling windows.
    pub days: Vec<DayTotals>,
    /// Accounts (households, companies) the customer belongs to.
    pub accounts: Vec<String>,
}

impl CustomerRecord {
    /// Rolling-window traits as of a day.
    pub fn windows(&self, today: NaiveDate) -> WindowTraits {
        WindowTraits::as_of(today, &self.days)
    }
}

/// The answer to "give me customer X".
#[derive(Debug, Clone)]
pub enum CustomerLookup {
    /// Here it is.
    Found(Box<CustomerRecord>),
    /// It was merged into another profile.
    MergedInto(CustomerId),
    /// No such customer.
    NotFound,
}

/// One event of a timeline.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    /// relais's id.
    pub event_id: EventId,
    /// The profile the event was first stored under (a merged profile's events
    /// show under the survivor).
    pub customer_id: CustomerId,
    /// The sender's id.
    #[serde(rename = "messageId")]
    pub message_id: String,
    /// identify, track, page…
    #[serde(rename = "type")]
    pub kind: String,
    /// Event, page or screen name.
    pub name: Option<String>,
    /// Touchpoint.
    pub channel: Channel,
    /// When it happened (UTC).
    pub timestamp: DateTime<Utc>,
    /// When relais received it.
    #[serde(rename = "receivedAt")]
    pub received_at: DateTime<Utc>,
    /// When the client sent it.
    #[serde(rename = "sentAt", skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    /// Store, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Segment userId.
    #[serde(rename = "userId", skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Segment anonymousId.
    #[serde(rename = "anonymousId", skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
    /// Event properties.
    pub properties: Value,
    /// Segment context.
    pub context: Value,
    /// Identify/group traits.
    #[serde(skip_serializing_if = "value_is_empty")]
    pub traits: Value,
    /// Whether relais computed this event itself.
    pub computed: bool,
}

fn value_is_empty(value: &Value) -> bool {
    value.as_object().is_some_and(Map::is_empty) || value.is_null()
}

/// A position in a timeline (newest first): events strictly older than it follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineCursor {
    /// Timestamp of the last event seen.
    pub timestamp: DateTime<Utc>,
    /// Its id.
    pub event_id: EventId,
}

impl TimelineCursor {
    /// The opaque text form handed to API clients.
    pub fn encode(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            "{}|{}",
            self.timestamp.timestamp_micros(),
            self.event_id
        ))
    }

    /// Parse the text form.
    pub fn decode(text: &str) -> Option<TimelineCursor> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (micros, id) = text.split_once('|')?;
        Some(TimelineCursor {
            timestamp: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            event_id: EventId::parse(id).ok()?,
        })
    }
}

/// One page of a timeline.
#[derive(Debug, Clone)]
pub struct EventPage {
    /// Events, newest first.
    pub events: Vec<StoredEvent>,
    /// Where the next page starts, when there is one.
    pub next: Option<TimelineCursor>,
}

/// A recorded merge.
#[derive(Debug, Clone, Serialize)]
pub struct MergeRecord {
    /// Its id.
    pub merge_id: MergeId,
    /// The profile that remains.
    pub survivor_id: CustomerId,
    /// The profile merged away.
    pub merged_id: CustomerId,
    /// When.
    pub at: DateTime<Utc>,
    /// Why (the message that linked them).
    pub reason: String,
    /// Identifiers that moved from the merged profile to the survivor.
    pub identifiers: Vec<String>,
}

/// Where an outbox message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxStatus {
    /// Waiting for its first or next attempt.
    Pending,
    /// Sent.
    Delivered,
    /// Given up after the last retry.
    Failed,
}

impl OutboxStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxStatus::Pending => "pending",
            OutboxStatus::Delivered => "delivered",
            OutboxStatus::Failed => "failed",
        }
    }

    /// Parse the stored name.
    pub fn parse(text: &str) -> Option<OutboxStatus> {
        [OutboxStatus::Pending, OutboxStatus::Delivered, OutboxStatus::Failed].into_iter().find(|s| s.as_str() == text)
    }
}

/// A side effect in the outbox.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxItem {
    /// Its id (also the e-mail's Message-ID, so receivers can drop a resend).
    pub outbox_id: OutboxId,
    /// `email` (later `webhook`, `device`).
    pub kind: String,
    /// The customer concerned, if any.
    pub customer_id: Option<CustomerId>,
    /// What to send.
    pub payload: Value,
    /// Where it stands.
    pub status: OutboxStatus,
    /// Attempts made.
    pub attempts: i32,
    /// When the next attempt is due.
    pub next_attempt_at: DateTime<Utc>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it was sent.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The result of one delivery attempt.
#[derive(Debug, Clone)]
pub enum DeliveryResult {
    /// Sent.
    Delivered,
    /// Failed; try again at this time.
    Retry {
        /// When.
        at: DateTime<Utc>,
        /// Why it failed.
        error: String,
    },
    /// Failed for good.
    GiveUp {
        /// Why.
        error: String,
    },
}

/// What an ingest request stored, and a mark from right after its commit for
/// the read of the saved segments its live segment update needs.
#[derive(Debug)]
pub struct Ingested {
    /// One outcome per message, in order.
    pub outcomes: Vec<Outcome>,
    /// For `Engine::segments_after` (none: read them with `Engine::segments`).
    pub segments_mark: Option<SegmentsMark>,
}

/// A point right after a commit: a read of the saved segments that started
/// after it sees every segment saved before that commit.
#[derive(Debug, Clone, Copy)]
pub struct SegmentsMark(u64);

impl SegmentsMark {
    /// The mark of a shared read (`SharedRead::mark`).
    fn of<T>(shared: &shared_read::SharedRead<T>) -> SegmentsMark {
        SegmentsMark(shared.mark())
    }
}

/// The operations every engine provides; blocking, called from `Store` through
/// `spawn_blocking`.
pub trait Engine: Send + Sync + 'static {
    /// Which engine, for logs and `/healthz`.
    fn name(&self) -> &'static str;
    /// The data classes and keys in force.
    fn privacy(&self) -> &seal::Privacy;
    /// Re-wrap the system keys from master key `old` to `new` (rotation); running
    /// servers keep working, and start with `new` from then on.
    fn rotate_master(&self, old: &crate::privacy::MasterKey, new: &crate::privacy::MasterKey)
        -> Result<(), StoreError>;
    /// Store validated messages from one source; one outcome per message, in order.
    fn ingest(&self, source: &str, messages: Vec<TrackingMessage>) -> Result<Vec<Outcome>, StoreError>;
    /// `ingest`, with a mark from right after the commit when the engine
    /// takes one: the requests committed together then share one read of the
    /// saved segments for their live segment update (`segments_after`).
    fn ingest_marked(&self, source: &str, messages: Vec<TrackingMessage>) -> Result<Ingested, StoreError> {
        Ok(Ingested { outcomes: self.ingest(source, messages)?, segments_mark: None })
    }
    /// The saved segments, as read after `mark` (see `ingest_marked`).
    fn segments_after(&self, _mark: SegmentsMark) -> Result<Vec<segments::SegmentRecord>, StoreError> {
        self.segments()
    }
    /// Store a new API key (its hash only).
    fn insert_api_key(&self, key_hash: &str, key: &ApiKey) -> Result<(), StoreError>;
    /// Find a key by the hash of its secret.
    fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError>;
    /// A customer with everything attached.
    fn customer(&self, id: CustomerId) -> Result<CustomerLookup, StoreError>;
    /// The customer that holds an identifier.
    fn customer_id_by_identifier(&self, identifier: &Identifier) -> Result<Option<CustomerId>, StoreError>;
    /// A page of a customer's timeline (including profiles merged into it).
    fn events(&self, id: CustomerId, after: Option<&TimelineCursor>, limit: usize) -> Result<EventPage, StoreError>;
    /// Merges whose survivor is this customer.
    fn merges(&self, id: CustomerId) -> Result<Vec<MergeRecord>, StoreError>;
    /// Undo a recorded merge: identifiers go back, later events carrying only the
    /// restored profile's identifiers follow them, and both profiles' traits are
    /// recomputed from their events.
    fn unmerge(&self, merge_id: MergeId, settings: &IngestSettings) -> Result<UnmergeReport, StoreError>;
    /// Queue a side effect.
    fn enqueue(&self, kind: &str, customer: Option<CustomerId>, payload: &Value) -> Result<OutboxId, StoreError>;
    /// Take up to `limit` due messages for delivery, leasing them for `lease` so
    /// no other worker takes them meanwhile; each attempt is counted.
    fn claim_outbox(&self, limit: usize, lease: chrono::Duration) -> Result<Vec<OutboxItem>, StoreError>;
    /// Record the result of an attempt.
    fn finish_outbox(&self, id: OutboxId, result: &DeliveryResult) -> Result<(), StoreError>;
    /// Outbox messages, newest first.
    fn outbox(&self, status: Option<OutboxStatus>, limit: usize) -> Result<Vec<OutboxItem>, StoreError>;
    /// Erase a person (the profile `customer` and every profile merged into it):
    /// profiles, identifiers, identity records, memberships and queued messages
    /// are deleted; events are kept de-identified (decision 10); the data keys
    /// are destroyed.
    fn erase(&self, customer: CustomerId) -> Result<ErasureReport, StoreError>;
    /// Record a consent fact for a customer (or the profile it was merged
    /// into), its proof sealed; with `token_id`, the e-mail link that carried it
    /// is claimed in the same transaction (`Conflict` when already used).
    fn record_consent(
        &self,
        customer: CustomerId,
        fact: &relais_domain::consent::ConsentFact,
        recorded_by: &str,
        token_id: Option<&str>,
    ) -> Result<(CustomerId, relais_domain::ConsentId), StoreError>;
    /// Every consent fact of a customer and the profiles merged into it, oldest first.
    fn consents(&self, customer: CustomerId) -> Result<Vec<relais_domain::consent::ConsentFact>, StoreError>;
    /// Write audit records and the state of their segment, in one transaction.
    fn audit_write(
        &self,
        segment: &crate::privacy::audit::AuditSegment,
        records: &[crate::privacy::audit::AuditRecord],
    ) -> Result<(), StoreError>;
    /// Store a new rights request.
    fn open_request(&self, request: &RightsRequest) -> Result<(), StoreError>;
    /// Rights requests, soonest deadline first, optionally of one status.
    fn requests(&self, status: Option<relais_domain::rights::RequestStatus>) -> Result<Vec<RightsRequest>, StoreError>;
    /// One rights request.
    fn request(&self, id: relais_domain::RequestId) -> Result<Option<RightsRequest>, StoreError>;
    /// Answer an open request (`Conflict` when it is not open); with
    /// `forget_person`, the link to the person is cleared (after an erasure).
    fn close_request(
        &self,
        id: relais_domain::RequestId,
        status: relais_domain::rights::RequestStatus,
        outcome: &Value,
        forget_person: bool,
    ) -> Result<(), StoreError>;
    /// Profiles whose name holds every one of these name tokens, at most `limit`.
    fn customers_by_name(&self, tokens: &[String], limit: usize) -> Result<Vec<CustomerId>, StoreError>;
    /// Profiles (not merged away) that received nothing since `before`, at most `limit`.
    fn inactive_customers(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<CustomerId>, StoreError>;
    /// Remove the values of `class` from the sealed part of every event older
    /// than `before` not yet purged for it (the class's mark moves to
    /// `before`); returns how many events changed.
    fn purge_class_from_events(
        &self,
        class: relais_domain::privacy::DataClass,
        before: DateTime<Utc>,
    ) -> Result<usize, StoreError>;
    /// Every erasure carried out: id, when, the profiles erased.
    fn erasures(&self) -> Result<Vec<crate::privacy::backup::JournalEntry>, StoreError>;
    /// Field paths seen in events that no data-class mapping named then.
    fn unclassified_fields(&self) -> Result<Vec<String>, StoreError>;
    /// Every audit segment.
    fn audit_segments(&self) -> Result<Vec<crate::privacy::audit::AuditSegment>, StoreError>;
    /// The records of one segment, in order.
    fn audit_records(&self, segment_id: &str) -> Result<Vec<crate::privacy::audit::AuditRecord>, StoreError>;
    /// Remove the records of a closed segment and mark it as removed by
    /// retention (its row stays, so verify tells this from tampering).
    fn audit_purge_segment(&self, segment_id: &str) -> Result<(), StoreError>;
    /// The records about some people (their audit trail), oldest first.
    fn audit_trail(&self, subjects: &[CustomerId]) -> Result<Vec<crate::privacy::audit::AuditRecord>, StoreError>;
    /// Recompute every customer's traits and day totals from the event log.
    fn rebuild_traits(&self, settings: &IngestSettings) -> Result<u64, StoreError>;
    /// Forget the message ids received before an instant (decision 8: they are
    /// remembered for the configured retention, 30 days by default); the events
    /// stay. Returns how many were forgotten.
    fn purge_message_ids(&self, received_before: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Add a loyalty programme or change one: the change is checked against
    /// the programme in force (`today` in the organisation's calendar) inside
    /// the transaction. The new revision, or why the change is refused.
    fn loyalty_apply(
        &self,
        programme: &relais_domain::loyalty::Programme,
        today: NaiveDate,
    ) -> Result<Result<i64, relais_domain::loyalty::ProgrammeError>, StoreError>;
    /// Every loyalty programme.
    fn loyalty_programmes(&self) -> Result<Vec<relais_domain::loyalty::Programme>, StoreError>;
    /// Enrol a person in a programme (or find their membership).
    fn loyalty_enrol(&self, customer: CustomerId, programme: &str) -> Result<(loyalty::MemberView, bool), StoreError>;
    /// One membership, whatever its state.
    fn loyalty_member(&self, id: relais_domain::MemberId) -> Result<Option<loyalty::MemberView>, StoreError>;
    /// A person's active memberships.
    fn loyalty_members_of(&self, customer: CustomerId) -> Result<Vec<loyalty::MemberView>, StoreError>;
    /// A membership's own entries (oldest first), its lots with points left and its badges.
    fn loyalty_entries(&self, id: relais_domain::MemberId) -> Result<loyalty::MemberLedger, StoreError>;
    /// Add a reward to a programme's catalogue or change it; its stock left.
    fn loyalty_put_reward(
        &self,
        programme: &str,
        reward: &relais_domain::loyalty::rewards::Reward,
    ) -> Result<Option<i64>, StoreError>;
    /// A programme's rewards with their stock left (`None`: unlimited).
    fn loyalty_rewards(
        &self,
        programme: &str,
    ) -> Result<Vec<(relais_domain::loyalty::rewards::Reward, Option<i64>)>, StoreError>;
    /// Confirm or cancel a reward redemption.
    fn loyalty_settle(
        &self,
        id: &str,
        confirm: bool,
        actor: &str,
        day: NaiveDate,
    ) -> Result<loyalty::RedemptionRow, StoreError>;
    /// Create a coupon campaign or change it, and issue codes (their keyed
    /// hashes): the campaign's codes issued and used so far.
    fn loyalty_issue_coupons(
        &self,
        programme: &str,
        campaign: &relais_domain::loyalty::coupons::Campaign,
        code_hashes: &[String],
    ) -> Result<(i64, i64), StoreError>;
    /// A programme's coupon campaigns with their codes issued and used.
    fn loyalty_campaigns(
        &self,
        programme: &str,
    ) -> Result<Vec<(relais_domain::loyalty::coupons::Campaign, i64, i64)>, StoreError>;
    /// Use a coupon for a member.
    fn loyalty_use_coupon(&self, request: &loyalty::CouponRequest) -> Result<loyalty::CouponAccepted, StoreError>;
    /// Apply a redemption or an adjustment once per idempotency key.
    fn loyalty_operate(&self, request: &loyalty::ManualOperation) -> Result<loyalty::OperationAnswer, StoreError>;
    /// Expire the lots whose expiry day has come: (members touched, points expired).
    fn loyalty_expire(&self, day: NaiveDate) -> Result<(usize, i64), StoreError>;
    /// Review tiers on `day`: downgrades whose grace period is over, notices
    /// on review dates (and upgrades not yet made), each member told of a
    /// notice, a downgrade or an upgrade by e-mail queued in the change's transaction.
    /// The number of changes made.
    fn loyalty_review(&self, day: NaiveDate) -> Result<usize, StoreError>;
    /// Release the reward reservations whose hold is over at `now` (points
    /// and stock back, each in its own transaction, exactly once however many
    /// processes run it): (reservations released, points given back).
    fn loyalty_release(&self, now: DateTime<Utc>, day: NaiveDate) -> Result<(usize, i64), StoreError>;
    /// A member's tier measure between two days (inclusive).
    fn loyalty_tier_value(
        &self,
        id: relais_domain::MemberId,
        measure: relais_domain::loyalty::tiers::Measure,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<i64, StoreError>;
    /// The programme's liability and flows since a day (or since the start).
    fn loyalty_report(&self, programme: &str, since: Option<NaiveDate>) -> Result<loyalty::ReportRows, StoreError>;
    /// The ledger's invariants as stored.
    fn loyalty_check(&self) -> Result<loyalty::LedgerCheck, StoreError>;
    /// Forget answers stored under idempotency keys before an instant.
    fn loyalty_forget_answers(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Every completed order in `currency`: the surviving profile, when, the
    /// amount (erased people's orders are left out: they belong to nobody).
    fn purchases(&self, currency: &str) -> Result<Vec<(CustomerId, DateTime<Utc>, i64)>, StoreError>;
    /// Save a segment by name (a new one, or a new source for an existing one);
    /// returns it as stored.
    fn segment_put(&self, record: &segments::SegmentRecord) -> Result<segments::SegmentRecord, StoreError>;
    /// Every saved segment, by name.
    fn segments(&self) -> Result<Vec<segments::SegmentRecord>, StoreError>;
    /// Delete a segment and its memberships; false if there was none.
    fn segment_delete(&self, name: &str) -> Result<bool, StoreError>;
    /// The facts of `columns` for every surviving profile, or those of `only`.
    fn segment_facts(
        &self,
        columns: &[relais_domain::segment::Column],
        only: Option<&[CustomerId]>,
        now: DateTime<Utc>,
    ) -> Result<(Vec<CustomerId>, relais_domain::segment::FactTable), StoreError>;
    /// Make each segment's evaluated members its members within `scope`
    /// (everyone when `None`): one transaction adds and removes memberships,
    /// writes the `Segment Entered` / `Segment Exited` computed events, and the
    /// sizes. One change per segment, in order.
    fn segment_sync(
        &self,
        evaluated: &[(segments::SegmentRecord, Vec<CustomerId>)],
        scope: Option<&[CustomerId]>,
        now: DateTime<Utc>,
    ) -> Result<Vec<segments::MembershipChange>, StoreError>;
    /// Members of a segment by customer id, after `after`, with when they entered.
    fn segment_members(
        &self,
        segment: relais_domain::SegmentId,
        after: Option<CustomerId>,
        limit: usize,
    ) -> Result<Vec<(CustomerId, DateTime<Utc>)>, StoreError>;
    /// People in both segments.
    fn segment_overlap(&self, a: relais_domain::SegmentId, b: relais_domain::SegmentId) -> Result<i64, StoreError>;
    /// The profiles merged into any of `survivors`.
    fn merged_into(&self, survivors: &[CustomerId]) -> Result<Vec<CustomerId>, StoreError>;
    /// Replace the stored scores (segments read them as traits).
    fn scores_put(&self, scores: &[segments::CustomerScore], at: DateTime<Utc>) -> Result<(), StoreError>;
    /// What a segment's members did from `first_day` to `last_day` (revenue,
    /// survey answers between `from` and `to`), and their lifetime value.
    fn segment_figures(
        &self,
        segment: relais_domain::SegmentId,
        first_day: NaiveDate,
        last_day: NaiveDate,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<segments::SegmentFigures, StoreError>;
    /// Record a segment's size and mean lifetime value for a day (replacing that day's).
    fn snapshot_put(
        &self,
        segment: relais_domain::SegmentId,
        snapshot: &segments::Snapshot,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// A segment's snapshots, oldest first.
    fn snapshots(&self, segment: relais_domain::SegmentId) -> Result<Vec<segments::Snapshot>, StoreError>;
    /// Save a typology by name; returns it as stored.
    fn typology_put(&self, record: &segments::TypologyRecord) -> Result<segments::TypologyRecord, StoreError>;
    /// Every typology, by name.
    fn typologies(&self) -> Result<Vec<segments::TypologyRecord>, StoreError>;
    /// Delete a typology; false if there was none.
    fn typology_delete(&self, name: &str) -> Result<bool, StoreError>;
    /// The events a journey can be made of (page, screen and track, computed
    /// ones left out) from `from` (inclusive) to `to` (exclusive), each under
    /// its surviving profile, handed to `visit` one at a time without holding
    /// them all in memory, in an order where a profile's events with the same
    /// instant come in the order they were stored (the caller sorts by person
    /// and time); `visit` answers `false` to stop. Erased people's events are
    /// left out. Returns how many were read.
    fn journey_events(
        &self,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        visit: &mut dyn FnMut(&relais_domain::journey::LoggedEvent<'_>) -> bool,
    ) -> Result<u64, StoreError>;
    /// Create a back-office user with the argon2 hash of their password
    /// (`Conflict` when the e-mail is taken).
    fn user_create(&self, user: &web::User, password_hash: &str) -> Result<(), StoreError>;
    /// An enabled user and their password hash, by e-mail (lower case).
    fn user_by_email(&self, email: &str) -> Result<Option<(web::User, String)>, StoreError>;
    /// An enabled user by id.
    fn user(&self, id: relais_domain::UserId) -> Result<Option<web::User>, StoreError>;
    /// Store a browser session under the hash of its secret.
    fn session_put(&self, token_hash: &str, session: &web::WebSession) -> Result<(), StoreError>;
    /// A session that has not expired at `now`.
    fn session(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<web::WebSession>, StoreError>;
    /// End a session (sign out); expired sessions are removed too.
    fn session_delete(&self, token_hash: &str, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Store a portal sign-in code (a new code replaces an equal one).
    fn sign_in_code_put(&self, code: &web::SignInCode) -> Result<(), StoreError>;
    /// Use a sign-in code once: the customer it signs in, or `None` when it is
    /// wrong, used, expired or out of attempts (a wrong typed code counts
    /// against the member's pending codes).
    fn sign_in_code_use(
        &self,
        kind: web::CodeKind,
        customer: Option<CustomerId>,
        code_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<CustomerId>, StoreError>;
    /// A profile's scores from the last refresh (RFM and lifetime value).
    fn customer_score(&self, customer: CustomerId) -> Result<Option<segments::ScoreRow>, StoreError>;
    /// Events received since `since` (computed ones left out), counted by
    /// bucket of `bucket_seconds` (the bucket's start, Unix seconds) and channel.
    fn event_flow(&self, since: DateTime<Utc>, bucket_seconds: i64) -> Result<Vec<(i64, String, i64)>, StoreError>;
    /// Whether the database answers (cheap: for `/healthz`).
    fn ping(&self) -> Result<(), StoreError>;
    /// Number of (customers, events) stored.
    fn counts(&self) -> Result<(u64, u64), StoreError>;
    /// The durability settings in force, as (name, value) pairs, for tests and `/healthz`.
    fn durability(&self) -> Result<Vec<(String, String)>, StoreError>;
}

/// The storage handle shared by the HTTP layer and the CLI.
#[derive(Clone)]
pub struct Store {
    engine: Arc<dyn Engine>,
    auditor: Arc<crate::privacy::audit::Auditor>,
}

impl Store {
    /// Open (creating and migrating as needed) the store at `location`, with
    /// the master key from the environment (see `master_key`) and the data
    /// classes of `RELAIS_DATA_CLASSES`.
    pub fn open(location: &Location, settings: IngestSettings) -> Result<Store, StoreError> {
        let master = master_key(location)?;
        let classes = crate::privacy::classification_from_env().map_err(|e| StoreError::Config(e.to_string()))?;
        Store::open_with(location, settings, &master, classes, audit_dir(location))
    }

    /// Open with an explicit master key and classification.
    pub fn open_with(
        location: &Location,
        settings: IngestSettings,
        master: &crate::privacy::MasterKey,
        classes: relais_domain::privacy::Classification,
        audit_dir: PathBuf,
    ) -> Result<Store, StoreError> {
        let engine: Arc<dyn Engine> = match location {
            Location::Folder(folder) => Arc::new(sqlite::SqliteEngine::open(folder, settings, master, classes)?),
            Location::Postgres(url) => Arc::new(postgres::PgEngine::open(url, settings, master, classes)?),
        };
        Ok(Store { engine, auditor: Arc::new(crate::privacy::audit::Auditor::new(audit_dir)) })
    }

    /// Record an audit entry (blocking). An error means it was not recorded:
    /// the caller must not go on with the action.
    pub fn audit(&self, entry: crate::privacy::audit::AuditEntry) -> Result<(), StoreError> {
        self.auditor.record(self.engine.as_ref(), entry)
    }

    /// Run a blocking engine call that may record audit entries through the
    /// `Audit` handle it is given, off the async executor.
    pub async fn run_audited<T, F>(&self, call: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Engine, &Audit<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (engine, auditor) = (self.engine.clone(), self.auditor.clone());
        tokio::task::spawn_blocking(move || {
            let audit = Audit { engine: engine.as_ref(), auditor: &auditor };
            call(engine.as_ref(), &audit)
        })
        .await
        .map_err(|e| StoreError::Database(format!("storage task failed: {e}")))?
    }

    /// `run_audited` for blocking callers (the command line).
    pub fn blocking_audited<T>(
        &self,
        call: impl FnOnce(&dyn Engine, &Audit<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let audit = Audit { engine: self.engine.as_ref(), auditor: &self.auditor };
        call(self.engine.as_ref(), &audit)
    }

    /// Close this process's audit segment with a checkpoint (at shutdown).
    pub fn close_audit(&self) -> Result<(), StoreError> {
        self.auditor.close(self.engine.as_ref())
    }

    /// Where the heads of the audit chain are kept, outside the database.
    pub fn audit_dir(&self) -> &std::path::Path {
        self.auditor.head_dir()
    }

    /// The data classes and keys in force.
    pub fn privacy(&self) -> &seal::Privacy {
        self.engine.privacy()
    }

    /// The engine's name.
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// Run a blocking engine call off the async executor.
    pub async fn run<T, F>(&self, call: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Engine) -> Result<T, StoreError> + Send + 'static,
    {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || call(engine.as_ref()))
            .await
            .map_err(|e| StoreError::Database(format!("storage task failed: {e}")))?
    }

    /// The engine, for blocking callers (CLI, benches).
    pub fn blocking(&self) -> &dyn Engine {
        self.engine.as_ref()
    }
}

/// Records audit entries during a blocking call (see `Store::run_audited`).
pub struct Audit<'a> {
    engine: &'a dyn Engine,
    auditor: &'a crate::privacy::audit::Auditor,
}

impl Audit<'_> {
    /// The folder outside the database where audit heads and the erasure journal live.
    pub fn outside_dir(&self) -> &std::path::Path {
        self.auditor.head_dir()
    }

    /// Record `action` by `actor` about `subject`; an error fails the action.
    pub fn record(
        &self,
        actor: &str,
        action: &str,
        subject: Option<CustomerId>,
        detail: Value,
    ) -> Result<(), StoreError> {
        self.auditor.record(
            self.engine,
            crate::privacy::audit::AuditEntry { actor: actor.into(), action: action.into(), subject, detail },
        )
    }
}

/// Where audit heads are kept: `RELAIS_AUDIT_DIR`, else the SQLite data
/// folder's `audit` folder, else `relais-audit` in the working directory.
pub fn audit_dir(location: &Location) -> PathBuf {
    match (std::env::var_os("RELAIS_AUDIT_DIR"), location) {
        (Some(dir), _) => PathBuf::from(dir),
        (None, Location::Folder(folder)) => folder.join("audit"),
        (None, Location::Postgres(_)) => PathBuf::from("relais-audit"),
    }
}

/// A rights request from its stored columns.
pub(crate) fn rights_request(
    request_id: &str,
    kind: &str,
    customer_id: Option<&str>,
    times: (DateTime<Utc>, DateTime<Utc>, Option<DateTime<Utc>>),
    status: &str,
    outcome: &str,
    recorded_by: String,
) -> Result<RightsRequest, StoreError> {
    use relais_domain::rights::{RequestStatus, RightKind};
    let bad = |what: &str, v: &str| StoreError::Database(format!("stored rights request has an unknown {what} `{v}`"));
    Ok(RightsRequest {
        request_id: relais_domain::RequestId::parse(request_id).map_err(|e| StoreError::Database(e.to_string()))?,
        kind: RightKind::parse(kind).ok_or_else(|| bad("kind", kind))?,
        customer_id: customer_id.map(CustomerId::parse).transpose().map_err(|e| StoreError::Database(e.to_string()))?,
        received_at: times.0,
        due_at: times.1,
        status: RequestStatus::parse(status).ok_or_else(|| bad("status", status))?,
        completed_at: times.2,
        outcome: serde_json::from_str(outcome).unwrap_or(Value::Null),
        recorded_by,
    })
}

/// A consent fact as stored, read back (proof still sealed).
pub(crate) struct ConsentRow {
    purpose: String,
    channel: String,
    granted: bool,
    at: DateTime<Utc>,
    source: String,
    wording_version: String,
    proof: Vec<u8>,
}

impl ConsentRow {
    /// The fact, its proof opened with `keys`.
    fn open(
        self,
        keys: &std::collections::HashMap<CustomerId, crate::privacy::DataKey>,
    ) -> Result<relais_domain::consent::ConsentFact, StoreError> {
        use relais_domain::consent::{ConsentChannel, ConsentFact, ConsentSource, Proof, Purpose};
        let bad =
            |what: &str, value: &str| StoreError::Database(format!("stored consent has an unknown {what} `{value}`"));
        let owner = crate::privacy::keyring::sealed_owner(&self.proof)?;
        let proof: Proof = match keys.get(&owner) {
            Some(key) => serde_json::from_slice(&key.open(&self.proof)?)
                .map_err(|e| StoreError::Database(format!("a consent proof does not decode: {e}")))?,
            None => Proof::default(),
        };
        Ok(ConsentFact {
            purpose: Purpose::parse(&self.purpose).ok_or_else(|| bad("purpose", &self.purpose))?,
            channel: ConsentChannel::parse(&self.channel).ok_or_else(|| bad("channel", &self.channel))?,
            granted: self.granted,
            at: self.at,
            source: ConsentSource::parse(&self.source).ok_or_else(|| bad("source", &self.source))?,
            wording_version: self.wording_version,
            proof,
        })
    }
}

/// Open stored consent rows, fetching the keys their proofs name.
fn open_consents(
    keyring: &crate::privacy::Keyring,
    rows: Vec<ConsentRow>,
    fetch: impl FnOnce(&[CustomerId]) -> Result<Vec<(CustomerId, Vec<u8>)>, StoreError>,
) -> Result<Vec<relais_domain::consent::ConsentFact>, StoreError> {
    let owners = seal::owners_of(rows.iter().map(|r| r.proof.as_slice()));
    let keys = seal::data_keys(keyring, &owners, fetch)?;
    rows.into_iter().map(|r| r.open(&keys)).collect()
}

/// The master key for a store: `RELAIS_MASTER_KEY`, `RELAIS_MASTER_KEY_FILE`,
/// or for a new SQLite data folder, a `master.key` file created in it.
pub fn master_key(location: &Location) -> Result<crate::privacy::MasterKey, StoreError> {
    let default_file = match location {
        // An existing database never gets a new key silently: its key file must be there.
        Location::Folder(folder) => {
            let file = folder.join("master.key");
            if file.exists() || !folder.join("relais.db").exists() {
                std::fs::create_dir_all(folder).map_err(|e| {
                    StoreError::Config(format!("cannot create the data folder {}: {e}", folder.display()))
                })?;
                Some(file)
            } else {
                None
            }
        }
        Location::Postgres(_) => None,
    };
    crate::privacy::MasterKey::from_env(default_file.as_deref()).map_err(|e| StoreError::Keys(e.to_string()))
}

/// The identifiers an event carried, as stored with it (for unmerges).
fn identifiers_json(identifiers: &[Identifier]) -> String {
    serde_json::to_string(&identifiers.iter().map(ToString::to_string).collect::<Vec<_>>())
        .unwrap_or_else(|_| "[]".into())
}

/// A new random API key secret and its stored hash.
pub fn new_api_key_secret() -> (String, String) {
    use base64::Engine as _;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = format!("rls_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    let hash = hash_api_key(&secret);
    (secret, hash)
}

/// The stored form of an API key: keys carry 256 random bits, so a plain SHA-256
/// is enough (no password stretching needed) and lookups stay one index probe.
pub fn hash_api_key(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A group account id for a Segment `groupId`.
pub fn new_account_id() -> AccountId {
    AccountId::new()
}

/// The engine's best case for the benchmark: insert already-parsed messages
/// (one profile per person, assigned without resolution) into a fresh database
/// at `location`, through the same write statements as ingest, one thread, one
/// large transaction per chunk. Chunks are made lazily, so memory stays flat;
/// only the time spent writing and committing is returned. Values are sealed
/// and identifiers tokenised with `privacy` (a throwaway keyring, or the one of
/// a store open on the same database, so that store can read the rows).
pub fn raw_load(
    location: &Location,
    privacy: &seal::Privacy,
    chunks: &mut dyn Iterator<Item = Vec<TrackingMessage>>,
) -> Result<std::time::Duration, StoreError> {
    match location {
        Location::Folder(folder) => sqlite::raw_load(folder, privacy, chunks),
        Location::Postgres(url) => postgres::raw_load(url, privacy, chunks),
    }
}

/// Keys for a raw load into a throwaway database.
pub fn raw_privacy() -> seal::Privacy {
    let (keyring, _) = crate::privacy::Keyring::create(&crate::privacy::MasterKey::generate());
    seal::Privacy::new(keyring, relais_domain::privacy::Classification::default())
}

/// What the raw load remembers from chunk to chunk: who owns each identifier,
/// and each profile's data key (the keyring caches only so many keys).
#[derive(Default)]
struct RawLoaded {
    owners: std::collections::HashMap<Identifier, CustomerId>,
    keys: std::collections::HashMap<CustomerId, crate::privacy::DataKey>,
}

/// Precomputed changes for the raw load: each distinct user id gets one profile,
/// with its data key; payloads are sealed as ingest seals them.
fn raw_changes<'a>(
    chunk: &'a [TrackingMessage],
    encoded: &'a [seal::EncodedEvent],
    loaded: &mut RawLoaded,
    privacy: &seal::Privacy,
) -> ingest::Changes<'a> {
    let RawLoaded { owners, keys } = loaded;
    let mut changes = ingest::Changes::default();
    for (message, encoded) in chunk.iter().zip(encoded) {
        let known = encoded.tokens.iter().find_map(|i| owners.get(i).copied());
        let customer = known.unwrap_or_else(|| {
            let id = CustomerId::new();
            changes.new_customers.push((id, message.received_at));
            let (key, wrapped) = privacy.keyring.new_data_key(id);
            keys.insert(id, key);
            changes.new_keys.push((id, wrapped));
            id
        });
        let key = keys.get(&customer).expect("every raw-load profile's key is kept").clone();
        for (token, identifier) in encoded.tokens.iter().zip(&message.identifiers) {
            if !owners.contains_key(token) {
                owners.insert(token.clone(), customer);
                changes.new_identifiers.push(ingest::NewIdentifier {
                    token: token.clone(),
                    value: seal::StoredValue::of(&privacy.classes, identifier, customer, &key),
                    customer,
                    at: message.received_at,
                });
            }
        }
        let event_id = EventId::new();
        let sealed = encoded.personal.as_deref().map(|plain| key.seal(customer, plain));
        changes.events.push(ingest::NewEvent {
            customer_id: customer,
            event_id,
            source: "raw",
            message,
            encoded,
            sealed,
        });
        changes.message_claims.push(("raw", &message.message_id, customer, event_id, message.received_at));
    }
    changes
}
