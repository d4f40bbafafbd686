//! The loyalty ledger's algorithms, written once for every engine: earning on
//! ingested events (inside the ingest transaction, so an event earns exactly
//! once and never without being stored), merging memberships with their
//! people, debits with idempotency keys, expiry and closing at erasure.
//!
//! Engines provide the primitives (`LedgerTx`). With several writers
//! (PostgreSQL), every algorithm locks the membership rows it changes
//! (`FOR UPDATE`, in id order) before reading balances or lots, so concurrent
//! debits and earns on one member serialise and a balance never goes negative.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use relais_domain::loyalty::ledger::Account;
use relais_domain::loyalty::rules::{order_lines, within_cap, EarnInput, OrderInput};
use relais_domain::loyalty::{allocate, Lot, Points, Programme, Reason, ReasonKind};
use relais_domain::message::events::{ORDER_COMPLETED, ORDER_REFUNDED};
use relais_domain::{CustomerId, EventId, LedgerTxId, MemberId, MessageType, TrackingMessage};
use serde::Serialize;

use super::ingest::IngestSettings;
use super::StoreError;

/// Every programme, as of a revision of the `loyalty_programmes` table.
#[derive(Debug, Default)]
pub struct Programmes {
    /// The table's highest revision when read.
    pub revision: i64,
    /// Programmes by key.
    pub by_key: BTreeMap<String, Programme>,
}

/// A shared cache of the programmes, reloaded when their revision moves.
#[derive(Debug, Default)]
pub struct ProgrammeCache(std::sync::Mutex<Option<Arc<Programmes>>>);

impl ProgrammeCache {
    /// The programmes at `revision`, reading them with `load` when the cache is older.
    pub fn get(
        &self,
        revision: i64,
        load: impl FnOnce() -> Result<Vec<Programme>, StoreError>,
    ) -> Result<Arc<Programmes>, StoreError> {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cached) = guard.as_ref().filter(|c| c.revision == revision) {
            return Ok(cached.clone());
        }
        let by_key = load()?.into_iter().map(|p| (p.head.key.clone(), p)).collect();
        let fresh = Arc::new(Programmes { revision, by_key });
        *guard = Some(fresh.clone());
        Ok(fresh)
    }
}

/// A membership's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberStatus {
    /// Earning and spending.
    Active,
    /// Joined another membership of the same person (`merged_into`).
    Merged,
    /// Closed by an erasure.
    Closed,
}

impl MemberStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Active => "active",
            MemberStatus::Merged => "merged",
            MemberStatus::Closed => "closed",
        }
    }

    /// From the stored name.
    pub fn parse(text: &str) -> Result<MemberStatus, StoreError> {
        match text {
            "active" => Ok(MemberStatus::Active),
            "merged" => Ok(MemberStatus::Merged),
            "closed" => Ok(MemberStatus::Closed),
            other => Err(StoreError::Database(format!("unknown membership status `{other}`"))),
        }
    }
}

/// A membership row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    /// The profile it was enrolled under (possibly merged into another since).
    pub customer: CustomerId,
    /// Its id.
    pub member: MemberId,
    /// Its programme.
    pub programme: String,
    /// The lookup token of its card (an identifier of kind `card`).
    pub card_token: String,
    /// Balance (the sum of its ledger entries).
    pub balance: Points,
    /// State.
    pub status: MemberStatus,
    /// The membership it joined, when merged.
    pub merged_into: Option<MemberId>,
    /// Enrolment.
    pub enrolled_at: DateTime<Utc>,
    /// Current tier.
    pub tier: Option<String>,
    /// Since when.
    pub tier_since: Option<DateTime<Utc>>,
    /// A downgrade announced for this day (a notice was given).
    pub downgrade_on: Option<NaiveDate>,
}

/// A change of tier to record.
#[derive(Debug, Clone)]
pub struct TierChange {
    /// The member's customer row.
    pub customer: CustomerId,
    /// The membership.
    pub member: MemberId,
    /// `upgrade`, `notice`, `notice_lifted` or `downgrade`.
    pub kind: &'static str,
    /// Tier before.
    pub from: Option<String>,
    /// Tier after (for a notice: the tier the member would move to).
    pub to: Option<String>,
    /// For a notice: the day the downgrade takes effect.
    pub effective_on: Option<NaiveDate>,
    /// The measure over the window that decided it.
    pub measured: i64,
    /// The day it was decided.
    pub day: NaiveDate,
}

/// One side of a ledger transaction.
#[derive(Debug, Clone)]
pub struct Leg {
    /// The customer row the entry is filed under (the member's).
    pub customer: CustomerId,
    /// The membership.
    pub member: MemberId,
    /// The account.
    pub account: Account,
    /// Signed points.
    pub points: Points,
    /// Why.
    pub reason: Reason,
    /// For credits that create a lot: when it expires.
    pub expires_on: Option<NaiveDate>,
}

/// A ledger transaction (a posting): legs summing to zero, and what they came from.
#[derive(Debug, Clone)]
pub struct Posting {
    /// Its id.
    pub id: LedgerTxId,
    /// `spend`, `event`, `first_purchase`, `refund`, `redemption`, `expiry`,
    /// `adjustment`, `merge`, `closure`.
    pub kind: &'static str,
    /// The rule that made it.
    pub rule: Option<String>,
    /// The source event.
    pub event_id: Option<EventId>,
    /// The source event's `messageId`.
    pub message_id: Option<String>,
    /// The order it concerns.
    pub order_id: Option<String>,
    /// The order's total, on earn entries (so refunds take back their share).
    pub basis_minor: Option<i64>,
    /// The day it refers to (organisation's calendar; caps count by it).
    pub day: NaiveDate,
    /// The programme's key.
    pub programme: String,
    /// The store of the source event, when given (earn and burn by store).
    pub store: Option<String>,
    /// Who made it, for manual operations (`key:…`, `cli:…`).
    pub actor: Option<String>,
    /// Its legs.
    pub legs: Vec<Leg>,
}

/// A new lot.
#[derive(Debug, Clone)]
pub struct NewLot {
    /// The member's customer row.
    pub customer: CustomerId,
    /// The membership.
    pub member: MemberId,
    /// Its id.
    pub lot_id: String,
    /// Points.
    pub points: Points,
    /// Points left at the end of the step that created it.
    pub remaining: Points,
    /// Expiry.
    pub expires_on: Option<NaiveDate>,
}

/// A stored answer to a debit request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    /// Hash of the request body it answered.
    pub request_hash: String,
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: String,
}

/// Everything one loyalty step writes.
#[derive(Debug, Default)]
pub struct LedgerWrite {
    /// Transactions to append.
    pub transactions: Vec<Posting>,
    /// Lots to create.
    pub new_lots: Vec<NewLot>,
    /// Lots whose remaining points changed: customer, lot, remaining.
    pub lot_updates: Vec<(CustomerId, String, Points)>,
    /// Memberships to create.
    pub new_members: Vec<MemberRow>,
    /// Memberships whose balance or status changed (final state).
    pub member_updates: Vec<MemberRow>,
    /// The answer to remember under an idempotency key: customer, scope, key, answer.
    pub answer: Option<(CustomerId, String, String, StoredAnswer)>,
    /// Tier changes to record.
    pub tier_changes: Vec<TierChange>,
    /// Points given back to lots (a cancelled redemption): customer, lot, points.
    pub lot_restores: Vec<(CustomerId, String, Points)>,
    /// Stock taken (negative) or given back (positive): programme, reward, change.
    pub stock_changes: Vec<(String, String, i64)>,
    /// Reward redemptions to record.
    pub new_redemptions: Vec<RedemptionRow>,
    /// Redemptions whose status changed: customer, id, new status.
    pub redemption_updates: Vec<(CustomerId, String, RedemptionStatus)>,
    /// A coupon used now.
    pub coupon_use: Option<CouponUseRow>,
    /// Draws played.
    pub draws: Vec<DrawRow>,
    /// Draw budgets paid: programme, rule, points.
    pub budget_spent: Vec<(String, String, Points)>,
    /// Challenge and streak progress to store: customer, member, rule, period start, state.
    pub progress: Vec<(CustomerId, MemberId, String, NaiveDate, String)>,
    /// Badges won: customer, member, badge, rule, day.
    pub badges: Vec<(CustomerId, MemberId, String, String, NaiveDate)>,
    /// Events relais computed, for the customer's timeline (decision 13:
    /// marked computed, they never feed traits or earning rules).
    pub computed_events: Vec<ComputedEvent>,
    /// E-mails to queue in the outbox in the same transaction (sealed with
    /// the customer's key): customer, `crate::outbox::Email` as JSON.
    pub emails: Vec<(CustomerId, serde_json::Value)>,
}

/// A reward reservation waiting for its hold to end: redemption id,
/// programme, reward, when it was made.
pub type Reservation = (String, String, String, DateTime<Utc>);

/// Where a service e-mail to a member goes: the surviving profile, its
/// e-mail address if it has one, and its profile (a declared language).
#[derive(Debug, Clone)]
pub struct Recipient {
    /// The surviving profile.
    pub customer: CustomerId,
    /// Its e-mail address (an identifier of kind `email`, not flagged shared).
    pub email: Option<String>,
    /// Its profile traits, opened.
    pub profile: serde_json::Map<String, serde_json::Value>,
}

/// An event relais computed (`Tier Changed`, `Points Expired`).
#[derive(Debug, Clone)]
pub struct ComputedEvent {
    /// The customer row it goes under.
    pub customer: CustomerId,
    /// Its id.
    pub event_id: EventId,
    /// Its name.
    pub name: &'static str,
    /// When.
    pub at: DateTime<Utc>,
    /// Its properties (no personal data: ids, tiers, points).
    pub properties: serde_json::Value,
}

impl ComputedEvent {
    fn new(customer: CustomerId, name: &'static str, properties: serde_json::Value) -> ComputedEvent {
        ComputedEvent { customer, event_id: EventId::new(), name, at: Utc::now(), properties }
    }
}

/// One play of an instant-win draw.
#[derive(Debug, Clone)]
pub struct DrawRow {
    /// The member's customer row.
    pub customer: CustomerId,
    /// The membership.
    pub member: MemberId,
    /// The programme.
    pub programme: String,
    /// The draw's rule.
    pub rule: String,
    /// The event that played.
    pub event_id: EventId,
    /// The roll (a keyed hash of the rule and the event, as a number).
    pub roll: u64,
    /// The odds, `a/b`: won when `roll % b < a` and the budget allowed.
    pub odds: String,
    /// Won.
    pub won: bool,
    /// Points paid.
    pub points: Points,
    /// The event's day.
    pub day: NaiveDate,
}

/// An issued coupon code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponRow {
    /// Its programme.
    pub programme: String,
    /// Its campaign.
    pub campaign: String,
    /// Who used it: customer, member, order.
    pub used_by: Option<(CustomerId, MemberId, Option<String>)>,
}

/// A coupon's use to record.
#[derive(Debug, Clone)]
pub struct CouponUseRow {
    /// The member's customer row.
    pub customer: CustomerId,
    /// The membership.
    pub member: MemberId,
    /// The code's hash.
    pub code_hash: String,
    /// Its programme.
    pub programme: String,
    /// Its campaign.
    pub campaign: String,
    /// The order it was used for.
    pub order_id: Option<String>,
    /// The day.
    pub day: NaiveDate,
}

/// Where a reward redemption stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedemptionStatus {
    /// Points and stock held, waiting for the till or the shop to confirm.
    Reserved,
    /// Handed over.
    Confirmed,
    /// Called off: points and stock given back.
    Cancelled,
}

impl RedemptionStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RedemptionStatus::Reserved => "reserved",
            RedemptionStatus::Confirmed => "confirmed",
            RedemptionStatus::Cancelled => "cancelled",
        }
    }

    /// From the stored name.
    pub fn parse(text: &str) -> Result<RedemptionStatus, StoreError> {
        match text {
            "reserved" => Ok(RedemptionStatus::Reserved),
            "confirmed" => Ok(RedemptionStatus::Confirmed),
            "cancelled" => Ok(RedemptionStatus::Cancelled),
            other => Err(StoreError::Database(format!("unknown redemption status `{other}`"))),
        }
    }
}

