//! Consents: record them with their proof, read their state at any date, check
//! before contacting, send double opt-in requests, and the public pages behind
//! the links people receive (confirm, one-click unsubscribe).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::{Form, Json};
use chrono::{DateTime, Utc};
use relais_domain::consent::{
    may, state_at, ConsentChannel, ConsentError, ConsentFact, ConsentSource, ConsentState, Proof, Purpose,
};
use relais_domain::privacy::DataClass;
use relais_domain::{CustomerId, IdentifierKind};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiError, ApiJson};
use super::AppState;
use crate::privacy::links::{LinkClaims, LinkError, LinkKind};
use crate::store::{CustomerLookup, Engine, StoreError};

/// How far ahead of the server's clock a consent's date may be.
const MAX_CLOCK_SKEW_MINUTES: i64 = 5;

/// The evidence sent with a consent.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProofBody {
    /// IP address of the person's device (web, app).
    pub ip: Option<String>,
    /// User agent of the person's browser or app (web, app).
    pub user_agent: Option<String>,
    /// Store, call, or document reference (store, call_centre, paper).
    pub reference: Option<String>,
}

/// A consent given or withdrawn.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentBody {
    /// email_marketing, sms, push, profiling, personalised_offers or partner_sharing.
    pub purpose: String,
    /// email, sms, push, phone, post or any.
    pub channel: String,
    /// Given (true) or withdrawn (false).
    pub granted: bool,
    /// web, app, store, call_centre or paper.
    pub source: String,
    /// The version of the text the person agreed to (required to give consent).
    #[serde(default)]
    pub wording_version: String,
    /// The evidence: ip and user_agent for web and app, reference otherwise.
    #[serde(default)]
    pub proof: ProofBody,
    /// When the person answered (default: now).
    pub at: Option<DateTime<Utc>>,
}

/// A recorded consent and the resulting state.
#[derive(Debug, Serialize, ToSchema)]
pub struct Recorded {
    /// The new fact's id.
    pub consent_id: String,
    /// The profile it was recorded on (the survivor, for a merged profile).
    pub customer_id: String,
    /// Every purpose and channel now.
    #[schema(value_type = Vec<Object>)]
    pub consents: Vec<ConsentState>,
}

fn parse_purpose(text: &str) -> Result<Purpose, ApiError> {
    Purpose::parse(text).ok_or_else(|| {
        ApiError::field(
            "purpose",
            "must be email_marketing, sms, push, profiling, personalised_offers or partner_sharing",
        )
    })
}

fn parse_channel(text: &str) -> Result<ConsentChannel, ApiError> {
    ConsentChannel::parse(text)
        .ok_or_else(|| ApiError::field("channel", "must be email, sms, push, phone, post or any"))
}

fn parse_customer(text: &str) -> Result<CustomerId, ApiError> {
    CustomerId::parse(text).map_err(|e| ApiError::field("id", e.to_string()))
}

fn not_found(id: CustomerId) -> impl Fn(StoreError) -> ApiError {
    move |e| match e {
        StoreError::NotFound => ApiError::NotFound(format!("no customer `{id}`")),
        other => other.into(),
    }
}

/// Record a consent given or withdrawn, with its proof.
#[utoipa::path(post, path = "/api/v1/customers/{id}/consents", tag = "consents", request_body = ConsentBody,
    params(("id" = String, Path, description = "Customer id")),
    responses(
        (status = 201, body = Recorded),
        (status = 400, description = "Unknown purpose, channel or source, or proof missing", body = super::error::Problem),
        (status = 404, body = super::error::Problem),
    ),
    security(("bearer" = [])))]
