//! The Segment-compatible tracking endpoints (`/v1/identify` … `/v1/batch`):
//! each message is validated on its own and either stored or rejected with a reason.

use std::io::Read;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::Json;
use chrono::Utc;
use relais_domain::message::{Envelope, MessageType, MAX_BATCH_BYTES};
use relais_domain::TrackingMessage;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::store::Outcome;

/// The compressed body is capped as well as the decompressed one (no gzip bombs).
const MAX_COMPRESSED_BYTES: usize = MAX_BATCH_BYTES;

/// What happened to one message of a request.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MessageResult {
    /// Position in the batch (0 for single calls).
    pub index: usize,
    /// The message's `messageId`, when it had one.
    #[serde(rename = "messageId", skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// `stored`, `duplicate` or `rejected`.
    pub status: String,
    /// The profile it went to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// The stored event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Why it was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The answer to a tracking request.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TrackingResponse {
    /// True when every message was stored or already known.
    pub success: bool,
    /// Messages stored now.
    pub stored: usize,
    /// Messages already stored under the same `messageId`.
    pub duplicates: usize,
    /// Messages rejected.
    pub rejected: usize,
    /// One entry per message, in order.
    pub results: Vec<MessageResult>,
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Option<Vec<&'a RawValue>>,
    #[serde(rename = "sentAt")]
    sent_at: Option<Value>,
    context: Option<Map<String, Value>>,
}

/// Read the body, decompressing gzip, within the size limits.
pub async fn read_body(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "request body is larger than {MAX_BATCH_BYTES} bytes; send smaller batches (at most 500 KB, 32 KB per message)"
        ))
    };
    let raw = axum::body::to_bytes(body, MAX_COMPRESSED_BYTES).await.map_err(|_| too_large())?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => Ok(raw.to_vec()),
        "gzip" | "x-gzip" => {
            let mut decoded = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .take(MAX_BATCH_BYTES as u64 + 1)
                .read_to_end(&mut decoded)
                .map_err(|e| ApiError::field("body", format!("the gzip body does not decompress: {e}")))?;
            if decoded.len() > MAX_BATCH_BYTES {
                return Err(too_large());
            }
            Ok(decoded)
        }
        other => Err(ApiError::UnsupportedMediaType(format!(
            "unsupported Content-Encoding `{other}`; send the body plain or gzip-compressed"
        ))),
    }
}

async fn handle(
    state: AppState,
    source: String,
    headers: HeaderMap,
    body: Body,
    implied: Option<MessageType>,
) -> Result<Json<TrackingResponse>, ApiError> {
    let received_at = Utc::now();
    let bytes = read_body(&headers, body).await?;
    let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::field("body", "the body is not UTF-8 text"))?;
    let currency = state.settings.ingest.currency.clone();

    let mut parsed: Vec<Result<TrackingMessage, String>> = Vec::new();
    let mut message_ids: Vec<Option<String>> = Vec::new();
    if implied.is_none() {
        let mut body: BatchBody<'_> = serde_json::from_str(text)
            .map_err(|e| ApiError::field("body", format!("the body is not a JSON batch object: {e}")))?;
        // The batch's context goes into every message: it is checked for
        // payment card numbers once, like a message.
        if let Some(context) = body.context.take() {
            let mut value = Value::Object(context);
            let policy = state.settings.ingest.card_policy;
            if let Some(field) = relais_domain::cards::scrub(&mut value, "context", policy) {
                if policy == relais_domain::cards::CardPolicy::Reject {
                    return Err(ApiError::field(
                        field,
                        "holds a payment card number; relais never stores one: remove it, or send only its last four digits",
                    ));
                }
            }
            if let Value::Object(context) = value {
                body.context = Some(context);
            }
        }
        let batch = body.batch.ok_or_else(|| ApiError::field("batch", "is required: an array of messages"))?;
        let envelope = Envelope {
            received_at,
            implied_type: None,
            batch_sent_at: body.sent_at.as_ref(),
            batch_context: body.context.as_ref(),
            default_currency: &currency,
            card_policy: state.settings.ingest.card_policy,
        };
        for raw in batch {
            let result = TrackingMessage::parse_json(raw.get(), &envelope);
            message_ids.push(reported_message_id(&result, raw.get()));
            parsed.push(result.map_err(|e| e.to_string()));
        }
    } else {
        let envelope = Envelope {
            received_at,
            implied_type: implied,
            batch_sent_at: None,
            batch_context: None,
            default_currency: &currency,
            card_policy: state.settings.ingest.card_policy,
        };
        let result = TrackingMessage::parse_json(text, &envelope);
        message_ids.push(reported_message_id(&result, text));
        parsed.push(result.map_err(|e| e.to_string()));
    }

    // Move the valid messages to the store; keep only each message's verdict here.
    let mut valid: Vec<TrackingMessage> = Vec::with_capacity(parsed.len());
    let verdicts: Vec<Result<(), String>> = parsed
        .into_iter()
        .map(|p| match p {
            Ok(message) => {
                valid.push(message);
                Ok(())
            }
            Err(reason) => Err(reason),
        })
        .collect();
    let outcomes = if valid.is_empty() {
        Vec::new()
    } else {
        let source = source.clone();
        let settings = state.settings.ingest.clone();
        state
            .store
            .run(move |engine| {
                let ingested = engine.ingest_marked(&source, valid)?;
                crate::segments::after_ingest(engine, &settings, &ingested.outcomes, ingested.segments_mark);
                Ok(ingested.outcomes)
            })
            .await?
    };

    let mut outcomes = outcomes.into_iter();
    let mut response = TrackingResponse { success: true, stored: 0, duplicates: 0, rejected: 0, results: Vec::new() };
    for (index, (verdict, message_id)) in verdicts.into_iter().zip(message_ids).enumerate() {
        let entry = match verdict {
            Ok(()) => {
                let (status, customer_id, event_id) = match outcomes.next() {
                    Some(Outcome::Stored { customer_id, event_id }) => {
                        response.stored += 1;
                        ("stored", customer_id, event_id)
                    }
                    Some(Outcome::Duplicate { customer_id, event_id }) => {
                        response.duplicates += 1;
                        ("duplicate", customer_id, event_id)
                    }
                    None => return Err(ApiError::Internal("storage returned fewer outcomes than messages".into())),
                };
                MessageResult {
                    index,
                    message_id,
                    status: status.into(),
                    customer_id: Some(customer_id.to_string()),
                    event_id: Some(event_id.to_string()),
                    reason: None,
                }
            }
            Err(reason) => {
                response.rejected += 1;
                response.success = false;
                MessageResult {
                    index,
                    message_id,
                    status: "rejected".into(),
                    customer_id: None,
                    event_id: None,
                    reason: Some(reason),
                }
            }
        };
        response.results.push(entry);
    }
    state.metrics.record_ingest(response.stored, response.duplicates, response.rejected);

    if response.stored + response.duplicates == 0 && response.rejected > 0 {
        let prefix = if implied.is_some() { String::new() } else { "batch".to_string() };
        let errors = response
            .results
            .iter()
            .map(|r| super::error::FieldError {
                field: if implied.is_some() { "body".into() } else { format!("{prefix}[{}]", r.index) },
                reason: r.reason.clone().unwrap_or_default(),
                position: None,
            })
            .collect::<Vec<_>>();
        let detail = if response.rejected == 1 {
            format!("the message was rejected: {}", errors[0].reason)
        } else {
            format!("all {} messages were rejected; see `errors` for each reason", response.rejected)
        };
        return Err(ApiError::BadRequest {
            detail,
            errors,
            results: Some(serde_json::to_value(&response.results).unwrap_or_default()),
        });
    }
    Ok(Json(response))
}

