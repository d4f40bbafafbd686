//! Tracking messages in the Segment spec (identify, track, page, screen, group,
//! alias), parsed and validated one by one so a bad message never takes others down.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cards::CardPolicy;
use crate::channel::Channel;
use crate::identifier::{Identifier, IdentifierError, IdentifierKind};
use crate::money::{MinorUnits, Money};

/// The largest accepted message, in bytes of JSON (as Segment).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// The largest accepted request body, decompressed, in bytes (as Segment).
pub const MAX_BATCH_BYTES: usize = 500 * 1024;
/// How far in the future a corrected timestamp may lie before it is refused.
pub const MAX_FUTURE_SKEW_HOURS: i64 = 24;
/// The longest accepted `messageId`, event name or group id.
pub const MAX_NAME_LEN: usize = 256;

/// The Segment call a message represents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    /// Who the person is, with traits.
    Identify,
    /// Something the person did.
    Track,
    /// A web page view.
    Page,
    /// An app screen view.
    Screen,
    /// Membership of an account (household, company).
    Group,
    /// Two ids of one person.
    Alias,
}

impl MessageType {
    /// The spec's name.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Identify => "identify",
            MessageType::Track => "track",
            MessageType::Page => "page",
            MessageType::Screen => "screen",
            MessageType::Group => "group",
            MessageType::Alias => "alias",
        }
    }

    /// Parse the spec's name.
    pub fn parse(name: &str) -> Option<MessageType> {
        Some(match name {
            "identify" => MessageType::Identify,
            "track" => MessageType::Track,
            "page" => MessageType::Page,
            "screen" => MessageType::Screen,
            "group" => MessageType::Group,
            "alias" => MessageType::Alias,
            _ => return None,
        })
    }
}

/// Why a message was rejected; the text is returned to the sender as is.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum MessageError {
    /// Not JSON, or not an object.
    #[error("message is not a JSON object: {0}")]
    Malformed(String),
    /// Larger than 32 KB.
    #[error("message is {0} bytes; the limit is 32768 bytes per message")]
    TooLarge(usize),
    /// A field has the wrong JSON type.
    #[error("`{field}` must be {expected}")]
    WrongType {
        /// The field's path.
        field: &'static str,
        /// What was expected.
        expected: &'static str,
    },
    /// A required field is missing.
    #[error("`{0}` is required")]
    Missing(&'static str),
    /// Neither `userId` nor `anonymousId`.
    #[error("`userId` or `anonymousId` is required")]
    NoIdentity,
    /// `type` is unknown.
    #[error("unknown message type `{0}`; expected identify, track, page, screen, group or alias")]
    UnknownType(String),
    /// A timestamp does not parse.
    #[error("`{field}` is not an ISO 8601 timestamp: `{value}`")]
    BadTimestamp {
        /// The field.
        field: &'static str,
        /// The value received.
        value: String,
    },
    /// The corrected timestamp is too far ahead.
    #[error("`timestamp` lies {0} hours in the future (after correcting the client clock with `sentAt`); the limit is 24 hours")]
    FutureTimestamp(i64),
    /// An identifier in the message is invalid.
    #[error("`{field}`: {source}")]
    BadIdentifier {
        /// The field holding it.
        field: &'static str,
        /// Why it is invalid.
        source: IdentifierError,
    },
    /// A string is too long.
    #[error("`{0}` is longer than 256 characters")]
    TooLong(&'static str),
    /// A payment card number, which relais never stores.
    #[error(
        "`{0}` holds a payment card number; relais never stores one: remove it, or send only its last four digits"
    )]
    PaymentCard(String),
    /// An order amount is unusable.
    #[error("`properties.{field}` must be a finite amount with a 3-letter ISO currency")]
    BadAmount {
        /// The amount's field.
        field: &'static str,
    },
}

/// What the server knows about the request that carried a message.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// When the server received the request.
    pub received_at: DateTime<Utc>,
    /// The message type implied by the endpoint (`/v1/track`), if any.
    pub implied_type: Option<MessageType>,
    /// `sentAt` of the enclosing batch, used when a message has none.
    pub batch_sent_at: Option<&'a Value>,
    /// `context` of the enclosing batch, merged under each message's own.
    pub batch_context: Option<&'a Map<String, Value>>,
    /// The organisation's currency, for orders that do not state one.
    pub default_currency: &'a str,
    /// What to do with payment card numbers found in the message.
    pub card_policy: CardPolicy,
}