/// A reward redemption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedemptionRow {
    /// The member's customer row.
    pub customer: CustomerId,
    /// Its id (the id of the posting that debited the points).
    pub id: String,
    /// The membership.
    pub member: MemberId,
    /// The programme.
    pub programme: String,
    /// The reward.
    pub reward: String,
    /// Points debited.
    pub points: Points,
    /// Where it stands.
    pub status: RedemptionStatus,
    /// Lots the points came from, and how many from each.
    pub allocation: Vec<(String, Points)>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

impl LedgerWrite {
    /// Whether it writes nothing but the usual rows of a step: postings, new
    /// lots, updates of lots and memberships, and an idempotency answer.
    pub fn only_usual_rows(&self) -> bool {
        self.new_members.is_empty()
            && self.tier_changes.is_empty()
            && self.lot_restores.is_empty()
            && self.stock_changes.is_empty()
            && self.new_redemptions.is_empty()
            && self.redemption_updates.is_empty()
            && self.coupon_use.is_none()
            && self.draws.is_empty()
            && self.budget_spent.is_empty()
            && self.progress.is_empty()
            && self.badges.is_empty()
            && self.computed_events.is_empty()
            && self.emails.is_empty()
    }

    fn is_empty(&self) -> bool {
        self.transactions.is_empty()
            && self.new_members.is_empty()
            && self.member_updates.is_empty()
            && self.tier_changes.is_empty()
            && self.new_redemptions.is_empty()
            && self.redemption_updates.is_empty()
            && self.coupon_use.is_none()
            && self.draws.is_empty()
            && self.progress.is_empty()
            && self.computed_events.is_empty()
            && self.emails.is_empty()
    }
}

/// What an order earned and what its refunds took back so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderHistory {
    /// Points its earn entries granted.
    pub earned: Points,
    /// The order's total, as recorded when it earned.
    pub basis_minor: i64,
    /// Amount refunded so far.
    pub refunded_minor: i64,
}

/// Engine primitives for the ledger, inside the caller's transaction.
pub trait LedgerTx {
    /// The highest revision of the programmes table (0 when empty).
    fn programmes_revision(&mut self) -> Result<i64, StoreError>;
    /// Every programme.
    fn load_programmes(&mut self) -> Result<Vec<Programme>, StoreError>;
    /// Active memberships of these profiles and of the profiles merged into
    /// them, each with the root it belongs to; locked (in id order) where
    /// several writers exist.
    fn family_members(&mut self, roots: &[CustomerId]) -> Result<Vec<(CustomerId, MemberRow)>, StoreError>;
    /// `programmes_revision` and, once a programme exists (revision above 0;
    /// programmes are never deleted), `family_members`: one round trip where
    /// the engine can.
    fn family_and_revision(&mut self, roots: &[CustomerId]) -> Result<(Vec<(CustomerId, MemberRow)>, i64), StoreError> {
        let revision = self.programmes_revision()?;
        let members = if revision > 0 { self.family_members(roots)? } else { Vec::new() };
        Ok((members, revision))
    }
    /// One membership, whatever its state; locked where several writers exist.
    fn member(&mut self, id: MemberId) -> Result<Option<MemberRow>, StoreError>;
    /// Points a rule granted a member between two days (inclusive).
    fn cap_used(
        &mut self,
        member: &MemberRow,
        rule: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Points, StoreError>;
    /// Rules of a kind that already paid a member.
    fn rules_paid(&mut self, member: &MemberRow, kind: &str) -> Result<Vec<String>, StoreError>;
    /// What an order earned a member, and what refunds took back.
    fn order_history(&mut self, member: &MemberRow, order_id: &str) -> Result<OrderHistory, StoreError>;
    /// Lots with points left.
    fn open_lots(&mut self, member: &MemberRow) -> Result<Vec<Lot>, StoreError>;
    /// The member's lots of these ids, spent or not.
    fn lots_by_id(&mut self, member: &MemberRow, ids: &[String]) -> Result<Vec<Lot>, StoreError>;
    /// Lots with points left, in the order debits take them (`allocate`'s),
    /// at least until they hold `points`; all of them when they hold fewer.
    /// A frequent shopper holds hundreds of open lots, of which a debit takes
    /// one or two.
    fn lots_to_cover(&mut self, member: &MemberRow, points: Points) -> Result<Vec<Lot>, StoreError> {
        let _ = points;
        self.open_lots(member)
    }
    /// A member's tier measure between two days (inclusive).
    fn tier_value(
        &mut self,
        member: &MemberRow,
        measure: relais_domain::loyalty::tiers::Measure,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<i64, StoreError>;
    /// The answer stored under an idempotency key.
    fn idempotent_answer(
        &mut self,
        customer: CustomerId,
        scope: &str,
        key: &str,
    ) -> Result<Option<StoredAnswer>, StoreError>;
    /// The answer stored under an idempotency key and, when `debits` (a debit
    /// follows unless there is an answer), the member's open lots: one round
    /// trip where the engine can. The default reads the answer alone and
    /// leaves the lots to `lots_to_cover` (`None`).
    fn answer_and_lots(
        &mut self,
        member: &MemberRow,
        scope: &str,
        key: &str,
        debits: bool,
    ) -> Result<(Option<StoredAnswer>, Option<Vec<Lot>>), StoreError> {
        let _ = debits;
        Ok((self.idempotent_answer(member.customer, scope, key)?, None))
    }
    /// Apply a step.
    fn write_ledger(&mut self, write: &LedgerWrite) -> Result<(), StoreError>;
    /// A reward of a programme and its stock left (`None`: unlimited); locked
    /// where several writers exist, since its stock is shared.
    fn reward(
        &mut self,
        programme: &str,
        reward: &str,
    ) -> Result<Option<(relais_domain::loyalty::rewards::Reward, Option<i64>)>, StoreError>;
    /// An issued coupon code by its hash: programme, campaign, and who used it
    /// (customer, member, order) if anyone did; locked where several writers exist.
    fn coupon(&mut self, code_hash: &str) -> Result<Option<CouponRow>, StoreError>;
    /// A coupon campaign and its uses so far; locked (its count is shared).
    fn campaign(
        &mut self,
        programme: &str,
        campaign: &str,
    ) -> Result<Option<(relais_domain::loyalty::coupons::Campaign, i64)>, StoreError>;
    /// How many codes of a campaign a member used.
    fn coupon_uses(&mut self, member: &MemberRow, campaign: &str) -> Result<i64, StoreError>;
    /// Memberships of these profiles' families that were merged into another.
    fn merged_members(&mut self, roots: &[CustomerId]) -> Result<Vec<MemberRow>, StoreError>;
    /// Points a membership moved out when it joined another (merge postings).
    fn merge_transfer(&mut self, member: &MemberRow) -> Result<Points, StoreError>;
    /// Points given back to a membership for reservations `reserved_by` made
    /// before it joined it (cancellations and releases).
    fn given_back_for(&mut self, member: &MemberRow, reserved_by: MemberId) -> Result<Points, StoreError>;
    /// Points a membership's entries got from these events.
    fn event_points(&mut self, member: &MemberRow, events: &[String]) -> Result<Points, StoreError>;
    /// A number derived from `seed` with a secret key: a draw's roll, which
    /// nobody sending events can predict, and the organisation can recompute.
    fn roll(&mut self, seed: &str) -> Result<u64, StoreError>;
    /// Points a draw's budget has paid so far; locked (the budget is shared).
    fn draw_spent(&mut self, programme: &str, rule: &str) -> Result<Points, StoreError>;
    /// A member's stored progress on a challenge or streak for a period.
    fn progress(&mut self, member: &MemberRow, rule: &str, period: NaiveDate) -> Result<Option<String>, StoreError>;
    /// A reward redemption by id; locked where several writers exist.
    fn redemption(&mut self, id: &str) -> Result<Option<RedemptionRow>, StoreError>;
    /// The surviving profile of a profile (itself unless merged); `None` if unknown.
    fn root_of(&mut self, customer: CustomerId) -> Result<Option<CustomerId>, StoreError>;
    /// Link a card number to a profile as an identifier of kind `card`; its
    /// token, or `None` when the number is already taken.
    fn attach_card(
        &mut self,
        customer: CustomerId,
        card: &relais_domain::Identifier,
    ) -> Result<Option<String>, StoreError>;
    /// Names of the saved segments a surviving profile is in now.
    fn segments_of(&mut self, root: CustomerId) -> Result<Vec<String>, StoreError>;
    /// Where a service e-mail about a profile goes (following merges);
    /// `None` when the person is unknown or was erased. Needs the keys.
    fn recipient(&mut self, customer: CustomerId) -> Result<Option<Recipient>, StoreError>;
    /// Reward reservations (`reserved`) made at or before `before`:
    /// redemption id, programme, reward, when it was made; oldest first.
    fn reservations_before(&mut self, before: DateTime<Utc>) -> Result<Vec<Reservation>, StoreError>;
    /// The rewards (programme, reward) these profiles hold reserved, once per
    /// reservation; the reservations locked where several writers exist.
    fn reserved_rewards(&mut self, customers: &[CustomerId]) -> Result<Vec<(String, String)>, StoreError>;
}

/// What enrolling found or made.
#[derive(Debug, Clone)]
pub struct Enrolment {
    /// The membership.
    pub member: MemberRow,
    /// Whether it was created now (else it existed).
    pub created: bool,
}

/// Enrol a profile (its survivor, if merged) in a programme, issuing a card;
/// an existing active membership of the person is returned instead.
pub fn enrol(tx: &mut dyn LedgerTx, customer: CustomerId, programme: &str) -> Result<Enrolment, StoreError> {
    let root = tx.root_of(customer)?.ok_or(StoreError::NotFound)?;
    if let Some((_, existing)) = tx.family_members(&[root])?.into_iter().find(|(_, m)| m.programme == programme) {
        return Ok(Enrolment { member: existing, created: false });
    }
    let member = new_membership(tx, root, programme)?;
    let write = LedgerWrite { new_members: vec![member.clone()], ..LedgerWrite::default() };
    tx.write_ledger(&write)?;
    Ok(Enrolment { member, created: true })
}

impl MemberRow {
    /// A membership of `customer` enrolled now: active, no points, no tier.
    pub fn enrolled(customer: CustomerId, programme: &str, card_token: String) -> MemberRow {
        MemberRow {
            customer,
            member: MemberId::new(),
            programme: programme.to_string(),
            card_token,
            balance: 0,
            status: MemberStatus::Active,
            merged_into: None,
            enrolled_at: Utc::now(),
            tier: None,
            tier_since: None,
            downgrade_on: None,
        }
    }
}

/// A new active membership of `customer`, with a card number linked to the
/// profile as an identifier of kind `card` (not yet written: the caller does).
fn new_membership(tx: &mut dyn LedgerTx, customer: CustomerId, programme: &str) -> Result<MemberRow, StoreError> {
    let mut rng = rand::thread_rng();
    for _ in 0..8 {
        let card = relais_domain::loyalty::CardNumber::generate(&mut rng);
        let identifier = relais_domain::Identifier::new(relais_domain::IdentifierKind::Card, card.as_str())
            .map_err(|e| StoreError::Database(format!("a generated card number was refused: {e}")))?;
        let Some(card_token) = tx.attach_card(customer, &identifier)? else { continue };
        return Ok(MemberRow::enrolled(customer, programme, card_token));
    }
    Err(StoreError::Database("could not find a free card number after 8 tries".into()))
}

/// A membership as the API shows it.
#[derive(Debug, Clone)]
pub struct MemberView {
    /// The row.
    pub row: MemberRow,
    /// The profile it belongs to now.
    pub customer: CustomerId,
    /// The card number.
    pub card_number: Option<String>,
}

impl MemberView {
    /// Views of a person's membership rows, with the card numbers found for their tokens.
    pub fn of_person(rows: Vec<MemberRow>, customer: CustomerId, cards: &HashMap<String, String>) -> Vec<MemberView> {
        rows.into_iter()
            .map(|row| MemberView { card_number: cards.get(&row.card_token).cloned(), customer, row })
            .collect()
    }
}

/// One ledger entry of a member, for the statement.
#[derive(Debug, Clone)]
pub struct StatementEntry {
    /// Its transaction.
    pub tx_id: String,
    /// Kind of the transaction.
    pub kind: String,
    /// Signed points.
    pub points: Points,
    /// Rule.
    pub rule: Option<String>,
    /// The source event's `messageId`.
    pub message_id: Option<String>,
    /// Why.
    pub reason: Reason,
    /// Expiry of the points it credited.
    pub expires_on: Option<NaiveDate>,
    /// Who, for manual operations.
    pub actor: Option<String>,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// What a member's statement shows.
#[derive(Debug, Clone, Default)]
pub struct MemberLedger {
    /// Its entries, oldest first.
    pub entries: Vec<StatementEntry>,
    /// Its lots with points left.
    pub lots: Vec<Lot>,
    /// Its badges: badge, rule, day won.
    pub badges: Vec<(String, String, NaiveDate)>,
}

/// The ledger's invariants, as found in the database.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LedgerCheck {
    /// Sum of every entry (must be 0).
    pub total: i64,
    /// Transactions whose legs do not sum to zero.
    pub unbalanced_transactions: Vec<String>,
    /// Memberships whose balance differs from their entries or their lots: member, balance, entries, lots.
    pub mismatched_members: Vec<(String, i64, i64, i64)>,
    /// Memberships with a negative balance.
    pub negative_balances: Vec<String>,
    /// Memberships checked.
    pub members: u64,
}

impl LedgerCheck {
    /// Whether every invariant holds.
    pub fn holds(&self) -> bool {
        self.total == 0
            && self.unbalanced_transactions.is_empty()
            && self.mismatched_members.is_empty()
            && self.negative_balances.is_empty()
    }
}

/// An ingested event as earning sees it: the profile it finally belongs to
/// (after the batch's merges), its id and message.
pub type EarnEvent<'a> = (CustomerId, EventId, &'a TrackingMessage);

/// The state of memberships while a step runs: rows, lots loaded on demand,
/// cap usage as counted so far.
#[derive(Default)]
struct Book {
    members: BTreeMap<MemberId, MemberRow>,
    lots: HashMap<MemberId, Vec<Lot>>,
    /// Members whose `lots` hold only the first lots a debit takes (see
    /// `LedgerTx::lots_to_cover`), with this step's changes applied.
    partial_lots: BTreeSet<MemberId>,
    caps: HashMap<(MemberId, String, NaiveDate), Points>,
    first_paid: HashMap<MemberId, Vec<String>>,
    orders: HashMap<(MemberId, String), OrderHistory>,
    changed: BTreeSet<MemberId>,
    write: LedgerWrite,
    /// The lots the last debit took from.
    last_allocation: Vec<(String, Points)>,
    /// Draw budgets paid so far (stored plus this step).
    spent: HashMap<(String, String), Points>,
    /// Challenge and streak states as this step sees them.
    progress: HashMap<(MemberId, String, NaiveDate), serde_json::Value>,
}

impl Book {
    /// All of a member's open lots, as this step has changed them.
    fn lots<'a>(&'a mut self, tx: &mut dyn LedgerTx, member: MemberId) -> Result<&'a mut Vec<Lot>, StoreError> {
        if !self.lots.contains_key(&member) || self.partial_lots.contains(&member) {
            let row = self.members.get(&member).ok_or(StoreError::NotFound)?.clone();
            let mut lots = tx.open_lots(&row)?;
            if let Some(known) = self.lots.remove(&member) {
                // The stored lots do not show this step's debits and credits yet.
                let mut known: HashMap<String, Lot> = known.into_iter().map(|l| (l.id.clone(), l)).collect();
                for lot in &mut lots {
                    if let Some(changed) = known.remove(&lot.id) {
                        *lot = changed;
                    }
                }
                lots.extend(known.into_values());
            }
            self.add_new_lots(member, &mut lots);
            self.partial_lots.remove(&member);
            self.lots.insert(member, lots);
        }
        Ok(self.lots.get_mut(&member).expect("lots loaded"))
    }

    /// A member's open lots, at least those a debit of `points` takes.
    fn lots_to_cover<'a>(
        &'a mut self,
        tx: &mut dyn LedgerTx,
        member: MemberId,
        points: Points,
    ) -> Result<&'a mut Vec<Lot>, StoreError> {
        match self.lots.get(&member) {
            None => {
                let row = self.members.get(&member).ok_or(StoreError::NotFound)?.clone();
                let mut lots = tx.lots_to_cover(&row, points)?;
                self.add_new_lots(member, &mut lots);
                self.partial_lots.insert(member);
                self.lots.insert(member, lots);
            }
            Some(lots) if self.partial_lots.contains(&member) => {
                // Lots created in this step sort anywhere among the stored ones:
                // a partial list covers a debit only through stored lots it holds.
                let stored_left: Points = lots.iter().filter(|l| !self.is_new_lot(&l.id)).map(|l| l.remaining).sum();
                if stored_left < points {
                    return self.lots(tx, member);
                }
            }
            Some(_) => {}
        }
        Ok(self.lots.get_mut(&member).expect("lots loaded"))
    }

    /// Add the lots this step created for `member` that `lots`, just read from
    /// the database, cannot hold yet (an order earns, and its refund in the
    /// same batch takes back from the lot the order created).
    fn add_new_lots(&self, member: MemberId, lots: &mut Vec<Lot>) {
        for new in self.write.new_lots.iter().filter(|l| l.member == member) {
            if new.remaining > 0 && !lots.iter().any(|l| l.id == new.lot_id) {
                lots.push(Lot { id: new.lot_id.clone(), remaining: new.remaining, expires_on: new.expires_on });
            }
        }
    }

    fn is_new_lot(&self, id: &str) -> bool {
        self.write.new_lots.iter().any(|l| l.lot_id == id)
    }

    /// Credit a member from `counter`, creating a lot.
    fn credit(
        &mut self,
        mut transaction: Posting,
        member: MemberId,
        points: Points,
        counter: Account,
        reason: Reason,
        expires_on: Option<NaiveDate>,
    ) {
        let row = self.members.get_mut(&member).expect("member loaded");
        row.balance += points;
        let lot_id = transaction.id.to_string();
        transaction.legs = vec![
            Leg {
                customer: row.customer,
                member,
                account: Account::Member,
                points,
                reason: reason.clone(),
                expires_on,
            },
            Leg { customer: row.customer, member, account: counter, points: -points, reason, expires_on: None },
        ];
        let lot = Lot { id: lot_id.clone(), remaining: points, expires_on };
        if let Some(lots) = self.lots.get_mut(&member) {
            lots.push(lot);
        }
        self.write.new_lots.push(NewLot {
            customer: row.customer,
            member,
            lot_id,
            points,
            remaining: points,
            expires_on,
        });
        self.write.transactions.push(transaction);
        self.changed.insert(member);
    }

    /// Debit points (oldest expiry first) into `counter`; the points taken.
    /// Taking `Exactly` more than the balance is an error carrying the balance.
    fn debit(
        &mut self,
        tx: &mut dyn LedgerTx,
        mut transaction: Posting,
        member: MemberId,
        wanted: Take,
        counter: Account,
        reason: impl FnOnce(Points) -> Reason,
    ) -> Result<Result<Points, Points>, StoreError> {
        let customer = self.members.get(&member).ok_or(StoreError::NotFound)?.customer;
        let lots = match wanted {
            Take::Exactly(points) => self.lots_to_cover(tx, member, points)?,
            Take::UpTo(_) => self.lots(tx, member)?,
        };
        let available: Points = lots.iter().map(|l| l.remaining).sum();
        let take = match wanted {
            Take::Exactly(points) => points,
            Take::UpTo(points) => points.min(available),
        };
        let allocation = match allocate(lots, take) {
            Ok(a) => a,
            Err(balance) => return Ok(Err(balance)),
        };
        let mut updates = Vec::with_capacity(allocation.len());
        for (lot_id, points) in &allocation {
            let lot = lots.iter_mut().find(|l| &l.id == lot_id).expect("allocated lot exists");
            lot.remaining -= points;
            updates.push((customer, lot_id.clone(), lot.remaining));
        }
        self.write.lot_updates.extend(updates);
        self.last_allocation = allocation;
        let reason = reason(take);
        let row = self.members.get_mut(&member).expect("member loaded");
        row.balance -= take;
        transaction.legs = vec![
            Leg { customer, member, account: Account::Member, points: -take, reason: reason.clone(), expires_on: None },
            Leg { customer, member, account: counter, points: take, reason, expires_on: None },
        ];
        self.write.transactions.push(transaction);
        self.changed.insert(member);
        Ok(Ok(take))
    }

    fn finish(mut self) -> LedgerWrite {
        let mut lots: BTreeMap<(CustomerId, String), Points> = BTreeMap::new();
        for (customer, lot, remaining) in self.write.lot_updates.drain(..) {
            lots.insert((customer, lot), remaining);
        }
        // A lot created in this step is written with its final remaining points.
        for new in &mut self.write.new_lots {
            if let Some(remaining) = lots.remove(&(new.customer, new.lot_id.clone())) {
                new.remaining = remaining;
            }
        }
        self.write.lot_updates.extend(lots.into_iter().map(|((c, l), r)| (c, l, r)));
        let new_ids: BTreeSet<MemberId> = self.write.new_members.iter().map(|m| m.member).collect();
        for member in &self.changed {
            if let Some(row) = self.members.get(member) {
                if new_ids.contains(member) {
                    if let Some(new) = self.write.new_members.iter_mut().find(|m| m.member == *member) {
                        *new = row.clone();
                    }
                } else {
                    self.write.member_updates.push(row.clone());
                }
            }
        }
        self.write
    }
}

