//! The customer 360: a profile with its identifiers, computed traits and timeline.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use relais_domain::{CustomerId, Identifier, IdentifierKind, MergeId, Role};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::ApiError;
use super::redact::Viewer;
use super::AppState;
use crate::store::{
    CustomerLookup, CustomerRecord, EventPage, MergeRecord, StoredEvent, TimelineCursor, UnmergeReport,
};

/// Events per timeline page by default, and at most.
const DEFAULT_PAGE: usize = 50;

/// Computed traits as the API shows them.
#[derive(Debug, Serialize, ToSchema)]
pub struct TraitsView {
    /// Earliest event.
    pub first_seen: Option<DateTime<Utc>>,
    /// Latest event.
    pub last_seen: Option<DateTime<Utc>>,
    /// Channel of the latest event.
    pub last_channel: Option<String>,
    /// Channels used.
    pub channels: Vec<String>,
    /// Events.
    pub event_count: i64,
    /// Completed orders.
    pub order_count: i64,
    /// Refunds.
    pub refund_count: i64,
    /// Net revenue, minor units of `currency`.
    pub revenue_minor: i64,
    /// The organisation's currency.
    pub currency: String,
    /// Mean order value, minor units.
    pub average_basket_minor: Option<i64>,
    /// First completed order.
    pub first_order_at: Option<DateTime<Utc>>,
    /// Last completed order.
    pub last_order_at: Option<DateTime<Utc>>,
    /// Store with the most events.
    pub favourite_store: Option<String>,
    /// Orders in the last 30 days (the organisation's days, as of now).
    pub orders_30d: i64,
    /// Orders in the last 90 days.
    pub orders_90d: i64,
    /// Orders in the last 365 days.
    pub orders_365d: i64,
    /// Net revenue in the last 90 days, minor units.
    pub revenue_90d_minor: i64,
    /// Net revenue in the last 365 days, minor units.
    pub revenue_365d_minor: i64,
}

/// A page of a timeline.
#[derive(Debug, Serialize, ToSchema)]
pub struct TimelineView {
    /// Events, newest first.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<StoredEvent>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// One customer, everything attached.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerView {
    /// The customer's id.
    pub id: String,
    /// When the profile was created.
    pub created_at: DateTime<Utc>,
    /// Traits sent with identify calls.
    #[schema(value_type = Object)]
    pub profile: Map<String, Value>,
    /// Every identifier, `kind:value`.
    pub identifiers: Vec<String>,
    /// Identifiers flagged as shared by several people; they no longer link profiles.
    pub shared_identifiers: Vec<String>,
    /// Computed traits.
    pub traits: TraitsView,
    /// Profiles merged into this one.
    pub merged_from: Vec<String>,
    /// Accounts (households, companies) the customer belongs to.
    pub accounts: Vec<String>,
    /// The newest events across all channels.
    pub timeline: TimelineView,
}

fn timeline_view(viewer: &Viewer<'_>, page: EventPage) -> TimelineView {
    TimelineView {
        next_cursor: page.next.as_ref().map(TimelineCursor::encode),
        events: page.events.into_iter().map(|e| viewer.event(e)).collect(),
    }
}