/// Money facts of an order event (`Order Completed`, `Order Refunded`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderFacts {
    /// The order's id, when given.
    pub order_id: Option<String>,
    /// Total in minor units (positive for both completed and refunded orders).
    pub amount_minor: MinorUnits,
    /// ISO currency.
    pub currency: String,
}

/// A validated tracking message, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackingMessage {
    /// The call.
    pub kind: MessageType,
    /// The sender's `messageId` (or one generated when absent).
    pub message_id: String,
    /// Whether the sender gave a `messageId` (only those deduplicate).
    pub message_id_given: bool,
    /// Segment `userId`.
    pub user_id: Option<String>,
    /// Segment `anonymousId`.
    pub anonymous_id: Option<String>,
    /// The track event's name, or the page or screen name.
    pub name: Option<String>,
    /// When it happened, corrected for the client clock.
    pub timestamp: DateTime<Utc>,
    /// The timestamp as the client sent it.
    pub original_timestamp: Option<DateTime<Utc>>,
    /// When the client sent it.
    pub sent_at: Option<DateTime<Utc>>,
    /// When relais received it.
    pub received_at: DateTime<Utc>,
    /// The touchpoint.
    pub channel: Channel,
    /// The store, for store events.
    pub store: Option<String>,
    /// Segment `context` (ip, device, location, library…).
    pub context: Map<String, Value>,
    /// Event properties (track, page, screen).
    pub properties: Map<String, Value>,
    /// Traits (identify, group): personal data, kept apart from properties.
    pub traits: Map<String, Value>,
    /// Segment `groupId`.
    pub group_id: Option<String>,
    /// Segment `previousId` (alias).
    pub previous_id: Option<String>,
    /// Other top-level keys the sender added (`integrations`, `_metadata`…).
    pub extra: Map<String, Value>,
    /// Every identifier the message carries, strongest kind first, deduplicated.
    pub identifiers: Vec<Identifier>,
    /// Order amounts, for order events.
    pub order: Option<OrderFacts>,
}

/// The names of native events later parts rely on.
pub mod events {
    /// An order was paid.
    pub const ORDER_COMPLETED: &str = "Order Completed";
    /// An order was refunded, fully or in part.
    pub const ORDER_REFUNDED: &str = "Order Refunded";
    /// A visit to a store.
    pub const STORE_VISITED: &str = "Store Visited";
}

const KNOWN_KEYS: &[&str] = &[
    "type",
    "messageId",
    "userId",
    "anonymousId",
    "event",
    "name",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "receivedAt",
    "context",
    "properties",
    "traits",
    "groupId",
    "previousId",
    "channel",
];

impl TrackingMessage {
    /// Parse one message from its JSON text.
    pub fn parse_json(raw: &str, envelope: &Envelope<'_>) -> Result<TrackingMessage, MessageError> {
        if raw.len() > MAX_MESSAGE_BYTES {
            return Err(MessageError::TooLarge(raw.len()));
        }
        let value: Value = serde_json::from_str(raw).map_err(|e| MessageError::Malformed(e.to_string()))?;
        // Most messages hold no run of 15 digits at all: the text says so at
        // once, and the field-by-field search is skipped (unless escapes such
        // as \u0034 could hide digits from the text).
        let may_hold_card = raw.contains("\\u") || crate::cards::has_long_digit_run(raw.as_bytes());
        TrackingMessage::parse_checked(value, envelope, may_hold_card)
    }

    /// Parse one message already decoded as JSON.
    pub fn parse_value(value: Value, envelope: &Envelope<'_>) -> Result<TrackingMessage, MessageError> {
        TrackingMessage::parse_checked(value, envelope, true)
    }

