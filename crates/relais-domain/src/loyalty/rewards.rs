//! The rewards catalogue: what points buy, for how many, while stock lasts,
//! in which period, for which tiers, and how long a reservation holds.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::Points;

/// A reward as defined by the team.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Reward {
    /// Stable id (`bon-10`): lower-case letters, digits and dashes.
    pub id: String,
    /// Name shown to members ("Bon d'achat de 10 €").
    pub name: String,
    /// Its cost in points.
    pub cost: Points,
    /// How many can be redeemed in all; absent: unlimited.
    pub stock: Option<i64>,
    /// First day it can be redeemed (organisation's calendar).
    pub valid_from: Option<NaiveDate>,
    /// Last day it can be redeemed.
    pub valid_until: Option<NaiveDate>,
    /// Tiers allowed to redeem it; empty: every member.
    #[serde(default)]
    pub tiers: Vec<String>,
    /// Days a reservation holds the points and the stock before the scheduled
    /// loyalty job releases it (points back to the member, stock back to the
    /// catalogue) when nobody confirmed or cancelled it; absent:
    /// [`DEFAULT_HOLD_DAYS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_days: Option<u32>,
}

/// How long a reservation holds when the reward does not say: a week.
pub const DEFAULT_HOLD_DAYS: u32 = 7;

/// The longest hold a reward may set.
pub const MAX_HOLD_DAYS: u32 = 365;

impl Reward {
    /// Check a definition; the error names the field and the reason.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.id.is_empty()
            || self.id.len() > 40
            || !self.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(("id", "must be 1 to 40 lower-case letters, digits or dashes".into()));
        }
        if self.name.trim().is_empty() || self.name.chars().count() > 120 {
            return Err(("name", "must be 1 to 120 characters".into()));
        }
        if !(1..=super::MAX_POINTS).contains(&self.cost) {
            return Err(("cost", format!("must be 1 to {} points", super::MAX_POINTS)));
        }
        if self.stock.is_some_and(|s| s < 0) {
            return Err(("stock", "must not be negative (leave it out for an unlimited reward)".into()));
        }
        if let (Some(from), Some(until)) = (self.valid_from, self.valid_until) {
            if until < from {
                return Err(("valid_until", format!("{until} is before valid_from {from}")));
            }
        }
        if self.hold_days.is_some_and(|d| !(1..=MAX_HOLD_DAYS).contains(&d)) {
            return Err((
                "hold_days",
                format!("must be 1 to {MAX_HOLD_DAYS} days (leave it out for {DEFAULT_HOLD_DAYS})"),
            ));
        }
        Ok(())
    }

    /// Days a reservation of this reward holds.
    pub fn hold_days(&self) -> u32 {
        self.hold_days.unwrap_or(DEFAULT_HOLD_DAYS)
    }

    /// Whether a reservation made at `reserved_at` is released at `now`: its
    /// hold is over (exactly `hold_days` × 24 hours later or after).
    pub fn hold_over(&self, reserved_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        now >= reserved_at + chrono::Duration::days(i64::from(self.hold_days()))
    }

    /// Why a member of `tier` cannot redeem it on `day`, if they cannot.
    pub fn refusal(&self, day: NaiveDate, tier: Option<&str>) -> Option<String> {
        if self.valid_from.is_some_and(|from| day < from) {
            return Some(format!("`{}` can be redeemed from {}", self.id, self.valid_from.unwrap_or(day)));
        }
        if self.valid_until.is_some_and(|until| day > until) {
            return Some(format!("`{}` could be redeemed until {}", self.id, self.valid_until.unwrap_or(day)));
        }
        if !self.tiers.is_empty() && !tier.is_some_and(|t| self.tiers.iter().any(|allowed| allowed == t)) {
            return Some(format!("`{}` is for members of the tiers {}", self.id, self.tiers.join(", ")));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewards_say_why_a_member_cannot_have_them() {
        let reward: Reward = serde_json::from_str(
            r#"{"id": "week-end", "name": "Week-end à Lyon", "cost": 5000, "stock": 3,
                "valid_from": "2026-06-01", "valid_until": "2026-08-31", "tiers": ["gold"]}"#,
        )
        .unwrap();
        assert!(reward.check().is_ok());
        let day = |d: &str| NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap();
        assert!(reward.refusal(day("2026-05-31"), Some("gold")).unwrap().contains("from 2026-06-01"));
        assert!(reward.refusal(day("2026-09-01"), Some("gold")).unwrap().contains("until 2026-08-31"));
        assert!(reward.refusal(day("2026-07-01"), Some("silver")).unwrap().contains("tiers gold"));
        assert!(reward.refusal(day("2026-07-01"), None).is_some());
        assert_eq!(reward.refusal(day("2026-07-01"), Some("gold")), None);
        let free = Reward { cost: 0, ..reward.clone() };
        assert_eq!(free.check().unwrap_err().0, "cost");
        let backwards = Reward { valid_until: Some(day("2026-01-01")), ..reward };
        assert_eq!(backwards.check().unwrap_err().0, "valid_until");
    }

    #[test]
    fn reservations_hold_a_week_unless_the_reward_says_otherwise() {
        let reward: Reward = serde_json::from_str(r#"{"id": "bon-10", "name": "Bon de 10 €", "cost": 1000}"#).unwrap();
        assert_eq!(reward.hold_days(), DEFAULT_HOLD_DAYS);
        assert!(!serde_json::to_string(&reward).unwrap().contains("hold_days"), "absent stays absent");
        let at = |text: &str| DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc);
        let reserved = at("2026-03-01T10:00:00Z");
        assert!(!reward.hold_over(reserved, at("2026-03-08T09:59:59Z")));
        assert!(reward.hold_over(reserved, at("2026-03-08T10:00:00Z")));
        let short = Reward { hold_days: Some(2), ..reward.clone() };
        assert!(short.check().is_ok() && short.hold_over(reserved, at("2026-03-03T10:00:00Z")));
        assert_eq!(Reward { hold_days: Some(0), ..reward.clone() }.check().unwrap_err().0, "hold_days");
        assert_eq!(Reward { hold_days: Some(366), ..reward }.check().unwrap_err().0, "hold_days");
    }
}
