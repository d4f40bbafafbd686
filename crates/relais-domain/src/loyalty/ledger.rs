//! The ledger's rules: point lots consumed oldest expiry first, and the reason
//! of every entry, stored as facts and rendered in plain French or English.
//!
//! The ledger is double-entry: every transaction writes the member's entry and
//! its counterpart on one of the programme's accounts (issued, redeemed,
//! expired, adjusted, closed), so the sum of all entries is zero.

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use super::{Lang, Points};

/// The accounts of the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Account {
    /// The member's own balance.
    Member,
    /// Points the programme gave (earn rules).
    Issued,
    /// Points members spent.
    Redeemed,
    /// Points that reached their expiry date.
    Expired,
    /// Manual corrections by the team.
    Adjusted,
    /// Balances closed by an erasure.
    Closed,
    /// Balances moved between members of one person (merges).
    Transfer,
}

names!(Account {
    Member => "member",
    Issued => "issued",
    Redeemed => "redeemed",
    Expired => "expired",
    Adjusted => "adjusted",
    Closed => "closed",
    Transfer => "transfer",
});

/// Points earned together, with the day they stop being valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lot {
    /// Its id (the entry that created it).
    pub id: String,
    /// Points not yet spent or expired.
    pub remaining: Points,
    /// First day it is no longer valid; `None`: never expires.
    pub expires_on: Option<NaiveDate>,
}

/// What a debit takes from each lot.
pub type Allocation = Vec<(String, Points)>;

/// Take `points` from `lots`, those expiring first first (never-expiring ones
/// last, ties by lot id). `Err` with the balance when the lots cannot cover it.
pub fn allocate(lots: &[Lot], points: Points) -> Result<Allocation, Points> {
    let balance: Points = lots.iter().map(|l| l.remaining.max(0)).sum();
    if points > balance {
        return Err(balance);
    }
    let mut order: Vec<&Lot> = lots.iter().filter(|l| l.remaining > 0).collect();
    order.sort_by(|a, b| match (a.expires_on, b.expires_on) {
        (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.id.cmp(&b.id)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.id.cmp(&b.id),
    });
    let mut left = points;
    let mut taken = Vec::new();
    for lot in order {
        if left == 0 {
            break;
        }
        let take = left.min(lot.remaining);
        taken.push((lot.id.clone(), take));
        left -= take;
    }
    Ok(taken)
}

/// Why an entry was written: facts, rendered on demand in the reader's language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReasonKind {
    /// Points per unit of currency on an order.
    Spend {
        /// Points per unit, as written in the rule.
        rate: String,
        /// The order's total.
        amount_minor: i64,
        /// Its currency.
        currency: String,
        /// The order's id.
        order_id: Option<String>,
        /// Its store.
        store: Option<String>,
        /// Whether the rule's cap cut it.
        capped: bool,
    },
    /// A bonus for an engagement event.
    Event {
        /// The event's name.
        event: String,
        /// Whether the rule's cap cut it.
        capped: bool,
    },
    /// The first-purchase bonus.
    FirstPurchase {
        /// The order's id.
        order_id: Option<String>,
    },
    /// Points taken back by a refund.
    Refund {
        /// The refunded order.
        order_id: Option<String>,
        /// Amount refunded now.
        refunded_minor: i64,
        /// Its currency.
        currency: String,
        /// Points the refund should have taken back but the balance no longer held.
        unrecovered: Points,
    },
    /// Points spent.
    Redemption {
        /// What for, as the till or the app said.
        reason: String,
    },
    /// A reward redemption called off: its points given back.
    Cancellation {
        /// The reward.
        reward: String,
        /// The membership that reserved it, when it has since joined the one
        /// credited (an unmerge gives these points back to it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reserved_by: Option<String>,
    },
    /// A reservation nobody confirmed within its hold: released by the
    /// scheduled job, its points given back.
    Released {
        /// The reward.
        reward: String,
        /// The hold it outlived, in days.
        hold_days: u32,
        /// As for a cancellation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reserved_by: Option<String>,
    },
    /// The bonus of a coupon.
    Coupon {
        /// The campaign.
        campaign: String,
        /// The order it was used for.
        order_id: Option<String>,
    },
    /// The birthday bonus.
    Birthday,
    /// An instant win.
    Draw {
        /// The draw's rule.
        rule: String,
        /// Its odds, `1/20`.
        odds: String,
    },
    /// A challenge completed.
    Challenge {
        /// The rule.
        rule: String,
        /// The badge won with it.
        badge: Option<String>,
    },
    /// A streak reached.
    Streak {
        /// The rule.
        rule: String,
        /// Periods in a row.
        length: u32,
    },
    /// Points that reached their expiry date.
    Expiry,
    /// A manual correction.
    Adjustment {
        /// The mandatory reason.
        reason: String,
        /// Who made it.
        actor: String,
    },
    /// The balance of another membership of the same person joined this one.
    MergedIn {
        /// The membership that joined.
        from: String,
    },
    /// This membership's balance joined another one of the same person.
    MergedOut {
        /// The membership it joined.
        into: String,
    },
    /// The account closed because the person's data was erased.
    Closure,
}

