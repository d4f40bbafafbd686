//! Loyalty: programmes and their rules, memberships with a digital card,
//! statements that explain every point, and debits that happen once per
//! `Idempotency-Key` whatever the retries.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use chrono::{NaiveDate, Utc};
use relais_domain::loyalty::{Lang, Points, PositivePoints, Programme};
use relais_domain::{CustomerId, Identifier, MemberId};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiError, ApiJson};
use super::AppState;
use crate::loyalty::{parse_programme, FileFormat};
use crate::store::loyalty::{Manual, ManualOperation, MemberView, OperationAnswer, StatementEntry};

/// The most characters of a redemption's reason.
const MAX_REASON: usize = 200;

/// A programme as stored: its head and every version of its rules.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProgrammeView {
    /// Its key.
    pub key: String,
    /// The whole checked definition.
    #[schema(value_type = Object)]
    pub definition: Programme,
}

/// Every programme.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProgrammeList {
    /// Programmes by key.
    pub programmes: Vec<ProgrammeView>,
}

/// The result of applying a programme file.
#[derive(Debug, Serialize, ToSchema)]
pub struct Applied {
    /// The programme's key.
    pub key: String,
    /// Revision of the programmes after the change.
    pub revision: i64,
    /// Number of rule versions.
    pub versions: usize,
}

fn today(state: &AppState) -> NaiveDate {
    state.settings.ingest.day_of(Utc::now())
}

/// Add a programme or change its rules. The body is the programme file, TOML
/// (`Content-Type: application/toml`) or JSON. Versions that already judged
/// events never change; a change starts after today.
#[utoipa::path(post, path = "/api/v1/loyalty/programmes", tag = "loyalty",
    request_body(content = Object, description = "A programme file ([programme] and [[version]] with [[version.rule]]), JSON or TOML"),
    responses((status = 200, body = Applied), (status = 400, body = super::error::Problem), (status = 409, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn apply_programme(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Applied>, ApiError> {
    let format = match headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        Some(t) if t.contains("toml") => FileFormat::Toml,
        _ => FileFormat::Json,
    };
    let text = String::from_utf8(body.to_vec()).map_err(|_| ApiError::field("body", "must be UTF-8 text"))?;
    let programme = parse_programme(&text, format).map_err(|e| {
        ApiError::field(e.line.map(|l| format!("line {l}")).unwrap_or_else(|| "body".into()), e.to_string())
    })?;
    let today = today(&state);
    let (key, versions) = (programme.head.key.clone(), programme.versions.len());
    let actor = caller.actor();
    let result = state
        .store
        .run_audited(move |engine, audit| crate::loyalty::apply(engine, audit, &actor, &programme, today))
        .await?;
    match result {
        Ok(revision) => Ok(Json(Applied { key, revision, versions })),
        Err(refused) => Err(ApiError::Conflict(crate::loyalty::change_refused(&text, format, refused).to_string())),
    }
}

/// Every programme with its rule versions.
#[utoipa::path(get, path = "/api/v1/loyalty/programmes", tag = "loyalty",
    responses((status = 200, body = ProgrammeList)), security(("bearer" = [])))]
pub async fn list_programmes(State(state): State<AppState>, _caller: Caller) -> Result<Json<ProgrammeList>, ApiError> {
    let programmes = state.store.run(|engine| engine.loyalty_programmes()).await?;
    Ok(Json(ProgrammeList {
        programmes: programmes.into_iter().map(|p| ProgrammeView { key: p.head.key.clone(), definition: p }).collect(),
    }))
}

/// Language of a page or statement.
#[derive(Debug, Deserialize, IntoParams)]
pub struct LangQuery {
    /// `fr` or `en` (default `en`; pages default to `fr`).
    pub lang: Option<String>,
}

fn lang_of(query: &LangQuery, default: Lang) -> Result<Lang, ApiError> {
    match query.lang.as_deref() {
        None => Ok(default),
        Some(text) => Lang::parse(text).ok_or_else(|| ApiError::field("lang", "must be fr or en")),
    }
}

/// The programme's rules as a page anyone can read (members included).
#[utoipa::path(get, path = "/loyalty/{key}/rules", tag = "loyalty",
    params(("key" = String, Path, description = "Programme key"), LangQuery),
    responses((status = 200, description = "HTML page", content_type = "text/html"), (status = 404, body = super::error::Problem)))]
pub async fn rules_page(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(query): Query<LangQuery>,
) -> Result<Response, ApiError> {
    let lang = lang_of(&query, Lang::Fr)?;
    let programme = known_programme(&state, &key).await?;
    let html = crate::loyalty::rules_html(&programme, lang, today(&state));
    Ok((StatusCode::OK, Html(html)).into_response())
}

/// Who to enrol.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolBody {
    /// Any identifier of the person, `kind:value` (`email:ana@example.fr`).
    pub identifier: Option<String>,
    /// Or the customer id, `cus_…`.
    pub customer: Option<String>,
    /// The programme's key; needed only when there are several.
    pub programme: Option<String>,
}

/// A membership.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberBody {
    /// Its id, `mem_…`.
    pub id: String,
    /// The customer it belongs to.
    pub customer: String,
    /// The programme's key.
    pub programme: String,
    /// The card number (16 digits, check digit last).
    pub card_number: Option<String>,
    /// Balance.
    pub balance: Points,
    /// `active`, `merged` or `closed`.
    pub status: String,
    /// The membership it joined, when merged.
    pub merged_into: Option<String>,
    /// When the person enrolled.
    pub enrolled_at: chrono::DateTime<Utc>,
    /// Current tier.
    pub tier: Option<String>,
    /// A downgrade announced for this day, unless the member qualifies again.
    pub downgrade_on: Option<NaiveDate>,
}

