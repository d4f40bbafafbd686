//! Typed, prefixed, sortable identifiers (`cus_…`, `evt_…`) built on ULIDs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

/// A monotonic ULID: within one millisecond the random part is incremented.
fn next_ulid() -> Ulid {
    static GENERATOR: std::sync::Mutex<Option<ulid::Generator>> = std::sync::Mutex::new(None);
    let mut guard = GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let generator = guard.get_or_insert_with(ulid::Generator::new);
    // Overflow of the random part within one millisecond is practically impossible;
    // fall back to a fresh random ULID rather than failing.
    generator.generate().unwrap_or_else(|_| Ulid::new())
}

/// Why a string is not a valid id of the expected type.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{input}` is not a valid {what} id: expected `{prefix}` followed by 26 base32 characters")]
pub struct IdError {
    input: String,
    what: &'static str,
    prefix: &'static str,
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Ulid);

        impl $name {
            /// The textual prefix that marks this id type.
            pub const PREFIX: &'static str = $prefix;

            /// A new id for the current instant; ids made by one process are strictly
            /// increasing, so "older" is well defined even within a millisecond.
            pub fn new() -> Self {
                Self(next_ulid())
            }

            /// An id for a given instant (milliseconds since the epoch) and random part,
            /// used by deterministic generators such as the demo.
            pub fn from_parts(unix_ms: u64, random: u128) -> Self {
                Self(Ulid::from_parts(unix_ms, random))
            }

            /// The id's 16 bytes (for compact binary headers).
            pub fn to_bytes(&self) -> [u8; 16] {
                self.0.to_bytes()
            }

            /// The id from its 16 bytes.
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Ulid::from_bytes(bytes))
            }

            /// The milliseconds since the epoch encoded in the id.
            pub fn unix_ms(&self) -> u64 {
                self.0.timestamp_ms()
            }

            /// Parse the prefixed textual form.
            pub fn parse(input: &str) -> Result<Self, IdError> {
                input
                    .strip_prefix($prefix)
                    .and_then(|rest| Ulid::from_string(rest).ok())
                    .map(Self)
                    .ok_or_else(|| IdError { input: input.chars().take(64).collect(), what: $what, prefix: $prefix })
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

prefixed_id!(
    /// One person's profile.
    CustomerId, "cus_", "customer"
);
prefixed_id!(
    /// One stored event of the log.
    EventId, "evt_", "event"
);
prefixed_id!(
    /// One recorded merge of two profiles.
    MergeId, "mrg_", "merge"
);
prefixed_id!(
    /// One API key (the id, never the secret).
    KeyId, "key_", "API key"
);
prefixed_id!(
    /// One person who signs in to the back office.
    UserId, "usr_", "user"
);
prefixed_id!(
    /// One side effect waiting in the outbox (an e-mail, later a webhook call).
    OutboxId, "obx_", "outbox message"
);
prefixed_id!(
    /// A group of customers: a household or a company (Segment `group`).
    AccountId, "acc_", "account"
);
prefixed_id!(
    /// One erasure of a person (a data-subject right carried out).
    ErasureId, "era_", "erasure"
);
prefixed_id!(
    /// One recorded consent fact.
    ConsentId, "con_", "consent"
);
prefixed_id!(
    /// One data-subject rights request.
    RequestId, "req_", "rights request"
);
prefixed_id!(
    /// One membership of a loyalty programme.
    MemberId, "mem_", "member"
);
prefixed_id!(
    /// One loyalty ledger transaction (its entries sum to zero).
    LedgerTxId, "ltx_", "ledger transaction"
);
prefixed_id!(
    /// One saved segment.
    SegmentId, "seg_", "segment"
);
prefixed_id!(
    /// One typology (a set of segments).
    TypologyId, "typ_", "typology"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_text_form() {
        let id = CustomerId::new();
        let text = id.to_string();
        assert!(text.starts_with("cus_"));
        assert_eq!(CustomerId::parse(&text), Ok(id));
    }

    #[test]
    fn an_id_of_another_type_is_refused() {
        let event = EventId::new().to_string();
        let err = CustomerId::parse(&event).unwrap_err();
        assert!(err.to_string().contains("customer id"), "{err}");
    }

    #[test]
    fn ids_made_in_a_row_are_strictly_increasing() {
        let ids: Vec<CustomerId> = (0..1000).map(|_| CustomerId::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn ids_sort_by_creation_time() {
        let older = CustomerId::from_parts(1_000, 5);
        let newer = CustomerId::from_parts(2_000, 1);
        assert!(older < newer);
        assert!(older.to_string() < newer.to_string());
    }
}
