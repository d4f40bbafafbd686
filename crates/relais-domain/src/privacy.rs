//! Data classes: how critical each piece of customer data is, who may read it,
//! whether it is encrypted at rest, how it is masked and how long it is kept.
//!
//! Every profile field, identifier kind and event property has a path
//! (`traits.email`, `context.ip`, `properties.revenue`, `identifier.phone`). A
//! mapping gives a path a class; the longest mapped prefix of a path decides, and
//! a path no mapping names is `personal` (privacy by default, DESIGN.md decision 9).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::identifier::IdentifierKind;
use crate::role::Role;

/// How critical a piece of data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataClass {
    /// Anyone may see it (store names).
    Public,
    /// The organisation's own facts: city, store, channel, amounts, products, scores.
    Internal,
    /// Identifies a person: names, e-mail, phone, address, birth date, IP, device ids.
    Personal,
    /// Health readings, free text from support cases.
    Sensitive,
    /// Bank details (IBAN). Payment card numbers are never stored at all.
    Financial,
}

impl DataClass {
    /// Every class, least critical first.
    pub const ALL: [DataClass; 5] =
        [DataClass::Public, DataClass::Internal, DataClass::Personal, DataClass::Sensitive, DataClass::Financial];
}

names!(DataClass {
    Public => "public",
    Internal => "internal",
    Personal => "personal",
    Sensitive => "sensitive",
    Financial => "financial",
});

/// How a value of a class is shown to someone who may not read it, and in lists,
/// exports and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mask {
    /// Shown as is.
    None,
    /// First character kept, the rest starred (`a***@e***.fr`, `J***`).
    Partial,
    /// The last four characters kept (`****1234`).
    LastFour,
    /// Replaced entirely (`[sensitive]`).
    Redact,
}

impl Mask {
    /// Mask one value of class `class`.
    pub fn apply(self, class: DataClass, value: &Value) -> Value {
        match (self, value) {
            (Mask::None, v) => v.clone(),
            (_, Value::Null) => Value::Null,
            (Mask::Partial, Value::String(s)) => Value::String(partial(s)),
            (Mask::LastFour, Value::String(s)) => {
                let tail: String = s.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
                Value::String(format!("****{tail}"))
            }
            _ => Value::String(format!("[{}]", class.as_str())),
        }
    }
}

/// `ana.martin@example.fr` → `a***@e***.fr`; `Ana Martin` → `A*** M***`.
fn partial(text: &str) -> String {
    let star_word = |word: &str| match word.chars().next() {
        Some(first) => format!("{first}***"),
        None => String::new(),
    };
    if let Some((local, domain)) = text.split_once('@') {
        let (host, tld) = domain.rsplit_once('.').unwrap_or((domain, ""));
        let tld = if tld.is_empty() { String::new() } else { format!(".{tld}") };
        return format!("{}@{}{tld}", star_word(local), star_word(host));
    }
    text.split(' ').map(star_word).collect::<Vec<_>>().join(" ")
}

/// What a class implies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassPolicy {
    /// Roles that may read values of the class in clear.
    pub readers: Vec<Role>,
    /// Whether values are encrypted at rest with the person's data key.
    pub encrypted: bool,
    /// How values are shown to other roles, in lists, exports and logs.
    pub mask: Mask,
    /// Days values are kept after the person's last activity (none: as long as the profile).
    pub retention_days: Option<u32>,
}

/// Why a classification is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassificationError {
    /// A class name that does not exist.
    #[error("unknown data class `{0}`; expected public, internal, personal, sensitive or financial")]
    UnknownClass(String),
    /// The same path given two classes.
    #[error("`{path}` is mapped twice (to {first} and to {second}); map each field once")]
    MappedTwice {
        /// The path.
        path: String,
        /// The first class.
        first: &'static str,
        /// The second class.
        second: &'static str,
    },
    /// A path that cannot name any data.
    #[error(
        "`{0}` is not a field path; write it as ROOT.name with ROOT one of traits, properties, context, identifier"
    )]
    BadPath(String),
}