fn member_body(view: MemberView) -> MemberBody {
    MemberBody {
        id: view.row.member.to_string(),
        customer: view.customer.to_string(),
        programme: view.row.programme,
        card_number: view.card_number,
        balance: view.row.balance,
        status: view.row.status.as_str().into(),
        merged_into: view.row.merged_into.map(|m| m.to_string()),
        enrolled_at: view.row.enrolled_at,
        tier: view.row.tier,
        downgrade_on: view.row.downgrade_on,
    }
}

async fn programme_key(state: &AppState, asked: Option<String>) -> Result<String, ApiError> {
    let programmes = state.store.run(|engine| engine.loyalty_programmes()).await?;
    crate::loyalty::choose_programme(&programmes, asked).map_err(|e| match e {
        crate::loyalty::ChoiceError::NoProgramme => ApiError::Conflict(e.to_string()),
        _ => ApiError::field("programme", e.to_string()),
    })
}

async fn customer_of(
    state: &AppState,
    identifier: Option<String>,
    customer: Option<String>,
) -> Result<CustomerId, ApiError> {
    match (identifier, customer) {
        (Some(text), None) => {
            let identifier = Identifier::parse(&text).map_err(|e| ApiError::field("identifier", e.to_string()))?;
            let lookup = identifier.clone();
            state
                .store
                .run(move |engine| engine.customer_id_by_identifier(&lookup))
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no customer holds `{identifier}`")))
        }
        (None, Some(id)) => CustomerId::parse(&id).map_err(|e| ApiError::field("customer", e.to_string())),
        _ => Err(ApiError::field("identifier", "give exactly one of `identifier` (kind:value) or `customer` (cus_…)")),
    }
}

/// Enrol a person: 201 with the new membership and its card, or 200 with the
/// membership they already have.
#[utoipa::path(post, path = "/api/v1/loyalty/members", tag = "loyalty", request_body = EnrolBody,
    responses((status = 201, body = MemberBody), (status = 200, body = MemberBody),
        (status = 400, body = super::error::Problem), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn enrol(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<EnrolBody>,
) -> Result<Response, ApiError> {
    let programme = programme_key(&state, body.programme).await?;
    let customer = customer_of(&state, body.identifier, body.customer).await?;
    let actor = caller.actor();
    let (view, created) = state
        .store
        .run_audited(move |engine, audit| {
            let (view, created) = engine.loyalty_enrol(customer, &programme)?;
            if created {
                audit.record(
                    &actor,
                    "loyalty.enrol",
                    Some(view.customer),
                    serde_json::json!({ "member": view.row.member.to_string(), "programme": programme }),
                )?;
            }
            Ok((view, created))
        })
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound => ApiError::NotFound(format!("no customer `{customer}`")),
            other => other.into(),
        })?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(member_body(view))).into_response())
}

/// Finding a member.
#[derive(Debug, Deserialize, IntoParams)]
pub struct MemberQuery {
    /// Any identifier of the person, `kind:value` (a scanned card: `card:9251…`).
    pub identifier: String,
    /// The programme's key; needed only when there are several.
    pub programme: Option<String>,
}

async fn read_member(state: &AppState, caller: &Caller, id: MemberId) -> Result<MemberView, ApiError> {
    read_member_as(state, caller.actor(), id).await
}

/// One membership, its read audited under `actor` (the API's caller, or a
/// member signed in to the portal).
pub(crate) async fn read_member_as(state: &AppState, actor: String, id: MemberId) -> Result<MemberView, ApiError> {
    state
        .store
        .run_audited(move |engine, audit| {
            let view = engine.loyalty_member(id)?.ok_or(crate::store::StoreError::NotFound)?;
            audit.record(
                &actor,
                "loyalty.read",
                Some(view.customer),
                serde_json::json!({ "member": id.to_string() }),
            )?;
            Ok(view)
        })
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound => ApiError::NotFound(format!("no member `{id}`")),
            other => other.into(),
        })
}