pub async fn record(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ConsentBody>,
) -> Result<Response, ApiError> {
    let id = parse_customer(&id)?;
    let source = match ConsentSource::parse(&body.source) {
        Some(s @ (ConsentSource::Web | ConsentSource::App | ConsentSource::Store | ConsentSource::CallCentre)) => s,
        Some(ConsentSource::Paper) => ConsentSource::Paper,
        _ => return Err(ApiError::field(
            "source",
            "must be web, app, store, call_centre or paper (double opt-in and unsubscribe come through their links)",
        )),
    };
    let now = Utc::now();
    let at = body.at.unwrap_or(now);
    if at > now + chrono::Duration::minutes(MAX_CLOCK_SKEW_MINUTES) {
        return Err(ApiError::field("at", "lies in the future"));
    }
    let fact = ConsentFact {
        purpose: parse_purpose(&body.purpose)?,
        channel: parse_channel(&body.channel)?,
        granted: body.granted,
        at,
        source,
        wording_version: body.wording_version,
        proof: Proof { ip: body.proof.ip, user_agent: body.proof.user_agent, reference: body.proof.reference },
    };
    fact.validate().map_err(|e| match e {
        ConsentError::MissingProof { field, .. } => ApiError::field(format!("proof.{field}"), e.to_string()),
        ConsentError::MissingWording => ApiError::field("wording_version", e.to_string()),
    })?;
    let actor = caller.actor();
    let (owner, consent_id, facts) = state
        .store
        .run_audited(move |engine, audit| {
            audit.record(
                &actor,
                "consent.record",
                Some(id),
                json!({ "purpose": fact.purpose, "granted": fact.granted }),
            )?;
            let (owner, consent_id) = engine.record_consent(id, &fact, &actor, None)?;
            Ok((owner, consent_id, engine.consents(owner)?))
        })
        .await
        .map_err(not_found(id))?;
    let recorded = Recorded {
        consent_id: consent_id.to_string(),
        customer_id: owner.to_string(),
        consents: state_at(&facts, Utc::now()),
    };
    Ok((StatusCode::CREATED, Json(recorded)).into_response())
}

/// `at` for consent reads.
#[derive(Debug, Deserialize, IntoParams)]
pub struct AtQuery {
    /// The date to answer for (default: now), ISO 8601.
    pub at: Option<DateTime<Utc>>,
}

/// A person's consents at a date, and their history.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsentsView {
    /// The profile.
    pub customer_id: String,
    /// The date answered for.
    pub at: DateTime<Utc>,
    /// Each purpose and channel the person answered, as of `at`.
    #[schema(value_type = Vec<Object>)]
    pub consents: Vec<ConsentState>,
    /// Every fact, oldest first (the proof only for roles that may read personal data).
    #[schema(value_type = Vec<Object>)]
    pub history: Vec<ConsentFact>,
}

/// The profile a consent call is about: itself, or the one it was merged into.
fn survivor(engine: &dyn Engine, id: CustomerId) -> Result<CustomerId, StoreError> {
    match engine.customer(id)? {
        CustomerLookup::Found(_) => Ok(id),
        CustomerLookup::MergedInto(survivor) => Ok(survivor),
        CustomerLookup::NotFound => Err(StoreError::NotFound),
    }
}

/// A person's consents as of a date (now by default), with their history.
#[utoipa::path(get, path = "/api/v1/customers/{id}/consents", tag = "consents",
    params(("id" = String, Path, description = "Customer id"), AtQuery),
    responses((status = 200, body = ConsentsView), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<AtQuery>,
) -> Result<Json<ConsentsView>, ApiError> {
    let id = parse_customer(&id)?;
    let at = query.at.unwrap_or_else(Utc::now);
    let actor = caller.actor();
    let (owner, mut facts) = state
        .store
        .run_audited(move |engine, audit| {
            let owner = survivor(engine, id)?;
            let facts = engine.consents(owner)?;
            audit.record(&actor, "consent.read", Some(owner), json!({}))?;
            Ok((owner, facts))
        })
        .await
        .map_err(not_found(id))?;
    if !state.store.privacy().classes.may_read(caller.role, DataClass::Personal) {
        for fact in &mut facts {
            fact.proof = Proof::default();
        }
    }
    Ok(Json(ConsentsView { customer_id: owner.to_string(), at, consents: state_at(&facts, at), history: facts }))
}

