//! How customer data is laid out at rest, for every engine: values of classes
//! that are encrypted go into one sealed blob per row (sealed with the owner's
//! data key), the rest stays in clear columns that segments and totals read;
//! identifiers are stored under their keyed-hash token.

use std::collections::HashMap;

use relais_domain::privacy::{merge_maps, Classification, DataClass};
use relais_domain::{CustomerId, Identifier, IdentifierKind, TrackingMessage};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::StoreError;
use crate::privacy::{DataKey, KeyError, Keyring};

/// The data classes and the keys: what storage needs to lay data out.
#[derive(Debug)]
pub struct Privacy {
    /// Keys.
    pub keyring: Keyring,
    /// Classes.
    pub classes: Classification,
    /// Field paths seen in events that no mapping names, already recorded
    /// (read-mostly: request threads check it concurrently).
    pub unclassified: std::sync::RwLock<std::collections::HashSet<String>>,
}

impl Privacy {
    /// Keys and classes, with nothing seen yet.
    pub fn new(keyring: Keyring, classes: Classification) -> Privacy {
        Privacy { keyring, classes, unclassified: Default::default() }
    }
}

impl From<KeyError> for StoreError {
    fn from(error: KeyError) -> Self {
        StoreError::Keys(error.to_string())
    }
}

/// The part of an event's payload that is sealed.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SealedPayload {
    #[serde(rename = "userId", default, skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    #[serde(rename = "anonymousId", default, skip_serializing_if = "Option::is_none")]
    anonymous_id: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    properties: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    context: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    traits: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    extra: Map<String, Value>,
}

/// An event's payload as stored: clear JSON columns, and the rest as JSON
/// waiting to be sealed once the event's customer is known.
#[derive(Debug)]
pub struct EncodedEvent {
    /// Clear properties.
    pub properties: String,
    /// Clear context.
    pub context: String,
    /// Clear traits.
    pub traits: String,
    /// Clear other keys.
    pub extra: String,
    /// `userId`, when its class is stored in clear.
    pub user_id: Option<String>,
    /// `anonymousId`, when its class is stored in clear.
    pub anonymous_id: Option<String>,
    /// JSON of the fields to seal, if any.
    pub personal: Option<Vec<u8>>,
    /// Lookup tokens of the message's identifiers, aligned with `message.identifiers`.
    pub tokens: Vec<Identifier>,
    /// The tokens as a JSON list (stored with the event, for unmerges).
    pub tokens_json: String,
    /// Field paths no mapping names, seen here for the first time by this process.
    pub unclassified: Vec<String>,
}

fn json_text(map: &Map<String, Value>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".into())
}

