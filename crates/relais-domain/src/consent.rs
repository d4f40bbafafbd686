//! Consent: per purpose and channel, recorded as dated facts with their proof,
//! so that the state at any past date can be answered and every contact can
//! ask "may I, now?" first.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a consent is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Marketing e-mail.
    EmailMarketing,
    /// Marketing text messages.
    Sms,
    /// Push notifications.
    Push,
    /// Building a profile for targeting (segments, scores).
    Profiling,
    /// Offers chosen for the person.
    PersonalisedOffers,
    /// Sharing data with partners.
    PartnerSharing,
}

/// The channel a consent covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentChannel {
    /// E-mail.
    Email,
    /// Text messages.
    Sms,
    /// Push notifications.
    Push,
    /// Phone calls.
    Phone,
    /// Postal mail.
    Post,
    /// Any channel (purposes such as profiling that are not about contact).
    Any,
}

/// How the consent was collected, which decides what proof it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentSource {
    /// A web form: needs the IP address and user agent.
    Web,
    /// The mobile app: needs the IP address and user agent.
    App,
    /// At a store, recorded by staff: needs the store.
    Store,
    /// By phone with an agent: needs a call reference.
    CallCentre,
    /// A signed paper form or an imported file: needs the document reference.
    Paper,
    /// Confirmed from an e-mail link (double opt-in): carries the link's token.
    DoubleOptIn,
    /// A one-click unsubscribe (RFC 8058): carries the link's token.
    Unsubscribe,
}

impl Purpose {
    /// Every purpose.
    pub const ALL: [Purpose; 6] = [
        Purpose::EmailMarketing,
        Purpose::Sms,
        Purpose::Push,
        Purpose::Profiling,
        Purpose::PersonalisedOffers,
        Purpose::PartnerSharing,
    ];
}

impl ConsentChannel {
    /// Every channel.
    pub const ALL: [ConsentChannel; 6] = [
        ConsentChannel::Email,
        ConsentChannel::Sms,
        ConsentChannel::Push,
        ConsentChannel::Phone,
        ConsentChannel::Post,
        ConsentChannel::Any,
    ];
}

names!(Purpose {
    EmailMarketing => "email_marketing",
    Sms => "sms",
    Push => "push",
    Profiling => "profiling",
    PersonalisedOffers => "personalised_offers",
    PartnerSharing => "partner_sharing",
});
names!(ConsentChannel { Email => "email", Sms => "sms", Push => "push", Phone => "phone", Post => "post", Any => "any" });
names!(ConsentSource {
    Web => "web",
    App => "app",
    Store => "store",
    CallCentre => "call_centre",
    Paper => "paper",
    DoubleOptIn => "double_opt_in",
    Unsubscribe => "unsubscribe",
});

/// The evidence of a consent: what was shown and where it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// IP address of the web or app client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// User agent of the web or app client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Store, call, document or token reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// Why a consent cannot be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsentError {
    /// Proof missing for the source.
    #[error("`proof.{field}` is required for a consent collected through `{source_name}`")]
    MissingProof {
        /// The proof field.
        field: &'static str,
        /// The source.
        source_name: &'static str,
    },
    /// The wording shown is not named.
    #[error("`wording_version` is required: the version of the text the person agreed to")]
    MissingWording,
}

/// One consent fact: given or withdrawn, for a purpose on a channel, at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentFact {
    /// What for.
    pub purpose: Purpose,
    /// Through which channel.
    pub channel: ConsentChannel,
    /// Given (true) or withdrawn (false).
    pub granted: bool,
    /// When the person gave or withdrew it.
    pub at: DateTime<Utc>,
    /// How it was collected.
    pub source: ConsentSource,
    /// The version of the wording the person saw.
    pub wording_version: String,
    /// The evidence.
    pub proof: Proof,
}

impl ConsentFact {
    /// Check that the fact carries the proof its source needs. Withdrawal needs
    /// no more than the way it came (it must be as easy as giving).
    pub fn validate(&self) -> Result<(), ConsentError> {
        let source_name = self.source.as_str();
        let need = |present: &Option<String>, field: &'static str| match present.as_deref().map(str::trim) {
            Some(v) if !v.is_empty() => Ok(()),
            _ => Err(ConsentError::MissingProof { field, source_name }),
        };
        if self.granted && self.wording_version.trim().is_empty() {
            return Err(ConsentError::MissingWording);
        }
        match self.source {
            ConsentSource::Web | ConsentSource::App if self.granted => {
                need(&self.proof.ip, "ip")?;
                need(&self.proof.user_agent, "user_agent")
            }
            ConsentSource::Web | ConsentSource::App => Ok(()),
            ConsentSource::Store
            | ConsentSource::CallCentre
            | ConsentSource::Paper
            | ConsentSource::DoubleOptIn
            | ConsentSource::Unsubscribe => need(&self.proof.reference, "reference"),
        }
    }
}