/// The roots a field path may start with.
pub const ROOTS: [&str; 5] = ["traits", "properties", "context", "identifier", "extra"];

/// The class of every field, and each class's policy.
#[derive(Debug, Clone)]
pub struct Classification {
    policies: BTreeMap<DataClass, ClassPolicy>,
    mappings: HashMap<String, DataClass>,
    /// Every proper prefix of a mapped path: where splitting must look deeper.
    inner: HashSet<String>,
}

/// The default mappings (DESIGN.md decision 9); any other path is personal.
const DEFAULT_MAPPINGS: &[(&str, DataClass)] = &[
    ("context.store.name", DataClass::Public),
    ("properties.store_name", DataClass::Public),
    // Where, how and what: the organisation's own facts.
    ("traits.city", DataClass::Internal),
    ("traits.postcode", DataClass::Internal),
    ("traits.postalCode", DataClass::Internal),
    ("traits.country", DataClass::Internal),
    ("traits.address.city", DataClass::Internal),
    ("traits.address.postalCode", DataClass::Internal),
    ("traits.address.postcode", DataClass::Internal),
    ("traits.address.country", DataClass::Internal),
    ("traits.gender", DataClass::Internal),
    ("traits.language", DataClass::Internal),
    ("traits.created_at", DataClass::Internal),
    ("traits.createdAt", DataClass::Internal),
    ("traits.plan", DataClass::Internal),
    ("traits.store", DataClass::Internal),
    ("traits.preferred_store", DataClass::Internal),
    ("properties.order_id", DataClass::Internal),
    ("properties.checkout_id", DataClass::Internal),
    ("properties.revenue", DataClass::Internal),
    ("properties.total", DataClass::Internal),
    ("properties.subtotal", DataClass::Internal),
    ("properties.value", DataClass::Internal),
    ("properties.amount", DataClass::Internal),
    ("properties.price", DataClass::Internal),
    ("properties.currency", DataClass::Internal),
    ("properties.discount", DataClass::Internal),
    ("properties.shipping", DataClass::Internal),
    ("properties.tax", DataClass::Internal),
    ("properties.coupon", DataClass::Internal),
    ("properties.affiliation", DataClass::Internal),
    ("properties.products", DataClass::Internal),
    ("properties.product_id", DataClass::Internal),
    ("properties.sku", DataClass::Internal),
    ("properties.category", DataClass::Internal),
    ("properties.brand", DataClass::Internal),
    ("properties.variant", DataClass::Internal),
    ("properties.quantity", DataClass::Internal),
    ("properties.store", DataClass::Internal),
    ("properties.store_id", DataClass::Internal),
    ("properties.channel", DataClass::Internal),
    ("properties.city", DataClass::Internal),
    ("properties.postcode", DataClass::Internal),
    ("properties.country", DataClass::Internal),
    ("properties.rating", DataClass::Internal),
    ("properties.score", DataClass::Internal),
    ("properties.nps", DataClass::Internal),
    ("properties.csat", DataClass::Internal),
    ("properties.path", DataClass::Internal),
    ("properties.title", DataClass::Internal),
    ("properties.name", DataClass::Internal),
    ("properties.list_id", DataClass::Internal),
    ("properties.campaign", DataClass::Internal),
    ("properties.network", DataClass::Internal),
    ("properties.duration_seconds", DataClass::Internal),
    ("properties.reason", DataClass::Internal),
    ("context.channel", DataClass::Internal),
    ("context.store", DataClass::Internal),
    ("context.library", DataClass::Internal),
    ("context.locale", DataClass::Internal),
    ("context.timezone", DataClass::Internal),
    ("context.campaign", DataClass::Internal),
    ("context.app", DataClass::Internal),
    ("context.os", DataClass::Internal),
    ("context.screen", DataClass::Internal),
    ("context.network", DataClass::Internal),
    ("context.device.type", DataClass::Internal),
    ("context.device.manufacturer", DataClass::Internal),
    ("context.device.model", DataClass::Internal),
    ("context.location.city", DataClass::Internal),
    ("context.location.country", DataClass::Internal),
    ("context.location.region", DataClass::Internal),
    ("context.location.postcode", DataClass::Internal),
    ("context.page.path", DataClass::Internal),
    ("context.page.title", DataClass::Internal),
    ("extra.integrations", DataClass::Internal),
    ("extra._metadata", DataClass::Internal),
    ("identifier.customer_number", DataClass::Internal),
    ("identifier.card", DataClass::Internal),
    // Said explicitly, though unmapped paths are personal anyway.
    ("traits.email", DataClass::Personal),
    ("traits.phone", DataClass::Personal),
    ("traits.firstName", DataClass::Personal),
    ("traits.lastName", DataClass::Personal),
    ("traits.name", DataClass::Personal),
    ("traits.birthday", DataClass::Personal),
    ("traits.address", DataClass::Personal),
    ("context.ip", DataClass::Personal),
    ("context.userAgent", DataClass::Personal),
    ("context.device.id", DataClass::Personal),
    ("context.device.advertisingId", DataClass::Personal),
    ("context.location.latitude", DataClass::Personal),
    ("context.location.longitude", DataClass::Personal),
    ("identifier.user_id", DataClass::Personal),
    ("identifier.email", DataClass::Personal),
    ("identifier.phone", DataClass::Personal),
    ("identifier.social", DataClass::Personal),
    ("identifier.beacon", DataClass::Personal),
    ("identifier.anonymous_id", DataClass::Personal),
    // Health readings and the free text of support cases.
    ("properties.health", DataClass::Sensitive),
    ("properties.heart_rate", DataClass::Sensitive),
    ("properties.blood_pressure", DataClass::Sensitive),
    ("properties.glucose", DataClass::Sensitive),
    ("properties.weight_kg", DataClass::Sensitive),
    ("properties.case_text", DataClass::Sensitive),
    ("properties.message", DataClass::Sensitive),
    ("properties.comment", DataClass::Sensitive),
    ("traits.health", DataClass::Sensitive),
    // Bank details.
    ("properties.iban", DataClass::Financial),
    ("properties.bic", DataClass::Financial),
    ("traits.iban", DataClass::Financial),
    ("traits.bic", DataClass::Financial),
];