/// Find a person's membership by any of their identifiers.
#[utoipa::path(get, path = "/api/v1/loyalty/members", tag = "loyalty", params(MemberQuery),
    responses((status = 200, body = MemberBody), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn find_member(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<MemberQuery>,
) -> Result<Json<MemberBody>, ApiError> {
    let programme = programme_key(&state, query.programme).await?;
    let customer = customer_of(&state, Some(query.identifier.clone()), None).await?;
    let members = state.store.run(move |engine| engine.loyalty_members_of(customer)).await?;
    let member = members
        .into_iter()
        .find(|m| m.row.programme == programme)
        .ok_or_else(|| ApiError::NotFound(format!("`{}` is not a member of `{programme}`", query.identifier)))?;
    Ok(Json(member_body(read_member(&state, &caller, member.row.member).await?)))
}

fn parse_member_id(text: &str) -> Result<MemberId, ApiError> {
    MemberId::parse(text).map_err(|e| ApiError::field("id", e.to_string()))
}

/// 308 to the membership this one joined.
fn moved(into: MemberId, suffix: &str) -> Response {
    super::moved_permanently(format!("/api/v1/loyalty/members/{into}{suffix}"), into.to_string())
}

/// One membership (308 to the one it joined when the person's profiles merged).
#[utoipa::path(get, path = "/api/v1/loyalty/members/{id}", tag = "loyalty",
    params(("id" = String, Path, description = "Member id, `mem_…`")),
    responses((status = 200, body = MemberBody), (status = 308, description = "Joined another membership"),
        (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn get_member(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let view = read_member(&state, &caller, parse_member_id(&id)?).await?;
    if let Some(into) = view.row.merged_into {
        return Ok(moved(into, ""));
    }
    Ok(Json(member_body(view)).into_response())
}

/// One line of a statement.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatementLine {
    /// The ledger transaction.
    pub id: String,
    /// Signed points.
    pub points: Points,
    /// What happened, in the asked language.
    pub reason: String,
    /// The reason in French and English.
    pub reasons: Reasons,
    /// `spend`, `event`, `first_purchase`, `refund`, `redemption`, `expiry`, `adjustment`, `merge`, `closure`.
    pub kind: String,
    /// The rule that made it.
    pub rule: Option<String>,
    /// The source event's `messageId`.
    pub event: Option<String>,
    /// When the points it credited expire (start of that day, organisation's time zone).
    pub expires_at: Option<chrono::DateTime<Utc>>,
    /// Who made it, for manual operations.
    pub actor: Option<String>,
    /// When it was written.
    pub created_at: chrono::DateTime<Utc>,
}

/// A reason in both languages.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reasons {
    /// French.
    pub fr: String,
    /// English.
    pub en: String,
}

/// Points that expire on a day.
#[derive(Debug, Serialize, ToSchema)]
pub struct Expiring {
    /// The day they expire (organisation's calendar).
    pub on: NaiveDate,
    /// How many.
    pub points: Points,
}

/// A member's statement: the balance and every entry that makes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Statement {
    /// Member id.
    pub member: String,
    /// Programme key.
    pub programme: String,
    /// What points are called.
    pub unit: String,
    /// Balance: the sum of `entries`.
    pub balance: Points,
    /// Every entry, oldest first.
    pub entries: Vec<StatementLine>,
    /// What expires when, soonest first.
    pub expiring: Vec<Expiring>,
    /// Badges won.
    pub badges: Vec<Badge>,
}

/// A badge won.
#[derive(Debug, Serialize, ToSchema)]
pub struct Badge {
    /// Its id.
    pub badge: String,
    /// The challenge or streak that gave it.
    pub rule: String,
    /// When.
    pub on: NaiveDate,
}

fn statement_line(entry: StatementEntry, unit: &str, lang: Lang, tz: chrono_tz::Tz) -> StatementLine {
    let fr = entry.reason.render(entry.points, unit, Lang::Fr);
    let en = entry.reason.render(entry.points, unit, Lang::En);
    StatementLine {
        id: entry.tx_id,
        points: entry.points,
        reason: if lang == Lang::Fr { fr.clone() } else { en.clone() },
        reasons: Reasons { fr, en },
        kind: entry.kind,
        rule: entry.rule,
        event: entry.message_id,
        expires_at: entry.expires_on.and_then(|day| {
            day.and_hms_opt(0, 0, 0).and_then(|t| t.and_local_timezone(tz).earliest()).map(|t| t.with_timezone(&Utc))
        }),
        actor: entry.actor,
        created_at: entry.created_at,
    }
}

/// A member's statement, every entry explained in plain French and English.
#[utoipa::path(get, path = "/api/v1/loyalty/members/{id}/statement", tag = "loyalty",
    params(("id" = String, Path, description = "Member id"), LangQuery),
    responses((status = 200, body = Statement), (status = 308, description = "Joined another membership"),
        (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn statement(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<LangQuery>,
) -> Result<Response, ApiError> {
    let lang = lang_of(&query, Lang::En)?;
    let id = parse_member_id(&id)?;
    let view = read_member(&state, &caller, id).await?;
    if let Some(into) = view.row.merged_into {
        return Ok(moved(into, "/statement"));
    }
    Ok(Json(build_statement(&state, &view, lang).await?).into_response())
}

/// A membership's statement in `lang`: its balance, every entry explained,
/// what expires when and its badges (the API's and the portal's).
pub(crate) async fn build_statement(state: &AppState, view: &MemberView, lang: Lang) -> Result<Statement, ApiError> {
    let id = view.row.member;
    let ledger = state.store.run(move |engine| engine.loyalty_entries(id)).await?;
    let programmes = state.store.run(|engine| engine.loyalty_programmes()).await?;
    let unit = programmes
        .iter()
        .find(|p| p.head.key == view.row.programme)
        .map(|p| p.head.unit.clone())
        .unwrap_or_else(|| "points".into());
    let tz = state.settings.ingest.time_zone;
    let mut expiring: std::collections::BTreeMap<NaiveDate, Points> = Default::default();
    for lot in &ledger.lots {
        if let Some(day) = lot.expires_on {
            *expiring.entry(day).or_default() += lot.remaining;
        }
    }
    Ok(Statement {
        member: id.to_string(),
        programme: view.row.programme.clone(),
        balance: view.row.balance,
        entries: ledger.entries.into_iter().map(|e| statement_line(e, &unit, lang, tz)).collect(),
        badges: ledger.badges.into_iter().map(|(badge, rule, on)| Badge { badge, rule, on }).collect(),
        expiring: expiring.into_iter().map(|(on, points)| Expiring { on, points }).collect(),
        unit,
    })
}

/// The member's digital card: an SVG with the card number and a QR code a till can scan.
#[utoipa::path(get, path = "/api/v1/loyalty/members/{id}/card.svg", tag = "loyalty",
    params(("id" = String, Path, description = "Member id")),
    responses((status = 200, description = "SVG image", content_type = "image/svg+xml"), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn card_svg(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let view = read_member(&state, &caller, parse_member_id(&id)?).await?;
    let card =
        view.card_number.clone().ok_or_else(|| ApiError::NotFound("this membership has no card number".into()))?;
    let programmes = state.store.run(|engine| engine.loyalty_programmes()).await?;
    let name = programmes
        .iter()
        .find(|p| p.head.key == view.row.programme)
        .map(|p| p.head.name.clone())
        .unwrap_or_else(|| view.row.programme.clone());
    let svg = crate::loyalty::card_svg(&name, &card).map_err(ApiError::Internal)?;
    let mut response = svg.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("image/svg+xml"));
    Ok(response)
}

/// A redemption: a number of points and what for, or a reward of the catalogue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedemptionBody {
    /// Points to debit (a positive whole number), with `reason`.
    pub points: Option<i64>,
    /// Or a reward's id: its cost is debited and the reward reserved until
    /// confirmed (`POST /api/v1/loyalty/redemptions/{id}/confirm`) or cancelled.
    pub reward: Option<String>,
    /// What for (shown on the statement): "réduction en caisse". Required with
    /// `points`; for a reward, its name by default.
    pub reason: Option<String>,
}

/// An adjustment: signed points and why.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentBody {
    /// Points to credit (positive) or debit (negative).
    pub points: i64,
    /// Why (mandatory; shown on the statement with who made it).
    pub reason: String,
}

