//! `relais security report`: the risk register — classes, their fields, who
//! reads them, encryption, masks, retention, risk levels, the parts of the
//! application, and every field seen in events that has no class yet.

use chrono::{DateTime, Utc};
use relais_domain::privacy::{DataClass, Mask};
use relais_domain::risk::{class_risk, Risk, PARTS};
use relais_domain::{IdentifierKind, Role};
use serde::Serialize;

use crate::store::{Engine, StoreError};

/// One data class in the register.
#[derive(Debug, Serialize)]
pub struct ClassEntry {
    /// The class.
    pub class: DataClass,
    /// Roles that read it in clear.
    pub readers: Vec<Role>,
    /// Encrypted at rest.
    pub encrypted: bool,
    /// Mask for other roles, lists, exports and logs.
    pub mask: Mask,
    /// Days kept after the person's last activity.
    pub retention_days: Option<u32>,
    /// Its risk under this policy.
    pub risk: Risk,
    /// The field paths mapped to it (unmapped paths are personal).
    pub fields: Vec<String>,
}

/// One part of the application in the register.
#[derive(Debug, Serialize)]
pub struct PartEntry {
    /// Name.
    pub name: &'static str,
    /// What it does.
    pub description: &'static str,
    /// Classes it handles.
    pub classes: &'static [DataClass],
    /// Its risk.
    pub risk: Risk,
    /// The protections in place.
    pub protections: &'static str,
}

/// The register.
#[derive(Debug, Serialize)]
pub struct SecurityReport {
    /// When it was made.
    pub generated_at: DateTime<Utc>,
    /// Per class.
    pub classes: Vec<ClassEntry>,
    /// Per part.
    pub parts: Vec<PartEntry>,
    /// Field paths seen in events that no mapping names (treated as personal
    /// until classified in `RELAIS_DATA_CLASSES`).
    pub unclassified_fields: Vec<String>,
}

/// The register for the classification and data in force.
pub fn security_report(engine: &dyn Engine) -> Result<SecurityReport, StoreError> {
    let classes = &engine.privacy().classes;
    let mappings = classes.mappings();
    let entries = DataClass::ALL
        .into_iter()
        .map(|class| {
            let policy = classes.policy(class);
            let mut fields: Vec<String> =
                mappings.iter().filter(|(_, c)| *c == class).map(|(path, _)| path.to_string()).collect();
            for kind in IdentifierKind::ALL {
                let path = format!("identifier.{}", kind.as_str());
                if classes.identifier_class(kind) == class && !fields.contains(&path) {
                    fields.push(path);
                }
            }
            fields.sort();
            ClassEntry {
                class,
                readers: policy.readers.clone(),
                encrypted: policy.encrypted,
                mask: policy.mask,
                retention_days: policy.retention_days,
                risk: class_risk(class, policy),
                fields,
            }
        })
        .collect();
    let parts = PARTS
        .iter()
        .map(|p| PartEntry {
            name: p.name,
            description: p.description,
            classes: p.classes,
            risk: p.risk(),
            protections: p.protections,
        })
        .collect();
    let unclassified_fields =
        engine.unclassified_fields()?.into_iter().filter(|path| !classes.is_mapped(path)).collect();
    Ok(SecurityReport { generated_at: Utc::now(), classes: entries, parts, unclassified_fields })
}

/// The register as text for a terminal.
pub fn render(report: &SecurityReport) -> String {
    let mut out = String::from("DATA CLASSES\n");
    for c in &report.classes {
        let readers: Vec<&str> = c.readers.iter().map(|r| r.as_str()).collect();
        out.push_str(&format!(
            "  {:<10} risk {:<8} (impact {}, likelihood {})  encrypted: {:<5}  mask: {:<9} retention: {}\n             readers: {}\n             fields: {}\n",
            c.class.as_str(),
            format!("{:?}", c.risk.level).to_lowercase(),
            c.risk.impact,
            c.risk.likelihood,
            c.encrypted,
            format!("{:?}", c.mask).to_lowercase(),
            c.retention_days.map_or("as long as the profile".to_string(), |d| format!("{d} days")),
            if readers.is_empty() { "nobody".to_string() } else { readers.join(", ") },
            c.fields.len(),
        ));
    }
    out.push_str("\nPARTS OF THE APPLICATION\n");
    for p in &report.parts {
        out.push_str(&format!(
            "  {:<34} risk {:<8} {}\n",
            p.name,
            format!("{:?}", p.risk.level).to_lowercase(),
            p.protections
        ));
    }
    out.push_str("\nFIELDS SEEN IN EVENTS WITH NO CLASS YET (treated as personal)\n");
    if report.unclassified_fields.is_empty() {
        out.push_str("  none\n");
    }
    for path in &report.unclassified_fields {
        out.push_str(&format!("  {path}\n"));
    }
    out
}
