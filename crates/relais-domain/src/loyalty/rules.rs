//! Programmes and their earn rules: the file form an operator writes, the
//! checks that turn it into a [`Programme`], and what one event earns.
//!
//! A programme keeps every version of its rules. A version applies from a day
//! of the organisation's calendar, and an event is judged by the version in
//! force on the event's own day, so a change of rules never rewrites what was
//! earned before it and a late event is judged as it would have been on time.

use std::collections::HashSet;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ledger::ReasonKind;
use super::Points;

/// A programme file, as written in TOML or sent as JSON (`relais loyalty apply`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProgrammeFile {
    /// The programme itself.
    pub programme: ProgrammeHead,
    /// Its rule versions.
    #[serde(default)]
    pub version: Vec<VersionFile>,
}

/// A programme's name and units.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProgrammeHead {
    /// Stable key used in the API (`club`): lower-case letters, digits and dashes.
    pub key: String,
    /// Name shown to members.
    pub name: String,
    /// What points are called ("points", "miles").
    #[serde(default = "default_unit")]
    pub unit: String,
    /// Value of one point in minor units of the currency, for the liability.
    pub point_value_minor: i64,
    /// The currency orders must be in to earn, and of the point value.
    #[serde(default = "default_currency")]
    pub currency: String,
}

fn default_unit() -> String {
    "points".into()
}

fn default_currency() -> String {
    "EUR".into()
}

/// One version of the rules, as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VersionFile {
    /// First day (organisation's calendar, `YYYY-MM-DD`) the version applies.
    pub effective_from: String,
    /// When earned points expire.
    #[serde(default)]
    pub expiry: ExpiryFile,
    /// The earn rules.
    #[serde(default)]
    pub rule: Vec<RuleFile>,
    /// Tiers, when the programme has them.
    pub tiers: Option<super::tiers::TiersFile>,
    /// An event name that enrols its sender automatically (`Order Completed`,
    /// `Signed Up`); the event itself then earns.
    pub enrol_on: Option<String>,
}

/// Expiry as written: `{ months = 12 }`, `{ end_of_following_year = true }` or nothing (never).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpiryFile {
    /// Rolling: points expire this many months after the day they were earned.
    pub months: Option<u32>,
    /// Points expire at the end of the year after the one they were earned in.
    pub end_of_following_year: Option<bool>,
}

/// One earn rule, as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Unique within the version; named on every entry it makes.
    pub id: String,
    /// `spend`, `event` or `first_purchase`.
    pub kind: String,
    /// `spend`: points per unit of currency, an exact decimal ("1", "1.5").
    pub points_per_euro: Option<String>,
    /// `spend`: `down` (default), `nearest` (halves up) or `up`.
    pub rounding: Option<String>,
    /// `spend`: multipliers by product category, store or channel.
    #[serde(default)]
    pub multiplier: Vec<MultiplierFile>,
    /// `event`: the event name that earns (`Review Submitted`).
    pub event: Option<String>,
    /// `event` and `first_purchase`: points granted.
    pub points: Option<i64>,
    /// The most this rule grants a member per day or per month.
    pub cap: Option<CapFile>,
    /// `draw`: the odds of winning, `"1/20"`.
    pub odds: Option<String>,
    /// `draw`: the most points the draw may ever give in all.
    pub budget: Option<i64>,
    /// `challenge`: count distinct values of this event property (`store`), not events.
    pub distinct: Option<String>,
    /// `challenge`: how many (distinct) events complete it.
    pub count: Option<u32>,
    /// `challenge` and `streak`: `week` or `month`.
    pub per: Option<String>,
    /// `streak`: how many periods in a row earn the bonus.
    pub length: Option<u32>,
    /// `challenge` and `streak`: the badge awarded (its id).
    pub badge: Option<String>,
}

/// A multiplier as written: exactly one condition and a factor.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MultiplierFile {
    /// Applies to order lines of this product category.
    pub category: Option<String>,
    /// Applies to orders at this store.
    pub store: Option<String>,
    /// Applies to orders on this channel.
    pub channel: Option<String>,
    /// Applies to orders of members of this tier.
    pub tier: Option<String>,
    /// The factor, an exact decimal ("2", "1.5").
    pub factor: String,
}

/// A cap as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CapFile {
    /// `day` or `month` (organisation's calendar).
    pub per: String,
    /// The most points per period.
    pub points: i64,
}

/// Why a programme file is refused; `place` says where (version and rule).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {reason}")]
pub struct ProgrammeError {
    /// Where in the file: `programme`, `version 2`, `version 2, rule "spend"`.
    pub place: String,
    /// Index of the version (0-based) when the error is inside one.
    pub version: Option<usize>,
    /// Index of the rule within the version (0-based) when inside one.
    pub rule: Option<usize>,
    /// What is wrong and what to do.
    pub reason: String,
}

/// An exact non-negative decimal, `units / 10^scale`, as rates and factors are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decimal {
    /// The digits.
    pub units: i64,
    /// The number of decimals (at most 4).
    pub scale: u32,
}

/// The scale every decimal is brought to before multiplying.
const SCALE: u32 = 4;

impl Decimal {
    /// Parse `"1"`, `"1.5"`, `"0.25"` (at most four decimals).
    pub fn parse(text: &str) -> Option<Decimal> {
        let text = text.trim();
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty() || fraction.len() > SCALE as usize {
            return None;
        }
        if !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) || whole.len() > 9 {
            return None;
        }
        let units: i64 = format!("{whole}{fraction}").parse().ok()?;
        Some(Decimal { units, scale: fraction.len() as u32 })
    }

    /// The value in ten-thousandths.
    fn scaled(self) -> i128 {
        i128::from(self.units) * 10i128.pow(SCALE - self.scale)
    }

    /// Written back as a decimal.
    pub fn text(self) -> String {
        if self.scale == 0 {
            return self.units.to_string();
        }
        let div = 10i64.pow(self.scale);
        let fraction = format!("{:0width$}", self.units % div, width = self.scale as usize);
        format!("{}.{}", self.units / div, fraction.trim_end_matches('0')).trim_end_matches('.').to_string()
    }
}

