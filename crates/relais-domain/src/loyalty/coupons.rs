//! Coupon campaigns: unique, unguessable codes with a check character, limits
//! per member and in total, validity windows, targeting by tier or saved
//! segment and early access for higher tiers.
//!
//! A code is 12 random characters of Crockford's base32 (60 bits: guessing
//! one among a million issued codes takes about 10^12 tries) and a check
//! character (ISO 7064 MOD 37-2 style over the 32 symbols), written in groups
//! of four: `K7QM-3XZP-9RTA-H`. Codes are stored only as a keyed hash.

use chrono::NaiveDate;
use rand::Rng;
use serde::{Deserialize, Serialize};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Check symbols: the 32 above and five more, as ISO 7064 MOD 37-2 allows.
const CHECK_SYMBOLS: &[u8; 37] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ*~$=U";
const RANDOM_LEN: usize = 12;

/// A checked coupon code (upper case, no dashes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CouponCode(String);

fn value(symbol: u8) -> Option<u32> {
    ALPHABET.iter().position(|s| *s == symbol).map(|p| p as u32)
}

fn check_symbol(body: &[u8]) -> u8 {
    // MOD 37-2 over base-32 values: catches any single substitution and any
    // swap of neighbours.
    let mut sum: u32 = 0;
    for symbol in body {
        sum = ((sum + value(*symbol).unwrap_or(0)) * 2) % 37;
    }
    CHECK_SYMBOLS[((38 - sum) % 37) as usize]
}

impl CouponCode {
    /// A new random code.
    pub fn generate(rng: &mut impl Rng) -> CouponCode {
        let mut body: Vec<u8> = (0..RANDOM_LEN).map(|_| ALPHABET[rng.gen_range(0..32)]).collect();
        let check = check_symbol(&body);
        body.push(check);
        CouponCode(String::from_utf8(body).expect("ASCII"))
    }

    /// Parse a typed code: case, dashes and spaces ignored; `O`, `I` and `L`
    /// read as `0`, `1` and `1` as Crockford's base32 says.
    pub fn parse(raw: &str) -> Result<CouponCode, String> {
        let cleaned: Vec<u8> = raw
            .bytes()
            .filter(|b| !matches!(b, b'-' | b' '))
            .map(|b| match b.to_ascii_uppercase() {
                b'O' => b'0',
                b'I' | b'L' => b'1',
                other => other,
            })
            .collect();
        if cleaned.len() != RANDOM_LEN + 1 || !cleaned[..RANDOM_LEN].iter().all(|b| value(*b).is_some()) {
            return Err(format!("`{raw}` is not a coupon code: expected 13 letters and digits, like K7QM-3XZP-9RTA-H"));
        }
        if check_symbol(&cleaned[..RANDOM_LEN]) != cleaned[RANDOM_LEN] {
            return Err(format!("`{raw}` is not a valid coupon code: its check character is wrong (a typo?)"));
        }
        Ok(CouponCode(String::from_utf8(cleaned).expect("ASCII")))
    }

    /// The canonical form (no dashes).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Grouped by four, as printed.
    pub fn printed(&self) -> String {
        self.0.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("-")
    }
}

/// A coupon campaign as defined by the team.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Campaign {
    /// Stable id (`printemps-2026`).
    pub id: String,
    /// What the coupon gives, shown to members and tills ("-10 € dès 50 € d'achat").
    pub benefit: String,
    /// Points credited when a coupon is used (0: the benefit is given at the till).
    #[serde(default)]
    pub bonus_points: i64,
    /// First day codes can be used (organisation's calendar).
    pub valid_from: NaiveDate,
    /// Last day codes can be used.
    pub valid_until: NaiveDate,
    /// Most uses per member.
    #[serde(default = "one")]
    pub per_member: i64,
    /// Most uses in all (absent: as many as codes).
    pub total: Option<i64>,
    /// Tiers the campaign targets; empty: every member.
    #[serde(default)]
    pub tiers: Vec<String>,
    /// Earlier starts for some tiers: tier → first day (before `valid_from`).
    #[serde(default)]
    pub early_access: std::collections::BTreeMap<String, NaiveDate>,
    /// Saved segments (by name) the campaign targets: a code works only for a
    /// member whose customer is in one of them when the code is used; empty:
    /// every member. With `tiers` too, the member must satisfy both.
    #[serde(default)]
    pub segments: Vec<String>,
}

/// The most segments one campaign may target.
pub const MAX_CAMPAIGN_SEGMENTS: usize = 20;

fn one() -> i64 {
    1
}

