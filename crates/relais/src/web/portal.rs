//! The customers' self-care portal (`/me`): sign-in with a one-time code
//! (e-mailed, typed with the e-mail or the card number) or a link handed over
//! by staff; the card, points and statement, tier and rewards; receipts and
//! spending; everything relais holds, consents and erasure. Handlers are thin:
//! they call the API's own functions (statement, tier, debits, the access
//! export, rights requests) and read the profile following merges, audited
//! with the actor `member:<customer id>`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{DateTime, Duration, Utc};
use minijinja::{context, Value};
use rand::Rng;
use relais_domain::consent::{may, ConsentChannel, ConsentFact, ConsentSource, Proof, Purpose};
use relais_domain::rights::{RequestStatus, RightKind};
use relais_domain::{CustomerId, Identifier, IdentifierKind, MemberId};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::charts;
use super::i18n::{negotiate, other, t, Lang};
use super::render::{page, PageError};
use super::session::{self, Member};
use crate::http::loyalty::{build_statement, operate, read_member_as, tier_status, Asked};
use crate::http::AppState;
use crate::privacy::keyring::Keyring;
use crate::store::loyalty::{MemberStatus, OperationAnswer};
use crate::store::web::{CodeKind, SessionSubject, SignInCode};
use crate::store::{Audit, CustomerLookup, CustomerRecord, Engine, StoreError};

/// How long an e-mailed code works.
pub const CODE_MINUTES: i64 = 15;
/// How long a staff link works.
pub const LINK_HOURS: i64 = 24;
/// The wording version of the portal's consent form.
const CONSENT_WORDING: &str = "portal-1";
/// The most events read to list a member's orders.
const ORDER_SCAN: usize = 20_000;
/// Refusals of a redemption the portal explains (the ledger's problem codes).
const REFUSALS: [&str; 5] =
    ["insufficient_balance", "out_of_stock", "reward_unavailable", "unknown_reward", "membership_closed"];

/// The portal's sections: key, link.
const SECTIONS: &[(&str, &str)] =
    &[("me.nav.home", "/me"), ("me.nav.receipts", "/me/receipts"), ("me.nav.data", "/me/data")];

/// The audit actor of a signed-in member.
fn actor(member: &Member) -> String {
    format!("member:{}", member.customer)
}

/// What every signed-in portal page knows.
fn frame(member: &Member, here: &str, page_values: Value) -> Value {
    let nav: Vec<Value> =
        SECTIONS.iter().map(|(key, href)| context! { key => *key, href => *href, active => *href == here }).collect();
    context! {
        lang => member.lang.as_str(),
        other_lang => other(member.lang).as_str(),
        csrf => member.csrf.clone(),
        me_nav => nav,
        here => here,
        ..page_values
    }
}

/// What a sign-in page knows.
fn public_frame(lang: Lang, here: &str, page_values: Value) -> Value {
    context! { lang => lang.as_str(), other_lang => other(lang).as_str(), here => here, ..page_values }
}

fn with_status(mut response: Response, status: StatusCode) -> Response {
    *response.status_mut() = status;
    response
}

/// The profile a session stands for now: itself, or the one it was merged into.
fn survivor(engine: &dyn Engine, id: CustomerId) -> Result<CustomerRecord, StoreError> {
    let mut id = id;
    for _ in 0..16 {
        match engine.customer(id)? {
            CustomerLookup::Found(record) => return Ok(*record),
            CustomerLookup::MergedInto(next) => id = next,
            CustomerLookup::NotFound => break,
        }
    }
    Err(StoreError::NotFound)
}

/// What a member types to sign in: an e-mail address, or a card number.
pub fn typed_identifier(text: &str) -> Option<Identifier> {
    let text = text.trim();
    if text.is_empty() || text.len() > 320 {
        return None;
    }
    let kind = if text.contains('@') { IdentifierKind::Email } else { IdentifierKind::Card };
    Identifier::new(kind, text).ok()
}

/// The keyed hash a typed code is stored under (HMAC over customer and code).
fn code_hash(keyring: &Keyring, customer: CustomerId, code: &str) -> String {
    hex::encode(keyring.sign(format!("portal-code:{customer}:{code}").as_bytes()))
}

/// The keyed hash a link's token is stored under.
fn link_hash(keyring: &Keyring, token: &str) -> String {
    hex::encode(keyring.sign(format!("portal-link:{token}").as_bytes()))
}

/// The person holding `identifier`, following merges (`None`: nobody).
fn holder(engine: &dyn Engine, identifier: &Identifier) -> Result<Option<CustomerRecord>, StoreError> {
    let Some(id) = engine.customer_id_by_identifier(identifier)? else { return Ok(None) };
    match survivor(engine, id) {
        Ok(record) => Ok(Some(record)),
        Err(StoreError::NotFound) => Ok(None),
        Err(other) => Err(other),
    }
}

