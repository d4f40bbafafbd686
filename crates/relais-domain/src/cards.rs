//! Payment card numbers (PAN) are never stored: they are found in any text by
//! the payment networks' number ranges and the Luhn check, then the message is
//! refused or the number cut to its last four digits.
//!
//! relais's own loyalty card numbers start with 9 (ISO/IEC 7812 "national
//! use"), a range no payment network issues, so the two never collide.

use serde_json::Value;

/// What to do with a payment card number found in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CardPolicy {
    /// Refuse the message with a reason naming the field.
    #[default]
    Reject,
    /// Replace the number by its last four digits (`****1111`).
    Mask,
}

/// Whether the digits pass the Luhn check.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(*d);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Whether a number of this length and prefix lies in a payment network's range
/// (Visa, Mastercard, American Express, Discover, JCB, Diners, UnionPay, Maestro).
pub fn in_network_range(digits: &[u8]) -> bool {
    let prefix = |n: usize| digits.iter().take(n).fold(0u32, |acc, d| acc * 10 + u32::from(*d));
    let len = digits.len();
    let p1 = prefix(1);
    let p2 = prefix(2);
    let p3 = prefix(3);
    let p4 = prefix(4);
    match len {
        15 => p2 == 34 || p2 == 37,
        16..=19 => {
            p1 == 4
                || (51..=55).contains(&p2)
                || (2221..=2720).contains(&p4)
                || p4 == 6011
                || (644..=649).contains(&p3)
                || p2 == 65
                || (3528..=3589).contains(&p4)
                || (300..=305).contains(&p3)
                || p2 == 36
                || p2 == 38
                || p2 == 39
                || p2 == 62
                || p2 == 50
                || (56..=58).contains(&p2)
                || p2 == 67
        }
        _ => false,
    }
}

/// Byte ranges of payment card numbers in `text`: 15 to 19 digits, possibly
/// grouped by single spaces or dashes, in a network's range and passing Luhn.
pub fn find_card_numbers(text: &str) -> Vec<std::ops::Range<usize>> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() || (i > 0 && bytes[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        // A run of digits with single separators between groups.
        let start = i;
        let mut digits = Vec::with_capacity(19);
        let mut end = i;
        let mut j = i;
        while j < bytes.len() {
            if bytes[j].is_ascii_digit() {
                digits.push(bytes[j] - b'0');
                j += 1;
                end = j;
            } else if (bytes[j] == b' ' || bytes[j] == b'-') && j + 1 < bytes.len() && bytes[j + 1].is_ascii_digit() {
                j += 1;
            } else {
                break;
            }
            if digits.len() > 19 {
                break;
            }
        }
        if (15..=19).contains(&digits.len()) && in_network_range(&digits) && luhn_valid(&digits) {
            found.push(start..end);
        }
        i = end.max(i + 1);
    }
    found
}

/// The last four digits of a card number, masked (`****1111`).
fn masked(number: &str) -> String {
    let digits: Vec<char> = number.chars().filter(char::is_ascii_digit).collect();
    let tail: String = digits[digits.len().saturating_sub(4)..].iter().collect();
    format!("****{tail}")
}

/// Find card numbers in every string and number of `value`; under
/// `CardPolicy::Mask` replace them, under `Reject` leave the value untouched.
/// Returns the path of the first field that held one.
pub fn scrub(value: &mut Value, path: &str, policy: CardPolicy) -> Option<String> {
    let mut first = None;
    scrub_into(value, path, policy, &mut first);
    first
}

fn scrub_into(value: &mut Value, path: &str, policy: CardPolicy, first: &mut Option<String>) {
    match value {
        Value::String(text) => {
            // Cheap pre-check: most strings hold too few digits to matter.
            if text.bytes().filter(u8::is_ascii_digit).count() < 15 {
                return;
            }
            let ranges = find_card_numbers(text);
            if ranges.is_empty() {
                return;
            }
            first.get_or_insert_with(|| path.to_string());
            if policy == CardPolicy::Mask {
                let mut out = String::with_capacity(text.len());
                let mut last = 0;
                for range in ranges {
                    out.push_str(&text[last..range.start]);
                    out.push_str(&masked(&text[range.clone()]));
                    last = range.end;
                }
                out.push_str(&text[last..]);
                *text = out;
            }
        }
        Value::Number(number) => {
            let text = number.to_string();
            if text.len() >= 15 && !find_card_numbers(&text).is_empty() {
                first.get_or_insert_with(|| path.to_string());
                if policy == CardPolicy::Mask {
                    *value = Value::String(masked(&text));
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                scrub_into(item, &format!("{path}[{i}]"), policy, first);
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                scrub_into(item, &child, policy, first);
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn test_card_numbers_of_each_network_are_found() {
        for number in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "378282246310005",
            "6011111111111117",
            "3530111333300000",
            "2223003122003222",
        ] {
            assert_eq!(find_card_numbers(number).len(), 1, "{number}");
        }
        assert_eq!(find_card_numbers("paid with 4111111111111111 today"), vec![10..26]);
    }

    #[test]
    fn look_alikes_are_left_alone() {
        // Luhn fails; a loyalty card in the 9 range; an EAN-13; a phone number; a timestamp.
        for text in ["4111111111111112", "9250000000000018", "4006381333931", "+33612345678", "1700000000000123"] {
            assert!(find_card_numbers(text).is_empty(), "{text}");
        }
    }

    #[test]
    fn scrub_names_the_field_and_masks_when_asked() {
        let mut value = json!({"properties": {"note": "card 4111 1111 1111 1111 ok", "n": 4111111111111111u64}});
        let before = value.clone();
        assert_eq!(scrub(&mut value, "", CardPolicy::Reject).as_deref(), Some("properties.n"));
        assert_eq!(value, before);
        scrub(&mut value, "", CardPolicy::Mask);
        assert_eq!(value, json!({"properties": {"note": "card ****1111 ok", "n": "****1111"}}));
    }
}