impl EncodedEvent {
    /// Split and encode a message (on the request's thread, off the writer's),
    /// writing JSON text straight from the message without copying its values.
    pub fn of(message: &TrackingMessage, privacy: &Privacy) -> EncodedEvent {
        let classes = &privacy.classes;
        let clear = |class: DataClass| !classes.encrypted(class);
        // The sealed part: {"userId":…,"anonymousId":…,"properties":{…},…}, empty parts left out.
        let mut sealed: Vec<u8> = Vec::with_capacity(256);
        sealed.push(b'{');
        let mut any_sealed = false;
        let mut add_sealed = |sealed: &mut Vec<u8>, key: &str, json: &[u8]| {
            if any_sealed {
                sealed.push(b',');
            }
            any_sealed = true;
            let _ = serde_json::to_writer(&mut *sealed, key);
            sealed.push(b':');
            sealed.extend_from_slice(json);
        };
        let mut unseen: Vec<String> = Vec::new();
        let seen = privacy.unclassified.read().unwrap_or_else(|p| p.into_inner());
        let mut note = |path: &str| {
            if !seen.contains(path) && !unseen.iter().any(|p| p == path) {
                unseen.push(path.to_string());
            }
        };
        let mut split = |sealed: &mut Vec<u8>, root: &str, map: &Map<String, Value>| -> String {
            let (mut kept, mut rest) = (Vec::with_capacity(128), Vec::with_capacity(128));
            let (_, has_rest) = classes.split_json(root, map, &clear, (&mut kept, &mut rest), &mut note);
            if has_rest {
                add_sealed(sealed, root, &rest);
            }
            String::from_utf8(kept).unwrap_or_else(|_| "{}".into())
        };
        let properties = split(&mut sealed, "properties", &message.properties);
        let context = split(&mut sealed, "context", &message.context);
        let traits = split(&mut sealed, "traits", &message.traits);
        let extra = split(&mut sealed, "extra", &message.extra);
        drop(seen);
        // New unclassified paths are rare: only then is the set written.
        let mut unclassified = Vec::new();
        if !unseen.is_empty() {
            let mut seen = privacy.unclassified.write().unwrap_or_else(|p| p.into_inner());
            unclassified = unseen.into_iter().filter(|p| seen.insert(p.clone())).collect();
        }
        let user_id =
            clear_or_sealed(classes, IdentifierKind::UserId, &message.user_id, "userId", &mut sealed, &mut add_sealed);
        let anonymous_id = clear_or_sealed(
            classes,
            IdentifierKind::AnonymousId,
            &message.anonymous_id,
            "anonymousId",
            &mut sealed,
            &mut add_sealed,
        );
        sealed.push(b'}');
        let personal = (sealed.len() > 2).then_some(sealed);
        let tokens: Vec<Identifier> = message.identifiers.iter().map(|i| privacy.keyring.token(i)).collect();
        let tokens_json = super::identifiers_json(&tokens);
        EncodedEvent {
            properties,
            context,
            traits,
            extra,
            user_id,
            anonymous_id,
            personal,
            tokens,
            tokens_json,
            unclassified,
        }
    }
}

fn clear_or_sealed(
    classes: &Classification,
    kind: IdentifierKind,
    value: &Option<String>,
    key: &str,
    sealed: &mut Vec<u8>,
    add_sealed: &mut impl FnMut(&mut Vec<u8>, &str, &[u8]),
) -> Option<String> {
    if !classes.encrypted(classes.identifier_class(kind)) {
        return value.clone();
    }
    if let Some(value) = value {
        let json = serde_json::to_vec(value).unwrap_or_default();
        add_sealed(sealed, key, &json);
    }
    None
}

/// Put a stored event's sealed fields back into its clear ones.
pub fn open_event(
    event: &mut super::StoredEvent,
    sealed: Option<&[u8]>,
    key: Option<&DataKey>,
) -> Result<(), StoreError> {
    let Some(sealed) = sealed else { return Ok(()) };
    let Some(key) = key else {
        // The key was destroyed (erasure): the sealed part is gone for good.
        return Ok(());
    };
    let payload: SealedPayload = serde_json::from_slice(&key.open(sealed)?)
        .map_err(|e| StoreError::Database(format!("a sealed event payload does not decode: {e}")))?;
    let merge = |target: &mut Value, more: Map<String, Value>| {
        if more.is_empty() {
            return;
        }
        if !target.is_object() {
            *target = Value::Object(Map::new());
        }
        if let Value::Object(map) = target {
            merge_maps(map, more);
        }
    };
    merge(&mut event.properties, payload.properties);
    merge(&mut event.context, payload.context);
    merge(&mut event.traits, payload.traits);
    if payload.user_id.is_some() {
        event.user_id = payload.user_id;
    }
    if payload.anonymous_id.is_some() {
        event.anonymous_id = payload.anonymous_id;
    }
    Ok(())
}

/// A profile as stored: clear fields as JSON, and the sealed rest.
pub fn seal_profile(
    classes: &Classification,
    owner: CustomerId,
    key: &DataKey,
    profile: &Map<String, Value>,
) -> (String, Option<Vec<u8>>) {
    let (clear, personal) = classes.split("traits", profile.clone(), &|class| !classes.encrypted(class));
    let sealed = (!personal.is_empty()).then(|| key.seal(owner, &serde_json::to_vec(&personal).unwrap_or_default()));
    (json_text(&clear), sealed)
}

