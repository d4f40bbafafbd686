//! Tiers (Bronze, Silver, Gold…): qualified on a rolling window of spend,
//! points or engagement. A member moves up as soon as they qualify; they move
//! down only at a review date, after a notice and a grace period, so nobody
//! loses a status overnight; and "what do I need to keep Gold" has an exact
//! answer.

use chrono::{Datelike, Months, NaiveDate};
use serde::{Deserialize, Serialize};

/// Tiers as written in a version: `[version.tiers]` and its `[[version.tiers.level]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TiersFile {
    /// `spend` (net order amounts, minor units), `points` (points earned) or
    /// `engagement` (engagement events rewarded).
    pub measure: String,
    /// Length of the rolling window, in months.
    pub window_months: u32,
    /// Days between the notice of a downgrade and the downgrade.
    #[serde(default = "default_grace")]
    pub grace_days: u32,
    /// `monthly` (the 1st of each month) or `yearly` (1 January).
    #[serde(default = "default_review")]
    pub review: String,
    /// The levels, lowest first.
    #[serde(default)]
    pub level: Vec<LevelFile>,
}

fn default_grace() -> u32 {
    30
}

fn default_review() -> String {
    "monthly".into()
}

/// One level as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LevelFile {
    /// Stable id (`gold`).
    pub id: String,
    /// Name shown to members (`Or`).
    pub name: String,
    /// The measure over the window needed to hold it.
    pub threshold: i64,
}

/// What qualifies a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// Net order amounts (orders minus refunds), minor units.
    Spend,
    /// Points earned by the rules.
    Points,
    /// Engagement events rewarded by event rules.
    Engagement,
}

names!(Measure { Spend => "spend", Points => "points", Engagement => "engagement" });

/// When downgrades are decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Review {
    /// The first day of each month.
    Monthly,
    /// The first of January.
    Yearly,
}

names!(Review { Monthly => "monthly", Yearly => "yearly" });

/// One checked level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Level {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The measure needed to hold it.
    pub threshold: i64,
}

/// Checked tiers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tiers {
    /// What qualifies.
    pub measure: Measure,
    /// Rolling window, months.
    pub window_months: u32,
    /// Days of grace after a downgrade notice.
    pub grace_days: u32,
    /// Review dates.
    pub review: Review,
    /// Levels, strictly increasing thresholds.
    pub levels: Vec<Level>,
}

impl TiersFile {
    /// Check the tiers; the error says what is wrong.
    pub fn check(&self) -> Result<Tiers, String> {
        let measure = Measure::parse(&self.measure)
            .ok_or_else(|| format!("tiers measure `{}` must be spend, points or engagement", self.measure))?;
        if !(1..=60).contains(&self.window_months) {
            return Err(format!("tiers window_months must be 1 to 60, got {}", self.window_months));
        }
        if self.grace_days > 366 {
            return Err(format!("tiers grace_days must be at most 366, got {}", self.grace_days));
        }
        let review = Review::parse(&self.review)
            .ok_or_else(|| format!("tiers review `{}` must be monthly or yearly", self.review))?;
        if self.level.is_empty() {
            return Err("tiers need at least one [[version.tiers.level]]".into());
        }
        let mut levels: Vec<Level> = Vec::with_capacity(self.level.len());
        for level in &self.level {
            if level.id.is_empty()
                || level.id.len() > 40
                || !level.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(format!("tier id `{}` must be 1 to 40 lower-case letters, digits or dashes", level.id));
            }
            if level.name.trim().is_empty() {
                return Err(format!("tier `{}` needs a name", level.id));
            }
            if level.threshold < 0 {
                return Err(format!("tier `{}`: threshold must not be negative", level.id));
            }
            if let Some(previous) = levels.last() {
                if level.threshold <= previous.threshold {
                    return Err(format!(
                        "tier `{}` has threshold {} but must be above `{}`'s {} (list levels lowest first)",
                        level.id, level.threshold, previous.id, previous.threshold
                    ));
                }
            }
            if levels.iter().any(|l| l.id == level.id) {
                return Err(format!("two tiers are called `{}`", level.id));
            }
            levels.push(Level { id: level.id.clone(), name: level.name.clone(), threshold: level.threshold });
        }
        Ok(Tiers { measure, window_months: self.window_months, grace_days: self.grace_days, review, levels })
    }
}