/// How a fractional number of points becomes whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Drop the fraction (the default: never more than the rate promises).
    Down,
    /// To the nearest point, halves up.
    Nearest,
    /// Any fraction earns a whole point.
    Up,
}

names!(Rounding { Down => "down", Nearest => "nearest", Up => "up" });

/// What a multiplier looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "on", content = "value", rename_all = "snake_case")]
pub enum Condition {
    /// Order lines of this category.
    Category(String),
    /// Orders at this store.
    Store(String),
    /// Orders on this channel.
    Channel(String),
    /// Orders of members of this tier.
    Tier(String),
}

/// A multiplier of a spend rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Multiplier {
    /// When it applies.
    pub when: Condition,
    /// By how much.
    pub factor: Decimal,
}

/// The period of a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapPeriod {
    /// A day of the organisation's calendar.
    Day,
    /// A calendar month.
    Month,
}

names!(CapPeriod { Day => "day", Month => "month" });

impl CapPeriod {
    /// The first day of the period holding `day`.
    pub fn start(self, day: NaiveDate) -> NaiveDate {
        match self {
            CapPeriod::Day => day,
            CapPeriod::Month => day.with_day(1).unwrap_or(day),
        }
    }

    /// The last day of the period holding `day`.
    pub fn end(self, day: NaiveDate) -> NaiveDate {
        match self {
            CapPeriod::Day => day,
            CapPeriod::Month => {
                let next = if day.month() == 12 {
                    NaiveDate::from_ymd_opt(day.year() + 1, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(day.year(), day.month() + 1, 1)
                };
                next.and_then(|d| d.pred_opt()).unwrap_or(day)
            }
        }
    }
}

/// The most a rule grants a member per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cap {
    /// The period.
    pub per: CapPeriod,
    /// The most points in it.
    pub points: Points,
}

/// What a rule rewards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RuleKind {
    /// Points per unit of currency spent (`Order Completed`).
    Spend {
        /// Points per unit of currency.
        rate: Decimal,
        /// How the result is made whole.
        rounding: Rounding,
        /// Multipliers.
        multipliers: Vec<Multiplier>,
    },
    /// A fixed bonus for an engagement event (review, survey, check-in, share…).
    Event {
        /// The event name.
        event: String,
        /// Points.
        points: Points,
    },
    /// A one-time bonus on the member's first order.
    FirstPurchase {
        /// Points.
        points: Points,
    },
    /// A bonus on the member's birthday (the first event that day), once a year.
    Birthday {
        /// Points.
        points: Points,
    },
    /// An instant-win draw on an event: stated odds, a fixed budget.
    Draw {
        /// The event that plays.
        event: String,
        /// Winning chances: numerator and denominator.
        odds: (u64, u64),
        /// Points won.
        points: Points,
        /// The most points the draw gives in all; it stops when spent.
        budget: Points,
    },
    /// Do something `count` times (or at `count` distinct places) in a week or month.
    Challenge {
        /// The event counted.
        event: String,
        /// Count distinct values of this property instead of events.
        distinct: Option<String>,
        /// How many complete it.
        count: u32,
        /// The period.
        per: Period,
        /// Points on completion.
        points: Points,
        /// Badge on completion.
        badge: Option<String>,
    },
    /// The event in `length` consecutive weeks or months.
    Streak {
        /// The event.
        event: String,
        /// The period.
        per: Period,
        /// Periods in a row.
        length: u32,
        /// Points each time the streak reaches a multiple of `length`.
        points: Points,
        /// Badge when first reached.
        badge: Option<String>,
    },
}

/// Periods of challenges and streaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// A week, Monday to Sunday.
    Week,
    /// A calendar month.
    Month,
}

names!(Period { Week => "week", Month => "month" });

impl Period {
    /// The first day of the period holding `day`.
    pub fn start(self, day: NaiveDate) -> NaiveDate {
        match self {
            Period::Week => day - chrono::Duration::days(i64::from(day.weekday().num_days_from_monday())),
            Period::Month => day.with_day(1).unwrap_or(day),
        }
    }

    /// The first day of the period before the one starting on `start`.
    pub fn previous(self, start: NaiveDate) -> NaiveDate {
        match self {
            Period::Week => start - chrono::Duration::days(7),
            Period::Month => start.checked_sub_months(chrono::Months::new(1)).unwrap_or(start),
        }
    }
}

impl RuleKind {
    /// The event a gamified rule listens to.
    pub fn game_event(&self) -> Option<&str> {
        match self {
            RuleKind::Draw { event, .. } | RuleKind::Challenge { event, .. } | RuleKind::Streak { event, .. } => {
                Some(event)
            }
            _ => None,
        }
    }
}

/// One checked earn rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Its id, named on the entries it makes.
    pub id: String,
    /// What it rewards.
    pub kind: RuleKind,
    /// Its cap.
    pub cap: Option<Cap>,
}

/// When earned points expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "months", rename_all = "snake_case")]
pub enum Expiry {
    /// Never.
    Never,
    /// This many months after the day they were earned (rolling).
    Months(u32),
    /// At the end of the year after the one they were earned in.
    EndOfFollowingYear,
}