/// The `messageId` to report for a message: the parsed one, or for a rejected
/// message whatever can be read of it (the raw text is parsed again only then).
fn reported_message_id(result: &Result<TrackingMessage, relais_domain::MessageError>, raw: &str) -> Option<String> {
    match result {
        Ok(message) => message.message_id_given.then(|| message.message_id.clone()),
        Err(_) => message_id_of(raw),
    }
}

/// The `messageId` of a raw message, for reporting even when it is rejected.
fn message_id_of(raw: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Id {
        #[serde(rename = "messageId")]
        message_id: Option<Value>,
    }
    match serde_json::from_str::<Id>(raw).ok()?.message_id? {
        Value::String(s) => Some(s.chars().take(256).collect()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

macro_rules! tracking_endpoint {
    ($fn_name:ident, $path:literal, $kind:expr, $summary:literal) => {
        #[doc = $summary]
        #[utoipa::path(post, path = $path, tag = "tracking",
            request_body(content = Object, description = "A Segment message (JSON, optionally gzip-compressed)"),
            responses(
                (status = 200, description = "Per-message outcome", body = TrackingResponse),
                (status = 400, description = "Every message was rejected", body = super::error::Problem),
                (status = 401, description = "Missing or unknown key", body = super::error::Problem),
                (status = 413, description = "Body too large", body = super::error::Problem),
            ),
            security(("basic" = []), ("bearer" = [])))]
        pub async fn $fn_name(
            State(state): State<AppState>,
            caller: Caller,
            headers: HeaderMap,
            body: Body,
        ) -> Result<Json<TrackingResponse>, ApiError> {
            handle(state, caller.source.clone(), headers, body, $kind).await
        }
    };
}

tracking_endpoint!(identify, "/v1/identify", Some(MessageType::Identify), "Segment identify: who the person is.");
tracking_endpoint!(track, "/v1/track", Some(MessageType::Track), "Segment track: something the person did.");
tracking_endpoint!(page, "/v1/page", Some(MessageType::Page), "Segment page: a web page view.");
tracking_endpoint!(screen, "/v1/screen", Some(MessageType::Screen), "Segment screen: an app screen view.");
tracking_endpoint!(group, "/v1/group", Some(MessageType::Group), "Segment group: membership of an account.");
tracking_endpoint!(alias, "/v1/alias", Some(MessageType::Alias), "Segment alias: two ids of one person.");
tracking_endpoint!(batch, "/v1/batch", None, "Segment batch: up to 500 KB of messages, each stored or rejected.");
