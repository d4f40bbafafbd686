//! Configuration: the organisation's settings, from defaults overridden by
//! `RELAIS_…` environment variables.

use crate::store::IngestSettings;

/// Server and organisation settings.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// What ingestion needs (time zone, currency).
    pub ingest: IngestSettings,
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unknown time zone.
    #[error("unknown time zone `{0}` in RELAIS_TIME_ZONE; use an IANA name such as Europe/Paris")]
    TimeZone(String),
    /// Malformed currency.
    #[error("`{0}` in RELAIS_CURRENCY is not an ISO 4217 code such as EUR")]
    Currency(String),
}

impl Settings {
    /// Defaults overridden by `RELAIS_TIME_ZONE` and `RELAIS_CURRENCY`.
    pub fn from_env() -> Result<Settings, ConfigError> {
        let mut settings = Settings::default();
        if let Ok(zone) = std::env::var("RELAIS_TIME_ZONE") {
            settings.ingest.time_zone = zone.parse().map_err(|_| ConfigError::TimeZone(zone.clone()))?;
        }
        if let Ok(currency) = std::env::var("RELAIS_CURRENCY") {
            let upper = currency.trim().to_ascii_uppercase();
            if upper.len() != 3 || !upper.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(ConfigError::Currency(currency));
            }
            settings.ingest.currency = upper;
        }
        Ok(settings)
    }
}
