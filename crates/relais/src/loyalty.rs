//! Programme files as operators write them (TOML, or JSON through the API),
//! read into checked programmes with errors that name the line and the reason;
//! the programme's rules as a page anyone can read, and the digital card; and
//! the operations the command line and the API share (apply, the scheduled
//! jobs, issuing coupons), each with its audit record.

use chrono::NaiveDate;
use relais_domain::loyalty::coupons::{Campaign, CouponCode};
use relais_domain::loyalty::rules::{ProgrammeFile, Rounding};
use relais_domain::loyalty::{Lang, Programme, ProgrammeError};

use crate::store::{Audit, Engine, StoreError};

/// The format of a programme file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// TOML (`relais loyalty apply FILE.toml`, `Content-Type: application/toml`).
    Toml,
    /// JSON (the API's default).
    Json,
}

/// Why a programme file is refused, with the line when known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct FileError {
    /// 1-based line of the file.
    pub line: Option<usize>,
    /// Where and why.
    pub reason: String,
}

/// Read and check a programme file.
pub fn parse_programme(text: &str, format: FileFormat) -> Result<Programme, FileError> {
    let file: ProgrammeFile = match format {
        FileFormat::Toml => toml::from_str(text).map_err(|e| FileError {
            line: e.span().map(|span| line_of(text, span.start)),
            reason: e.message().to_string(),
        })?,
        FileFormat::Json => {
            serde_json::from_str(text).map_err(|e| FileError { line: Some(e.line()), reason: e.to_string() })?
        }
    };
    file.check().map_err(|e| locate(text, format, e))
}

/// A refused change of a programme in force, as a file error.
pub fn change_refused(text: &str, format: FileFormat, error: ProgrammeError) -> FileError {
    locate(text, format, error)
}