fn customer_view(state: &AppState, role: Role, record: CustomerRecord, page: EventPage) -> CustomerView {
    let viewer = Viewer::new(&state.store, role);
    let today = state.settings.ingest.day_of(Utc::now());
    let windows = record.windows(today);
    let traits = &record.traits;
    CustomerView {
        id: record.id.to_string(),
        created_at: record.created_at,
        identifiers: record.identifiers.iter().map(|i| viewer.identifier(i)).collect(),
        shared_identifiers: record.shared_identifiers.iter().map(|i| viewer.identifier(i)).collect(),
        traits: TraitsView {
            first_seen: traits.first_seen,
            last_seen: traits.last_seen,
            last_channel: traits.last_channel.map(|c| c.as_str().to_string()),
            channels: traits.channels().into_iter().map(|c| c.as_str().to_string()).collect(),
            event_count: traits.event_count,
            order_count: traits.order_count,
            refund_count: traits.refund_count,
            revenue_minor: traits.revenue_minor,
            currency: state.settings.ingest.currency.clone(),
            average_basket_minor: traits.average_basket_minor(),
            first_order_at: traits.first_order_at,
            last_order_at: traits.last_order_at,
            favourite_store: traits.favourite_store().map(str::to_string),
            orders_30d: windows.orders_30d,
            orders_90d: windows.orders_90d,
            orders_365d: windows.orders_365d,
            revenue_90d_minor: windows.revenue_90d_minor,
            revenue_365d_minor: windows.revenue_365d_minor,
        },
        merged_from: record.merged_from.iter().map(ToString::to_string).collect(),
        accounts: record.accounts.clone(),
        profile: viewer.profile(&record.profile),
        timeline: timeline_view(&viewer, page),
    }
}

fn parse_customer_id(text: &str) -> Result<CustomerId, ApiError> {
    CustomerId::parse(text).map_err(|e| ApiError::field("id", e.to_string()))
}

/// 308 to the surviving profile, keeping the rest of the path and the query.
fn moved(survivor: CustomerId, suffix: &str) -> Response {
    super::moved_permanently(format!("/api/v1/customers/{survivor}{suffix}"), survivor.to_string())
}

pub async fn load_view(
    state: &AppState,
    caller: &Caller,
    id: CustomerId,
) -> Result<Result<CustomerView, Response>, ApiError> {
    let actor = caller.actor();
    let role = caller.role;
    let found = state
        .store
        .run_audited(move |engine, audit| match engine.customer(id)? {
            CustomerLookup::Found(record) => {
                let page = engine.events(id, None, 20)?;
                // Recorded before anything is shown: no audit, no answer.
                audit.record(&actor, "customer.read", Some(id), serde_json::json!({ "role": role }))?;
                Ok(Ok((record, page)))
            }
            other => Ok(Err(other)),
        })
        .await?;
    match found {
        Ok((record, page)) => Ok(Ok(customer_view(state, role, *record, page))),
        Err(CustomerLookup::MergedInto(survivor)) => Ok(Err(moved(survivor, ""))),
        Err(_) => Err(ApiError::NotFound(format!("no customer `{id}`"))),
    }
}

/// Get one customer: profile, identifiers, traits and the newest events.
#[utoipa::path(get, path = "/api/v1/customers/{id}", tag = "customers",
    params(("id" = String, Path, description = "Customer id, `cus_…`")),
    responses(
        (status = 200, body = CustomerView),
        (status = 308, description = "Merged into another profile: see Location"),
        (status = 404, body = super::error::Problem),
    ),
    security(("bearer" = [])))]
pub async fn get_customer(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_customer_id(&id)?;
    Ok(match load_view(&state, &caller, id).await? {
        Ok(view) => Json(view).into_response(),
        Err(redirect) => redirect,
    })
}

/// Lookup and search parameters.
#[derive(Debug, Deserialize, IntoParams)]
pub struct CustomerQuery {
    /// An identifier, `kind:value` (`email:ana@example.fr`, `user_id:42`): answers the one customer holding it.
    pub identifier: Option<String>,
    /// Search text: an e-mail, phone or card number matched exactly after
    /// normalisation, or words of a name matched whole (no substring search).
    pub q: Option<String>,
}

/// A search hit.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHit {
    /// The customer's id.
    pub id: String,
    /// The identifier that matched.
    pub matched: String,
}

/// Search results.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    /// Matching customers.
    pub customers: Vec<SearchHit>,
}

/// Find a customer by identifier (`?identifier=`) or search (`?q=`).
#[utoipa::path(get, path = "/api/v1/customers", tag = "customers", params(CustomerQuery),
    responses(
        (status = 200, description = "With `identifier`: the customer (as GET /customers/{id}); with `q`: search results", body = CustomerView),
        (status = 400, body = super::error::Problem),
        (status = 404, body = super::error::Problem),
    ),
    security(("bearer" = [])))]
