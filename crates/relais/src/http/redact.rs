//! What a caller sees of customer data: fields of classes their role may not
//! read are masked (free text) or replaced by their stable pseudonym
//! (identifiers: the keyed-hash token, the same for every caller, so analysts
//! can still count and join without seeing who is who).

use relais_domain::privacy::Classification;
use relais_domain::{Identifier, IdentifierKind, Role};
use serde_json::{Map, Value};

use crate::privacy::Keyring;
use crate::store::StoredEvent;

/// Masks customer data for one caller's role.
pub struct Viewer<'a> {
    classes: &'a Classification,
    keyring: &'a Keyring,
    role: Role,
}

impl<'a> Viewer<'a> {
    /// A viewer for `role`.
    pub fn new(store: &'a crate::store::Store, role: Role) -> Viewer<'a> {
        let privacy = store.privacy();
        Viewer { classes: &privacy.classes, keyring: &privacy.keyring, role }
    }

    fn may_read(&self, kind: IdentifierKind) -> bool {
        self.classes.may_read(self.role, self.classes.identifier_class(kind))
    }

    /// `kind:value`, or `kind:#pseudonym` when the role may not read the kind.
    pub fn identifier(&self, identifier: &Identifier) -> String {
        if self.may_read(identifier.kind()) {
            identifier.to_string()
        } else {
            self.keyring.token(identifier).to_string()
        }
    }

    /// An identifier given as stored text (`kind:value`, or already a token).
    pub fn identifier_text(&self, text: &str) -> String {
        match text.split_once(':').and_then(|(kind, value)| Some((IdentifierKind::parse(kind)?, value))) {
            Some((_, value)) if value.starts_with('#') => text.to_string(),
            Some((kind, value)) => self.identifier(&Identifier::from_stored(kind, value.to_string())),
            None => text.to_string(),
        }
    }

    /// Profile traits as the role may see them.
    pub fn profile(&self, profile: &Map<String, Value>) -> Map<String, Value> {
        self.classes.view("traits", profile, self.role)
    }

    /// An event as the role may see it.
    pub fn event(&self, mut event: StoredEvent) -> StoredEvent {
        let view = |root: &str, value: &Value| match value {
            Value::Object(map) => Value::Object(self.classes.view(root, map, self.role)),
            other => other.clone(),
        };
        event.properties = view("properties", &event.properties);
        event.context = view("context", &event.context);
        event.traits = view("traits", &event.traits);
        let pseudonym = |kind: IdentifierKind, value: Option<String>| {
            value.map(|v| {
                let identifier = Identifier::from_stored(kind, v);
                let shown = self.identifier(&identifier);
                shown.split_once(':').map(|(_, v)| v.to_string()).unwrap_or(shown)
            })
        };
        event.user_id = pseudonym(IdentifierKind::UserId, event.user_id.take());
        event.anonymous_id = pseudonym(IdentifierKind::AnonymousId, event.anonymous_id.take());
        event
    }
}