impl Tiers {
    /// The highest level a value qualifies for.
    pub fn qualifying(&self, value: i64) -> Option<&Level> {
        self.levels.iter().rev().find(|l| value >= l.threshold)
    }

    /// A level's rank (0 = lowest); `None` for no level or an unknown id.
    pub fn rank(&self, id: Option<&str>) -> Option<usize> {
        id.and_then(|id| self.levels.iter().position(|l| l.id == id))
    }

    /// A level by id.
    pub fn level(&self, id: &str) -> Option<&Level> {
        self.levels.iter().find(|l| l.id == id)
    }

    /// First day of the window ending on `day` (inclusive).
    pub fn window_start(&self, day: NaiveDate) -> NaiveDate {
        day.checked_sub_months(Months::new(self.window_months)).and_then(|d| d.succ_opt()).unwrap_or(day)
    }

    /// Whether `day` is a review date.
    pub fn is_review_day(&self, day: NaiveDate) -> bool {
        match self.review {
            Review::Monthly => day.day() == 1,
            Review::Yearly => day.day() == 1 && day.month() == 1,
        }
    }

    /// What keeping `tier` takes on `by`, when the window ending that day
    /// holds `counted` from what is already recorded; `None` for an unknown tier.
    pub fn keep(&self, tier: &str, by: NaiveDate, counted: i64) -> Option<KeepAnswer> {
        let level = self.level(tier)?;
        Some(KeepAnswer {
            tier: level.id.clone(),
            review_on: by,
            threshold: level.threshold,
            counted,
            missing: (level.threshold - counted).max(0),
        })
    }

    /// The first review date after `day`.
    pub fn next_review(&self, day: NaiveDate) -> NaiveDate {
        let next_month = |d: NaiveDate| d.with_day(1).and_then(|d| d.checked_add_months(Months::new(1))).unwrap_or(d);
        match self.review {
            Review::Monthly => next_month(day),
            Review::Yearly => NaiveDate::from_ymd_opt(day.year() + 1, 1, 1).unwrap_or(day),
        }
    }
}

/// What a member needs to keep a level at the next review: the value the
/// window will hold then from what is already known, and what is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeepAnswer {
    /// The level.
    pub tier: String,
    /// The next review date.
    pub review_on: NaiveDate,
    /// Its threshold.
    pub threshold: i64,
    /// The measure the window will hold on the review date, counting only
    /// what is already recorded (older activity will have left the window).
    pub counted: i64,
    /// What is still needed before the review date (0: the level is kept).
    pub missing: i64,
}

/// The state a review leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewOutcome {
    /// Nothing changes.
    Keep,
    /// Qualifies higher: move up now.
    Upgrade(String),
    /// Qualifies lower at a review date: notify, downgrade on this day unless the member qualifies again.
    Notice(NaiveDate),
    /// The grace period is over and the member still does not qualify: move down (or to no tier).
    Downgrade(Option<String>),
    /// The member qualifies again: the pending notice is lifted.
    LiftNotice,
}