    fn parse_checked(
        mut value: Value,
        envelope: &Envelope<'_>,
        may_hold_card: bool,
    ) -> Result<TrackingMessage, MessageError> {
        if !value.is_object() {
            return Err(MessageError::Malformed("expected an object".into()));
        }
        let card_field = if may_hold_card { crate::cards::scrub(&mut value, "", envelope.card_policy) } else { None };
        if let Some(field) = card_field {
            if envelope.card_policy == CardPolicy::Reject {
                return Err(MessageError::PaymentCard(field));
            }
        }
        let Value::Object(mut object) = value else {
            return Err(MessageError::Malformed("expected an object".into()));
        };
        let kind = match object.remove("type") {
            Some(Value::String(name)) => match MessageType::parse(&name) {
                Some(kind) => kind,
                None => return Err(MessageError::UnknownType(name.chars().take(64).collect())),
            },
            Some(Value::Null) | None => envelope.implied_type.ok_or(MessageError::Missing("type"))?,
            Some(_) => return Err(MessageError::WrongType { field: "type", expected: "a string" }),
        };

        let user_id = take_id(&mut object, "userId")?;
        let anonymous_id = take_id(&mut object, "anonymousId")?;
        if user_id.is_none() && anonymous_id.is_none() {
            return Err(MessageError::NoIdentity);
        }
        let given_message_id = take_id(&mut object, "messageId")?;
        let message_id_given = given_message_id.is_some();
        let message_id = given_message_id.unwrap_or_else(|| format!("relais-{}", ulid::Ulid::new()));

        let name = match kind {
            MessageType::Track => {
                Some(take_string(&mut object, "event", "event")?.ok_or(MessageError::Missing("event"))?)
            }
            MessageType::Page | MessageType::Screen => take_string(&mut object, "name", "name")?,
            _ => None,
        };
        let group_id = take_id(&mut object, "groupId")?;
        let previous_id = take_id(&mut object, "previousId")?;
        match kind {
            MessageType::Group if group_id.is_none() => return Err(MessageError::Missing("groupId")),
            MessageType::Alias if previous_id.is_none() => return Err(MessageError::Missing("previousId")),
            MessageType::Alias if user_id.is_none() => return Err(MessageError::Missing("userId")),
            _ => {}
        }

        let mut context = take_object(&mut object, "context")?;
        if let Some(batch_context) = envelope.batch_context {
            for (key, value) in batch_context {
                context.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        let properties = take_object(&mut object, "properties")?;
        let traits = take_object(&mut object, "traits")?;

        let original_timestamp = take_timestamp(&mut object, "timestamp")?;
        let client_original = take_timestamp(&mut object, "originalTimestamp")?;
        let original_timestamp = original_timestamp.or(client_original);
        let sent_at = match object.remove("sentAt") {
            Some(v) => parse_timestamp("sentAt", &v)?,
            None => match envelope.batch_sent_at {
                Some(v) => parse_timestamp("sentAt", v)?,
                None => None,
            },
        };
        // A client-side receivedAt is meaningless: relais sets its own.
        object.remove("receivedAt");
        // Storage keeps microseconds (both engines); truncating here makes the
        // incremental traits equal to what a rebuild reads back from the log.
        let original_timestamp = original_timestamp.map(|t| t.trunc_subsecs(6));
        let sent_at = sent_at.map(|t| t.trunc_subsecs(6));
        let received_at = envelope.received_at.trunc_subsecs(6);
        let timestamp = match (original_timestamp, sent_at) {
            (Some(ts), Some(sent)) => received_at.checked_sub_signed(sent - ts).ok_or(MessageError::BadTimestamp {
                field: "sentAt",
                value: "too far from `timestamp` to correct the client clock".into(),
            })?,
            (Some(ts), None) => ts,
            (None, _) => received_at,
        };
        // Storage engines hold years 1 to 9999 at most; anything before the
        // epoch is a broken client clock, not an event.
        if timestamp < DateTime::UNIX_EPOCH {
            return Err(MessageError::BadTimestamp { field: "timestamp", value: timestamp.to_rfc3339() });
        }
        let ahead = timestamp - received_at;
        if ahead > Duration::hours(MAX_FUTURE_SKEW_HOURS) {
            return Err(MessageError::FutureTimestamp(ahead.num_hours()));
        }

        let top_level_channel = match object.remove("channel") {
            Some(Value::String(s)) => Channel::parse(&s),
            _ => None,
        };
        let store = store_of(&context, &properties);
        let channel = channel_of(kind, &context, top_level_channel, store.is_some());
        let identifiers = identifiers_of(user_id.as_deref(), anonymous_id.as_deref(), &traits, &context)?;
        let order = order_of(kind, name.as_deref(), &properties, envelope.default_currency)?;

        let extra: Map<String, Value> =
            object.into_iter().filter(|(key, _)| !KNOWN_KEYS.contains(&key.as_str())).collect();

        Ok(TrackingMessage {
            kind,
            message_id,
            message_id_given,
            user_id,
            anonymous_id,
            name,
            timestamp,
            original_timestamp,
            sent_at,
            received_at,
            channel,
            store,
            context,
            properties,
            traits,
            group_id,
            previous_id,
            extra,
            identifiers,
            order,
        })
    }

    /// Whether this is an order that adds revenue.
    pub fn is_order_completed(&self) -> bool {
        self.kind == MessageType::Track && self.name.as_deref() == Some(events::ORDER_COMPLETED)
    }

    /// Whether this is a refund that removes revenue.
    pub fn is_order_refunded(&self) -> bool {
        self.kind == MessageType::Track && self.name.as_deref() == Some(events::ORDER_REFUNDED)
    }
}

/// An id field: a string or a number (some libraries send numeric user ids);
/// null and the empty string count as absent.
fn take_id(object: &mut Map<String, Value>, field: &'static str) -> Result<Option<String>, MessageError> {
    match object.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s.chars().count() > MAX_NAME_LEN => Err(MessageError::TooLong(field)),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(MessageError::WrongType { field, expected: "a string" }),
    }
}

fn take_string(
    object: &mut Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Option<String>, MessageError> {
    match object.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) if s.chars().count() > MAX_NAME_LEN => Err(MessageError::TooLong(field)),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(MessageError::WrongType { field, expected: "a string" }),
    }
}

