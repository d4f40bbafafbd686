//! Privacy: data classes from configuration and the keys that encrypt personal
//! data at rest.

pub mod audit;
pub mod backup;
pub mod export;
pub mod keyring;
pub mod links;
pub mod report;
pub mod retention;
pub mod rights;

use std::collections::BTreeMap;
use std::path::Path;

use relais_domain::privacy::{default_policy, ClassPolicy, Classification, ClassificationError, DataClass, Mask};
use relais_domain::Role;
use serde::Deserialize;

pub use keyring::{DataKey, KeyError, Keyring, MasterKey, StoredKeyring};

/// Why the data-class configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyConfigError {
    /// The file cannot be read.
    #[error("cannot read the data-class file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("the data-class file {path} is invalid: {reason}")]
    Syntax {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A class, path or role is wrong.
    #[error("the data-class file {path}: {source}")]
    Classes {
        /// The file.
        path: String,
        /// What is wrong.
        source: ClassificationError,
    },
    /// An unknown role in `readers`.
    #[error("the data-class file {path}: unknown role `{role}` in the readers of class `{class}`")]
    Role {
        /// The file.
        path: String,
        /// The class.
        class: String,
        /// The role.
        role: String,
    },
}

/// One class's section of the data-class file; absent settings keep the defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassSection {
    readers: Option<Vec<String>>,
    encrypted: Option<bool>,
    mask: Option<Mask>,
    retention_days: Option<u32>,
    #[serde(default)]
    fields: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassFile {
    #[serde(default)]
    classes: BTreeMap<String, ClassSection>,
}

/// The classification from a TOML file (see ARCHITECTURE.md, "Data classes"):
///
/// ```toml
/// [classes.sensitive]
/// readers = ["dpo", "agent"]
/// retention_days = 365
/// fields = ["properties.allergies"]
/// ```
pub fn classification_from_toml(text: &str, path: &str) -> Result<Classification, PrivacyConfigError> {
    let file: ClassFile =
        toml::from_str(text).map_err(|e| PrivacyConfigError::Syntax { path: path.into(), reason: e.to_string() })?;
    let mut policies = BTreeMap::new();
    let mut overrides = Vec::new();
    for (name, section) in file.classes {
        let class = DataClass::parse(&name).ok_or_else(|| PrivacyConfigError::Classes {
            path: path.into(),
            source: ClassificationError::UnknownClass(name.clone()),
        })?;
        let defaults = default_policy(class);
        let readers = match section.readers {
            Some(names) => names
                .iter()
                .map(|r| {
                    Role::parse(r).ok_or_else(|| PrivacyConfigError::Role {
                        path: path.into(),
                        class: name.clone(),
                        role: r.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => defaults.readers.clone(),
        };
        policies.insert(
            class,
            ClassPolicy {
                readers,
                encrypted: section.encrypted.unwrap_or(defaults.encrypted),
                mask: section.mask.unwrap_or(defaults.mask),
                retention_days: section.retention_days.or(defaults.retention_days),
            },
        );
        overrides.extend(section.fields.into_iter().map(|f| (f, name.clone())));
    }
    Classification::new(policies, overrides).map_err(|source| PrivacyConfigError::Classes { path: path.into(), source })
}

/// The classification named by `RELAIS_DATA_CLASSES`, or the defaults.
pub fn classification_from_env() -> Result<Classification, PrivacyConfigError> {
    match std::env::var("RELAIS_DATA_CLASSES") {
        Ok(path) => {
            let text = std::fs::read_to_string(Path::new(&path))
                .map_err(|e| PrivacyConfigError::Read { path: path.clone(), reason: e.to_string() })?;
            classification_from_toml(&text, &path)
        }
        Err(_) => Ok(Classification::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_file_overrides_defaults_and_names_its_mistakes() {
        let c = classification_from_toml(
            "[classes.sensitive]\nreaders = [\"dpo\"]\nfields = [\"properties.allergies\"]\n",
            "classes.toml",
        )
        .expect("valid");
        assert_eq!(c.class_of("properties.allergies"), DataClass::Sensitive);
        assert!(!c.may_read(Role::Agent, DataClass::Sensitive));

        let unknown = classification_from_toml("[classes.secret]\nfields = [\"traits.x\"]\n", "f.toml").unwrap_err();
        assert!(unknown.to_string().contains("unknown data class `secret`"), "{unknown}");
        let twice = classification_from_toml(
            "[classes.internal]\nfields = [\"traits.x\"]\n[classes.personal]\nfields = [\"traits.x\"]\n",
            "f.toml",
        )
        .unwrap_err();
        assert!(twice.to_string().contains("mapped twice"), "{twice}");
        let role = classification_from_toml("[classes.personal]\nreaders = [\"root\"]\n", "f.toml").unwrap_err();
        assert!(role.to_string().contains("unknown role `root`"), "{role}");
    }
}
