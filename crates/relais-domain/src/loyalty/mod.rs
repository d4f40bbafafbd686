//! The loyalty engine's rules, free of storage: programmes and their versioned
//! earn rules, what an event earns, card numbers, point lots consumed oldest
//! first, and the plain-language reasons of a statement.
//!
//! Points are integers. Every rate and multiplier is an exact decimal, every
//! product is computed in integers and rounded once, by the rule's stated
//! rounding, so the same event always earns the same points.

pub mod card;
pub mod coupons;
pub mod ledger;
pub mod notices;
pub mod rewards;
pub mod rules;
pub mod tiers;

pub use card::CardNumber;
pub use ledger::{allocate, Allocation, Lot, Reason, ReasonKind};
pub use rules::{EarnInput, Earning, Programme, ProgrammeError, RuleVersion};

/// A number of points; signed in the ledger (credit positive, debit negative).
pub type Points = i64;

/// The largest number of points one request may move: far above any real
/// basket, low enough that sums of many entries never overflow.
pub const MAX_POINTS: Points = 1_000_000_000;

/// A positive amount of points asked for at the boundary (a redemption, an
/// adjustment), checked once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositivePoints(Points);

impl PositivePoints {
    /// Check an amount: at least 1, at most [`MAX_POINTS`].
    pub fn new(points: i64) -> Result<PositivePoints, String> {
        if points < 1 {
            return Err(format!("points must be a positive whole number, got {points}"));
        }
        if points > MAX_POINTS {
            return Err(format!("points must be at most {MAX_POINTS}, got {points}"));
        }
        Ok(PositivePoints(points))
    }

    /// The amount.
    pub fn get(self) -> Points {
        self.0
    }
}

/// A language of the statement's reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// English.
    En,
    /// French.
    Fr,
}

names!(Lang { En => "en", Fr => "fr" });
