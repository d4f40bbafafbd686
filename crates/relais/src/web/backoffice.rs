//! The back office (`/app`): sign-in, the customer room, customer search and
//! the customer 360, the segment builder. Handlers are thin: they call the
//! same functions as the API and hand plain values to the templates.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{Duration, Utc};
use minijinja::{context, Value};
use relais_domain::{CustomerId, Permission};
use serde::Deserialize;

use super::charts;
use super::i18n::{negotiate, other, t, Lang, LANG_COOKIE};
use super::render::{page, PageError};
use super::session::{self, Staff};
use crate::http::customers::{self as api_customers, CustomerView};
use crate::http::AppState;
use crate::store::web::SessionSubject;

/// The sections of the navigation: key, link, the permission that shows it.
const SECTIONS: &[(&str, &str, Permission)] = &[
    ("nav.room", "/app/room", Permission::ReadSegments),
    ("nav.customers", "/app/customers", Permission::ReadCustomers),
    ("nav.segments", "/app/segments", Permission::ReadSegments),
    ("nav.loyalty", "/app/loyalty", Permission::ReadLoyalty),
    ("nav.journeys", "/app/journeys", Permission::RunAnalytics),
    ("nav.privacy", "/app/privacy", Permission::ManagePrivacy),
];

/// What every back-office page knows: language, user, navigation, CSRF token.
pub(super) fn frame(staff: &Staff, active: &str) -> Value {
    let nav: Vec<Value> = SECTIONS
        .iter()
        .filter(|(_, _, permission)| staff.user.role.allows(*permission))
        .map(|(key, href, _)| context! { key => *key, href => *href, active => *href == active })
        .collect();
    context! {
        lang => staff.lang.as_str(),
        other_lang => other(staff.lang).as_str(),
        user => context! { email => staff.user.email.clone(), role => staff.user.role.as_str() },
        csrf => staff.csrf.clone(),
        nav => nav,
        here => active,
    }
}

/// A page's context: the frame and the page's own values.
pub(super) fn with_frame(staff: &Staff, active: &str, page_values: Value) -> Value {
    context! { ..frame(staff, active), ..page_values }
}

#[derive(Debug, Deserialize)]
pub(super) struct NextQuery {
    next: Option<String>,
}

/// `GET /lang/{code}`: remember a language and go back.
pub(super) async fn switch_language(
    State(state): State<AppState>,
    Path(code): Path<String>,
    Query(query): Query<NextQuery>,
) -> Response {
    let lang = Lang::parse(&code).unwrap_or(Lang::Fr);
    let target = session::safe_next(query.next.as_deref(), "/app");
    session::with_cookie(
        Redirect::to(&target).into_response(),
        session::set_cookie(&state, LANG_COOKIE, lang.as_str(), Duration::days(365)),
    )
}

fn login_form(lang: Lang, next: &str, error: Option<&str>, email: &str) -> Result<Response, PageError> {
    page(
        "login.html",
        context! {
            lang => lang.as_str(),
            other_lang => other(lang).as_str(),
            next => next,
            error => error,
            email => email,
            here => "/app/login",
        },
    )
}

/// `GET /app/login`.
pub(super) async fn login_page(headers: HeaderMap, Query(query): Query<NextQuery>) -> Result<Response, PageError> {
    let lang = negotiate(&headers);
    login_form(lang, &session::safe_next(query.next.as_deref(), "/app"), None, "")
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    email: String,
    password: String,
    next: Option<String>,
}

/// `POST /app/login`: check the password (argon2id), open a session.
pub(super) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, PageError> {
    let lang = negotiate(&headers);
    let next = session::safe_next(form.next.as_deref(), "/app");
    let email = form.email.trim().to_lowercase();
    if state.logins.check_key(&email).is_err() {
        let mut response = login_form(lang, &next, Some("login.too_many"), &email)?;
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        return Ok(response);
    }
    let lookup = email.clone();
    let found = state
        .store
        .run(move |engine| engine.user_by_email(&lookup))
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?;
    let password = form.password;
    let user = tokio::task::spawn_blocking(move || match found {
        Some((user, hash)) => session::verify_password(&hash, &password).then_some(user),
        None => {
            // The same work for an unknown e-mail, so timing tells nothing.
            session::verify_password(session::decoy_hash(), &password);
            None
        }
    })
    .await
    .ok()
    .flatten();
    let Some(user) = user else {
        let mut response = login_form(lang, &next, Some("login.failed"), &email)?;
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(response);
    };
    let cookie = session::start(&state, SessionSubject::Staff(user.id)).await.map_err(|e| e.in_lang(lang))?;
    Ok(session::with_cookie(Redirect::to(&next).into_response(), cookie))
}

