//! The delivery worker: takes due messages from the transactional outbox, sends
//! them through a transport (SMTP, or a file transport for the demo and tests),
//! and records the result, retrying on the Standard Webhooks schedule.
//!
//! Delivery is at-least-once at the transport and exactly-once in effect: a
//! message is leased while it is sent and marked delivered right after; should
//! the process die between the two, the lease expires and the message is sent
//! again with the same Message-ID (`<obx_…@relais>`), which mail systems use to
//! drop the copy, and the file transport overwrites the same file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lettre::message::{header::ContentType, Mailbox, Message};
use lettre::Transport as _;
use serde::{Deserialize, Serialize};

use crate::store::{DeliveryResult, OutboxItem, Store, StoreError};

/// Delays before each retry (Standard Webhooks' schedule); after the last, give up.
pub const RETRY_SCHEDULE: [Duration; 9] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(14 * 3600),
    Duration::from_secs(20 * 3600),
    Duration::from_secs(24 * 3600),
];

/// How long a claimed message is reserved for the worker that claimed it, and
/// how many are claimed at once: the lease must outlast sending the whole claim
/// (10 messages at the SMTP timeout of 30 s each), or another worker would take
/// and send them again.
const LEASE: Duration = Duration::from_secs(600);
const CLAIM: usize = 10;

/// An e-mail in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    /// Recipient address.
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub text: String,
    /// One-click unsubscribe link (RFC 8058), sent as `List-Unsubscribe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe_url: Option<String>,
}

/// `List-Unsubscribe` (RFC 2369): where to unsubscribe.
#[derive(Debug, Clone)]
struct ListUnsubscribe(String);

impl lettre::message::header::Header for ListUnsubscribe {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("List-Unsubscribe")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribe(s.to_string()))
    }

    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(Self::name(), format!("<{}>", self.0))
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
#[derive(Debug, Clone)]
struct ListUnsubscribePost;

impl lettre::message::header::Header for ListUnsubscribePost {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribePost)
    }

    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".into())
    }
}

/// A way to send e-mail.
pub trait Mailer: Send + Sync {
    /// Send one formatted message; an error says why, and whether to retry.
    fn send(&self, id: &str, message: &Message) -> Result<(), DeliveryError>;
}

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Worth retrying (network, server busy).
    #[error("{0}")]
    Transient(String),
    /// Will never work (invalid address, rejected permanently).
    #[error("{0}")]
    Permanent(String),
}

/// Writes each message as `<folder>/<outbox id>.eml`: for the demo and tests, and
/// never into logs.
pub struct FileMailer {
    folder: PathBuf,
}

impl FileMailer {
    /// A file mailer writing into `folder` (created on first use).
    pub fn new(folder: PathBuf) -> FileMailer {
        FileMailer { folder }
    }
}

impl Mailer for FileMailer {
    fn send(&self, id: &str, message: &Message) -> Result<(), DeliveryError> {
        let transient = |e: std::io::Error| DeliveryError::Transient(format!("cannot write the mail file: {e}"));
        std::fs::create_dir_all(&self.folder).map_err(transient)?;
        // Write then rename, so a reader never sees half a message.
        let partial = self.folder.join(format!("{id}.eml.partial"));
        std::fs::write(&partial, message.formatted()).map_err(transient)?;
        std::fs::rename(&partial, self.folder.join(format!("{id}.eml"))).map_err(transient)
    }
}

/// Sends over SMTP with lettre.
pub struct SmtpMailer {
    transport: lettre::SmtpTransport,
}

impl SmtpMailer {
    /// From a URL such as `smtps://user:password@mail.example.fr` or
    /// `smtp://localhost:2525` (lettre's URL syntax).
    pub fn from_url(url: &str) -> Result<SmtpMailer, String> {
        let transport = lettre::SmtpTransport::from_url(url)
            .map_err(|e| format!("invalid SMTP URL in RELAIS_SMTP_URL: {e}"))?
            .timeout(Some(Duration::from_secs(30)))
            .build();
        Ok(SmtpMailer { transport })
    }
}

impl Mailer for SmtpMailer {
    fn send(&self, _id: &str, message: &Message) -> Result<(), DeliveryError> {
        self.transport.send(message).map(|_| ()).map_err(|e| {
            if e.is_permanent() {
                DeliveryError::Permanent(e.to_string())
            } else {
                DeliveryError::Transient(e.to_string())
            }
        })
    }
}

