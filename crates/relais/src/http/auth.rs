//! API key authentication and role checks: a handler states the permission it
//! needs in its signature (`Authorized<ReadCustomers>`), so an unchecked handler
//! does not compile.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine as _;
use relais_domain::Permission;

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

/// A permission named at the type level.
pub trait Required {
    /// The permission.
    const PERMISSION: Permission;
}

macro_rules! permission_marker {
    ($name:ident) => {
        /// Type-level marker for the permission of the same name.
        pub struct $name;
        impl Required for $name {
            const PERMISSION: Permission = Permission::$name;
        }
    };
}
permission_marker!(IngestEvents);
permission_marker!(ReadCustomers);
permission_marker!(ReadMetrics);
permission_marker!(ManageIdentity);
permission_marker!(ManageOutbox);
permission_marker!(ManagePrivacy);

/// A caller whose key holds permission `P`.
pub struct Authorized<P: Required> {
    /// The caller's key.
    pub key: ApiKey,
    _permission: PhantomData<P>,
}

/// The secret from `Authorization: Basic base64(key:)` (Segment's way) or
/// `Authorization: Bearer key`.
fn secret_from(parts: &Parts) -> Result<String, ApiError> {
    let missing = || {
        ApiError::Unauthorized(
            "missing API key: send `Authorization: Bearer KEY`, or HTTP basic auth with the key as user name".into(),
        )
    };
    let header = parts.headers.get(AUTHORIZATION).ok_or_else(missing)?;
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

impl<P: Required + Send + Sync> FromRequestParts<AppState> for Authorized<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let secret = secret_from(parts)?;
        let key = authenticate(state, &secret).await?;
        if !key.role.allows(P::PERMISSION) {
            return Err(ApiError::Forbidden(format!(
                "the `{}` role may not do this ({:?}); use a key with a role that may",
                key.role,
                P::PERMISSION
            )));
        }
        Ok(Authorized { key, _permission: PhantomData })
    }
}