pub async fn find_customers(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<CustomerQuery>,
) -> Result<Response, ApiError> {
    if let Some(text) = query.identifier {
        let identifier = Identifier::parse(&text).map_err(|e| ApiError::field("identifier", e.to_string()))?;
        let lookup = identifier.clone();
        let id = state
            .store
            .run(move |engine| engine.customer_id_by_identifier(&lookup))
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no customer holds `{identifier}`")))?;
        return Ok(match load_view(&state, &caller, id).await? {
            Ok(view) => Json(view).into_response(),
            Err(redirect) => redirect,
        });
    }
    let Some(q) = query.q else {
        return Err(ApiError::field(
            "identifier",
            "give `identifier=kind:value` or `q=` (e-mail, phone or card number)",
        ));
    };
    let hits = search(&state, &caller, &q).await?;
    Ok(Json(SearchResults { customers: hits }).into_response())
}

/// Customers matching search text: an identifier (`kind:value`), an e-mail,
/// phone, card or customer number matched exactly after normalisation, or
/// whole words of a name. Each hit is audited.
pub async fn search(state: &AppState, caller: &Caller, q: &str) -> Result<Vec<SearchHit>, ApiError> {
    let q = q.to_string();
    // Personal fields are only searchable by exact normalised value (DESIGN.md
    // decision 9): try the kinds a person would type into a search box.
    let candidates: Vec<Identifier> = match Identifier::parse(&q) {
        Ok(identifier) => vec![identifier],
        Err(_) => [IdentifierKind::Email, IdentifierKind::Phone, IdentifierKind::Card, IdentifierKind::CustomerNumber]
            .into_iter()
            .filter_map(|kind| Identifier::new(kind, &q).ok())
            .collect(),
    };
    let actor = caller.actor();
    // Names are found by whole words through keyed hashes: "martin" finds Léa
    // Martin-Dubois, "mart" finds nobody (no substring search on personal data).
    let words = relais_domain::privacy::name_words(&q);
    let hits = state
        .store
        .run_audited(move |engine, audit| {
            let mut hits: Vec<SearchHit> = Vec::new();
            let keyring = &engine.privacy().keyring;
            let tokens: Vec<String> = words.iter().map(|w| keyring.name_token(w)).collect();
            for found in engine.customers_by_name(&tokens, 50)? {
                let id = match engine.customer(found)? {
                    CustomerLookup::Found(_) => found,
                    CustomerLookup::MergedInto(survivor) => survivor,
                    CustomerLookup::NotFound => continue,
                };
                if hits.iter().any(|h| h.id == id.to_string()) {
                    continue;
                }
                audit.record(&actor, "customer.search", Some(id), serde_json::json!({ "kind": "name" }))?;
                hits.push(SearchHit { id: id.to_string(), matched: "name".into() });
            }
            for candidate in candidates {
                if let Some(id) = engine.customer_id_by_identifier(&candidate)? {
                    audit.record(
                        &actor,
                        "customer.search",
                        Some(id),
                        serde_json::json!({ "kind": candidate.kind() }),
                    )?;
                    hits.push(SearchHit { id: id.to_string(), matched: candidate.to_string() });
                }
            }
            Ok(hits)
        })
        .await?;
    Ok(hits)
}

/// Timeline paging parameters.
#[derive(Debug, Deserialize, IntoParams)]
pub struct TimelineQuery {
    /// Events per page (1–500, default 50).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A customer's events across all channels, newest first.
#[utoipa::path(get, path = "/api/v1/customers/{id}/events", tag = "customers",
    params(("id" = String, Path, description = "Customer id"), TimelineQuery),
    responses(
        (status = 200, body = TimelineView),
        (status = 308, description = "Merged into another profile: see Location"),
        (status = 400, body = super::error::Problem),
        (status = 404, body = super::error::Problem),
    ),
    security(("bearer" = [])))]