/// Decide a member's tier on `day`, given the value of the window ending
/// that day, the current tier and any pending downgrade date.
pub fn review(
    tiers: &Tiers,
    day: NaiveDate,
    value: i64,
    current: Option<&str>,
    downgrade_on: Option<NaiveDate>,
) -> ReviewOutcome {
    let qualifying = tiers.qualifying(value).map(|l| l.id.clone());
    let (now, held) = (tiers.rank(qualifying.as_deref()), tiers.rank(current));
    match (now.cmp(&held), downgrade_on) {
        (std::cmp::Ordering::Greater, _) => ReviewOutcome::Upgrade(qualifying.unwrap_or_default()),
        (std::cmp::Ordering::Equal, Some(_)) => ReviewOutcome::LiftNotice,
        (std::cmp::Ordering::Equal, None) => ReviewOutcome::Keep,
        (std::cmp::Ordering::Less, Some(on)) if day >= on => ReviewOutcome::Downgrade(qualifying),
        (std::cmp::Ordering::Less, Some(_)) => ReviewOutcome::Keep,
        (std::cmp::Ordering::Less, None) if tiers.is_review_day(day) => {
            ReviewOutcome::Notice(day + chrono::Duration::days(i64::from(tiers.grace_days)))
        }
        (std::cmp::Ordering::Less, None) => ReviewOutcome::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiers() -> Tiers {
        let file: TiersFile = serde_json::from_str(
            r#"{"measure": "spend", "window_months": 12, "grace_days": 30, "review": "monthly",
                "level": [{"id": "silver", "name": "Argent", "threshold": 30000},
                          {"id": "gold", "name": "Or", "threshold": 100000}]}"#,
        )
        .unwrap();
        file.check().unwrap()
    }

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn members_move_up_at_once_and_down_only_after_notice_and_grace() {
        let t = tiers();
        assert_eq!(review(&t, day("2026-03-10"), 120_000, Some("silver"), None), ReviewOutcome::Upgrade("gold".into()));
        // Below Gold on a day that is not a review date: nothing yet.
        assert_eq!(review(&t, day("2026-03-10"), 50_000, Some("gold"), None), ReviewOutcome::Keep);
        // On the review date: a notice, downgrade in 30 days.
        assert_eq!(review(&t, day("2026-04-01"), 50_000, Some("gold"), None), ReviewOutcome::Notice(day("2026-05-01")));
        assert_eq!(review(&t, day("2026-04-20"), 50_000, Some("gold"), Some(day("2026-05-01"))), ReviewOutcome::Keep);
        assert_eq!(
            review(&t, day("2026-05-01"), 50_000, Some("gold"), Some(day("2026-05-01"))),
            ReviewOutcome::Downgrade(Some("silver".into()))
        );
        assert_eq!(
            review(&t, day("2026-05-01"), 10, Some("gold"), Some(day("2026-05-01"))),
            ReviewOutcome::Downgrade(None)
        );
        // Qualifying again during the grace period lifts the notice.
        assert_eq!(
            review(&t, day("2026-04-20"), 100_000, Some("gold"), Some(day("2026-05-01"))),
            ReviewOutcome::LiftNotice
        );
    }

    #[test]
    fn windows_and_review_dates() {
        let t = tiers();
        assert_eq!(t.window_start(day("2026-03-10")), day("2025-03-11"));
        assert_eq!(t.next_review(day("2026-03-10")), day("2026-04-01"));
        assert_eq!(t.next_review(day("2026-12-01")), day("2027-01-01"));
        assert_eq!(t.qualifying(29_999), None);
        assert_eq!(t.qualifying(30_000).unwrap().id, "silver");
        let keep = t.keep("gold", day("2026-04-30"), 16_000).unwrap();
        assert_eq!((keep.threshold, keep.missing), (100_000, 84_000));
        assert_eq!(t.keep("gold", day("2026-04-30"), 120_000).unwrap().missing, 0);
        assert!(t.keep("platinum", day("2026-04-30"), 0).is_none());
    }

    #[test]
    fn tiers_that_contradict_are_refused() {
        let bad = |json: &str| serde_json::from_str::<TiersFile>(json).unwrap().check().unwrap_err();
        assert!(bad(
            r#"{"measure": "visits", "window_months": 12, "level": [{"id": "a", "name": "A", "threshold": 1}]}"#
        )
        .contains("measure"));
        assert!(bad(r#"{"measure": "spend", "window_months": 12, "level": [{"id": "a", "name": "A", "threshold": 5}, {"id": "b", "name": "B", "threshold": 5}]}"#).contains("must be above"));
        assert!(bad(
            r#"{"measure": "spend", "window_months": 0, "level": [{"id": "a", "name": "A", "threshold": 5}]}"#
        )
        .contains("window_months"));
    }
}