/// Put a profile's sealed fields back.
pub fn open_profile(
    profile: &mut Map<String, Value>,
    sealed: Option<&[u8]>,
    key: Option<&DataKey>,
) -> Result<(), StoreError> {
    if let (Some(sealed), Some(key)) = (sealed, key) {
        let personal: Map<String, Value> = serde_json::from_slice(&key.open(sealed)?)
            .map_err(|e| StoreError::Database(format!("a sealed profile does not decode: {e}")))?;
        merge_maps(profile, personal);
    }
    Ok(())
}

/// An identifier's value as stored.
#[derive(Debug, Clone)]
pub enum StoredValue {
    /// In clear (its class is not encrypted).
    Clear(String),
    /// Sealed with the owner's data key.
    Sealed(Vec<u8>),
}

impl StoredValue {
    /// The value to store for `identifier`, owned by `owner`.
    pub fn of(classes: &Classification, identifier: &Identifier, owner: CustomerId, key: &DataKey) -> StoredValue {
        if classes.encrypted(classes.identifier_class(identifier.kind())) {
            StoredValue::Sealed(key.seal(owner, identifier.value().as_bytes()))
        } else {
            StoredValue::Clear(identifier.value().to_string())
        }
    }

    /// The clear column.
    pub fn clear(&self) -> Option<&str> {
        match self {
            StoredValue::Clear(v) => Some(v),
            StoredValue::Sealed(_) => None,
        }
    }

    /// The sealed column.
    pub fn sealed(&self) -> Option<&[u8]> {
        match self {
            StoredValue::Clear(_) => None,
            StoredValue::Sealed(s) => Some(s),
        }
    }
}

/// Read an identifier back from its stored token, clear value and sealed value;
/// `None` when its key was destroyed.
pub fn open_identifier(
    token: &str,
    clear: Option<String>,
    sealed: Option<&[u8]>,
    keys: &HashMap<CustomerId, DataKey>,
) -> Result<Option<Identifier>, StoreError> {
    let kind = parse_token(token)?.kind();
    if let Some(value) = clear {
        return Ok(Some(Identifier::from_stored(kind, value)));
    }
    let Some(sealed) = sealed else { return Ok(None) };
    let owner = crate::privacy::keyring::sealed_owner(sealed)?;
    let Some(key) = keys.get(&owner) else { return Ok(None) };
    let value = String::from_utf8(key.open(sealed)?)
        .map_err(|_| StoreError::Database("a sealed identifier is not text".into()))?;
    Ok(Some(Identifier::from_stored(kind, value)))
}

/// Parse a stored token (`email:#…`).
pub fn parse_token(text: &str) -> Result<Identifier, StoreError> {
    let (kind, value) =
        text.split_once(':').ok_or_else(|| StoreError::Database(format!("stored identifier `{text}` has no kind")))?;
    let kind = IdentifierKind::parse(kind)
        .ok_or_else(|| StoreError::Database(format!("stored identifier `{text}` has an unknown kind")))?;
    Ok(Identifier::from_stored(kind, value.to_string()))
}

/// The owners of sealed values, for fetching their keys.
pub fn owners_of<'a>(sealed: impl IntoIterator<Item = &'a [u8]>) -> Vec<CustomerId> {
    let mut owners: Vec<CustomerId> =
        sealed.into_iter().filter_map(|s| crate::privacy::keyring::sealed_owner(s).ok()).collect();
    owners.sort();
    owners.dedup();
    owners
}