/// `POST /app/logout`.
pub(super) async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, PageError> {
    let cookie = session::end(&state, &headers, session::STAFF_COOKIE).await?;
    Ok(session::with_cookie(Redirect::to("/app/login").into_response(), cookie))
}

/// `GET /`: the portal for a signed-in member who is not signed in to the
/// back office, the back office otherwise (error pages link here).
pub(super) async fn root(headers: HeaderMap) -> Response {
    let member = session::cookie(&headers, session::MEMBER_COOKIE).is_some();
    let staff = session::cookie(&headers, session::STAFF_COOKIE).is_some();
    Redirect::to(if member && !staff { "/me" } else { "/app" }).into_response()
}

/// `GET /app`: the customer room for those who may read segments, the
/// customer search for the others.
pub(super) async fn home(staff: Staff) -> Response {
    let target = SECTIONS
        .iter()
        .find(|(_, _, permission)| staff.user.role.allows(*permission))
        .map_or("/app/customers", |(_, href, _)| *href);
    Redirect::to(target).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct RoomQuery {
    days: Option<i64>,
}

/// The trend of a change in percent: `up`, `down` or `flat`.
fn trend(change: Option<f64>) -> &'static str {
    match change {
        Some(c) if c >= 0.5 => "up",
        Some(c) if c <= -0.5 => "down",
        _ => "flat",
    }
}

/// `GET /app/room`: each typology's segments with size, revenue, value and
/// satisfaction against the previous period, their history, and alerts.
pub(super) async fn room(
    State(state): State<AppState>,
    staff: Staff,
    Query(query): Query<RoomQuery>,
) -> Result<Response, PageError> {
    let lang = staff.lang;
    let days = query.days.unwrap_or(30).clamp(1, 366);
    let settings = state.settings.ingest.clone();
    let cached = state.room.get(days);
    let fresh = cached.is_none();
    let reports = match cached {
        Some(reports) => reports,
        None => state
            .store
            .run(move |engine| {
                let now = Utc::now();
                let mut reports = Vec::new();
                for typology in engine.typologies()? {
                    match crate::typologies::report(engine, &settings, &typology.name, days, now) {
                        Ok(report) => reports.push(report),
                        Err(crate::segments::SegmentsError::Store(e)) => return Err(e),
                        Err(_) => continue,
                    }
                }
                Ok(reports)
            })
            .await
            .map_err(|e| PageError::from(e).in_lang(lang))?,
    };
    if fresh {
        state.room.put(days, reports.clone());
    }
    let mut alerts = Vec::new();
    let typologies: Vec<Value> = reports
        .iter()
        .map(|report| {
            let rows: Vec<Value> = report
                .segments
                .iter()
                .map(|s| {
                    let sizes: Vec<f64> = s.history.iter().map(|p| p.members as f64).collect();
                    if let Some(moved) = relais_domain::typology::unusual_move(&sizes) {
                        alerts.push(context! { kind => "alert.size", segment => s.segment.clone(), change => moved });
                    }
                    if let Some(shift) = relais_domain::typology::nps_shift(&s.satisfaction, &s.satisfaction_before) {
                        alerts.push(context! { kind => "alert.nps", segment => s.segment.clone(), change => shift });
                    }
                    let label = t(lang, "room.size_history", &[("segment", s.segment.clone())]);
                    context! {
                        segment => s.segment.clone(),
                        size => s.size,
                        size_change => s.size_change_pct,
                        size_trend => trend(s.size_change_pct),
                        revenue => s.revenue,
                        revenue_change => s.revenue_change_pct,
                        revenue_trend => trend(s.revenue_change_pct),
                        clv => s.clv_mean,
                        clv_change => s.clv_change_pct,
                        clv_trend => trend(s.clv_change_pct),
                        nps => s.satisfaction.nps,
                        nps_answers => s.satisfaction.nps_answers,
                        nps_trend => trend(s.satisfaction.nps.zip(s.satisfaction_before.nps).map(|(a, b)| a - b)),
                        csat => s.satisfaction.csat,
                        csat_answers => s.satisfaction.csat_answers,
                        csat_trend => trend(s.satisfaction.csat.zip(s.satisfaction_before.csat).map(|(a, b)| a - b)),
                        spark => charts::sparkline(&sizes, &label),
                    }
                })
                .collect();
            context! {
                name => report.name.clone(),
                description => report.description.clone(),
                as_of => report.as_of.to_string(),
                currency => report.currency.clone(),
                rows => rows,
            }
        })
        .collect();
    page(
        "room.html",
        with_frame(&staff, "/app/room", context! { typologies => typologies, alerts => alerts, days => days }),
    )
}