fn take_object(object: &mut Map<String, Value>, field: &'static str) -> Result<Map<String, Value>, MessageError> {
    match object.remove(field) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(MessageError::WrongType { field, expected: "an object" }),
    }
}

fn take_timestamp(object: &mut Map<String, Value>, field: &'static str) -> Result<Option<DateTime<Utc>>, MessageError> {
    match object.remove(field) {
        None => Ok(None),
        Some(v) => parse_timestamp(field, &v),
    }
}

fn parse_timestamp(field: &'static str, value: &Value) -> Result<Option<DateTime<Utc>>, MessageError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => DateTime::parse_from_rfc3339(s.trim())
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| MessageError::BadTimestamp { field, value: s.chars().take(64).collect() }),
        other => Err(MessageError::BadTimestamp { field, value: other.to_string().chars().take(64).collect() }),
    }
}

fn string_at<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str).filter(|s| !s.trim().is_empty())
}

/// The store named by `context.store` or `properties.store` (`store_id`), as a
/// string or an object with an `id` or `name`.
fn store_of(context: &Map<String, Value>, properties: &Map<String, Value>) -> Option<String> {
    let candidates = [context.get("store"), properties.get("store"), properties.get("store_id")];
    candidates.into_iter().flatten().find_map(|value| match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().chars().take(MAX_NAME_LEN).collect()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(o) => string_at(o, "id").or_else(|| string_at(o, "name")).map(|s| s.trim().to_string()),
        _ => None,
    })
}

/// The channel: stated by the sender (`context.channel` or top-level `channel`),
/// else inferred from the call and its context.
fn channel_of(kind: MessageType, context: &Map<String, Value>, top_level: Option<Channel>, has_store: bool) -> Channel {
    if let Some(channel) = string_at(context, "channel").and_then(Channel::parse) {
        return channel;
    }
    if let Some(channel) = top_level.filter(|c| *c != Channel::Other) {
        return channel;
    }
    if has_store {
        return Channel::Store;
    }
    match kind {
        MessageType::Screen => Channel::App,
        MessageType::Page => Channel::Web,
        _ if context.contains_key("app") => Channel::App,
        _ if context.contains_key("page") || context.contains_key("userAgent") => Channel::Web,
        _ => top_level.unwrap_or(Channel::Other),
    }
}

