//! The one place where errors become HTTP responses: RFC 9457 problem details.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// One field-level reason inside a problem.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldError {
    /// Where: a JSON path or parameter name (`batch[3].userId`, `identifier`).
    pub field: String,
    /// Why it was refused.
    pub reason: String,
    /// Where in the field's text, when the field is source code (a segment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<SourcePosition>,
}

/// A place in a text field: 1-based line and column (in characters), and the
/// byte range at fault.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct SourcePosition {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// First byte at fault.
    pub start: usize,
    /// One past the last byte at fault.
    pub end: usize,
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong and what to do.
    pub detail: String,
    /// A stable machine-readable code (also read by tracking libraries).
    pub code: String,
    /// The same as `detail`, for clients that read `message`.
    pub message: String,
    /// Field-level reasons, when the input was at fault.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Per-message outcomes of a tracking batch in which no message was stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub results: Option<serde_json::Value>,
}

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Input was invalid.
    #[error("{detail}")]
    BadRequest {
        /// Summary.
        detail: String,
        /// Field reasons.
        errors: Vec<FieldError>,
        /// Per-message results, for tracking batches.
        results: Option<serde_json::Value>,
    },
    /// No or unknown credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Known credentials without the needed role.
    #[error("{0}")]
    Forbidden(String),
    /// Nothing there.
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts the current state.
    #[error("{0}")]
    Conflict(String),
    /// The body is too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The content type or encoding is not supported.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The key sent more requests than its rate allows; retry after the delay (seconds).
    #[error("{0}")]
    TooManyRequests(String, u64),
    /// Something failed inside; details are logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A bad request about one field.
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> ApiError {
        let field = field.into();
        let reason = reason.into();
        ApiError::BadRequest {
            detail: format!("`{field}`: {reason}"),
            errors: vec![FieldError { field, reason, position: None }],
            results: None,
        }
    }
}

/// The most items a list endpoint returns at once.
pub const MAX_PAGE: usize = 500;

/// A `limit` query parameter: `default` when absent, else 1 to `MAX_PAGE`.
pub fn page_limit(limit: Option<usize>, default: usize) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::field("limit", format!("must be between 1 and {MAX_PAGE}")))
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => ApiError::NotFound("not found".into()),
            StoreError::Conflict(detail) => ApiError::Conflict(detail),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::segments::SegmentsError> for ApiError {
    fn from(error: crate::segments::SegmentsError) -> Self {
        use crate::segments::SegmentsError;
        use relais_domain::segment::ErrorKind;
        match error {
            SegmentsError::Source(e) if e.kind == ErrorKind::Forbidden => ApiError::Forbidden(e.to_string()),
            SegmentsError::Source(e) => ApiError::BadRequest {
                detail: format!("`source`: {e}"),
                errors: vec![FieldError {
                    field: "source".into(),
                    reason: format!("{} error: {}", e.kind.as_str(), e.message),
                    position: Some(SourcePosition { line: e.line, column: e.column, start: e.start, end: e.end }),
                }],
                results: None,
            },
            SegmentsError::Name(reason) => ApiError::field("name", reason),
            SegmentsError::Unknown(name) => ApiError::NotFound(format!("no segment is named `{name}`")),
            SegmentsError::UnknownTypology(name) => ApiError::NotFound(format!("no typology is named `{name}`")),
            SegmentsError::Store(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title) = match &self {
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "invalid_request", "Invalid request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", "Not found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "Payload too large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "Unsupported media type")
            }
            ApiError::TooManyRequests(..) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Too many requests"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
        };
        let retry_after = match &self {
            ApiError::TooManyRequests(_, seconds) => Some(*seconds),
            _ => None,
        };
        // Return an opaque 500 while keeping the cause in the log.
        let detail = match &self {
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                "the server failed to handle the request; it has been logged, retry later".to_string()
            }
            other => other.to_string(),
        };
        let (errors, results) = match self {
            ApiError::BadRequest { errors, results, .. } => (errors, results),
            _ => (Vec::new(), None),
        };
        let problem = Problem {
            kind: format!("https://relais.dev/problems/{code}"),
            title: title.into(),
            status: status.as_u16(),
            message: detail.clone(),
            detail,
            code: code.into(),
            errors,
            results,
        };
        let mut response = (status, axum::Json(problem)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(seconds) = retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, seconds);
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"relais\", Bearer"));
        }
        response
    }
}

/// A JSON request body whose refusal is a problem document naming the field
/// (axum's own `Json` answers refusals in plain text).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection;
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType(
                "send the body as JSON with `Content-Type: application/json`".into(),
            )),
            Err(JsonRejection::JsonDataError(error)) => {
                // "Failed to deserialize …: path.to.field: what is wrong at line L column C"
                let text = error.body_text();
                let detail = text.split_once("target type: ").map_or(text.as_str(), |(_, rest)| rest);
                let (field, reason) = match detail.split_once(": ") {
                    Some((path, reason)) if !path.contains(' ') => (path.to_string(), reason.to_string()),
                    _ => ("body".to_string(), detail.to_string()),
                };
                Err(ApiError::field(field, reason))
            }
            Err(other) => Err(ApiError::field("body", format!("not valid JSON: {}", other.body_text()))),
        }
    }
}