impl Expiry {
    /// The first day on which points earned on `earned` are no longer valid.
    pub fn expires_on(self, earned: NaiveDate) -> Option<NaiveDate> {
        match self {
            Expiry::Never => None,
            Expiry::Months(months) => earned.checked_add_months(chrono::Months::new(months)),
            Expiry::EndOfFollowingYear => NaiveDate::from_ymd_opt(earned.year() + 2, 1, 1),
        }
    }
}

/// One checked version of a programme's rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleVersion {
    /// First day it applies.
    pub effective_from: NaiveDate,
    /// Expiry of the points it grants.
    pub expiry: Expiry,
    /// Its rules, in file order.
    pub rules: Vec<Rule>,
    /// Its tiers.
    #[serde(default)]
    pub tiers: Option<super::tiers::Tiers>,
    /// The event that enrols its sender automatically.
    #[serde(default)]
    pub enrol_on: Option<String>,
}

/// A checked programme with all its versions, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Programme {
    /// Name and units.
    pub head: ProgrammeHead,
    /// Versions by `effective_from`, strictly increasing.
    pub versions: Vec<RuleVersion>,
}

fn error(place: String, version: Option<usize>, rule: Option<usize>, reason: impl Into<String>) -> ProgrammeError {
    ProgrammeError { place, version, rule, reason: reason.into() }
}

/// Factors and rates above these are refused as mistakes (a typo of a decimal point).
const MAX_RATE_UNITS: i128 = 1_000 * 10_000;
const MAX_FACTOR_UNITS: i128 = 100 * 10_000;

impl ProgrammeFile {
    /// Check the file and turn it into a programme.
    pub fn check(&self) -> Result<Programme, ProgrammeError> {
        let head = &self.programme;
        let at_head = |reason: String| error("programme".into(), None, None, reason);
        if head.key.is_empty()
            || head.key.len() > 40
            || !head.key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(at_head(format!(
                "key `{}` must be 1 to 40 lower-case letters, digits or dashes (it is used in URLs)",
                head.key
            )));
        }
        if head.name.trim().is_empty() {
            return Err(at_head("name must not be empty".into()));
        }
        if head.unit.trim().is_empty() {
            return Err(at_head("unit must not be empty (for example \"points\")".into()));
        }
        if !(0..=1_000_000).contains(&head.point_value_minor) {
            return Err(at_head(format!(
                "point_value_minor must be between 0 and 1000000 minor units, got {}",
                head.point_value_minor
            )));
        }
        if head.currency.len() != 3 || !head.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(at_head(format!("currency `{}` must be an ISO 4217 code such as EUR", head.currency)));
        }
        if self.version.is_empty() {
            return Err(at_head("the programme needs at least one [[version]] with its rules".into()));
        }
        let mut versions = Vec::with_capacity(self.version.len());
        for (v, file) in self.version.iter().enumerate() {
            versions.push(file.check(v)?);
        }
        for (v, pair) in versions.windows(2).enumerate() {
            if pair[1].effective_from <= pair[0].effective_from {
                return Err(error(
                    format!("version {}", v + 2),
                    Some(v + 1),
                    None,
                    format!(
                        "effective_from {} must come after the previous version's {} (list versions oldest first)",
                        pair[1].effective_from, pair[0].effective_from
                    ),
                ));
            }
        }
        Ok(Programme { head: head.clone(), versions })
    }
}

impl VersionFile {
    fn check(&self, v: usize) -> Result<RuleVersion, ProgrammeError> {
        let place = format!("version {}", v + 1);
        let effective_from = NaiveDate::parse_from_str(self.effective_from.trim(), "%Y-%m-%d").map_err(|_| {
            error(
                place.clone(),
                Some(v),
                None,
                format!("effective_from `{}` must be a date written YYYY-MM-DD", self.effective_from),
            )
        })?;
        let expiry = match (self.expiry.months, self.expiry.end_of_following_year) {
            (None, None | Some(false)) => Expiry::Never,
            (Some(months), None | Some(false)) if (1..=120).contains(&months) => Expiry::Months(months),
            (Some(months), None | Some(false)) => {
                return Err(error(place, Some(v), None, format!("expiry months must be 1 to 120, got {months}")))
            }
            (None, Some(true)) => Expiry::EndOfFollowingYear,
            (Some(_), Some(true)) => {
                return Err(error(
                    place,
                    Some(v),
                    None,
                    "expiry takes either months or end_of_following_year, not both",
                ))
            }
        };
        let mut ids = HashSet::new();
        let mut rules = Vec::with_capacity(self.rule.len());
        for (r, file) in self.rule.iter().enumerate() {
            let rule = file.check(v, r)?;
            if !ids.insert(rule.id.clone()) {
                return Err(error(
                    format!("{place}, rule \"{}\"", rule.id),
                    Some(v),
                    Some(r),
                    "another rule of this version has the same id; ids must be unique",
                ));
            }
            rules.push(rule);
        }
        let spend_rules = rules.iter().filter(|r| matches!(r.kind, RuleKind::Spend { .. })).count();
        if spend_rules > 1 {
            return Err(error(
                place,
                Some(v),
                None,
                "a version has at most one spend rule (two would pay the same euro twice); use multipliers instead",
            ));
        }
        let tiers = match &self.tiers {
            None => None,
            Some(file) => Some(file.check().map_err(|reason| error(format!("{place}, tiers"), Some(v), None, reason))?),
        };
        for (r, rule) in rules.iter().enumerate() {
            if let RuleKind::Spend { multipliers, .. } = &rule.kind {
                for m in multipliers {
                    if let Condition::Tier(id) = &m.when {
                        if tiers.as_ref().and_then(|t| t.level(id)).is_none() {
                            return Err(error(
                                format!("{place}, rule \"{}\"", rule.id),
                                Some(v),
                                Some(r),
                                format!("the multiplier names tier `{id}`, which this version does not define"),
                            ));
                        }
                    }
                }
            }
        }
        let enrol_on = match &self.enrol_on {
            Some(event) if event.trim().is_empty() || event.len() > 200 => {
                return Err(error(place, Some(v), None, "enrol_on must name an event, 1 to 200 characters"))
            }
            other => other.clone(),
        };
        Ok(RuleVersion { effective_from, expiry, rules, tiers, enrol_on })
    }
}

