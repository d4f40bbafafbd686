//! Identity resolution: which profile a message belongs to, which identifiers it
//! adds, and which profiles it proves to be one person.
//!
//! The rules: the strongest known identifier decides; profiles linked by one
//! message merge into the oldest; but a profile never takes a second value of an
//! exclusive kind (`user_id`, `customer_number`), so two profiles holding different
//! values of such a kind are never merged automatically: the conflict is recorded
//! for review instead.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::id::CustomerId;
use crate::identifier::{Identifier, IdentifierKind};

/// Where a message's event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// An existing profile.
    Existing(CustomerId),
    /// A profile to create.
    New,
}

/// Two profiles (or a profile and a message) that look like one person but hold
/// different values of an exclusive identifier kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The profile the message went to (None when it went to a new profile).
    pub kept: Option<CustomerId>,
    /// The profile that was not merged.
    pub other: CustomerId,
    /// The identifier kind whose values differ.
    pub kind: IdentifierKind,
}

/// The decision for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The profile the event belongs to.
    pub target: Target,
    /// The message's identifiers that no profile held yet, to link to the target.
    pub attach: Vec<Identifier>,
    /// Profiles to merge into the target (the target is the oldest of them all).
    pub merge: Vec<CustomerId>,
    /// Links refused because of exclusive identifiers.
    pub conflicts: Vec<Conflict>,
}

/// What storage knows about the message's identifiers.
#[derive(Debug, Default, Clone)]
pub struct KnownIdentities {
    /// Owner of each known identifier.
    pub owners: HashMap<Identifier, CustomerId>,
    /// The exclusive-kind identifiers each owner holds.
    pub exclusives: HashMap<CustomerId, Vec<Identifier>>,
}

impl KnownIdentities {
    /// The same knowledge, borrowed.
    pub fn view(&self) -> KnownView<'_> {
        KnownView { owners: &self.owners, exclusives: &self.exclusives }
    }
}

/// What storage knows, borrowed from maps that may hold more than the
/// message's identifiers (a whole batch's), so nothing is copied per message.
#[derive(Debug)]
pub struct KnownView<'a, S = std::collections::hash_map::RandomState> {
    /// Owner of each known identifier.
    pub owners: &'a HashMap<Identifier, CustomerId, S>,
    /// The exclusive-kind identifiers each owner holds.
    pub exclusives: &'a HashMap<CustomerId, Vec<Identifier>, S>,
}

// By hand: only references are copied, whatever the hasher.
impl<S> Clone for KnownView<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for KnownView<'_, S> {}

/// Decide where a message with these identifiers (strongest first) belongs.
pub fn resolve(identifiers: &[Identifier], known: &KnownIdentities) -> Resolution {
    resolve_in(identifiers, known.view())
}

