//! Data-subject rights requests and their legal deadline: one month from
//! receipt (GDPR article 12(3)), counted in calendar months in the
//! organisation's time zone.

use chrono::{DateTime, Months, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// The right a person exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RightKind {
    /// A copy of their data.
    Access,
    /// Their data in a reusable form.
    Portability,
    /// Correcting their data.
    Rectification,
    /// Erasing them.
    Erasure,
    /// Keeping their data but no longer processing it.
    Restriction,
    /// Objecting to profiling.
    Objection,
}

impl RightKind {
    /// Every right.
    pub const ALL: [RightKind; 6] = [
        RightKind::Access,
        RightKind::Portability,
        RightKind::Rectification,
        RightKind::Erasure,
        RightKind::Restriction,
        RightKind::Objection,
    ];
}

names!(RightKind {
    Access => "access",
    Portability => "portability",
    Rectification => "rectification",
    Erasure => "erasure",
    Restriction => "restriction",
    Objection => "objection",
});

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Received, not answered yet.
    Open,
    /// Carried out.
    Done,
    /// Refused, with a reason.
    Refused,
}

names!(RequestStatus { Open => "open", Done => "done", Refused => "refused" });

/// The legal deadline of a request received at `received`: the same time one
/// calendar month later in the organisation's time zone (the last day of the
/// month when that day does not exist: 31 January gives 28 or 29 February).
pub fn due_date(received: DateTime<Utc>, zone: Tz) -> DateTime<Utc> {
    let local = received.with_timezone(&zone).naive_local();
    let due = local.checked_add_months(Months::new(1)).unwrap_or(local);
    zone.from_local_datetime(&due).earliest().map_or(received + chrono::Duration::days(31), |d| d.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_is_one_calendar_month_later() {
        let paris = chrono_tz::Europe::Paris;
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(due_date(at("2026-03-10T09:00:00Z"), paris), at("2026-04-10T08:00:00Z"), "summer time began");
        assert_eq!(due_date(at("2026-01-31T12:00:00Z"), paris), at("2026-02-28T12:00:00Z"));
        assert_eq!(RightKind::parse("erasure"), Some(RightKind::Erasure));
        assert_eq!(RequestStatus::parse("open"), Some(RequestStatus::Open));
    }
}