impl RuleFile {
    fn check(&self, v: usize, r: usize) -> Result<Rule, ProgrammeError> {
        let place = format!("version {}, rule \"{}\"", v + 1, self.id);
        let fail = |reason: String| error(place.clone(), Some(v), Some(r), reason);
        if self.id.trim().is_empty() || self.id.len() > 60 {
            return Err(fail("id must be 1 to 60 characters".into()));
        }
        let unexpected = |field: &str, present: bool| -> Result<(), ProgrammeError> {
            if present {
                Err(fail(format!("`{field}` does not apply to a rule of kind `{}`", self.kind)))
            } else {
                Ok(())
            }
        };
        let points = |value: Option<i64>| -> Result<Points, ProgrammeError> {
            match value {
                Some(p) if (1..=1_000_000).contains(&p) => Ok(p),
                Some(p) => Err(fail(format!("points must be 1 to 1000000, got {p}"))),
                None => Err(fail(format!("a rule of kind `{}` needs `points`", self.kind))),
            }
        };
        let kind = match self.kind.as_str() {
            "spend" => {
                unexpected("event", self.event.is_some())?;
                unexpected("points", self.points.is_some())?;
                let text = self
                    .points_per_euro
                    .as_deref()
                    .ok_or_else(|| fail("a spend rule needs `points_per_euro`".into()))?;
                let rate = Decimal::parse(text)
                    .filter(|d| d.units > 0 && d.scaled() <= MAX_RATE_UNITS)
                    .ok_or_else(|| fail(format!("points_per_euro `{text}` must be a decimal above 0 and at most 1000, like \"1\" or \"1.5\"")))?;
                let rounding = match self.rounding.as_deref() {
                    None => Rounding::Down,
                    Some(text) => Rounding::parse(text)
                        .ok_or_else(|| fail(format!("rounding `{text}` must be down, nearest or up")))?,
                };
                let mut multipliers = Vec::with_capacity(self.multiplier.len());
                for m in &self.multiplier {
                    let when = match (&m.category, &m.store, &m.channel, &m.tier) {
                        (Some(c), None, None, None) => Condition::Category(c.clone()),
                        (None, Some(s), None, None) => Condition::Store(s.clone()),
                        (None, None, Some(c), None) => Condition::Channel(c.clone()),
                        (None, None, None, Some(t)) => Condition::Tier(t.clone()),
                        _ => {
                            return Err(fail(
                                "a multiplier names exactly one of category, store, channel or tier".into(),
                            ))
                        }
                    };
                    let factor = Decimal::parse(&m.factor)
                        .filter(|d| d.units > 0 && d.scaled() <= MAX_FACTOR_UNITS)
                        .ok_or_else(|| {
                            fail(format!("factor `{}` must be a decimal above 0 and at most 100", m.factor))
                        })?;
                    if multipliers.iter().any(|x: &Multiplier| x.when == when) {
                        return Err(fail(format!(
                            "two multipliers for the same {when:?} contradict each other; keep one"
                        )));
                    }
                    multipliers.push(Multiplier { when, factor });
                }
                RuleKind::Spend { rate, rounding, multipliers }
            }
            "event" => {
                unexpected("points_per_euro", self.points_per_euro.is_some())?;
                unexpected("multiplier", !self.multiplier.is_empty())?;
                let event = self.event.clone().filter(|e| !e.trim().is_empty()).ok_or_else(|| {
                    fail("an event rule needs `event`, the event name that earns (\"Review Submitted\")".into())
                })?;
                if event == crate::message::events::ORDER_COMPLETED || event == crate::message::events::ORDER_REFUNDED {
                    return Err(fail(format!(
                        "`{event}` is judged by spend and first_purchase rules, not by an event rule"
                    )));
                }
                RuleKind::Event { event, points: points(self.points)? }
            }
            "first_purchase" => {
                unexpected("points_per_euro", self.points_per_euro.is_some())?;
                unexpected("multiplier", !self.multiplier.is_empty())?;
                unexpected("event", self.event.is_some())?;
                RuleKind::FirstPurchase { points: points(self.points)? }
            }
            "birthday" => {
                unexpected("points_per_euro", self.points_per_euro.is_some())?;
                unexpected("multiplier", !self.multiplier.is_empty())?;
                unexpected("event", self.event.is_some())?;
                RuleKind::Birthday { points: points(self.points)? }
            }
            "draw" => {
                let event = self.named_event(&fail)?;
                let text = self.odds.as_deref().ok_or_else(|| fail("a draw needs `odds`, like \"1/20\"".into()))?;
                let odds = text
                    .split_once('/')
                    .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)))
                    .filter(|(a, b)| *a >= 1 && a < b && *b <= 1_000_000)
                    .ok_or_else(|| fail(format!("odds `{text}` must be a fraction below one, like \"1/20\"")))?;
                let points = points(self.points)?;
                let budget = self
                    .budget
                    .ok_or_else(|| fail("a draw needs a `budget`: the most points it may give in all".into()))?;
                if budget < points {
                    return Err(fail(format!("budget {budget} cannot pay even one win of {points} points")));
                }
                RuleKind::Draw { event, odds, points, budget }
            }
            "challenge" => {
                let event = self.named_event(&fail)?;
                let count = self
                    .count
                    .filter(|c| (1..=1_000).contains(c))
                    .ok_or_else(|| fail("a challenge needs `count`, 1 to 1000".into()))?;
                RuleKind::Challenge {
                    event,
                    distinct: self.distinct.clone(),
                    count,
                    per: self.period(&fail)?,
                    points: points(self.points)?,
                    badge: self.badge_id(&fail)?,
                }
            }
            "streak" => {
                let event = self.named_event(&fail)?;
                let length = self
                    .length
                    .filter(|l| (2..=520).contains(l))
                    .ok_or_else(|| fail("a streak needs `length`, 2 to 520 periods".into()))?;
                RuleKind::Streak {
                    event,
                    per: self.period(&fail)?,
                    length,
                    points: points(self.points)?,
                    badge: self.badge_id(&fail)?,
                }
            }
            other => {
                return Err(fail(format!(
                    "kind `{other}` is not one of spend, event, first_purchase, birthday, draw, challenge, streak"
                )))
            }
        };
        let allowed: &[&str] = match kind {
            RuleKind::Draw { .. } => &["odds", "budget"],
            RuleKind::Challenge { .. } => &["distinct", "count", "per", "badge"],
            RuleKind::Streak { .. } => &["per", "length", "badge"],
            _ => &[],
        };
        for (field, present) in [
            ("odds", self.odds.is_some()),
            ("budget", self.budget.is_some()),
            ("distinct", self.distinct.is_some()),
            ("count", self.count.is_some()),
            ("per", self.per.is_some()),
            ("length", self.length.is_some()),
            ("badge", self.badge.is_some()),
        ] {
            if present && !allowed.contains(&field) {
                return Err(fail(format!("`{field}` does not apply to a rule of kind `{}`", self.kind)));
            }
        }
        if self.cap.is_some() && kind.game_event().is_some() {
            return Err(fail("a draw, challenge or streak has no cap (a draw has its budget)".into()));
        }
        if self.rounding.is_some() && !matches!(kind, RuleKind::Spend { .. }) {
            return Err(fail("`rounding` applies to spend rules only".into()));
        }
        let cap = match &self.cap {
            None => None,
            Some(cap) => {
                let per = CapPeriod::parse(&cap.per)
                    .ok_or_else(|| fail(format!("cap per `{}` must be day or month", cap.per)))?;
                if !(1..=1_000_000_000).contains(&cap.points) {
                    return Err(fail(format!("cap points must be at least 1, got {}", cap.points)));
                }
                Some(Cap { per, points: cap.points })
            }
        };
        Ok(Rule { id: self.id.clone(), kind, cap })
    }
}