/// The default policies: who reads what, encryption, masks, retention.
pub fn default_policy(class: DataClass) -> ClassPolicy {
    use Role::*;
    let all_but_ingest = vec![Admin, Dpo, Marketing, Analyst, Agent, Store];
    match class {
        DataClass::Public => {
            ClassPolicy { readers: all_but_ingest, encrypted: false, mask: Mask::None, retention_days: None }
        }
        DataClass::Internal => {
            ClassPolicy { readers: all_but_ingest, encrypted: false, mask: Mask::None, retention_days: None }
        }
        DataClass::Personal => ClassPolicy {
            readers: vec![Admin, Dpo, Agent, Store],
            encrypted: true,
            mask: Mask::Partial,
            retention_days: Some(3 * 365),
        },
        DataClass::Sensitive => {
            ClassPolicy { readers: vec![Dpo, Agent], encrypted: true, mask: Mask::Redact, retention_days: Some(365) }
        }
        DataClass::Financial => {
            ClassPolicy { readers: vec![Dpo], encrypted: true, mask: Mask::LastFour, retention_days: Some(13 * 31) }
        }
    }
}

impl Default for Classification {
    fn default() -> Self {
        Classification::new(DataClass::ALL.into_iter().map(|c| (c, default_policy(c))).collect(), Vec::new())
            .expect("the default classification is valid")
    }
}