fn identifiers_of(
    user_id: Option<&str>,
    anonymous_id: Option<&str>,
    traits: &Map<String, Value>,
    context: &Map<String, Value>,
) -> Result<Vec<Identifier>, MessageError> {
    let mut found = Vec::new();
    let bad = |field: &'static str| move |source| MessageError::BadIdentifier { field, source };
    if let Some(id) = user_id {
        found.push(Identifier::new(IdentifierKind::UserId, id).map_err(bad("userId"))?);
    }
    if let Some(id) = anonymous_id {
        found.push(Identifier::new(IdentifierKind::AnonymousId, id).map_err(bad("anonymousId"))?);
    }
    let context_traits = context.get("traits").and_then(Value::as_object);
    let trait_fields: [(&str, IdentifierKind, &'static str, &'static str); 5] = [
        ("email", IdentifierKind::Email, "traits.email", "context.traits.email"),
        ("phone", IdentifierKind::Phone, "traits.phone", "context.traits.phone"),
        ("customer_number", IdentifierKind::CustomerNumber, "traits.customer_number", "context.traits.customer_number"),
        ("card_number", IdentifierKind::Card, "traits.card_number", "context.traits.card_number"),
        ("beacon", IdentifierKind::Beacon, "traits.beacon", "context.traits.beacon"),
    ];
    for (key, kind, field, context_field) in trait_fields {
        if let Some(value) = string_at(traits, key) {
            found.push(Identifier::new(kind, value).map_err(bad(field))?);
        } else if let Some(value) = context_traits.and_then(|t| string_at(t, key)) {
            found.push(Identifier::new(kind, value).map_err(bad(context_field))?);
        }
    }
    if let Some(Value::Object(social)) = traits.get("social") {
        for (network, handle) in social {
            if let Some(handle) = handle.as_str() {
                found.push(
                    Identifier::new(IdentifierKind::Social, &format!("{network}:{handle}"))
                        .map_err(bad("traits.social"))?,
                );
            }
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

fn order_of(
    kind: MessageType,
    name: Option<&str>,
    properties: &Map<String, Value>,
    default_currency: &str,
) -> Result<Option<OrderFacts>, MessageError> {
    let is_order =
        kind == MessageType::Track && matches!(name, Some(events::ORDER_COMPLETED) | Some(events::ORDER_REFUNDED));
    if !is_order {
        return Ok(None);
    }
    let currency = string_at(properties, "currency").unwrap_or(default_currency);
    let amount = ["total", "revenue", "value"]
        .into_iter()
        .find_map(|field| properties.get(field).filter(|v| !v.is_null()).map(|v| (field, v)));
    let Some((field, amount)) = amount else {
        return Ok(None);
    };
    let number = match amount {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    let money = number.and_then(|n| Money::from_major(n.abs(), currency)).ok_or(MessageError::BadAmount { field })?;
    let order_id = match properties.get("order_id").or_else(|| properties.get("orderId")) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    Ok(Some(OrderFacts { order_id, amount_minor: money.minor, currency: money.currency }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(implied: Option<MessageType>) -> Envelope<'static> {
        Envelope {
            received_at: "2026-05-01T12:00:00Z".parse().unwrap(),
            implied_type: implied,
            batch_sent_at: None,
            batch_context: None,
            default_currency: "EUR",
            card_policy: CardPolicy::Reject,
        }
    }

    fn parse(value: Value) -> Result<TrackingMessage, MessageError> {
        TrackingMessage::parse_value(value, &envelope(None))
    }

    #[test]
    fn a_track_keeps_its_name_properties_and_message_id() {
        let message = parse(json!({
            "type": "track", "userId": "u1", "event": "Order Completed", "messageId": "m-1",
            "properties": {"total": 42.5, "order_id": "o-9", "store": "lyon-part-dieu"},
            "timestamp": "2026-05-01T10:00:00Z"
        }))
        .unwrap();
        assert_eq!(message.kind, MessageType::Track);
        assert_eq!(message.name.as_deref(), Some("Order Completed"));
        assert_eq!(message.message_id, "m-1");
        assert_eq!(message.channel, Channel::Store);
        assert_eq!(message.store.as_deref(), Some("lyon-part-dieu"));
        let order = message.order.unwrap();
        assert_eq!((order.amount_minor, order.currency.as_str()), (4250, "EUR"));
        assert_eq!(order.order_id.as_deref(), Some("o-9"));
    }

    #[test]
    fn sent_at_corrects_the_client_clock() {
        // The client's clock is 1 hour ahead: it claims it sent at 13:00 an event of 12:50.
        let message = parse(json!({
            "type": "page", "anonymousId": "a1",
            "timestamp": "2026-05-01T12:50:00Z", "sentAt": "2026-05-01T13:00:00Z"
        }))
        .unwrap();
        assert_eq!(message.timestamp, "2026-05-01T11:50:00Z".parse::<DateTime<Utc>>().unwrap());
    }

    #[test]
    fn a_message_without_identity_is_refused() {
        assert_eq!(parse(json!({"type": "track", "event": "x"})), Err(MessageError::NoIdentity));
    }

    #[test]
    fn null_anonymous_id_beside_a_user_id_is_valid() {
        let message = parse(json!({"type": "identify", "userId": "u1", "anonymousId": null})).unwrap();
        assert_eq!(message.anonymous_id, None);
        assert_eq!(message.identifiers.len(), 1);
    }

    #[test]
    fn unknown_top_level_keys_are_kept_not_refused() {
        let message = parse(json!({
            "type": "identify", "userId": "u1", "_metadata": {"bundled": []}, "integrations": {}
        }))
        .unwrap();
        assert!(message.extra.contains_key("_metadata"));
        assert!(message.extra.contains_key("integrations"));
    }

    #[test]
    fn type_specific_requirements_are_checked() {
        assert_eq!(parse(json!({"type": "track", "userId": "u"})), Err(MessageError::Missing("event")));
        assert_eq!(parse(json!({"type": "group", "userId": "u"})), Err(MessageError::Missing("groupId")));
        assert_eq!(parse(json!({"type": "alias", "userId": "u"})), Err(MessageError::Missing("previousId")));
        assert!(matches!(parse(json!({"type": "hello", "userId": "u"})), Err(MessageError::UnknownType(_))));
    }

    #[test]
    fn invalid_emails_in_traits_are_refused_with_the_field() {
        let err = parse(json!({"type": "identify", "userId": "u", "traits": {"email": "nope"}})).unwrap_err();
        assert!(err.to_string().starts_with("`traits.email`"), "{err}");
    }

    #[test]
    fn identifiers_come_from_ids_and_traits() {
        let message = parse(json!({
            "type": "identify", "userId": "u1", "anonymousId": "a1",
            "traits": {"email": "Ana@Example.fr", "phone": "06 12 34 56 78"}
        }))
        .unwrap();
        let texts: Vec<String> = message.identifiers.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["user_id:u1", "email:ana@example.fr", "phone:+33612345678", "anonymous_id:a1"]);
    }

    #[test]
    fn timestamps_far_in_the_future_are_refused() {
        let err = parse(json!({"type": "page", "userId": "u", "timestamp": "2026-06-01T00:00:00Z"})).unwrap_err();
        assert!(matches!(err, MessageError::FutureTimestamp(_)));
    }

    #[test]
    fn an_absurd_client_clock_is_refused_not_stored() {
        let err = parse(json!({"type": "page", "userId": "u", "timestamp": "2026-05-01T11:00:00Z", "sentAt": "9999-01-01T00:00:00Z"}))
            .unwrap_err();
        assert!(matches!(err, MessageError::BadTimestamp { .. }), "{err}");
    }

    #[test]
    fn wrong_types_name_the_field() {
        let err = parse(json!({"type": "track", "userId": "u", "event": "x", "properties": [1]})).unwrap_err();
        assert_eq!(err.to_string(), "`properties` must be an object");
        let err = parse(json!({"type": "track", "userId": {"a": 1}, "event": "x"})).unwrap_err();
        assert_eq!(err.to_string(), "`userId` must be a string");
    }

    #[test]
    fn the_endpoint_implies_the_type() {
        let message =
            TrackingMessage::parse_value(json!({"userId": "u", "event": "x"}), &envelope(Some(MessageType::Track)))
                .unwrap();
        assert_eq!(message.kind, MessageType::Track);
    }

    #[test]
    fn oversized_messages_are_refused_before_parsing() {
        let big = format!("{{\"userId\":\"u\",\"type\":\"page\",\"name\":\"{}\"}}", "x".repeat(40_000));
        assert!(matches!(TrackingMessage::parse_json(&big, &envelope(None)), Err(MessageError::TooLarge(_))));
    }
}
