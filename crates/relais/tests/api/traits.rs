//! Computed traits and the timeline.

use chrono::{Duration, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::TestApp;

fn days_ago(days: i64) -> String {
    (Utc::now() - Duration::days(days)).to_rfc3339()
}

fn order(user: &str, id: &str, total: f64, at: &str, channel: &str) -> Value {
    json!({"type": "track", "userId": user, "event": "Order Completed", "messageId": id, "timestamp": at,
           "properties": {"order_id": id, "total": total, "currency": "EUR", "store": if channel == "store" { "lyon-part-dieu" } else { "" }},
           "context": {"channel": channel}})
}

#[tokio::test(flavor = "multi_thread")]
async fn traits_follow_event_time_not_arrival_time() {
    let app = TestApp::spawn().await;
    app.batch(json!([order("t", "o2", 20.0, &days_ago(2), "store")])).await;
    // A late event, older than what is already known, arrives afterwards.
    app.batch(json!([order("t", "o1", 10.0, &days_ago(40), "web")])).await;
    let traits = app.customer_by("user_id:t").await["traits"].clone();
    assert_eq!(traits["last_channel"], "store", "a late event must not become the last channel");
    assert_eq!(traits["order_count"], 2);
    assert_eq!(traits["revenue_minor"], 3000);
    assert_eq!(traits["average_basket_minor"], 1500);
    assert_eq!(traits["orders_30d"], 1);
    assert_eq!(traits["orders_90d"], 2);
    assert_eq!(traits["favourite_store"], "lyon-part-dieu");
    assert_eq!(traits["channels"], json!(["web", "store"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_refund_reduces_revenue() {
    let app = TestApp::spawn().await;
    app.batch(json!([
        order("r", "o1", 50.0, &days_ago(3), "web"),
        {"type": "track", "userId": "r", "event": "Order Refunded", "timestamp": days_ago(1),
         "properties": {"order_id": "o1", "total": 12.5, "currency": "EUR"}},
    ]))
    .await;
    let traits = app.customer_by("user_id:r").await["traits"].clone();
    assert_eq!((traits["order_count"].as_i64(), traits["refund_count"].as_i64()), (Some(1), Some(1)));
    assert_eq!(traits["revenue_minor"], 3750);
    assert_eq!(traits["revenue_90d_minor"], 3750);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuild_from_the_log_gives_the_incremental_traits() {
    let app = TestApp::spawn().await;
    // Out-of-order arrival, a window edge (an order 29 and one 31 days ago), a
    // 100-day-old order outside 90 days, and a merge between two histories.
    app.batch(json!([
        order("m", "a", 10.0, &days_ago(29), "web"),
        order("m", "b", 20.0, &days_ago(100), "store"),
        {"type": "page", "anonymousId": "dev-m", "name": "Accueil", "timestamp": days_ago(31)},
        order("n", "c", 5.0, &days_ago(31), "app"),
    ]))
    .await;
    app.batch(json!([
        {"type": "track", "anonymousId": "dev-m", "event": "Product Viewed", "timestamp": days_ago(400)},
        {"type": "identify", "userId": "m", "anonymousId": "dev-m", "timestamp": days_ago(5)},
    ]))
    .await;
    let before_m = app.customer_by("user_id:m").await;
    let before_n = app.customer_by("user_id:n").await;
    assert_eq!(before_m["traits"]["event_count"], 5);
    assert_eq!(before_m["traits"]["orders_30d"], 1);
    assert_eq!(before_m["traits"]["orders_365d"], 2);

    let count = app.store.run(|engine| engine.rebuild_traits(&Default::default())).await.unwrap();
    assert!(count >= 2);
    let after_m = app.customer_by("user_id:m").await;
    let after_n = app.customer_by("user_id:n").await;
    assert_eq!(before_m["traits"], after_m["traits"]);
    assert_eq!(before_n["traits"], after_n["traits"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_timeline_pages_newest_first_without_gaps_or_repeats() {
    let app = TestApp::spawn().await;
    let messages: Vec<Value> = (0..30)
        .map(|i| {
            json!({"type": "page", "userId": "p", "name": format!("page {i}"), "messageId": format!("pg-{i}"),
                   // Pairs share a timestamp, so ties must be ordered too.
                   "timestamp": (Utc::now() - Duration::minutes(100 - (i / 2) as i64)).to_rfc3339()})
        })
        .collect();
    app.batch(Value::Array(messages)).await;
    let id = app.customer_by("user_id:p").await["id"].as_str().unwrap().to_string();
    let events = app.all_events(&id).await;
    assert_eq!(events.len(), 30);
    let mut ids: Vec<&str> = events.iter().map(|e| e["messageId"].as_str().unwrap()).collect();
    // Compared as instants: the text drops trailing zeros of the fraction
    // (".123Z" beside ".123456Z"), so it does not sort as time does.
    let timestamps: Vec<chrono::DateTime<chrono::FixedOffset>> = events
        .iter()
        .map(|e| chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).unwrap())
        .collect();
    assert!(timestamps.windows(2).all(|w| w[0] >= w[1]), "newest first: {timestamps:?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 30);
    let (status, problem) = app.get(&format!("/api/v1/customers/{id}/events?cursor=bogus")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["field"], "cursor");
    let (status, _) = app.get(&format!("/api/v1/customers/{id}/events?limit=0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
