//! The risk register: for each data class and each part of the application,
//! the impact of an incident and its likelihood give a risk level, which sets
//! the protections (who reads, encryption, masks, retention).

use serde::Serialize;

use crate::privacy::{ClassPolicy, DataClass};

/// How serious a risk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    /// Accept.
    Low,
    /// Limit access.
    Medium,
    /// Encrypt, mask, audit.
    High,
    /// Encrypt, restrict to named roles, audit every access.
    Critical,
}

/// Impact and likelihood, each from 1 to 4, and the level they give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Risk {
    /// Harm to people if the data leaks or is misused (1 to 4).
    pub impact: u8,
    /// How likely an incident is, given exposure and protections (1 to 4).
    pub likelihood: u8,
    /// The level.
    pub level: RiskLevel,
}

impl Risk {
    /// The level of `impact × likelihood`: up to 3 low, 6 medium, 9 high, beyond critical.
    pub fn new(impact: u8, likelihood: u8) -> Risk {
        let (impact, likelihood) = (impact.clamp(1, 4), likelihood.clamp(1, 4));
        let level = match impact * likelihood {
            0..=3 => RiskLevel::Low,
            4..=6 => RiskLevel::Medium,
            7..=9 => RiskLevel::High,
            _ => RiskLevel::Critical,
        };
        Risk { impact, likelihood, level }
    }
}

/// The harm a leak of a class does to people.
pub fn class_impact(class: DataClass) -> u8 {
    match class {
        DataClass::Public => 1,
        DataClass::Internal => 2,
        DataClass::Personal => 3,
        DataClass::Sensitive | DataClass::Financial => 4,
    }
}

/// A class's risk under its policy: the more roles read it in clear, the more
/// likely a misuse; encryption at rest takes one step off.
pub fn class_risk(class: DataClass, policy: &ClassPolicy) -> Risk {
    let exposure: u8 = match policy.readers.len() {
        0..=1 => 1,
        2..=3 => 2,
        4..=5 => 3,
        _ => 4,
    };
    Risk::new(class_impact(class), exposure.saturating_sub(u8::from(policy.encrypted)).max(1))
}

/// A part of the application, the classes it handles and how exposed it is.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Part {
    /// Name.
    pub name: &'static str,
    /// What it does with the data.
    pub description: &'static str,
    /// The classes it handles.
    pub classes: &'static [DataClass],
    /// Exposure, 1 (local only) to 4 (open to the internet).
    pub exposure: u8,
    /// The protections in place.
    pub protections: &'static str,
}

impl Part {
    /// The part's risk: the worst class it handles, at its exposure.
    pub fn risk(&self) -> Risk {
        Risk::new(self.classes.iter().map(|c| class_impact(*c)).max().unwrap_or(1), self.exposure)
    }
}

/// The parts of relais that handle customer data.
pub const PARTS: &[Part] = &[
    Part {
        name: "tracking API",
        description: "touchpoints send events (/v1/*)",
        classes: &[DataClass::Internal, DataClass::Personal, DataClass::Sensitive, DataClass::Financial],
        exposure: 4,
        protections:
            "ingest keys, size and rate limits, payment card numbers refused, personal fields sealed before storage",
    },
    Part {
        name: "customer 360 API",
        description: "profiles, identifiers and timelines for staff",
        classes: &[DataClass::Internal, DataClass::Personal, DataClass::Sensitive, DataClass::Financial],
        exposure: 3,
        protections: "role per route, masks by class, every read audited before the answer",
    },
    Part {
        name: "access exports and erasure",
        description: "a person's archive; erasure with key destruction",
        classes: &[DataClass::Personal, DataClass::Sensitive, DataClass::Financial],
        exposure: 2,
        protections: "data-protection officer and admin only, audited",
    },
    Part {
        name: "outbox e-mails",
        description: "messages to people: addresses, sign-in and consent links",
        classes: &[DataClass::Personal],
        exposure: 2,
        protections: "payloads sealed with the person's key, never logged, admin only",
    },
    Part {
        name: "consent links",
        description: "public confirm and unsubscribe pages",
        classes: &[DataClass::Internal],
        exposure: 4,
        protections: "signed links, single use, expiring; no data shown",
    },
    Part {
        name: "audit log",
        description: "who did what to whose data",
        classes: &[DataClass::Internal],
        exposure: 1,
        protections: "hash-chained with a key outside the database, heads kept outside",
    },
    Part {
        name: "database files, logs and backups",
        description: "everything at rest",
        classes: &[
            DataClass::Public,
            DataClass::Internal,
            DataClass::Personal,
            DataClass::Sensitive,
            DataClass::Financial,
        ],
        exposure: 2,
        protections:
            "encrypted classes sealed per person (AES-256-GCM), identifiers as keyed hashes, master key outside",
    },
    Part {
        name: "back office pages",
        description: "the customer room, search, the customer 360 and the other pages for staff",
        classes: &[DataClass::Internal, DataClass::Personal, DataClass::Sensitive, DataClass::Financial],
        exposure: 3,
        protections: "argon2id passwords, HttpOnly session cookies, CSRF tokens, same masks and audit as the API",
    },
    Part {
        name: "self-care portal",
        description: "members see, download and change their own data",
        classes: &[DataClass::Internal, DataClass::Personal, DataClass::Financial],
        exposure: 4,
        protections: "one-time codes by e-mail, limited attempts, a person sees only their own profile",
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::default_policy;

    #[test]
    fn levels_follow_impact_times_likelihood() {
        assert_eq!(Risk::new(1, 3).level, RiskLevel::Low);
        assert_eq!(Risk::new(2, 3).level, RiskLevel::Medium);
        assert_eq!(Risk::new(3, 3).level, RiskLevel::High);
        assert_eq!(Risk::new(4, 4).level, RiskLevel::Critical);
    }

    #[test]
    fn encryption_and_fewer_readers_lower_a_class_risk() {
        let personal = default_policy(DataClass::Personal);
        let clear = ClassPolicy { encrypted: false, ..personal.clone() };
        assert!(
            class_risk(DataClass::Personal, &personal).likelihood < class_risk(DataClass::Personal, &clear).likelihood
        );
        assert_eq!(class_risk(DataClass::Financial, &default_policy(DataClass::Financial)).level, RiskLevel::Medium);
        assert!(PARTS.iter().any(|p| p.risk().level == RiskLevel::Critical), "the internet-facing ingest is critical");
    }
}
