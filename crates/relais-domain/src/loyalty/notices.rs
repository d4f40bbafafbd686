//! Service e-mails about a member's tier: an upgrade, the notice of a
//! downgrade with the day it takes effect and exactly what keeps the tier,
//! and the downgrade itself when that day comes.
//! They are about the member's contract, not marketing: they need no
//! marketing consent. Written in French or English, by the language the
//! customer declared (a `language` or `locale` trait), else the
//! organisation's.

use chrono::NaiveDate;
use serde_json::{Map, Value};

use super::ledger::{long_date, money};
use super::tiers::{KeepAnswer, Measure};
use super::Lang;

/// Profile traits that may declare a language, in order of preference.
const LANGUAGE_TRAITS: [&str; 5] = ["language", "lang", "locale", "preferred_language", "preferredLanguage"];

/// The language a profile declares (`fr`, `fr-FR`, `en_GB`, `English`…), if
/// it is one relais writes.
pub fn declared_lang(profile: &Map<String, Value>) -> Option<Lang> {
    LANGUAGE_TRAITS.iter().filter_map(|name| profile.get(*name)?.as_str()).find_map(|text| {
        let code: String = text.trim().chars().take(2).collect::<String>().to_ascii_lowercase();
        Lang::parse(&code)
    })
}

/// What the e-mail announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierLetterKind {
    /// The member moved up (names of the levels).
    Upgrade {
        /// The level left, if any.
        from: Option<String>,
        /// The level reached.
        to: String,
    },
    /// A downgrade is announced.
    Notice {
        /// The level held now.
        tier: String,
        /// The level the member would move to (`None`: no tier).
        next: Option<String>,
        /// The day the downgrade takes effect unless the member qualifies again.
        on: NaiveDate,
        /// What keeping the level takes by the day before `on`.
        keep: KeepAnswer,
    },
    /// The announced downgrade took effect.
    Downgrade {
        /// The level left.
        from: String,
        /// The level now held (`None`: no tier).
        to: Option<String>,
    },
}

/// A tier e-mail, ready to render in either language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierLetter {
    /// The programme's name.
    pub programme: String,
    /// What its points are called.
    pub unit: String,
    /// Its currency (spend thresholds).
    pub currency: String,
    /// What qualifies for a tier.
    pub measure: Measure,
    /// The rolling window, months.
    pub window_months: u32,
    /// The day it was decided.
    pub day: NaiveDate,
    /// What happened.
    pub kind: TierLetterKind,
}

impl TierLetter {
    /// An amount of the tier measure, in words.
    fn amount(&self, value: i64, lang: Lang) -> String {
        match (self.measure, lang) {
            (Measure::Spend, _) => money(value, &self.currency, lang),
            (Measure::Points, _) => format!("{value} {}", self.unit),
            (Measure::Engagement, Lang::Fr) => {
                format!("{value} participation{} récompensée{} (avis, enquêtes…)", plural(value), plural(value))
            }
            (Measure::Engagement, Lang::En) => {
                format!("{value} rewarded activit{}", if value > 1 { "ies" } else { "y" })
            }
        }
    }

    /// The subject line.
    pub fn subject(&self, lang: Lang) -> String {
        match (&self.kind, lang) {
            (TierLetterKind::Upgrade { to, .. }, Lang::Fr) => format!("{} : bienvenue au statut {to}", self.programme),
            (TierLetterKind::Upgrade { to, .. }, Lang::En) => format!("{}: welcome to {to}", self.programme),
            (TierLetterKind::Notice { tier, on, .. }, Lang::Fr) => {
                format!("{} : votre statut {tier} change le {}", self.programme, long_date(*on, lang))
            }
            (TierLetterKind::Notice { tier, on, .. }, Lang::En) => {
                format!("{}: your {tier} status changes on {}", self.programme, long_date(*on, lang))
            }
            (TierLetterKind::Downgrade { to: Some(to), .. }, Lang::Fr) => {
                format!("{} : vous êtes désormais au statut {to}", self.programme)
            }
            (TierLetterKind::Downgrade { to: Some(to), .. }, Lang::En) => {
                format!("{}: your status is now {to}", self.programme)
            }
            (TierLetterKind::Downgrade { from, to: None }, Lang::Fr) => {
                format!("{} : votre statut {from} a pris fin", self.programme)
            }
            (TierLetterKind::Downgrade { from, to: None }, Lang::En) => {
                format!("{}: your {from} status has ended", self.programme)
            }
        }
    }

