//! Retention: each class's period, enforced by a scheduled purge.
//!
//! Personal data is kept while the person is active: a profile that received
//! nothing for the personal class's period is erased (as on request: keys
//! destroyed, events kept de-identified). Sensitive and financial values are
//! kept for their period from the event's date: older events lose them. What
//! was purged is counted in the audit log.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use relais_domain::privacy::DataClass;
use serde::Serialize;
use serde_json::json;

use crate::store::{Audit, Engine, StoreError};

/// Profiles erased per round, so a large first purge proceeds in steps.
const ROUND: usize = 500;

/// What a purge removed.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct RetentionReport {
    /// Profiles erased for inactivity (personal class).
    pub profiles_erased: usize,
    /// Events that lost a class's values, per class.
    pub events_purged: BTreeMap<&'static str, usize>,
}

/// Enforce every class's retention as of `now`.
pub fn run(engine: &dyn Engine, audit: &Audit<'_>, now: DateTime<Utc>) -> Result<RetentionReport, StoreError> {
    let classes = &engine.privacy().classes;
    let mut report = RetentionReport::default();
    for class in [DataClass::Sensitive, DataClass::Financial] {
        if let Some(days) = classes.policy(class).retention_days {
            let purged = engine.purge_class_from_events(class, now - Duration::days(i64::from(days)))?;
            report.events_purged.insert(class.as_str(), purged);
        }
    }
    if let Some(days) = classes.policy(DataClass::Personal).retention_days {
        let before = now - Duration::days(i64::from(days));
        loop {
            let inactive = engine.inactive_customers(before, ROUND)?;
            if inactive.is_empty() {
                break;
            }
            for customer in inactive {
                audit.record("relais", "retention.erase", Some(customer), json!({ "inactive_days": days }))?;
                super::rights::erase_person(engine, audit, customer)?;
                report.profiles_erased += 1;
            }
        }
    }
    audit.record("relais", "retention.purge", None, serde_json::to_value(&report).unwrap_or_default())?;
    Ok(report)
}
