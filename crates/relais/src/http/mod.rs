//! The HTTP layer: routes, authentication, errors, OpenAPI. Handlers are thin:
//! they parse input into domain types and call the store.
//!
//! Architecture invariant: no SQL here; only `store` talks to the database.

pub mod analytics;
pub mod auth;
pub mod consents;
pub mod customers;
pub mod error;
pub mod journeys;
pub mod loyalty;
pub mod metrics;
pub mod outbox;
pub mod privacy;
pub mod redact;
pub mod segments;
pub mod tracking;

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Json, Router};
use relais_domain::Permission;
use serde::Serialize;
use tokio::net::TcpListener;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::config::Settings;
use crate::store::Store;

/// Everything handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Storage.
    pub store: Store,
    /// Configuration.
    pub settings: Arc<Settings>,
    /// Metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// Verified API keys.
    pub keys: Arc<auth::KeyCache>,
    /// Requests allowed per key and second.
    pub limiter: Arc<auth::KeyRateLimiter>,
    /// Sign-in attempts allowed per e-mail (back office) or identifier (portal).
    pub logins: Arc<governor::DefaultKeyedRateLimiter<String>>,
    /// The customer room's figures of the last minute.
    pub room: Arc<crate::web::RoomCache>,
}

impl AppState {
    /// State over an opened store.
    pub fn new(store: Store, settings: Settings) -> AppState {
        let limiter = Arc::new(auth::rate_limiter(settings.rate_limit_per_second));
        let per_minute = std::num::NonZeroU32::new(10).expect("ten");
        AppState {
            limiter,
            logins: Arc::new(governor::RateLimiter::keyed(governor::Quota::per_minute(per_minute))),
            room: Arc::new(crate::web::RoomCache::default()),
            store,
            settings: Arc::new(settings),
            metrics: Arc::new(metrics::Metrics::default()),
            keys: Arc::new(auth::KeyCache::default()),
        }
    }
}

/// Health of the service.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` when the database answers.
    pub status: String,
    /// `sqlite` or `postgres`.
    pub engine: String,
}

/// Liveness and readiness: answers 200 when the database answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health), (status = 500, body = error::Problem)))]
pub async fn healthz(State(state): State<AppState>) -> Result<Json<Health>, error::ApiError> {
    state.store.run(|engine| engine.ping()).await?;
    Ok(Json(Health { status: "ok".into(), engine: state.store.engine_name().into() }))
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some("Segment style: the API key as user name, empty password"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of the whole API.
#[derive(OpenApi)]
#[openapi(
    info(title = "relais API", description = "One customer database fed by every touchpoint. Errors are RFC 9457 problem documents."),
    paths(
        healthz,
        metrics::metrics,
        tracking::identify,
        tracking::track,
        tracking::page,
        tracking::screen,
        tracking::group,
        tracking::alias,
        tracking::batch,
        customers::find_customers,
        customers::get_customer,
        customers::customer_events,
        customers::customer_merges,
        customers::undo_merge,
        outbox::list_outbox,
        privacy::erase,
        privacy::export,
        privacy::security_report,
        privacy::receive_request,
        privacy::list_requests,
        privacy::complete_request,
        privacy::refuse_request,
        consents::record,
        consents::list,
        consents::opt_in,
        consents::check,
        consents::confirm_page,
        consents::confirm,
        consents::unsubscribe_page,
        consents::unsubscribe,
        loyalty::apply_programme,
        loyalty::list_programmes,
        loyalty::rules_page,
        loyalty::enrol,
        loyalty::find_member,
        loyalty::get_member,
        loyalty::statement,
        loyalty::card_svg,
        loyalty::redeem,
        loyalty::adjust,
        loyalty::run_expiry,
        loyalty::check,
        loyalty::report,
        loyalty::tier,
        loyalty::put_reward,
        loyalty::list_rewards,
        loyalty::confirm_redemption,
        loyalty::cancel_redemption,
        loyalty::quote,
        loyalty::issue_coupons,
        loyalty::list_campaigns,
        loyalty::use_coupon,
        analytics::clv_fit,
        analytics::rfm,
        segments::save,
        segments::preview,
        segments::list,
        segments::fields,
        segments::show,
        segments::members,
        segments::overlap,
        segments::delete,
        segments::refresh,
        segments::save_typology,
        segments::list_typologies,
        segments::typology_report,
        segments::delete_typology,
        journeys::what_if,
        journeys::what_if_svg,
        journeys::sankey_svg,
        journeys::attribution,
        journeys::model,
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "tracking", description = "Segment-compatible tracking API"),
        (name = "customers", description = "The customer 360"),
        (name = "operations", description = "Health, metrics and the outbox"),
        (name = "privacy", description = "Data-subject rights"),
        (name = "consents", description = "Consent per purpose and channel, with proof"),
        (name = "loyalty", description = "Loyalty programmes, members, statements and redemptions"),
        (name = "analytics", description = "Customer lifetime value, RFM and journeys"),
        (name = "segments", description = "Segments in the segment language, live memberships, exports"),
    )
)]
pub struct ApiDoc;

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// 308 to where a merged resource lives now (a customer, a membership),
/// naming it in the body too.
pub fn moved_permanently(location: String, merged_into: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = serde_json::json!({ "merged_into": merged_into, "location": location });
    let mut response = (axum::http::StatusCode::PERMANENT_REDIRECT, Json(body)).into_response();
    if let Ok(value) = location.parse() {
        response.headers_mut().insert(axum::http::header::LOCATION, value);
    }
    response
}

