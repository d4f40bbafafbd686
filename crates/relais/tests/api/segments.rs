//! Segments: the language's errors through the API, live memberships with
//! their computed events, and a full refresh that agrees with them (late
//! events, merges, windows that expire), exports, overlap, RFM as traits.

use chrono::{Duration, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{place, run_binary, TestApp};
use relais_domain::Role;

fn ago(days: i64) -> String {
    (Utc::now() - Duration::days(days)).to_rfc3339()
}

fn order(user: &str, id: &str, total: f64, days_ago: i64) -> Value {
    json!({"type": "track", "userId": user, "event": "Order Completed", "messageId": id, "timestamp": ago(days_ago),
           "properties": {"order_id": id, "total": total, "currency": "EUR"}, "context": {"channel": "web"}})
}

fn person(user: &str, city: &str) -> Value {
    json!({"type": "identify", "userId": user, "messageId": format!("id-{user}"),
           "traits": {"email": format!("{user}@exemple.fr"), "address": {"city": city}}})
}

async fn send(app: &TestApp, as_key: &str, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let url = format!("{}{path}", app.address);
    let request = match method {
        "GET" => app.client.get(url),
        "DELETE" => app.client.delete(url),
        _ => app.client.post(url).json(&body.unwrap_or(json!({}))),
    };
    let response = request.bearer_auth(as_key).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn members(app: &TestApp, name: &str) -> Vec<String> {
    let (status, body) =
        send(app, &app.admin, "GET", &format!("/api/v1/segments/{name}/members?format=csv"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut ids: Vec<String> =
        body.as_str().unwrap().lines().skip(1).map(|l| l.split(',').next().unwrap().to_string()).collect();
    ids.sort();
    ids
}

async fn id_of(app: &TestApp, user: &str) -> String {
    app.customer_by(&format!("user_id:{user}")).await["id"].as_str().unwrap().to_string()
}

async fn names_of_events(app: &TestApp, customer: &str) -> Vec<String> {
    app.all_events(customer).await.iter().filter_map(|e| e["name"].as_str().map(String::from)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn memberships_are_live_and_a_full_refresh_agrees_with_them() {
    let app = TestApp::spawn().await;
    let (status, _) = app
        .batch(json!([
            person("ana", "Lyon"),
            order("ana", "a1", 40.0, 3),
            order("ana", "a2", 25.0, 20),
            person("bruno", "Nantes"),
            order("bruno", "b1", 30.0, 5),
            person("chloe", "Paris"),
            order("chloe", "c1", 10.0, 1),
            order("chloe", "c2", 12.0, 2),
            person("dora", "Lyon"),
            order("dora", "d1", 50.0, 85),
            order("dora", "d2", 50.0, 84),
        ]))
        .await;
    assert_eq!(status, StatusCode::OK);
    let source = r#"orders_90d >= 2 and city in ("Lyon", "Nantes")"#;
    let (status, saved) = send(
        &app,
        &app.admin,
        "POST",
        "/api/v1/segments",
        Some(json!({"name": "fideles-lyon-nantes", "source": source, "description": "Deux commandes en 90 jours"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert_eq!((saved["segment"]["size"].as_i64(), saved["entered"].as_u64()), (Some(2), Some(2)), "{saved}");
    let (ana, bruno, dora) = (id_of(&app, "ana").await, id_of(&app, "bruno").await, id_of(&app, "dora").await);
    let mut expected = vec![ana.clone(), dora.clone()];
    expected.sort();
    assert_eq!(members(&app, "fideles-lyon-nantes").await, expected);

    // A new order makes Bruno enter at once, with a computed event on his timeline.
    app.batch(json!([order("bruno", "b2", 15.0, 0)])).await;
    assert!(members(&app, "fideles-lyon-nantes").await.contains(&bruno));
    assert!(names_of_events(&app, &bruno).await.contains(&"Segment Entered".to_string()));

    // A late event out of the window changes nothing; a merge brings two
    // profiles' orders together and only the survivor is a member.
    app.batch(json!([
        person("eve", "Nantes"), order("eve", "e1", 20.0, 10), order("eve", "e0", 20.0, 400),
        {"type": "track", "anonymousId": "tablette-eve", "event": "Order Completed", "messageId": "e2",
         "timestamp": ago(6), "properties": {"order_id": "e2", "total": 18.0, "currency": "EUR"}},
    ]))
    .await;
    assert!(!members(&app, "fideles-lyon-nantes").await.contains(&id_of(&app, "eve").await));
    let (status, _) =
        app.post("/v1/alias", &json!({"userId": "eve", "previousId": "tablette-eve", "messageId": "alias-eve"})).await;
    assert_eq!(status, StatusCode::OK);
    let eve = id_of(&app, "eve").await;
    let live = members(&app, "fideles-lyon-nantes").await;
    assert!(live.contains(&eve), "the merged profile has two orders in 90 days: {live:?}");
    assert_eq!(live.len(), 4, "only survivors are members: {live:?}");

    // A full refresh now changes nothing: live memberships were right.
    let (status, report) = send(&app, &app.admin, "POST", "/api/v1/segments/refresh", None).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let change = &report["segments"][0];
    assert_eq!(
        (change["entered"].as_u64(), change["exited"].as_u64(), change["size"].as_i64()),
        (Some(0), Some(0), Some(4))
    );

    // Ten days on, Dora's orders (85 and 84 days old) leave the window with no new event.
    let store = app.store.clone();
    let later = tokio::task::spawn_blocking(move || {
        relais::segments::refresh(store.blocking(), &Default::default(), Utc::now() + Duration::days(10)).unwrap()
    })
    .await
    .unwrap();
    assert_eq!((later.segments[0].exited, later.segments[0].size), (1, 3));
    assert!(!members(&app, "fideles-lyon-nantes").await.contains(&dora));
    assert!(names_of_events(&app, &dora).await.contains(&"Segment Exited".to_string()));

    // JSON lines export, listing, details with a sample, overlap, deletion.
    let (_, jsonl) =
        send(&app, &app.admin, "GET", "/api/v1/segments/fideles-lyon-nantes/members?format=jsonl", None).await;
    assert_eq!(jsonl.as_str().unwrap().lines().count(), 3);
    let first: Value = serde_json::from_str(jsonl.as_str().unwrap().lines().next().unwrap()).unwrap();
    assert!(first["customer"].as_str().unwrap().starts_with("cus_") && first["entered_at"].is_string());
    send(&app, &app.admin, "POST", "/api/v1/segments", Some(json!({"name": "lyon", "source": r#"city = "Lyon""#})))
        .await;
    let (_, overlap) = send(&app, &app.admin, "GET", "/api/v1/segments/lyon/overlap/fideles-lyon-nantes", None).await;
    assert_eq!(
        (overlap["a_size"].as_i64(), overlap["b_size"].as_i64(), overlap["both"].as_i64()),
        (Some(2), Some(3), Some(1))
    );
    let (_, list) = send(&app, &app.admin, "GET", "/api/v1/segments", None).await;
    assert_eq!(list["segments"].as_array().unwrap().len(), 2);
    let (_, detail) = send(&app, &app.admin, "GET", "/api/v1/segments/lyon", None).await;
    assert_eq!(detail["sample"].as_array().unwrap().len(), 2);
    // Erasure takes a person out of every segment, and the sizes follow.
    let (status, body) =
        send(&app, &app.admin, "POST", "/api/v1/privacy/erasures", Some(json!({"identifier": "email:ana@exemple.fr"})))
            .await;
    assert!(status.is_success(), "{body}");
    assert!(!members(&app, "fideles-lyon-nantes").await.contains(&ana));
    let (_, detail) = send(&app, &app.admin, "GET", "/api/v1/segments/lyon", None).await;
    assert_eq!(detail["segment"]["size"], 1, "{detail}");
    let (status, _) = send(&app, &app.admin, "DELETE", "/api/v1/segments/lyon", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, problem) = send(&app, &app.admin, "GET", "/api/v1/segments/lyon", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_segments_are_refused_with_the_place_and_the_reason() {
    let app = TestApp::spawn().await;
    let marketing = app.key(Role::Marketing).await;
    let save = |name: &str, source: &str| json!({"name": name, "source": source});
    let cases = [
        ("orders_90d >= ", 15, "expected a value"),
        (r#"ordres_90d > 1"#, 1, "did you mean `orders_90d`"),
        (r#"orders > "deux""#, 10, "whole number"),
        (r#"count(event "Review Submitted", 900d) >= 1"#, 33, "between 1d and 730d"),
        (r#"city = "Lyon" or (orders > 1"#, 29, "expected `)`"),
    ];
    for (source, column, reason) in cases {
        let (status, problem) = send(&app, &marketing, "POST", "/api/v1/segments", Some(save("x", source))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{source}: {problem}");
        assert_eq!(problem["errors"][0]["field"], "source");
        assert_eq!(problem["errors"][0]["position"]["column"], column, "{source}: {problem}");
        assert!(problem["errors"][0]["reason"].as_str().unwrap().contains(reason), "{source}: {problem}");
    }
    // Personal data is out of reach of the language.
    let (status, problem) = send(
        &app,
        &marketing,
        "POST",
        "/api/v1/segments/preview",
        Some(json!({"source": r#"trait("email") = "a@b.fr""#})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("personal"), "{problem}");
    let (status, problem) =
        send(&app, &marketing, "POST", "/api/v1/segments", Some(save("no spaces", "orders > 1"))).await;
    assert_eq!((status, problem["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("name")));
    // Nothing was saved by any of these.
    let (_, list) = send(&app, &marketing, "GET", "/api/v1/segments", None).await;
    assert_eq!(list["segments"], json!([]));
    // Agents do not manage segments.
    let agent = app.key(Role::Agent).await;
    let (status, _) = send(&app, &agent, "POST", "/api/v1/segments", Some(save("x", "orders > 1"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread")]
async fn customer_scores_and_consents_are_fields_of_the_language() {
    let app = TestApp::spawn().await;
    let mut batch = Vec::new();
    for i in 0..20 {
        batch.push(person(&format!("p{i}"), "Lyon"));
        for k in 0..=(i % 4) {
            batch.push(order(&format!("p{i}"), &format!("o{i}-{k}"), 10.0 + i as f64, (i * 7 + k) as i64));
        }
    }
    app.batch(Value::Array(batch)).await;
    let (_, rfm) = send(&app, &app.admin, "POST", "/api/v1/rfm", None).await;
    let champions =
        rfm["groups"].as_array().unwrap().iter().find(|g| g["group"] == "champions").unwrap()["customers"].as_i64();
    send(&app, &app.admin, "POST", "/api/v1/segments/refresh", None).await;
    let (_, saved) = send(
        &app,
        &app.admin,
        "POST",
        "/api/v1/segments",
        Some(json!({"name": "champions", "source": r#"rfm_group = "champions""#})),
    )
    .await;
    assert_eq!(saved["segment"]["size"].as_i64(), champions, "{saved} vs {rfm}");
    assert!(champions.unwrap() > 0);

    let customer = id_of(&app, "p3").await;
    let consent = json!({"purpose": "email_marketing", "channel": "email", "granted": true, "source": "web",
                         "wording_version": "cgu-1", "proof": {"ip": "192.0.2.7", "user_agent": "Firefox"}});
    let (status, body) =
        send(&app, &app.admin, "POST", &format!("/api/v1/customers/{customer}/consents"), Some(consent)).await;
    assert!(status.is_success(), "{body}");
    let (_, preview) =
        send(&app, &app.admin, "POST", "/api/v1/segments/preview", Some(json!({"source": r#"consent("email")"#})))
            .await;
    assert_eq!(
        (preview["size"].as_u64(), preview["sample"][0].as_str()),
        (Some(1), Some(customer.as_str())),
        "{preview}"
    );
    let (_, preview) = send(
        &app,
        &app.admin,
        "POST",
        "/api/v1/segments/preview",
        Some(json!({"source": r#"not consent("email") and count(event "Order Completed", 30d) >= 2"#})),
    )
    .await;
    assert!(preview["size"].as_u64().unwrap() >= 1, "{preview}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_line_shows_errors_under_the_source_and_exports_members() {
    let app = TestApp::spawn().await;
    app.batch(json!([person("ana", "Lyon"), order("ana", "a1", 40.0, 3)])).await;
    app.batch(json!([
        {"type": "page", "userId": "ana", "name": "Accueil", "messageId": "p0", "timestamp": ago(4)},
        person("bruno", "Nantes"), {"type": "page", "userId": "bruno", "name": "Accueil", "messageId": "p1"},
    ]))
    .await;
    let location = place(&app.scratch);
    let folder = tempfile::tempdir().unwrap();
    let model = folder.path().join("model.json").to_str().unwrap().to_string();
    let (check, save, export, journeys, unknown) = tokio::task::spawn_blocking(move || {
        (
            run_binary(&location, &["segment", "check", "orders >= 1 and ville = \"Lyon\""]),
            run_binary(&location, &["segment", "save", "acheteurs", "orders >= 1"]),
            run_binary(&location, &["segment", "members", "acheteurs", "--format", "jsonl"]),
            run_binary(
                &location,
                &["journey", "model", "--segment", "acheteurs", "--stages", "information,purchase", "--output", &model],
            ),
            run_binary(&location, &["journey", "model", "--segment", "inconnu", "--output", &model]),
        )
    })
    .await
    .unwrap();
    // The journey model of a segment counts only its members' journeys (Ana's, not Bruno's).
    assert!(journeys.0, "{}", journeys.2);
    let estimated: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.path().join("model.json")).unwrap()).unwrap();
    assert_eq!(estimated["journeys"], 1, "{estimated}");
    assert!(!unknown.0 && unknown.2.contains("no segment is named `inconnu`"), "{}", unknown.2);
    assert!(!check.0);
    assert!(check.2.contains("unknown field `ville`"), "{}", check.2);
    assert!(check.2.contains("  orders >= 1 and ville = \"Lyon\"\n                  ^^^^^"), "{}", check.2);
    assert!(save.0, "{}", save.2);
    assert!(export.0, "{}", export.2);
    let line: Value = serde_json::from_str(export.1.lines().next().unwrap()).unwrap();
    assert_eq!(line["customer"], id_of(&app, "ana").await.as_str());
}

fn survey(user: &str, id: &str, nps: i64, rating: i64, days_ago: i64) -> Value {
    json!({"type": "track", "userId": user, "event": "Survey Answered", "messageId": id, "timestamp": ago(days_ago),
           "properties": {"nps": nps, "rating": rating}, "context": {"channel": "web"}})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_typology_reports_size_revenue_value_and_satisfaction_against_the_previous_period() {
    let app = TestApp::spawn().await;
    app.batch(json!([
        person("ana", "Lyon"),
        order("ana", "a1", 40.0, 10),
        order("ana", "a2", 25.0, 40),
        survey("ana", "s1", 10, 5, 5),
        survey("ana", "s0", 3, 2, 45),
        person("bruno", "Lyon"),
        order("bruno", "b1", 30.0, 3),
        survey("bruno", "s2", 8, 4, 2),
        person("chloe", "Paris"),
        order("chloe", "c1", 99.0, 3),
        survey("chloe", "s3", 0, 1, 2),
    ]))
    .await;
    send(&app, &app.admin, "POST", "/api/v1/segments", Some(json!({"name": "lyon", "source": r#"city = "Lyon""#})))
        .await;
    // A typology only names saved segments.
    let (status, _) = send(
        &app,
        &app.admin,
        "POST",
        "/api/v1/typologies",
        Some(json!({"name": "salle", "segments": ["lyon", "nulle-part"]})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, saved) =
        send(&app, &app.admin, "POST", "/api/v1/typologies", Some(json!({"name": "salle", "segments": ["lyon"]})))
            .await;
    assert_eq!(status, StatusCode::OK, "{saved}");

    // A refresh 40 days ago left a snapshot; today's refresh another.
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        relais::segments::refresh(store.blocking(), &Default::default(), Utc::now() - Duration::days(40)).unwrap();
        relais::segments::refresh(store.blocking(), &Default::default(), Utc::now()).unwrap()
    })
    .await
    .unwrap();

    let (status, report) = send(&app, &app.admin, "GET", "/api/v1/typologies/salle?period_days=30", None).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let room = &report["segments"][0];
    assert_eq!(
        (room["segment"].as_str(), room["size"].as_i64(), room["size_before"].as_i64()),
        (Some("lyon"), Some(2), Some(2))
    );
    assert_eq!(room["size_change_pct"], 0.0);
    // Today's members: 40 + 30 this period, 25 the period before.
    assert_eq!((room["revenue"].as_f64(), room["revenue_before"].as_f64()), (Some(70.0), Some(25.0)), "{room}");
    assert_eq!(room["revenue_change_pct"], 180.0);
    // NPS: one promoter (10), one passive (8) of two; before: one detractor. CSAT: 5 and 4 satisfied.
    assert_eq!(room["satisfaction"]["nps"], 50.0, "{room}");
    assert_eq!(room["satisfaction"]["csat"], 100.0);
    assert_eq!(
        (room["satisfaction_before"]["nps"].as_f64(), room["satisfaction_before"]["csat"].as_f64()),
        (Some(-100.0), Some(0.0))
    );
    assert_eq!(room["history"].as_array().unwrap().len(), 2);

    let (status, _) = send(&app, &app.admin, "GET", "/api/v1/typologies/salle?period_days=0", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = send(&app, &app.admin, "GET", "/api/v1/typologies/inconnue", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = send(&app, &app.admin, "GET", "/api/v1/typologies", None).await;
    assert_eq!(list["typologies"][0]["segments"], json!(["lyon"]));
    let (status, _) = send(&app, &app.admin, "DELETE", "/api/v1/typologies/salle", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread")]
async fn survey_answers_sent_before_a_merge_count_for_the_survivor() {
    let app = TestApp::spawn().await;
    let (status, _) = app
        .batch(json!([
            person("dana", "Lyon"),
            {"type": "track", "anonymousId": "dev-d", "event": "Survey Answered", "messageId": "sd",
             "timestamp": ago(1), "properties": {"nps": 10}, "context": {"channel": "app"}},
        ]))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) =
        app.batch(json!([{"type": "identify", "userId": "dana", "anonymousId": "dev-d", "messageId": "link-d"}])).await;
    assert_eq!(status, StatusCode::OK);
    send(&app, &app.admin, "POST", "/api/v1/segments", Some(json!({"name": "lyon", "source": r#"city = "Lyon""#})))
        .await;
    let (status, _) =
        send(&app, &app.admin, "POST", "/api/v1/typologies", Some(json!({"name": "salle", "segments": ["lyon"]})))
            .await;
    assert_eq!(status, StatusCode::OK);
    let (status, report) = send(&app, &app.admin, "GET", "/api/v1/typologies/salle?period_days=30", None).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let room = &report["segments"][0];
    assert_eq!(room["size"], 1, "{room}");
    assert_eq!(
        (room["satisfaction"]["nps_answers"].as_u64(), room["satisfaction"]["nps"].as_f64()),
        (Some(1), Some(100.0)),
        "the answer given before the merge counts: {room}"
    );
}
