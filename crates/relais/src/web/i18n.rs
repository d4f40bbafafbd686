//! French and English for every text a page shows. The catalogue
//! (`web/messages.toml`) holds each message in both languages; a message
//! missing from it renders as `⟦key⟧`, which the tests look for.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::http::HeaderMap;

/// A language the pages speak (the one the loyalty statement speaks too).
pub use relais_domain::loyalty::Lang;

/// The cookie that keeps the language a person chose.
pub const LANG_COOKIE: &str = "relais_lang";

/// The language of a request: the person's choice (cookie), else the first of
/// French or English the browser asks for, else French.
pub fn negotiate(headers: &HeaderMap) -> Lang {
    if let Some(lang) = super::session::cookie(headers, LANG_COOKIE).and_then(|c| Lang::parse(&c)) {
        return lang;
    }
    let accept = headers.get(axum::http::header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut best: Option<(f32, Lang)> = None;
    for part in accept.split(',') {
        let mut pieces = part.split(';');
        let tag = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
        let quality =
            pieces.find_map(|p| p.trim().strip_prefix("q=").and_then(|q| q.parse::<f32>().ok())).unwrap_or(1.0);
        let Some(lang) = Lang::parse(tag.split('-').next().unwrap_or("")) else { continue };
        if best.is_none_or(|(q, _)| quality > q) {
            best = Some((quality, lang));
        }
    }
    best.map_or(Lang::Fr, |(_, lang)| lang)
}

/// The other language (for the switch).
pub fn other(lang: Lang) -> Lang {
    match lang {
        Lang::Fr => Lang::En,
        Lang::En => Lang::Fr,
    }
}

/// One message in both languages.
#[derive(Debug, serde::Deserialize)]
pub struct Message {
    /// French.
    pub fr: String,
    /// English.
    pub en: String,
}

/// The catalogue's source, embedded in the binary.
pub const CATALOGUE_SOURCE: &str = include_str!("../../web/messages.toml");

/// Every message by key.
pub fn catalogue() -> &'static HashMap<String, Message> {
    static CATALOGUE: OnceLock<HashMap<String, Message>> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        // A malformed catalogue is caught by the unit tests before it ships.
        toml::from_str(CATALOGUE_SOURCE).unwrap_or_default()
    })
}

