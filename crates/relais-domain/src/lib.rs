//! relais domain: the types and rules every other part relies on, free of HTTP and SQL.
//!
//! Values are parsed at the boundary into these types (`Identifier`, `CustomerId`,
//! `TrackingMessage`, `Role`), so code further in never sees an invalid one.

/// `as_str` and `parse` for an enum of named values (the API's and storage's names).
macro_rules! names {
    ($t:ty { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $t {
            /// The name used in the API and in storage.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),* }
            }

            /// Parse a name.
            pub fn parse(name: &str) -> Option<Self> {
                match name { $($name => Some(Self::$variant),)* _ => None }
            }
        }
    };
}

pub mod cards;
pub mod channel;
pub mod clv;
pub mod consent;
pub mod id;
pub mod identifier;
pub mod journey;
pub mod loyalty;
pub mod message;
pub mod money;
pub mod privacy;
pub mod resolve;
pub mod rfm;
pub mod rights;
pub mod risk;
pub mod role;
pub mod segment;
pub mod traits;
pub mod typology;

pub use channel::Channel;
pub use id::{
    AccountId, ConsentId, CustomerId, ErasureId, EventId, KeyId, LedgerTxId, MemberId, MergeId, OutboxId, RequestId,
    SegmentId, TypologyId, UserId,
};
pub use identifier::{Identifier, IdentifierError, IdentifierKind};
pub use message::{MessageError, MessageType, TrackingMessage};
pub use money::MinorUnits;
pub use role::{Permission, Role};
pub use traits::ComputedTraits;
