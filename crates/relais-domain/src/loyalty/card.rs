//! Loyalty card numbers: 16 digits, `9251` then 11 random digits then a Luhn
//! check digit. The leading 9 is ISO/IEC 7812's "national use" range, which no
//! payment network issues, so a till or relais's own card-number filter never
//! takes a loyalty card for a bank card; the check digit catches a mistyped
//! digit or two swapped neighbours.

use rand::Rng;

/// The prefix of every relais loyalty card.
pub const PREFIX: &str = "9251";

/// A valid loyalty card number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CardNumber(String);

impl CardNumber {
    /// A new random card number.
    pub fn generate(rng: &mut impl Rng) -> CardNumber {
        let mut digits: Vec<u8> = PREFIX.bytes().map(|b| b - b'0').collect();
        digits.extend((0..11).map(|_| rng.gen_range(0..10u8)));
        digits.push(check_digit(&digits));
        CardNumber(digits.iter().map(|d| char::from(b'0' + d)).collect())
    }

    /// Parse a typed or scanned number (spaces and dashes ignored).
    pub fn parse(raw: &str) -> Result<CardNumber, String> {
        let digits: String = raw.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        let bytes: Vec<u8> = digits.bytes().map(|b| b.wrapping_sub(b'0')).collect();
        if digits.len() != 16 || bytes.iter().any(|d| *d > 9) || !digits.starts_with(PREFIX) {
            return Err(format!("`{raw}` is not a loyalty card number: expected 16 digits starting with {PREFIX}"));
        }
        if !crate::cards::luhn_valid(&bytes) {
            return Err(format!("`{raw}` is not a loyalty card number: its check digit is wrong (a mistyped digit?)"));
        }
        Ok(CardNumber(digits))
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Grouped by four, as printed on the card.
    pub fn printed(&self) -> String {
        self.0.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(" ")
    }
}

impl std::fmt::Display for CardNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The Luhn digit that makes `digits` followed by it valid.
fn check_digit(digits: &[u8]) -> u8 {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let v = u32::from(*d);
            if i % 2 == 0 {
                let doubled = v * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                v
            }
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn generated_numbers_parse_and_are_never_payment_cards() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..1_000 {
            let card = CardNumber::generate(&mut rng);
            assert_eq!(CardNumber::parse(card.as_str()).unwrap(), card);
            let digits: Vec<u8> = card.as_str().bytes().map(|b| b - b'0').collect();
            assert!(crate::cards::luhn_valid(&digits));
            assert!(!crate::cards::in_network_range(&digits), "{card} lies in a payment range");
            assert!(crate::cards::find_card_numbers(card.as_str()).is_empty());
        }
    }

    #[test]
    fn a_mistyped_digit_or_swapped_neighbours_are_caught() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let card = CardNumber::generate(&mut rng);
        let mut typo = card.as_str().as_bytes().to_vec();
        typo[9] = if typo[9] == b'9' { b'0' } else { typo[9] + 1 };
        assert!(CardNumber::parse(std::str::from_utf8(&typo).unwrap()).is_err());
        let digits = card.as_str().as_bytes();
        let swap = (4..15).find(|i| {
            digits[*i] != digits[i + 1]
                && (digits[*i], digits[i + 1]) != (b'0', b'9')
                && (digits[*i], digits[i + 1]) != (b'9', b'0')
        });
        if let Some(i) = swap {
            let mut swapped = digits.to_vec();
            swapped.swap(i, i + 1);
            assert!(CardNumber::parse(std::str::from_utf8(&swapped).unwrap()).is_err());
        }
        assert!(CardNumber::parse(&card.printed()).is_ok());
        assert!(CardNumber::parse("4111 1111 1111 1111").is_err());
    }
}
