//! Templates (minijinja, embedded in the binary, HTML-escaped by default),
//! the headers of every page, and the error page.

use std::sync::OnceLock;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use minijinja::value::Kwargs;
use minijinja::{Environment, State, Value};

use super::i18n::{t, Lang};
use crate::store::StoreError;

/// Every template, by name, embedded in the binary.
pub const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../../web/templates/base.html")),
    ("error.html", include_str!("../../web/templates/error.html")),
    ("login.html", include_str!("../../web/templates/login.html")),
    ("room.html", include_str!("../../web/templates/room.html")),
    ("flow.html", include_str!("../../web/templates/flow.html")),
    ("customers.html", include_str!("../../web/templates/customers.html")),
    ("customer.html", include_str!("../../web/templates/customer.html")),
    ("timeline.html", include_str!("../../web/templates/timeline.html")),
    ("segments.html", include_str!("../../web/templates/segments.html")),
    ("segment_check.html", include_str!("../../web/templates/segment_check.html")),
    ("journeys.html", include_str!("../../web/templates/journeys.html")),
    ("whatif.html", include_str!("../../web/templates/whatif.html")),
    ("loyalty.html", include_str!("../../web/templates/loyalty.html")),
    ("privacy.html", include_str!("../../web/templates/privacy.html")),
    ("me_nav.html", include_str!("../../web/templates/me_nav.html")),
    ("me_login.html", include_str!("../../web/templates/me_login.html")),
    ("me_code.html", include_str!("../../web/templates/me_code.html")),
    ("me_link.html", include_str!("../../web/templates/me_link.html")),
    ("me_home.html", include_str!("../../web/templates/me_home.html")),
    ("me_receipts.html", include_str!("../../web/templates/me_receipts.html")),
    ("me_receipt.html", include_str!("../../web/templates/me_receipt.html")),
    ("me_data.html", include_str!("../../web/templates/me_data.html")),
];

/// The content security policy of pages: everything from this server,
/// nothing inline but SVG attributes, no framing.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            if let Err(error) = env.add_template(name, source) {
                tracing::error!(template = name, %error, "a template does not parse");
            }
        }
        env.add_function("t", translate);
        env.add_filter("money", money);
        env.add_filter("number", number);
        env.add_filter("pct", pct);
        env
    })
}

/// `t("key", name=value…)` in a template, in the page's language.
fn translate(state: &State, key: &str, kwargs: Kwargs) -> Result<String, minijinja::Error> {
    let lang = state.lookup("lang").and_then(|v| v.as_str().and_then(Lang::parse)).unwrap_or(Lang::Fr);
    let mut args = Vec::new();
    for name in kwargs.args() {
        let value: Value = kwargs.get(name)?;
        args.push((name, value.to_string()));
    }
    Ok(t(lang, key, &args))
}

/// Group digits the way the page's language does: `12 345` or `12,345`.
fn group_digits(integer: &str, lang: Lang) -> String {
    let (sign, digits) = integer.strip_prefix('-').map_or(("", integer), |d| ("-", d));
    let separator = match lang {
        Lang::Fr => '\u{202f}',
        Lang::En => ',',
    };
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(separator);
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// A number in the page's language, with `decimals` decimals.
pub fn format_number(value: f64, decimals: usize, lang: Lang) -> String {
    let text = format!("{value:.decimals$}");
    let (integer, fraction) = text.split_once('.').map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let mut out = group_digits(integer, lang);
    if let Some(fraction) = fraction {
        out.push(if lang == Lang::Fr { ',' } else { '.' });
        out.push_str(fraction);
    }
    out
}

fn state_lang(state: &State) -> Lang {
    state.lookup("lang").and_then(|v| v.as_str().and_then(Lang::parse)).unwrap_or(Lang::Fr)
}

/// `{{ amount | money("EUR") }}`: major units with two decimals and the currency.
fn money(state: &State, value: Value, currency: Option<String>) -> String {
    let Ok(amount) = f64::try_from(value) else { return "—".into() };
    let currency = currency.unwrap_or_else(|| "EUR".into());
    let symbol = if currency == "EUR" { "€".to_string() } else { currency };
    let lang = state_lang(state);
    match lang {
        Lang::Fr => format!("{}\u{a0}{symbol}", format_number(amount, 2, lang)),
        Lang::En => format!("{symbol}{}", format_number(amount, 2, lang)),
    }
}

/// `{{ n | number }}` or `{{ x | number(1) }}`.
fn number(state: &State, value: Value, decimals: Option<usize>) -> String {
    match f64::try_from(value) {
        Ok(n) => format_number(n, decimals.unwrap_or(0), state_lang(state)),
        Err(_) => "—".into(),
    }
}

/// `{{ change | pct }}`: a signed percentage, `—` when there is none.
fn pct(state: &State, value: Value) -> String {
    if value.is_none() || value.is_undefined() {
        return "—".into();
    }
    match f64::try_from(value) {
        Ok(n) if n.is_finite() => {
            let sign = if n > 0.0 { "+" } else { "" };
            let lang = state_lang(state);
            let space = if lang == Lang::Fr { "\u{a0}" } else { "" };
            format!("{sign}{}{space}%", format_number(n, 1, lang))
        }
        _ => "—".into(),
    }
}

/// Render a template to a page with the pages' headers.
pub fn page(name: &str, context: Value) -> Result<Response, PageError> {
    let lang = context.get_attr("lang").ok().and_then(|v| v.as_str().and_then(Lang::parse)).unwrap_or(Lang::Fr);
    let body = environment().get_template(name).and_then(|template| template.render(context)).map_err(|error| {
        tracing::error!(template = name, error = %format!("{error:#}"), "a page failed to render");
        PageError::new(StatusCode::INTERNAL_SERVER_ERROR, lang, "error.internal")
    })?;
    Ok(html(StatusCode::OK, body))
}

/// An HTML answer with the pages' security policy.
pub fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_POLICY));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