impl Campaign {
    /// Check a definition; the error names the field and the reason.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.id.is_empty()
            || self.id.len() > 40
            || !self.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(("id", "must be 1 to 40 lower-case letters, digits or dashes".into()));
        }
        if self.benefit.trim().is_empty() || self.benefit.chars().count() > 200 {
            return Err(("benefit", "must say what the coupon gives, 1 to 200 characters".into()));
        }
        if !(0..=1_000_000).contains(&self.bonus_points) {
            return Err(("bonus_points", "must be 0 to 1000000".into()));
        }
        if self.valid_until < self.valid_from {
            return Err(("valid_until", format!("{} is before valid_from {}", self.valid_until, self.valid_from)));
        }
        if self.per_member < 1 {
            return Err(("per_member", "must be at least 1".into()));
        }
        if self.total.is_some_and(|t| t < 1) {
            return Err(("total", "must be at least 1 (leave it out for no total limit)".into()));
        }
        if let Some((tier, day)) = self.early_access.iter().find(|(_, day)| **day > self.valid_from) {
            return Err(("early_access", format!("tier `{tier}` starts {day}, after valid_from: early means before")));
        }
        if self.segments.len() > MAX_CAMPAIGN_SEGMENTS {
            return Err(("segments", format!("name at most {MAX_CAMPAIGN_SEGMENTS} segments")));
        }
        if self.segments.iter().any(|name| name.trim().is_empty()) {
            return Err(("segments", "segment names must not be empty".into()));
        }
        if let Some(twice) = self.segments.iter().enumerate().find(|(i, n)| self.segments[..*i].contains(n)) {
            return Err(("segments", format!("segment `{}` is named twice", twice.1)));
        }
        Ok(())
    }

    /// Why a member cannot use a code given the campaign's segments the
    /// member's customer is in now (`member_segments`; only those named by
    /// the campaign matter), if they cannot.
    pub fn segment_refusal(&self, member_segments: &[String]) -> Option<String> {
        if self.segments.is_empty() || self.segments.iter().any(|s| member_segments.contains(s)) {
            return None;
        }
        Some(if self.segments.len() == 1 {
            format!("campaign `{}` is for customers in the segment {}", self.id, self.segments[0])
        } else {
            format!("campaign `{}` is for customers in one of the segments {}", self.id, self.segments.join(", "))
        })
    }

    /// Why a member of `tier` cannot use a code on `day`, if they cannot.
    pub fn refusal(&self, day: NaiveDate, tier: Option<&str>) -> Option<String> {
        let start = tier.and_then(|t| self.early_access.get(t)).copied().unwrap_or(self.valid_from);
        if day < start {
            return Some(format!("campaign `{}` starts on {start}", self.id));
        }
        if day > self.valid_until {
            return Some(format!("campaign `{}` ended on {}", self.id, self.valid_until));
        }
        if !self.tiers.is_empty() && !tier.is_some_and(|t| self.tiers.iter().any(|allowed| allowed == t)) {
            return Some(format!("campaign `{}` is for members of the tiers {}", self.id, self.tiers.join(", ")));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn codes_are_unique_checked_and_forgive_case_and_dashes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let codes: std::collections::HashSet<String> =
            (0..10_000).map(|_| CouponCode::generate(&mut rng).as_str().to_string()).collect();
        assert_eq!(codes.len(), 10_000);
        let code = CouponCode::generate(&mut rng);
        assert_eq!(CouponCode::parse(&code.printed().to_lowercase()).unwrap(), code);
        // Every single substitution and every swap of neighbours is caught.
        let bytes = code.as_str().as_bytes();
        for i in 0..RANDOM_LEN {
            for symbol in ALPHABET.iter().filter(|s| **s != bytes[i]) {
                let mut typo = bytes.to_vec();
                typo[i] = *symbol;
                assert!(CouponCode::parse(std::str::from_utf8(&typo).unwrap()).is_err());
            }
            if i + 1 < RANDOM_LEN && bytes[i] != bytes[i + 1] {
                let mut swapped = bytes.to_vec();
                swapped.swap(i, i + 1);
                assert!(CouponCode::parse(std::str::from_utf8(&swapped).unwrap()).is_err());
            }
        }
        assert!(CouponCode::parse("NOT-A-CODE").is_err());
    }

    #[test]
    fn campaigns_open_early_for_higher_tiers_and_say_why_not() {
        let campaign: Campaign = serde_json::from_str(
            r#"{"id": "soldes", "benefit": "-10 €", "valid_from": "2026-06-10", "valid_until": "2026-06-30",
                "early_access": {"gold": "2026-06-05"}}"#,
        )
        .unwrap();
        assert!(campaign.check().is_ok());
        let day = |d: &str| NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap();
        assert_eq!(campaign.refusal(day("2026-06-06"), Some("gold")), None);
        assert!(campaign.refusal(day("2026-06-06"), Some("silver")).unwrap().contains("starts on 2026-06-10"));
        assert!(campaign.refusal(day("2026-07-01"), Some("gold")).unwrap().contains("ended"));
        let late = Campaign { early_access: [("gold".to_string(), day("2026-06-11"))].into(), ..campaign };
        assert_eq!(late.check().unwrap_err().0, "early_access");
    }

    #[test]
    fn segment_targeted_campaigns_admit_only_members_of_their_segments() {
        let campaign: Campaign = serde_json::from_str(
            r#"{"id": "fideles", "benefit": "-5 €", "valid_from": "2026-06-01", "valid_until": "2026-06-30",
                "segments": ["lyonnais", "gros-paniers"]}"#,
        )
        .unwrap();
        assert!(campaign.check().is_ok());
        let none: [String; 0] = [];
        let why = campaign.segment_refusal(&none).unwrap();
        assert!(why.contains("one of the segments lyonnais, gros-paniers"), "{why}");
        assert_eq!(campaign.segment_refusal(&["gros-paniers".to_string()]), None);
        assert!(campaign.segment_refusal(&["autre".to_string()]).is_some());
        // No segments: everyone; a definition stored before segments existed still reads.
        let open: Campaign = serde_json::from_str(
            r#"{"id": "tous", "benefit": "-5 €", "valid_from": "2026-06-01", "valid_until": "2026-06-30"}"#,
        )
        .unwrap();
        assert!(open.segments.is_empty() && open.segment_refusal(&none).is_none());
        let twice = Campaign { segments: vec!["a".into(), "a".into()], ..campaign.clone() };
        assert_eq!(twice.check().unwrap_err().0, "segments");
        let blank = Campaign { segments: vec![" ".into()], ..campaign };
        assert_eq!(blank.check().unwrap_err().0, "segments");
    }
}