    /// The plain-text body.
    pub fn text(&self, lang: Lang) -> String {
        let fr = lang == Lang::Fr;
        let day = long_date(self.day, lang);
        let window = self.window_months;
        let mut text = String::from(if fr { "Bonjour,\n\n" } else { "Hello,\n\n" });
        match &self.kind {
            TierLetterKind::Upgrade { from, to } => {
                text.push_str(&if fr {
                    format!("Depuis le {day}, vous êtes au statut {to} du programme {}", self.programme)
                } else {
                    format!("Since {day}, you hold the {to} status of {}", self.programme)
                });
                if let Some(from) = from {
                    text.push_str(&if fr { format!(" (vous étiez {from})") } else { format!(" (you were {from})") });
                }
                text.push_str(&if fr {
                    format!(
                        ".\n\nVotre statut se juge sur vos {window} derniers mois : il reste le vôtre tant que \
                         vous en remplissez la condition.\n"
                    )
                } else {
                    format!(".\n\nYour status is judged on your last {window} months: it stays yours as long as you meet its condition.\n")
                });
            }
            TierLetterKind::Notice { tier, next, on, keep } => {
                let on_text = long_date(*on, lang);
                let last = long_date(on.pred_opt().unwrap_or(*on), lang);
                let next = match (next, fr) {
                    (Some(next), true) => format!("au statut {next}"),
                    (Some(next), false) => format!("to the {next} status"),
                    (None, true) => "sans statut".to_string(),
                    (None, false) => "to no status".to_string(),
                };
                text.push_str(&if fr {
                    format!(
                        "À la revue du {day}, vos {window} derniers mois ne remplissent plus la condition du \
                         statut {tier} du programme {}. Sauf changement, vous passerez {next} le {on_text}.\n\n",
                        self.programme
                    )
                } else {
                    format!(
                        "At the review of {day}, your last {window} months no longer meet the condition of the {tier} \
                         status of {}. Unless that changes, you will move {next} on {on_text}.\n\n",
                        self.programme
                    )
                });
                let threshold = self.amount(keep.threshold, lang);
                let counted = self.amount(keep.counted, lang);
                let missing = self.amount(keep.missing, lang);
                text.push_str(&if fr {
                    format!(
                        "Pour garder le statut {tier}, il faut {threshold} sur {window} mois. Ce qui comptera encore \
                         le {last} : {counted}. Il vous manque {missing}, au plus tard le {last}.\n"
                    )
                } else {
                    format!(
                        "Keeping {tier} takes {threshold} over {window} months. What will still count on {last}: \
                         {counted}. You need {missing} more, by {last} at the latest.\n"
                    )
                });
            }
            TierLetterKind::Downgrade { from, to } => {
                text.push_str(&match (to, fr) {
                    (Some(to), true) => format!(
                        "Depuis le {day}, vous êtes au statut {to} du programme {} (vous étiez {from})",
                        self.programme
                    ),
                    (Some(to), false) => {
                        format!("Since {day}, you hold the {to} status of {} (you were {from})", self.programme)
                    }
                    (None, true) => {
                        format!("Depuis le {day}, votre statut {from} du programme {} a pris fin", self.programme)
                    }
                    (None, false) => format!("Since {day}, your {from} status of {} has ended", self.programme),
                });
                text.push_str(&if fr {
                    format!(
                        " : vos {window} derniers mois ne remplissaient plus la condition du statut {from} et le \
                         délai de grâce a pris fin. Vos points restent les vôtres.\n\n"
                    )
                } else {
                    format!(
                        ": your last {window} months no longer met the condition of the {from} status and the \
                         grace period has ended. Your points stay yours.\n\n"
                    )
                });
                text.push_str(match (to, fr) {
                    (Some(_), true) => {
                        "Dès que vous remplirez la condition d'un statut supérieur, vous y accéderez aussitôt.\n"
                    }
                    (Some(_), false) => "As soon as you meet the condition of a higher status, you move up at once.\n",
                    (None, true) => "Dès que vous remplirez la condition d'un statut, vous y accéderez aussitôt.\n",
                    (None, false) => "As soon as you meet the condition of a status, you reach it at once.\n",
                });
            }
        }
        text.push_str(if fr {
            "\nCe message concerne votre adhésion au programme ; il n'est pas publicitaire.\n"
        } else {
            "\nThis message is about your membership of the programme; it is not advertising.\n"
        });
        text
    }
}