async fn not_found() -> error::ApiError {
    error::ApiError::NotFound("no such endpoint; see /api/openapi.json".into())
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a key.
    Public,
    /// A key whose role allows the permission.
    Requires(Permission),
}

/// One route of the API: method, path and who may call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// `GET`, `POST` or `DELETE`.
    pub method: &'static str,
    /// The path, with `{name}` parameters.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
}

/// The one table of routes and their permissions: the router is built from
/// it, and each permission is checked before its handler runs.
fn route_table() -> Vec<(RouteSpec, MethodRouter<AppState>)> {
    use Access::{Public, Requires};
    use Permission::*;
    let route = |method: &'static str, path: &'static str, access: Access, handler: MethodRouter<AppState>| {
        (RouteSpec { method, path, access }, handler)
    };
    vec![
        route("GET", "/healthz", Public, get(healthz)),
        route("GET", "/api/openapi.json", Public, get(openapi_json)),
        route("GET", "/metrics", Requires(ReadMetrics), get(metrics::metrics)),
        route("POST", "/v1/identify", Requires(IngestEvents), post(tracking::identify)),
        route("POST", "/v1/track", Requires(IngestEvents), post(tracking::track)),
        route("POST", "/v1/page", Requires(IngestEvents), post(tracking::page)),
        route("POST", "/v1/screen", Requires(IngestEvents), post(tracking::screen)),
        route("POST", "/v1/group", Requires(IngestEvents), post(tracking::group)),
        route("POST", "/v1/alias", Requires(IngestEvents), post(tracking::alias)),
        route("POST", "/v1/batch", Requires(IngestEvents), post(tracking::batch)),
        route("GET", "/api/v1/customers", Requires(ReadCustomers), get(customers::find_customers)),
        route("GET", "/api/v1/customers/{id}", Requires(ReadCustomers), get(customers::get_customer)),
        route("GET", "/api/v1/customers/{id}/events", Requires(ReadCustomers), get(customers::customer_events)),
        route("GET", "/api/v1/customers/{id}/merges", Requires(ReadCustomers), get(customers::customer_merges)),
        route("POST", "/api/v1/merges/{merge_id}/undo", Requires(ManageIdentity), post(customers::undo_merge)),
        route("GET", "/api/v1/outbox", Requires(ManageOutbox), get(outbox::list_outbox)),
        route("POST", "/api/v1/privacy/erasures", Requires(ManagePrivacy), post(privacy::erase)),
        route("POST", "/api/v1/privacy/exports", Requires(ManagePrivacy), post(privacy::export)),
        route("GET", "/api/v1/security/report", Requires(ManagePrivacy), get(privacy::security_report)),
        route("POST", "/api/v1/privacy/requests", Requires(ManagePrivacy), post(privacy::receive_request)),
        route("GET", "/api/v1/privacy/requests", Requires(ManagePrivacy), get(privacy::list_requests)),
        route(
            "POST",
            "/api/v1/privacy/requests/{id}/complete",
            Requires(ManagePrivacy),
            post(privacy::complete_request),
        ),
        route("POST", "/api/v1/privacy/requests/{id}/refuse", Requires(ManagePrivacy), post(privacy::refuse_request)),
        route("POST", "/api/v1/customers/{id}/consents", Requires(ManageConsent), post(consents::record)),
        route("GET", "/api/v1/customers/{id}/consents", Requires(ReadCustomers), get(consents::list)),
        route("POST", "/api/v1/customers/{id}/consents/opt-in", Requires(ManageConsent), post(consents::opt_in)),
        route("GET", "/api/v1/consents/check", Requires(ReadCustomers), get(consents::check)),
        route("GET", "/consent/confirm", Public, get(consents::confirm_page)),
        route("POST", "/consent/confirm", Public, post(consents::confirm)),
        route("GET", "/u/{token}", Public, get(consents::unsubscribe_page)),
        route("POST", "/u/{token}", Public, post(consents::unsubscribe)),
        route("POST", "/api/v1/loyalty/programmes", Requires(ManageLoyalty), post(loyalty::apply_programme)),
        route("GET", "/api/v1/loyalty/programmes", Requires(ReadLoyalty), get(loyalty::list_programmes)),
        route("GET", "/loyalty/{key}/rules", Public, get(loyalty::rules_page)),
        route("POST", "/api/v1/loyalty/members", Requires(OperateLoyalty), post(loyalty::enrol)),
        route("GET", "/api/v1/loyalty/members", Requires(ReadLoyalty), get(loyalty::find_member)),
        route("GET", "/api/v1/loyalty/members/{id}", Requires(ReadLoyalty), get(loyalty::get_member)),
        route("GET", "/api/v1/loyalty/members/{id}/statement", Requires(ReadLoyalty), get(loyalty::statement)),
        route("GET", "/api/v1/loyalty/members/{id}/card.svg", Requires(ReadLoyalty), get(loyalty::card_svg)),
        route("GET", "/api/v1/loyalty/members/{id}/tier", Requires(ReadLoyalty), get(loyalty::tier)),
        route("POST", "/api/v1/loyalty/members/{id}/quote", Requires(OperateLoyalty), post(loyalty::quote)),
        route("POST", "/api/v1/loyalty/programmes/{key}/rewards", Requires(ManageLoyalty), post(loyalty::put_reward)),
        route("GET", "/api/v1/loyalty/programmes/{key}/rewards", Requires(ReadLoyalty), get(loyalty::list_rewards)),
        route(
            "POST",
            "/api/v1/loyalty/programmes/{key}/coupons",
            Requires(ManageLoyalty),
            post(loyalty::issue_coupons),
        ),
        route("GET", "/api/v1/loyalty/programmes/{key}/coupons", Requires(ReadLoyalty), get(loyalty::list_campaigns)),
        route("POST", "/api/v1/loyalty/coupons/redeem", Requires(OperateLoyalty), post(loyalty::use_coupon)),
        route(
            "POST",
            "/api/v1/loyalty/redemptions/{id}/confirm",
            Requires(OperateLoyalty),
            post(loyalty::confirm_redemption),
        ),
        route(
            "POST",
            "/api/v1/loyalty/redemptions/{id}/cancel",
            Requires(OperateLoyalty),
            post(loyalty::cancel_redemption),
        ),
        route("POST", "/api/v1/loyalty/members/{id}/redemptions", Requires(OperateLoyalty), post(loyalty::redeem)),
        route("POST", "/api/v1/loyalty/members/{id}/adjustments", Requires(AdjustPoints), post(loyalty::adjust)),
        route("POST", "/api/v1/loyalty/expiry", Requires(ManageLoyalty), post(loyalty::run_expiry)),
        route("GET", "/api/v1/loyalty/check", Requires(ManageLoyalty), get(loyalty::check)),
        route("GET", "/api/v1/loyalty/programmes/{key}/report", Requires(RunAnalytics), get(loyalty::report)),
        route("POST", "/api/v1/clv/fit", Requires(RunAnalytics), post(analytics::clv_fit)),
        route("POST", "/api/v1/rfm", Requires(RunAnalytics), post(analytics::rfm)),
        route("POST", "/api/v1/segments", Requires(ManageSegments), post(segments::save)),
        route("GET", "/api/v1/segments", Requires(ReadSegments), get(segments::list)),
        route("POST", "/api/v1/segments/preview", Requires(ManageSegments), post(segments::preview)),
        route("POST", "/api/v1/segments/refresh", Requires(ManageSegments), post(segments::refresh)),
        route("GET", "/api/v1/segments/fields", Requires(ReadSegments), get(segments::fields)),
        route("GET", "/api/v1/segments/{name}", Requires(ReadSegments), get(segments::show)),
        route("DELETE", "/api/v1/segments/{name}", Requires(ManageSegments), delete(segments::delete)),
        route("GET", "/api/v1/segments/{name}/members", Requires(ReadSegments), get(segments::members)),
        route("GET", "/api/v1/segments/{name}/overlap/{other}", Requires(ReadSegments), get(segments::overlap)),
        route("POST", "/api/v1/typologies", Requires(ManageSegments), post(segments::save_typology)),
        route("GET", "/api/v1/typologies", Requires(ReadSegments), get(segments::list_typologies)),
        route("GET", "/api/v1/typologies/{name}", Requires(ReadSegments), get(segments::typology_report)),
        route("DELETE", "/api/v1/typologies/{name}", Requires(ManageSegments), delete(segments::delete_typology)),
        route("POST", "/api/v1/journeys/whatif", Requires(RunAnalytics), post(journeys::what_if)),
        route("POST", "/api/v1/journeys/whatif.svg", Requires(RunAnalytics), post(journeys::what_if_svg)),
        route("POST", "/api/v1/journeys/sankey.svg", Requires(RunAnalytics), post(journeys::sankey_svg)),
        route("POST", "/api/v1/journeys/attribution", Requires(RunAnalytics), post(journeys::attribution)),
        route("POST", "/api/v1/journeys/model", Requires(RunAnalytics), post(journeys::model)),
    ]
}

