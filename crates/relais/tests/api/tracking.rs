//! The Segment tracking API.

use std::io::Write;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_stores_good_messages_and_rejects_bad_ones_with_reasons() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .batch(json!([
            {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "m1",
             "properties": {"total": 19.9, "currency": "EUR"}},
            {"type": "track", "event": "No Identity", "messageId": "m2"},
            "not an object",
            {"type": "identify", "userId": "u2", "traits": {"email": "not-an-email"}, "messageId": "m4"},
            {"type": "page", "anonymousId": "a1", "name": "Accueil", "messageId": "m5"},
        ]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["stored"].as_u64(), body["rejected"].as_u64()), (Some(2), Some(3)));
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], "stored");
    assert_eq!(results[1]["reason"], "`userId` or `anonymousId` is required");
    assert_eq!(results[1]["messageId"], "m2");
    assert!(results[2]["reason"].as_str().unwrap().contains("not a JSON object"));
    assert!(results[3]["reason"].as_str().unwrap().contains("traits.email"));
    assert_eq!(results[4]["status"], "stored");

    let customer = app.customer_by("user_id:u1").await;
    assert_eq!(customer["traits"]["order_count"], 1);
    assert_eq!(customer["traits"]["revenue_minor"], 1990);
    let (status, _) = app.get("/api/v1/customers?identifier=user_id:u2").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a rejected message must not create a profile");
}