/// How much a debit takes.
#[derive(Debug, Clone, Copy)]
enum Take {
    /// This many, or nothing (a redemption).
    Exactly(Points),
    /// As many as the balance holds, up to this (a refund taking points back).
    UpTo(Points),
}

/// New lots of a member, each holding its points in full, named after
/// `posting` and their place (`{posting}-{n}`): moved between memberships,
/// given back or restored, points keep the expiry of the lots they came from.
fn lots_of_posting(
    posting: LedgerTxId,
    customer: CustomerId,
    member: MemberId,
    parts: impl IntoIterator<Item = (Points, Option<NaiveDate>)>,
) -> impl Iterator<Item = NewLot> {
    parts.into_iter().enumerate().map(move |(n, (points, expires_on))| NewLot {
        customer,
        member,
        lot_id: format!("{posting}-{n}"),
        points,
        remaining: points,
        expires_on,
    })
}

fn transaction(kind: &'static str, day: NaiveDate, programme: &str) -> Posting {
    Posting {
        id: LedgerTxId::new(),
        kind,
        programme: programme.to_string(),
        store: None,
        rule: None,
        event_id: None,
        message_id: None,
        order_id: None,
        basis_minor: None,
        day,
        actor: None,
        legs: Vec::new(),
    }
}

/// Whether a message may earn points (or enrol its sender): a named track event.
pub fn may_earn(message: &TrackingMessage) -> bool {
    message.kind == MessageType::Track && message.name.is_some()
}