/// Every route the API serves, with its permission.
pub fn routes() -> Vec<RouteSpec> {
    route_table().into_iter().map(|(spec, _)| spec).collect()
}

/// The application's routes.
pub fn router(state: AppState) -> Router {
    let api = route_table().into_iter().map(|(spec, handler)| {
        let handler = match spec.access {
            Access::Public => handler,
            Access::Requires(permission) => {
                handler.route_layer(axum::middleware::from_fn_with_state((state.clone(), permission), auth::require))
            }
        };
        (spec.path, handler)
    });
    // Pages and API routes may share a path (one method each): merge them.
    let mut by_path: std::collections::BTreeMap<&'static str, MethodRouter<AppState>> = Default::default();
    for (path, handler) in crate::web::router(&state).into_iter().chain(api) {
        let merged = match by_path.remove(path) {
            Some(existing) => existing.merge(handler),
            None => handler,
        };
        by_path.insert(path, merged);
    }
    let mut router = Router::new();
    for (path, handler) in by_path {
        router = router.route(path, handler);
    }
    router
        .fallback(not_found)
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track_requests))
        .with_state(state)
}

/// Headers that keep browsers from misusing API answers: no sniffing, no
/// framing, no referrer, nothing loaded from them, and no caching of customer data.
async fn security_headers(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Pages say `same-origin` so browsers send their Origin with forms (the
    // CSRF check reads it); nothing leaves for other sites either way.
    headers.entry(header::REFERRER_POLICY).or_insert(HeaderValue::from_static("no-referrer"));
    // Pages set their own policy (scripts and styles from this server).
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Serve on `listener` until `shutdown` completes.
pub async fn launch(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The peer's address is kept for the portal's consent proofs.
    let service = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, service).with_graceful_shutdown(shutdown).await
}