pub async fn customer_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<TimelineQuery>,
) -> Result<Response, ApiError> {
    let id = parse_customer_id(&id)?;
    let limit = super::error::page_limit(query.limit, DEFAULT_PAGE)?;
    let cursor = match query.cursor.as_deref() {
        Some(text) => Some(
            TimelineCursor::decode(text)
                .ok_or_else(|| ApiError::field("cursor", "is not a cursor returned by this endpoint"))?,
        ),
        None => None,
    };
    match state.store.run(move |engine| engine.customer(id)).await? {
        CustomerLookup::NotFound => return Err(ApiError::NotFound(format!("no customer `{id}`"))),
        CustomerLookup::MergedInto(survivor) => {
            let mut suffix = format!("/events?limit={limit}");
            if let Some(c) = &query.cursor {
                suffix.push_str(&format!("&cursor={c}"));
            }
            return Ok(moved(survivor, &suffix));
        }
        CustomerLookup::Found(_) => {}
    }
    let actor = caller.actor();
    let page = state
        .store
        .run_audited(move |engine, audit| {
            let page = engine.events(id, cursor.as_ref(), limit)?;
            audit.record(&actor, "customer.events", Some(id), serde_json::json!({ "events": page.events.len() }))?;
            Ok(page)
        })
        .await?;
    Ok(Json(timeline_view(&Viewer::new(&state.store, caller.role), page)).into_response())
}

/// Merges of other profiles into this one.
#[derive(Debug, Serialize, ToSchema)]
pub struct MergesView {
    /// Recorded merges, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub merges: Vec<MergeRecord>,
}

/// The merge history of a customer.
#[utoipa::path(get, path = "/api/v1/customers/{id}/merges", tag = "customers",
    params(("id" = String, Path, description = "Customer id")),
    responses((status = 200, body = MergesView), (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn customer_merges(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<MergesView>, ApiError> {
    let id = parse_customer_id(&id)?;
    let actor = caller.actor();
    let mut merges = state
        .store
        .run_audited(move |engine, audit| {
            let merges = engine.merges(id)?;
            audit.record(&actor, "customer.merges", Some(id), serde_json::json!({}))?;
            Ok(merges)
        })
        .await?;
    let viewer = Viewer::new(&state.store, caller.role);
    for merge in &mut merges {
        merge.identifiers = merge.identifiers.iter().map(|i| viewer.identifier_text(i)).collect();
    }
    Ok(Json(MergesView { merges }))
}

/// Undo a merge: the merged profile is restored with its identifiers, and events
/// that arrived after the merge carrying only its identifiers go back to it.
#[utoipa::path(post, path = "/api/v1/merges/{merge_id}/undo", tag = "customers",
    params(("merge_id" = String, Path, description = "Merge id, `mrg_…`, from GET /api/v1/customers/{id}/merges")),
    responses(
        (status = 200, description = "What went where", body = Object),
        (status = 404, body = super::error::Problem),
        (status = 409, description = "Already undone", body = super::error::Problem),
    ),
    security(("bearer" = [])))]
pub async fn undo_merge(
    State(state): State<AppState>,
    caller: Caller,
    Path(merge_id): Path<String>,
) -> Result<Json<UnmergeReport>, ApiError> {
    let merge_id = MergeId::parse(&merge_id).map_err(|e| ApiError::field("merge_id", e.to_string()))?;
    let settings = state.settings.ingest.clone();
    let actor = caller.actor();
    let report = state
        .store
        .run_audited(move |engine, audit| {
            audit.record(&actor, "identity.unmerge", None, serde_json::json!({ "merge_id": merge_id }))?;
            engine.unmerge(merge_id, &settings)
        })
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound => ApiError::NotFound(format!("no merge `{merge_id}`")),
            other => other.into(),
        })?;
    let viewer = Viewer::new(&state.store, caller.role);
    let mut report = report;
    report.identifiers = report.identifiers.iter().map(|i| viewer.identifier_text(i)).collect();
    Ok(Json(report))
}