/// Decide where a message with these identifiers (strongest first) belongs,
/// knowing what `known` says of them (entries for other identifiers are ignored).
///
/// Exclusive kinds are compared as sets: a profile clashes with the message when,
/// for some exclusive kind, both hold values and share none. So an `alias` that
/// names an old and a new user id joins the profile holding either, and a later
/// message with either id still finds it.
pub fn resolve_in<S: std::hash::BuildHasher>(identifiers: &[Identifier], known: KnownView<'_, S>) -> Resolution {
    // Exclusive values the resulting profile will hold, kind by kind.
    let mut held: BTreeMap<IdentifierKind, BTreeSet<&str>> = BTreeMap::new();
    for identifier in identifiers.iter().filter(|i| i.kind().is_exclusive()) {
        held.entry(identifier.kind()).or_default().insert(identifier.value());
    }
    let mut chosen: Vec<CustomerId> = Vec::new();
    let mut conflicts = Vec::new();
    let mut refused: Vec<CustomerId> = Vec::new();

    for identifier in identifiers {
        let Some(&owner) = known.owners.get(identifier) else { continue };
        if chosen.contains(&owner) || refused.contains(&owner) {
            continue;
        }
        let owner_exclusives = known.exclusives.get(&owner).map(Vec::as_slice).unwrap_or(&[]);
        let mut owner_held: BTreeMap<IdentifierKind, BTreeSet<&str>> = BTreeMap::new();
        for e in owner_exclusives {
            owner_held.entry(e.kind()).or_default().insert(e.value());
        }
        let clash = owner_held
            .iter()
            .find(|(kind, values)| held.get(kind).is_some_and(|ours| !ours.is_empty() && ours.is_disjoint(values)));
        match clash {
            Some((kind, _)) => {
                refused.push(owner);
                conflicts.push(Conflict { kept: None, other: owner, kind: *kind });
            }
            None => {
                for (kind, values) in owner_held {
                    held.entry(kind).or_default().extend(values);
                }
                chosen.push(owner);
            }
        }
    }

    let target = chosen.iter().min().copied();
    for conflict in &mut conflicts {
        conflict.kept = target;
    }
    let merge = chosen.iter().copied().filter(|c| Some(*c) != target).collect();
    let attach = identifiers.iter().filter(|i| !known.owners.contains_key(*i)).cloned().collect();
    Resolution { target: target.map_or(Target::New, Target::Existing), attach, merge, conflicts }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> Identifier {
        Identifier::parse(text).unwrap()
    }

    fn customer(n: u64) -> CustomerId {
        CustomerId::from_parts(n, 0)
    }

    fn known(owners: &[(&str, u64)]) -> KnownIdentities {
        let mut known = KnownIdentities::default();
        for (text, n) in owners {
            let identifier = id(text);
            if identifier.kind().is_exclusive() {
                known.exclusives.entry(customer(*n)).or_default().push(identifier.clone());
            }
            known.owners.insert(identifier, customer(*n));
        }
        known
    }

    #[test]
    fn unknown_identifiers_make_a_new_profile() {
        let resolution = resolve(&[id("user_id:u1"), id("email:a@b.fr")], &KnownIdentities::default());
        assert_eq!(resolution.target, Target::New);
        assert_eq!(resolution.attach.len(), 2);
        assert!(resolution.merge.is_empty());
    }

    #[test]
    fn a_new_identifier_joins_the_profile_of_a_known_one() {
        let resolution = resolve(&[id("user_id:u1"), id("email:a@b.fr")], &known(&[("user_id:u1", 1)]));
        assert_eq!(resolution.target, Target::Existing(customer(1)));
        assert_eq!(resolution.attach, vec![id("email:a@b.fr")]);
    }

    #[test]
    fn two_profiles_linked_by_a_message_merge_into_the_oldest() {
        let resolution = resolve(
            &[id("user_id:u1"), id("anonymous_id:device")],
            &known(&[("user_id:u1", 5), ("anonymous_id:device", 2)]),
        );
        assert_eq!(resolution.target, Target::Existing(customer(2)));
        assert_eq!(resolution.merge, vec![customer(5)]);
    }

    #[test]
    fn profiles_with_different_customer_numbers_never_merge() {
        let resolution = resolve(
            &[id("customer_number:C1"), id("email:a@b.fr")],
            &known(&[("customer_number:C1", 1), ("email:a@b.fr", 2), ("customer_number:C2", 2)]),
        );
        assert_eq!(resolution.target, Target::Existing(customer(1)));
        assert!(resolution.merge.is_empty());
        assert_eq!(
            resolution.conflicts,
            vec![Conflict { kept: Some(customer(1)), other: customer(2), kind: IdentifierKind::CustomerNumber }]
        );
    }

    #[test]
    fn an_alias_from_an_old_user_id_to_a_new_one_joins_the_old_profile_whatever_their_order() {
        for (old, new) in [("old-1", "new-9"), ("zed", "abc"), ("abc", "zed")] {
            let resolution = resolve(
                &[id(&format!("user_id:{new}")), id(&format!("user_id:{old}"))],
                &known(&[(&format!("user_id:{old}"), 1)]),
            );
            assert_eq!(resolution.target, Target::Existing(customer(1)), "{old} -> {new}");
            assert!(resolution.conflicts.is_empty());
            // Afterwards the new id alone still finds the profile holding both.
            let later = resolve(
                &[id(&format!("user_id:{new}"))],
                &known(&[(&format!("user_id:{old}"), 1), (&format!("user_id:{new}"), 1)]),
            );
            assert_eq!(later.target, Target::Existing(customer(1)));
        }
    }

    #[test]
    fn a_shared_device_does_not_pull_a_new_user_into_another_persons_profile() {
        // A kiosk's anonymous id already belongs to u1; u2 signs in on it.
        let resolution = resolve(
            &[id("user_id:u2"), id("anonymous_id:kiosk")],
            &known(&[("user_id:u1", 1), ("anonymous_id:kiosk", 1)]),
        );
        assert_eq!(resolution.target, Target::New);
        assert_eq!(resolution.attach, vec![id("user_id:u2")]);
        assert_eq!(resolution.conflicts.len(), 1);
    }
}