/// What one pass of the worker did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeliveryReport {
    /// Messages sent.
    pub delivered: usize,
    /// Messages that failed and will be retried.
    pub retried: usize,
    /// Messages given up.
    pub failed: usize,
}

/// The delivery worker.
#[derive(Clone)]
pub struct DeliveryWorker {
    store: Store,
    mailer: Arc<dyn Mailer>,
    from: Mailbox,
}

impl DeliveryWorker {
    /// A worker sending from `from` through `mailer`.
    pub fn new(store: Store, mailer: Arc<dyn Mailer>, from: Mailbox) -> DeliveryWorker {
        DeliveryWorker { store, mailer, from }
    }

    /// Deliver every due message once (blocking); tests call this to drain the queue.
    pub fn run_once(&self) -> Result<DeliveryReport, StoreError> {
        let mut report = DeliveryReport::default();
        loop {
            let lease = chrono::Duration::from_std(LEASE).unwrap_or_else(|_| chrono::Duration::minutes(2));
            let batch = self.store.blocking().claim_outbox(CLAIM, lease)?;
            if batch.is_empty() {
                return Ok(report);
            }
            for item in batch {
                let result = self.attempt(&item);
                match &result {
                    DeliveryResult::Delivered => report.delivered += 1,
                    DeliveryResult::Retry { .. } => report.retried += 1,
                    DeliveryResult::GiveUp { .. } => report.failed += 1,
                }
                self.store.blocking().finish_outbox(item.outbox_id, &result)?;
            }
        }
    }

    fn attempt(&self, item: &OutboxItem) -> DeliveryResult {
        let outcome = match item.kind.as_str() {
            "email" => self.send_email(item),
            other => Err(DeliveryError::Permanent(format!("no transport for outbox messages of kind `{other}`"))),
        };
        match outcome {
            Ok(()) => DeliveryResult::Delivered,
            Err(DeliveryError::Permanent(error)) => DeliveryResult::GiveUp { error },
            Err(DeliveryError::Transient(error)) => match RETRY_SCHEDULE.get((item.attempts.max(1) - 1) as usize) {
                Some(delay) => DeliveryResult::Retry {
                    at: Utc::now() + chrono::Duration::from_std(*delay).unwrap_or_default(),
                    error,
                },
                None => DeliveryResult::GiveUp { error: format!("{error} (after {} attempts)", item.attempts) },
            },
        }
    }

    fn send_email(&self, item: &OutboxItem) -> Result<(), DeliveryError> {
        let email: Email = serde_json::from_value(item.payload.clone())
            .map_err(|e| DeliveryError::Permanent(format!("the outbox payload is not an e-mail: {e}")))?;
        let to: Mailbox =
            email.to.parse().map_err(|e| DeliveryError::Permanent(format!("invalid recipient `{}`: {e}", email.to)))?;
        let mut builder = Message::builder()
            .message_id(Some(format!("<{}@relais>", item.outbox_id)))
            .from(self.from.clone())
            .to(to)
            .subject(email.subject)
            .header(ContentType::TEXT_PLAIN);
        if let Some(url) = email.unsubscribe_url {
            builder = builder.header(ListUnsubscribe(url)).header(ListUnsubscribePost);
        }
        let message =
            builder.body(email.text).map_err(|e| DeliveryError::Permanent(format!("cannot build the e-mail: {e}")))?;
        self.mailer.send(&item.outbox_id.to_string(), &message)
    }

    /// Deliver due messages every `period` until `shutdown` resolves.
    pub async fn run(self, period: Duration, shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut shutdown = shutdown;
        loop {
            let worker = self.clone();
            match tokio::task::spawn_blocking(move || worker.run_once()).await {
                Ok(Ok(report)) if report != DeliveryReport::default() => tracing::info!(?report, "outbox delivered"),
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "outbox delivery pass failed; will retry"),
                Err(error) => tracing::error!(%error, "outbox worker panicked"),
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Queue an e-mail.
pub fn enqueue_email(
    store: &Store,
    customer: Option<relais_domain::CustomerId>,
    email: &Email,
) -> Result<relais_domain::OutboxId, StoreError> {
    let payload = serde_json::to_value(email).map_err(|e| StoreError::Database(e.to_string()))?;
    store.blocking().enqueue("email", customer, &payload)
}