impl RuleFile {
    fn named_event(&self, fail: &dyn Fn(String) -> ProgrammeError) -> Result<String, ProgrammeError> {
        self.event
            .clone()
            .filter(|e| !e.trim().is_empty())
            .ok_or_else(|| fail(format!("a rule of kind `{}` needs `event`, the event name it listens to", self.kind)))
    }

    fn period(&self, fail: &dyn Fn(String) -> ProgrammeError) -> Result<Period, ProgrammeError> {
        let text = self.per.as_deref().ok_or_else(|| fail(format!("a {} needs `per`: week or month", self.kind)))?;
        Period::parse(text).ok_or_else(|| fail(format!("per `{text}` must be week or month")))
    }

    fn badge_id(&self, fail: &dyn Fn(String) -> ProgrammeError) -> Result<Option<String>, ProgrammeError> {
        match &self.badge {
            Some(b)
                if b.is_empty()
                    || b.len() > 40
                    || !b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-') =>
            {
                Err(fail(format!("badge `{b}` must be 1 to 40 lower-case letters, digits or dashes")))
            }
            other => Ok(other.clone()),
        }
    }
}

impl Programme {
    /// The version in force on `day`, if the programme had started.
    pub fn version_at(&self, day: NaiveDate) -> Option<&RuleVersion> {
        self.versions.iter().rev().find(|v| v.effective_from <= day)
    }

    /// Whether replacing `self` (in force) by `next` keeps what was earned
    /// right: versions that may already have judged events (starting on or
    /// before `today`) must stay as they are, and changes start after today.
    pub fn check_change(&self, next: &Programme, today: NaiveDate) -> Result<(), ProgrammeError> {
        for (v, old) in self.versions.iter().enumerate().filter(|(_, v)| v.effective_from <= today) {
            if next.versions.get(v) != Some(old) {
                return Err(error(
                    format!("version {}", v + 1),
                    Some(v),
                    None,
                    format!(
                        "the version in force from {} has already judged events and cannot change; add a new \
                         [[version]] with effective_from after {today} instead",
                        old.effective_from
                    ),
                ));
            }
        }
        let kept = self.versions.iter().filter(|v| v.effective_from <= today).count();
        if let Some((v, new)) = next.versions.iter().enumerate().skip(kept).find(|(_, v)| v.effective_from <= today) {
            return Err(error(
                format!("version {}", v + 1),
                Some(v),
                None,
                format!(
                    "a new version cannot start on {} (today or earlier: events of that day were already judged); \
                     start it after {today}",
                    new.effective_from
                ),
            ));
        }
        if next.head.key != self.head.key {
            return Err(error("programme".into(), None, None, "the key of a programme never changes"));
        }
        if next.head.currency != self.head.currency {
            return Err(error("programme".into(), None, None, "the currency of a programme never changes"));
        }
        Ok(())
    }
}

/// One order line: its category and amount in minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    /// Product category.
    pub category: Option<String>,
    /// Price times quantity, in minor units.
    pub amount_minor: i64,
}

