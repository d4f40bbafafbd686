//! Links sent to people by e-mail: confirming a consent (double opt-in) and
//! one-click unsubscribe (RFC 8058). A link carries signed claims: it cannot
//! be forged, an opt-in link expires, and the store lets each opt-in link
//! work once (replays are refused).

use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use relais_domain::consent::{ConsentChannel, Purpose};
use relais_domain::CustomerId;
use serde::{Deserialize, Serialize};

use super::Keyring;

/// How long an opt-in link stays valid.
pub const OPT_IN_VALIDITY_DAYS: i64 = 7;
/// How long an unsubscribe link stays valid (it must keep working for as long
/// as the messages that carry it may be read).
pub const UNSUBSCRIBE_VALIDITY_DAYS: i64 = 5 * 366;

/// What a link does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkKind {
    /// Confirms a consent.
    #[serde(rename = "o")]
    OptIn,
    /// Withdraws a consent.
    #[serde(rename = "u")]
    Unsubscribe,
}

/// The signed content of a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaims {
    /// Unique id (an opt-in link is claimed by it).
    #[serde(rename = "t")]
    pub token_id: String,
    /// What it does.
    #[serde(rename = "k")]
    pub kind: LinkKind,
    /// Whose consent.
    #[serde(rename = "c")]
    pub customer: CustomerId,
    /// Purpose.
    #[serde(rename = "p")]
    pub purpose: Purpose,
    /// Channel.
    #[serde(rename = "h")]
    pub channel: ConsentChannel,
    /// The wording the person was shown.
    #[serde(rename = "w")]
    pub wording_version: String,
    /// Expiry, seconds since the epoch.
    #[serde(rename = "e")]
    pub expires: i64,
}

/// Why a link is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Not a link relais made.
    #[error("this link is not valid (it was changed or not made by relais)")]
    Forged,
    /// Too old.
    #[error("this link has expired; ask for a new one")]
    Expired,
    /// A link of the other kind.
    #[error("this link is not for this page")]
    WrongKind,
}

impl LinkClaims {
    /// New claims for `kind`, valid from `now`.
    pub fn new(
        kind: LinkKind,
        customer: CustomerId,
        purpose: Purpose,
        channel: ConsentChannel,
        wording_version: &str,
        now: DateTime<Utc>,
    ) -> LinkClaims {
        let days = match kind {
            LinkKind::OptIn => OPT_IN_VALIDITY_DAYS,
            LinkKind::Unsubscribe => UNSUBSCRIBE_VALIDITY_DAYS,
        };
        LinkClaims {
            token_id: format!("lnk_{}", ulid::Ulid::new()),
            kind,
            customer,
            purpose,
            channel,
            wording_version: wording_version.to_string(),
            expires: (now + Duration::days(days)).timestamp(),
        }
    }

    /// The link's token: base64url claims, a dot, base64url signature.
    pub fn sign(&self, keyring: &Keyring) -> String {
        let body = serde_json::to_vec(self).expect("claims serialise");
        let signature = keyring.sign(&body);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}", b64.encode(&body), b64.encode(signature))
    }

    /// The claims of a token, if relais signed it, it has not expired and it is
    /// of `kind`.
    pub fn verify(keyring: &Keyring, token: &str, kind: LinkKind, now: DateTime<Utc>) -> Result<LinkClaims, LinkError> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (body, signature) = token.trim().split_once('.').ok_or(LinkError::Forged)?;
        let body = b64.decode(body).map_err(|_| LinkError::Forged)?;
        let signature = b64.decode(signature).map_err(|_| LinkError::Forged)?;
        if !keyring.verify_signature(&body, &signature) {
            return Err(LinkError::Forged);
        }
        let claims: LinkClaims = serde_json::from_slice(&body).map_err(|_| LinkError::Forged)?;
        if claims.kind != kind {
            return Err(LinkError::WrongKind);
        }
        if now.timestamp() > claims.expires {
            return Err(LinkError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::MasterKey;

    #[test]
    fn links_cannot_be_forged_altered_or_used_late() {
        let (keyring, _) = Keyring::create(&MasterKey::generate());
        let now = Utc::now();
        let claims = LinkClaims::new(
            LinkKind::OptIn,
            CustomerId::new(),
            Purpose::EmailMarketing,
            ConsentChannel::Email,
            "v1",
            now,
        );
        let token = claims.sign(&keyring);
        assert_eq!(LinkClaims::verify(&keyring, &token, LinkKind::OptIn, now), Ok(claims.clone()));
        assert_eq!(LinkClaims::verify(&keyring, &token, LinkKind::Unsubscribe, now), Err(LinkError::WrongKind));
        let late = now + Duration::days(OPT_IN_VALIDITY_DAYS + 1);
        assert_eq!(LinkClaims::verify(&keyring, &token, LinkKind::OptIn, late), Err(LinkError::Expired));
        // Another customer's id in the same link: the signature no longer matches.
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (_, signature) = token.split_once('.').unwrap();
        let altered = LinkClaims { customer: CustomerId::new(), ..claims };
        let forged = format!("{}.{signature}", b64.encode(serde_json::to_vec(&altered).unwrap()));
        assert_eq!(LinkClaims::verify(&keyring, &forged, LinkKind::OptIn, now), Err(LinkError::Forged));
        let (other, _) = Keyring::create(&MasterKey::generate());
        assert_eq!(LinkClaims::verify(&other, &token, LinkKind::OptIn, now), Err(LinkError::Forged));
        assert_eq!(LinkClaims::verify(&keyring, "nonsense", LinkKind::OptIn, now), Err(LinkError::Forged));
    }
}