impl Classification {
    /// The defaults with `policies` replaced and `overrides` (path, class name)
    /// mapped on top. A path given twice in `overrides` is an error.
    pub fn new(
        policies: BTreeMap<DataClass, ClassPolicy>,
        overrides: Vec<(String, String)>,
    ) -> Result<Classification, ClassificationError> {
        let mut policies = policies;
        for class in DataClass::ALL {
            policies.entry(class).or_insert_with(|| default_policy(class));
        }
        let mut mappings: HashMap<String, DataClass> =
            DEFAULT_MAPPINGS.iter().map(|(path, class)| (path.to_string(), *class)).collect();
        let mut given: HashMap<String, DataClass> = HashMap::new();
        for (path, class_name) in overrides {
            let class = DataClass::parse(&class_name).ok_or(ClassificationError::UnknownClass(class_name))?;
            let valid = path.split_once('.').is_some_and(|(root, rest)| {
                ROOTS.contains(&root) && !rest.is_empty() && rest.split('.').all(|s| !s.is_empty())
            });
            if !valid {
                return Err(ClassificationError::BadPath(path));
            }
            if let Some(first) = given.insert(path.clone(), class) {
                return Err(ClassificationError::MappedTwice { path, first: first.as_str(), second: class.as_str() });
            }
            mappings.insert(path, class);
        }
        let mut inner = HashSet::new();
        for path in mappings.keys() {
            let mut end = 0;
            while let Some(dot) = path[end..].find('.') {
                end += dot;
                inner.insert(path[..end].to_string());
                end += 1;
            }
        }
        Ok(Classification { policies, mappings, inner })
    }

    /// The policy of a class.
    pub fn policy(&self, class: DataClass) -> &ClassPolicy {
        &self.policies[&class]
    }

    /// Every mapping, sorted by path.
    pub fn mappings(&self) -> Vec<(&str, DataClass)> {
        let mut all: Vec<(&str, DataClass)> = self.mappings.iter().map(|(p, c)| (p.as_str(), *c)).collect();
        all.sort();
        all
    }

    /// The class of a path: that of its longest mapped prefix, else personal.
    pub fn class_of(&self, path: &str) -> DataClass {
        self.lookup(path).0
    }

    /// Whether a mapping names the path or one of its parents (an unmapped
    /// path is personal by default until someone classifies it).
    pub fn is_mapped(&self, path: &str) -> bool {
        self.lookup(path).1
    }

    /// The class of an identifier kind.
    pub fn identifier_class(&self, kind: IdentifierKind) -> DataClass {
        self.class_of(&format!("identifier.{}", kind.as_str()))
    }

    /// Whether a class is encrypted at rest.
    pub fn encrypted(&self, class: DataClass) -> bool {
        self.policy(class).encrypted
    }

    /// Whether `role` may read values of `class` in clear.
    pub fn may_read(&self, role: Role, class: DataClass) -> bool {
        self.policy(class).readers.contains(&role)
    }

    /// Split the fields of `map` (found under `root`) into those whose class
    /// `keep` accepts and the others, keeping the nesting of both halves.
    pub fn split(
        &self,
        root: &str,
        map: Map<String, Value>,
        keep: &impl Fn(DataClass) -> bool,
    ) -> (Map<String, Value>, Map<String, Value>) {
        let mut kept = Map::new();
        let mut rest = Map::new();
        let mut path = String::with_capacity(64);
        self.split_into(root, map, keep, &mut path, &mut kept, &mut rest);
        (kept, rest)
    }