/// The order lines of an `Order Completed` (`properties.products`, Segment's
/// e-commerce spec: `price` per unit in major units, `quantity` default 1).
pub fn order_lines(properties: &Map<String, Value>, currency: &str) -> Vec<OrderLine> {
    let Some(products) = properties.get("products").and_then(Value::as_array) else {
        return Vec::new();
    };
    products
        .iter()
        .filter_map(|p| {
            let price = p.get("price").and_then(Value::as_f64)?;
            let quantity = p.get("quantity").and_then(Value::as_f64).unwrap_or(1.0);
            let money = crate::money::Money::from_major(price * quantity, currency)?;
            Some(OrderLine {
                category: p.get("category").and_then(Value::as_str).map(str::to_string),
                amount_minor: money.minor.max(0),
            })
        })
        .collect()
}

/// An order as the rules see it.
#[derive(Debug, Clone)]
pub struct OrderInput<'a> {
    /// The order's id.
    pub order_id: Option<&'a str>,
    /// Its total in minor units.
    pub amount_minor: i64,
    /// Its currency.
    pub currency: &'a str,
    /// Its lines (for category multipliers).
    pub lines: Vec<OrderLine>,
}

/// An event as the rules see it.
#[derive(Debug, Clone)]
pub struct EarnInput<'a> {
    /// The track event's name.
    pub event: &'a str,
    /// The event's day in the organisation's calendar.
    pub day: NaiveDate,
    /// Touchpoint (`web`, `store`…).
    pub channel: &'a str,
    /// Store, when given.
    pub store: Option<&'a str>,
    /// The order, for `Order Completed`.
    pub order: Option<OrderInput<'a>>,
    /// First-purchase rules (by id) that already paid this member.
    pub first_purchase_done: &'a [String],
    /// The member's tier when the event happened.
    pub tier: Option<&'a str>,
    /// The member's birth date, when the profile gives it.
    pub birthday: Option<NaiveDate>,
}

/// What one rule grants for one event, before its cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Earning {
    /// The rule's id.
    pub rule: String,
    /// Points before the cap.
    pub points: Points,
    /// The rule's cap.
    pub cap: Option<Cap>,
    /// Why, for the statement.
    pub reason: ReasonKind,
}

impl RuleVersion {
    /// What `input` earns under this version, rule by rule, before caps.
    pub fn earn(&self, input: &EarnInput<'_>, currency: &str) -> Vec<Earning> {
        let mut earnings = Vec::new();
        for rule in &self.rules {
            let granted = match (&rule.kind, &input.order) {
                (RuleKind::Spend { rate, rounding, multipliers }, Some(order)) if order.currency == currency => {
                    spend_points(*rate, *rounding, multipliers, order, input).map(|points| {
                        (
                            points,
                            ReasonKind::Spend {
                                rate: rate.text(),
                                amount_minor: order.amount_minor,
                                currency: order.currency.to_string(),
                                order_id: order.order_id.map(str::to_string),
                                store: input.store.map(str::to_string),
                                capped: false,
                            },
                        )
                    })
                }
                (RuleKind::FirstPurchase { points }, Some(_)) if !input.first_purchase_done.contains(&rule.id) => {
                    Some((
                        *points,
                        ReasonKind::FirstPurchase {
                            order_id: input.order.as_ref().and_then(|o| o.order_id.map(str::to_string)),
                        },
                    ))
                }
                (RuleKind::Event { event, points }, None) if event == input.event => {
                    Some((*points, ReasonKind::Event { event: event.clone(), capped: false }))
                }
                (RuleKind::Birthday { points }, _) if input.birthday.is_some_and(|b| is_birthday(b, input.day)) => {
                    Some((*points, ReasonKind::Birthday))
                }
                _ => None,
            };
            if let Some((points, reason)) = granted.filter(|(p, _)| *p > 0) {
                earnings.push(Earning { rule: rule.id.clone(), points, cap: rule.cap, reason });
            }
        }
        earnings
    }
}

/// Whether `day` is the birthday of someone born on `born` (29 February
/// falls on 28 February in other years).
pub fn is_birthday(born: NaiveDate, day: NaiveDate) -> bool {
    let leap = |y: i32| NaiveDate::from_ymd_opt(y, 2, 29).is_some();
    match (born.month(), born.day()) {
        (2, 29) if !leap(day.year()) => day.month() == 2 && day.day() == 28,
        (m, d) => day.month() == m && day.day() == d,
    }
}

/// A birth date as profiles send it (`birthday`, ISO 8601, `1990-04-12` or
/// an instant whose date is taken).
pub fn birth_date(profile: &Map<String, Value>) -> Option<NaiveDate> {
    ["birthday", "birth_date", "birthdate", "date_of_birth"]
        .iter()
        .find_map(|k| profile.get(*k).and_then(Value::as_str))
        .and_then(|text| text.get(..10))
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
}