/// Create a six-digit code for whoever holds `identifier` and queue it by
/// e-mail (sealed in the outbox like every message to a person). Nothing
/// happens for an unknown identifier or a person without an e-mail address,
/// and the caller answers the same way.
fn send_code(engine: &dyn Engine, audit: &Audit<'_>, identifier: &Identifier, lang: Lang) -> Result<(), StoreError> {
    let Some(record) = holder(engine, identifier)? else { return Ok(()) };
    let Some(email) = record.identifiers.iter().find(|i| i.kind() == IdentifierKind::Email) else { return Ok(()) };
    let code = format!("{:06}", rand::thread_rng().gen_range(0..1_000_000u32));
    let keyring = &engine.privacy().keyring;
    engine.sign_in_code_put(&SignInCode {
        code_hash: code_hash(keyring, record.id, &code),
        customer: record.id,
        kind: CodeKind::Typed,
        expires_at: Utc::now() + Duration::minutes(CODE_MINUTES),
    })?;
    let message = crate::outbox::Email {
        to: email.value().to_string(),
        subject: t(lang, "me.mail.subject", &[]),
        text: t(lang, "me.mail.text", &[("code", code), ("minutes", CODE_MINUTES.to_string())]),
        unsubscribe_url: None,
    };
    audit.record("portal", "portal.code_sent", Some(record.id), json!({ "identifier_kind": identifier.kind() }))?;
    let payload = serde_json::to_value(&message).map_err(|e| StoreError::Database(e.to_string()))?;
    engine.enqueue("email", Some(record.id), &payload)?;
    Ok(())
}

/// A one-time sign-in link for whoever holds `identifier`, valid a day, for
/// staff to hand over (`relais portal link`): the URL under `base`.
pub fn create_link(
    engine: &dyn Engine,
    audit: &Audit<'_>,
    actor: &str,
    identifier: &Identifier,
    base: &str,
) -> Result<String, StoreError> {
    let record = holder(engine, identifier)?.ok_or(StoreError::NotFound)?;
    let token = session::new_secret();
    audit.record(actor, "portal.link", Some(record.id), json!({ "identifier_kind": identifier.kind() }))?;
    engine.sign_in_code_put(&SignInCode {
        code_hash: link_hash(&engine.privacy().keyring, &token),
        customer: record.id,
        kind: CodeKind::Link,
        expires_at: Utc::now() + Duration::hours(LINK_HOURS),
    })?;
    Ok(format!("{}/me/link/{token}", base.trim_end_matches('/')))
}

/// Open a member session and go to the portal.
async fn signed_in(state: &AppState, customer: CustomerId, lang: Lang) -> Result<Response, PageError> {
    let cookie = session::start(state, SessionSubject::Member(customer)).await.map_err(|e| e.in_lang(lang))?;
    Ok(session::with_cookie(Redirect::to("/me").into_response(), cookie))
}

/// `GET /me/login`: type an e-mail address or a card number.
pub(super) async fn login_page(headers: HeaderMap) -> Result<Response, PageError> {
    let lang = negotiate(&headers);
    page("me_login.html", public_frame(lang, "/me/login", context! { identifier => "" }))
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    identifier: String,
}

/// The page where the code is typed.
fn code_form(lang: Lang, identifier: &str, sent: bool, error: Option<&str>) -> Result<Response, PageError> {
    page(
        "me_code.html",
        public_frame(lang, "/me/code", context! { identifier => identifier, sent => sent, error => error }),
    )
}

/// Whether this identifier may try again now (ten tries a minute).
fn allowed(state: &AppState, identifier: &Identifier) -> bool {
    state.logins.check_key(&format!("portal:{identifier}")).is_ok()
}

/// `POST /me/login`: send a code to whoever holds the identifier, and answer
/// the same way whether or not someone does.
pub(super) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, PageError> {
    let lang = negotiate(&headers);
    let Some(identifier) = typed_identifier(&form.identifier) else {
        let context = public_frame(
            lang,
            "/me/login",
            context! { identifier => form.identifier.clone(), error => "me.login.invalid" },
        );
        return Ok(with_status(page("me_login.html", context)?, StatusCode::BAD_REQUEST));
    };
    if !allowed(&state, &identifier) {
        let context =
            public_frame(lang, "/me/login", context! { identifier => form.identifier.clone(), error => "me.too_many" });
        return Ok(with_status(page("me_login.html", context)?, StatusCode::TOO_MANY_REQUESTS));
    }
    let lookup = identifier.clone();
    state
        .store
        .run_audited(move |engine, audit| send_code(engine, audit, &lookup, lang))
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?;
    code_form(lang, form.identifier.trim(), true, None)
}

/// `GET /me/code`: type the code with the e-mail address or card number.
pub(super) async fn code_page(headers: HeaderMap) -> Result<Response, PageError> {
    code_form(negotiate(&headers), "", false, None)
}