/// Debit points or redeem a reward, once per `Idempotency-Key` (required): a
/// retry with the same key gets the first answer and debits nothing; the same
/// key with another body is refused with 422; a debit the balance cannot cover
/// gets 409 with the balance; a reward out of stock, out of its dates or not
/// for the member's tier gets 409 with the reason.
#[utoipa::path(post, path = "/api/v1/loyalty/members/{id}/redemptions", tag = "loyalty",
    params(("id" = String, Path, description = "Member id"),
        ("Idempotency-Key" = String, Header, description = "A unique key per debit (a UUID); kept at least 24 hours")),
    request_body = RedemptionBody,
    responses((status = 201, description = "Debited: id, member, points (negative), balance, reason; with a reward, its status `reserved`"),
        (status = 400, body = super::error::Problem), (status = 404, body = super::error::Problem),
        (status = 409, body = super::error::Problem), (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn redeem(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RedemptionBody>,
) -> Result<Response, ApiError> {
    let operation = match (body.points, body.reward) {
        (Some(points), None) => {
            let points = PositivePoints::new(points).map_err(|e| ApiError::field("points", e))?;
            let reason = body.reason.ok_or_else(|| ApiError::field("reason", "say what the points pay for"))?;
            Asked { kind: Manual::Redemption, points: -points.get(), reward: None, reason }
        }
        (None, Some(reward)) => {
            let reason = body.reason.unwrap_or_else(|| reward.clone());
            Asked { kind: Manual::Redemption, points: 0, reward: Some(reward), reason }
        }
        _ => return Err(ApiError::field("points", "give either `points` (with `reason`) or a `reward`")),
    };
    manual(&state, &caller, &id, &headers, operation, "redemptions").await
}

/// Credit or debit points by hand, with the reason shown on the statement
/// and the key that made it (`Idempotency-Key` required, as for redemptions).
#[utoipa::path(post, path = "/api/v1/loyalty/members/{id}/adjustments", tag = "loyalty",
    params(("id" = String, Path, description = "Member id"),
        ("Idempotency-Key" = String, Header, description = "A unique key per adjustment")),
    request_body = AdjustmentBody,
    responses((status = 201, description = "Adjusted: id, member, points, balance, reason"),
        (status = 400, body = super::error::Problem), (status = 404, body = super::error::Problem),
        (status = 409, body = super::error::Problem), (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn adjust(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AdjustmentBody>,
) -> Result<Response, ApiError> {
    let size = PositivePoints::new(body.points.saturating_abs()).map_err(|_| {
        ApiError::field("points", "must be a whole number of points, not 0, credit (positive) or debit (negative)")
    })?;
    let operation = Asked {
        kind: Manual::Adjustment,
        points: body.points.signum() * size.get(),
        reward: None,
        reason: body.reason,
    };
    manual(&state, &caller, &id, &headers, operation, "adjustments").await
}

/// A manual operation as asked; its canonical JSON is what idempotency keys compare.
#[derive(Debug, Serialize)]
pub(crate) struct Asked {
    #[serde(skip)]
    kind: Manual,
    points: Points,
    reward: Option<String>,
    reason: String,
}

impl Asked {
    /// Redeem a reward of the catalogue (its id as the reason, as the API does by default).
    pub(crate) fn reward(reward: &str) -> Asked {
        Asked { kind: Manual::Redemption, points: 0, reward: Some(reward.to_string()), reason: reward.to_string() }
    }
}

/// A redemption or an adjustment, once per idempotency key.
async fn manual(
    state: &AppState,
    caller: &Caller,
    id: &str,
    headers: &HeaderMap,
    asked: Asked,
    route: &str,
) -> Result<Response, ApiError> {
    let member = parse_member_id(id)?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            ApiError::field(
                "Idempotency-Key",
                "this header is required (a unique value per operation, e.g. a UUID), at most 255 characters",
            )
        })?
        .to_string();
    let answer = operate(state, caller.actor(), &caller.principal, member, key, asked, route).await?;
    match answer {
        OperationAnswer::KeyReused => Ok(unprocessable(
            "this Idempotency-Key was already used with another request body; use a new key for a new operation",
        )),
        OperationAnswer::Answer(stored) => {
            let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = (status, stored.body).into_response();
            let content_type = if status.is_success() { "application/json" } else { "application/problem+json" };
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            Ok(response)
        }
    }
}

/// Apply a redemption or an adjustment once per idempotency key, for `actor`
/// (idempotency keys are scoped to `principal` and the route): the stored
/// answer, the first one on a retry. The API and the portal debit through here.
pub(crate) async fn operate(
    state: &AppState,
    actor: String,
    principal: &str,
    member: MemberId,
    key: String,
    asked: Asked,
    route: &str,
) -> Result<OperationAnswer, ApiError> {
    let reason = asked.reason.trim().to_string();
    if reason.is_empty() || reason.chars().count() > MAX_REASON {
        return Err(ApiError::field(
            "reason",
            format!("must say what the points are for, 1 to {MAX_REASON} characters"),
        ));
    }
    let asked = Asked { reason, ..asked };
    let request_hash = hex::encode(sha2::Sha256::digest(serde_json::to_vec(&asked).unwrap_or_default()));
    let request = ManualOperation {
        kind: asked.kind,
        member,
        points: asked.points,
        reward: asked.reward,
        reason: asked.reason,
        actor,
        scope: format!("{principal} POST /api/v1/loyalty/members/{member}/{route}"),
        key,
        request_hash,
        day: today(state),
    };
    state.store.run(move |engine| engine.loyalty_operate(&request)).await.map_err(|e| match e {
        crate::store::StoreError::NotFound => ApiError::NotFound(format!("no member `{member}`")),
        other => other.into(),
    })
}

fn unprocessable(detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "https://relais.dev/problems/idempotency_key_reused",
        "title": "Idempotency key reused",
        "status": 422,
        "detail": detail,
        "message": detail,
        "code": "idempotency_key_reused",
        "errors": [{ "field": "Idempotency-Key", "reason": detail }],
    });
    let mut response = (StatusCode::UNPROCESSABLE_ENTITY, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    response
}

/// What an expiry run did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExpiryRun {
    /// Members whose points expired.
    pub members: usize,
    /// Points expired.
    pub points: i64,
    /// Tier changes made by the review (downgrades after grace, notices on review dates).
    pub tier_changes: usize,
    /// The day it ran for.
    pub day: NaiveDate,
    /// Reward reservations released because nobody confirmed them within
    /// their reward's hold (`hold_days`, 7 by default): points and stock back.
    pub reservations_released: usize,
    /// Points those releases gave back.
    pub points_released: i64,
}