    fn split_into(
        &self,
        root: &str,
        map: Map<String, Value>,
        keep: &impl Fn(DataClass) -> bool,
        path: &mut String,
        kept: &mut Map<String, Value>,
        rest: &mut Map<String, Value>,
    ) {
        for (key, value) in map {
            path.clear();
            path.push_str(root);
            path.push('.');
            path.push_str(&key);
            match value {
                Value::Object(inner) if self.inner.contains(path.as_str()) => {
                    let child = path.clone();
                    let (mut sub_kept, mut sub_rest) = (Map::new(), Map::new());
                    self.split_into(&child, inner, keep, path, &mut sub_kept, &mut sub_rest);
                    if !sub_kept.is_empty() {
                        kept.insert(key.clone(), Value::Object(sub_kept));
                    }
                    if !sub_rest.is_empty() {
                        rest.insert(key, Value::Object(sub_rest));
                    }
                }
                value => {
                    if keep(self.class_of(path)) {
                        kept.insert(key, value);
                    } else {
                        rest.insert(key, value);
                    }
                }
            }
        }
    }

    /// Like `split`, but writing both halves as JSON objects into `out` (kept,
    /// rest) without copying the values (ingest's hot path), and telling
    /// `unmapped` every field path no mapping names (personal by default until
    /// someone classifies it). Returns whether each half has any field.
    pub fn split_json(
        &self,
        root: &str,
        map: &Map<String, Value>,
        keep: &impl Fn(DataClass) -> bool,
        out: (&mut Vec<u8>, &mut Vec<u8>),
        unmapped: &mut dyn FnMut(&str),
    ) -> (bool, bool) {
        let mut path = String::with_capacity(64);
        path.push_str(root);
        self.split_json_into(map, keep, &mut path, out.0, out.1, unmapped)
    }

    /// The class of a path and whether a mapping names it (or a parent of it).
    fn lookup(&self, path: &str) -> (DataClass, bool) {
        let mut candidate = path;
        loop {
            if let Some(class) = self.mappings.get(candidate) {
                return (*class, true);
            }
            match candidate.rfind('.') {
                Some(dot) => candidate = &candidate[..dot],
                None => return (DataClass::Personal, false),
            }
        }
    }

    fn split_json_into(
        &self,
        map: &Map<String, Value>,
        keep: &impl Fn(DataClass) -> bool,
        path: &mut String,
        kept: &mut Vec<u8>,
        rest: &mut Vec<u8>,
        unmapped: &mut dyn FnMut(&str),
    ) -> (bool, bool) {
        kept.push(b'{');
        rest.push(b'{');
        let (mut any_kept, mut any_rest) = (false, false);
        let write_key = |out: &mut Vec<u8>, any: &mut bool, key: &str| {
            if *any {
                out.push(b',');
            }
            *any = true;
            let _ = serde_json::to_writer(&mut *out, key);
            out.push(b':');
        };
        let parent_len = path.len();
        for (key, value) in map {
            path.truncate(parent_len);
            path.push('.');
            path.push_str(key);
            match value {
                Value::Object(inner) if self.inner.contains(path.as_str()) => {
                    let (mut sub_kept, mut sub_rest) = (Vec::new(), Vec::new());
                    let (has_kept, has_rest) =
                        self.split_json_into(inner, keep, path, &mut sub_kept, &mut sub_rest, unmapped);
                    if has_kept {
                        write_key(kept, &mut any_kept, key);
                        kept.extend_from_slice(&sub_kept);
                    }
                    if has_rest {
                        write_key(rest, &mut any_rest, key);
                        rest.extend_from_slice(&sub_rest);
                    }
                }
                value => {
                    let (class, mapped) = self.lookup(path);
                    if !mapped {
                        unmapped(path);
                    }
                    let (out, any) =
                        if keep(class) { (&mut *kept, &mut any_kept) } else { (&mut *rest, &mut any_rest) };
                    write_key(out, any, key);
                    let _ = serde_json::to_writer(&mut *out, value);
                }
            }
        }
        path.truncate(parent_len);
        kept.push(b'}');
        rest.push(b'}');
        (any_kept, any_rest)
    }