/// An entry's reason with the day it refers to (organisation's calendar).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// What happened.
    #[serde(flatten)]
    pub kind: ReasonKind,
    /// The day.
    pub day: NaiveDate,
}

const MONTHS_EN: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const MONTHS_FR: [&str; 12] = [
    "janvier",
    "février",
    "mars",
    "avril",
    "mai",
    "juin",
    "juillet",
    "août",
    "septembre",
    "octobre",
    "novembre",
    "décembre",
];

/// `3 March 2026` / `3 mars 2026`.
pub fn long_date(day: NaiveDate, lang: Lang) -> String {
    let month = day.month0() as usize;
    match lang {
        Lang::En => format!("{} {} {}", day.day(), MONTHS_EN[month], day.year()),
        Lang::Fr => {
            let d = if day.day() == 1 { "1er".to_string() } else { day.day().to_string() };
            format!("{d} {} {}", MONTHS_FR[month], day.year())
        }
    }
}

/// `42.50 EUR` / `42,50 EUR`.
pub fn money(minor: i64, currency: &str, lang: Lang) -> String {
    let exponent = crate::money::currency_exponent(currency);
    let div = 10i64.pow(exponent);
    let sign = if minor < 0 { "-" } else { "" };
    let (whole, fraction) = (minor.abs() / div, minor.abs() % div);
    let separator = if lang == Lang::Fr { "," } else { "." };
    if exponent == 0 {
        format!("{sign}{whole} {currency}")
    } else {
        format!("{sign}{whole}{separator}{fraction:0width$} {currency}", width = exponent as usize)
    }
}