#[derive(Debug, Deserialize)]
pub(super) struct CodeForm {
    #[serde(default)]
    identifier: String,
    #[serde(default)]
    code: String,
}

/// `POST /me/code`: a right code opens a member session; wrong codes count
/// against the member's pending codes.
pub(super) async fn check_code(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<CodeForm>,
) -> Result<Response, PageError> {
    let lang = negotiate(&headers);
    let typed = form.identifier.trim().to_string();
    let Some(identifier) = typed_identifier(&typed) else {
        return Ok(with_status(code_form(lang, &typed, false, Some("me.login.invalid"))?, StatusCode::BAD_REQUEST));
    };
    if !allowed(&state, &identifier) {
        return Ok(with_status(code_form(lang, &typed, false, Some("me.too_many"))?, StatusCode::TOO_MANY_REQUESTS));
    }
    let code: String = form.code.chars().filter(|c| !c.is_whitespace()).collect();
    let well_formed = code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit());
    let customer = state
        .store
        .run_audited(move |engine, audit| {
            let Some(record) = holder(engine, &identifier)? else { return Ok(None) };
            // A malformed code still counts as a wrong attempt.
            let hash = if well_formed { code_hash(&engine.privacy().keyring, record.id, &code) } else { String::new() };
            use_code(engine, audit, CodeKind::Typed, Some(record.id), &hash, "code")
        })
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?;
    match customer {
        Some(customer) => signed_in(&state, customer, lang).await,
        None => Ok(with_status(code_form(lang, &typed, false, Some("me.code.wrong"))?, StatusCode::UNAUTHORIZED)),
    }
}

/// Use a sign-in code once and audit the sign-in (`by`: how it came).
fn use_code(
    engine: &dyn crate::store::Engine,
    audit: &crate::store::Audit<'_>,
    kind: CodeKind,
    customer: Option<CustomerId>,
    hash: &str,
    by: &str,
) -> Result<Option<CustomerId>, crate::store::StoreError> {
    let used = engine.sign_in_code_use(kind, customer, hash, Utc::now())?;
    if let Some(customer) = used {
        audit.record(&format!("member:{customer}"), "portal.sign_in", Some(customer), json!({ "by": by }))?;
    }
    Ok(used)
}

/// A link's token as it may appear in a page (base64url only).
fn safe_token(token: &str) -> Option<&str> {
    let ok =
        (20..=128).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(token)
}

/// `GET /me/link/{token}`: a button that signs in (mail scanners following
/// links never use it up).
pub(super) async fn link_page(headers: HeaderMap, Path(token): Path<String>) -> Result<Response, PageError> {
    let lang = negotiate(&headers);
    let token = safe_token(&token).ok_or_else(|| PageError::bad_request(lang, "me.link.invalid"))?;
    page("me_link.html", public_frame(lang, "/me/login", context! { token => token }))
}

/// `POST /me/link/{token}`: sign in with a staff link, once.
pub(super) async fn use_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Result<Response, PageError> {
    let lang = negotiate(&headers);
    let token = safe_token(&token).ok_or_else(|| PageError::bad_request(lang, "me.link.invalid"))?.to_string();
    let customer = state
        .store
        .run_audited(move |engine, audit| {
            let hash = link_hash(&engine.privacy().keyring, &token);
            use_code(engine, audit, CodeKind::Link, None, &hash, "link")
        })
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?;
    match customer {
        Some(customer) => signed_in(&state, customer, lang).await,
        None => Err(PageError::new(StatusCode::GONE, lang, "me.link.invalid")),
    }
}

/// `POST /me/logout`.
pub(super) async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, PageError> {
    let cookie = session::end(&state, &headers, session::MEMBER_COOKIE).await?;
    Ok(session::with_cookie(Redirect::to("/me/login").into_response(), cookie))
}

#[derive(Debug, Deserialize)]
pub(super) struct HomeQuery {
    redeemed: Option<String>,
    refused: Option<String>,
}

/// A date in the organisation's calendar.
fn day(state: &AppState, at: DateTime<Utc>) -> String {
    at.with_timezone(&state.settings.ingest.time_zone).date_naive().to_string()
}