/// What to check.
#[derive(Debug, Deserialize, IntoParams)]
pub struct CheckQuery {
    /// Customer id.
    pub customer: String,
    /// Purpose.
    pub purpose: String,
    /// Channel.
    pub channel: String,
    /// The date (default: now).
    pub at: Option<DateTime<Utc>>,
}

/// The answer to "may I?".
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckAnswer {
    /// The profile checked (the survivor, for a merged profile).
    pub customer_id: String,
    /// Purpose.
    #[schema(value_type = String)]
    pub purpose: Purpose,
    /// Channel.
    #[schema(value_type = String)]
    pub channel: ConsentChannel,
    /// The date answered for.
    pub at: DateTime<Utc>,
    /// Whether a consent stands (never by default).
    pub allowed: bool,
}

/// May this customer be contacted for this purpose on this channel now? What
/// campaigns ask before every message.
#[utoipa::path(get, path = "/api/v1/consents/check", tag = "consents", params(CheckQuery),
    responses((status = 200, body = CheckAnswer), (status = 400, body = super::error::Problem), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn check(
    State(state): State<AppState>,
    _caller: Caller,
    Query(query): Query<CheckQuery>,
) -> Result<Json<CheckAnswer>, ApiError> {
    let id = CustomerId::parse(&query.customer).map_err(|e| ApiError::field("customer", e.to_string()))?;
    let purpose = parse_purpose(&query.purpose)?;
    let channel = parse_channel(&query.channel)?;
    let at = query.at.unwrap_or_else(Utc::now);
    let (owner, facts) = state
        .store
        .run(move |engine| {
            let owner = survivor(engine, id)?;
            Ok((owner, engine.consents(owner)?))
        })
        .await
        .map_err(not_found(id))?;
    Ok(Json(CheckAnswer {
        customer_id: owner.to_string(),
        purpose,
        channel,
        at,
        allowed: may(&facts, purpose, channel, at),
    }))
}

/// A double opt-in request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptInBody {
    /// The purpose to confirm.
    pub purpose: String,
    /// The channel (default: email).
    #[serde(default)]
    pub channel: Option<String>,
    /// The version of the text the person is asked to agree to.
    pub wording_version: String,
}

/// Send a person an e-mail with a link that confirms a consent (double
/// opt-in): signed, single use, valid seven days; the e-mail also carries a
/// one-click unsubscribe link (RFC 8058).
#[utoipa::path(post, path = "/api/v1/customers/{id}/consents/opt-in", tag = "consents", request_body = OptInBody,
    params(("id" = String, Path, description = "Customer id")),
    responses(
        (status = 202, description = "The e-mail is queued in the outbox", body = Object),
        (status = 404, body = super::error::Problem),
        (status = 409, description = "The customer has no e-mail address", body = super::error::Problem),
    ),
    security(("bearer" = [])))]