/// Release the reward reservations whose hold is over, expire the points
/// whose expiry day has come and review tiers, telling members of notices and
/// upgrades by e-mail (the server also does all of it every hour).
#[utoipa::path(post, path = "/api/v1/loyalty/expiry", tag = "loyalty",
    responses((status = 200, body = ExpiryRun)), security(("bearer" = [])))]
pub async fn run_expiry(State(state): State<AppState>, caller: Caller) -> Result<Json<ExpiryRun>, ApiError> {
    let day = today(&state);
    let actor = caller.actor();
    let done = state
        .store
        .run_audited(move |engine, audit| crate::loyalty::run_scheduled(engine, audit, &actor, day, true))
        .await?;
    Ok(Json(ExpiryRun {
        members: done.members,
        points: done.points,
        tier_changes: done.tier_changes,
        day,
        reservations_released: done.reservations_released,
        points_released: done.points_released,
    }))
}

/// The ledger's invariants: the sum of all entries is zero, every
/// transaction balances, every balance equals its entries and its lots and
/// none is negative.
#[utoipa::path(get, path = "/api/v1/loyalty/check", tag = "loyalty",
    responses((status = 200, description = "The check; `holds` tells whether every invariant holds")),
    security(("bearer" = [])))]
pub async fn check(State(state): State<AppState>, _caller: Caller) -> Result<Response, ApiError> {
    let check = state.store.run(|engine| engine.loyalty_check()).await?;
    let mut body = serde_json::to_value(&check).map_err(|e| ApiError::Internal(e.to_string()))?;
    body["holds"] = serde_json::Value::Bool(check.holds());
    Ok(Json(body).into_response())
}

/// The period of a report.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ReportQuery {
    /// First day counted in the flows (`YYYY-MM-DD`); default: since the start.
    pub since: Option<NaiveDate>,
}