/// Earn on a batch's stored events and join the memberships of the profiles
/// it merged, inside the ingest transaction. `merges` are (survivor, merged)
/// in the order they happened; `customers` are the batch's profiles as
/// written (their birth dates feed birthday bonuses).
pub fn earn_batch(
    tx: &mut dyn LedgerTx,
    events: &[EarnEvent<'_>],
    merges: &[(CustomerId, CustomerId)],
    customers: &[(CustomerId, super::ingest::CustomerState)],
    settings: &IngestSettings,
) -> Result<(), StoreError> {
    let relevant: Vec<&EarnEvent<'_>> = events.iter().filter(|(_, _, m)| may_earn(m)).collect();
    if relevant.is_empty() && merges.is_empty() {
        return Ok(());
    }
    // Merges are already written: memberships are found under the final survivors.
    let mut root_of: HashMap<CustomerId, CustomerId> = HashMap::new();
    for (survivor, merged) in merges {
        root_of.insert(*merged, *survivor);
    }
    let find = |mut c: CustomerId| {
        while let Some(next) = root_of.get(&c) {
            c = *next;
        }
        c
    };
    let mut roots: BTreeSet<CustomerId> = relevant.iter().map(|(c, _, _)| find(*c)).collect();
    roots.extend(merges.iter().map(|(survivor, _)| find(*survivor)));
    let roots: Vec<CustomerId> = roots.into_iter().collect();
    // The memberships are locked with the programmes' revision read: one
    // round trip for both, or none when the batch locked them already
    // (without a programme, and programmes are never deleted, there is no
    // membership to lock).
    let (rows, revision) = tx.family_and_revision(&roots)?;
    let programmes = settings.programmes.get(revision, || tx.load_programmes())?;
    if programmes.by_key.is_empty() {
        return Ok(());
    }
    let auto_enrol = programmes.by_key.values().any(|p| p.versions.iter().any(|v| v.enrol_on.is_some()));
    if rows.is_empty() && !auto_enrol {
        return Ok(());
    }
    // Read from the profiles only now: most batches earn nothing, and looking
    // for a birth date in every profile cost 2.5% of the SQLite writer's time.
    let birthdays: HashMap<CustomerId, NaiveDate> = customers
        .iter()
        .filter_map(|(id, state)| relais_domain::loyalty::rules::birth_date(&state.profile).map(|b| (*id, b)))
        .collect();
    let mut book = Book::default();
    let mut by_programme: BTreeMap<(CustomerId, String), Vec<MemberId>> = BTreeMap::new();
    for (root, row) in rows {
        by_programme.entry((root, row.programme.clone())).or_default().push(row.member);
        book.members.insert(row.member, row);
    }
    // Two memberships of one programme now belong to one person: they join
    // into the older one.
    let now_day = settings.day_of(Utc::now());
    let mut member_of: HashMap<(CustomerId, String), MemberId> = HashMap::new();
    for ((owner, programme), mut members) in by_programme {
        members.sort();
        let keep = members[0];
        for other in &members[1..] {
            join_members(tx, &mut book, keep, *other, now_day)?;
        }
        member_of.insert((owner, programme), keep);
    }

    for (customer, event_id, message) in relevant {
        let owner = find(*customer);
        let day = settings.day_of(message.timestamp);
        let name = message.name.as_deref().unwrap_or_default();
        for (key, programme) in &programmes.by_key {
            let member = match member_of.get(&(owner, key.clone())).copied() {
                Some(member) => member,
                None if programme.version_at(day).and_then(|v| v.enrol_on.as_deref()) == Some(name) => {
                    let row = new_membership(tx, owner, key)?;
                    let member = row.member;
                    book.write.new_members.push(row.clone());
                    book.members.insert(member, row);
                    book.lots.insert(member, Vec::new());
                    member_of.insert((owner, key.clone()), member);
                    member
                }
                None => continue,
            };
            if name == ORDER_REFUNDED {
                refund(tx, &mut book, member, programme, *event_id, message, day)?;
                continue;
            }
            let Some(version) = programme.version_at(day) else { continue };
            let order = (name == ORDER_COMPLETED).then_some(message.order.as_ref()).flatten().map(|o| OrderInput {
                order_id: o.order_id.as_deref(),
                amount_minor: o.amount_minor,
                currency: o.currency.as_str(),
                lines: order_lines(&message.properties, &o.currency),
            });
            let has_first = version
                .rules
                .iter()
                .any(|r| matches!(r.kind, relais_domain::loyalty::rules::RuleKind::FirstPurchase { .. }));
            if order.is_some() && has_first && !book.first_paid.contains_key(&member) {
                let row = book.members[&member].clone();
                let paid = tx.rules_paid(&row, "first_purchase")?;
                book.first_paid.insert(member, paid);
            }
            let done = book.first_paid.get(&member).cloned().unwrap_or_default();
            let tier = book.members[&member].tier.clone();
            let input = EarnInput {
                event: name,
                day,
                channel: message.channel.as_str(),
                store: message.store.as_deref(),
                order,
                first_purchase_done: &done,
                tier: tier.as_deref(),
                birthday: birthdays.get(&owner).copied(),
            };
            let expires = version.expiry.expires_on(day);
            for rule in version.rules.iter().filter(|r| r.kind.game_event() == Some(name)) {
                play(tx, &mut book, (member, key), rule, *event_id, message, day, expires)?;
            }
            for earning in version.earn(&input, &programme.head.currency) {
                let mut points = earning.points;
                if let Some(cap) = earning.cap {
                    let start = cap.per.start(day);
                    let slot = (member, earning.rule.clone(), start);
                    let used = match book.caps.get(&slot) {
                        Some(used) => *used,
                        None => {
                            let row = book.members[&member].clone();
                            tx.cap_used(&row, &earning.rule, start, cap.per.end(day))?
                        }
                    };
                    points = within_cap(points, Some(cap), used);
                    book.caps.insert(slot, used + points);
                }
                if points <= 0 {
                    continue;
                }
                let mut reason = earning.reason;
                if points < earning.points {
                    match &mut reason {
                        ReasonKind::Spend { capped, .. } | ReasonKind::Event { capped, .. } => *capped = true,
                        _ => {}
                    }
                }
                let kind = match reason {
                    ReasonKind::Spend { .. } => "spend",
                    ReasonKind::FirstPurchase { .. } => "first_purchase",
                    ReasonKind::Birthday => "birthday",
                    _ => "event",
                };
                if kind == "birthday" {
                    // Once a year: the first event of the day pays, no other.
                    let year = NaiveDate::from_ymd_opt(day.year(), 1, 1).unwrap_or(day);
                    let slot = (member, earning.rule.clone(), year);
                    let paid = match book.caps.get(&slot) {
                        Some(paid) => *paid,
                        None => {
                            let row = book.members[&member].clone();
                            let end = NaiveDate::from_ymd_opt(day.year(), 12, 31).unwrap_or(day);
                            tx.cap_used(&row, &earning.rule, year, end)?
                        }
                    };
                    book.caps.insert(slot, paid + points);
                    if paid > 0 {
                        continue;
                    }
                }
                if kind == "first_purchase" {
                    book.first_paid.entry(member).or_default().push(earning.rule.clone());
                }
                let mut t = transaction(kind, day, key);
                t.store = message.store.clone();
                t.rule = Some(earning.rule.clone());
                t.event_id = Some(*event_id);
                t.message_id = Some(message.message_id.clone());
                t.order_id = message.order.as_ref().and_then(|o| o.order_id.clone());
                t.basis_minor = (kind == "spend").then(|| message.order.as_ref().map(|o| o.amount_minor)).flatten();
                if let (Some(order), "spend") = (t.order_id.clone(), kind) {
                    let entry = book.orders.entry((member, order)).or_default();
                    entry.earned += points;
                    entry.basis_minor = t.basis_minor.unwrap_or_default();
                }
                let expires = version.expiry.expires_on(day);
                book.credit(t, member, points, Account::Issued, Reason { kind: reason, day }, expires);
            }
        }
    }
    let touched: Vec<MemberId> = book.changed.iter().copied().collect();
    let write = book.finish();
    if !write.is_empty() {
        tx.write_ledger(&write)?;
    }
    // Tiers move up as soon as the member qualifies (and a pending downgrade
    // is lifted), judged on the entries just written.
    let mut rows: Vec<MemberRow> = write.member_updates.iter().chain(&write.new_members).cloned().collect();
    rows.retain(|r| touched.contains(&r.member) && r.status == MemberStatus::Active);
    let mut tiers_write = LedgerWrite::default();
    for mut row in rows {
        let Some(tiers) = programmes.by_key.get(&row.programme).and_then(|p| p.version_at(now_day)?.tiers.clone())
        else {
            continue;
        };
        // At the top with no downgrade announced, earning cannot change anything.
        let top = tiers.levels.len().checked_sub(1);
        if row.downgrade_on.is_none() && tiers.rank(row.tier.as_deref()) == top {
            continue;
        }
        if let Some(change) = review_row(tx, &mut row, &tiers, now_day)? {
            if let Some(programme) = programmes.by_key.get(&row.programme) {
                tiers_write.emails.extend(tier_mail(tx, programme, &tiers, &row, &change, settings.language)?);
            }
            tiers_write.computed_events.push(tier_event(&change));
            tiers_write.tier_changes.push(change);
            tiers_write.member_updates.push(row);
        }
    }
    if !tiers_write.is_empty() {
        tx.write_ledger(&tiers_write)?;
    }
    Ok(())
}

/// Review one member's tier on `day` (its measure over the window ending that
/// day); the row is updated in place and the change to record returned.
fn review_row(
    tx: &mut dyn LedgerTx,
    row: &mut MemberRow,
    tiers: &relais_domain::loyalty::tiers::Tiers,
    day: NaiveDate,
) -> Result<Option<TierChange>, StoreError> {
    use relais_domain::loyalty::tiers::{review, ReviewOutcome};
    let value = tx.tier_value(row, tiers.measure, tiers.window_start(day), day)?;
    let outcome = review(tiers, day, value, row.tier.as_deref(), row.downgrade_on);
    let change =
        |kind: &'static str, to: Option<String>, effective_on: Option<NaiveDate>, row: &MemberRow| TierChange {
            customer: row.customer,
            member: row.member,
            kind,
            from: row.tier.clone(),
            to,
            effective_on,
            measured: value,
            day,
        };
    let kind = if matches!(outcome, ReviewOutcome::Upgrade(_)) { "upgrade" } else { "downgrade" };
    let recorded = match outcome {
        ReviewOutcome::Keep => return Ok(None),
        ReviewOutcome::Upgrade(to) | ReviewOutcome::Downgrade(Some(to)) => {
            let recorded = change(kind, Some(to.clone()), None, row);
            row.tier = Some(to);
            row.tier_since = Some(Utc::now());
            row.downgrade_on = None;
            recorded
        }
        ReviewOutcome::Downgrade(None) => {
            let recorded = change("downgrade", None, None, row);
            row.tier = None;
            row.tier_since = Some(Utc::now());
            row.downgrade_on = None;
            recorded
        }
        ReviewOutcome::Notice(on) => {
            let recorded = change("notice", tiers.qualifying(value).map(|l| l.id.clone()), Some(on), row);
            row.downgrade_on = Some(on);
            recorded
        }
        ReviewOutcome::LiftNotice => {
            let recorded = change("notice_lifted", row.tier.clone(), None, row);
            row.downgrade_on = None;
            recorded
        }
    };
    Ok(Some(recorded))
}

/// The timeline's trace of a tier change.
fn tier_event(change: &TierChange) -> ComputedEvent {
    ComputedEvent::new(
        change.customer,
        "Tier Changed",
        serde_json::json!({
            "member": change.member.to_string(), "change": change.kind, "from": change.from, "to": change.to,
            "effective_on": change.effective_on, "measured": change.measured,
        }),
    )
}