pub async fn opt_in(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<OptInBody>,
) -> Result<Response, ApiError> {
    let id = parse_customer(&id)?;
    let purpose = parse_purpose(&body.purpose)?;
    let channel = parse_channel(body.channel.as_deref().unwrap_or("email"))?;
    if body.wording_version.trim().is_empty() {
        return Err(ApiError::field("wording_version", "is required: the version of the text the person agrees to"));
    }
    let actor = caller.actor();
    let base = state.settings.public_url.clone();
    let wording = body.wording_version.clone();
    let (outbox_id, expires) = state
        .store
        .run_audited(move |engine, audit| {
            let CustomerLookup::Found(record) = engine.customer(survivor(engine, id)?)? else {
                return Err(StoreError::NotFound);
            };
            let email = record
                .identifiers
                .iter()
                .find(|i| i.kind() == IdentifierKind::Email)
                .ok_or_else(|| StoreError::Conflict(format!("{} has no e-mail address to confirm with", record.id)))?
                .value()
                .to_string();
            let keyring = &engine.privacy().keyring;
            let now = Utc::now();
            let confirm = LinkClaims::new(LinkKind::OptIn, record.id, purpose, channel, &wording, now);
            let unsubscribe = LinkClaims::new(LinkKind::Unsubscribe, record.id, purpose, channel, &wording, now);
            let confirm_url = format!("{base}/consent/confirm?token={}", confirm.sign(keyring));
            let unsubscribe_url = format!("{base}/u/{}", unsubscribe.sign(keyring));
            let message = crate::outbox::Email {
                to: email,
                subject: "Confirmez votre inscription / Confirm your subscription".into(),
                text: format!(
                    "Bonjour,\n\nPour confirmer votre accord ({purpose}), ouvrez ce lien (valable 7 jours) :\n{confirm_url}\n\n\
                     Hello,\n\nTo confirm your consent ({purpose}), open this link (valid for 7 days):\n{confirm_url}\n\n\
                     Se désinscrire / Unsubscribe: {unsubscribe_url}\n",
                    purpose = purpose.as_str()
                ),
                unsubscribe_url: Some(unsubscribe_url),
            };
            audit.record(&actor, "consent.opt_in_sent", Some(record.id), json!({ "purpose": purpose }))?;
            let payload = serde_json::to_value(&message).map_err(|e| StoreError::Database(e.to_string()))?;
            let outbox_id = engine.enqueue("email", Some(record.id), &payload)?;
            Ok((outbox_id, DateTime::<Utc>::from_timestamp(confirm.expires, 0)))
        })
        .await
        .map_err(not_found(id))?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "outbox_id": outbox_id, "link_expires_at": expires }))).into_response())
}

/// A token as it may appear in a page (base64url and a dot only), so nothing
/// else is ever written back into HTML.
fn safe_token(token: &str) -> Option<&str> {
    let ok = !token.is_empty()
        && token.len() < 2048
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    ok.then_some(token)
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"fr\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title}</title></head><body><main><h1>{title}</h1>{body}</main></body></html>"
    );
    (status, Html(html)).into_response()
}

fn link_error(error: &LinkError) -> Response {
    let (status, fr) = match error {
        LinkError::Forged | LinkError::WrongKind => (StatusCode::BAD_REQUEST, "Ce lien n'est pas valide."),
        LinkError::Expired => (StatusCode::GONE, "Ce lien a expiré ; demandez-en un nouveau."),
    };
    page(status, "Lien invalide / Invalid link", &format!("<p>{fr}</p><p lang=\"en\">{error}.</p>"))
}

/// The token of a confirmation link.
#[derive(Debug, Deserialize, IntoParams, ToSchema)]
pub struct TokenForm {
    /// The signed token from the e-mail.
    pub token: String,
}

/// The page a confirmation link opens: it asks to confirm with a button, so
/// that mail scanners following links never confirm on the person's behalf.
#[utoipa::path(get, path = "/consent/confirm", tag = "consents", params(TokenForm),
    responses((status = 200, description = "A page with a confirm button", content_type = "text/html")))]
pub async fn confirm_page(Query(form): Query<TokenForm>) -> Response {
    match safe_token(&form.token) {
        Some(token) => page(
            StatusCode::OK,
            "Confirmer / Confirm",
            &format!(
                "<form method=\"post\" action=\"/consent/confirm\"><input type=\"hidden\" name=\"token\" value=\"{token}\">\
                 <p>Confirmez-vous votre accord ? / Do you confirm your consent?</p>\
                 <button type=\"submit\">Je confirme / I confirm</button></form>"
            ),
        ),
        None => link_error(&LinkError::Forged),
    }
}