fn locate(text: &str, format: FileFormat, error: ProgrammeError) -> FileError {
    let line = match format {
        FileFormat::Toml => toml_line(text, error.version, error.rule),
        FileFormat::Json => None,
    };
    FileError { line, reason: error.to_string() }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// The line of the n-th `[[version]]` (and its m-th `[[version.rule]]`) header.
fn toml_line(text: &str, version: Option<usize>, rule: Option<usize>) -> Option<usize> {
    let (mut versions, mut rules) = (0usize, 0usize);
    for (n, line) in text.lines().enumerate() {
        let header: String = line.chars().filter(|c| !c.is_whitespace()).collect();
        if header.starts_with("[[version]]") {
            versions += 1;
            rules = 0;
            if version == Some(versions - 1) && rule.is_none() {
                return Some(n + 1);
            }
        } else if header.starts_with("[[version.rule]]") {
            rules += 1;
            if version == Some(versions.saturating_sub(1)) && rule == Some(rules - 1) {
                return Some(n + 1);
            }
        } else if version.is_none() && header.starts_with("[programme]") {
            return Some(n + 1);
        }
    }
    None
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// One rule in plain words.
fn rule_text(rule: &relais_domain::loyalty::rules::Rule, unit: &str, lang: Lang) -> String {
    use relais_domain::loyalty::rules::{CapPeriod, Condition, Period, RuleKind};
    let fr = lang == Lang::Fr;
    let mut text = match &rule.kind {
        RuleKind::Spend { rate, rounding, multipliers } => {
            let rounding = match (rounding, fr) {
                (Rounding::Down, true) => "arrondi à l'inférieur",
                (Rounding::Down, false) => "rounded down",
                (Rounding::Nearest, true) => "arrondi au plus proche",
                (Rounding::Nearest, false) => "rounded to the nearest point",
                (Rounding::Up, true) => "arrondi au supérieur",
                (Rounding::Up, false) => "rounded up",
            };
            let mut text = if fr {
                format!("{} {unit} par euro dépensé ({rounding})", rate.text())
            } else {
                format!("{} {unit} per euro spent ({rounding})", rate.text())
            };
            for m in multipliers {
                let on = match (&m.when, fr) {
                    (Condition::Category(c), true) => format!("produits de la catégorie « {c} »"),
                    (Condition::Category(c), false) => format!("products of the \"{c}\" category"),
                    (Condition::Store(s), true) => format!("achats au magasin {s}"),
                    (Condition::Store(s), false) => format!("purchases at the {s} store"),
                    (Condition::Channel(c), true) => format!("achats sur le canal {c}"),
                    (Condition::Channel(c), false) => format!("purchases on the {c} channel"),
                    (Condition::Tier(t), true) => format!("membres du niveau {t}"),
                    (Condition::Tier(t), false) => format!("members of the {t} tier"),
                };
                text.push_str(&format!("; × {} {} {on}", m.factor.text(), if fr { "pour les" } else { "for" }));
            }
            text
        }
        RuleKind::Event { event, points } => {
            if fr {
                format!("{points} {unit} pour « {event} »")
            } else {
                format!("{points} {unit} for \"{event}\"")
            }
        }
        RuleKind::FirstPurchase { points } => {
            if fr {
                format!("{points} {unit} offerts au premier achat")
            } else {
                format!("{points} {unit} on the first purchase")
            }
        }
        RuleKind::Birthday { points } => {
            if fr {
                format!("{points} {unit} le jour de votre anniversaire")
            } else {
                format!("{points} {unit} on your birthday")
            }
        }
        RuleKind::Draw { event, odds: (a, b), points, budget } => {
            if fr {
                format!("tirage à chaque « {event} » : {a} chance(s) sur {b} de gagner {points} {unit} (dotation totale {budget} {unit})")
            } else {
                format!("a draw on each \"{event}\": {a} in {b} chance(s) to win {points} {unit} (total budget {budget} {unit})")
            }
        }
        RuleKind::Challenge { event, distinct, count, per, points, .. } => {
            let per = match (per, fr) {
                (Period::Week, true) => "dans la semaine",
                (Period::Week, false) => "in a week",
                (Period::Month, true) => "dans le mois",
                (Period::Month, false) => "in a month",
            };
            match (distinct, fr) {
                (Some(d), true) => format!("défi : « {event} » avec {count} {d} différents {per} : {points} {unit}"),
                (Some(d), false) => format!("challenge: \"{event}\" at {count} different {d} {per}: {points} {unit}"),
                (None, true) => format!("défi : {count} fois « {event} » {per} : {points} {unit}"),
                (None, false) => format!("challenge: \"{event}\" {count} times {per}: {points} {unit}"),
            }
        }
        RuleKind::Streak { event, per, length, points, .. } => {
            let per = match (per, fr) {
                (Period::Week, true) => "semaines",
                (Period::Week, false) => "weeks",
                (Period::Month, true) => "mois",
                (Period::Month, false) => "months",
            };
            if fr {
                format!("série : « {event} » {length} {per} d'affilée : {points} {unit}")
            } else {
                format!("streak: \"{event}\" {length} {per} in a row: {points} {unit}")
            }
        }
    };
    if let Some(cap) = rule.cap {
        let per = match (cap.per, fr) {
            (CapPeriod::Day, true) => "par jour",
            (CapPeriod::Day, false) => "per day",
            (CapPeriod::Month, true) => "par mois",
            (CapPeriod::Month, false) => "per month",
        };
        text.push_str(&if fr {
            format!(", au plus {} {unit} {per}", cap.points)
        } else {
            format!(", at most {} {unit} {per}", cap.points)
        });
    }
    text
}

/// The programme's rules as a readable page, in French or English.
pub fn rules_html(programme: &Programme, lang: Lang, today: chrono::NaiveDate) -> String {
    use relais_domain::loyalty::ledger::long_date;
    use relais_domain::loyalty::rules::Expiry;
    let fr = lang == Lang::Fr;
    let head = &programme.head;
    let unit = escape(&head.unit);
    let mut body = String::new();
    let value = format!("{:.2}", head.point_value_minor as f64 / 100.0);
    let one = escape(head.unit.strip_suffix('s').unwrap_or(&head.unit));
    body.push_str(&if fr {
        format!("<p>1 {one} vaut {} {}.</p>", value.replace('.', ","), escape(&head.currency))
    } else {
        format!("<p>1 {one} is worth {value} {}.</p>", escape(&head.currency))
    });
    for version in programme.versions.iter().rev() {
        let from = long_date(version.effective_from, lang);
        let status = match (version.effective_from > today, fr) {
            (true, true) => " (à venir)",
            (true, false) => " (upcoming)",
            (false, _) => "",
        };
        body.push_str(&if fr {
            format!("<section><h2>Règles à partir du {from}{status}</h2><ul>")
        } else {
            format!("<section><h2>Rules from {from}{status}</h2><ul>")
        });
        for rule in &version.rules {
            body.push_str(&format!("<li>{}</li>", escape(&rule_text(rule, &head.unit, lang))));
        }
        let expiry = match (version.expiry, fr) {
            (Expiry::Never, true) => format!("Les {unit} n'expirent pas."),
            (Expiry::Never, false) => format!("The {unit} never expire."),
            (Expiry::Months(m), true) => format!("Les {unit} expirent {m} mois après le jour où ils sont gagnés."),
            (Expiry::Months(m), false) => format!("The {unit} expire {m} months after the day they are earned."),
            (Expiry::EndOfFollowingYear, true) => format!("Les {unit} expirent à la fin de l'année suivant leur gain."),
            (Expiry::EndOfFollowingYear, false) => {
                format!("The {unit} expire at the end of the year after the one they are earned in.")
            }
        };
        body.push_str(&format!("</ul><p>{expiry}</p>"));
        if let Some(tiers) = &version.tiers {
            body.push_str(&tiers_html(tiers, lang));
        }
        body.push_str("</section>");
    }
    let other = if fr { ("en", "English") } else { ("fr", "Français") };
    let spent = if fr {
        "<p>Les points utilisés sont pris sur ceux qui expirent le plus tôt. Chaque opération figure sur votre relevé avec sa raison.</p>"
    } else {
        "<p>Points you spend are taken from those that expire first. Every operation appears on your statement with its reason.</p>"
    };
    format!(
        "<!doctype html><html lang=\"{lang}\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{name}</title></head><body><main><h1>{name}</h1>{body}{spent}<p><a href=\"?lang={code}\">{label}</a></p></main></body></html>",
        lang = lang.as_str(),
        name = escape(&head.name),
        code = other.0,
        label = other.1,
    )
}

/// The tiers of a version in plain words.
fn tiers_html(tiers: &relais_domain::loyalty::tiers::Tiers, lang: Lang) -> String {
    use relais_domain::loyalty::tiers::{Measure, Review};
    let fr = lang == Lang::Fr;
    let amount = |value: i64| match (tiers.measure, fr) {
        (Measure::Spend, true) => format!("{} € d'achats", value / 100),
        (Measure::Spend, false) => format!("€{} of purchases", value / 100),
        (Measure::Points, true) => format!("{value} points gagnés"),
        (Measure::Points, false) => format!("{value} points earned"),
        (Measure::Engagement, true) => format!("{value} actions récompensées"),
        (Measure::Engagement, false) => format!("{value} rewarded actions"),
    };
    let mut html = String::from(if fr { "<h3>Niveaux</h3><ul>" } else { "<h3>Tiers</h3><ul>" });
    for level in &tiers.levels {
        html.push_str(&format!(
            "<li>{} : {}{}</li>",
            escape(&level.name),
            if fr { "à partir de " } else { "from " },
            escape(&amount(level.threshold)),
        ));
    }
    let review = match (tiers.review, fr) {
        (Review::Monthly, true) => "le 1er de chaque mois",
        (Review::Monthly, false) => "on the 1st of each month",
        (Review::Yearly, true) => "le 1er janvier",
        (Review::Yearly, false) => "on 1 January",
    };
    html.push_str(&if fr {
        format!(
            "</ul><p>Le niveau se calcule sur les {} derniers mois. On monte dès que le seuil est atteint ; \
             on ne descend qu'après la révision ({review}), un avis, puis {} jours de grâce.</p>",
            tiers.window_months, tiers.grace_days
        )
    } else {
        format!(
            "</ul><p>Tiers count the last {} months. You move up as soon as you reach a threshold; you move \
             down only after a review ({review}), a notice, then {} days of grace.</p>",
            tiers.window_months, tiers.grace_days
        )
    });
    html
}

/// The digital card: the programme's name, the number grouped by four, and a
/// QR code of the number for tills.
pub fn card_svg(programme_name: &str, card_number: &str) -> Result<String, String> {
    let code = qrcode::QrCode::new(card_number.as_bytes()).map_err(|e| format!("cannot draw the QR code: {e}"))?;
    let qr = code.render::<qrcode::render::svg::Color<'_>>().min_dimensions(150, 150).quiet_zone(true).build();
    let qr = qr.split_once("?>").map(|(_, svg)| svg.trim().to_string()).unwrap_or(qr);
    let qr = qr.replacen("<svg ", "<svg x=\"300\" y=\"20\" width=\"160\" height=\"160\" ", 1);
    let grouped =
        card_number.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(" ");
    Ok(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"480\" height=\"200\" viewBox=\"0 0 480 200\" role=\"img\" \
         aria-label=\"{name} {grouped}\"><rect width=\"480\" height=\"200\" rx=\"16\" fill=\"#1d3557\"/>\
         <rect x=\"292\" y=\"12\" width=\"176\" height=\"176\" rx=\"8\" fill=\"#ffffff\"/>\
         <text x=\"24\" y=\"56\" font-family=\"sans-serif\" font-size=\"24\" fill=\"#ffffff\">{name}</text>\
         <text x=\"24\" y=\"150\" font-family=\"monospace\" font-size=\"20\" fill=\"#ffffff\">{grouped}</text>{qr}</svg>",
        name = escape(programme_name),
    ))
}

/// Why no programme could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChoiceError {
    /// The key names no programme.
    #[error("no programme `{0}`")]
    Unknown(String),
    /// There is no programme yet.
    #[error("no loyalty programme yet: apply one with `relais loyalty apply FILE.toml`")]
    NoProgramme,
    /// Several exist and none was named.
    #[error("several programmes exist; name one of: {}", .0.join(", "))]
    Several(Vec<String>),
}