    /// The fields of `map` (under `root`) as `role` may see them: classes the
    /// role may not read are masked by their class's mask.
    pub fn view(&self, root: &str, map: &Map<String, Value>, role: Role) -> Map<String, Value> {
        let mut out = Map::new();
        for (key, value) in map {
            let path = format!("{root}.{key}");
            match value {
                Value::Object(inner) if self.inner.contains(path.as_str()) => {
                    out.insert(key.clone(), Value::Object(self.view(&path, inner, role)));
                }
                value => {
                    let class = self.class_of(&path);
                    let shown = if self.may_read(role, class) {
                        value.clone()
                    } else {
                        self.policy(class).mask.apply(class, value)
                    };
                    out.insert(key.clone(), shown);
                }
            }
        }
        out
    }

    /// Every leaf path under `root` in `map` that no mapping names (they are
    /// personal by default until someone classifies them).
    pub fn unmapped_paths(&self, root: &str, map: &Map<String, Value>, into: &mut std::collections::BTreeSet<String>) {
        for (key, value) in map {
            let path = format!("{root}.{key}");
            match value {
                Value::Object(inner) if !self.is_mapped(&path) => self.unmapped_paths(&path, inner, into),
                _ if !self.is_mapped(&path) => {
                    into.insert(path);
                }
                _ => {}
            }
        }
    }
}

/// Merge `from` into `into`, recursively for objects present in both (the inverse of `split`).
pub fn merge_maps(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Object(existing)), Value::Object(more)) => merge_maps(existing, more),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("an object")
    }

    #[test]
    fn unmapped_paths_are_personal_and_the_longest_prefix_decides() {
        let c = Classification::default();
        assert_eq!(c.class_of("properties.revenue"), DataClass::Internal);
        assert_eq!(c.class_of("properties.products.0.name"), DataClass::Internal);
        assert_eq!(c.class_of("properties.favourite_colour"), DataClass::Personal);
        assert_eq!(c.class_of("context.location.city"), DataClass::Internal);
        assert_eq!(c.class_of("context.location.latitude"), DataClass::Personal);
        assert_eq!(c.class_of("context.location"), DataClass::Personal);
        assert_eq!(c.class_of("properties.iban"), DataClass::Financial);
        assert_eq!(c.identifier_class(IdentifierKind::Email), DataClass::Personal);
        assert_eq!(c.identifier_class(IdentifierKind::Card), DataClass::Internal);
    }

    #[test]
    fn split_keeps_nesting_and_merge_restores_the_original() {
        let c = Classification::default();
        let context = object(json!({
            "ip": "192.0.2.1",
            "channel": "web",
            "location": {"city": "Lyon", "latitude": 45.76},
            "device": {"id": "d-1", "type": "ios"},
            "mood": "happy"
        }));
        let (clear, sealed) = c.split("context", context.clone(), &|class| !c.encrypted(class));
        assert_eq!(
            Value::Object(clear.clone()),
            json!({"channel": "web", "location": {"city": "Lyon"}, "device": {"type": "ios"}})
        );
        assert_eq!(
            Value::Object(sealed.clone()),
            json!({"ip": "192.0.2.1", "location": {"latitude": 45.76}, "device": {"id": "d-1"}, "mood": "happy"})
        );
        let mut back = clear.clone();
        merge_maps(&mut back, sealed.clone());
        assert_eq!(back, context);

        let (mut kept, mut rest) = (Vec::new(), Vec::new());
        let mut unmapped = Vec::new();
        let keep = |class| !c.encrypted(class);
        let halves =
            c.split_json("context", &context, &keep, (&mut kept, &mut rest), &mut |p| unmapped.push(p.to_string()));
        assert_eq!(halves, (true, true));
        assert_eq!(unmapped, vec!["context.mood".to_string()]);
        assert_eq!(serde_json::from_slice::<Map<String, Value>>(&kept).unwrap(), clear);
        assert_eq!(serde_json::from_slice::<Map<String, Value>>(&rest).unwrap(), sealed);
    }

    #[test]
    fn a_role_sees_masked_what_its_classes_do_not_allow() {
        let c = Classification::default();
        let traits = object(
            json!({"email": "ana.martin@example.fr", "name": "Ana Martin", "city": "Lyon", "iban": "FR7630006000011234567890189"}),
        );
        let marketing = c.view("traits", &traits, Role::Marketing);
        assert_eq!(marketing["email"], json!("a***@e***.fr"));
        assert_eq!(marketing["name"], json!("A*** M***"));
        assert_eq!(marketing["city"], json!("Lyon"));
        assert_eq!(marketing["iban"], json!("****0189"));
        let agent = c.view("traits", &traits, Role::Agent);
        assert_eq!(agent["email"], json!("ana.martin@example.fr"));
        assert_eq!(agent["iban"], json!("****0189"));
        assert_eq!(c.view("traits", &traits, Role::Dpo)["iban"], json!("FR7630006000011234567890189"));
    }

    #[test]
    fn configuration_errors_are_named() {
        let policies: BTreeMap<DataClass, ClassPolicy> = BTreeMap::new();
        assert_eq!(
            Classification::new(policies.clone(), vec![("traits.x".into(), "secret".into())]).unwrap_err(),
            ClassificationError::UnknownClass("secret".into())
        );
        assert!(matches!(
            Classification::new(
                policies.clone(),
                vec![("traits.x".into(), "internal".into()), ("traits.x".into(), "personal".into())]
            ),
            Err(ClassificationError::MappedTwice { .. })
        ));
        assert!(matches!(
            Classification::new(policies.clone(), vec![("nowhere".into(), "internal".into())]),
            Err(ClassificationError::BadPath(_))
        ));
        let custom =
            Classification::new(policies, vec![("properties.loyalty_note".into(), "sensitive".into())]).expect("valid");
        assert_eq!(custom.class_of("properties.loyalty_note"), DataClass::Sensitive);
    }

    #[test]
    fn unmapped_paths_are_listed_for_the_register() {
        let c = Classification::default();
        let mut found = std::collections::BTreeSet::new();
        c.unmapped_paths("properties", &object(json!({"revenue": 1, "favourite": {"colour": "red"}})), &mut found);
        assert_eq!(found.into_iter().collect::<Vec<_>>(), vec!["properties.favourite.colour".to_string()]);
    }
}