/// `GET /me`: my card, points, statement, what expires, my tier, rewards and offers.
pub(super) async fn home(
    State(state): State<AppState>,
    member: Member,
    Query(query): Query<HomeQuery>,
) -> Result<Response, PageError> {
    let lang = member.lang;
    let (customer, actor) = (member.customer, actor(&member));
    let audit_actor = actor.clone();
    let (record, memberships, programmes) = state
        .store
        .run_audited(move |engine, audit| {
            let record = survivor(engine, customer)?;
            audit.record(&audit_actor, "customer.read", Some(record.id), json!({ "page": "portal" }))?;
            let memberships = engine.loyalty_members_of(record.id)?;
            Ok((record, memberships, engine.loyalty_programmes()?))
        })
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?;
    let today = state.settings.ingest.day_of(Utc::now());
    let currency = state.settings.ingest.currency.clone();
    let exponent = relais_domain::money::currency_exponent(&currency) as i32;
    let mut cards = Vec::new();
    for listed in memberships.into_iter().filter(|m| m.row.status == MemberStatus::Active) {
        let view = read_member_as(&state, actor.clone(), listed.row.member)
            .await
            .map_err(|e| PageError::from(e).in_lang(lang))?;
        let statement = build_statement(&state, &view, lang).await.map_err(|e| PageError::from(e).in_lang(lang))?;
        let tier = tier_status(&state, &view).await.map_err(|e| PageError::from(e).in_lang(lang))?;
        let programme = programmes.iter().find(|p| p.head.key == view.row.programme);
        let name = programme.map_or_else(|| view.row.programme.clone(), |p| p.head.name.clone());
        let svg = match &view.card_number {
            Some(card) => crate::loyalty::card_svg(&name, card).ok(),
            None => None,
        };
        let key = view.row.programme.clone();
        let (rewards, campaigns) = state
            .store
            .run(move |engine| Ok((engine.loyalty_rewards(&key)?, engine.loyalty_campaigns(&key)?)))
            .await
            .map_err(|e| PageError::from(e).in_lang(lang))?;
        let member_tier = view.row.tier.clone();
        let for_tier = |tiers: &[String]| tiers.is_empty() || member_tier.as_ref().is_some_and(|t| tiers.contains(t));
        let rewards: Vec<Value> = rewards
            .iter()
            .filter(|(reward, _)| reward.valid_until.is_none_or(|d| d >= today) && for_tier(&reward.tiers))
            .map(|(reward, stock)| {
                context! {
                    id => reward.id.clone(),
                    name => reward.name.clone(),
                    cost => reward.cost,
                    stock => stock,
                    affordable => reward.cost <= view.row.balance,
                    key => session::new_secret(),
                }
            })
            .collect();
        let offers: Vec<Value> = campaigns
            .iter()
            .filter(|(c, _, _)| c.valid_until >= today && for_tier(&c.tiers))
            .map(|(c, _, _)| {
                let from = member_tier.as_ref().and_then(|t| c.early_access.get(t)).copied().unwrap_or(c.valid_from);
                context! { benefit => c.benefit.clone(), from => from.to_string(), until => c.valid_until.to_string(), bonus => c.bonus_points }
            })
            .collect();
        let tz = state.settings.ingest.time_zone;
        let entries: Vec<Value> = statement
            .entries
            .iter()
            .rev()
            .map(|e| {
                context! {
                    on => e.created_at.with_timezone(&tz).date_naive().to_string(),
                    points => e.points,
                    reason => e.reason.clone(),
                    expires => e.expires_at.map(|d| d.with_timezone(&tz).date_naive().to_string()),
                }
            })
            .collect();
        let expiring: Vec<Value> =
            statement.expiring.iter().map(|x| context! { on => x.on.to_string(), points => x.points }).collect();
        let spend = tier.as_ref().is_some_and(|t| t.measure == "spend");
        let amount = |value: i64| {
            if spend {
                super::render::format_number(value as f64 / 10f64.powi(exponent), 2, lang) + " " + &currency
            } else {
                super::render::format_number(value as f64, 0, lang) + " " + &statement.unit
            }
        };
        let tier = tier.as_ref().map(|status| {
            let current = status.tier.as_ref().map(|id| {
                programme
                    .and_then(|p| p.version_at(today))
                    .and_then(|v| v.tiers.as_ref())
                    .and_then(|tiers| tiers.level(id))
                    .map_or_else(|| id.clone(), |level| level.name.clone())
            });
            context! {
                current => current,
                value => amount(status.value),
                months => status.window_months,
                downgrade_on => status.downgrade_on.map(|d| d.to_string()),
                keep => status.keep.as_ref().map(|g| context! { name => g.name.clone(), missing => g.missing, missing_text => amount(g.missing), by => g.by.to_string() }),
                next => status.next.as_ref().map(|g| context! { name => g.name.clone(), missing => g.missing, missing_text => amount(g.missing) }),
            }
        });
        cards.push(context! {
            member => view.row.member.to_string(),
            programme => name,
            card => view.card_number.clone(),
            svg => svg,
            balance => statement.balance,
            unit => statement.unit.clone(),
            entries => entries,
            expiring => expiring,
            tier => tier,
            rewards => rewards,
            offers => offers,
        });
    }
    let refused = query.refused.as_deref().and_then(|code| REFUSALS.iter().find(|r| **r == code)).copied();
    let name = display_name(&record);
    page(
        "me_home.html",
        frame(
            &member,
            "/me",
            context! {
                name => name,
                cards => cards,
                redeemed => query.redeemed.is_some(),
                refused => refused.map(|code| format!("me.refused.{code}")),
            },
        ),
    )
}