/// The e-mail telling a member about a tier change, when it is one members
/// are told about (an upgrade, a downgrade notice, the downgrade) and the person has an
/// e-mail address: the surviving profile and the `Email` payload, in the
/// language the profile declares, else `default_lang`. A service message
/// about the member's contract: no marketing consent is needed; an erased
/// person has no profile left, so nothing is sent.
fn tier_mail(
    tx: &mut dyn LedgerTx,
    programme: &Programme,
    tiers: &relais_domain::loyalty::tiers::Tiers,
    row: &MemberRow,
    change: &TierChange,
    default_lang: relais_domain::loyalty::Lang,
) -> Result<Option<(CustomerId, serde_json::Value)>, StoreError> {
    use relais_domain::loyalty::notices::{declared_lang, TierLetter, TierLetterKind};
    let name = |id: &Option<String>| id.as_deref().map(|id| tiers.level(id).map_or(id, |l| &l.name).to_string());
    let kind = match (change.kind, &change.to, &change.from, change.effective_on) {
        ("upgrade", Some(_), _, _) => {
            TierLetterKind::Upgrade { from: name(&change.from), to: name(&change.to).unwrap_or_default() }
        }
        ("notice", _, Some(tier), Some(on)) => {
            // Qualifying again on any day before `on` lifts the notice; on its
            // last day, the window ending then is the strictest: count what
            // will still be in it, from what is already recorded.
            let last = on.pred_opt().unwrap_or(on);
            let counted = tx.tier_value(row, tiers.measure, tiers.window_start(last), change.day)?;
            let Some(keep) = tiers.keep(tier, last, counted) else { return Ok(None) };
            TierLetterKind::Notice { tier: name(&change.from).unwrap_or_default(), next: name(&change.to), on, keep }
        }
        ("downgrade", _, Some(_), _) => {
            TierLetterKind::Downgrade { from: name(&change.from).unwrap_or_default(), to: name(&change.to) }
        }
        _ => return Ok(None),
    };
    let Some(recipient) = tx.recipient(change.customer)? else { return Ok(None) };
    let Some(to) = recipient.email else { return Ok(None) };
    let lang = declared_lang(&recipient.profile).unwrap_or(default_lang);
    let letter = TierLetter {
        programme: programme.head.name.clone(),
        unit: programme.head.unit.clone(),
        currency: programme.head.currency.clone(),
        measure: tiers.measure,
        window_months: tiers.window_months,
        day: change.day,
        kind,
    };
    let email =
        crate::outbox::Email { to, subject: letter.subject(lang), text: letter.text(lang), unsubscribe_url: None };
    let payload = serde_json::to_value(&email).map_err(|e| StoreError::Database(e.to_string()))?;
    Ok(Some((recipient.customer, payload)))
}

/// The scheduled tier review of one member on `day`: downgrades after their
/// grace period, notices at review dates; the member is told by e-mail of a
/// notice, a downgrade or an upgrade (in the same transaction, through the outbox), in
/// their declared language or `default_lang`.
pub fn review_member(
    tx: &mut dyn LedgerTx,
    member: MemberId,
    day: NaiveDate,
    default_lang: relais_domain::loyalty::Lang,
) -> Result<bool, StoreError> {
    let Some(mut row) = tx.member(member)? else { return Ok(false) };
    if row.status != MemberStatus::Active {
        return Ok(false);
    }
    let Some(programme) = tx.load_programmes()?.into_iter().find(|p| p.head.key == row.programme) else {
        return Ok(false);
    };
    let Some(tiers) = programme.version_at(day).and_then(|v| v.tiers.clone()) else {
        return Ok(false);
    };
    match review_row(tx, &mut row, &tiers, day)? {
        None => Ok(false),
        Some(change) => {
            let emails = tier_mail(tx, &programme, &tiers, &row, &change, default_lang)?.into_iter().collect();
            let write = LedgerWrite {
                member_updates: vec![row],
                computed_events: vec![tier_event(&change)],
                tier_changes: vec![change],
                emails,
                ..LedgerWrite::default()
            };
            tx.write_ledger(&write)?;
            Ok(true)
        }
    }
}

/// Move `other`'s balance and lots into `keep` (two memberships of one person).
fn join_members(
    tx: &mut dyn LedgerTx,
    book: &mut Book,
    keep: MemberId,
    other: MemberId,
    day: NaiveDate,
) -> Result<(), StoreError> {
    let lots: Vec<Lot> = book.lots(tx, other)?.iter().filter(|l| l.remaining > 0).cloned().collect();
    book.lots(tx, keep)?;
    let from = book.members[&other].clone();
    let into = book.members[&keep].clone();
    let moved: Points = lots.iter().map(|l| l.remaining).sum();
    let mut t = transaction("merge", day, &from.programme);
    t.legs = vec![
        Leg {
            customer: from.customer,
            member: other,
            account: Account::Member,
            points: -moved,
            reason: Reason { kind: ReasonKind::MergedOut { into: keep.to_string() }, day },
            expires_on: None,
        },
        Leg {
            customer: into.customer,
            member: keep,
            account: Account::Member,
            points: moved,
            reason: Reason { kind: ReasonKind::MergedIn { from: other.to_string() }, day },
            expires_on: None,
        },
    ];
    book.write.lot_updates.extend(lots.iter().map(|lot| (from.customer, lot.id.clone(), 0)));
    for new in lots_of_posting(t.id, into.customer, keep, lots.iter().map(|l| (l.remaining, l.expires_on))) {
        book.lots.get_mut(&keep).expect("loaded").push(Lot {
            id: new.lot_id.clone(),
            remaining: new.remaining,
            expires_on: new.expires_on,
        });
        book.write.new_lots.push(new);
    }
    if let Some(l) = book.lots.get_mut(&other) {
        l.iter_mut().for_each(|lot| lot.remaining = 0);
    }
    book.write.transactions.push(t);
    let gone = book.members.get_mut(&other).expect("loaded");
    gone.balance -= moved;
    gone.status = MemberStatus::Merged;
    gone.merged_into = Some(keep);
    book.members.get_mut(&keep).expect("loaded").balance += moved;
    book.changed.insert(other);
    book.changed.insert(keep);
    Ok(())
}

/// Take back the share of an order's points that a refund returns.
fn refund(
    tx: &mut dyn LedgerTx,
    book: &mut Book,
    member: MemberId,
    programme: &Programme,
    event_id: EventId,
    message: &TrackingMessage,
    day: NaiveDate,
) -> Result<(), StoreError> {
    let Some(order) = message.order.as_ref() else { return Ok(()) };
    let Some(order_id) = order.order_id.clone() else { return Ok(()) };
    if order.currency != programme.head.currency {
        return Ok(());
    }
    let slot = (member, order_id.clone());
    if !book.orders.contains_key(&slot) {
        let row = book.members[&member].clone();
        let history = tx.order_history(&row, &order_id)?;
        book.orders.insert(slot.clone(), history);
    }
    let history = book.orders[&slot];
    let reversal = relais_domain::loyalty::rules::refund_reversal(
        history.earned,
        history.basis_minor,
        history.refunded_minor,
        order.amount_minor,
    );
    book.orders.get_mut(&slot).expect("loaded").refunded_minor += order.amount_minor;
    if history.earned <= 0 {
        return Ok(());
    }
    // Recorded even when it takes nothing back (a small refund rounds to 0), so
    // later refunds of the same order know how much was refunded before.
    let mut t = transaction("refund", day, &programme.head.key);
    t.store = message.store.clone();
    t.event_id = Some(event_id);
    t.message_id = Some(message.message_id.clone());
    t.order_id = Some(order_id.clone());
    t.basis_minor = Some(order.amount_minor);
    let currency = order.currency.clone();
    let refunded = order.amount_minor;
    book.debit(tx, t, member, Take::UpTo(reversal), Account::Issued, |taken| Reason {
        kind: ReasonKind::Refund {
            order_id: Some(order_id),
            refunded_minor: refunded,
            currency,
            unrecovered: reversal - taken,
        },
        day,
    })?
    .ok();
    Ok(())
}

/// What a manual operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manual {
    /// Spend points (a till, the app, the call centre).
    Redemption,
    /// A correction by the team, credit or debit, with its reason.
    Adjustment,
}

/// A manual operation asked for through the API or the command line.
#[derive(Debug, Clone)]
pub struct ManualOperation {
    /// Redemption or adjustment.
    pub kind: Manual,
    /// The membership.
    pub member: MemberId,
    /// Signed points: negative debits, positive credits (adjustments only).
    /// For a reward, its cost is debited instead.
    pub points: Points,
    /// A reward of the catalogue to redeem (reserved until confirmed).
    pub reward: Option<String>,
    /// What for (redemption) or why (adjustment).
    pub reason: String,
    /// Who asks (`key:…`, `cli:…`).
    pub actor: String,
    /// The idempotency scope (API key and route) and key.
    pub scope: String,
    /// The `Idempotency-Key`.
    pub key: String,
    /// Hash of the request body.
    pub request_hash: String,
    /// Today in the organisation's calendar.
    pub day: NaiveDate,
}

/// The answer to a manual operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationAnswer {
    /// The stored answer (first or replayed): status and JSON body.
    Answer(StoredAnswer),
    /// The key was used with another body.
    KeyReused,
}

/// A membership, or the one it joined when its person's profiles merged (locked).
fn surviving_member(tx: &mut dyn LedgerTx, id: MemberId) -> Result<MemberRow, StoreError> {
    let mut row = tx.member(id)?.ok_or(StoreError::NotFound)?;
    let mut hops = 0;
    while let (MemberStatus::Merged, Some(next)) = (row.status, row.merged_into) {
        hops += 1;
        if hops > 16 {
            return Err(StoreError::Database("membership merge chain too long".into()));
        }
        row = tx.member(next)?.ok_or(StoreError::NotFound)?;
    }
    Ok(row)
}

/// Apply a manual operation once per idempotency key. The answer, refusals
/// included, is stored in the same transaction as the entries.
pub fn operate(tx: &mut dyn LedgerTx, request: &ManualOperation) -> Result<OperationAnswer, StoreError> {
    let row = surviving_member(tx, request.member)?;
    let debits = request.reward.is_some() || request.points < 0;
    let (previous, lots) = tx.answer_and_lots(&row, &request.scope, &request.key, debits)?;
    if let Some(previous) = previous {
        return Ok(if previous.request_hash == request.request_hash {
            OperationAnswer::Answer(previous)
        } else {
            OperationAnswer::KeyReused
        });
    }
    let mut book = Book::default();
    let (member, customer, status, programme) = (row.member, row.customer, row.status, row.programme.clone());
    let tier = row.tier.clone();
    book.members.insert(member, row);
    if let Some(lots) = lots {
        // Every open lot, read under the membership's lock.
        book.lots.insert(member, lots);
    }
    let stored = |status: u16, body: String| StoredAnswer { request_hash: request.request_hash.clone(), status, body };
    let day = request.day;
    let (kind, counter, reason) = match request.kind {
        Manual::Redemption => (
            "redemption",
            Account::Redeemed,
            Reason { kind: ReasonKind::Redemption { reason: request.reason.clone() }, day },
        ),
        Manual::Adjustment => (
            "adjustment",
            Account::Adjusted,
            Reason {
                kind: ReasonKind::Adjustment { reason: request.reason.clone(), actor: request.actor.clone() },
                day,
            },
        ),
    };
    let mut t = transaction(kind, day, &programme);
    t.actor = Some(request.actor.clone());
    let tx_id = t.id;
    let done = |points: Points, balance: Points| {
        serde_json::json!({
            "id": tx_id.to_string(),
            "member": member.to_string(),
            "points": points,
            "balance": balance,
            "reason": request.reason,
        })
        .to_string()
    };
    let answer = if status != MemberStatus::Active {
        stored(
            409,
            problem(
                "membership_closed",
                "Membership closed",
                "the account was closed when the customer's data was erased; nothing can change on it".into(),
                serde_json::json!({ "member": member.to_string() }),
            ),
        )
    } else if let Some(reward_id) = &request.reward {
        match tx.reward(&programme, reward_id)? {
            None => stored(
                404,
                problem_with(
                    404,
                    "unknown_reward",
                    "Unknown reward",
                    format!("programme `{programme}` has no reward `{reward_id}`"),
                    serde_json::json!({ "reward": reward_id }),
                ),
            ),
            Some((reward, left)) => {
                if let Some(why) = reward.refusal(day, tier.as_deref()) {
                    stored(
                        409,
                        problem(
                            "reward_unavailable",
                            "Reward unavailable",
                            why,
                            serde_json::json!({ "reward": reward_id }),
                        ),
                    )
                } else if left == Some(0) {
                    stored(
                        409,
                        problem(
                            "out_of_stock",
                            "Out of stock",
                            format!("`{reward_id}` has no stock left; nothing was debited"),
                            serde_json::json!({ "reward": reward_id }),
                        ),
                    )
                } else {
                    match book.debit(tx, t, member, Take::Exactly(reward.cost), counter, |_| reason)? {
                        Err(balance) => stored(
                            409,
                            problem(
                                "insufficient_balance",
                                "Insufficient balance",
                                format!(
                                    "the balance is {balance} points and `{reward_id}` costs {}; nothing was debited",
                                    reward.cost
                                ),
                                serde_json::json!({ "balance": balance, "requested": reward.cost, "member": member.to_string() }),
                            ),
                        ),
                        Ok(taken) => {
                            if left.is_some() {
                                book.write.stock_changes.push((programme.clone(), reward_id.clone(), -1));
                            }
                            book.write.new_redemptions.push(RedemptionRow {
                                customer,
                                id: tx_id.to_string(),
                                member,
                                programme: programme.clone(),
                                reward: reward_id.clone(),
                                points: taken,
                                status: RedemptionStatus::Reserved,
                                allocation: std::mem::take(&mut book.last_allocation),
                                created_at: Utc::now(),
                            });
                            let mut body: serde_json::Value =
                                serde_json::from_str(&done(-taken, book.members[&member].balance)).unwrap_or_default();
                            body["reward"] = serde_json::json!(reward_id);
                            body["status"] = serde_json::json!("reserved");
                            stored(201, body.to_string())
                        }
                    }
                }
            }
        }
    } else if request.points > 0 {
        // A credit earns a lot that expires like points earned today.
        let expires = tx
            .load_programmes()?
            .into_iter()
            .find(|p| p.head.key == programme)
            .and_then(|p| p.version_at(day).map(|v| v.expiry.expires_on(day)))
            .flatten();
        book.credit(t, member, request.points, counter, reason, expires);
        stored(201, done(request.points, book.members[&member].balance))
    } else {
        let wanted = -request.points;
        match book.debit(tx, t, member, Take::Exactly(wanted), counter, |_| reason)? {
            Ok(taken) => stored(201, done(-taken, book.members[&member].balance)),
            Err(balance) => stored(
                409,
                problem(
                    "insufficient_balance",
                    "Insufficient balance",
                    format!("the balance is {balance} points and {wanted} were asked; nothing was debited"),
                    serde_json::json!({ "balance": balance, "requested": wanted, "member": member.to_string() }),
                ),
            ),
        }
    };
    let mut write = book.finish();
    write.answer = Some((customer, request.scope.clone(), request.key.clone(), answer.clone()));
    tx.write_ledger(&write)?;
    Ok(OperationAnswer::Answer(answer))
}

