//! Fuzz the tracking-message parser: any bytes must give a message or an error,
//! never a panic, and an accepted message must keep its invariants.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use relais_domain::message::{Envelope, MAX_FUTURE_SKEW_HOURS};
use relais_domain::TrackingMessage;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let envelope = Envelope {
        received_at: Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap(),
        implied_type: None,
        batch_sent_at: None,
        batch_context: None,
        default_currency: "EUR",
        card_policy: relais_domain::cards::CardPolicy::Mask,
    };
    if let Ok(message) = TrackingMessage::parse_json(text, &envelope) {
        assert!(message.user_id.is_some() || message.anonymous_id.is_some());
        assert!(!message.identifiers.is_empty());
        assert!(message.timestamp - envelope.received_at <= chrono::Duration::hours(MAX_FUTURE_SKEW_HOURS));
    }
});