/// Minutes the live flow covers, and the width of its bars.
const FLOW_MINUTES: i64 = 60;
const FLOW_BUCKET_SECONDS: i64 = 300;

/// `GET /app/room/flow`: events received in the last hour by channel (the
/// room reloads it every few seconds).
pub(super) async fn flow(State(state): State<AppState>, staff: Staff) -> Result<Response, PageError> {
    let lang = staff.lang;
    let now = Utc::now();
    let since = now - Duration::minutes(FLOW_MINUTES);
    let rows = state
        .store
        .run(move |engine| engine.event_flow(since, FLOW_BUCKET_SECONDS))
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?;
    let first_bucket = since.timestamp() / FLOW_BUCKET_SECONDS * FLOW_BUCKET_SECONDS;
    let buckets = (FLOW_MINUTES * 60 / FLOW_BUCKET_SECONDS + 1) as usize;
    let mut by_channel: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (bucket, channel, count) in rows {
        let index = ((bucket - first_bucket) / FLOW_BUCKET_SECONDS).clamp(0, buckets as i64 - 1) as usize;
        by_channel.entry(channel).or_insert_with(|| vec![0.0; buckets])[index] += count as f64;
    }
    let tz = state.settings.ingest.time_zone;
    let columns: Vec<String> = (0..buckets)
        .map(|i| {
            chrono::DateTime::from_timestamp(first_bucket + i as i64 * FLOW_BUCKET_SECONDS, 0)
                .unwrap_or_default()
                .with_timezone(&tz)
                .format("%H:%M")
                .to_string()
        })
        .collect();
    let series: Vec<(String, Vec<f64>)> = by_channel.into_iter().collect();
    let totals: Vec<Value> = series
        .iter()
        .enumerate()
        .map(|(i, (channel, values))| {
            context! { channel => channel.clone(), total => values.iter().sum::<f64>(), colour => i % charts::PALETTE.len() }
        })
        .collect();
    let chart = charts::stacked_bars(&columns, &series, &t(lang, "flow.chart", &[]));
    page(
        "flow.html",
        context! { lang => lang.as_str(), chart => chart, totals => totals, updated => now.with_timezone(&tz).format("%H:%M:%S").to_string() },
    )
}

#[derive(Debug, Deserialize)]
pub(super) struct SearchQuery {
    q: Option<String>,
}

/// A person's display name from their profile traits (as the role may see them).
fn display_name(view: &CustomerView) -> String {
    let field = |key: &str| view.profile.get(key).and_then(|v| v.as_str()).unwrap_or("").trim().to_string();
    // Tracking libraries send `firstName`; imports often `first_name`.
    let first = [field("firstName"), field("first_name")].into_iter().find(|s| !s.is_empty()).unwrap_or_default();
    let last = [field("lastName"), field("last_name")].into_iter().find(|s| !s.is_empty()).unwrap_or_default();
    let full = [first, last].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ");
    if !full.is_empty() {
        return full;
    }
    let name = field("name");
    if !name.is_empty() {
        return name;
    }
    view.id.clone()
}

/// `GET /app/customers?q=`: search by name, e-mail, phone, card number or any identifier.
pub(super) async fn customers(
    State(state): State<AppState>,
    staff: Staff,
    Query(query): Query<SearchQuery>,
) -> Result<Response, PageError> {
    let lang = staff.lang;
    let q = query.q.unwrap_or_default().trim().to_string();
    let mut results = Vec::new();
    if !q.is_empty() {
        let hits =
            api_customers::search(&state, &staff.caller, &q).await.map_err(|e| PageError::from(e).in_lang(lang))?;
        for hit in hits.into_iter().take(20) {
            let Ok(id) = CustomerId::parse(&hit.id) else { continue };
            if let Ok(view) = api_customers::load_view(&state, &staff.caller, id)
                .await
                .map_err(PageError::from)
                .map_err(|e| e.in_lang(lang))?
            {
                results.push(context! {
                    id => view.id.clone(),
                    name => display_name(&view),
                    identifiers => view.identifiers.clone(),
                    city => view.profile.get("address").and_then(|a| a.get("city")).and_then(|c| c.as_str()).map(str::to_string),
                    orders => view.traits.order_count,
                    last_seen => view.traits.last_seen.map(|d| d.date_naive().to_string()),
                    matched => hit.matched,
                });
            }
        }
        if results.len() == 1 {
            let id = results[0].get_attr("id").ok().map(|v| v.to_string()).unwrap_or_default();
            return Ok(Redirect::to(&format!("/app/customers/{id}")).into_response());
        }
    }
    page(
        "customers.html",
        with_frame(&staff, "/app/customers", context! { q => q, results => results, searched => !q.is_empty() }),
    )
}

