//! Browser sessions: back-office users signed in with a password (argon2id),
//! portal members signed in with a one-time code, cookies, and the CSRF
//! check every form of a session goes through.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use relais_domain::{CustomerId, Permission};

use super::i18n::Lang;
use super::render::PageError;
use crate::http::auth::Caller;
use crate::http::AppState;
use crate::store::hash_api_key;
use crate::store::web::{SessionSubject, User, WebSession};

/// The back office's session cookie.
pub const STAFF_COOKIE: &str = "relais_staff";
/// The portal's session cookie.
pub const MEMBER_COOKIE: &str = "relais_member";
/// How long a back-office session lasts.
pub const STAFF_SESSION: Duration = Duration::hours(12);
/// How long a portal session lasts.
pub const MEMBER_SESSION: Duration = Duration::days(7);
/// The form field (or `X-CSRF-Token` header) that carries the session's CSRF token.
pub const CSRF_FIELD: &str = "csrf";
/// Largest form a page accepts.
const FORM_LIMIT: usize = 256 * 1024;

/// The value of cookie `name`, if the request carries it.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then(|| value.trim().to_string())
    })
}

/// A new random secret (256 bits, URL-safe).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A password a person can type: 20 characters from an alphabet without
/// look-alikes (about 115 bits).
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..20).map(|_| ALPHABET[(rng.next_u32() as usize) % ALPHABET.len()] as char).collect()
}

/// The argon2id hash of a password, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches a stored PHC hash.
pub fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash)
        .is_ok_and(|parsed| argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// A hash to check passwords against when the e-mail is unknown, so an
/// unknown e-mail takes as long to refuse as a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&new_secret()).unwrap_or_default())
}

/// Whether cookies get the `Secure` attribute: when relais is reached over
/// HTTPS (`RELAIS_PUBLIC_URL` starts with `https://`).
fn secure(state: &AppState) -> bool {
    state.settings.public_url.starts_with("https://")
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, whole site.
pub fn set_cookie(state: &AppState, name: &str, value: &str, max_age: Duration) -> HeaderValue {
    let secure = if secure(state) { "; Secure" } else { "" };
    let text =
        format!("{name}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}", max_age.num_seconds().max(0));
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("relais_invalid=; Max-Age=0"))
}

/// Start a session for `subject`: the `Set-Cookie` header to send.
pub async fn start(state: &AppState, subject: SessionSubject) -> Result<HeaderValue, PageError> {
    let (cookie_name, ttl) = match subject {
        SessionSubject::Staff(_) => (STAFF_COOKIE, STAFF_SESSION),
        SessionSubject::Member(_) => (MEMBER_COOKIE, MEMBER_SESSION),
    };
    let secret = new_secret();
    let session = WebSession { subject, csrf: new_secret(), expires_at: Utc::now() + ttl };
    let hash = hash_api_key(&secret);
    state.store.run(move |engine| engine.session_put(&hash, &session)).await?;
    Ok(set_cookie(state, cookie_name, &secret, ttl))
}

/// End the session held in `cookie_name`: the `Set-Cookie` header that clears it.
pub async fn end(state: &AppState, headers: &HeaderMap, cookie_name: &str) -> Result<HeaderValue, PageError> {
    if let Some(secret) = cookie(headers, cookie_name) {
        let hash = hash_api_key(&secret);
        state.store.run(move |engine| engine.session_delete(&hash, Utc::now())).await?;
    }
    Ok(set_cookie(state, cookie_name, "", Duration::zero()))
}

async fn session_of(state: &AppState, headers: &HeaderMap, cookie_name: &str) -> Result<Option<WebSession>, PageError> {
    let Some(secret) = cookie(headers, cookie_name) else { return Ok(None) };
    let hash = hash_api_key(&secret);
    Ok(state.store.run(move |engine| engine.session(&hash, Utc::now())).await?)
}

/// A signed-in back-office user, put in the request by `require_staff`.
#[derive(Debug, Clone)]
pub struct Staff {
    /// The user.
    pub user: User,
    /// The same user as the API's handlers know callers (role, audit actor).
    pub caller: Caller,
    /// The session's CSRF token, for the page's forms.
    pub csrf: String,
    /// The page's language.
    pub lang: Lang,
}

/// A signed-in portal member, put in the request by `require_member`.
#[derive(Debug, Clone)]
pub struct Member {
    /// The customer (the profile the session was opened for; reads follow merges).
    pub customer: CustomerId,
    /// The session's CSRF token.
    pub csrf: String,
    /// The page's language.
    pub lang: Lang,
    /// When the session ends.
    pub expires_at: DateTime<Utc>,
}

/// Refuse a POST whose `Origin` names another site (a cross-site form), even
/// before the CSRF token is read.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else { return true };
    if origin == "null" {
        return false;
    }
    let host = headers.get(HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    origin.split_once("://").map(|(_, rest)| rest) == Some(host)
}

