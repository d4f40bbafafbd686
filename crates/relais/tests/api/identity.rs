//! Identity resolution through the API.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn an_identify_linking_an_anonymous_profile_to_a_user_merges_them() {
    let app = TestApp::spawn().await;
    app.batch(json!([
        {"type": "page", "anonymousId": "device-1", "name": "Accueil", "messageId": "p1", "timestamp": "2026-03-01T10:00:00Z"},
        {"type": "track", "userId": "ana", "event": "Order Completed", "messageId": "o1",
         "properties": {"total": 30, "currency": "EUR"}, "timestamp": "2026-03-02T10:00:00Z"},
    ]))
    .await;
    let anonymous = app.customer_by("anonymous_id:device-1").await;
    let known = app.customer_by("user_id:ana").await;
    assert_ne!(anonymous["id"], known["id"]);

    let (status, _) = app
        .post(
            "/v1/identify",
            &json!({"userId": "ana", "anonymousId": "device-1", "traits": {"email": "Ana@Example.fr"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let merged = app.customer_by("email:ana@example.fr").await;
    let survivor = merged["id"].as_str().unwrap();
    // The oldest profile survives; the other answers 308 to it.
    assert_eq!(survivor, anonymous["id"].as_str().unwrap());
    let gone = known["id"].as_str().unwrap();
    let (status, body) = app.get(&format!("/api/v1/customers/{gone}")).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(body["__location"], format!("/api/v1/customers/{survivor}"));
    let (status, _) = app.get(&format!("/api/v1/customers/{gone}/events")).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);

    assert_eq!(merged["traits"]["event_count"], 3);
    assert_eq!(merged["traits"]["order_count"], 1);
    assert_eq!(merged["merged_from"], json!([gone]));
    let identifiers = merged["identifiers"].as_array().unwrap();
    assert_eq!(identifiers.len(), 3, "{identifiers:?}");
    assert_eq!(app.all_events(survivor).await.len(), 3);
    let (_, history) = app.get(&format!("/api/v1/customers/{survivor}/merges")).await;
    assert_eq!(history["merges"][0]["merged_id"], gone);
    assert_eq!(history["merges"][0]["identifiers"], json!(["user_id:ana"]));
    for identifier in ["user_id:ana", "anonymous_id:device-1"] {
        assert_eq!(app.customer_by(identifier).await["id"], survivor);
    }
}

/// Send `batches` (messages about two people holding customer numbers C-1
/// and C-2, and one claiming C-2's number with C-1's e-mail), then check the
/// claim was a conflict, not a merge.
async fn customer_numbers_stay_apart(batches: Vec<serde_json::Value>) {
    let app = TestApp::spawn().await;
    for batch in batches {
        app.batch(batch).await;
    }
    let one = app.customer_by("customer_number:C-1").await;
    let two = app.customer_by("customer_number:C-2").await;
    assert_ne!(one["id"], two["id"]);
    assert_eq!(app.customer_by("email:one@example.fr").await["id"], one["id"]);
}

const HOLDER_ONE: &str =
    r#"{"type": "identify", "userId": "a", "traits": {"customer_number": "C-1", "email": "one@example.fr"}}"#;
const HOLDER_TWO: &str = r#"{"type": "identify", "userId": "b", "traits": {"customer_number": "C-2"}}"#;
/// A message claiming C-2's customer number with C-1's e-mail.
const CLAIM: &str =
    r#"{"type": "identify", "anonymousId": "x", "traits": {"customer_number": "C-2", "email": "one@example.fr"}}"#;

fn messages(texts: &[&str]) -> serde_json::Value {
    serde_json::Value::Array(texts.iter().map(|t| serde_json::from_str(t).unwrap()).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn profiles_with_different_customer_numbers_are_never_merged() {
    customer_numbers_stay_apart(vec![messages(&[HOLDER_ONE, HOLDER_TWO, CLAIM])]).await;
}

/// The same, with the conflicting message in a later batch: the profiles'
/// exclusive identifiers then come from what the writer kept of them
/// (SQLite's customer cache), not from the batch.
#[tokio::test(flavor = "multi_thread")]
async fn profiles_with_different_customer_numbers_are_never_merged_by_a_later_batch() {
    let visits = json!([{"type": "track", "userId": "a", "event": "Page Viewed"}, {"type": "track", "userId": "b", "event": "Page Viewed"}]);
    customer_numbers_stay_apart(vec![messages(&[HOLDER_ONE, HOLDER_TWO]), visits, messages(&[CLAIM])]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lookups_and_search_find_one_customer_by_any_identifier() {
    let app = TestApp::spawn().await;
    app.post(
        "/v1/identify",
        &json!({"userId": "42", "anonymousId": "anon-42",
                "traits": {"email": "lea.dubois@example.fr", "phone": "06 12 34 56 78", "card_number": "9250 0000 0042"}}),
    )
    .await;
    let id = app.customer_by("user_id:42").await["id"].clone();
    for identifier in ["email:LEA.DUBOIS@example.fr", "anonymous_id:anon-42", "phone:+33612345678", "card:925000000042"]
    {
        assert_eq!(app.customer_by(identifier).await["id"], id, "{identifier}");
    }
    for q in ["lea.dubois@example.fr", "06.12.34.56.78", "9250 0000 0042"] {
        let (status, found) = app.get(&format!("/api/v1/customers?q={}", crate::helpers::urlencode(q))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(found["customers"][0]["id"], id, "{q}: {found}");
    }
    let (status, problem) = app.get("/api/v1/customers?identifier=mail:x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["field"], "identifier");
    let (status, _) = app.get("/api/v1/customers?identifier=email:nobody@example.fr").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, problem) = app.get("/api/v1/customers/not-an-id").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shared_device_does_not_merge_two_signed_in_people() {
    let app = TestApp::spawn().await;
    app.batch(json!([
        {"type": "identify", "userId": "first", "anonymousId": "kiosk"},
        {"type": "identify", "userId": "second", "anonymousId": "kiosk"},
    ]))
    .await;
    let first = app.customer_by("user_id:first").await;
    let second = app.customer_by("user_id:second").await;
    assert_ne!(first["id"], second["id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_merge_can_be_undone_and_later_events_follow_their_identifiers() {
    let app = TestApp::spawn().await;
    app.batch(json!([
        {"type": "track", "userId": "alice", "event": "Order Completed", "messageId": "a1",
         "properties": {"total": 10, "currency": "EUR"}, "timestamp": "2026-02-01T10:00:00Z"},
        {"type": "track", "anonymousId": "tablet", "event": "Order Completed", "messageId": "t1",
         "properties": {"total": 7, "currency": "EUR"}, "timestamp": "2026-02-02T10:00:00Z"},
    ]))
    .await;
    // A family tablet gets linked to Alice by mistake: the profiles merge.
    app.post("/v1/identify", &json!({"userId": "alice", "anonymousId": "tablet", "messageId": "link"})).await;
    let alice = app.customer_by("user_id:alice").await;
    assert_eq!(app.customer_by("anonymous_id:tablet").await["id"], alice["id"]);
    // After the merge, events arrive for the tablet alone and for Alice alone.
    app.batch(json!([
        {"type": "page", "anonymousId": "tablet", "name": "Jeux", "messageId": "t2"},
        {"type": "page", "userId": "alice", "name": "Compte", "messageId": "a2"},
    ]))
    .await;
    let survivor = alice["id"].as_str().unwrap();
    let (_, history) = app.get(&format!("/api/v1/customers/{survivor}/merges")).await;
    let merge_id = history["merges"][0]["merge_id"].as_str().unwrap().to_string();

    let agent = app.key(relais_domain::Role::Agent).await;
    let analyst = app.key(relais_domain::Role::Analyst).await;
    let undo = |key: String| {
        let client = app.client.clone();
        let url = format!("{}/api/v1/merges/{merge_id}/undo", app.address);
        async move { client.post(url).bearer_auth(key).send().await.unwrap() }
    };
    assert_eq!(undo(analyst).await.status(), StatusCode::FORBIDDEN);
    let response = undo(agent.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let report: serde_json::Value = response.json().await.unwrap();
    assert_eq!(report["events_moved"], 1, "{report}");

    let tablet = app.customer_by("anonymous_id:tablet").await;
    let alice = app.customer_by("user_id:alice").await;
    assert_ne!(tablet["id"], alice["id"]);
    assert_eq!(report["restored_id"], tablet["id"]);
    let names = |events: Vec<serde_json::Value>| -> Vec<String> {
        events.iter().map(|e| e["messageId"].as_str().unwrap().to_string()).collect()
    };
    let mut tablet_events = names(app.all_events(tablet["id"].as_str().unwrap()).await);
    tablet_events.sort();
    assert_eq!(tablet_events, ["t1", "t2"]);
    let mut alice_events = names(app.all_events(alice["id"].as_str().unwrap()).await);
    alice_events.sort();
    assert_eq!(alice_events, ["a1", "a2", "link"]);
    assert_eq!(tablet["traits"]["revenue_minor"], 700);
    assert_eq!(alice["traits"]["revenue_minor"], 1000);
    assert_eq!(alice["merged_from"], json!([]));
    // Undoing twice is a conflict, not a silent success.
    assert_eq!(undo(agent).await.status(), StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identifier_seen_with_too_many_people_is_flagged_and_stops_linking() {
    let app = TestApp::spawn().await;
    // A shop's kiosk: six different people sign in on it (the default limit is 5).
    for n in 0..6 {
        app.post("/v1/identify", &json!({"userId": format!("client-{n}"), "anonymousId": "kiosk-lyon"})).await;
    }
    let owner = app.customer_by("anonymous_id:kiosk-lyon").await;
    assert_eq!(owner["shared_identifiers"], json!(["anonymous_id:kiosk-lyon"]));
    // An anonymous event on the kiosk no longer lands in the first client's profile.
    app.post("/v1/track", &json!({"anonymousId": "kiosk-lyon", "event": "Product Viewed", "messageId": "kiosk-view"}))
        .await;
    let first = app.customer_by("user_id:client-0").await;
    let events = app.all_events(first["id"].as_str().unwrap()).await;
    assert!(events.iter().all(|e| e["messageId"] != "kiosk-view"), "{events:?}");
    for n in 1..6 {
        assert_ne!(app.customer_by(&format!("user_id:client-{n}")).await["id"], first["id"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn undoing_a_merge_restores_the_profiles_merged_into_it_before() {
    let app = TestApp::spawn().await;
    // Four profiles, oldest first: S, M, Y, X.
    app.post("/v1/identify", &json!({"userId": "s", "messageId": "s1"})).await;
    app.post("/v1/page", &json!({"anonymousId": "m", "messageId": "m1"})).await;
    app.post("/v1/page", &json!({"anonymousId": "y", "messageId": "y1"})).await;
    app.post("/v1/track", &json!({"anonymousId": "x", "event": "Seen", "messageId": "x1", "context": {"traits": {"email": "x@example.fr"}}}))
        .await;
    // X merges into Y, Y into M (through the e-mail), then M into S.
    app.post("/v1/track", &json!({"anonymousId": "y", "event": "Seen", "messageId": "y2", "context": {"traits": {"email": "x@example.fr"}}}))
        .await;
    app.post("/v1/track", &json!({"anonymousId": "m", "event": "Seen", "messageId": "m2", "context": {"traits": {"email": "x@example.fr"}}}))
        .await;
    app.post("/v1/identify", &json!({"userId": "s", "anonymousId": "m", "messageId": "s2"})).await;
    let s = app.customer_by("user_id:s").await;
    assert_eq!(app.customer_by("anonymous_id:x").await["id"], s["id"]);
    assert_eq!(s["merged_from"].as_array().unwrap().len(), 3);

    let (_, history) = app.get(&format!("/api/v1/customers/{}/merges", s["id"].as_str().unwrap())).await;
    let merge_id = history["merges"].as_array().unwrap().last().unwrap()["merge_id"].as_str().unwrap().to_string();
    let response = app
        .client
        .post(format!("{}/api/v1/merges/{merge_id}/undo", app.address))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let m = app.customer_by("anonymous_id:m").await;
    assert_ne!(m["id"], s["id"]);
    for identifier in ["anonymous_id:x", "anonymous_id:y", "email:x@example.fr"] {
        assert_eq!(app.customer_by(identifier).await["id"], m["id"], "{identifier}");
    }
    let mut ids: Vec<String> = app
        .all_events(m["id"].as_str().unwrap())
        .await
        .iter()
        .map(|e| e["messageId"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["m1", "m2", "x1", "y1", "y2"]);
    assert_eq!(m["merged_from"].as_array().unwrap().len(), 2);
    assert_eq!(m["traits"]["event_count"], 5);
    let s = app.customer_by("user_id:s").await;
    assert_eq!(s["traits"]["event_count"], 2);
}
