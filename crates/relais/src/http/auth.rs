//! API key authentication and role checks. Each route's permission is declared
//! once, in the route table (`http::route_table`); `require` enforces it before
//! the handler runs and hands the handler a `Caller`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use relais_domain::{Permission, Role};

use super::error::ApiError;
use super::AppState;
use crate::store::{hash_api_key, ApiKey};

/// How long a looked-up key is trusted before it is read again (a revoked key
/// stops working within this delay).
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);

/// Recently verified keys, by hash.
#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<String, (ApiKey, Instant)>>,
}

/// Requests allowed per API key, counted in memory by each server process.
pub type KeyRateLimiter = governor::DefaultKeyedRateLimiter<relais_domain::KeyId>;

/// A limiter allowing `per_second` requests per key, in bursts of as many.
pub fn rate_limiter(per_second: u32) -> KeyRateLimiter {
    let rate = std::num::NonZeroU32::new(per_second.max(1)).expect("at least one");
    governor::RateLimiter::keyed(governor::Quota::per_second(rate))
}

/// The authenticated caller of a route: the route table's permission check
/// (`require`) puts it in the request, so a handler can only be reached through
/// that check.
#[derive(Debug, Clone)]
pub struct Caller {
    /// What the caller may do.
    pub role: Role,
    /// Who the caller is: `key:<key id>` for an API key, `user:<user id>` for
    /// a person signed in to the back office.
    pub principal: String,
    /// The source the caller's messages deduplicate under.
    pub source: String,
}

/// The secret from `Authorization: Basic base64(key:)` (Segment's way) or
/// `Authorization: Bearer key`.
fn secret_from(headers: &HeaderMap) -> Result<String, ApiError> {
    let missing = || {
        ApiError::Unauthorized(
            "missing API key: send `Authorization: Bearer KEY`, or HTTP basic auth with the key as user name".into(),
        )
    };
    let header = headers.get(AUTHORIZATION).ok_or_else(missing)?;
    let header = header.to_str().map_err(|_| missing())?.trim();
    if let Some(token) = header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")) {
        return Ok(token.trim().to_string());
    }
    if let Some(encoded) = header.strip_prefix("Basic ").or_else(|| header.strip_prefix("basic ")) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| ApiError::Unauthorized("malformed basic authorization header".into()))?;
        let user = decoded.split(':').next().unwrap_or_default();
        return Ok(user.to_string());
    }
    Err(missing())
}

/// Find the key for a secret, through the cache.
pub async fn authenticate(state: &AppState, secret: &str) -> Result<ApiKey, ApiError> {
    let hash = hash_api_key(secret);
    if let Some((key, at)) = state.keys.entries.lock().expect("key cache").get(&hash) {
        if at.elapsed() < KEY_CACHE_TTL {
            return Ok(key.clone());
        }
    }
    let lookup = hash.clone();
    let key = state.store.run(move |engine| engine.api_key_by_hash(&lookup)).await?.ok_or_else(|| {
        ApiError::Unauthorized("unknown or revoked API key; create one with `relais keys create`".into())
    })?;
    state.keys.entries.lock().expect("key cache").insert(hash, (key.clone(), Instant::now()));
    Ok(key)
}

/// Authenticate the request and check that the caller's role allows
/// `permission` (the route table's declaration); 401 or 403 otherwise.
pub async fn require(
    State((state, permission)): State<(AppState, Permission)>,
    mut request: Request,
    next: Next,
) -> Response {
    let secret = match secret_from(request.headers()) {
        Ok(secret) => secret,
        Err(error) => return error.into_response(),
    };
    let key = match authenticate(&state, &secret).await {
        Ok(key) => key,
        Err(error) => return error.into_response(),
    };
    if state.limiter.check_key(&key.key_id).is_err() {
        return ApiError::TooManyRequests(
            format!(
                "this key sent more than {} requests per second; slow down and retry",
                state.settings.rate_limit_per_second
            ),
            1,
        )
        .into_response();
    }
    if !key.role.allows(permission) {
        return ApiError::Forbidden(format!(
            "the `{}` role may not do this ({permission:?}); use a key with a role that may",
            key.role
        ))
        .into_response();
    }
    request.extensions_mut().insert(Caller::from_key(&key));
    next.run(request).await
}

impl Caller {
    /// The caller holding an API key.
    pub fn from_key(key: &ApiKey) -> Caller {
        Caller { role: key.role, principal: format!("key:{}", key.key_id), source: key.source.clone() }
    }

    /// Who the caller is in the audit log: `key:<key id>` or `user:<user id>`.
    pub fn actor(&self) -> String {
        self.principal.clone()
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::Unauthorized("this route was reached without its permission check; send an API key".into())
        })
    }
}