/// `GET /app/customers/{id}`: the customer 360.
pub(super) async fn customer(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let lang = staff.lang;
    let id = CustomerId::parse(&id).map_err(|_| PageError::not_found(lang))?;
    let view = match api_customers::load_view(&state, &staff.caller, id)
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?
    {
        Ok(view) => view,
        Err(_moved) => {
            let survivor = state
                .store
                .run(move |engine| engine.customer(id))
                .await
                .map_err(|e| PageError::from(e).in_lang(lang))?;
            return match survivor {
                crate::store::CustomerLookup::MergedInto(to) => {
                    Ok(Redirect::to(&format!("/app/customers/{to}")).into_response())
                }
                _ => Err(PageError::not_found(lang)),
            };
        }
    };
    let role = staff.user.role;
    let reads_loyalty = role.allows(Permission::ReadLoyalty);
    let actor = staff.caller.actor();
    let (merges, consents, members, score) = state
        .store
        .run_audited(move |engine, audit| {
            let merges = engine.merges(id)?;
            let facts = engine.consents(id)?;
            let members = if reads_loyalty { engine.loyalty_members_of(id)? } else { Vec::new() };
            let score = engine.customer_score(id)?;
            audit.record(&actor, "customer.merges", Some(id), serde_json::json!({ "page": "360" }))?;
            Ok((merges, relais_domain::consent::state_at(&facts, Utc::now()), members, score))
        })
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?;
    let viewer = crate::http::redact::Viewer::new(&state.store, role);
    let merges: Vec<Value> = merges
        .iter()
        .map(|m| {
            context! {
                merged => m.merged_id.to_string(),
                at => m.at.date_naive().to_string(),
                identifiers => m.identifiers.iter().map(|i| viewer.identifier_text(i)).collect::<Vec<_>>(),
            }
        })
        .collect();
    let consents: Vec<Value> = consents
        .iter()
        .map(|c| {
            context! {
                purpose => format!("consent.{}", c.purpose.as_str()),
                channel => format!("channel.{}", c.channel.as_str()),
                granted => c.granted,
                since => c.since.date_naive().to_string(),
            }
        })
        .collect();
    let tz = state.settings.ingest.time_zone;
    let mut member_views = Vec::new();
    for m in &members {
        // The statement in the page's language, newest lines first; the card as the member sees it.
        let statement = crate::http::loyalty::build_statement(&state, m, lang)
            .await
            .map_err(|e| PageError::from(e).in_lang(lang))?;
        let lines: Vec<Value> = statement
            .entries
            .iter()
            .rev()
            .take(STATEMENT_LINES)
            .map(|e| {
                context! {
                    on => e.created_at.with_timezone(&tz).date_naive().to_string(),
                    points => e.points,
                    reason => e.reason.clone(),
                }
            })
            .collect();
        let card_svg = m.card_number.as_deref().and_then(|card| crate::loyalty::card_svg(&m.row.programme, card).ok());
        member_views.push(context! {
            id => m.row.member.to_string(),
            programme => m.row.programme.clone(),
            balance => m.row.balance,
            tier => m.row.tier.clone(),
            card => m.card_number.clone(),
            card_svg => card_svg,
            status => m.row.status.as_str(),
            statement => lines,
            unit => statement.unit.clone(),
        });
    }
    let members = member_views;
    let exponent = relais_domain::money::currency_exponent(&state.settings.ingest.currency) as i32;
    let major = |minor: i64| minor as f64 / 10f64.powi(exponent);
    let traits = &view.traits;
    let profile: Vec<(String, String)> = view
        .profile
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
            )
        })
        .collect();
    let name = display_name(&view);
    page(
        "customer.html",
        with_frame(
            &staff,
            "/app/customers",
            context! {
                id => view.id.clone(),
                name => name,
                created => view.created_at.date_naive().to_string(),
                identifiers => view.identifiers.clone(),
                shared => view.shared_identifiers.clone(),
                profile => profile,
                merged_from => view.merged_from.clone(),
                merges => merges,
                consents => consents,
                members => members,
                currency => traits.currency.clone(),
                traits => context! {
                    first_seen => traits.first_seen.map(|d| d.date_naive().to_string()),
                    last_seen => traits.last_seen.map(|d| d.date_naive().to_string()),
                    last_channel => traits.last_channel.clone(),
                    channels => traits.channels.clone(),
                    events => traits.event_count,
                    orders => traits.order_count,
                    refunds => traits.refund_count,
                    revenue => major(traits.revenue_minor),
                    basket => traits.average_basket_minor.map(major),
                    orders_90d => traits.orders_90d,
                    revenue_365d => major(traits.revenue_365d_minor),
                    store => traits.favourite_store.clone(),
                },
                score => score.map(|s| context! {
                    r => s.r, f => s.f, m => s.m,
                    group => format!("rfm.{}", s.group),
                    clv => s.clv.map(major),
                }),
            },
        ),
    )
}