/// Data keys of `customers`: from the keyring's cache, else fetched (wrapped)
/// by `fetch` and unwrapped. Customers without a key (erased) are absent.
pub fn data_keys(
    keyring: &Keyring,
    customers: &[CustomerId],
    fetch: impl FnOnce(&[CustomerId]) -> Result<Vec<(CustomerId, Vec<u8>)>, StoreError>,
) -> Result<HashMap<CustomerId, DataKey>, StoreError> {
    let mut keys = HashMap::with_capacity(customers.len());
    let mut missing = Vec::new();
    for customer in customers {
        match keyring.cached(*customer) {
            Some(key) => {
                keys.insert(*customer, key);
            }
            None => missing.push(*customer),
        }
    }
    if !missing.is_empty() {
        for (customer, wrapped) in fetch(&missing)? {
            keys.insert(customer, keyring.unwrap_data_key(customer, &wrapped)?);
        }
    }
    Ok(keys)
}

/// Open a page of stored events, fetching the keys their sealed parts name.
pub fn open_events(
    keyring: &Keyring,
    sealed_events: Vec<(super::StoredEvent, Option<Vec<u8>>)>,
    fetch: impl FnOnce(&[CustomerId]) -> Result<Vec<(CustomerId, Vec<u8>)>, StoreError>,
) -> Result<Vec<super::StoredEvent>, StoreError> {
    let owners = owners_of(sealed_events.iter().filter_map(|(_, s)| s.as_deref()));
    let keys = data_keys(keyring, &owners, fetch)?;
    let mut events = Vec::with_capacity(sealed_events.len());
    for (mut event, sealed) in sealed_events {
        let owner = sealed.as_deref().and_then(|s| crate::privacy::keyring::sealed_owner(s).ok());
        open_event(&mut event, sealed.as_deref(), owner.and_then(|o| keys.get(&o)))?;
        events.push(event);
    }
    Ok(events)
}

/// A stored identifier row: token, clear value, sealed value, and what the caller attaches.
pub type IdentifierRow<T> = (String, Option<String>, Option<Vec<u8>>, T);

/// A profile as stored: clear JSON and sealed fields.
pub type StoredProfile = (String, Option<Vec<u8>>);

/// Identifiers (clear) of stored rows, fetching the keys their sealed values
/// name; rows whose key was destroyed are dropped.
pub fn open_identifier_rows<T>(
    keyring: &Keyring,
    rows: Vec<IdentifierRow<T>>,
    fetch: impl FnOnce(&[CustomerId]) -> Result<Vec<(CustomerId, Vec<u8>)>, StoreError>,
) -> Result<Vec<(Identifier, T)>, StoreError> {
    let owners = owners_of(rows.iter().filter_map(|r| r.2.as_deref()));
    let keys = data_keys(keyring, &owners, fetch)?;
    let mut out = Vec::with_capacity(rows.len());
    for (token, value, sealed, extra) in rows {
        if let Some(identifier) = open_identifier(&token, value, sealed.as_deref(), &keys)? {
            out.push((identifier, extra));
        }
    }
    Ok(out)
}

/// `tokens` with each one whose identifier was opened replaced by its clear
/// `kind:value` (the others stay tokens).
pub fn reveal_tokens(tokens: Vec<String>, opened: Vec<(Identifier, String)>) -> Vec<String> {
    let opened: HashMap<String, String> = opened.into_iter().map(|(i, token)| (token, i.to_string())).collect();
    tokens.into_iter().map(|t| opened.get(&t).cloned().unwrap_or(t)).collect()
}

/// The key under which a customer's values are sealed (fetched if not cached).
pub fn data_key_of(
    keyring: &Keyring,
    customer: CustomerId,
    fetch: impl FnOnce(&[CustomerId]) -> Result<Vec<(CustomerId, Vec<u8>)>, StoreError>,
) -> Result<DataKey, StoreError> {
    data_keys(keyring, &[customer], fetch)?
        .remove(&customer)
        .ok_or_else(|| StoreError::Keys(format!("{customer} has no data key (erased?)")))
}

/// An outbox payload as stored: a customer's message (recipient, text) is
/// sealed with their key, as `{"sealed": base64}`.
pub fn seal_payload(customer: Option<(CustomerId, &DataKey)>, payload: &Value) -> String {
    use base64::Engine as _;
    match customer {
        Some((owner, key)) => {
            let sealed = key.seal(owner, payload.to_string().as_bytes());
            serde_json::json!({ "sealed": base64::engine::general_purpose::STANDARD.encode(sealed) }).to_string()
        }
        None => payload.to_string(),
    }
}