/// Confirm a consent from its e-mail link (double opt-in): recorded with the
/// link as proof; a link works once.
#[utoipa::path(post, path = "/consent/confirm", tag = "consents",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Recorded", content_type = "text/html"),
        (status = 400, description = "Forged link"),
        (status = 409, description = "Link already used"),
        (status = 410, description = "Expired link"),
    ))]
pub async fn confirm(State(state): State<AppState>, Form(form): Form<TokenForm>) -> Response {
    let claims = match LinkClaims::verify(&state.store.privacy().keyring, &form.token, LinkKind::OptIn, Utc::now()) {
        Ok(claims) => claims,
        Err(error) => return link_error(&error),
    };
    record_from_link(&state, claims, true).await
}

/// The page an unsubscribe link opens, with the button that withdraws.
#[utoipa::path(get, path = "/u/{token}", tag = "consents", params(("token" = String, Path, description = "Signed token")),
    responses((status = 200, description = "A page with an unsubscribe button", content_type = "text/html")))]
pub async fn unsubscribe_page(Path(token): Path<String>) -> Response {
    match safe_token(&token) {
        Some(token) => page(
            StatusCode::OK,
            "Se désinscrire / Unsubscribe",
            &format!(
                "<form method=\"post\" action=\"/u/{token}\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
                 <button type=\"submit\">Me désinscrire / Unsubscribe me</button></form>"
            ),
        ),
        None => link_error(&LinkError::Forged),
    }
}

/// One-click unsubscribe (RFC 8058): mail clients POST here; withdrawal is
/// recorded with the link as proof.
#[utoipa::path(post, path = "/u/{token}", tag = "consents", params(("token" = String, Path, description = "Signed token")),
    responses((status = 200, description = "Withdrawn", content_type = "text/html"), (status = 400, description = "Forged link")))]
pub async fn unsubscribe(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    let claims = match LinkClaims::verify(&state.store.privacy().keyring, &token, LinkKind::Unsubscribe, Utc::now()) {
        Ok(claims) => claims,
        Err(error) => return link_error(&error),
    };
    record_from_link(&state, claims, false).await
}

async fn record_from_link(state: &AppState, claims: LinkClaims, granted: bool) -> Response {
    let fact = ConsentFact {
        purpose: claims.purpose,
        channel: claims.channel,
        granted,
        at: Utc::now(),
        source: if granted { ConsentSource::DoubleOptIn } else { ConsentSource::Unsubscribe },
        wording_version: claims.wording_version.clone(),
        proof: Proof { ip: None, user_agent: None, reference: Some(claims.token_id.clone()) },
    };
    // An opt-in link is claimed (single use); unsubscribing twice is harmless.
    let claim = granted.then(|| claims.token_id.clone());
    let customer = claims.customer;
    let result = state
        .store
        .run_audited(move |engine, audit| {
            let action = if granted { "consent.confirmed" } else { "consent.unsubscribed" };
            audit.record("link", action, Some(customer), json!({ "purpose": fact.purpose }))?;
            engine.record_consent(customer, &fact, "link", claim.as_deref())
        })
        .await;
    match result {
        Ok(_) if granted => page(StatusCode::OK, "Merci / Thank you", "<p>Votre accord est enregistré.</p><p lang=\"en\">Your consent is recorded.</p>"),
        Ok(_) => page(StatusCode::OK, "Désinscrit / Unsubscribed", "<p>Vous ne recevrez plus ces messages.</p><p lang=\"en\">You will not receive these messages any more.</p>"),
        Err(StoreError::Conflict(_)) => page(
            StatusCode::CONFLICT,
            "Lien déjà utilisé / Link already used",
            "<p>Ce lien a déjà servi.</p><p lang=\"en\">This link was already used.</p>",
        ),
        Err(StoreError::NotFound) => page(
            StatusCode::GONE,
            "Compte introuvable / Account not found",
            "<p>Ce compte n'existe plus.</p><p lang=\"en\">This account no longer exists.</p>",
        ),
        Err(other) => ApiError::from(other).into_response(),
    }
}