/// The member's first name, or nothing.
fn display_name(record: &CustomerRecord) -> Option<String> {
    ["firstName", "first_name", "name"]
        .iter()
        .find_map(|key| record.profile.get(*key).and_then(|v| v.as_str()).map(str::trim).filter(|s| !s.is_empty()))
        .map(str::to_string)
}

#[derive(Debug, Deserialize)]
pub(super) struct RedeemForm {
    #[serde(default)]
    member: String,
    #[serde(default)]
    key: String,
}

/// `POST /me/rewards/{reward}/redeem`: the API's debit, once per rendered
/// form (its idempotency key), so a double submit debits once; a refusal
/// comes back to the page as a message.
pub(super) async fn redeem(
    State(state): State<AppState>,
    member: Member,
    Path(reward): Path<String>,
    Form(form): Form<RedeemForm>,
) -> Result<Response, PageError> {
    let lang = member.lang;
    let membership = MemberId::parse(&form.member).map_err(|_| PageError::bad_request(lang, "error.bad_request"))?;
    let key = form.key.trim().to_string();
    if key.is_empty() || key.len() > 255 || safe_token(&key).is_none() {
        return Err(PageError::bad_request(lang, "error.bad_request"));
    }
    let customer = member.customer;
    let owns = state
        .store
        .run(move |engine| {
            let record = survivor(engine, customer)?;
            Ok(engine.loyalty_members_of(record.id)?.iter().any(|m| m.row.member == membership))
        })
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?;
    if !owns {
        return Err(PageError::not_found(lang));
    }
    let actor = actor(&member);
    let answer = operate(&state, actor.clone(), &actor, membership, key, Asked::reward(&reward), "redemptions")
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?;
    let target = match answer {
        OperationAnswer::Answer(stored) if (200..300).contains(&stored.status) => {
            format!("/me?redeemed={}", session::urlencode(&reward))
        }
        OperationAnswer::Answer(stored) => {
            let code = serde_json::from_str::<serde_json::Value>(&stored.body)
                .ok()
                .and_then(|body| body.get("code").and_then(|c| c.as_str()).map(str::to_string))
                .unwrap_or_default();
            let code = REFUSALS.iter().find(|r| **r == code).copied().unwrap_or("reward_unavailable");
            format!("/me?refused={code}")
        }
        OperationAnswer::KeyReused => "/me?refused=reward_unavailable".to_string(),
    };
    Ok(Redirect::to(&target).into_response())
}

/// One line of an order.
#[derive(Debug, Clone, Serialize)]
struct OrderLine {
    name: String,
    category: Option<String>,
    price: Option<f64>,
    quantity: f64,
}

/// One order, from its `Order Completed` event.
#[derive(Debug, Clone, Serialize)]
struct Order {
    order_id: String,
    at: DateTime<Utc>,
    store: Option<String>,
    channel: String,
    amount: f64,
    currency: String,
    products: Vec<OrderLine>,
}

