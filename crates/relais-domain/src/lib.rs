//! relais domain: the types and rules every other part relies on, free of HTTP and SQL.
//!
//! Values are parsed at the boundary into these types (`Identifier`, `CustomerId`,
//! `TrackingMessage`, `Role`), so code further in never sees an invalid one.

pub mod cards;
pub mod channel;
pub mod consent;
pub mod id;
pub mod identifier;
pub mod message;
pub mod money;
pub mod privacy;
pub mod resolve;
pub mod rights;
pub mod risk;
pub mod role;
pub mod traits;

pub use channel::Channel;
pub use id::{AccountId, ConsentId, CustomerId, ErasureId, EventId, KeyId, MergeId, OutboxId, RequestId};
pub use identifier::{Identifier, IdentifierError, IdentifierKind};
pub use message::{MessageError, MessageType, TrackingMessage};
pub use money::MinorUnits;
pub use role::{Permission, Role};
pub use traits::ComputedTraits;