/// The message `key` in `lang`, with `{name}` placeholders replaced.
pub fn t(lang: Lang, key: &str, args: &[(&str, String)]) -> String {
    let Some(message) = catalogue().get(key) else { return format!("⟦{key}⟧") };
    let mut text = match lang {
        Lang::Fr => message.fr.clone(),
        Lang::En => message.en.clone(),
    };
    for (name, value) in args {
        text = text.replace(&format!("{{{name}}}"), value);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_parses_and_every_message_has_both_languages() {
        let parsed: HashMap<String, Message> = toml::from_str(CATALOGUE_SOURCE).expect("messages.toml parses");
        assert!(parsed.len() > 50);
        for (key, message) in &parsed {
            assert!(!message.fr.trim().is_empty(), "`{key}` has no French");
            assert!(!message.en.trim().is_empty(), "`{key}` has no English");
            let names = |text: &str| {
                let mut names: Vec<String> =
                    text.split('{').skip(1).filter_map(|p| p.split('}').next()).map(String::from).collect();
                names.sort();
                names
            };
            assert_eq!(names(&message.fr), names(&message.en), "`{key}` has different placeholders in each language");
        }
    }

    /// The literal keys of the `t("…")` calls in a source (not `format("…")`);
    /// keys built at run time (`t("role." ~ role)`) are checked by
    /// enumerating their values.
    fn message_keys(source: &str) -> Vec<&str> {
        let bytes = source.as_bytes();
        let mut keys = Vec::new();
        for (at, _) in source.match_indices("t(") {
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b'.') {
                continue;
            }
            let rest = &source[at + 2..];
            let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else { continue };
            let key = rest[1..].split(quote).next().unwrap_or("");
            let after = rest[1 + key.len()..].trim_start_matches(quote).trim_start();
            let built = after.starts_with('~') || key.ends_with('.');
            if !key.is_empty() && !key.contains(' ') && !built {
                keys.push(key);
            }
        }
        keys
    }

    #[test]
    fn every_key_a_template_or_the_code_uses_is_in_the_catalogue() {
        let catalogue = catalogue();
        let mut sources: Vec<(&str, &str)> = super::super::render::TEMPLATES.to_vec();
        sources.extend(super::super::CODE_WITH_MESSAGES.iter().copied());
        let mut used = 0;
        for (name, source) in sources {
            for key in message_keys(source) {
                used += 1;
                assert!(catalogue.contains_key(key), "{name} uses `{key}`, which messages.toml lacks");
            }
        }
        assert!(used > 50, "only {used} messages found in templates: is the scan broken?");
    }

    #[test]
    fn every_value_a_page_names_through_a_key_has_its_message() {
        let mut keys: Vec<String> = Vec::new();
        keys.extend(relais_domain::Role::ALL.iter().map(|r| format!("role.{}", r.as_str())));
        keys.extend(relais_domain::Channel::ALL.iter().map(|c| format!("channel.{}", c.as_str())));
        keys.extend(relais_domain::rfm::RfmGroup::ALL.iter().map(|g| format!("rfm.{}", g.as_str())));
        for purpose in relais_domain::consent::Purpose::ALL {
            keys.push(format!("consent.{}", purpose.as_str()));
        }
        for channel in relais_domain::consent::ConsentChannel::ALL {
            keys.push(format!("channel.{}", channel.as_str()));
        }
        for kind in ["track", "page", "screen", "identify", "group", "alias"] {
            keys.push(format!("kind.{kind}"));
        }
        for trend in ["up", "down", "flat"] {
            keys.push(format!("trend.{trend}"));
            keys.push(format!("arrow.{trend}"));
        }
        for kind in ["syntax", "type", "range", "forbidden", "name"] {
            keys.push(format!("segment.error.{kind}"));
        }
        for status in ["active", "merged", "closed"] {
            keys.push(format!("member.{status}"));
        }
        keys.extend(relais_domain::privacy::DataClass::ALL.iter().map(|c| format!("class.{}", c.as_str())));
        keys.extend(["low", "medium", "high", "critical"].map(|l| format!("risk.{l}")));
        keys.extend(relais_domain::rights::RightKind::ALL.iter().map(|k| format!("right.{}", k.as_str())));
        keys.extend(["open", "done", "refused"].map(|s| format!("request.{s}")));
        keys.extend(
            relais_domain::risk::PARTS.iter().map(|p| format!("part.{}", super::super::areas::part_slug(p.name))),
        );
        keys.extend(["mix", "set"].map(|op| format!("journeys.op_{op}")));
        for key in keys {
            assert!(catalogue().contains_key(&key), "messages.toml lacks `{key}`");
        }
    }

    #[test]
    fn a_missing_message_is_visible_and_placeholders_are_filled() {
        assert_eq!(t(Lang::En, "no.such.key", &[]), "⟦no.such.key⟧");
        let key = catalogue().keys().find(|k| catalogue()[*k].en.contains('{')).cloned();
        if let Some(key) = key {
            assert!(!t(Lang::En, &key, &[("n", "7".into()), ("name", "x".into())]).contains("{n}"));
        }
    }

    #[test]
    fn the_browser_language_is_honoured_and_french_is_the_default() {
        let mut headers = HeaderMap::new();
        assert_eq!(negotiate(&headers), Lang::Fr);
        headers.insert(axum::http::header::ACCEPT_LANGUAGE, "en-GB,en;q=0.9,fr;q=0.8".parse().unwrap());
        assert_eq!(negotiate(&headers), Lang::En);
        headers.insert(axum::http::header::ACCEPT_LANGUAGE, "de-DE,fr;q=0.7,en;q=0.5".parse().unwrap());
        assert_eq!(negotiate(&headers), Lang::Fr);
        headers.insert(axum::http::header::COOKIE, "relais_lang=en".parse().unwrap());
        assert_eq!(negotiate(&headers), Lang::En);
    }
}