/// An RFC 9457 problem document (as the HTTP layer writes them) with extra
/// members, stored as the answer to a refused operation (409 unless `status`).
fn problem(code: &str, title: &str, detail: String, extra: serde_json::Value) -> String {
    problem_with(409, code, title, detail, extra)
}

fn problem_with(status: u16, code: &str, title: &str, detail: String, extra: serde_json::Value) -> String {
    let mut body = serde_json::json!({
        "type": format!("https://relais.dev/problems/{code}"),
        "title": title,
        "status": status,
        "detail": detail,
        "message": detail,
        "code": code,
    });
    if let (Some(body), serde_json::Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body.to_string()
}

/// Expire what is due on `day` for one member: lots whose expiry day has come.
pub fn expire_member(tx: &mut dyn LedgerTx, member: MemberId, day: NaiveDate) -> Result<Points, StoreError> {
    let Some(row) = tx.member(member)? else { return Ok(0) };
    if row.status != MemberStatus::Active {
        return Ok(0);
    }
    let lots = tx.open_lots(&row)?;
    let customer = row.customer;
    let mut book = Book::default();
    book.members.insert(member, row);
    let mut expired = 0;
    for lot in lots.iter().filter(|l| l.expires_on.is_some_and(|e| e <= day) && l.remaining > 0) {
        expired += lot.remaining;
        book.write.lot_updates.push((customer, lot.id.clone(), 0));
    }
    if expired == 0 {
        return Ok(0);
    }
    let mut t = transaction("expiry", day, &book.members[&member].programme);
    let reason = Reason { kind: ReasonKind::Expiry, day };
    t.legs = vec![
        Leg { customer, member, account: Account::Member, points: -expired, reason: reason.clone(), expires_on: None },
        Leg { customer, member, account: Account::Expired, points: expired, reason, expires_on: None },
    ];
    book.write.transactions.push(t);
    book.members.get_mut(&member).expect("loaded").balance -= expired;
    book.changed.insert(member);
    book.write.computed_events.push(ComputedEvent::new(
        customer,
        "Points Expired",
        serde_json::json!({ "member": member.to_string(), "points": expired, "day": day }),
    ));
    tx.write_ledger(&book.finish())?;
    Ok(expired)
}

/// Close the memberships of erased profiles with a final entry each, so the
/// ledger's sum stays zero once the person is gone.
pub fn close_for_erasure(
    tx: &mut dyn LedgerTx,
    family: &[CustomerId],
    cluster: &[CustomerId],
    day: NaiveDate,
) -> Result<usize, StoreError> {
    // The erasure deletes the person's reservations: the units they hold go
    // back to the rewards' stock, as a cancellation would give them back.
    // Read (and locked) before the memberships, in the order a cancellation
    // takes its locks (the redemption, then the member).
    let reserved = tx.reserved_rewards(cluster)?;
    let rows = tx.family_members(family)?;
    let mut book = Book::default();
    let mut closed = 0;
    for (_, row) in rows {
        let member = row.member;
        book.members.insert(member, row);
        let lots = book.lots(tx, member)?.clone();
        let customer = book.members[&member].customer;
        let balance: Points = lots.iter().map(|l| l.remaining).sum();
        for lot in lots.iter().filter(|l| l.remaining > 0) {
            book.write.lot_updates.push((customer, lot.id.clone(), 0));
        }
        let mut t = transaction("closure", day, &book.members[&member].programme);
        let reason = Reason { kind: ReasonKind::Closure, day };
        t.legs = vec![
            Leg {
                customer,
                member,
                account: Account::Member,
                points: -balance,
                reason: reason.clone(),
                expires_on: None,
            },
            Leg { customer, member, account: Account::Closed, points: balance, reason, expires_on: None },
        ];
        book.write.transactions.push(t);
        let row = book.members.get_mut(&member).expect("loaded");
        row.balance = 0;
        row.status = MemberStatus::Closed;
        book.changed.insert(member);
        closed += 1;
    }
    for (programme, reward) in reserved {
        if tx.reward(&programme, &reward)?.is_some_and(|(_, left)| left.is_some()) {
            book.write.stock_changes.push((programme, reward, 1));
        }
    }
    if closed > 0 || !book.write.stock_changes.is_empty() {
        tx.write_ledger(&book.finish())?;
    }
    Ok(closed)
}

/// An order's history from its entries: (kind, points, basis) of the member's legs.
pub fn order_history_of(rows: Vec<(String, Points, Option<i64>)>) -> OrderHistory {
    let mut history = OrderHistory::default();
    for (kind, points, basis) in rows {
        match kind.as_str() {
            "spend" => {
                history.earned += points;
                history.basis_minor = basis.unwrap_or(history.basis_minor);
            }
            "refund" => history.refunded_minor += basis.unwrap_or_default(),
            _ => {}
        }
    }
    history
}

/// The invariants from the ledger's sums: the total, unbalanced transactions,
/// and per member (id, balance, sum of its entries, sum of its lots).
pub fn ledger_check(total: i64, unbalanced: Vec<String>, members: Vec<(String, i64, i64, i64)>) -> LedgerCheck {
    LedgerCheck {
        total,
        unbalanced_transactions: unbalanced,
        negative_balances: members.iter().filter(|m| m.1 < 0).map(|m| m.0.clone()).collect(),
        members: members.len() as u64,
        mismatched_members: members.into_iter().filter(|m| m.1 != m.2 || m.1 != m.3).collect(),
    }
}

/// Points by kind and rule over a period, on the members' side.
#[derive(Debug, Clone, Serialize)]
pub struct RuleTotal {
    /// `spend`, `event`, `redemption`, `expiry`…
    pub kind: String,
    /// The rule, for earn entries.
    pub rule: Option<String>,
    /// Points credited to members.
    pub credited: Points,
    /// Points debited from members.
    pub debited: Points,
}

/// Earn and burn at one store over a period.
#[derive(Debug, Clone, Serialize)]
pub struct StoreTotal {
    /// The store (`null`: online or not given).
    pub store: Option<String>,
    /// Points earned there.
    pub earned: Points,
    /// Points spent or taken back there.
    pub burned: Points,
}

/// The programme's figures for the team: what it owes and how points move.
#[derive(Debug, Clone, Serialize)]
pub struct LoyaltyReport {
    /// The programme.
    pub programme: String,
    /// First day counted in the flows (`null`: since the start).
    pub since: Option<NaiveDate>,
    /// Active members.
    pub members: u64,
    /// Points the members hold.
    pub outstanding_points: Points,
    /// Their value in minor units of the currency (points × point value).
    pub liability_minor: i64,
    /// Currency of the liability.
    pub currency: String,
    /// Outstanding points by the month they expire (`YYYY-MM`, or `never`).
    pub expiring_by_month: Vec<(String, Points)>,
    /// Points by kind and rule.
    pub by_rule: Vec<RuleTotal>,
    /// Earn and burn by store.
    pub by_store: Vec<StoreTotal>,
    /// Points issued by earn rules and credits in the period.
    pub issued: Points,
    /// Points redeemed in the period.
    pub redeemed: Points,
    /// Points expired in the period.
    pub expired: Points,
    /// Expired ÷ issued in the period (`null` when nothing was issued).
    pub breakage_rate: Option<f64>,
}

/// Raw figures an engine reads for a report.
#[derive(Debug, Default)]
pub struct ReportRows {
    /// Active members and their balances' sum.
    pub members: (u64, Points),
    /// (month or `never`, points) of open lots.
    pub expiring: Vec<(String, Points)>,
    /// (kind, rule, credited, debited) of member entries in the period.
    pub by_rule: Vec<(String, Option<String>, Points, Points)>,
    /// (store, earned, burned) of member entries in the period.
    pub by_store: Vec<(Option<String>, Points, Points)>,
}

impl LoyaltyReport {
    /// The report from an engine's rows.
    pub fn from_rows(programme: &Programme, since: Option<NaiveDate>, rows: ReportRows) -> LoyaltyReport {
        let sum = |kinds: &[&str], credits: bool| -> Points {
            rows.by_rule
                .iter()
                .filter(|(k, _, _, _)| kinds.contains(&k.as_str()))
                .map(|(_, _, c, d)| if credits { *c } else { *d })
                .sum()
        };
        let issued = sum(&["spend", "event", "first_purchase", "coupon", "adjustment"], true);
        let redeemed = sum(&["redemption"], false);
        let expired = sum(&["expiry"], false);
        LoyaltyReport {
            programme: programme.head.key.clone(),
            since,
            members: rows.members.0,
            outstanding_points: rows.members.1,
            liability_minor: rows.members.1.saturating_mul(programme.head.point_value_minor),
            currency: programme.head.currency.clone(),
            expiring_by_month: rows.expiring,
            by_rule: rows
                .by_rule
                .into_iter()
                .map(|(kind, rule, credited, debited)| RuleTotal { kind, rule, credited, debited })
                .collect(),
            by_store: rows
                .by_store
                .into_iter()
                .map(|(store, earned, burned)| StoreTotal { store, earned, burned })
                .collect(),
            issued,
            redeemed,
            expired,
            breakage_rate: (issued > 0).then(|| expired as f64 / issued as f64),
        }
    }
}

/// The SQL aggregate of a tier measure over a member's entries (their own
/// side): net order amounts, points earned by the rules, or engagement events.
pub fn tier_measure_sql(measure: relais_domain::loyalty::tiers::Measure) -> &'static str {
    use relais_domain::loyalty::tiers::Measure;
    match measure {
        Measure::Spend => {
            "SUM(CASE WHEN kind = 'spend' THEN basis_minor WHEN kind = 'refund' THEN -basis_minor ELSE 0 END)"
        }
        Measure::Points => "SUM(CASE WHEN kind IN ('spend', 'event', 'first_purchase') THEN points ELSE 0 END)",
        Measure::Engagement => "SUM(CASE WHEN kind = 'event' THEN 1 ELSE 0 END)",
    }
}

