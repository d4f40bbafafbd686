//! The HTTP layer: routes, authentication, errors, OpenAPI. Handlers are thin:
//! they parse input into domain types and call the store.
//!
//! Architecture invariant: no SQL here; only `store` talks to the database.

pub mod auth;
pub mod customers;
pub mod error;
pub mod metrics;
pub mod outbox;
pub mod privacy;
pub mod redact;
pub mod tracking;

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
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
}

impl AppState {
    /// State over an opened store.
    pub fn new(store: Store, settings: Settings) -> AppState {
        AppState {
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
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "tracking", description = "Segment-compatible tracking API"),
        (name = "customers", description = "The customer 360"),
        (name = "operations", description = "Health, metrics and the outbox"),
        (name = "privacy", description = "Data-subject rights"),
    )
)]
pub struct ApiDoc;

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn not_found() -> error::ApiError {
    error::ApiError::NotFound("no such endpoint; see /api/openapi.json".into())
}

/// The application's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::metrics))
        .route("/api/openapi.json", get(openapi_json))
        .route("/v1/identify", post(tracking::identify))
        .route("/v1/track", post(tracking::track))
        .route("/v1/page", post(tracking::page))
        .route("/v1/screen", post(tracking::screen))
        .route("/v1/group", post(tracking::group))
        .route("/v1/alias", post(tracking::alias))
        .route("/v1/batch", post(tracking::batch))
        .route("/api/v1/customers", get(customers::find_customers))
        .route("/api/v1/customers/{id}", get(customers::get_customer))
        .route("/api/v1/customers/{id}/events", get(customers::customer_events))
        .route("/api/v1/customers/{id}/merges", get(customers::customer_merges))
        .route("/api/v1/merges/{merge_id}/undo", post(customers::undo_merge))
        .route("/api/v1/outbox", get(outbox::list_outbox))
        .route("/api/v1/privacy/erasures", post(privacy::erase))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track_requests))
        .with_state(state)
}

/// Serve on `listener` until `shutdown` completes.
pub async fn launch(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