/// Points of a spend rule: (total + category extras) × rate × order-level
/// factors, in exact integers, rounded once. `None` when the amount is absurd
/// enough to overflow.
fn spend_points(
    rate: Decimal,
    rounding: Rounding,
    multipliers: &[Multiplier],
    order: &OrderInput<'_>,
    input: &EarnInput<'_>,
) -> Option<Points> {
    let one = 10i128.pow(SCALE);
    // The basis in minor units × 10^4: every line of a category with a
    // multiplier adds (factor − 1) × its amount to the order's total.
    let mut basis = i128::from(order.amount_minor.max(0)).checked_mul(one)?;
    for line in &order.lines {
        let factor = multipliers
            .iter()
            .filter(|m| matches!(&m.when, Condition::Category(c) if line.category.as_deref() == Some(c.as_str())))
            .map(|m| m.factor.scaled())
            .fold(one, |acc, f| acc * f / one);
        basis = basis.checked_add(i128::from(line.amount_minor).checked_mul(factor - one)?)?;
    }
    let mut numerator = basis.max(0).checked_mul(rate.scaled())?;
    let mut denominator = one * one * 10i128.pow(crate::money::currency_exponent(order.currency));
    for m in multipliers {
        let applies = match &m.when {
            Condition::Store(s) => input.store == Some(s.as_str()),
            Condition::Channel(c) => input.channel == c,
            Condition::Tier(t) => input.tier == Some(t.as_str()),
            Condition::Category(_) => false,
        };
        if applies {
            numerator = numerator.checked_mul(m.factor.scaled())?;
            denominator = denominator.checked_mul(one)?;
        }
    }
    let whole = match rounding {
        Rounding::Down => numerator / denominator,
        Rounding::Nearest => (numerator + denominator / 2) / denominator,
        Rounding::Up => (numerator + denominator - 1) / denominator,
    };
    Points::try_from(whole).ok().filter(|p| *p <= super::MAX_POINTS)
}

/// How much of a cap is left: the points a capped earning may still grant.
pub fn within_cap(wanted: Points, cap: Option<Cap>, used: Points) -> Points {
    match cap {
        None => wanted,
        Some(cap) => wanted.min((cap.points - used).max(0)),
    }
}

