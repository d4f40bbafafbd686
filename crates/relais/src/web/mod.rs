//! The pages: the back office (`/app`) and the customers' self-care portal
//! (`/me`), rendered on the server from embedded templates, in French and
//! English, with htmx for the live parts and charts drawn as SVG.
//!
//! Architecture invariant: pages call the same application functions as the
//! API (no SQL here, no logic the API lacks); every page route is declared
//! once in `page_table()` with who may open it, and every form of a session
//! carries its CSRF token, checked before the handler runs.

mod areas;
pub mod assets;
mod backoffice;
pub mod charts;
pub mod i18n;
pub mod portal;
pub mod render;
pub mod session;

use axum::routing::{get, post, MethodRouter};
use relais_domain::Permission;

use crate::http::AppState;

/// The customer room's figures, computed at most once a minute per period
/// and process: the room reloads them every minute for every person who has
/// it open, and the figures over 30 days barely move in a minute (reading the
/// members' survey answers takes a few hundred milliseconds on the demo).
#[derive(Default)]
pub struct RoomCache {
    entries:
        std::sync::Mutex<std::collections::HashMap<i64, (std::time::Instant, Vec<crate::typologies::TypologyReport>)>>,
}

/// How long the room's figures are reused.
pub const ROOM_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

impl RoomCache {
    /// The reports of `days` computed less than a minute ago, if any.
    pub fn get(&self, days: i64) -> Option<Vec<crate::typologies::TypologyReport>> {
        let entries = self.entries.lock().ok()?;
        entries.get(&days).filter(|(at, _)| at.elapsed() < ROOM_CACHE_TTL).map(|(_, reports)| reports.clone())
    }

    /// Forget every report (the next view computes its figures).
    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }

    /// Keep freshly computed reports.
    pub fn put(&self, days: i64, reports: Vec<crate::typologies::TypologyReport>) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(days, (std::time::Instant::now(), reports));
        }
    }
}

/// Who may open a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageAccess {
    /// Anyone (sign-in pages, assets).
    Public,
    /// Any signed-in back-office user.
    SignedIn,
    /// A signed-in back-office user whose role allows the permission.
    Staff(Permission),
    /// A customer signed in to the portal.
    Member,
}

/// One page route: method, path and who may open it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRoute {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The path, with `{name}` parameters.
    pub path: &'static str,
    /// Who may open it.
    pub access: PageAccess,
}

/// Source files whose Rust code shows catalogue messages (`t("…")`), checked
/// by the catalogue's tests like the templates.
pub const CODE_WITH_MESSAGES: &[(&str, &str)] = &[
    ("backoffice.rs", include_str!("backoffice.rs")),
    ("areas.rs", include_str!("areas.rs")),
    ("portal.rs", include_str!("portal.rs")),
];

/// The one table of page routes.
fn page_table() -> Vec<(PageRoute, MethodRouter<AppState>)> {
    use PageAccess::{Member, Public, SignedIn, Staff};
    use Permission::*;
    let route = |method: &'static str, path: &'static str, access: PageAccess, handler: MethodRouter<AppState>| {
        (PageRoute { method, path, access }, handler)
    };
    vec![
        route("GET", "/", Public, get(backoffice::root)),
        route("GET", "/assets/{file}", Public, get(assets::serve)),
        route("GET", "/lang/{code}", Public, get(backoffice::switch_language)),
        route("GET", "/app/login", Public, get(backoffice::login_page)),
        route("POST", "/app/login", Public, post(backoffice::login)),
        route("POST", "/app/logout", SignedIn, post(backoffice::logout)),
        route("GET", "/app", SignedIn, get(backoffice::home)),
        route("GET", "/app/room", Staff(ReadSegments), get(backoffice::room)),
        route("GET", "/app/room/flow", Staff(ReadSegments), get(backoffice::flow)),
        route("GET", "/app/customers", Staff(ReadCustomers), get(backoffice::customers)),
        route("GET", "/app/customers/{id}", Staff(ReadCustomers), get(backoffice::customer)),
        route("GET", "/app/customers/{id}/timeline", Staff(ReadCustomers), get(backoffice::timeline)),
        route("GET", "/app/segments", Staff(ReadSegments), get(backoffice::segments)),
        route("POST", "/app/segments/check", Staff(ManageSegments), post(backoffice::check_segment)),
        route("POST", "/app/segments", Staff(ManageSegments), post(backoffice::save_segment)),
        route("GET", "/app/journeys", Staff(RunAnalytics), get(areas::journeys)),
        route("POST", "/app/journeys/whatif", Staff(RunAnalytics), post(areas::what_if)),
        route("GET", "/app/loyalty", Staff(ReadLoyalty), get(areas::loyalty)),
        route("GET", "/app/privacy", Staff(ManagePrivacy), get(areas::privacy)),
        route("POST", "/app/privacy/verify", Staff(ManagePrivacy), post(areas::verify_audit)),
        route("GET", "/me/login", Public, get(portal::login_page)),
        route("POST", "/me/login", Public, post(portal::login)),
        route("GET", "/me/code", Public, get(portal::code_page)),
        route("POST", "/me/code", Public, post(portal::check_code)),
        route("GET", "/me/link/{token}", Public, get(portal::link_page)),
        route("POST", "/me/link/{token}", Public, post(portal::use_link)),
        route("POST", "/me/logout", Member, post(portal::logout)),
        route("GET", "/me", Member, get(portal::home)),
        route("POST", "/me/rewards/{reward}/redeem", Member, post(portal::redeem)),
        route("GET", "/me/receipts", Member, get(portal::receipts)),
        route("GET", "/me/receipts.json", Member, get(portal::receipts_json)),
        route("GET", "/me/receipts.csv", Member, get(portal::receipts_csv)),
        route("GET", "/me/receipts/{order_id}", Member, get(portal::receipt)),
        route("GET", "/me/data", Member, get(portal::data)),
        route("GET", "/me/data.json", Member, get(portal::data_json)),
        route("POST", "/me/consents", Member, post(portal::consents)),
        route("POST", "/me/erasure", Member, post(portal::erasure)),
    ]
}

/// Every page route with who may open it.
pub fn page_routes() -> Vec<PageRoute> {
    page_table().into_iter().map(|(spec, _)| spec).collect()
}

/// The pages' router, to merge with the API's.
pub fn router(state: &AppState) -> Vec<(&'static str, MethodRouter<AppState>)> {
    page_table()
        .into_iter()
        .map(|(spec, handler)| {
            let handler = match spec.access {
                PageAccess::Public => handler,
                PageAccess::SignedIn => handler
                    .route_layer(axum::middleware::from_fn_with_state((state.clone(), None), session::require_staff)),
                PageAccess::Staff(permission) => handler.route_layer(axum::middleware::from_fn_with_state(
                    (state.clone(), Some(permission)),
                    session::require_staff,
                )),
                PageAccess::Member => {
                    handler.route_layer(axum::middleware::from_fn_with_state(state.clone(), session::require_member))
                }
            };
            (spec.path, handler)
        })
        .collect()
}