/// Programmes for which `day` is a tier review date.
pub fn reviewing(programmes: &[Programme], day: NaiveDate) -> Vec<String> {
    programmes
        .iter()
        .filter(|p| p.version_at(day).and_then(|v| v.tiers.as_ref()).is_some_and(|t| t.is_review_day(day)))
        .map(|p| p.head.key.clone())
        .collect()
}

/// Confirm or cancel a reward redemption. Confirming a reserved one hands it
/// over (twice is harmless); cancelling a reserved one gives back the points,
/// into the lots they came from, and the stock. A confirmed redemption cannot
/// be cancelled (an adjustment can give points back), a cancelled one cannot
/// be confirmed.
pub fn settle_redemption(
    tx: &mut dyn LedgerTx,
    id: &str,
    confirm: bool,
    actor: &str,
    day: NaiveDate,
) -> Result<RedemptionRow, StoreError> {
    let mut redemption = tx.redemption(id)?.ok_or(StoreError::NotFound)?;
    let wanted = if confirm { RedemptionStatus::Confirmed } else { RedemptionStatus::Cancelled };
    match (redemption.status, wanted) {
        (now, wanted) if now == wanted => return Ok(redemption),
        (RedemptionStatus::Confirmed, _) => {
            return Err(StoreError::Conflict(format!(
                "redemption {id} was confirmed (handed over); give points back with an adjustment instead"
            )))
        }
        (RedemptionStatus::Cancelled, _) => {
            return Err(StoreError::Conflict(format!("redemption {id} was cancelled; it cannot be confirmed")))
        }
        _ => {}
    }
    let mut write = LedgerWrite::default();
    if !confirm {
        let row = tx.member(redemption.member)?.ok_or(StoreError::NotFound)?;
        let owner = live_membership(tx, &row)?;
        if owner.status != MemberStatus::Active {
            return Err(StoreError::Conflict(format!(
                "redemption {id} belongs to a membership that is no longer active (membership {}, {}); \
                 there is nobody to give its points back to",
                owner.member,
                owner.status.as_str()
            )));
        }
        let reward = redemption.reward.clone();
        let reason = |reserved_by| ReasonKind::Cancellation { reward, reserved_by };
        write = give_back(tx, &redemption, &row, owner, reason, actor, day)?;
    }
    redemption.status = wanted;
    write.redemption_updates.push((redemption.customer, redemption.id.clone(), wanted));
    tx.write_ledger(&write)?;
    Ok(redemption)
}

/// The membership `row`'s points now live on: `row` itself, or the one it
/// joined when two memberships of one person became one (through every later
/// join), locked.
fn live_membership(tx: &mut dyn LedgerTx, row: &MemberRow) -> Result<MemberRow, StoreError> {
    let mut live = row.clone();
    for _ in 0..MAX_JOINS {
        let (MemberStatus::Merged, Some(next)) = (live.status, live.merged_into) else { return Ok(live) };
        live = tx.member(next)?.ok_or_else(|| {
            StoreError::Conflict(format!("membership {} joined {next}, which is missing", live.member))
        })?;
    }
    Err(StoreError::Conflict(format!("membership {} joined a chain of more than {MAX_JOINS} memberships", row.member)))
}

/// Joins followed from a membership to the one it lives on, at most.
const MAX_JOINS: usize = 64;

/// The write that gives a reserved redemption's points back and its stock
/// back to the catalogue; the caller marks the redemption cancelled.
/// `reserved_by` is the membership that reserved, `owner` the one it lives on now
/// (`live_membership`); `reason` makes the entry's reason from the membership
/// that reserved, named when it is not `owner`. The points go back into the lots they came from,
/// with their expiry; when the membership has since joined another, whose
/// lots took over its open ones, they go to that one instead, as new lots
/// keeping those expiry dates.
fn give_back(
    tx: &mut dyn LedgerTx,
    redemption: &RedemptionRow,
    reserved_by: &MemberRow,
    mut owner: MemberRow,
    reason: impl FnOnce(Option<String>) -> ReasonKind,
    actor: &str,
    day: NaiveDate,
) -> Result<LedgerWrite, StoreError> {
    let mut write = LedgerWrite::default();
    {
        let row = &mut owner;
        let points = redemption.points;
        let mut t = transaction("cancellation", day, &redemption.programme);
        t.actor = Some(actor.to_string());
        // Named when the points go to another membership, so that undoing the
        // merge gives them back to the one that reserved (`given_back_for`).
        let joined = (row.member != reserved_by.member).then(|| reserved_by.member.to_string());
        let reason = Reason { kind: reason(joined), day };
        t.legs = vec![
            Leg {
                customer: row.customer,
                member: row.member,
                account: Account::Member,
                points,
                reason: reason.clone(),
                expires_on: None,
            },
            Leg {
                customer: row.customer,
                member: row.member,
                account: Account::Redeemed,
                points: -points,
                reason,
                expires_on: None,
            },
        ];
        if row.member == reserved_by.member {
            write.lot_restores = redemption.allocation.iter().map(|(lot, p)| (row.customer, lot.clone(), *p)).collect();
        } else {
            let ids: Vec<String> = redemption.allocation.iter().map(|(lot, _)| lot.clone()).collect();
            let taken_from = tx.lots_by_id(reserved_by, &ids)?;
            let mut parts = Vec::with_capacity(redemption.allocation.len());
            for (lot, points) in &redemption.allocation {
                let expires_on = taken_from.iter().find(|l| &l.id == lot).map(|l| l.expires_on).ok_or_else(|| {
                    StoreError::Conflict(format!(
                        "redemption {} took points from lot {lot}, which is missing",
                        redemption.id
                    ))
                })?;
                parts.push((*points, expires_on));
            }
            write.new_lots.extend(lots_of_posting(t.id, row.customer, row.member, parts));
        }
        write.transactions.push(t);
        row.balance += points;
        write.member_updates.push(owner);
        if tx.reward(&redemption.programme, &redemption.reward)?.is_some_and(|(_, left)| left.is_some()) {
            write.stock_changes.push((redemption.programme.clone(), redemption.reward.clone(), 1));
        }
    }
    Ok(write)
}

/// Who releases forgotten reservations in the ledger and the audit log.
pub const RELEASE_ACTOR: &str = "system:reservation-hold";

/// The reservations among `candidates` (id, programme, reward, reserved at)
/// whose hold is over at `now`, by their reward's `hold_days` (the default
/// hold when the reward is no longer in the catalogue); each programme's
/// catalogue is read once through `rewards_of`.
pub fn due_reservations(
    candidates: Vec<Reservation>,
    now: DateTime<Utc>,
    mut rewards_of: impl FnMut(&str) -> Result<Vec<(relais_domain::loyalty::rewards::Reward, Option<i64>)>, StoreError>,
) -> Result<Vec<String>, StoreError> {
    use relais_domain::loyalty::rewards::DEFAULT_HOLD_DAYS;
    let mut rewards = HashMap::new();
    for programme in candidates.iter().map(|(_, p, _, _)| p.as_str()).collect::<std::collections::BTreeSet<_>>() {
        for (reward, _) in rewards_of(programme)? {
            rewards.insert((programme.to_string(), reward.id.clone()), reward);
        }
    }
    Ok(candidates
        .into_iter()
        .filter(|(_, programme, reward, at)| match rewards.get(&(programme.clone(), reward.clone())) {
            Some(reward) => reward.hold_over(*at, now),
            None => now >= *at + chrono::Duration::days(i64::from(DEFAULT_HOLD_DAYS)),
        })
        .map(|(id, ..)| id)
        .collect())
}

/// Release one reward reservation nobody confirmed or cancelled within its
/// reward's hold: the points go back to the member (into their lots, with a
/// statement line saying why) and the unit back to the stock, as a
/// cancellation would. Checked again under the locks (redemption, member,
/// reward, in the order `settle_redemption` takes them), so when two
/// processes run the job at once only one releases it: the points given
/// back, or `None` when it is not (or no longer) due.
pub fn release_redemption(
    tx: &mut dyn LedgerTx,
    id: &str,
    now: DateTime<Utc>,
    day: NaiveDate,
) -> Result<Option<Points>, StoreError> {
    let Some(mut redemption) = tx.redemption(id)? else { return Ok(None) };
    if redemption.status != RedemptionStatus::Reserved {
        return Ok(None);
    }
    let Some(row) = tx.member(redemption.member)? else { return Ok(None) };
    let owner = match live_membership(tx, &row) {
        Ok(owner) if owner.status == MemberStatus::Active => owner,
        // Closed by an erasure: nobody to give the points back to.
        Ok(_) => return Ok(None),
        Err(StoreError::Conflict(why)) => {
            // Data that does not hold together (a missing membership) is for
            // staff; the job goes on with the other reservations.
            tracing::warn!(redemption = %id, "reservation not released: {why}");
            return Ok(None);
        }
        Err(other) => return Err(other),
    };
    let reward = tx.reward(&redemption.programme, &redemption.reward)?.map(|(reward, _)| reward);
    let hold_days = reward.as_ref().map_or(relais_domain::loyalty::rewards::DEFAULT_HOLD_DAYS, |r| r.hold_days());
    if now < redemption.created_at + chrono::Duration::days(i64::from(hold_days)) {
        return Ok(None);
    }
    let reward = redemption.reward.clone();
    let reason = |reserved_by| ReasonKind::Released { reward, hold_days, reserved_by };
    let mut write = match give_back(tx, &redemption, &row, owner, reason, RELEASE_ACTOR, day) {
        Err(StoreError::Conflict(why)) => {
            tracing::warn!(redemption = %id, "reservation not released: {why}");
            return Ok(None);
        }
        other => other?,
    };
    redemption.status = RedemptionStatus::Cancelled;
    write.redemption_updates.push((redemption.customer, redemption.id.clone(), RedemptionStatus::Cancelled));
    tx.write_ledger(&write)?;
    Ok(Some(redemption.points))
}

/// A stored reward definition.
pub fn reward_from_json(text: &str) -> Result<relais_domain::loyalty::rewards::Reward, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Database(format!("bad stored reward: {e}")))
}

/// The stock left after a definition changes: what was already taken stays taken.
pub fn stock_after_change(old: Option<(Option<i64>, Option<i64>)>, new_stock: Option<i64>) -> Option<i64> {
    match (old, new_stock) {
        (_, None) => None,
        (Some((Some(old_stock), Some(left))), Some(stock)) => Some((stock - (old_stock - left)).max(0)),
        (_, Some(stock)) => Some(stock),
    }
}

/// A coupon presented for a member.
#[derive(Debug, Clone)]
pub struct CouponRequest {
    /// The membership.
    pub member: MemberId,
    /// The code's keyed hash.
    pub code_hash: String,
    /// The order it is used for.
    pub order_id: Option<String>,
    /// Today, organisation's calendar.
    pub day: NaiveDate,
}

/// A coupon accepted.
#[derive(Debug, Clone, Serialize)]
pub struct CouponAccepted {
    /// The campaign.
    pub campaign: String,
    /// What it gives.
    pub benefit: String,
    /// The membership (the survivor, if merged).
    pub member: String,
    /// The order it was used for.
    pub order_id: Option<String>,
    /// Points credited by it.
    pub bonus_points: Points,
    /// Balance after.
    pub balance: Points,
    /// `false` when this repeats an earlier use of the same code for the same member and order.
    pub new: bool,
}