/// The programme's liability (outstanding points × point value, by expiry
/// month), earn and burn by rule and by store, and its breakage rate.
#[utoipa::path(get, path = "/api/v1/loyalty/programmes/{key}/report", tag = "loyalty",
    params(("key" = String, Path, description = "Programme key"), ReportQuery),
    responses((status = 200, description = "The report"), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn report(
    State(state): State<AppState>,
    _caller: Caller,
    Path(key): Path<String>,
    Query(query): Query<ReportQuery>,
) -> Result<Json<crate::store::loyalty::LoyaltyReport>, ApiError> {
    let programme = known_programme(&state, &key).await?;
    let since = query.since;
    let lookup = key.clone();
    let rows = state.store.run(move |engine| engine.loyalty_report(&lookup, since)).await?;
    Ok(Json(crate::store::loyalty::LoyaltyReport::from_rows(&programme, since, rows)))
}

/// What the member needs for a tier.
#[derive(Debug, Serialize, ToSchema)]
pub struct TierGoal {
    /// The tier.
    pub tier: String,
    /// Its name.
    pub name: String,
    /// Its threshold.
    pub threshold: i64,
    /// By when (the next review date, to keep a tier; now, to reach one).
    pub by: NaiveDate,
    /// The measure that counts for it, from what is already recorded.
    pub counted: i64,
    /// What is still missing (0: reached or kept).
    pub missing: i64,
}

/// A member's tier and what it takes to keep it or move up.
#[derive(Debug, Serialize, ToSchema)]
pub struct TierStatus {
    /// Current tier.
    pub tier: Option<String>,
    /// `spend` (minor units), `points` or `engagement` (events).
    pub measure: String,
    /// The rolling window, months.
    pub window_months: u32,
    /// The measure over the window ending today.
    pub value: i64,
    /// A downgrade announced for this day, unless the member qualifies again.
    pub downgrade_on: Option<NaiveDate>,
    /// To keep the current tier at the next review: the window then, counting
    /// what is already recorded (older activity will have left it).
    pub keep: Option<TierGoal>,
    /// To reach the next tier now.
    pub next: Option<TierGoal>,
}

/// "What do I need to keep Gold": the member's tier, its measure, and the
/// exact amount missing to keep it at the next review or to reach the next one.
#[utoipa::path(get, path = "/api/v1/loyalty/members/{id}/tier", tag = "loyalty",
    params(("id" = String, Path, description = "Member id")),
    responses((status = 200, body = TierStatus), (status = 404, body = super::error::Problem),
        (status = 409, body = super::error::Problem, description = "The programme has no tiers")),
    security(("bearer" = [])))]
pub async fn tier(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TierStatus>, ApiError> {
    let id = parse_member_id(&id)?;
    let view = read_member(&state, &caller, id).await?;
    let status = tier_status(&state, &view)
        .await?
        .ok_or_else(|| ApiError::Conflict(format!("programme `{}` has no tiers", view.row.programme)))?;
    Ok(Json(status))
}

/// A membership's tier and what it takes to keep it or move up; `None` when
/// its programme has no tiers (the API's and the portal's).
pub(crate) async fn tier_status(state: &AppState, view: &MemberView) -> Result<Option<TierStatus>, ApiError> {
    let id = view.row.member;
    let today = today(state);
    let programmes = state.store.run(|engine| engine.loyalty_programmes()).await?;
    let Some(tiers) = programmes
        .iter()
        .find(|p| p.head.key == view.row.programme)
        .and_then(|p| p.version_at(today))
        .and_then(|v| v.tiers.clone())
    else {
        return Ok(None);
    };
    let measure = tiers.measure;
    let value_between = |from: NaiveDate, to: NaiveDate| {
        let store = state.store.clone();
        async move { store.run(move |engine| engine.loyalty_tier_value(id, measure, from, to)).await }
    };
    let value = value_between(tiers.window_start(today), today).await?;
    let keep = match view.row.tier.as_deref().and_then(|t| tiers.level(t)) {
        None => None,
        Some(level) => {
            let review_on = tiers.next_review(today);
            let counted = value_between(tiers.window_start(review_on), today).await?;
            Some(TierGoal {
                tier: level.id.clone(),
                name: level.name.clone(),
                threshold: level.threshold,
                by: review_on,
                counted,
                missing: (level.threshold - counted).max(0),
            })
        }
    };
    let rank = tiers.rank(view.row.tier.as_deref());
    let next = tiers.levels.iter().enumerate().find(|(i, _)| rank.is_none_or(|r| *i > r)).map(|(_, level)| TierGoal {
        tier: level.id.clone(),
        name: level.name.clone(),
        threshold: level.threshold,
        by: today,
        counted: value,
        missing: (level.threshold - value).max(0),
    });
    Ok(Some(TierStatus {
        tier: view.row.tier.clone(),
        measure: measure.as_str().into(),
        window_months: tiers.window_months,
        value,
        downgrade_on: view.row.downgrade_on,
        keep,
        next,
    }))
}

/// A reward with its stock left.
#[derive(Debug, Serialize, ToSchema)]
pub struct RewardView {
    /// The definition.
    #[schema(value_type = Object)]
    pub reward: relais_domain::loyalty::rewards::Reward,
    /// Stock left (`null`: unlimited).
    pub stock_left: Option<i64>,
}

/// A programme's catalogue.
#[derive(Debug, Serialize, ToSchema)]
pub struct Catalogue {
    /// Rewards by id.
    pub rewards: Vec<RewardView>,
}

async fn known_programme(state: &AppState, key: &str) -> Result<Programme, ApiError> {
    let programmes = state.store.run(|engine| engine.loyalty_programmes()).await?;
    programmes
        .into_iter()
        .find(|p| p.head.key == key)
        .ok_or_else(|| ApiError::NotFound(format!("no programme `{key}`")))
}

/// Add a reward to the catalogue, or change one (its stock counts what was
/// already redeemed: raising the stock from 10 to 15 after 4 were taken leaves 11).
#[utoipa::path(post, path = "/api/v1/loyalty/programmes/{key}/rewards", tag = "loyalty",
    params(("key" = String, Path, description = "Programme key")),
    request_body(content = Object, description = "id, name, cost, stock (absent: unlimited), valid_from, valid_until, tiers, hold_days (days a reservation holds before the scheduled job releases it; absent: 7)"),
    responses((status = 200, body = RewardView), (status = 400, body = super::error::Problem), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn put_reward(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
    ApiJson(reward): ApiJson<relais_domain::loyalty::rewards::Reward>,
) -> Result<Json<RewardView>, ApiError> {
    known_programme(&state, &key).await?;
    reward.check().map_err(|(field, reason)| ApiError::field(field, reason))?;
    let (stored, actor) = (reward.clone(), caller.actor());
    let stock_left = state
        .store
        .run_audited(move |engine, audit| {
            let left = engine.loyalty_put_reward(&key, &stored)?;
            audit.record(
                &actor,
                "loyalty.reward.put",
                None,
                serde_json::json!({ "programme": key, "reward": stored.id }),
            )?;
            Ok(left)
        })
        .await?;
    Ok(Json(RewardView { reward, stock_left }))
}

/// A programme's rewards catalogue with the stock left.
#[utoipa::path(get, path = "/api/v1/loyalty/programmes/{key}/rewards", tag = "loyalty",
    params(("key" = String, Path, description = "Programme key")),
    responses((status = 200, body = Catalogue), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn list_rewards(
    State(state): State<AppState>,
    _caller: Caller,
    Path(key): Path<String>,
) -> Result<Json<Catalogue>, ApiError> {
    known_programme(&state, &key).await?;
    let rewards = state.store.run(move |engine| engine.loyalty_rewards(&key)).await?;
    Ok(Json(Catalogue {
        rewards: rewards.into_iter().map(|(reward, stock_left)| RewardView { reward, stock_left }).collect(),
    }))
}

/// A reward redemption as it stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct RedemptionView {
    /// Its id.
    pub id: String,
    /// The member.
    pub member: String,
    /// The reward.
    pub reward: String,
    /// Points it cost.
    pub points: Points,
    /// `reserved`, `confirmed` or `cancelled`.
    pub status: String,
}

async fn settle(
    state: &AppState,
    caller: &Caller,
    id: String,
    confirm: bool,
) -> Result<Json<RedemptionView>, ApiError> {
    let (day, actor) = (today(state), caller.actor());
    let action = if confirm { "loyalty.redemption.confirm" } else { "loyalty.redemption.cancel" };
    let row = state
        .store
        .run_audited(move |engine, audit| {
            let row = engine.loyalty_settle(&id, confirm, &actor, day)?;
            audit.record(
                &actor,
                action,
                None,
                serde_json::json!({ "redemption": row.id, "member": row.member.to_string() }),
            )?;
            Ok(row)
        })
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound => ApiError::NotFound("no such reward redemption".into()),
            other => other.into(),
        })?;
    Ok(Json(RedemptionView {
        id: row.id,
        member: row.member.to_string(),
        reward: row.reward,
        points: row.points,
        status: row.status.as_str().into(),
    }))
}