/// The profile traits whose words make a person findable by name.
pub const NAME_TRAITS: [&str; 6] = ["firstName", "lastName", "name", "first_name", "last_name", "username"];

/// The normalised words of a name (lower case, accents removed, split on
/// spaces, hyphens and apostrophes): "Léa Martin-Dubois" gives lea, martin, dubois.
pub fn name_words(text: &str) -> Vec<String> {
    let folded = deunicode::deunicode(text).to_lowercase();
    let mut words: Vec<String> =
        folded.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_string).collect();
    words.sort();
    words.dedup();
    words
}

/// The name words of a profile, from its name traits.
pub fn profile_name_words(profile: &Map<String, Value>) -> Vec<String> {
    let mut words: Vec<String> =
        NAME_TRAITS.iter().filter_map(|k| profile.get(*k)?.as_str()).flat_map(name_words).collect();
    words.sort();
    words.dedup();
    words
}

#[cfg(test)]
mod name_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_fold_to_plain_lower_case_words() {
        assert_eq!(name_words("Léa Martin-Dubois"), vec!["dubois", "lea", "martin"]);
        assert_eq!(name_words("  O'Brien  "), vec!["brien", "o"]);
        let profile = json!({"firstName": "Zoé", "lastName": "Lefèvre", "email": "z@example.fr"});
        assert_eq!(profile_name_words(profile.as_object().unwrap()), vec!["lefevre", "zoe"]);
    }
}