/// A page that could not be shown: its status and the message that says why,
/// in the page's language.
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    lang: Lang,
    key: &'static str,
}

impl PageError {
    /// An error page with a status and a message of the catalogue.
    pub fn new(status: StatusCode, lang: Lang, key: &'static str) -> PageError {
        PageError { status, lang, key }
    }

    /// 401: sign in first.
    pub fn unauthorized(lang: Lang) -> PageError {
        PageError::new(StatusCode::UNAUTHORIZED, lang, "error.signin")
    }

    /// 403 with a reason.
    pub fn forbidden(lang: Lang, key: &'static str) -> PageError {
        PageError::new(StatusCode::FORBIDDEN, lang, key)
    }

    /// 400 with a reason.
    pub fn bad_request(lang: Lang, key: &'static str) -> PageError {
        PageError::new(StatusCode::BAD_REQUEST, lang, key)
    }

    /// 404.
    pub fn not_found(lang: Lang) -> PageError {
        PageError::new(StatusCode::NOT_FOUND, lang, "error.not_found")
    }

    /// The same error in another language.
    pub fn in_lang(mut self, lang: Lang) -> PageError {
        self.lang = lang;
        self
    }
}

impl From<StoreError> for PageError {
    fn from(error: StoreError) -> PageError {
        match error {
            StoreError::NotFound => PageError::not_found(Lang::Fr),
            StoreError::Conflict(_) => PageError::new(StatusCode::CONFLICT, Lang::Fr, "error.conflict"),
            other => {
                tracing::error!(error = %other, "a page failed");
                PageError::new(StatusCode::INTERNAL_SERVER_ERROR, Lang::Fr, "error.internal")
            }
        }
    }
}

impl From<crate::http::error::ApiError> for PageError {
    fn from(error: crate::http::error::ApiError) -> PageError {
        use crate::http::error::ApiError;
        let (status, key) = match &error {
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "error.not_found"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "error.role"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "error.signin"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "error.conflict"),
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "error.bad_request"),
            _ => {
                tracing::error!(error = %error, "a page failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "error.internal")
            }
        };
        PageError::new(status, Lang::Fr, key)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let context = minijinja::context! {
            lang => self.lang.as_str(),
            other_lang => super::i18n::other(self.lang).as_str(),
            status => self.status.as_u16(),
            message => self.key,
        };
        let body = environment()
            .get_template("error.html")
            .and_then(|template| template.render(context))
            .unwrap_or_else(|_| format!("<!doctype html><title>{0}</title><p>{0}</p>", self.status));
        html(self.status, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }

    /// Remove every `open … close` span of a text.
    fn without(text: &str, open: &str, close: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find(open) {
            out.push_str(&rest[..start]);
            out.push(' ');
            rest = rest[start + open.len()..]
                .find(close)
                .map_or("", |end| &rest[start + open.len() + end + close.len()..]);
        }
        out.push_str(rest);
        out
    }

    /// The words a template shows by itself (outside `t(…)` and template
    /// expressions): text between tags and the attributes people read.
    fn literal_words(template: &str) -> Vec<String> {
        let mut text = template.to_string();
        for (open, close) in [("{#", "#}"), ("{%", "%}"), ("{{", "}}"), ("<script", "</script>"), ("<code", "</code>")]
        {
            text = without(&text, open, close);
        }
        let mut shown = String::new();
        let mut rest = text.as_str();
        while let Some(start) = rest.find('<') {
            shown.push_str(&rest[..start]);
            let end = rest[start..].find('>').map_or(rest.len(), |e| start + e + 1);
            let tag = &rest[start..end];
            for attribute in ["aria-label=\"", "placeholder=\"", "title=\"", "alt=\""] {
                if let Some(at) = tag.find(attribute) {
                    let value = &tag[at + attribute.len()..];
                    shown.push(' ');
                    shown.push_str(&value[..value.find('"').unwrap_or(value.len())]);
                }
            }
            shown.push(' ');
            rest = &rest[end..];
        }
        shown.push_str(rest);
        let shown = without(&shown, "&", ";");
        shown
            .split(|c: char| !c.is_alphabetic())
            .filter(|word| word.chars().count() >= 2 && *word != "relais")
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn templates_show_no_text_of_their_own() {
        for (name, source) in TEMPLATES {
            let words = literal_words(source);
            assert!(words.is_empty(), "{name} shows {words:?} outside the catalogue: use t(\"…\")");
        }
        assert_eq!(literal_words("<p title=\"Bonjour\">{{ t('x') }} hello</p>"), ["Bonjour", "hello"]);
    }

    #[test]
    fn numbers_follow_the_language() {
        assert_eq!(format_number(1234567.891, 2, Lang::En), "1,234,567.89");
        assert_eq!(format_number(1234567.891, 2, Lang::Fr), "1\u{202f}234\u{202f}567,89");
        assert_eq!(format_number(-1234.0, 0, Lang::En), "-1,234");
        assert_eq!(format_number(12.0, 0, Lang::Fr), "12");
    }
}
