//! Identifiers of a person on a touchpoint (`email:ana@example.fr`), normalised so
//! that two spellings of one address are one identifier.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest identifier value accepted, in bytes.
pub const MAX_IDENTIFIER_LEN: usize = 256;

/// The kind of an identifier; the text before the colon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentifierKind {
    /// Segment's `userId`: the organisation's own account id.
    UserId,
    /// A customer number printed on invoices or contracts.
    CustomerNumber,
    /// A loyalty card number.
    Card,
    /// An e-mail address, lower-cased.
    Email,
    /// A phone number in E.164 form.
    Phone,
    /// A social network handle, `network:handle`.
    Social,
    /// A beacon or connected-object id.
    Beacon,
    /// Segment's `anonymousId` or a device id.
    AnonymousId,
}

impl IdentifierKind {
    /// Every kind, strongest first: the order in which a message's identifiers decide
    /// which profile it belongs to.
    pub const ALL: [IdentifierKind; 8] = [
        IdentifierKind::UserId,
        IdentifierKind::CustomerNumber,
        IdentifierKind::Card,
        IdentifierKind::Email,
        IdentifierKind::Phone,
        IdentifierKind::Social,
        IdentifierKind::Beacon,
        IdentifierKind::AnonymousId,
    ];

    /// The name used before the colon.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentifierKind::UserId => "user_id",
            IdentifierKind::CustomerNumber => "customer_number",
            IdentifierKind::Card => "card",
            IdentifierKind::Email => "email",
            IdentifierKind::Phone => "phone",
            IdentifierKind::Social => "social",
            IdentifierKind::Beacon => "beacon",
            IdentifierKind::AnonymousId => "anonymous_id",
        }
    }

    /// Parse a kind name.
    pub fn parse(name: &str) -> Option<IdentifierKind> {
        IdentifierKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Kinds of which one profile holds at most one value: two profiles holding
    /// different values of such a kind are two people and are never merged
    /// automatically.
    pub fn is_exclusive(self) -> bool {
        matches!(self, IdentifierKind::UserId | IdentifierKind::CustomerNumber)
    }
}

/// Why a text is not a valid identifier.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum IdentifierError {
    /// No `kind:` prefix.
    #[error("identifier `{0}` has no kind; write it as `kind:value`, for example `email:ana@example.fr`")]
    MissingKind(String),
    /// The prefix is not a known kind.
    #[error("unknown identifier kind `{0}`; expected one of user_id, customer_number, card, email, phone, social, beacon, anonymous_id")]
    UnknownKind(String),
    /// The value is empty.
    #[error("{0} identifier is empty")]
    Empty(&'static str),
    /// The value is too long.
    #[error("{0} identifier is longer than 256 bytes")]
    TooLong(&'static str),
    /// The e-mail address is malformed.
    #[error("`{0}` is not a valid e-mail address")]
    InvalidEmail(String),
    /// The phone number is malformed.
    #[error("`{0}` is not a valid phone number; use international form such as +33612345678")]
    InvalidPhone(String),
    /// The card number is malformed.
    #[error("`{0}` is not a valid card number; use digits only")]
    InvalidCard(String),
    /// The social handle is malformed.
    #[error("`{0}` is not a valid social handle; write it as `network:handle`, for example `instagram:ana.lyon`")]
    InvalidSocial(String),
}

/// A normalised identifier: a kind and a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identifier {
    kind: IdentifierKind,
    value: String,
}

impl Identifier {
    /// Parse `kind:value`.
    pub fn parse(text: &str) -> Result<Identifier, IdentifierError> {
        let (kind, value) = text.split_once(':').ok_or_else(|| IdentifierError::MissingKind(truncate(text)))?;
        let kind = IdentifierKind::parse(kind.trim()).ok_or_else(|| IdentifierError::UnknownKind(truncate(kind)))?;
        Identifier::new(kind, value)
    }

    /// Build an identifier of a given kind from a raw value, normalising it.
    pub fn new(kind: IdentifierKind, raw: &str) -> Result<Identifier, IdentifierError> {
        let value = match kind {
            IdentifierKind::Email => normalise_email(raw)?,
            IdentifierKind::Phone => normalise_phone(raw)?,
            IdentifierKind::Card => normalise_card(raw)?,
            IdentifierKind::Social => normalise_social(raw)?,
            IdentifierKind::CustomerNumber | IdentifierKind::Beacon => raw.trim().to_string(),
            // Opaque ids sent by tracking libraries are kept exactly as sent.
            IdentifierKind::UserId | IdentifierKind::AnonymousId => raw.to_string(),
        };
        if value.trim().is_empty() {
            return Err(IdentifierError::Empty(kind.as_str()));
        }
        if value.len() > MAX_IDENTIFIER_LEN {
            return Err(IdentifierError::TooLong(kind.as_str()));
        }
        Ok(Identifier { kind, value })
    }

    /// An identifier whose value is already normalised or is a lookup token that
    /// stands for one (storage keys identifiers by a keyed hash of their value).
    pub fn from_stored(kind: IdentifierKind, value: String) -> Identifier {
        Identifier { kind, value }
    }

    /// The kind.
    pub fn kind(&self) -> IdentifierKind {
        self.kind
    }

    /// The normalised value.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.value)
    }
}