/// Check the CSRF token of a state-changing request (header `X-CSRF-Token`,
/// or the form field `csrf`), giving the request back whole.
async fn check_csrf(request: Request, expected: &str, lang: Lang) -> Result<Request, PageError> {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return Ok(request);
    }
    if !same_origin(request.headers()) {
        return Err(PageError::forbidden(lang, "error.csrf"));
    }
    let from_header = request.headers().get("x-csrf-token").and_then(|v| v.to_str().ok()).map(str::to_string);
    let (parts, body) = request.into_parts();
    let bytes =
        axum::body::to_bytes(body, FORM_LIMIT).await.map_err(|_| PageError::bad_request(lang, "error.too_large"))?;
    let given = from_header.or_else(|| form_urlencoded_value(&bytes, CSRF_FIELD));
    let matches = given.is_some_and(|g| bool::from(subtle::ConstantTimeEq::ct_eq(g.as_bytes(), expected.as_bytes())));
    if !matches {
        return Err(PageError::forbidden(lang, "error.csrf"));
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// The first value of `name` in an `application/x-www-form-urlencoded` body.
fn form_urlencoded_value(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Where to go after signing in: a path on this site, never elsewhere.
pub fn safe_next(next: Option<&str>, default: &str) -> String {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => path.to_string(),
        _ => default.to_string(),
    }
}

/// Sign-in check of the back office: a staff session whose role allows
/// `permission` (any role when `None`), and the CSRF token on every form. Without a session, a page
/// sends the browser to the sign-in page.
pub async fn require_staff(
    State((state, permission)): State<(AppState, Option<Permission>)>,
    request: Request,
    next: Next,
) -> Response {
    let lang = super::i18n::negotiate(request.headers());
    let session = match session_of(&state, request.headers(), STAFF_COOKIE).await {
        Ok(session) => session,
        Err(error) => return error.into_response(),
    };
    let user = match session {
        Some(WebSession { subject: SessionSubject::Staff(id), csrf, .. }) => {
            match state.store.run(move |engine| engine.user(id)).await {
                Ok(Some(user)) => Some((user, csrf)),
                Ok(None) => None,
                Err(error) => return PageError::from(error).into_response(),
            }
        }
        _ => None,
    };
    let Some((user, csrf)) = user else {
        if request.method() == Method::GET {
            let here = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/app");
            let target = format!("/app/login?next={}", urlencode(here));
            return Redirect::to(&target).into_response();
        }
        return PageError::unauthorized(lang).into_response();
    };
    if permission.is_some_and(|p| !user.role.allows(p)) {
        return PageError::forbidden(lang, "error.role").into_response();
    }
    let request = match check_csrf(request, &csrf, lang).await {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let caller = Caller { role: user.role, principal: format!("user:{}", user.id), source: "web".into() };
    let mut request = request;
    request.extensions_mut().insert(Staff { user, caller, csrf, lang });
    next.run(request).await
}

/// Sign-in check of the portal: a member session, and the CSRF token on
/// every form. Without one, a page sends the browser to the portal's sign-in.
pub async fn require_member(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let lang = super::i18n::negotiate(request.headers());
    let session = match session_of(&state, request.headers(), MEMBER_COOKIE).await {
        Ok(session) => session,
        Err(error) => return error.into_response(),
    };
    let Some(WebSession { subject: SessionSubject::Member(customer), csrf, expires_at }) = session else {
        if request.method() == Method::GET {
            return Redirect::to("/me/login").into_response();
        }
        return PageError::unauthorized(lang).into_response();
    };
    let mut request = match check_csrf(request, &csrf, lang).await {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    request.extensions_mut().insert(Member { customer, csrf, lang, expires_at });
    next.run(request).await
}

/// Percent-encode a query value.
pub fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("v", text)]).map(|s| s[2..].to_string()).unwrap_or_default()
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Staff {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Staff>()
            .cloned()
            .ok_or_else(|| PageError::unauthorized(super::i18n::negotiate(&parts.headers)))
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Member {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Member>()
            .cloned()
            .ok_or_else(|| PageError::unauthorized(super::i18n::negotiate(&parts.headers)))
    }
}

/// Add a `Set-Cookie` header to a response.
pub fn with_cookie(mut response: Response, cookie: HeaderValue) -> Response {
    response.headers_mut().append(SET_COOKIE, cookie);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_hash_only() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "correct horsf"));
        assert!(!verify_password("not a hash", "correct horse"));
    }

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/app/customers?q=a"), "/app"), "/app/customers?q=a");
        assert_eq!(safe_next(Some("//evil.example"), "/app"), "/app");
        assert_eq!(safe_next(Some("https://evil.example"), "/app"), "/app");
        assert_eq!(safe_next(Some("/\\evil.example"), "/app"), "/app");
        assert_eq!(safe_next(None, "/app"), "/app");
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, "relais_staff_x=1; relais_staff=abc; other=2".parse().unwrap());
        assert_eq!(cookie(&headers, "relais_staff").as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
    }

    #[test]
    fn a_cross_site_origin_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, "127.0.0.1:8080".parse().unwrap());
        assert!(same_origin(&headers));
        headers.insert(ORIGIN, "http://127.0.0.1:8080".parse().unwrap());
        assert!(same_origin(&headers));
        headers.insert(ORIGIN, "https://evil.example".parse().unwrap());
        assert!(!same_origin(&headers));
    }
}
