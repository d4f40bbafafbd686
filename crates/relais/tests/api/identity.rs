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

#[tokio::test(flavor = "multi_thread")]
async fn profiles_with_different_customer_numbers_are_never_merged() {
    let app = TestApp::spawn().await;
    app.batch(json!([
        {"type": "identify", "userId": "a", "traits": {"customer_number": "C-1", "email": "one@example.fr"}},
        {"type": "identify", "userId": "b", "traits": {"customer_number": "C-2"}},
        // A message claiming C-2's customer number with C-1's e-mail: a conflict, not a merge.
        {"type": "identify", "anonymousId": "x", "traits": {"customer_number": "C-2", "email": "one@example.fr"}},
    ]))
    .await;
    let one = app.customer_by("customer_number:C-1").await;
    let two = app.customer_by("customer_number:C-2").await;
    assert_ne!(one["id"], two["id"]);
    assert_eq!(app.customer_by("email:one@example.fr").await["id"], one["id"]);
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