/// Points an `Order Refunded` takes back: the share of the order's points
/// matching the share of its amount refunded so far, minus what earlier
/// refunds took. Cumulative, so partial refunds never take back more than the
/// order earned, whatever their number.
pub fn refund_reversal(earned: Points, order_minor: i64, refunded_before: i64, refunded_now: i64) -> Points {
    if earned <= 0 || order_minor <= 0 {
        return 0;
    }
    let share = |refunded: i64| -> i128 {
        let refunded = i128::from(refunded.clamp(0, order_minor));
        i128::from(earned) * refunded / i128::from(order_minor)
    };
    let total = share(refunded_before.saturating_add(refunded_now.max(0)));
    (total - share(refunded_before)).max(0) as Points
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(rules: &str) -> ProgrammeFile {
        let text = format!(
            r#"{{"programme": {{"key": "club", "name": "Club", "point_value_minor": 1}},
                "version": [{{"effective_from": "2026-01-01", "expiry": {{"months": 12}}, "rule": [{rules}]}}]}}"#
        );
        serde_json::from_str(&text).unwrap()
    }

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn order(amount: i64, lines: Vec<(&str, i64)>) -> OrderInput<'static> {
        OrderInput {
            order_id: Some("o-1"),
            amount_minor: amount,
            currency: "EUR",
            lines: lines.into_iter().map(|(c, a)| OrderLine { category: Some(c.into()), amount_minor: a }).collect(),
        }
    }

    fn earn(programme: &Programme, event: &str, store: Option<&str>, order: Option<OrderInput<'_>>) -> Vec<Earning> {
        let input = EarnInput {
            event,
            day: day("2026-03-03"),
            channel: "store",
            store,
            order,
            first_purchase_done: &[],
            tier: None,
            birthday: None,
        };
        programme.version_at(input.day).unwrap().earn(&input, "EUR")
    }

    #[test]
    fn spend_rules_pay_exactly_with_the_stated_rounding() {
        let down = file(r#"{"id": "spend", "kind": "spend", "points_per_euro": "1.5"}"#).check().unwrap();
        assert_eq!(earn(&down, "Order Completed", None, Some(order(4_299, vec![])))[0].points, 64); // 64.485
        let nearest = file(r#"{"id": "spend", "kind": "spend", "points_per_euro": "1.5", "rounding": "nearest"}"#)
            .check()
            .unwrap();
        assert_eq!(earn(&nearest, "Order Completed", None, Some(order(4_300, vec![])))[0].points, 65); // 64.5
        let up = file(r#"{"id": "spend", "kind": "spend", "points_per_euro": "1", "rounding": "up"}"#).check().unwrap();
        assert_eq!(earn(&up, "Order Completed", None, Some(order(4_201, vec![])))[0].points, 43);
    }

    #[test]
    fn category_multipliers_apply_to_their_lines_and_store_multipliers_to_the_order() {
        let programme = file(
            r#"{"id": "spend", "kind": "spend", "points_per_euro": "1",
                "multiplier": [{"category": "Beauté", "factor": "2"}, {"store": "lyon-part-dieu", "factor": "1.5"}]}"#,
        )
        .check()
        .unwrap();
        // 100 € total, of which 30 € of beauty products: 100 + 30 = 130 points.
        let basket = || Some(order(10_000, vec![("Beauté", 3_000), ("Maison", 7_000)]));
        assert_eq!(earn(&programme, "Order Completed", Some("nantes"), basket())[0].points, 130);
        // At Lyon Part-Dieu, × 1.5: 195.
        assert_eq!(earn(&programme, "Order Completed", Some("lyon-part-dieu"), basket())[0].points, 195);
    }

    #[test]
    fn event_rules_and_the_first_purchase_bonus() {
        let programme = file(
            r#"{"id": "review", "kind": "event", "event": "Review Submitted", "points": 20, "cap": {"per": "month", "points": 40}},
               {"id": "welcome", "kind": "first_purchase", "points": 100}"#,
        )
        .check()
        .unwrap();
        let review = earn(&programme, "Review Submitted", None, None);
        assert_eq!(review.len(), 1);
        assert_eq!((review[0].rule.as_str(), review[0].points), ("review", 20));
        assert_eq!(review[0].cap, Some(Cap { per: CapPeriod::Month, points: 40 }));
        let first = earn(&programme, "Order Completed", None, Some(order(1_000, vec![])));
        assert_eq!((first[0].rule.as_str(), first[0].points), ("welcome", 100));
        let done = ["welcome".to_string()];
        let input = EarnInput {
            event: "Order Completed",
            day: day("2026-03-03"),
            channel: "web",
            store: None,
            order: Some(order(1_000, vec![])),
            first_purchase_done: &done,
            tier: None,
            birthday: None,
        };
        assert!(programme.versions[0].earn(&input, "EUR").is_empty());
        assert!(earn(&programme, "Page Viewed", None, None).is_empty());
    }

    #[test]
    fn caps_and_refunds_never_give_or_take_too_much() {
        let cap = Some(Cap { per: CapPeriod::Day, points: 50 });
        assert_eq!(within_cap(20, cap, 40), 10);
        assert_eq!(within_cap(20, cap, 60), 0);
        assert_eq!(within_cap(20, None, 1_000), 20);
        // An order of 100 € earned 99 points; refunds of 30 € then 30 € then 60 €.
        let first = refund_reversal(99, 10_000, 0, 3_000);
        let second = refund_reversal(99, 10_000, 3_000, 3_000);
        let third = refund_reversal(99, 10_000, 6_000, 6_000);
        assert_eq!((first, second, third), (29, 30, 40));
        assert_eq!(first + second + third, 99);
        assert_eq!(refund_reversal(99, 10_000, 10_000, 500), 0);
    }

    #[test]
    fn versions_apply_from_their_day_and_past_versions_never_change() {
        let mut two = file(r#"{"id": "spend", "kind": "spend", "points_per_euro": "1"}"#);
        let mut later = two.version[0].clone();
        later.effective_from = "2026-06-01".into();
        later.rule[0].points_per_euro = Some("2".into());
        two.version.push(later);
        let programme = two.check().unwrap();
        assert_eq!(programme.version_at(day("2025-12-31")), None);
        assert_eq!(programme.version_at(day("2026-05-31")).unwrap().effective_from, day("2026-01-01"));
        assert_eq!(programme.version_at(day("2026-06-01")).unwrap().effective_from, day("2026-06-01"));

        let one = file(r#"{"id": "spend", "kind": "spend", "points_per_euro": "1"}"#).check().unwrap();
        assert!(one.check_change(&programme, day("2026-05-20")).is_ok());
        let refused = one.check_change(&programme, day("2026-06-01")).unwrap_err();
        assert!(refused.reason.contains("start it after 2026-06-01"), "{refused}");
        let mut edited = one.clone();
        edited.versions[0].rules.clear();
        assert!(one.check_change(&edited, day("2026-05-20")).unwrap_err().reason.contains("cannot change"));
    }

    #[test]
    fn contradictory_or_absurd_rules_are_refused_with_their_place() {
        let cases = [
            (r#"{"id": "a", "kind": "spend", "points_per_euro": "-1"}"#, "points_per_euro"),
            (
                r#"{"id": "a", "kind": "spend", "points_per_euro": "1"}, {"id": "b", "kind": "spend", "points_per_euro": "2"}"#,
                "at most one spend rule",
            ),
            (
                r#"{"id": "a", "kind": "event", "event": "Review Submitted", "points": 5}, {"id": "a", "kind": "first_purchase", "points": 5}"#,
                "same id",
            ),
            (r#"{"id": "a", "kind": "event", "points": 5}"#, "needs `event`"),
            (
                r#"{"id": "a", "kind": "spend", "points_per_euro": "1", "multiplier": [{"store": "x", "factor": "2"}, {"store": "x", "factor": "3"}]}"#,
                "contradict",
            ),
            (r#"{"id": "a", "kind": "bonus", "points": 5}"#, "is not one of"),
            (r#"{"id": "a", "kind": "event", "event": "Order Completed", "points": 5}"#, "judged by spend"),
            (
                r#"{"id": "a", "kind": "first_purchase", "points": 5, "cap": {"per": "week", "points": 5}}"#,
                "day or month",
            ),
        ];
        for (rules, expected) in cases {
            let err = file(rules).check().unwrap_err();
            assert!(err.to_string().contains(expected), "{rules}: {err}");
            assert_eq!(err.version, Some(0), "{rules}");
        }
    }

    #[test]
    fn birthdays_fall_on_their_day_and_leap_days_on_the_28th() {
        assert!(is_birthday(day("1990-04-12"), day("2026-04-12")));
        assert!(!is_birthday(day("1990-04-12"), day("2026-04-13")));
        assert!(is_birthday(day("2000-02-29"), day("2026-02-28")));
        assert!(is_birthday(day("2000-02-29"), day("2028-02-29")));
        assert!(!is_birthday(day("2000-02-29"), day("2028-02-28")));
        let profile: Map<String, Value> = serde_json::from_str(r#"{"birthday": "1990-04-12T00:00:00Z"}"#).unwrap();
        assert_eq!(birth_date(&profile), Some(day("1990-04-12")));
    }

    #[test]
    fn expiry_dates() {
        assert_eq!(Expiry::Months(12).expires_on(day("2026-03-31")), Some(day("2027-03-31")));
        assert_eq!(Expiry::Months(1).expires_on(day("2026-01-31")), Some(day("2026-02-28")));
        assert_eq!(Expiry::EndOfFollowingYear.expires_on(day("2026-03-03")), Some(day("2028-01-01")));
        assert_eq!(Expiry::Never.expires_on(day("2026-03-03")), None);
        assert_eq!(Decimal::parse("1.50").unwrap().text(), "1.5");
        assert_eq!(Decimal::parse("2").unwrap().text(), "2");
        assert!(Decimal::parse("1.23456").is_none());
        assert!(Decimal::parse(".5").is_none());
    }
}