impl FromStr for Identifier {
    type Err = IdentifierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Identifier::parse(s)
    }
}

impl Serialize for Identifier {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Identifier {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Identifier::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

fn normalise_email(raw: &str) -> Result<String, IdentifierError> {
    let email = raw.trim().to_lowercase();
    let invalid = || IdentifierError::InvalidEmail(truncate(raw));
    let (local, domain) = email.rsplit_once('@').ok_or_else(invalid)?;
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain.chars().all(|c| c.is_alphanumeric() || c == '.' || c == '-');
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.contains('@')
        && !local.chars().any(|c| c.is_whitespace() || c.is_control());
    if domain_ok && local_ok {
        Ok(email)
    } else {
        Err(invalid())
    }
}

/// E.164 without a country-specific library: strip punctuation, turn a national
/// French number (`06 12 34 56 78`) or a `00` prefix into international form, and
/// check the length rules of E.164 (8 to 15 digits after `+`).
fn normalise_phone(raw: &str) -> Result<String, IdentifierError> {
    let invalid = || IdentifierError::InvalidPhone(truncate(raw));
    let trimmed = raw.trim();
    let mut digits = String::with_capacity(trimmed.len());
    for (i, c) in trimmed.chars().enumerate() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if i == 0 => digits.push(c),
            ' ' | '.' | '-' | '(' | ')' | '\u{a0}' => {}
            _ => return Err(invalid()),
        }
    }
    let international = if let Some(rest) = digits.strip_prefix('+') {
        rest.to_string()
    } else if let Some(rest) = digits.strip_prefix("00") {
        rest.to_string()
    } else if digits.len() == 10 && digits.starts_with('0') {
        format!("33{}", &digits[1..])
    } else {
        return Err(invalid());
    };
    let international = match international.strip_prefix("330") {
        // "+33 (0)6 …" is a common way of writing French numbers.
        Some(rest) if rest.len() == 9 => format!("33{rest}"),
        _ => international,
    };
    if (8..=15).contains(&international.len())
        && !international.starts_with('0')
        && international.bytes().all(|b| b.is_ascii_digit())
    {
        Ok(format!("+{international}"))
    } else {
        Err(invalid())
    }
}

fn normalise_card(raw: &str) -> Result<String, IdentifierError> {
    let digits: String = raw.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    if !digits.is_empty() && digits.len() <= 32 && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(digits)
    } else {
        Err(IdentifierError::InvalidCard(truncate(raw)))
    }
}

fn normalise_social(raw: &str) -> Result<String, IdentifierError> {
    let invalid = || IdentifierError::InvalidSocial(truncate(raw));
    let (network, handle) = raw.trim().split_once(':').ok_or_else(invalid)?;
    let network = network.trim().to_lowercase();
    // Trim again after the `@`, so that normalising a normalised handle changes nothing.
    let handle = handle.trim().trim_start_matches('@').trim().to_lowercase();
    if network.is_empty() || handle.is_empty() || !network.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(invalid());
    }
    Ok(format!("{network}:{handle}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_lower_cased_and_trimmed() {
        let id = Identifier::parse("email: Ana.Martin@Example.FR ").unwrap();
        assert_eq!(id.to_string(), "email:ana.martin@example.fr");
    }

    #[test]
    fn malformed_emails_are_refused_with_the_value() {
        for bad in ["ana", "ana@", "@example.fr", "ana@example", "ana @example.fr", "ana@exa..mple.fr"] {
            let err = Identifier::new(IdentifierKind::Email, bad).unwrap_err();
            assert!(matches!(err, IdentifierError::InvalidEmail(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn french_phone_numbers_become_e164() {
        for written in
            ["06 12 34 56 78", "+33 6 12 34 56 78", "0033612345678", "+33 (0)6 12 34 56 78", "06.12.34.56.78"]
        {
            assert_eq!(Identifier::new(IdentifierKind::Phone, written).unwrap().value(), "+33612345678", "{written}");
        }
    }

    #[test]
    fn phone_numbers_that_cannot_be_e164_are_refused() {
        for bad in ["12345", "+1234567890123456", "06 12 34 56 7x", "612345678"] {
            assert!(Identifier::new(IdentifierKind::Phone, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn social_handles_keep_their_network() {
        let id = Identifier::parse("social:Instagram:@Ana.Lyon").unwrap();
        assert_eq!(id.value(), "instagram:ana.lyon");
        assert!(Identifier::parse("social:ana").is_err());
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for text in ["social:Instagram:@ Ana", "email: A@B.fr ", "phone:06 12 34 56 78", "card:9250 0000 0042"] {
            let once = Identifier::parse(text).unwrap();
            assert_eq!(Identifier::parse(&once.to_string()).unwrap(), once, "{text}");
        }
    }

    #[test]
    fn unknown_kinds_and_missing_kinds_say_how_to_write_one() {
        assert!(Identifier::parse("mail:ana@example.fr").unwrap_err().to_string().contains("expected one of"));
        assert!(Identifier::parse("ana@example.fr").unwrap_err().to_string().contains("kind:value"));
    }

    #[test]
    fn opaque_ids_are_kept_exactly() {
        assert_eq!(Identifier::parse("user_id:AbC 1").unwrap().value(), "AbC 1");
        assert!(Identifier::parse("user_id:").is_err());
    }
}