/// A text property, if present.
fn text(value: &serde_json::Value, key: &str) -> Option<String> {
    match value.get(key)? {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(value: &serde_json::Value, key: &str) -> Option<f64> {
    match value.get(key)? {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A person's orders, newest first, read from their timeline (profiles merged
/// into theirs included), audited like the API's timeline read.
fn orders_of(
    engine: &dyn Engine,
    audit: &Audit<'_>,
    actor: &str,
    customer: CustomerId,
    currency: &str,
) -> Result<Vec<Order>, StoreError> {
    let record = survivor(engine, customer)?;
    let mut orders = Vec::new();
    let mut cursor = None;
    let mut read = 0;
    loop {
        let page = engine.events(record.id, cursor.as_ref(), 500)?;
        read += page.events.len();
        for event in page.events {
            if event.kind != "track" || event.name.as_deref() != Some("Order Completed") {
                continue;
            }
            let p = &event.properties;
            let products: Vec<OrderLine> = p
                .get("products")
                .and_then(|v| v.as_array())
                .map(|lines| {
                    lines
                        .iter()
                        .map(|line| OrderLine {
                            name: text(line, "name").or_else(|| text(line, "product_id")).unwrap_or_default(),
                            category: text(line, "category"),
                            price: number(line, "price"),
                            quantity: number(line, "quantity").unwrap_or(1.0),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let amount = number(p, "total")
                .or_else(|| number(p, "revenue"))
                .unwrap_or_else(|| products.iter().map(|l| l.price.unwrap_or(0.0) * l.quantity).sum());
            orders.push(Order {
                order_id: text(p, "order_id")
                    .or_else(|| text(p, "orderId"))
                    .unwrap_or_else(|| event.message_id.clone()),
                at: event.timestamp,
                store: event.store.clone().or_else(|| text(p, "store")),
                channel: event.channel.as_str().to_string(),
                amount,
                currency: text(p, "currency").unwrap_or_else(|| currency.to_string()),
                products,
            });
        }
        cursor = page.next;
        if cursor.is_none() || read >= ORDER_SCAN {
            break;
        }
    }
    audit.record(actor, "customer.events", Some(record.id), json!({ "orders": orders.len(), "page": "portal" }))?;
    Ok(orders)
}

async fn my_orders(state: &AppState, member: &Member) -> Result<Vec<Order>, PageError> {
    let (actor, customer, currency) = (actor(member), member.customer, state.settings.ingest.currency.clone());
    state
        .store
        .run_audited(move |engine, audit| orders_of(engine, audit, &actor, customer, &currency))
        .await
        .map_err(|e| PageError::from(e).in_lang(member.lang))
}

fn order_value(state: &AppState, order: &Order) -> Value {
    let tz = state.settings.ingest.time_zone;
    context! {
        id => order.order_id.clone(),
        at => order.at.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string(),
        store => order.store.clone(),
        channel => format!("channel.{}", order.channel),
        amount => order.amount,
        currency => order.currency.clone(),
        products => order.products.iter().map(|l| context! {
            name => l.name.clone(),
            category => l.category.clone(),
            price => l.price,
            quantity => l.quantity,
        }).collect::<Vec<_>>(),
    }
}

/// Sums by label, largest first (at most `keep`, the rest together).
fn ranked(sums: BTreeMap<String, f64>, keep: usize, rest: &str) -> (Vec<String>, Vec<f64>) {
    let mut pairs: Vec<(String, f64)> = sums.into_iter().collect();
    pairs.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if pairs.len() > keep {
        let others: f64 = pairs[keep..].iter().map(|(_, v)| v).sum();
        pairs.truncate(keep);
        pairs.push((rest.to_string(), others));
    }
    pairs.into_iter().unzip()
}

/// `GET /me/receipts`: my orders and my spending by month, category and store.
pub(super) async fn receipts(State(state): State<AppState>, member: Member) -> Result<Response, PageError> {
    let lang = member.lang;
    let orders = my_orders(&state, &member).await?;
    let tz = state.settings.ingest.time_zone;
    let mut by_month: BTreeMap<String, f64> = BTreeMap::new();
    let mut by_category: BTreeMap<String, f64> = BTreeMap::new();
    let mut by_store: BTreeMap<String, f64> = BTreeMap::new();
    let (no_category, online) = (t(lang, "me.receipts.no_category", &[]), t(lang, "me.receipts.online", &[]));
    for order in &orders {
        *by_month.entry(order.at.with_timezone(&tz).format("%Y-%m").to_string()).or_default() += order.amount;
        *by_store.entry(order.store.clone().unwrap_or_else(|| online.clone())).or_default() += order.amount;
        for line in &order.products {
            let spent = line.price.unwrap_or(0.0) * line.quantity;
            *by_category.entry(line.category.clone().unwrap_or_else(|| no_category.clone())).or_default() += spent;
        }
    }
    let months: Vec<(String, f64)> =
        by_month.into_iter().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
    let spent = t(lang, "me.receipts.spent", &[]);
    let others = t(lang, "me.receipts.others", &[]);
    let chart = |columns: Vec<String>, values: Vec<f64>, key: &str| {
        (!columns.is_empty()).then(|| charts::stacked_bars(&columns, &[(spent.clone(), values)], &t(lang, key, &[])))
    };
    let month_chart = chart(
        months.iter().map(|m| m.0.clone()).collect(),
        months.iter().map(|m| m.1).collect(),
        "me.receipts.by_month",
    );
    let (columns, values) = ranked(by_category, 8, &others);
    let category_chart = chart(columns, values, "me.receipts.by_category");
    let (columns, values) = ranked(by_store, 8, &others);
    let store_chart = chart(columns, values, "me.receipts.by_store");
    let total: f64 = orders.iter().map(|o| o.amount).sum();
    let list: Vec<Value> = orders.iter().map(|o| order_value(&state, o)).collect();
    page(
        "me_receipts.html",
        frame(
            &member,
            "/me/receipts",
            context! {
                orders => list,
                total => total,
                currency => state.settings.ingest.currency.clone(),
                month_chart => month_chart,
                category_chart => category_chart,
                store_chart => store_chart,
            },
        ),
    )
}

/// `GET /me/receipts/{order_id}`: one order with its products.
pub(super) async fn receipt(
    State(state): State<AppState>,
    member: Member,
    Path(order_id): Path<String>,
) -> Result<Response, PageError> {
    let orders = my_orders(&state, &member).await?;
    let order = orders.iter().find(|o| o.order_id == order_id).ok_or_else(|| PageError::not_found(member.lang))?;
    page("me_receipt.html", frame(&member, "/me/receipts", context! { order => order_value(&state, order) }))
}

fn download(content_type: &'static str, filename: &'static str, body: Vec<u8>) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// `GET /me/receipts.json`.
pub(super) async fn receipts_json(State(state): State<AppState>, member: Member) -> Result<Response, PageError> {
    let orders = my_orders(&state, &member).await?;
    let body = serde_json::to_vec_pretty(&json!({ "orders": orders }))
        .map_err(|_| PageError::new(StatusCode::INTERNAL_SERVER_ERROR, member.lang, "error.internal"))?;
    Ok(download("application/json", "receipts.json", body))
}

/// `GET /me/receipts.csv`: one row per order line (an order without lines: one row).
pub(super) async fn receipts_csv(State(state): State<AppState>, member: Member) -> Result<Response, PageError> {
    let lang = member.lang;
    let orders = my_orders(&state, &member).await?;
    let failed = |_| PageError::new(StatusCode::INTERNAL_SERVER_ERROR, lang, "error.internal");
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer
        .write_record([
            "order_id", "date", "store", "channel", "total", "currency", "product", "category", "price", "quantity",
        ])
        .map_err(failed)?;
    for order in &orders {
        let head = [
            order.order_id.clone(),
            order.at.to_rfc3339(),
            order.store.clone().unwrap_or_default(),
            order.channel.clone(),
            order.amount.to_string(),
            order.currency.clone(),
        ];
        if order.products.is_empty() {
            writer
                .write_record(head.iter().cloned().chain(["".into(), "".into(), "".into(), "".into()]))
                .map_err(failed)?;
        }
        for line in &order.products {
            let tail = [
                line.name.clone(),
                line.category.clone().unwrap_or_default(),
                line.price.map(|p| p.to_string()).unwrap_or_default(),
                line.quantity.to_string(),
            ];
            writer.write_record(head.iter().cloned().chain(tail)).map_err(failed)?;
        }
    }
    let body =
        writer.into_inner().map_err(|_| PageError::new(StatusCode::INTERNAL_SERVER_ERROR, lang, "error.internal"))?;
    Ok(download("text/csv; charset=utf-8", "receipts.csv", body))
}

/// The channel a purpose is asked on in the portal.
fn channel_of(purpose: Purpose) -> ConsentChannel {
    match purpose {
        Purpose::EmailMarketing => ConsentChannel::Email,
        Purpose::Sms => ConsentChannel::Sms,
        Purpose::Push => ConsentChannel::Push,
        _ => ConsentChannel::Any,
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct DataQuery {
    saved: Option<String>,
}

/// `GET /me/data`: everything relais holds about me, my consents, erasure.
pub(super) async fn data(
    State(state): State<AppState>,
    member: Member,
    Query(query): Query<DataQuery>,
) -> Result<Response, PageError> {
    let lang = member.lang;
    let (customer, actor) = (member.customer, actor(&member));
    let (record, facts, erasure) = state
        .store
        .run_audited(move |engine, audit| {
            let record = survivor(engine, customer)?;
            audit.record(&actor, "customer.read", Some(record.id), json!({ "page": "portal" }))?;
            let facts = engine.consents(record.id)?;
            let erasure = engine
                .requests(Some(RequestStatus::Open))?
                .into_iter()
                .find(|r| r.kind == RightKind::Erasure && r.customer_id == Some(record.id));
            Ok((record, facts, erasure))
        })
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?;
    let now = Utc::now();
    let consents: Vec<Value> = Purpose::ALL
        .iter()
        .map(|purpose| {
            context! {
                purpose => purpose.as_str(),
                key => format!("consent.{}", purpose.as_str()),
                granted => may(&facts, *purpose, channel_of(*purpose), now),
            }
        })
        .collect();
    let profile: Vec<(String, String)> = record
        .profile
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
        .collect();
    let traits = &record.traits;
    let exponent = relais_domain::money::currency_exponent(&state.settings.ingest.currency) as i32;
    page(
        "me_data.html",
        frame(
            &member,
            "/me/data",
            context! {
                id => record.id.to_string(),
                created => day(&state, record.created_at),
                identifiers => record.identifiers.iter().map(|i| context! { kind => format!("me.kind.{}", i.kind().as_str()), value => i.value().to_string() }).collect::<Vec<_>>(),
                profile => profile,
                events => traits.event_count,
                orders => traits.order_count,
                revenue => traits.revenue_minor as f64 / 10f64.powi(exponent),
                currency => state.settings.ingest.currency.clone(),
                first_seen => traits.first_seen.map(|d| day(&state, d)),
                last_seen => traits.last_seen.map(|d| day(&state, d)),
                merged => record.merged_from.len(),
                consents => consents,
                erasure => erasure.map(|r| context! { received => day(&state, r.received_at), due => day(&state, r.due_at) }),
                saved => query.saved.as_deref() == Some("consents"),
            },
        ),
    )
}

/// `GET /me/data.json`: the access export's content, as one JSON file.
pub(super) async fn data_json(State(state): State<AppState>, member: Member) -> Result<Response, PageError> {
    let lang = member.lang;
    let (customer, actor) = (member.customer, actor(&member));
    let data = state
        .store
        .run_audited(move |engine, audit| {
            let record = survivor(engine, customer)?;
            audit.record(&actor, "privacy.export", Some(record.id), json!({ "page": "portal" }))?;
            crate::privacy::export::person_data(engine, record.id)
        })
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?;
    let body = serde_json::to_vec_pretty(&data)
        .map_err(|_| PageError::new(StatusCode::INTERNAL_SERVER_ERROR, lang, "error.internal"))?;
    Ok(download("application/json", "relais-data.json", body))
}

/// The peer's address, when the server knows it (the consent's proof).
pub(super) struct Peer(Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string())))
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ConsentForm {
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    granted: String,
}

/// `POST /me/consents`: give or withdraw one purpose, recorded from the web
/// with the request's address and user agent as proof.
pub(super) async fn consents(
    State(state): State<AppState>,
    member: Member,
    Peer(ip): Peer,
    headers: HeaderMap,
    Form(form): Form<ConsentForm>,
) -> Result<Response, PageError> {
    let lang = member.lang;
    let purpose = Purpose::parse(&form.purpose).ok_or_else(|| PageError::bad_request(lang, "error.bad_request"))?;
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_string);
    let fact = ConsentFact {
        purpose,
        channel: channel_of(purpose),
        granted: form.granted == "true",
        at: Utc::now(),
        source: ConsentSource::Web,
        wording_version: CONSENT_WORDING.into(),
        proof: Proof { ip, user_agent, reference: None },
    };
    fact.validate().map_err(|_| PageError::bad_request(lang, "me.consents.proof"))?;
    let (customer, actor) = (member.customer, actor(&member));
    state
        .store
        .run_audited(move |engine, audit| {
            let record = survivor(engine, customer)?;
            audit.record(
                &actor,
                "consent.record",
                Some(record.id),
                json!({ "purpose": fact.purpose, "granted": fact.granted }),
            )?;
            engine.record_consent(record.id, &fact, &actor, None)
        })
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?;
    Ok(Redirect::to("/me/data?saved=consents").into_response())
}

/// `POST /me/erasure`: open an erasure request (one at a time), due one month later.
pub(super) async fn erasure(State(state): State<AppState>, member: Member) -> Result<Response, PageError> {
    let lang = member.lang;
    let (customer, actor, zone) = (member.customer, actor(&member), state.settings.ingest.time_zone);
    state
        .store
        .run_audited(move |engine, audit| {
            let record = survivor(engine, customer)?;
            let open = engine
                .requests(Some(RequestStatus::Open))?
                .into_iter()
                .any(|r| r.kind == RightKind::Erasure && r.customer_id == Some(record.id));
            if !open {
                crate::privacy::rights::receive_for(engine, audit, &actor, RightKind::Erasure, record.id, zone)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?;
    Ok(Redirect::to("/me/data").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_type_an_email_or_a_card_number() {
        assert_eq!(
            typed_identifier(" Marie@Exemple.fr ").map(|i| i.to_string()),
            Some("email:marie@exemple.fr".into())
        );
        assert_eq!(typed_identifier("9251 0000 1234").map(|i| i.kind()), Some(IdentifierKind::Card));
        assert!(typed_identifier("").is_none());
        assert!(typed_identifier("not a card").is_none());
    }

    #[test]
    fn every_key_the_portal_builds_is_in_the_catalogue() {
        let mut keys: Vec<String> = SECTIONS.iter().map(|(key, _)| key.to_string()).collect();
        keys.extend(REFUSALS.iter().map(|code| format!("me.refused.{code}")));
        keys.extend(IdentifierKind::ALL.iter().map(|kind| format!("me.kind.{}", kind.as_str())));
        for key in keys {
            assert!(super::super::i18n::catalogue().contains_key(&key), "messages.toml lacks `{key}`");
        }
    }

    #[test]
    fn tokens_in_pages_are_base64url_only() {
        assert!(safe_token(&session::new_secret()).is_some());
        assert!(safe_token("abc\"><script>aaaaaaaaaaaaaaa").is_none());
        assert!(safe_token("short").is_none());
    }

    #[test]
    fn the_largest_sums_come_first_and_the_rest_together() {
        let sums: BTreeMap<String, f64> =
            [("a", 1.0), ("b", 5.0), ("c", 3.0)].iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let (labels, values) = ranked(sums, 2, "others");
        assert_eq!(labels, ["b", "c", "others"]);
        assert_eq!(values, [5.0, 3.0, 1.0]);
    }
}