/// The owner of a sealed outbox payload, if it is sealed.
pub fn payload_owner(payload: &Value) -> Option<CustomerId> {
    use base64::Engine as _;
    let text = payload.get("sealed")?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    crate::privacy::keyring::sealed_owner(&bytes).ok()
}

/// Open a stored outbox payload (unchanged when not sealed; `null` when its key is gone).
pub fn open_payload(payload: Value, keys: &HashMap<CustomerId, DataKey>) -> Result<Value, StoreError> {
    use base64::Engine as _;
    let Some(text) = payload.get("sealed").and_then(Value::as_str) else { return Ok(payload) };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| StoreError::Database("a sealed outbox payload is not base64".into()))?;
    let owner = crate::privacy::keyring::sealed_owner(&bytes)?;
    let Some(key) = keys.get(&owner) else { return Ok(Value::Null) };
    serde_json::from_slice(&key.open(&bytes)?)
        .map_err(|e| StoreError::Database(format!("a sealed outbox payload does not decode: {e}")))
}

/// Open the payloads of outbox items, fetching the keys they name.
pub fn open_outbox(
    keyring: &Keyring,
    items: Vec<super::OutboxItem>,
    fetch: impl FnOnce(&[CustomerId]) -> Result<Vec<(CustomerId, Vec<u8>)>, StoreError>,
) -> Result<Vec<super::OutboxItem>, StoreError> {
    let mut owners: Vec<CustomerId> = items.iter().filter_map(|i| payload_owner(&i.payload)).collect();
    owners.sort();
    owners.dedup();
    let keys = data_keys(keyring, &owners, fetch)?;
    items
        .into_iter()
        .map(|mut item| {
            item.payload = open_payload(std::mem::take(&mut item.payload), &keys)?;
            Ok(item)
        })
        .collect()
}

/// What stripping classes from a sealed payload gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Stripped {
    /// It held none of them.
    Unchanged,
    /// The rest, sealed again.
    Sealed(Vec<u8>),
    /// Nothing is left.
    Empty,
}

/// A sealed event payload without the fields of the classes in `drop`,
/// sealed again under the same owner.
pub fn strip_sealed(
    classes: &Classification,
    owner: CustomerId,
    key: &DataKey,
    sealed: &[u8],
    drop: &[DataClass],
) -> Result<Stripped, StoreError> {
    let mut payload: SealedPayload = serde_json::from_slice(&key.open(sealed)?)
        .map_err(|e| StoreError::Database(format!("a sealed event payload does not decode: {e}")))?;
    let keep = |class: DataClass| !drop.contains(&class);
    let mut removed = false;
    for (root, map) in [
        ("properties", &mut payload.properties),
        ("context", &mut payload.context),
        ("traits", &mut payload.traits),
        ("extra", &mut payload.extra),
    ] {
        let (kept, gone) = classes.split(root, std::mem::take(map), &keep);
        removed |= !gone.is_empty();
        *map = kept;
    }
    for (kind, value) in
        [(IdentifierKind::UserId, &mut payload.user_id), (IdentifierKind::AnonymousId, &mut payload.anonymous_id)]
    {
        if value.is_some() && drop.contains(&classes.identifier_class(kind)) {
            *value = None;
            removed = true;
        }
    }
    if !removed {
        return Ok(Stripped::Unchanged);
    }
    let empty = payload.user_id.is_none()
        && payload.anonymous_id.is_none()
        && payload.properties.is_empty()
        && payload.context.is_empty()
        && payload.traits.is_empty()
        && payload.extra.is_empty();
    Ok(if empty {
        Stripped::Empty
    } else {
        Stripped::Sealed(key.seal(owner, &serde_json::to_vec(&payload).unwrap_or_default()))
    })
}