/// Confirm a reserved reward (handed over). Confirming twice is harmless.
#[utoipa::path(post, path = "/api/v1/loyalty/redemptions/{id}/confirm", tag = "loyalty",
    params(("id" = String, Path, description = "Redemption id (the `id` of the redemption's answer)")),
    responses((status = 200, body = RedemptionView), (status = 404, body = super::error::Problem), (status = 409, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn confirm_redemption(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RedemptionView>, ApiError> {
    settle(&state, &caller, id, true).await
}

/// Cancel a reserved reward: its points go back into the lots they came
/// from, its stock back to the catalogue. A confirmed reward cannot be cancelled.
#[utoipa::path(post, path = "/api/v1/loyalty/redemptions/{id}/cancel", tag = "loyalty",
    params(("id" = String, Path, description = "Redemption id")),
    responses((status = 200, body = RedemptionView), (status = 404, body = super::error::Problem), (status = 409, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn cancel_redemption(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RedemptionView>, ApiError> {
    settle(&state, &caller, id, false).await
}

/// A basket to pay partly with points.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuoteBody {
    /// The basket's total, minor units of the programme's currency.
    pub basket_minor: i64,
}

/// What points can pay of a basket.
#[derive(Debug, Serialize, ToSchema)]
pub struct Quote {
    /// The member's balance.
    pub balance: Points,
    /// What one point is worth, minor units.
    pub point_value_minor: i64,
    /// The most points usable on this basket.
    pub max_points: Points,
    /// What they pay, minor units.
    pub max_discount_minor: i64,
    /// Currency.
    pub currency: String,
}

/// Quote paying part of a basket with points (read only: then redeem the
/// chosen number of points with an `Idempotency-Key`).
#[utoipa::path(post, path = "/api/v1/loyalty/members/{id}/quote", tag = "loyalty",
    params(("id" = String, Path, description = "Member id")), request_body = QuoteBody,
    responses((status = 200, body = Quote), (status = 400, body = super::error::Problem), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn quote(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<QuoteBody>,
) -> Result<Json<Quote>, ApiError> {
    if !(1..=1_000_000_000_000).contains(&body.basket_minor) {
        return Err(ApiError::field("basket_minor", "must be a positive amount in minor units (cents)"));
    }
    let view = read_member(&state, &caller, parse_member_id(&id)?).await?;
    let programme = known_programme(&state, &view.row.programme).await?;
    let value = programme.head.point_value_minor;
    let max_points = if value <= 0 { 0 } else { view.row.balance.min(body.basket_minor / value) };
    Ok(Json(Quote {
        balance: view.row.balance,
        point_value_minor: value,
        max_points,
        max_discount_minor: max_points * value,
        currency: programme.head.currency,
    }))
}

/// A campaign and how many codes to issue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueBody {
    /// The campaign: id, benefit, bonus_points, valid_from, valid_until,
    /// per_member, total, tiers, early_access, segments (names of saved
    /// segments; a code then works only for customers in one of them).
    #[schema(value_type = Object)]
    pub campaign: relais_domain::loyalty::coupons::Campaign,
    /// Codes to issue now (1 to 100,000).
    pub count: usize,
}

/// Codes issued: shown once, stored only as keyed hashes.
#[derive(Debug, Serialize, ToSchema)]
pub struct Issued {
    /// The campaign.
    pub campaign: String,
    /// The new codes, grouped by four.
    pub codes: Vec<String>,
    /// Codes issued in all.
    pub issued: i64,
    /// Codes used so far.
    pub used: i64,
}

/// Create a coupon campaign (or change it) and issue unique codes: the codes
/// are in this answer only; relais keeps their keyed hash.
#[utoipa::path(post, path = "/api/v1/loyalty/programmes/{key}/coupons", tag = "loyalty",
    params(("key" = String, Path, description = "Programme key")), request_body = IssueBody,
    responses((status = 201, body = Issued), (status = 400, body = super::error::Problem), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn issue_coupons(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<IssueBody>,
) -> Result<Response, ApiError> {
    known_programme(&state, &key).await?;
    body.campaign.check().map_err(|(field, reason)| ApiError::field(format!("campaign.{field}"), reason))?;
    if !(1..=100_000).contains(&body.count) {
        return Err(ApiError::field("count", "issue 1 to 100000 codes at a time"));
    }
    let named = body.campaign.segments.clone();
    let unknown = state.store.run(move |engine| crate::loyalty::unknown_segments(engine, &named)).await?;
    if !unknown.is_empty() {
        return Err(ApiError::field("campaign.segments", crate::loyalty::unknown_segments_reason(&unknown)));
    }
    let (campaign, actor, count) = (body.campaign.clone(), caller.actor(), body.count);
    let (codes, issued, used) = state
        .store
        .run_audited(move |engine, audit| crate::loyalty::issue_coupons(engine, audit, &actor, &key, &campaign, count))
        .await?;
    let body = Issued { campaign: body.campaign.id, codes: codes.iter().map(|c| c.printed()).collect(), issued, used };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// A campaign with its counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignView {
    /// The definition.
    #[schema(value_type = Object)]
    pub campaign: relais_domain::loyalty::coupons::Campaign,
    /// Codes issued.
    pub issued: i64,
    /// Codes used.
    pub used: i64,
}

/// A programme's coupon campaigns with their codes issued and used.
#[utoipa::path(get, path = "/api/v1/loyalty/programmes/{key}/coupons", tag = "loyalty",
    params(("key" = String, Path, description = "Programme key")),
    responses((status = 200, description = "`campaigns`: each with its definition, issued and used"), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn list_campaigns(
    State(state): State<AppState>,
    _caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    known_programme(&state, &key).await?;
    let campaigns = state.store.run(move |engine| engine.loyalty_campaigns(&key)).await?;
    let campaigns: Vec<CampaignView> =
        campaigns.into_iter().map(|(campaign, issued, used)| CampaignView { campaign, issued, used }).collect();
    Ok(Json(serde_json::json!({ "campaigns": campaigns })).into_response())
}

/// A coupon presented at a till or online.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CouponBody {
    /// The code as printed (case and dashes do not matter).
    pub code: String,
    /// The member, `mem_…`.
    pub member: String,
    /// The order it is used for.
    pub order_id: Option<String>,
}

/// Use a coupon: checked (check character, dates, tier, saved segments,
/// limits), recorded against the order, with its bonus points. The same code
/// again for the same member and order answers the first use; for anyone
/// else, 409. A campaign targeting segments refuses (409) a member whose
/// customer is not in one of them now.
#[utoipa::path(post, path = "/api/v1/loyalty/coupons/redeem", tag = "loyalty", request_body = CouponBody,
    responses((status = 201, description = "Accepted: campaign, benefit, member, order_id, bonus_points, balance"),
        (status = 200, description = "The same use again"),
        (status = 400, body = super::error::Problem), (status = 404, body = super::error::Problem), (status = 409, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn use_coupon(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CouponBody>,
) -> Result<Response, ApiError> {
    let code =
        relais_domain::loyalty::coupons::CouponCode::parse(&body.code).map_err(|e| ApiError::field("code", e))?;
    let member = MemberId::parse(&body.member).map_err(|e| ApiError::field("member", e.to_string()))?;
    if body.order_id.as_ref().is_some_and(|o| o.is_empty() || o.len() > 100) {
        return Err(ApiError::field("order_id", "must be 1 to 100 characters"));
    }
    let request = crate::store::loyalty::CouponRequest {
        member,
        code_hash: crate::loyalty::coupon_hash(&state.store.privacy().keyring, &code),
        order_id: body.order_id,
        day: today(&state),
    };
    let actor = caller.actor();
    let accepted = state
        .store
        .run_audited(move |engine, audit| {
            let accepted = engine.loyalty_use_coupon(&request)?;
            if accepted.new {
                audit.record(
                    &actor,
                    "loyalty.coupon.use",
                    None,
                    serde_json::json!({ "campaign": accepted.campaign, "member": accepted.member }),
                )?;
            }
            Ok(accepted)
        })
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound => ApiError::NotFound(format!("no member `{member}`")),
            other => other.into(),
        })?;
    let status = if accepted.new { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(accepted)).into_response())
}
