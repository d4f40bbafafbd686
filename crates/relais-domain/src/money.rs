//! Money as integer minor units (cents) with an ISO 4217 currency code.

use serde::{Deserialize, Serialize};

/// An amount in minor units (cents for EUR).
pub type MinorUnits = i64;

/// The number of decimals of a currency's minor unit (ISO 4217); 2 when unknown.
pub fn currency_exponent(code: &str) -> u32 {
    match code {
        "JPY" | "KRW" | "CLP" | "ISK" | "VND" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "KWD" | "OMR" | "TND" | "JOD" | "IQD" | "LYD" => 3,
        _ => 2,
    }
}

/// An amount of money in a currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    /// Integer minor units.
    pub minor: MinorUnits,
    /// Upper-case ISO 4217 code.
    pub currency: String,
}

impl Money {
    /// Convert a decimal amount in major units, as tracking libraries send it
    /// (`"total": 42.5`), rounding half away from zero to the nearest minor unit.
    pub fn from_major(amount: f64, currency: &str) -> Option<Money> {
        if !amount.is_finite() {
            return None;
        }
        let currency = currency.trim().to_ascii_uppercase();
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let scale = 10f64.powi(currency_exponent(&currency) as i32);
        let minor = (amount * scale).round();
        if minor.abs() > 9.0e15 {
            return None;
        }
        Some(Money { minor: minor as i64, currency })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_amounts_become_exact_cents() {
        assert_eq!(Money::from_major(42.5, "eur").unwrap().minor, 4250);
        assert_eq!(Money::from_major(0.1 + 0.2, "EUR").unwrap().minor, 30);
        assert_eq!(Money::from_major(1500.0, "JPY").unwrap().minor, 1500);
    }

    #[test]
    fn nonsense_currencies_and_amounts_are_refused() {
        assert!(Money::from_major(1.0, "euro").is_none());
        assert!(Money::from_major(f64::NAN, "EUR").is_none());
    }
}