/// The programme named, or the only one.
pub fn choose_programme(programmes: &[Programme], asked: Option<String>) -> Result<String, ChoiceError> {
    match (asked, programmes) {
        (Some(key), _) if programmes.iter().any(|p| p.head.key == key) => Ok(key),
        (Some(key), _) => Err(ChoiceError::Unknown(key)),
        (None, [one]) => Ok(one.head.key.clone()),
        (None, []) => Err(ChoiceError::NoProgramme),
        (None, many) => Err(ChoiceError::Several(many.iter().map(|p| p.head.key.clone()).collect())),
    }
}

/// Apply a programme (checked against the one in force), recorded in the
/// audit log when applied.
pub fn apply(
    engine: &dyn Engine,
    audit: &Audit<'_>,
    actor: &str,
    programme: &Programme,
    today: NaiveDate,
) -> Result<Result<i64, ProgrammeError>, StoreError> {
    let result = engine.loyalty_apply(programme, today)?;
    if let Ok(revision) = &result {
        audit.record(
            actor,
            "loyalty.programme.apply",
            None,
            serde_json::json!({ "programme": programme.head.key, "revision": revision }),
        )?;
    }
    Ok(result)
}

/// What the scheduled loyalty jobs did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scheduled {
    /// Members whose points expired.
    pub members: usize,
    /// Points expired.
    pub points: i64,
    /// Tier changes made by the review.
    pub tier_changes: usize,
    /// Reward reservations released because their hold was over.
    pub reservations_released: usize,
    /// Points those releases gave back.
    pub points_released: i64,
}