impl Reason {
    /// The plain-language line: "+42 points: 1 point per euro, order 1234 at
    /// the lyon-part-dieu store on 3 March 2026".
    pub fn render(&self, points: Points, unit: &str, lang: Lang) -> String {
        let date = long_date(self.day, lang);
        let fr = lang == Lang::Fr;
        let why = match &self.kind {
            ReasonKind::Spend { rate, amount_minor, currency, order_id, store, capped } => {
                // "1 point per euro": a rate of one names the unit in the singular.
                let unit = if rate == "1" { unit.strip_suffix('s').unwrap_or(unit) } else { unit };
                let per = if currency == "EUR" { "euro" } else { currency.as_str() };
                let mut text = if fr {
                    format!("{rate} {unit} par {per} dépensé, commande")
                } else {
                    format!("{rate} {unit} per {per} spent, order")
                };
                if let Some(order) = order_id {
                    text.push_str(&format!(" {order}"));
                }
                text.push_str(&format!(" ({})", money(*amount_minor, currency, lang)));
                if let Some(store) = store {
                    text.push_str(&if fr { format!(" au magasin {store}") } else { format!(" at the {store} store") });
                }
                text.push_str(&if fr { format!(" le {date}") } else { format!(" on {date}") });
                if *capped {
                    text.push_str(if fr { " (plafond de la règle atteint)" } else { " (the rule's cap was reached)" });
                }
                text
            }
            ReasonKind::Event { event, capped } => {
                let mut text = if fr {
                    format!("bonus « {event} » le {date}")
                } else {
                    format!("bonus for \"{event}\" on {date}")
                };
                if *capped {
                    text.push_str(if fr { " (plafond de la règle atteint)" } else { " (the rule's cap was reached)" });
                }
                text
            }
            ReasonKind::FirstPurchase { order_id } => {
                let order = order_id.as_deref().map(|o| format!(" {o}")).unwrap_or_default();
                if fr {
                    format!("bonus de premier achat, commande{order} le {date}")
                } else {
                    format!("first purchase bonus, order{order} on {date}")
                }
            }
            ReasonKind::Refund { order_id, refunded_minor, currency, unrecovered } => {
                let order = order_id.as_deref().map(|o| format!(" {o}")).unwrap_or_default();
                let amount = money(*refunded_minor, currency, lang);
                let mut text = if fr {
                    format!("remboursement de {amount} sur la commande{order} le {date}")
                } else {
                    format!("refund of {amount} on order{order} on {date}")
                };
                if *unrecovered > 0 {
                    text.push_str(&if fr {
                        format!(" ({unrecovered} {unit} déjà dépensés n'ont pas été repris)")
                    } else {
                        format!(" ({unrecovered} {unit} already spent were not taken back)")
                    });
                }
                text
            }
            ReasonKind::Redemption { reason } => {
                if fr {
                    format!("utilisation : {reason}, le {date}")
                } else {
                    format!("redeemed: {reason}, on {date}")
                }
            }
            ReasonKind::Cancellation { reward, .. } => {
                if fr {
                    format!("annulation de la récompense « {reward} », points rendus le {date}")
                } else {
                    format!("redemption of \"{reward}\" cancelled, points given back on {date}")
                }
            }
            ReasonKind::Released { reward, hold_days, .. } => {
                if fr {
                    format!(
                        "réservation de la récompense « {reward} » non confirmée sous {hold_days} jour{}, points rendus le {date}",
                        if *hold_days > 1 { "s" } else { "" }
                    )
                } else {
                    format!(
                        "reservation of \"{reward}\" not confirmed within {hold_days} day{}, points given back on {date}",
                        if *hold_days > 1 { "s" } else { "" }
                    )
                }
            }
            ReasonKind::Coupon { campaign, order_id } => {
                let order = order_id.as_deref().map(|o| format!(" {o}")).unwrap_or_default();
                if fr {
                    format!("bonus du coupon « {campaign} », commande{order} le {date}")
                } else {
                    format!("bonus of the \"{campaign}\" coupon, order{order} on {date}")
                }
            }
            ReasonKind::Birthday => {
                if fr {
                    format!("bonus d'anniversaire, le {date}")
                } else {
                    format!("birthday bonus, on {date}")
                }
            }
            ReasonKind::Draw { rule, odds } => {
                if fr {
                    format!(
                        "gagné au tirage « {rule} » (une chance sur {}) le {date}",
                        odds.split('/').nth(1).unwrap_or(odds)
                    )
                } else {
                    format!("won at the \"{rule}\" draw (odds {odds}) on {date}")
                }
            }
            ReasonKind::Challenge { rule, badge } => {
                let badge =
                    badge.as_deref().map(|b| if fr { format!(", badge « {b} »") } else { format!(", badge \"{b}\"") });
                if fr {
                    format!("défi « {rule} » réussi{} le {date}", badge.unwrap_or_default())
                } else {
                    format!("challenge \"{rule}\" completed{} on {date}", badge.unwrap_or_default())
                }
            }
            ReasonKind::Streak { rule, length } => {
                if fr {
                    format!("série « {rule} » : {length} périodes d'affilée, le {date}")
                } else {
                    format!("streak \"{rule}\": {length} periods in a row, on {date}")
                }
            }
            ReasonKind::Expiry => {
                if fr {
                    format!("{unit} arrivés à expiration le {date}")
                } else {
                    format!("{unit} expired on {date}")
                }
            }
            ReasonKind::Adjustment { reason, actor } => {
                if fr {
                    format!("correction par {actor} : {reason}, le {date}")
                } else {
                    format!("adjustment by {actor}: {reason}, on {date}")
                }
            }
            ReasonKind::MergedIn { from } => {
                if fr {
                    format!("solde de l'adhésion {from} du même client, réunie avec celle-ci le {date}")
                } else {
                    format!("balance of membership {from} of the same customer, joined with this one on {date}")
                }
            }
            ReasonKind::MergedOut { into } => {
                if fr {
                    format!("solde transféré à l'adhésion {into} du même client le {date}")
                } else {
                    format!("balance moved to membership {into} of the same customer on {date}")
                }
            }
            ReasonKind::Closure => {
                if fr {
                    format!("compte clôturé à l'effacement des données du client le {date}")
                } else {
                    format!("account closed when the customer's data was erased on {date}")
                }
            }
        };
        format!("{points:+} {unit}: {why}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn lot(id: &str, remaining: Points, expires: Option<&str>) -> Lot {
        Lot { id: id.into(), remaining, expires_on: expires.map(day) }
    }

    #[test]
    fn debits_take_the_lots_that_expire_first() {
        let lots = [
            lot("a", 50, None),
            lot("b", 30, Some("2027-01-01")),
            lot("c", 20, Some("2026-06-01")),
            lot("d", 0, Some("2026-01-01")),
        ];
        assert_eq!(allocate(&lots, 40).unwrap(), vec![("c".to_string(), 20), ("b".to_string(), 20)]);
        assert_eq!(allocate(&lots, 100).unwrap().iter().map(|(_, p)| p).sum::<Points>(), 100);
        assert_eq!(allocate(&lots, 101), Err(100));
        assert_eq!(allocate(&[], 1), Err(0));
    }

    #[test]
    fn reasons_read_plainly_in_both_languages() {
        let reason = Reason {
            kind: ReasonKind::Spend {
                rate: "1".into(),
                amount_minor: 4_250,
                currency: "EUR".into(),
                order_id: Some("1234".into()),
                store: Some("Lyon Part-Dieu".into()),
                capped: false,
            },
            day: day("2026-03-03"),
        };
        assert_eq!(
            reason.render(42, "points", Lang::En),
            "+42 points: 1 point per euro spent, order 1234 (42.50 EUR) at the Lyon Part-Dieu store on 3 March 2026"
        );
        assert_eq!(
            reason.render(42, "points", Lang::Fr),
            "+42 points: 1 point par euro dépensé, commande 1234 (42,50 EUR) au magasin Lyon Part-Dieu le 3 mars 2026"
        );
        let expiry = Reason { kind: ReasonKind::Expiry, day: day("2026-04-01") };
        assert_eq!(expiry.render(-10, "miles", Lang::Fr), "-10 miles: miles arrivés à expiration le 1er avril 2026");
        let stored = serde_json::to_string(&reason).unwrap();
        assert_eq!(serde_json::from_str::<Reason>(&stored).unwrap(), reason);
    }

    #[test]
    fn a_released_reservation_says_why_the_points_came_back() {
        let released = Reason {
            kind: ReasonKind::Released { reward: "bon-10".into(), hold_days: 7, reserved_by: None },
            day: day("2026-03-08"),
        };
        assert_eq!(
            released.render(1000, "points", Lang::Fr),
            "+1000 points: réservation de la récompense « bon-10 » non confirmée sous 7 jours, points rendus le 8 mars 2026"
        );
        assert_eq!(
            released.render(1000, "points", Lang::En),
            "+1000 points: reservation of \"bon-10\" not confirmed within 7 days, points given back on 8 March 2026"
        );
        let stored = serde_json::to_string(&released).unwrap();
        assert!(stored.contains(r#""kind":"released""#), "{stored}");
        assert_eq!(serde_json::from_str::<Reason>(&stored).unwrap(), released);
    }
}
