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

/// Whether `bytes` hold 15 digits or more in a row (single spaces or dashes
/// between them allowed): the only texts worth a full search.
pub fn has_long_digit_run(bytes: &[u8]) -> bool {
    if bytes.len() < 15 {
        return false;
    }
    let mut run = 0;
    let mut previous_separator = false;
    for &b in bytes {
        if b.is_ascii_digit() {
            run += 1;
            previous_separator = false;
            if run >= 15 {
                return true;
            }
        } else if (b == b' ' || b == b'-') && run > 0 && !previous_separator {
            previous_separator = true;
        } else {
            run = 0;
            previous_separator = false;
        }
    }
    false
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
    let mut trail: Vec<Segment<'_>> = Vec::new();
    scrub_into(value, &mut trail, policy, &mut first);
    first.map(|found| if path.is_empty() { found } else { format!("{path}.{found}") })
}

/// One step of the path to a value (built into text only when a number is found).
#[derive(Clone, Copy)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn path_text(trail: &[Segment<'_>]) -> String {
    let mut text = String::new();
    for segment in trail {
        match segment {
            Segment::Key(key) => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Segment::Index(i) => text.push_str(&format!("[{i}]")),
        }
    }
    text
}

fn scrub_into<'a>(value: &'a mut Value, trail: &mut Vec<Segment<'a>>, policy: CardPolicy, first: &mut Option<String>) {
    match value {
        Value::String(text) => {
            // Cheap pre-check: most strings hold no run of 15 digits.
            if !has_long_digit_run(text.as_bytes()) {
                return;
            }
            let ranges = find_card_numbers(text);
            if ranges.is_empty() {
                return;
            }
            if first.is_none() {
                *first = Some(path_text(trail));
            }
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
            // Only integers of 15 digits or more can be card numbers.
            let large = number.as_u64().is_some_and(|n| n >= 100_000_000_000_000)
                || number.as_f64().is_some_and(|f| f >= 1e14 && f.fract() == 0.0);
            if !large {
                return;
            }
            let text = number.to_string();
            if !find_card_numbers(&text).is_empty() {
                if first.is_none() {
                    *first = Some(path_text(trail));
                }
                if policy == CardPolicy::Mask {
                    *value = Value::String(masked(&text));
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                trail.push(Segment::Index(i));
                scrub_into(item, trail, policy, first);
                trail.pop();
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                trail.push(Segment::Key(key));
                scrub_into(item, trail, policy, first);
                trail.pop();
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
        assert!(has_long_digit_run(b"paid with 4111-1111-1111-1111"));
        assert!(!has_long_digit_run(b"2026-11-23T10:00:00.000000Z and 06 12 34 56"));
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