/// The scheduled jobs of `day`: reservations whose hold is over released
/// (before expiry, so points given back into a lot that expires today
/// expire with it), expiry, then the tier review. Recorded in the audit log
/// when asked for (`always`) or when anything changed.
pub fn run_scheduled(
    engine: &dyn Engine,
    audit: &Audit<'_>,
    actor: &str,
    day: NaiveDate,
    always: bool,
) -> Result<Scheduled, StoreError> {
    let (reservations_released, points_released) = engine.loyalty_release(chrono::Utc::now(), day)?;
    let (members, points) = engine.loyalty_expire(day)?;
    let tier_changes = engine.loyalty_review(day)?;
    if always || points > 0 || tier_changes > 0 || reservations_released > 0 {
        audit.record(
            actor,
            "loyalty.expiry",
            None,
            serde_json::json!({
                "members": members, "points": points, "tier_changes": tier_changes,
                "reservations_released": reservations_released, "points_released": points_released,
            }),
        )?;
    }
    Ok(Scheduled { members, points, tier_changes, reservations_released, points_released })
}

/// The names among `segments` that no saved segment has (a campaign may
/// target only segments that exist when it is issued).
pub fn unknown_segments(engine: &dyn Engine, segments: &[String]) -> Result<Vec<String>, StoreError> {
    if segments.is_empty() {
        return Ok(Vec::new());
    }
    let saved: std::collections::HashSet<String> = engine.segments()?.into_iter().map(|s| s.name).collect();
    Ok(segments.iter().filter(|name| !saved.contains(*name)).cloned().collect())
}