/// Use a coupon: each code once, within the campaign's dates and targeting,
/// per-member limit and total; recorded against the order, with its bonus
/// points if any. Presenting the same code again for the same member and
/// order answers the first use (a retry); anyone else gets a 409.
pub fn use_coupon(tx: &mut dyn LedgerTx, request: &CouponRequest) -> Result<CouponAccepted, StoreError> {
    let row = surviving_member(tx, request.member)?;
    if row.status != MemberStatus::Active {
        return Err(StoreError::Conflict("this membership is closed".into()));
    }
    let code =
        tx.coupon(&request.code_hash)?.ok_or_else(|| StoreError::Conflict("this code was never issued".into()))?;
    let (campaign, used) = tx
        .campaign(&code.programme, &code.campaign)?
        .ok_or_else(|| StoreError::Database(format!("coupon campaign `{}` is missing", code.campaign)))?;
    let accepted = |balance: Points, new: bool, bonus: Points, order_id: Option<String>| CouponAccepted {
        campaign: campaign.id.clone(),
        benefit: campaign.benefit.clone(),
        member: row.member.to_string(),
        order_id,
        bonus_points: bonus,
        balance,
        new,
    };
    if let Some((_, member, order)) = &code.used_by {
        if *member == row.member && *order == request.order_id {
            return Ok(accepted(row.balance, false, campaign.bonus_points, order.clone()));
        }
        return Err(StoreError::Conflict("this code was already used; each code works once".into()));
    }
    if code.programme != row.programme {
        return Err(StoreError::Conflict(format!("this code belongs to programme `{}`", code.programme)));
    }
    if let Some(why) = campaign.refusal(request.day, row.tier.as_deref()) {
        return Err(StoreError::Conflict(why));
    }
    if !campaign.segments.is_empty() {
        // Segments hold surviving profiles; membership is as of now.
        let root = tx.root_of(row.customer)?.unwrap_or(row.customer);
        if let Some(why) = campaign.segment_refusal(&tx.segments_of(root)?) {
            return Err(StoreError::Conflict(why));
        }
    }
    if campaign.total.is_some_and(|total| used >= total) {
        return Err(StoreError::Conflict(format!("campaign `{}` has reached its {} uses", campaign.id, used)));
    }
    if tx.coupon_uses(&row, &campaign.id)? >= campaign.per_member {
        return Err(StoreError::Conflict(format!(
            "this member already used {} code(s) of campaign `{}`, the most allowed",
            campaign.per_member, campaign.id
        )));
    }
    let mut book = Book::default();
    let member = row.member;
    let programme = row.programme.clone();
    book.members.insert(member, row.clone());
    if campaign.bonus_points > 0 {
        let mut t = transaction("coupon", request.day, &programme);
        t.order_id = request.order_id.clone();
        let expires = tx
            .load_programmes()?
            .into_iter()
            .find(|p| p.head.key == programme)
            .and_then(|p| p.version_at(request.day).map(|v| v.expiry.expires_on(request.day)))
            .flatten();
        let reason = Reason {
            kind: ReasonKind::Coupon { campaign: campaign.id.clone(), order_id: request.order_id.clone() },
            day: request.day,
        };
        book.credit(t, member, campaign.bonus_points, Account::Issued, reason, expires);
    }
    let balance = book.members[&member].balance;
    let mut write = book.finish();
    write.coupon_use = Some(CouponUseRow {
        customer: row.customer,
        member,
        code_hash: request.code_hash.clone(),
        programme,
        campaign: campaign.id.clone(),
        order_id: request.order_id.clone(),
        day: request.day,
    });
    tx.write_ledger(&write)?;
    Ok(accepted(balance, true, campaign.bonus_points, request.order_id.clone()))
}

/// A stored coupon campaign.
pub fn campaign_from_json(text: &str) -> Result<relais_domain::loyalty::coupons::Campaign, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Database(format!("bad stored coupon campaign: {e}")))
}

/// The epoch day under which a streak keeps its one progress row.
fn streak_row() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date")
}

/// A draw, challenge or streak reacting to an event.
#[allow(clippy::too_many_arguments)]
fn play(
    tx: &mut dyn LedgerTx,
    book: &mut Book,
    (member, programme): (MemberId, &str),
    rule: &relais_domain::loyalty::rules::Rule,
    event_id: EventId,
    message: &TrackingMessage,
    day: NaiveDate,
    expires: Option<NaiveDate>,
) -> Result<(), StoreError> {
    use relais_domain::loyalty::rules::RuleKind;
    let row = book.members[&member].clone();
    let award = |book: &mut Book, kind: &'static str, points: Points, reason: ReasonKind| {
        let mut t = transaction(kind, day, programme);
        t.rule = Some(rule.id.clone());
        t.event_id = Some(event_id);
        t.message_id = Some(message.message_id.clone());
        t.store = message.store.clone();
        // Prizes expire like other points earned that day.
        book.credit(t, member, points, Account::Issued, Reason { kind: reason, day }, expires);
    };
    match &rule.kind {
        RuleKind::Draw { odds: (a, b), points, budget, .. } => {
            let slot = (programme.to_string(), rule.id.clone());
            let spent = match book.spent.get(&slot) {
                Some(spent) => *spent,
                None => tx.draw_spent(programme, &rule.id)?,
            };
            let roll = tx.roll(&format!("{programme}/{}/{event_id}", rule.id))?;
            let won = roll % b < *a && spent + points <= *budget;
            book.spent.insert(slot.clone(), spent + if won { *points } else { 0 });
            let odds = format!("{a}/{b}");
            book.write.draws.push(DrawRow {
                customer: row.customer,
                member,
                programme: programme.to_string(),
                rule: rule.id.clone(),
                event_id,
                roll,
                odds: odds.clone(),
                won,
                points: if won { *points } else { 0 },
                day,
            });
            if won {
                book.write.budget_spent.push((slot.0, slot.1, *points));
                award(book, "draw", *points, ReasonKind::Draw { rule: rule.id.clone(), odds });
            }
        }
        RuleKind::Challenge { distinct, count, per, points, badge, .. } => {
            let period = per.start(day);
            let key = (member, rule.id.clone(), period);
            let mut state = match book.progress.get(&key) {
                Some(state) => state.clone(),
                None => match tx.progress(&row, &rule.id, period)? {
                    Some(text) => serde_json::from_str(&text).unwrap_or_default(),
                    None => serde_json::json!({ "values": [], "done": false }),
                },
            };
            if state["done"] == true {
                return Ok(());
            }
            let value = match distinct.as_deref() {
                None => Some(event_id.to_string()),
                Some("store") => message.store.clone(),
                Some(property) => message.properties.get(property).and_then(|v| v.as_str()).map(str::to_string),
            };
            let Some(value) = value else { return Ok(()) };
            let values = state["values"].as_array_mut().expect("values is an array");
            if !values.iter().any(|v| v == value.as_str()) {
                values.push(serde_json::Value::String(value));
            }
            if values.len() >= *count as usize {
                state["done"] = serde_json::Value::Bool(true);
                award(
                    book,
                    "challenge",
                    *points,
                    ReasonKind::Challenge { rule: rule.id.clone(), badge: badge.clone() },
                );
                if let Some(badge) = badge {
                    book.write.badges.push((row.customer, member, badge.clone(), rule.id.clone(), day));
                }
            }
            book.write.progress.push((row.customer, member, rule.id.clone(), period, state.to_string()));
            book.progress.insert(key, state);
        }
        RuleKind::Streak { per, length, points, badge, .. } => {
            let key = (member, rule.id.clone(), streak_row());
            let mut state = match book.progress.get(&key) {
                Some(state) => state.clone(),
                None => match tx.progress(&row, &rule.id, streak_row())? {
                    Some(text) => serde_json::from_str(&text).unwrap_or_default(),
                    None => serde_json::json!({ "last": null, "length": 0 }),
                },
            };
            let period = per.start(day);
            let last = state["last"].as_str().and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
            // Events of a period already counted (or a late event from an
            // earlier one) leave the streak as it is.
            if last.is_some_and(|last| period <= last) {
                return Ok(());
            }
            let current =
                if last == Some(per.previous(period)) { state["length"].as_u64().unwrap_or(0) + 1 } else { 1 };
            state["last"] = serde_json::Value::String(period.to_string());
            state["length"] = serde_json::json!(current);
            if current % u64::from(*length) == 0 {
                award(book, "streak", *points, ReasonKind::Streak { rule: rule.id.clone(), length: current as u32 });
                if let Some(badge) = badge {
                    book.write.badges.push((row.customer, member, badge.clone(), rule.id.clone(), day));
                }
            }
            book.write.progress.push((row.customer, member, rule.id.clone(), streak_row(), state.to_string()));
            book.progress.insert(key, state);
        }
        _ => {}
    }
    Ok(())
}

/// A draw's roll: the first 64 bits of a keyed hash of `seed` (programme,
/// rule and event), so a sender cannot choose a message id that wins.
pub fn roll_of(keyring: &crate::privacy::Keyring, seed: &str) -> u64 {
    use base64::Engine as _;
    let token = keyring.lookup_token("draw", seed);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).unwrap_or_default();
    bytes.iter().take(8).fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// Undo the loyalty side of a merge, inside the unmerge's transaction: a
/// membership of the restored profile that had joined the survivor's becomes
/// active again and gets back what it brought (its balance at the merge),
/// what its own events earned since (`moved_events`, the events going back to
/// it) and the points of its reservations cancelled or released since. Refused, with the reason, when the survivor's balance no longer
/// covers that (the points were spent).
pub fn unmerge_members(
    tx: &mut dyn LedgerTx,
    restored: CustomerId,
    moved_events: &[String],
    day: NaiveDate,
) -> Result<usize, StoreError> {
    let mut book = Book::default();
    let mut restored_count = 0;
    for mut gone in tx.merged_members(&[restored])? {
        let Some(into) = gone.merged_into else { continue };
        let Some(kept) = tx.member(into)? else { continue };
        let back = tx.merge_transfer(&gone)?
            + tx.event_points(&kept, moved_events)?.max(0)
            + tx.given_back_for(&kept, gone.member)?;
        book.members.insert(kept.member, kept.clone());
        let available: Points = book.lots(tx, kept.member)?.iter().map(|l| l.remaining).sum();
        if back > available {
            return Err(StoreError::Conflict(format!(
                "membership {} has {available} points left but {back} belong to the profile being restored \
                 (spent since the merge); give them back with an adjustment first, then undo the merge",
                kept.member
            )));
        }
        let expiries: HashMap<String, Option<NaiveDate>> =
            book.lots[&kept.member].iter().map(|l| (l.id.clone(), l.expires_on)).collect();
        gone.status = MemberStatus::Active;
        gone.merged_into = None;
        book.members.insert(gone.member, gone.clone());
        book.lots.insert(gone.member, Vec::new());
        book.partial_lots.remove(&gone.member);
        let mut t = transaction("unmerge", day, &kept.programme);
        let reason_out = Reason { kind: ReasonKind::MergedOut { into: gone.member.to_string() }, day };
        let taken = book.debit(tx, t.clone(), kept.member, Take::Exactly(back), Account::Transfer, |_| reason_out)?;
        if taken.is_err() {
            continue;
        }
        // The debit was written as member → transfer; credit the restored
        // membership from the transfer account with the same lots' expiries.
        let allocation = std::mem::take(&mut book.last_allocation);
        t.id = LedgerTxId::new();
        let reason_in = Reason { kind: ReasonKind::MergedIn { from: kept.member.to_string() }, day };
        t.legs = vec![
            Leg {
                customer: gone.customer,
                member: gone.member,
                account: Account::Member,
                points: back,
                reason: reason_in.clone(),
                expires_on: None,
            },
            Leg {
                customer: gone.customer,
                member: gone.member,
                account: Account::Transfer,
                points: -back,
                reason: reason_in,
                expires_on: None,
            },
        ];
        let credit_id = t.id;
        book.write.transactions.push(t);
        // Named after this transaction, which is new: a lot named after the
        // one it came from could collide with a lot given back from that one
        // by an earlier unmerge.
        let parts = allocation.iter().map(|(lot, points)| (*points, expiries.get(lot).copied().flatten()));
        book.write.new_lots.extend(lots_of_posting(credit_id, gone.customer, gone.member, parts));
        book.members.get_mut(&gone.member).expect("inserted").balance += back;
        book.changed.insert(gone.member);
        restored_count += 1;
    }
    if restored_count > 0 {
        tx.write_ledger(&book.finish())?;
    }
    Ok(restored_count)
}