#[tokio::test(flavor = "multi_thread")]
async fn sending_a_message_twice_stores_it_once() {
    let app = TestApp::spawn().await;
    let message = json!({"type": "track", "userId": "u1", "event": "Product Viewed", "messageId": "same-id"});
    let (_, first) = app.post("/v1/track", &message).await;
    let (status, second) = app.batch(json!([message, message])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["stored"], 1);
    assert_eq!(second["duplicates"], 2);
    assert_eq!(second["results"][0]["event_id"], first["results"][0]["event_id"]);
    let customer = app.customer_by("user_id:u1").await;
    assert_eq!(app.all_events(customer["id"].as_str().unwrap()).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_id_deduplicates_per_source_only() {
    let app = TestApp::spawn().await;
    let other_source = app.key(relais_domain::Role::Ingest).await;
    let message = json!({"type": "track", "userId": "u1", "event": "Product Viewed", "messageId": "shared"});
    app.post("/v1/track", &message).await;
    let (status, body) =
        app.post_raw("/v1/track", serde_json::to_vec(&message).unwrap(), None, Some(&other_source)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["stored"], 1, "another source's message with the same id is another message");
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_bodies_are_accepted_and_bombs_refused() {
    let app = TestApp::spawn().await;
    let body =
        serde_json::to_vec(&json!({"batch": [{"type": "identify", "userId": "gz", "messageId": "g1"}]})).unwrap();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&body).unwrap();
    let (status, answer) = app.post_raw("/v1/batch", encoder.finish().unwrap(), Some("gzip"), Some(&app.ingest)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["stored"], 1);

    // 2 MB of spaces compress to a few KB: the decompressed size is what counts.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(b"{\"batch\": [").unwrap();
    encoder.write_all(&vec![b' '; 2_000_000]).unwrap();
    encoder.write_all(b"]}").unwrap();
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 100_000);
    let (status, problem) = app.post_raw("/v1/batch", bomb, Some("gzip"), Some(&app.ingest)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem["status"], 413);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_messages_are_rejected_one_by_one() {
    let app = TestApp::spawn().await;
    let big = "x".repeat(40_000);
    let (status, body) = app
        .batch(json!([
            {"type": "track", "userId": "u", "event": "Big", "properties": {"blob": big}},
            {"type": "track", "userId": "u", "event": "Small"},
        ]))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["results"][0]["reason"].as_str().unwrap().contains("32768"));
    assert_eq!(body["results"][1]["status"], "stored");
    let (status, _) = app.post_raw("/v1/batch", vec![b' '; 600_000], None, Some(&app.ingest)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_requests_get_a_problem_document_naming_the_field() {
    let app = TestApp::spawn().await;
    let (status, problem) = app.post_raw("/v1/batch", b"{not json".to_vec(), None, Some(&app.ingest)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["field"], "body");
    assert_eq!(problem["status"], 400);

    let (status, problem) = app.post("/v1/track", &json!({"userId": "u"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(problem["detail"].as_str().unwrap().contains("`event` is required"), "{problem}");

    let (status, problem) = app.post("/v1/batch", &json!({"messages": []})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["field"], "batch");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_checked_and_roles_enforced() {
    let app = TestApp::spawn().await;
    let body = serde_json::to_vec(&json!({"userId": "u", "event": "x"})).unwrap();
    let (status, problem) = app.post_raw("/v1/track", body.clone(), None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(problem["detail"].as_str().unwrap().contains("API key"));
    let (status, _) = app.post_raw("/v1/track", body.clone(), None, Some("rls_wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let analyst = app.key(relais_domain::Role::Analyst).await;
    let (status, _) = app.post_raw("/v1/track", body, None, Some(&analyst)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app.get_as("/api/v1/customers?q=a@b.fr", &app.ingest).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_single_message_endpoint_stores_its_type() {
    let app = TestApp::spawn().await;
    let calls = [
        ("/v1/identify", json!({"userId": "s1", "traits": {"email": "s1@example.fr"}})),
        ("/v1/track", json!({"userId": "s1", "event": "Store Visited", "context": {"store": "nantes-graslin"}})),
        ("/v1/page", json!({"userId": "s1", "name": "Accueil"})),
        ("/v1/screen", json!({"userId": "s1", "name": "Panier"})),
        ("/v1/group", json!({"userId": "s1", "groupId": "famille-s1", "traits": {"kind": "household"}})),
        ("/v1/alias", json!({"userId": "s1", "previousId": "anon-s1"})),
    ];
    for (path, body) in calls {
        let (status, answer) = app.post(path, &body).await;
        assert_eq!(status, StatusCode::OK, "{path}: {answer}");
        assert_eq!(answer["stored"], 1, "{path}");
    }
    let customer = app.customer_by("anonymous_id:anon-s1").await;
    assert_eq!(customer["accounts"], json!(["famille-s1"]));
    let types: Vec<String> = app
        .all_events(customer["id"].as_str().unwrap())
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["alias", "group", "screen", "page", "track", "identify"]);
    assert_eq!(customer["traits"]["favourite_store"], "nantes-graslin");
}

#[tokio::test(flavor = "multi_thread")]
async fn timestamps_and_context_are_kept_and_the_client_clock_corrected() {
    let app = TestApp::spawn().await;
    let (status, _) = app
        .batch(json!([{
            "type": "track", "userId": "c1", "event": "Product Viewed", "messageId": "t1",
            "timestamp": "2026-01-10T10:00:00Z", "sentAt": "2026-01-10T10:00:05Z",
            "context": {"ip": "203.0.113.1", "channel": "app", "location": {"city": "Lyon"}}
        }]))
        .await;
    assert_eq!(status, StatusCode::OK);
    let customer = app.customer_by("user_id:c1").await;
    let event = &customer["timeline"]["events"][0];
    assert_eq!(event["messageId"], "t1");
    assert_eq!(event["channel"], "app");
    assert_eq!(event["context"]["ip"], "203.0.113.1");
    assert_eq!(event["context"]["location"]["city"], "Lyon");
    assert_eq!(event["sentAt"], "2026-01-10T10:00:05Z");
    // timestamp = receivedAt - (sentAt - timestamp): 5 seconds before arrival.
    let received = chrono::DateTime::parse_from_rfc3339(event["receivedAt"].as_str().unwrap()).unwrap();
    let timestamp = chrono::DateTime::parse_from_rfc3339(event["timestamp"].as_str().unwrap()).unwrap();
    assert_eq!((received - timestamp).num_seconds(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_id_is_forgotten_after_the_retention_and_then_stored_again() {
    let app = TestApp::spawn().await;
    let message = json!({"type": "track", "userId": "r", "event": "Product Viewed", "messageId": "old-id"});
    assert_eq!(app.post("/v1/track", &message).await.1["stored"], 1);
    // Nothing is older than a day: nothing forgotten, still a duplicate.
    let store = app.store.clone();
    let forgotten = tokio::task::spawn_blocking(move || {
        store.blocking().purge_message_ids(chrono::Utc::now() - chrono::Duration::days(1)).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(forgotten, 0);
    assert_eq!(app.post("/v1/track", &message).await.1["duplicates"], 1);
    // Once the retention has passed, the id is forgotten and the message is new again.
    let store = app.store.clone();
    let forgotten = tokio::task::spawn_blocking(move || {
        store.blocking().purge_message_ids(chrono::Utc::now() + chrono::Duration::seconds(1)).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(forgotten, 1);
    assert_eq!(app.post("/v1/track", &message).await.1["stored"], 1);
}