/// The refusal of a campaign naming unknown segments, for the field `segments`.
pub fn unknown_segments_reason(unknown: &[String]) -> String {
    format!(
        "no saved segment is called {}; save the segment first (relais segment save, POST /api/v1/segments)",
        unknown.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    )
}

/// The keyed hash a coupon code is stored and found by.
pub fn coupon_hash(keyring: &crate::privacy::Keyring, code: &CouponCode) -> String {
    keyring.lookup_token("coupon", code.as_str())
}

/// Issue `count` new codes of a campaign (created or changed): the codes
/// (shown once; only their keyed hashes are stored), and the campaign's codes
/// issued and used so far. Recorded in the audit log.
pub fn issue_coupons(
    engine: &dyn Engine,
    audit: &Audit<'_>,
    actor: &str,
    programme: &str,
    campaign: &Campaign,
    count: usize,
) -> Result<(Vec<CouponCode>, i64, i64), StoreError> {
    let codes: Vec<CouponCode> = {
        let mut rng = rand::thread_rng();
        (0..count).map(|_| CouponCode::generate(&mut rng)).collect()
    };
    let keyring = &engine.privacy().keyring;
    let hashes: Vec<String> = codes.iter().map(|c| coupon_hash(keyring, c)).collect();
    let (issued, used) = engine.loyalty_issue_coupons(programme, campaign, &hashes)?;
    audit.record(
        actor,
        "loyalty.coupons.issue",
        None,
        serde_json::json!({ "programme": programme, "campaign": campaign.id, "codes": count }),
    )?;
    Ok((codes, issued, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[programme]
key = "club"
name = "Club Relais"
point_value_minor = 1

[[version]]
effective_from = "2026-01-01"
expiry = { months = 12 }

[[version.rule]]
id = "spend"
kind = "spend"
points_per_euro = "1"

[[version.rule]]
id = "review"
kind = "event"
event = "Review Submitted"
points = -5
"#;

    #[test]
    fn errors_name_the_line_of_the_rule_at_fault() {
        let error = parse_programme(GOOD, FileFormat::Toml).unwrap_err();
        assert_eq!(error.line, Some(16), "{error}");
        assert!(error.reason.contains("points must be 1 to 1000000"), "{error}");
        let fixed = GOOD.replace("points = -5", "points = 5");
        assert_eq!(parse_programme(&fixed, FileFormat::Toml).unwrap().versions[0].rules.len(), 2);
    }

    #[test]
    fn syntax_and_unknown_fields_name_their_line() {
        let typo = GOOD.replace("points_per_euro = \"1\"", "points_per_eur = \"1\"");
        let error = parse_programme(&typo, FileFormat::Toml).unwrap_err();
        assert!(error.reason.contains("points_per_eur"), "{error}");
        assert!(error.line.is_some(), "{error}");
        let broken = GOOD.replace("[[version]]", "[[version]");
        assert!(parse_programme(&broken, FileFormat::Toml).unwrap_err().line.is_some());
    }
}