fn plural(value: i64) -> &'static str {
    if value > 1 {
        "s"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn notice() -> TierLetter {
        TierLetter {
            programme: "Club Relais".into(),
            unit: "points".into(),
            currency: "EUR".into(),
            measure: Measure::Spend,
            window_months: 12,
            day: day("2026-04-01"),
            kind: TierLetterKind::Notice {
                tier: "Or".into(),
                next: Some("Argent".into()),
                on: day("2026-05-01"),
                keep: KeepAnswer {
                    tier: "gold".into(),
                    review_on: day("2026-04-30"),
                    threshold: 30_000,
                    counted: 16_000,
                    missing: 14_000,
                },
            },
        }
    }

    #[test]
    fn a_downgrade_notice_names_both_tiers_the_day_and_what_keeps_the_tier() {
        let letter = notice();
        assert_eq!(letter.subject(Lang::Fr), "Club Relais : votre statut Or change le 1er mai 2026");
        let fr = letter.text(Lang::Fr);
        assert!(fr.contains("vous passerez au statut Argent le 1er mai 2026"), "{fr}");
        assert!(fr.contains("il faut 300,00 EUR sur 12 mois"), "{fr}");
        assert!(fr.contains("Il vous manque 140,00 EUR, au plus tard le 30 avril 2026"), "{fr}");
        let en = letter.text(Lang::En);
        assert_eq!(letter.subject(Lang::En), "Club Relais: your Or status changes on 1 May 2026");
        assert!(en.contains("you will move to the Argent status on 1 May 2026"), "{en}");
        assert!(en.contains("You need 140.00 EUR more, by 30 April 2026 at the latest"), "{en}");
        let bottom = TierLetter {
            kind: match letter.kind {
                TierLetterKind::Notice { tier, on, keep, .. } => TierLetterKind::Notice { tier, next: None, on, keep },
                other => other,
            },
            measure: Measure::Points,
            ..notice()
        };
        assert!(bottom.text(Lang::Fr).contains("vous passerez sans statut"));
        assert!(bottom.text(Lang::En).contains("You need 14000 points more"));
    }

    #[test]
    fn an_upgrade_welcomes_the_member_to_the_new_tier() {
        let letter = TierLetter {
            kind: TierLetterKind::Upgrade { from: Some("Argent".into()), to: "Or".into() },
            day: day("2026-03-10"),
            ..notice()
        };
        assert_eq!(letter.subject(Lang::Fr), "Club Relais : bienvenue au statut Or");
        assert!(letter
            .text(Lang::Fr)
            .contains("Depuis le 10 mars 2026, vous êtes au statut Or du programme Club Relais (vous étiez Argent)"));
        assert_eq!(letter.subject(Lang::En), "Club Relais: welcome to Or");
        assert!(letter
            .text(Lang::En)
            .contains("Since 10 March 2026, you hold the Or status of Club Relais (you were Argent)"));
    }

    #[test]
    fn a_downgrade_says_which_tier_was_left_and_which_is_held_now() {
        let letter = TierLetter {
            kind: TierLetterKind::Downgrade { from: "Or".into(), to: Some("Argent".into()) },
            day: day("2026-05-01"),
            ..notice()
        };
        assert_eq!(letter.subject(Lang::Fr), "Club Relais : vous êtes désormais au statut Argent");
        let fr = letter.text(Lang::Fr);
        assert!(fr.contains("Depuis le 1er mai 2026, vous êtes au statut Argent du programme Club Relais (vous étiez Or) : vos 12 derniers mois ne remplissaient plus la condition du statut Or et le délai de grâce a pris fin."), "{fr}");
        assert!(fr.contains("condition d'un statut supérieur"), "{fr}");
        assert_eq!(letter.subject(Lang::En), "Club Relais: your status is now Argent");
        let en = letter.text(Lang::En);
        assert!(en.contains("Since 1 May 2026, you hold the Argent status of Club Relais (you were Or): your last 12 months no longer met the condition of the Or status and the grace period has ended."), "{en}");
        assert!(en.contains("the condition of a higher status"), "{en}");
        let ended = TierLetter { kind: TierLetterKind::Downgrade { from: "Argent".into(), to: None }, ..letter };
        assert_eq!(ended.subject(Lang::Fr), "Club Relais : votre statut Argent a pris fin");
        assert!(ended.text(Lang::Fr).contains("votre statut Argent du programme Club Relais a pris fin"));
        assert_eq!(ended.subject(Lang::En), "Club Relais: your Argent status has ended");
        assert!(ended.text(Lang::En).contains("Your points stay yours."));
        assert!(ended.text(Lang::Fr).contains("la condition d'un statut, vous y accéderez aussitôt"));
    }

    #[test]
    fn the_declared_language_wins_when_relais_writes_it() {
        let profile = |json: Value| json.as_object().unwrap().clone();
        assert_eq!(declared_lang(&profile(serde_json::json!({"language": "en-GB"}))), Some(Lang::En));
        assert_eq!(declared_lang(&profile(serde_json::json!({"locale": "fr_FR"}))), Some(Lang::Fr));
        assert_eq!(declared_lang(&profile(serde_json::json!({"language": "English"}))), Some(Lang::En));
        assert_eq!(declared_lang(&profile(serde_json::json!({"language": "de", "locale": "fr-CH"}))), Some(Lang::Fr));
        assert_eq!(declared_lang(&profile(serde_json::json!({"language": "de"}))), None);
        assert_eq!(declared_lang(&Map::new()), None);
    }
}
