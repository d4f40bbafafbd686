//! Roles shared by API keys and back-office users, and what each may do.

use serde::{Deserialize, Serialize};

/// A role (DESIGN.md decision 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including keys and users.
    Admin,
    /// Data-protection officer: customer data, audit, rights requests.
    Dpo,
    /// Marketing team: customers, segments, campaigns.
    Marketing,
    /// Analysts: aggregated analytics and customer reads.
    Analyst,
    /// Contact-centre and social-care agents: the customer 360.
    Agent,
    /// Store staff and tills: identify members at the till, send store events.
    Store,
    /// Touchpoints sending events, nothing else.
    Ingest,
}

/// An action guarded by a role check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Send tracking messages and import files.
    IngestEvents,
    /// Read customer profiles, identifiers and timelines.
    ReadCustomers,
    /// Merge and unmerge profiles.
    ManageIdentity,
    /// Read service metrics.
    ReadMetrics,
    /// Create and revoke API keys.
    ManageKeys,
    /// See and drive the outbox of side effects (e-mails hold personal data).
    ManageOutbox,
    /// Carry out data-subject rights (access export, erasure).
    ManagePrivacy,
    /// Record consents and send double opt-in requests.
    ManageConsent,
    /// Read loyalty memberships, statements and programmes.
    ReadLoyalty,
    /// Enrol members and debit points (tills, the call centre).
    OperateLoyalty,
    /// Define programmes, run expiry, check the ledger.
    ManageLoyalty,
    /// Credit or debit points by hand, with a reason (the team, the call centre).
    AdjustPoints,
    /// Run analytics over the whole customer base (lifetime value, RFM).
    RunAnalytics,
    /// See saved segments, their sizes and members.
    ReadSegments,
    /// Write, preview, delete and refresh segments.
    ManageSegments,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 7] =
        [Role::Admin, Role::Dpo, Role::Marketing, Role::Analyst, Role::Agent, Role::Store, Role::Ingest];

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Dpo => "dpo",
            Role::Marketing => "marketing",
            Role::Analyst => "analyst",
            Role::Agent => "agent",
            Role::Store => "store",
            Role::Ingest => "ingest",
        }
    }

    /// Parse a role name.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Whether this role may perform `permission`; the single permission matrix.
    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        use Role::*;
        match permission {
            IngestEvents => matches!(self, Admin | Ingest | Store),
            ReadCustomers => matches!(self, Admin | Dpo | Marketing | Analyst | Agent | Store),
            ManageIdentity => matches!(self, Admin | Dpo | Agent),
            ReadMetrics => matches!(self, Admin | Analyst),
            ManageKeys | ManageOutbox => matches!(self, Admin),
            ManagePrivacy => matches!(self, Admin | Dpo),
            ManageConsent => matches!(self, Admin | Dpo | Marketing | Agent | Store),
            ReadLoyalty => matches!(self, Admin | Dpo | Marketing | Analyst | Agent | Store),
            OperateLoyalty => matches!(self, Admin | Agent | Store),
            ManageLoyalty => matches!(self, Admin | Marketing),
            AdjustPoints => matches!(self, Admin | Marketing | Agent),
            RunAnalytics | ManageSegments => matches!(self, Admin | Marketing | Analyst),
            ReadSegments => matches!(self, Admin | Dpo | Marketing | Analyst),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_keys_can_only_send_events() {
        assert!(Role::Ingest.allows(Permission::IngestEvents));
        assert!(!Role::Ingest.allows(Permission::ReadCustomers));
        assert!(!Role::Ingest.allows(Permission::ManageKeys));
    }

    #[test]
    fn every_role_name_parses_back() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
