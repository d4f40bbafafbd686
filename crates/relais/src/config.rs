//! Configuration: the organisation's settings, from defaults overridden by
//! `RELAIS_…` environment variables.

use crate::store::IngestSettings;

/// A secret that never prints (a database or SMTP password inside a URL).
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The secret, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Server and organisation settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What ingestion needs (time zone, currency).
    pub ingest: IngestSettings,
    /// SMTP server URL (`RELAIS_SMTP_URL`); without it, e-mail goes to files in
    /// the data folder's `outbox` folder.
    pub smtp_url: Option<Secret>,
    /// Sender of e-mail (`RELAIS_MAIL_FROM`).
    pub mail_from: String,
    /// Days a `messageId` is remembered for deduplication
    /// (`RELAIS_MESSAGE_ID_RETENTION_DAYS`, at least 30).
    pub message_id_retention_days: i64,
    /// Requests each API key may make per second (`RELAIS_RATE_LIMIT`).
    pub rate_limit_per_second: u32,
    /// The address people reach relais at, for links in e-mails (`RELAIS_PUBLIC_URL`).
    pub public_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ingest: IngestSettings::default(),
            smtp_url: None,
            mail_from: "relais <no-reply@relais.localhost>".into(),
            message_id_retention_days: 30,
            rate_limit_per_second: 1_000,
            public_url: "http://127.0.0.1:8080".into(),
        }
    }
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unknown time zone.
    #[error("unknown time zone `{0}` in RELAIS_TIME_ZONE; use an IANA name such as Europe/Paris")]
    TimeZone(String),
    /// Retention too short or malformed.
    #[error("`{0}` in RELAIS_MESSAGE_ID_RETENTION_DAYS is not a number of days, 30 or more")]
    Retention(String),
    /// Malformed limit.
    #[error("`{0}` in RELAIS_SHARED_IDENTIFIER_LIMIT is not a whole number of people, 1 or more")]
    SharedLimit(String),
    /// Malformed sender.
    #[error("`{0}` in RELAIS_MAIL_FROM is not a mailbox such as `Boutique <contact@example.fr>`")]
    MailFrom(String),
    /// Malformed public address.
    #[error("`{0}` in RELAIS_PUBLIC_URL is not an http(s) address such as https://crm.example.fr")]
    PublicUrl(String),
    /// Malformed rate limit.
    #[error("`{0}` in RELAIS_RATE_LIMIT is not a number of requests per second, 1 or more")]
    RateLimit(String),
    /// Unknown card-number policy.
    #[error("`{0}` in RELAIS_CARD_NUMBERS is not `reject` or `mask`")]
    CardNumbers(String),
    /// Malformed currency.
    #[error("`{0}` in RELAIS_CURRENCY is not an ISO 4217 code such as EUR")]
    Currency(String),
    /// Unknown language.
    #[error("`{0}` in RELAIS_LANGUAGE is not `fr` or `en`")]
    Language(String),
}

impl Settings {
    /// Defaults overridden by `RELAIS_TIME_ZONE`, `RELAIS_CURRENCY`, `RELAIS_LANGUAGE`…
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
        if let Ok(language) = std::env::var("RELAIS_LANGUAGE") {
            settings.ingest.language =
                relais_domain::loyalty::Lang::parse(language.trim().to_ascii_lowercase().as_str())
                    .ok_or(ConfigError::Language(language))?;
        }
        if let Ok(limit) = std::env::var("RELAIS_SHARED_IDENTIFIER_LIMIT") {
            settings.ingest.shared_identifier_limit =
                limit.trim().parse().ok().filter(|n| *n >= 1).ok_or(ConfigError::SharedLimit(limit))?;
        }
        if let Ok(days) = std::env::var("RELAIS_MESSAGE_ID_RETENTION_DAYS") {
            settings.message_id_retention_days =
                days.trim().parse().ok().filter(|d| *d >= 30).ok_or(ConfigError::Retention(days))?;
        }
        if let Ok(rate) = std::env::var("RELAIS_RATE_LIMIT") {
            settings.rate_limit_per_second =
                rate.trim().parse().ok().filter(|r| *r >= 1).ok_or(ConfigError::RateLimit(rate))?;
        }
        if let Ok(url) = std::env::var("RELAIS_PUBLIC_URL") {
            let url = url.trim().trim_end_matches('/').to_string();
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ConfigError::PublicUrl(url));
            }
            settings.public_url = url;
        }
        if let Ok(policy) = std::env::var("RELAIS_CARD_NUMBERS") {
            settings.ingest.card_policy = match policy.trim() {
                "reject" => relais_domain::cards::CardPolicy::Reject,
                "mask" => relais_domain::cards::CardPolicy::Mask,
                _ => return Err(ConfigError::CardNumbers(policy)),
            };
        }
        if let Ok(url) = std::env::var("RELAIS_SMTP_URL") {
            settings.smtp_url = Some(Secret::new(url));
        }
        if let Ok(from) = std::env::var("RELAIS_MAIL_FROM") {
            if from.parse::<lettre::message::Mailbox>().is_err() {
                return Err(ConfigError::MailFrom(from));
            }
            settings.mail_from = from;
        }
        Ok(settings)
    }

    /// The delivery worker these settings describe; e-mail files go under `data`.
    pub fn delivery_worker(
        &self,
        store: crate::store::Store,
        data: &std::path::Path,
    ) -> Result<crate::outbox::DeliveryWorker, String> {
        let from = self.mail_from.parse().map_err(|e| format!("invalid RELAIS_MAIL_FROM: {e}"))?;
        let mailer: std::sync::Arc<dyn crate::outbox::Mailer> = match &self.smtp_url {
            Some(url) => std::sync::Arc::new(crate::outbox::SmtpMailer::from_url(url.expose())?),
            None => std::sync::Arc::new(crate::outbox::FileMailer::new(data.join("outbox"))),
        };
        Ok(crate::outbox::DeliveryWorker::new(store, mailer, from))
    }
}