/// Statement lines the customer 360 shows (the API and the portal give them all).
const STATEMENT_LINES: usize = 10;

#[derive(Debug, Deserialize)]
pub(super) struct TimelineQuery {
    channel: Option<String>,
    kind: Option<String>,
    cursor: Option<String>,
}

/// Events shown per timeline page, and events read at most to fill one.
const TIMELINE_PAGE: usize = 30;
const TIMELINE_SCAN: usize = 3_000;

/// `GET /app/customers/{id}/timeline`: every interaction across channels,
/// newest first, filtered by channel and type.
pub(super) async fn timeline(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    Query(query): Query<TimelineQuery>,
) -> Result<Response, PageError> {
    let lang = staff.lang;
    let id = CustomerId::parse(&id).map_err(|_| PageError::not_found(lang))?;
    let channel = query.channel.filter(|c| !c.is_empty());
    let kind = query.kind.filter(|k| !k.is_empty());
    let mut cursor = match query.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(text) => Some(
            crate::store::TimelineCursor::decode(text)
                .ok_or_else(|| PageError::bad_request(lang, "error.bad_request"))?,
        ),
        None => None,
    };
    let actor = staff.caller.actor();
    let (channel_filter, kind_filter) = (channel.clone(), kind.clone());
    let (events, next) = state
        .store
        .run_audited(move |engine, audit| {
            let mut kept = Vec::new();
            let mut read = 0;
            loop {
                let page = engine.events(id, cursor.as_ref(), 200)?;
                read += page.events.len();
                for event in page.events {
                    let channel_ok = channel_filter.as_deref().is_none_or(|c| event.channel.as_str() == c);
                    let kind_ok = kind_filter.as_deref().is_none_or(|k| event.kind == k);
                    if channel_ok && kind_ok && kept.len() < TIMELINE_PAGE {
                        kept.push(event);
                    }
                }
                cursor = page.next;
                if kept.len() >= TIMELINE_PAGE || cursor.is_none() || read >= TIMELINE_SCAN {
                    break;
                }
            }
            audit.record(
                &actor,
                "customer.events",
                Some(id),
                serde_json::json!({ "events": kept.len(), "page": "360" }),
            )?;
            Ok((kept, cursor))
        })
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?;
    let viewer = crate::http::redact::Viewer::new(&state.store, staff.user.role);
    let tz = state.settings.ingest.time_zone;
    let events: Vec<Value> = events
        .into_iter()
        .map(|event| viewer.event(event))
        .map(|event| {
            let amount =
                event.properties.get("revenue").or_else(|| event.properties.get("total")).map(|v| v.to_string());
            context! {
                at => event.timestamp.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string(),
                kind => event.kind.clone(),
                name => event.name.clone(),
                channel => event.channel.as_str(),
                store => event.store.clone(),
                amount => amount,
                properties => serde_json::to_string(&event.properties).unwrap_or_default(),
            }
        })
        .collect();
    page(
        "timeline.html",
        context! {
            lang => lang.as_str(),
            id => id.to_string(),
            events => events,
            next => next.as_ref().map(crate::store::TimelineCursor::encode),
            channel => channel,
            kind => kind,
            channels => relais_domain::Channel::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            kinds => ["track", "page", "screen", "identify", "group", "alias"],
        },
    )
}