/// The state of one purpose on one channel at a date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsentState {
    /// What for.
    pub purpose: Purpose,
    /// Channel.
    pub channel: ConsentChannel,
    /// Whether consent stood at that date.
    pub granted: bool,
    /// Since when (the fact that decided).
    pub since: DateTime<Utc>,
    /// How that fact was collected.
    pub source: ConsentSource,
    /// The wording version of that fact.
    pub wording_version: String,
}

/// The state of every purpose and channel a person ever answered, as of `at`:
/// the latest fact at or before `at` decides.
pub fn state_at(facts: &[ConsentFact], at: DateTime<Utc>) -> Vec<ConsentState> {
    let mut latest: BTreeMap<(Purpose, ConsentChannel), &ConsentFact> = BTreeMap::new();
    for fact in facts.iter().filter(|f| f.at <= at) {
        let slot = latest.entry((fact.purpose, fact.channel)).or_insert(fact);
        if fact.at >= slot.at {
            *slot = fact;
        }
    }
    latest
        .into_values()
        .map(|f| ConsentState {
            purpose: f.purpose,
            channel: f.channel,
            granted: f.granted,
            since: f.at,
            source: f.source,
            wording_version: f.wording_version.clone(),
        })
        .collect()
}

/// Whether the person may be contacted (or processed) for `purpose` on
/// `channel` at `at`: only with a standing consent for that channel or for
/// any channel; never by default.
pub fn may(facts: &[ConsentFact], purpose: Purpose, channel: ConsentChannel, at: DateTime<Utc>) -> bool {
    let states = state_at(facts, at);
    let find = |ch: ConsentChannel| states.iter().find(|s| s.purpose == purpose && s.channel == ch);
    match (find(channel), find(ConsentChannel::Any)) {
        // A withdrawal on either wins over a consent on the other.
        (Some(specific), Some(any)) => specific.granted && any.granted,
        (Some(one), None) | (None, Some(one)) => one.granted,
        (None, None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn fact(purpose: Purpose, channel: ConsentChannel, granted: bool, day: u32) -> ConsentFact {
        ConsentFact {
            purpose,
            channel,
            granted,
            at: Utc.with_ymd_and_hms(2026, 3, day, 12, 0, 0).unwrap(),
            source: ConsentSource::Web,
            wording_version: "cgu-2026-01".into(),
            proof: Proof { ip: Some("192.0.2.1".into()), user_agent: Some("Firefox".into()), reference: None },
        }
    }

    #[test]
    fn the_state_at_a_past_date_is_the_latest_fact_then() {
        let facts = vec![
            fact(Purpose::EmailMarketing, ConsentChannel::Email, true, 1),
            fact(Purpose::EmailMarketing, ConsentChannel::Email, false, 10),
        ];
        let on = |day| Utc.with_ymd_and_hms(2026, 3, day, 13, 0, 0).unwrap();
        assert!(!may(
            &facts,
            Purpose::EmailMarketing,
            ConsentChannel::Email,
            Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap()
        ));
        assert!(may(&facts, Purpose::EmailMarketing, ConsentChannel::Email, on(5)));
        assert!(!may(&facts, Purpose::EmailMarketing, ConsentChannel::Email, on(10)));
        assert_eq!(state_at(&facts, on(5))[0].since, facts[0].at);
        assert!(!may(&facts, Purpose::Sms, ConsentChannel::Sms, on(5)), "no consent by default");
    }

    #[test]
    fn a_withdrawal_on_any_channel_wins() {
        let facts = vec![
            fact(Purpose::Profiling, ConsentChannel::Any, true, 1),
            fact(Purpose::Profiling, ConsentChannel::Email, false, 2),
        ];
        let now = Utc.with_ymd_and_hms(2026, 3, 20, 0, 0, 0).unwrap();
        assert!(!may(&facts, Purpose::Profiling, ConsentChannel::Email, now));
        assert!(may(&facts, Purpose::Profiling, ConsentChannel::Sms, now));
    }

    #[test]
    fn a_consent_without_its_proof_is_refused() {
        let mut web = fact(Purpose::EmailMarketing, ConsentChannel::Email, true, 1);
        web.proof.ip = None;
        assert_eq!(web.validate(), Err(ConsentError::MissingProof { field: "ip", source_name: "web" }));
        let mut store = fact(Purpose::Sms, ConsentChannel::Sms, true, 1);
        store.source = ConsentSource::Store;
        store.proof = Proof::default();
        assert!(store.validate().is_err());
        store.proof.reference = Some("lyon-part-dieu".into());
        assert!(store.validate().is_ok());
        let mut unsigned = fact(Purpose::Sms, ConsentChannel::Sms, true, 1);
        unsigned.wording_version = " ".into();
        assert_eq!(unsigned.validate(), Err(ConsentError::MissingWording));
        let mut withdrawal = fact(Purpose::Sms, ConsentChannel::Sms, false, 1);
        withdrawal.proof = Proof::default();
        withdrawal.wording_version = String::new();
        assert!(withdrawal.validate().is_ok(), "withdrawing is as easy as giving");
        assert_eq!(Purpose::parse("email_marketing"), Some(Purpose::EmailMarketing));
        assert_eq!(ConsentChannel::parse("sms").map(ConsentChannel::as_str), Some("sms"));
    }
}