/// `GET /app/segments`: the saved segments and the builder.
pub(super) async fn segments(State(state): State<AppState>, staff: Staff) -> Result<Response, PageError> {
    segments_page(&state, &staff, None, "", "", "").await
}

async fn segments_page(
    state: &AppState,
    staff: &Staff,
    error: Option<Value>,
    name: &str,
    source: &str,
    description: &str,
) -> Result<Response, PageError> {
    let lang = staff.lang;
    let saved = state.store.run(|engine| engine.segments()).await.map_err(|e| PageError::from(e).in_lang(lang))?;
    let list: Vec<Value> = saved
        .iter()
        .map(|s| {
            context! {
                name => s.name.clone(),
                source => s.source.clone(),
                description => s.description.clone(),
                size => s.members,
                refreshed => s.refreshed_at.map(|d| d.date_naive().to_string()),
            }
        })
        .collect();
    let fields: Vec<&str> = relais_domain::segment::field_catalogue().into_iter().map(|f| f.name).collect();
    let may_edit = staff.user.role.allows(Permission::ManageSegments);
    let status = if error.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    let mut response = page(
        "segments.html",
        with_frame(
            staff,
            "/app/segments",
            context! { segments => list, fields => fields, may_edit => may_edit, error => error, name => name, source => source, description => description },
        ),
    )?;
    *response.status_mut() = status;
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub(super) struct SegmentForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    description: String,
}

/// A segment-language error as the page shows it: where, and the caret line.
fn source_error(error: &relais_domain::segment::SegmentError, source: &str) -> Value {
    let line = source.lines().nth(error.line.saturating_sub(1)).unwrap_or("").to_string();
    let width = source.get(error.start..error.end.min(source.len())).map_or(1, |s| s.chars().count().max(1));
    context! {
        kind => format!("segment.error.{}", error.kind.as_str()),
        line => error.line,
        column => error.column,
        detail => error.message.clone(),
        text => line,
        caret => format!("{}{}", " ".repeat(error.column.saturating_sub(1)), "^".repeat(width)),
    }
}

/// `POST /app/segments/check`: the live count of the builder, or the
/// language's errors in place.
pub(super) async fn check_segment(
    State(state): State<AppState>,
    staff: Staff,
    Form(form): Form<SegmentForm>,
) -> Result<Response, PageError> {
    let lang = staff.lang;
    let (settings, role, source) = (state.settings.ingest.clone(), staff.user.role, form.source.clone());
    let outcome = if source.trim().is_empty() {
        None
    } else {
        Some(
            state
                .store
                .run(move |engine| Ok(crate::segments::preview(engine, &settings, &source, role, 0, Utc::now())))
                .await
                .map_err(|e| PageError::from(e).in_lang(lang))?,
        )
    };
    let context = match outcome {
        None => context! { lang => lang.as_str(), empty => true },
        Some(Ok(preview)) => context! { lang => lang.as_str(), size => preview.size, profiles => preview.profiles },
        Some(Err(crate::segments::SegmentsError::Source(error))) => {
            context! { lang => lang.as_str(), error => source_error(&error, &form.source) }
        }
        Some(Err(crate::segments::SegmentsError::Store(e))) => return Err(PageError::from(e).in_lang(lang)),
        Some(Err(_)) => return Err(PageError::bad_request(lang, "error.bad_request")),
    };
    page("segment_check.html", context)
}

/// `POST /app/segments`: save a segment from the builder.
pub(super) async fn save_segment(
    State(state): State<AppState>,
    staff: Staff,
    Form(form): Form<SegmentForm>,
) -> Result<Response, PageError> {
    let lang = staff.lang;
    let (settings, role) = (state.settings.ingest.clone(), staff.user.role);
    let (name, source, description) = (form.name.trim().to_string(), form.source.clone(), form.description.clone());
    let saved = state
        .store
        .run(move |engine| Ok(crate::segments::save(engine, &settings, &name, &source, &description, role, Utc::now())))
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?;
    let error = match saved {
        Ok(_) => return Ok(Redirect::to("/app/segments").into_response()),
        Err(crate::segments::SegmentsError::Source(error)) => source_error(&error, &form.source),
        Err(crate::segments::SegmentsError::Name(_)) => context! { kind => "segment.error.name" },
        Err(crate::segments::SegmentsError::Store(e)) => return Err(PageError::from(e).in_lang(lang)),
        Err(_) => return Err(PageError::bad_request(lang, "error.bad_request")),
    };
    segments_page(&state, &staff, Some(error), form.name.trim(), &form.source, &form.description).await
}
