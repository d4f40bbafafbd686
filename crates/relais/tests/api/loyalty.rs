//! Loyalty over HTTP against a real database: programmes, enrolment and
//! cards, earning once per event, refunds, debits with idempotency keys under
//! concurrency (two server processes on PostgreSQL), merges, erasure, expiry,
//! and the ledger's invariants after each.

use chrono::Datelike;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{place, raw_execute, start_binary, TestApp};

/// The test programme (TOML, as `relais loyalty apply` reads it).
pub const PROGRAMME: &str = r#"
[programme]
key = "club"
name = "Club Relais"
unit = "points"
point_value_minor = 1

[[version]]
effective_from = "2020-01-01"
expiry = { months = 12 }

[[version.rule]]
id = "spend"
kind = "spend"
points_per_euro = "1"
multiplier = [ { category = "Beauté", factor = "2" }, { store = "lyon-part-dieu", factor = "1.5" } ]

[[version.rule]]
id = "review"
kind = "event"
event = "Review Submitted"
points = 20
cap = { per = "month", points = 40 }

[[version.rule]]
id = "welcome"
kind = "first_purchase"
points = 50
"#;

/// The same programme as JSON (the API's default body).
pub const PROGRAMME_JSON: &str = r#"{"programme": {"key": "club", "name": "Club Relais", "unit": "points", "point_value_minor": 1},
 "version": [{"effective_from": "2020-01-01", "expiry": {"months": 12}, "rule": [
   {"id": "spend", "kind": "spend", "points_per_euro": "1",
    "multiplier": [{"category": "Beauté", "factor": "2"}, {"store": "lyon-part-dieu", "factor": "1.5"}]},
   {"id": "review", "kind": "event", "event": "Review Submitted", "points": 20, "cap": {"per": "month", "points": 40}},
   {"id": "welcome", "kind": "first_purchase", "points": 50}]}]}"#;

/// A request with the admin key (or `key`), a content type and extra headers.
async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let url = format!("{}{path}", app.address);
    let mut request = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    }
    .bearer_auth(&app.admin);
    if let Some((content_type, bytes)) = body {
        request = request.header("content-type", content_type).body(bytes);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let location = response.headers().get("location").map(|l| l.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    let mut value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if let (Some(location), Value::Object(map)) = (location, &mut value) {
        map.insert("__location".into(), Value::String(location));
    }
    (status, value)
}

async fn post_json(app: &TestApp, path: &str, body: Value, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    call(app, "POST", path, Some(("application/json", serde_json::to_vec(&body).unwrap())), headers).await
}

async fn apply(app: &TestApp, toml: &str) -> (StatusCode, Value) {
    call(app, "POST", "/api/v1/loyalty/programmes", Some(("application/toml", toml.as_bytes().to_vec())), &[]).await
}

async fn enrol(app: &TestApp, identifier: &str) -> Value {
    let (status, body) = post_json(app, "/api/v1/loyalty/members", json!({ "identifier": identifier }), &[]).await;
    assert!(status == StatusCode::CREATED || status == StatusCode::OK, "{status}: {body}");
    body
}

async fn statement(app: &TestApp, member: &str) -> Value {
    let (status, body) =
        call(app, "GET", &format!("/api/v1/loyalty/members/{member}/statement?lang=fr"), None, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn redeem(app: &TestApp, member: &str, points: i64, key: &str) -> (StatusCode, Value) {
    post_json(
        app,
        &format!("/api/v1/loyalty/members/{member}/redemptions"),
        json!({ "points": points, "reason": "bon d'achat" }),
        &[("Idempotency-Key", key)],
    )
    .await
}

/// A debit of `points` under `idem`, sent from a task of its own as a till
/// would: its key, status and body.
fn spawn_debit(
    client: &reqwest::Client,
    server: &str,
    admin: &str,
    member: &str,
    idem: String,
    points: i64,
) -> tokio::task::JoinHandle<(String, StatusCode, Value)> {
    let request = client
        .post(format!("{server}/api/v1/loyalty/members/{member}/redemptions"))
        .bearer_auth(admin)
        .header("Idempotency-Key", idem.clone())
        .json(&json!({"points": points, "reason": "bon d'achat"}));
    tokio::spawn(async move {
        let response = request.send().await.unwrap();
        (idem, response.status(), response.json::<Value>().await.unwrap())
    })
}

async fn assert_ledger_holds(app: &TestApp) {
    let (status, check) = call(app, "GET", "/api/v1/loyalty/check", None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(check["holds"], true, "{check}");
    assert_eq!(check["total"], 0, "{check}");
}

fn order(user: &str, message_id: &str, order_id: &str, total: f64, store: &str, products: Value) -> Value {
    json!({"type": "track", "userId": user, "event": "Order Completed", "messageId": message_id,
           "context": {"channel": "store"},
           "properties": {"order_id": order_id, "total": total, "currency": "EUR", "store": store, "products": products}})
}

/// The ledger check compares each member's balance with its own entries and
/// lots, and names the member whose balance was changed behind the ledger.
#[tokio::test(flavor = "multi_thread")]
async fn the_ledger_check_names_a_balance_changed_behind_the_ledger() {
    let app = TestApp::spawn().await;
    let (status, applied) = apply(&app, PROGRAMME).await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    app.batch(json!([
        {"type": "identify", "userId": "noe", "traits": {"email": "noe@exemple.fr"}},
        {"type": "identify", "userId": "ines", "traits": {"email": "ines@exemple.fr"}},
        {"type": "identify", "userId": "remi", "traits": {"email": "remi@exemple.fr"}},
    ]))
    .await;
    let noe = enrol(&app, "user_id:noe").await["id"].as_str().unwrap().to_string();
    enrol(&app, "user_id:ines").await;
    // Rémi never earns: no entry and no lot, a balance of 0 that holds.
    enrol(&app, "user_id:remi").await;
    app.batch(json!([
        order("noe", "noe-1", "N1", 120.0, "lyon-part-dieu", json!([])),
        order("noe", "noe-2", "N2", 30.0, "nantes-centre", json!([])),
        order("ines", "ines-1", "I1", 80.0, "paris-opera", json!([])),
    ]))
    .await;
    let (status, _) = redeem(&app, &noe, 20, "noe-debit").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ledger_holds(&app).await;
    let (_, member) = call(&app, "GET", &format!("/api/v1/loyalty/members/{noe}"), None, &[]).await;
    let balance = member["balance"].as_i64().unwrap();
    assert!(balance > 0, "{member}");

    let (location, tamper) = (
        app.scratch.location.clone(),
        format!("UPDATE loyalty_members SET balance = balance + 500 WHERE member_id = '{noe}'"),
    );
    tokio::task::spawn_blocking(move || raw_execute(&location, &tamper)).await.unwrap();
    let (status, check) = call(&app, "GET", "/api/v1/loyalty/check", None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(check["holds"], false, "{check}");
    assert_eq!(check["total"], 0, "the entries themselves still sum to zero: {check}");
    assert_eq!(check["members"], 3, "{check}");
    assert_eq!(check["mismatched_members"], json!([[noe, balance + 500, balance, balance]]), "{check}");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_earn_once_by_the_rules_and_the_statement_explains_every_point() {
    let app = TestApp::spawn().await;
    let (status, applied) = apply(&app, PROGRAMME).await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    app.batch(json!([{"type": "identify", "userId": "lea", "traits": {"email": "lea@exemple.fr"}}])).await;

    let member = enrol(&app, "email:lea@exemple.fr").await;
    let id = member["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("mem_"));
    let card = member["card_number"].as_str().unwrap().to_string();
    assert!(card.starts_with("9251") && card.len() == 16, "{card}");
    assert!(relais_domain::loyalty::CardNumber::parse(&card).is_ok());
    // Enrolling again finds the same membership; the card finds the person.
    let (status, again) = post_json(&app, "/api/v1/loyalty/members", json!({"identifier": "user_id:lea"}), &[]).await;
    assert_eq!((status, again["id"].as_str()), (StatusCode::OK, Some(id.as_str())));
    let (status, found) =
        call(&app, "GET", &format!("/api/v1/loyalty/members?identifier=card:{card}"), None, &[]).await;
    assert_eq!((status, found["id"].as_str()), (StatusCode::OK, Some(id.as_str())), "{found}");

    // 42.50 € at Lyon Part-Dieu, 10 € of it beauty: (42.50 + 10) × 1.5 = 78.75 → 78, plus the welcome bonus.
    let products = json!([{"category": "Beauté", "price": 5.0, "quantity": 2}, {"category": "Maison", "price": 32.5}]);
    let first = order("lea", "order-1", "1234", 42.5, "lyon-part-dieu", products);
    let (_, answer) = app.batch(json!([first.clone(), first])).await;
    assert_eq!(answer["results"][1]["status"], "duplicate", "{answer}");
    // Three reviews in one month: the cap of 40 points pays two.
    let reviews: Vec<Value> = (0..3)
        .map(|n| json!({"type": "track", "userId": "lea", "event": "Review Submitted", "messageId": format!("review-{n}")}))
        .collect();
    app.batch(Value::Array(reviews)).await;
    // A retried message earns nothing more.
    app.batch(json!([{"type": "track", "userId": "lea", "event": "Review Submitted", "messageId": "review-0"}])).await;

    let statement = statement(&app, &id).await;
    assert_eq!(statement["balance"], 78 + 50 + 40, "{statement}");
    let entries = statement["entries"].as_array().unwrap();
    let sum: i64 = entries.iter().map(|e| e["points"].as_i64().unwrap()).sum();
    assert_eq!(sum, 168);
    let spend = entries.iter().find(|e| e["rule"] == "spend").unwrap();
    assert_eq!(spend["points"], 78);
    assert_eq!(spend["event"], "order-1");
    assert!(spend["expires_at"].as_str().is_some(), "{spend}");
    let fr = spend["reasons"]["fr"].as_str().unwrap();
    assert!(fr.contains("+78 points") && fr.contains("commande 1234") && fr.contains("lyon-part-dieu"), "{fr}");
    assert!(spend["reasons"]["en"].as_str().unwrap().contains("order 1234"), "{spend}");
    assert_eq!(spend["reason"], spend["reasons"]["fr"]);
    let reviews: Vec<&Value> = entries.iter().filter(|e| e["rule"] == "review").collect();
    assert_eq!(reviews.iter().map(|e| e["points"].as_i64().unwrap()).sum::<i64>(), 40, "{statement}");
    assert_eq!(entries.iter().filter(|e| e["rule"] == "welcome").count(), 1);
    assert_eq!(statement["expiring"][0]["points"], 168);
    assert_ledger_holds(&app).await;

    // The digital card and the public rules page.
    let response = app
        .client
        .get(format!("{}/api/v1/loyalty/members/{id}/card.svg", app.address))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "image/svg+xml");
    let svg = response.text().await.unwrap();
    assert!(svg.starts_with("<svg") && svg.contains(&card[..4]) && svg.matches("<svg").count() == 2, "{svg}");
    let page = reqwest::get(format!("{}/loyalty/club/rules", app.address)).await.unwrap().text().await.unwrap();
    assert!(page.contains("1 points par euro dépensé") && page.contains("au plus 40 points par mois"), "{page}");
    let page = reqwest::get(format!("{}/loyalty/club/rules?lang=en", app.address)).await.unwrap().text().await.unwrap();
    assert!(page.contains("per euro spent") && page.contains("expire 12 months after"), "{page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refunds_take_back_their_share_and_a_debit_happens_once_per_key() {
    let app = TestApp::spawn().await;
    apply(&app, PROGRAMME).await;
    app.batch(json!([order("hugo", "o-100", "100", 100.0, "nantes", json!([]))])).await;
    let member = enrol(&app, "user_id:hugo").await;
    let id = member["id"].as_str().unwrap().to_string();
    // The order came before enrolment: it earns nothing.
    assert_eq!(statement(&app, &id).await["balance"], 0);
    app.batch(json!([order("hugo", "o-200", "200", 100.0, "nantes", json!([]))])).await;
    assert_eq!(statement(&app, &id).await["balance"], 150);
    // Refunds of 30 € then 70 € take back 30 and 70 of the order's 100 points.
    let refund = |message: &str, amount: f64| {
        json!({"type": "track", "userId": "hugo", "event": "Order Refunded", "messageId": message,
               "properties": {"order_id": "200", "total": amount, "currency": "EUR"}})
    };
    app.batch(json!([refund("r-1", 30.0)])).await;
    assert_eq!(statement(&app, &id).await["balance"], 120);

    let (status, first) = redeem(&app, &id, 50, "till-7-0001").await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["balance"], 70);
    // The till retries: same answer, nothing more debited.
    let (status, retry) = redeem(&app, &id, 50, "till-7-0001").await;
    assert_eq!((status, &retry), (StatusCode::CREATED, &first));
    // The same key for another debit is refused.
    let (status, reused) = redeem(&app, &id, 10, "till-7-0001").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reused}");
    // More than the balance: 409 with the balance, nothing debited.
    let (status, refused) = redeem(&app, &id, 71, "till-7-0002").await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!((refused["balance"].as_i64(), refused["code"].as_str()), (Some(70), Some("insufficient_balance")));
    // Bad input: no key, a negative amount.
    let (status, problem) =
        post_json(&app, &format!("/api/v1/loyalty/members/{id}/redemptions"), json!({"points": 5, "reason": "x"}), &[])
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key", "{problem}");
    let (status, problem) = redeem(&app, &id, -5, "till-7-0003").await;
    assert_eq!((status, problem["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("points")));

    let (status, _) = redeem(&app, &id, 20, "till-7-0004").await;
    assert_eq!(status, StatusCode::CREATED);
    // A manual credit and its reverse, with their mandatory reason and author.
    let adjust = |points: i64, reason: &str, key: &str| {
        let body = json!({ "points": points, "reason": reason });
        let (path, key) = (format!("/api/v1/loyalty/members/{id}/adjustments"), key.to_string());
        let app = &app;
        async move { post_json(app, &path, body, &[("Idempotency-Key", key.as_str())]).await }
    };
    let (status, credited) = adjust(15, "geste commercial après réclamation", "adj-1").await;
    assert_eq!((status, credited["balance"].as_i64()), (StatusCode::CREATED, Some(65)), "{credited}");
    let (status, debited) = adjust(-15, "erreur de saisie", "adj-2").await;
    assert_eq!(
        (status, debited["points"].as_i64(), debited["balance"].as_i64()),
        (StatusCode::CREATED, Some(-15), Some(50))
    );
    assert_eq!(adjust(-500, "trop", "adj-3").await.0, StatusCode::CONFLICT);
    let (status, problem) = adjust(0, "rien", "adj-4").await;
    assert_eq!((status, problem["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("points")));
    let (status, problem) = adjust(5, "  ", "adj-5").await;
    assert_eq!((status, problem["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("reason")));

    // The rest of the order is refunded: 70 points should go back, the
    // balance holds 50, and the 20 already spent are recorded as not recovered.
    app.batch(json!([refund("r-2", 70.0)])).await;
    let statement = statement(&app, &id).await;
    assert_eq!(statement["balance"], 0, "{statement}");
    let last = statement["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "refund");
    assert_eq!(last["points"], -50);
    assert!(last["reasons"]["en"].as_str().unwrap().contains("20 points already spent were not taken back"), "{last}");
    let manual = statement["entries"].as_array().unwrap().iter().find(|e| e["kind"] == "adjustment").unwrap().clone();
    // The team's view: nothing outstanding, what was issued, spent and taken back.
    let (status, report) = call(&app, "GET", "/api/v1/loyalty/programmes/club/report", None, &[]).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!((report["members"].as_u64(), report["outstanding_points"].as_i64()), (Some(1), Some(0)), "{report}");
    assert_eq!(report["issued"], 150 + 15, "{report}");
    assert_eq!(report["redeemed"], 70, "{report}");
    let nantes = report["by_store"].as_array().unwrap().iter().find(|s| s["store"] == "nantes").unwrap().clone();
    assert_eq!((nantes["earned"].as_i64(), nantes["burned"].as_i64()), (Some(150), Some(0)), "{report}");
    let elsewhere = report["by_store"].as_array().unwrap().iter().find(|s| s["store"].is_null()).unwrap().clone();
    assert_eq!(elsewhere["burned"], 70 + 80, "redemptions and refunds without a store: {report}");
    assert!(manual["actor"].as_str().unwrap().starts_with("key:"), "{manual}");
    assert!(manual["reasons"]["fr"].as_str().unwrap().contains("geste commercial après réclamation"), "{manual}");
    assert_ledger_holds(&app).await;
    let (status, _) = call(&app, "GET", "/api/v1/loyalty/members/mem_01ARZ3NDEKTSV4RRFFQ69G5FAV", None, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_sent_with_its_order_takes_back_what_it_would_take_later() {
    let app = TestApp::spawn().await;
    apply(&app, PROGRAMME).await;
    app.batch(json!([{"type": "identify", "userId": "iris"}, {"type": "identify", "userId": "jules"}])).await;
    let iris = enrol(&app, "user_id:iris").await["id"].as_str().unwrap().to_string();
    let jules = enrol(&app, "user_id:jules").await["id"].as_str().unwrap().to_string();
    let refund = |user: &str, message: &str, order: &str| {
        json!({"type": "track", "userId": user, "event": "Order Refunded", "messageId": message,
               "properties": {"order_id": order, "total": 40.0, "currency": "EUR"}})
    };
    // Jules's order and its partial refund arrive one after the other…
    app.batch(json!([order("jules", "j-1", "jules-1", 100.0, "lyon", json!([]))])).await;
    app.batch(json!([refund("jules", "j-2", "jules-1")])).await;
    // …Iris's together, as an import or a till's catch-up sends them.
    app.batch(json!([order("iris", "i-1", "iris-1", 100.0, "lyon", json!([])), refund("iris", "i-2", "iris-1")])).await;
    let (jules, iris) = (statement(&app, &jules).await, statement(&app, &iris).await);
    assert!(jules["balance"].as_i64().unwrap() > 0, "{jules}");
    assert_eq!(iris["balance"], jules["balance"], "iris: {iris}\njules: {jules}");
    let taken_back = |s: &Value| s["entries"].as_array().unwrap().iter().find(|e| e["kind"] == "refund").cloned();
    assert_eq!(taken_back(&iris).map(|e| e["points"].clone()), taken_back(&jules).map(|e| e["points"].clone()));
    assert_ledger_holds(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_debits_never_overdraw_even_across_server_processes() {
    let app = TestApp::spawn().await;
    apply(&app, PROGRAMME).await;
    app.batch(json!([{"type": "identify", "userId": "nina"}])).await;
    let id = enrol(&app, "user_id:nina").await["id"].as_str().unwrap().to_string();
    // 100 € → 100 points + 50 welcome.
    app.batch(json!([order("nina", "n-1", "n1", 100.0, "paris", json!([]))])).await;
    assert_eq!(statement(&app, &id).await["balance"], 150);

    // A second server process on the same database (the real race on PostgreSQL).
    let location = place(&app.scratch);
    let (mut other, other_address) = tokio::task::spawn_blocking(move || start_binary(&location)).await.unwrap();
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for n in 0..24 {
        let server = if n % 2 == 0 { app.address.clone() } else { other_address.clone() };
        // Keys 0..19 are distinct; 20..23 repeat key 0, as a till retrying.
        let idem = format!("k-{}", if n < 20 { n } else { 0 });
        tasks.push(spawn_debit(&client, &server, &app.admin, &id, idem, 10));
    }
    let mut created = std::collections::BTreeMap::new();
    let mut refused = 0;
    for task in tasks {
        let (idem, status, body) = task.await.unwrap();
        match status {
            StatusCode::CREATED => {
                let previous = created.insert(idem, body.clone());
                assert!(previous.is_none_or(|p| p == body), "a retried key gets the first answer");
            }
            StatusCode::CONFLICT => refused += 1,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    other.kill().unwrap();
    // 150 points cover 15 debits of 10: exactly 15 keys debited, 5 refused.
    assert_eq!(created.len(), 15, "{created:?}");
    assert_eq!(refused, 5 + if created.contains_key("k-0") { 0 } else { 4 });
    assert_eq!(statement(&app, &id).await["balance"], 0);
    assert_ledger_holds(&app).await;
}

/// The same orders sent to two server processes at once are each stored and
/// earned once: for a member, whose events go in the ledger's statement on
/// PostgreSQL, as for a customer with no membership, whose events go alone.
#[tokio::test(flavor = "multi_thread")]
async fn orders_sent_to_two_servers_at_once_are_stored_and_earn_once() {
    let app = TestApp::spawn().await;
    apply(&app, PROGRAMME).await;
    app.batch(json!([{"type": "identify", "userId": "yann"}, {"type": "identify", "userId": "zoe"}])).await;
    let id = enrol(&app, "user_id:yann").await["id"].as_str().unwrap().to_string();
    let location = place(&app.scratch);
    let (mut other, other_address) = tokio::task::spawn_blocking(move || start_binary(&location)).await.unwrap();
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for n in 0..20 {
        for user in ["yann", "zoe"] {
            let message = order(user, &format!("{user}-{n}"), &format!("{user}{n}"), 10.0, "paris", json!([]));
            for server in [&app.address, &other_address] {
                let request = client
                    .post(format!("{server}/v1/batch"))
                    .basic_auth(&app.ingest, Some(""))
                    .json(&json!({ "batch": [message] }));
                tasks.push(tokio::spawn(async move {
                    let response = request.send().await.unwrap();
                    (response.status(), response.json::<Value>().await.unwrap())
                }));
            }
        }
    }
    let mut statuses = std::collections::BTreeMap::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        *statuses.entry(body["results"][0]["status"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    other.kill().unwrap();
    assert_eq!(statuses, [("duplicate".to_string(), 40), ("stored".to_string(), 40)].into());
    for user in ["yann", "zoe"] {
        let customer = app.customer_by(&format!("user_id:{user}")).await;
        let orders = app.all_events(customer["id"].as_str().unwrap()).await;
        let orders: Vec<&Value> = orders.iter().filter(|e| e["name"] == "Order Completed").collect();
        assert_eq!(orders.len(), 20, "{user}: {orders:?}");
    }
    // Twenty orders of 10 € earn 10 points each, once, and the first one the welcome bonus.
    let statement = statement(&app, &id).await;
    assert_eq!(statement["balance"], 250, "{statement}");
    assert_eq!(statement["entries"].as_array().unwrap().len(), 21, "{statement}");
    assert_ledger_holds(&app).await;
}

/// Debits on many members at once each get their own answer: the balance
/// each member's own debits leave, a retried key's first answer, and a debit
/// on an unknown member fails alone.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_debits_on_many_members_each_get_their_own_answer() {
    let app = TestApp::spawn().await;
    apply(&app, PROGRAMME).await;
    let mut members = Vec::new();
    for n in 0..8 {
        let user = format!("membre-{n}");
        app.batch(json!([{"type": "identify", "userId": user}])).await;
        let id = enrol(&app, &format!("user_id:{user}")).await["id"].as_str().unwrap().to_string();
        // 100 € → 100 points + 50 welcome.
        app.batch(json!([order(&user, &format!("m-{n}"), &format!("o{n}"), 100.0, "paris", json!([]))])).await;
        members.push(id);
    }
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    let unknown = relais_domain::MemberId::new().to_string();
    for round in 0..5 {
        for (n, id) in members.iter().chain(std::iter::once(&unknown)).enumerate() {
            // Keys 0..3 are distinct per member; round 4 retries key 0.
            let idem = format!("m{n}-k{}", if round < 4 { round } else { 0 });
            tasks.push((id.clone(), spawn_debit(&client, &app.address, &app.admin, id, idem, 40)));
        }
    }
    let mut answers: std::collections::BTreeMap<(String, String), Vec<(StatusCode, Value)>> = Default::default();
    for (id, task) in tasks {
        let (idem, status, body) = task.await.unwrap();
        answers.entry((id, idem)).or_default().push((status, body));
    }
    for ((id, idem), got) in &answers {
        if *id == unknown {
            assert!(got.iter().all(|(status, _)| *status == StatusCode::NOT_FOUND), "{idem}: {got:?}");
            continue;
        }
        assert!(got.windows(2).all(|w| w[0] == w[1]), "a retried key gets the first answer: {got:?}");
    }
    for id in &members {
        let mine: Vec<&(StatusCode, Value)> =
            answers.iter().filter(|((member, _), _)| member == id).map(|(_, got)| &got[0]).collect();
        assert_eq!(mine.len(), 4, "{mine:?}");
        // 150 points cover three debits of 40; the fourth is refused with the balance.
        let created = mine.iter().filter(|(status, _)| *status == StatusCode::CREATED).count();
        assert_eq!(created, 3, "{mine:?}");
        let refused = mine.iter().find(|(status, _)| *status == StatusCode::CONFLICT).expect("one refusal");
        assert_eq!(refused.1["balance"], 30, "{refused:?}");
        assert_eq!(statement(&app, id).await["balance"], 30);
    }
    assert_ledger_holds(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn merged_people_keep_one_account_with_both_balances_and_erasure_closes_it() {
    let app = TestApp::spawn().await;
    apply(&app, PROGRAMME).await;
    app.batch(json!([
        {"type": "identify", "userId": "ines", "traits": {"email": "ines@exemple.fr"}},
        {"type": "identify", "anonymousId": "tablette-ines", "traits": {"phone": "06 12 34 56 78"}},
    ]))
    .await;
    let first = enrol(&app, "user_id:ines").await["id"].as_str().unwrap().to_string();
    let second = enrol(&app, "anonymous_id:tablette-ines").await["id"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    app.batch(json!([order("ines", "i-1", "i1", 20.0, "paris", json!([]))])).await;
    app.batch(
        json!([{"type": "track", "anonymousId": "tablette-ines", "event": "Review Submitted", "messageId": "i-r"}]),
    )
    .await;
    // One message ties both profiles together: the two accounts become one.
    app.batch(json!([{"type": "identify", "userId": "ines", "anonymousId": "tablette-ines", "messageId": "i-link"}]))
        .await;
    let (status, moved) = call(&app, "GET", &format!("/api/v1/loyalty/members/{second}"), None, &[]).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT, "{moved}");
    assert_eq!(moved["merged_into"], first);
    let joined = statement(&app, &first).await;
    assert_eq!(joined["balance"], 20 + 50 + 20, "{joined}");
    let merged_in = joined["entries"].as_array().unwrap().iter().find(|e| e["kind"] == "merge").unwrap();
    assert_eq!(merged_in["points"], 20);
    assert!(merged_in["reasons"]["en"].as_str().unwrap().contains(&second), "{merged_in}");
    assert_ledger_holds(&app).await;

    // Erasure closes the account with a final entry; the ledger still sums to zero.
    let (status, erased) =
        post_json(&app, "/api/v1/privacy/erasures", json!({"identifier": "user_id:ines"}), &[]).await;
    assert_eq!(status, StatusCode::OK, "{erased}");
    let (status, _) = call(&app, "GET", &format!("/api/v1/loyalty/members/{first}"), None, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_ledger_holds(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_that_ties_two_members_together_earns_once_on_the_joined_account() {
    let app = TestApp::spawn().await;
    apply(&app, PROGRAMME).await;
    app.batch(json!([
        {"type": "identify", "userId": "jade"},
        {"type": "identify", "anonymousId": "borne-jade"},
    ]))
    .await;
    let first = enrol(&app, "user_id:jade").await["id"].as_str().unwrap().to_string();
    let second = enrol(&app, "anonymous_id:borne-jade").await["id"].as_str().unwrap().to_string();
    app.batch(json!([order("jade", "j-1", "j1", 20.0, "paris", json!([]))])).await;
    app.batch(json!([{"type": "track", "anonymousId": "borne-jade", "event": "Review Submitted", "messageId": "j-r"}]))
        .await;
    // The order links both profiles and earns, in one message: its points go
    // to the account both memberships become.
    let mut linking = order("jade", "j-2", "j2", 10.0, "paris", json!([]));
    linking["anonymousId"] = json!("borne-jade");
    app.batch(json!([linking])).await;
    let mut redirected = Vec::new();
    for (id, other) in [(&first, &second), (&second, &first)] {
        let (status, member) = call(&app, "GET", &format!("/api/v1/loyalty/members/{id}"), None, &[]).await;
        if status == StatusCode::PERMANENT_REDIRECT {
            assert_eq!(&member["merged_into"], other, "{member}");
            redirected.push(other.clone());
        }
    }
    assert_eq!(redirected.len(), 1, "exactly one membership was merged into the other: {redirected:?}");
    let joined = statement(&app, &redirected[0]).await;
    assert_eq!(joined["balance"], 20 + 50 + 20 + 10, "{joined}");
    assert_ledger_holds(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rule_changes_never_rewrite_the_past_and_old_points_expire() {
    let app = TestApp::spawn().await;
    let (status, _) = apply(&app, PROGRAMME).await;
    assert_eq!(status, StatusCode::OK);
    // The same file again changes nothing.
    assert_eq!(apply(&app, PROGRAMME).await.0, StatusCode::OK);
    // Editing the version in force is refused, with the line.
    let edited = PROGRAMME.replace("points_per_euro = \"1\"", "points_per_euro = \"2\"");
    let (status, problem) = apply(&app, &edited).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("line 8"), "{problem}");
    // A new version from tomorrow is accepted.
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(2)).format("%Y-%m-%d");
    let next = format!(
        "{PROGRAMME}\n[[version]]\neffective_from = \"{tomorrow}\"\nexpiry = {{ months = 12 }}\n\n[[version.rule]]\nid = \"spend\"\nkind = \"spend\"\npoints_per_euro = \"2\"\n"
    );
    let (status, applied) = apply(&app, &next).await;
    assert_eq!((status, applied["versions"].as_u64()), (StatusCode::OK, Some(2)), "{applied}");
    // A file that does not parse changes nothing and names the line.
    let (status, problem) = apply(&app, "[programme]\nkey = \"club\"\nname = 3\n").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["field"], "line 3", "{problem}");
    let (_, programmes) = call(&app, "GET", "/api/v1/loyalty/programmes", None, &[]).await;
    assert_eq!(programmes["programmes"][0]["definition"]["versions"].as_array().unwrap().len(), 2);

    // Points earned 13 months ago expired a month ago: the expiry run takes them.
    app.batch(json!([{"type": "identify", "userId": "paul"}])).await;
    let id = enrol(&app, "user_id:paul").await["id"].as_str().unwrap().to_string();
    let old = (chrono::Utc::now() - chrono::Duration::days(400)).to_rfc3339();
    let mut late = order("paul", "p-1", "p1", 30.0, "paris", json!([]));
    late["timestamp"] = json!(old);
    app.batch(json!([late, order("paul", "p-2", "p2", 10.0, "paris", json!([]))])).await;
    assert_eq!(statement(&app, &id).await["balance"], 30 + 50 + 10);
    let (status, run) = call(&app, "POST", "/api/v1/loyalty/expiry", None, &[]).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    let after = statement(&app, &id).await;
    assert_eq!(after["balance"], 10, "{after}");
    let expiry = after["entries"].as_array().unwrap().iter().find(|e| e["kind"] == "expiry").unwrap().clone();
    assert_eq!(expiry["points"], -80);
    // Running it again expires nothing more.
    let (_, again) = call(&app, "POST", "/api/v1/loyalty/expiry", None, &[]).await;
    assert_eq!(again["points"], 0);
    // The customer's timeline shows it, marked as computed (decision 13).
    let customer = app.customer_by("user_id:paul").await["id"].as_str().unwrap().to_string();
    let timeline = app.all_events(&customer).await;
    let expired: Vec<&Value> = timeline.iter().filter(|e| e["name"] == "Points Expired").collect();
    assert_eq!(expired.len(), 1, "{timeline:?}");
    assert_eq!(expired[0]["computed"], true, "{:?}", expired[0]);
    assert_eq!(expired[0]["properties"]["points"], 80, "{:?}", expired[0]);
    assert_ledger_holds(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_line_applies_checks_and_refuses_bad_files_with_their_line() {
    let app = TestApp::spawn().await;
    let location = place(&app.scratch);
    let folder = tempfile::tempdir().unwrap();
    let good = folder.path().join("club.toml");
    std::fs::write(&good, PROGRAMME).unwrap();
    let bad = folder.path().join("bad.toml");
    std::fs::write(&bad, PROGRAMME.replace("points = 50", "points = 0")).unwrap();
    let reward = folder.path().join("reward.toml");
    std::fs::write(&reward, "id = \"bon-5\"\nname = \"Bon de 5 €\"\ncost = 500\nstock = 10\n").unwrap();
    let campaign = folder.path().join("campaign.toml");
    std::fs::write(
        &campaign,
        "id = \"ete\"\nbenefit = \"-5 €\"\nvalid_from = \"2026-06-01\"\nvalid_until = \"2026-08-31\"\n",
    )
    .unwrap();
    let codes = folder.path().join("codes.csv");
    let paths: Vec<String> =
        [&good, &bad, &reward, &campaign, &codes].iter().map(|p| p.to_str().unwrap().to_string()).collect();
    let outputs = tokio::task::spawn_blocking(move || {
        let refused = crate::helpers::run_binary(&location, &["loyalty", "apply", &paths[1]]);
        let applied = crate::helpers::run_binary(&location, &["loyalty", "apply", &paths[0]]);
        let rewarded = crate::helpers::run_binary(&location, &["loyalty", "reward", &paths[2]]);
        let issued = crate::helpers::run_binary(
            &location,
            &["loyalty", "coupons", &paths[3], "--count", "5", "--output", &paths[4]],
        );
        let checked = crate::helpers::run_binary(&location, &["loyalty", "check"]);
        assert!(rewarded.0 && rewarded.1.contains("10 left in stock"), "{rewarded:?}");
        assert!(issued.0, "{issued:?}");
        (refused, applied, checked)
    })
    .await
    .unwrap();
    let (refused, applied, checked) = outputs;
    let written = std::fs::read_to_string(&codes).unwrap();
    assert_eq!(written.lines().count(), 6, "a header and five codes: {written}");
    for line in written.lines().skip(1) {
        let code = line.split(',').nth(1).unwrap();
        assert!(relais_domain::loyalty::coupons::CouponCode::parse(code).is_ok(), "{code}");
    }
    assert!(!refused.0, "a bad file is refused");
    assert!(refused.2.contains("line 25") && refused.2.contains("nothing was changed"), "{}", refused.2);
    assert!(applied.0 && applied.1.contains("programme `club` applied"), "{applied:?}");
    assert!(checked.0, "{checked:?}");
    let (_, programmes) = call(&app, "GET", "/api/v1/loyalty/programmes", None, &[]).await;
    assert_eq!(programmes["programmes"][0]["key"], "club");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_mid_request_loses_nothing_and_a_retry_applies_nothing_twice() {
    let app = TestApp::spawn().await;
    apply(&app, PROGRAMME).await;
    app.batch(json!([{"type": "identify", "userId": "zoe"}])).await;
    let id = enrol(&app, "user_id:zoe").await["id"].as_str().unwrap().to_string();
    app.batch(json!([order("zoe", "z-1", "z1", 1000.0, "paris", json!([]))])).await;
    assert_eq!(statement(&app, &id).await["balance"], 1050);

    let location = place(&app.scratch);
    let started = location.clone();
    let (mut server, address) = tokio::task::spawn_blocking(move || start_binary(&started)).await.unwrap();
    let client = reqwest::Client::new();
    let send = |address: String, n: usize| {
        let (client, key, id) = (client.clone(), app.admin.clone(), id.clone());
        async move {
            let redemption = client
                .post(format!("{address}/api/v1/loyalty/members/{id}/redemptions"))
                .bearer_auth(&key)
                .header("Idempotency-Key", format!("crash-{n}"))
                .json(&json!({"points": 10, "reason": "bon d'achat"}))
                .send()
                .await;
            let order = client
                .post(format!("{address}/v1/track"))
                .basic_auth(&key, Some(""))
                .json(&json!({"userId": "zoe", "event": "Order Completed", "messageId": format!("crash-order-{n}"),
                              "properties": {"order_id": format!("c{n}"), "total": 10.0, "currency": "EUR"}}))
                .send()
                .await;
            (redemption.ok().map(|r| r.status()), order.ok().map(|r| r.status()))
        }
    };
    // Requests in flight when the server is killed: some answered, some cut.
    let mut tasks = Vec::new();
    for n in 0..40 {
        tasks.push(tokio::spawn(send(address.clone(), n)));
        if n == 20 {
            server.kill().unwrap();
        }
    }
    for task in tasks {
        let _ = task.await.unwrap();
    }
    // The clients retry everything against a restarted server.
    let (mut restarted, address) = tokio::task::spawn_blocking(move || start_binary(&location)).await.unwrap();
    for n in 0..40 {
        let (redemption, order) = send(address.clone(), n).await;
        assert_eq!(redemption, Some(StatusCode::CREATED), "retry {n}");
        assert_eq!(order, Some(StatusCode::OK), "retry {n}");
    }
    restarted.kill().unwrap();
    // Each debit once, each order earning once: 1050 − 40 × 10 + 40 × 10.
    let statement = statement(&app, &id).await;
    assert_eq!(statement["balance"], 1050, "{statement}");
    let entries = statement["entries"].as_array().unwrap();
    assert_eq!(entries.iter().filter(|e| e["kind"] == "redemption").count(), 40);
    assert_eq!(entries.iter().filter(|e| e["kind"] == "spend").count(), 41);
    assert_ledger_holds(&app).await;
}

const TIERED: &str = r#"
[programme]
key = "club"
name = "Club Relais"
point_value_minor = 1

[[version]]
effective_from = "2020-01-01"

[[version.rule]]
id = "spend"
kind = "spend"
points_per_euro = "1"
multiplier = [ { tier = "gold", factor = "2" } ]

[version.tiers]
measure = "spend"
window_months = 12
grace_days = 30
review = "monthly"

[[version.tiers.level]]
id = "silver"
name = "Argent"
threshold = 10000

[[version.tiers.level]]
id = "gold"
name = "Or"
threshold = 30000
"#;

async fn member(app: &TestApp, id: &str) -> Value {
    call(app, "GET", &format!("/api/v1/loyalty/members/{id}"), None, &[]).await.1
}

#[tokio::test(flavor = "multi_thread")]
async fn tiers_go_up_at_once_down_after_notice_and_say_what_keeping_them_takes() {
    use chrono::{Datelike, Months, NaiveDate};
    let app = TestApp::spawn().await;
    let (status, applied) = apply(&app, TIERED).await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    app.batch(json!([{"type": "identify", "userId": "lou"}])).await;
    let id = enrol(&app, "user_id:lou").await["id"].as_str().unwrap().to_string();
    assert!(member(&app, &id).await["tier"].is_null());

    // The next review is the 1st of next month; its window starts 12 months before, plus a day.
    let today = relais::config::Settings::default().ingest.day_of(chrono::Utc::now());
    let review_on = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap() + Months::new(1);
    let window_at_review = review_on - Months::new(12) + chrono::Duration::days(1);
    let at = |day: NaiveDate| format!("{day}T12:00:00Z");
    let mut leaving = order("lou", "l-1", "l1", 200.0, "paris", json!([]));
    leaving["timestamp"] = json!(at(window_at_review - chrono::Duration::days(1)));
    let mut staying = order("lou", "l-2", "l2", 150.0, "paris", json!([]));
    staying["timestamp"] = json!(at(window_at_review));
    app.batch(json!([staying])).await;
    assert_eq!(member(&app, &id).await["tier"], "silver", "150 € in the window: silver at once");
    app.batch(json!([leaving])).await;
    assert_eq!(member(&app, &id).await["tier"], "gold", "350 € in the window: gold at once");
    let customer = app.customer_by("user_id:lou").await["id"].as_str().unwrap().to_string();
    let changes: Vec<Value> =
        app.all_events(&customer).await.into_iter().filter(|e| e["name"] == "Tier Changed").collect();
    assert_eq!(changes.len(), 2, "silver, then gold: {changes:?}");
    assert!(changes.iter().all(|e| e["computed"] == true));
    // Gold members earn double.
    app.batch(json!([order("lou", "l-3", "l3", 10.0, "paris", json!([]))])).await;
    let statement = statement(&app, &id).await;
    assert_eq!(statement["entries"].as_array().unwrap().last().unwrap()["points"], 20, "{statement}");

    // What keeping Gold takes: the 200 € order leaves the window before the review.
    let (status, tier) = call(&app, "GET", &format!("/api/v1/loyalty/members/{id}/tier"), None, &[]).await;
    assert_eq!(status, StatusCode::OK, "{tier}");
    assert_eq!(tier["value"], 36000, "{tier}");
    assert_eq!(tier["keep"]["tier"], "gold");
    assert_eq!(tier["keep"]["by"], review_on.to_string());
    assert_eq!(tier["keep"]["counted"], 16000, "{tier}");
    assert_eq!(tier["keep"]["missing"], 14000, "{tier}");
    assert!(tier["next"].is_null(), "gold is the top tier: {tier}");
    let page = reqwest::get(format!("{}/loyalty/club/rules", app.address)).await.unwrap().text().await.unwrap();
    assert!(page.contains("Or : à partir de 300 €") && page.contains("30 jours de grâce"), "{page}");

    // The scheduled review, a year later: a notice on the review date, the
    // downgrade after the grace period (nothing was bought since).
    let store = app.store.clone();
    let later = review_on + Months::new(12);
    let (notice, before, downgrade) = tokio::task::spawn_blocking(move || {
        let engine = store.blocking();
        let notice = engine.loyalty_review(later).unwrap();
        let before = engine.loyalty_review(later + chrono::Duration::days(29)).unwrap();
        let downgrade = engine.loyalty_review(later + chrono::Duration::days(30)).unwrap();
        (notice, before, downgrade)
    })
    .await
    .unwrap();
    assert_eq!((notice, before, downgrade), (1, 0, 1));
    let after = member(&app, &id).await;
    assert!(after["tier"].is_null() && after["downgrade_on"].is_null(), "{after}");
    assert_ledger_holds(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rewards_are_reserved_confirmed_or_cancelled_and_stock_never_oversells() {
    let app = TestApp::spawn().await;
    apply(&app, PROGRAMME).await;
    let put = |reward: Value| {
        let app = &app;
        async move { post_json(app, "/api/v1/loyalty/programmes/club/rewards", reward, &[]).await }
    };
    let (status, created) = put(json!({"id": "week-end", "name": "Week-end à Lyon", "cost": 100, "stock": 3})).await;
    assert_eq!((status, created["stock_left"].as_i64()), (StatusCode::OK, Some(3)), "{created}");
    let (status, _) = put(json!({"id": "salon-or", "name": "Salon Or", "cost": 10, "tiers": ["gold"]})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, problem) = put(json!({"id": "Bad Id", "name": "x", "cost": 10})).await;
    assert_eq!((status, problem["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("id")));

    // Six members with 150 points each (100 € + the welcome bonus).
    let mut members = Vec::new();
    for n in 0..6 {
        let user = format!("fan-{n}");
        app.batch(json!([{"type": "identify", "userId": user}])).await;
        members.push(enrol(&app, &format!("user_id:{user}")).await["id"].as_str().unwrap().to_string());
        app.batch(json!([order(&user, &format!("f-{n}"), &format!("f{n}"), 100.0, "lyon", json!([]))])).await;
    }
    let before = statement(&app, &members[0]).await;
    // All six race for three week-ends, through two server processes.
    let location = place(&app.scratch);
    let (mut other, other_address) = tokio::task::spawn_blocking(move || start_binary(&location)).await.unwrap();
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for (n, member) in members.iter().enumerate() {
        let server = if n % 2 == 0 { app.address.clone() } else { other_address.clone() };
        let (client, key, member) = (client.clone(), app.admin.clone(), member.clone());
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(format!("{server}/api/v1/loyalty/members/{member}/redemptions"))
                .bearer_auth(key)
                .header("Idempotency-Key", format!("we-{n}"))
                .json(&json!({"reward": "week-end"}))
                .send()
                .await
                .unwrap();
            (member, response.status(), response.json::<Value>().await.unwrap())
        }));
    }
    let mut reserved = Vec::new();
    for task in tasks {
        let (member, status, body) = task.await.unwrap();
        match status {
            StatusCode::CREATED => {
                assert_eq!((body["status"].as_str(), body["balance"].as_i64()), (Some("reserved"), Some(50)), "{body}");
                reserved.push((member, body["id"].as_str().unwrap().to_string()));
            }
            StatusCode::CONFLICT => assert_eq!(body["code"], "out_of_stock", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    other.kill().unwrap();
    assert_eq!(reserved.len(), 3, "exactly the stock");
    let (_, catalogue) = call(&app, "GET", "/api/v1/loyalty/programmes/club/rewards", None, &[]).await;
    let week_end =
        catalogue["rewards"].as_array().unwrap().iter().find(|r| r["reward"]["id"] == "week-end").unwrap().clone();
    assert_eq!(week_end["stock_left"], 0);

    // Cancel one: points back into their lots (same expiry), stock back.
    let (member, id) = reserved[0].clone();
    let (status, cancelled) = call(&app, "POST", &format!("/api/v1/loyalty/redemptions/{id}/cancel"), None, &[]).await;
    assert_eq!((status, cancelled["status"].as_str()), (StatusCode::OK, Some("cancelled")), "{cancelled}");
    let restored = statement(&app, &member).await;
    assert_eq!(restored["balance"], 150);
    assert_eq!(restored["expiring"], before["expiring"], "{restored}");
    assert!(restored["entries"].as_array().unwrap().iter().any(|e| e["kind"] == "cancellation"));
    // Confirm another; a confirmed reward cannot be cancelled.
    let (_, id) = reserved[1].clone();
    let (status, confirmed) = call(&app, "POST", &format!("/api/v1/loyalty/redemptions/{id}/confirm"), None, &[]).await;
    assert_eq!((status, confirmed["status"].as_str()), (StatusCode::OK, Some("confirmed")));
    assert_eq!(
        call(&app, "POST", &format!("/api/v1/loyalty/redemptions/{id}/confirm"), None, &[]).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, "POST", &format!("/api/v1/loyalty/redemptions/{id}/cancel"), None, &[]).await.0,
        StatusCode::CONFLICT
    );
    let (_, catalogue) = call(&app, "GET", "/api/v1/loyalty/programmes/club/rewards", None, &[]).await;
    let week_end =
        catalogue["rewards"].as_array().unwrap().iter().find(|r| r["reward"]["id"] == "week-end").unwrap().clone();
    assert_eq!(week_end["stock_left"], 1);

    // Tier-only rewards and unknown rewards say why.
    let (status, refused) = redeem_reward(&app, &members[5], "salon-or", "s-1").await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::CONFLICT, Some("reward_unavailable")), "{refused}");
    let (status, _) = redeem_reward(&app, &members[5], "yacht", "s-2").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Paying part of a 12.34 € basket with points.
    let (status, quote) =
        post_json(&app, &format!("/api/v1/loyalty/members/{}/quote", members[5]), json!({"basket_minor": 1234}), &[])
            .await;
    assert_eq!(status, StatusCode::OK, "{quote}");
    let balance = quote["balance"].as_i64().unwrap();
    assert_eq!(quote["max_points"].as_i64(), Some(balance.min(1234)), "{quote}");
    assert_ledger_holds(&app).await;
}

async fn redeem_reward(app: &TestApp, member: &str, reward: &str, key: &str) -> (StatusCode, Value) {
    post_json(
        app,
        &format!("/api/v1/loyalty/members/{member}/redemptions"),
        json!({ "reward": reward }),
        &[("Idempotency-Key", key)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn coupons_work_once_within_their_limits_and_dates() {
    let app = TestApp::spawn().await;
    apply(&app, PROGRAMME).await;
    // Campaign dates are days of the organisation's calendar (Europe/Paris),
    // which is a day ahead of UTC late in the evening.
    let today = relais::config::Settings::default().ingest.day_of(chrono::Utc::now());
    let issue = |campaign: Value, count: usize| {
        let app = &app;
        async move {
            post_json(
                app,
                "/api/v1/loyalty/programmes/club/coupons",
                json!({"campaign": campaign, "count": count}),
                &[],
            )
            .await
        }
    };
    let (status, issued) = issue(
        json!({"id": "soldes", "benefit": "-10 € dès 50 €", "bonus_points": 25, "per_member": 1, "total": 2,
               "valid_from": (today - chrono::Duration::days(1)).to_string(),
               "valid_until": (today + chrono::Duration::days(10)).to_string()}),
        3,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let codes: Vec<String> =
        issued["codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    assert_eq!(codes.len(), 3);
    let mut members = Vec::new();
    for n in 0..3 {
        app.batch(json!([{"type": "identify", "userId": format!("c-{n}")}])).await;
        members.push(enrol(&app, &format!("user_id:c-{n}")).await["id"].as_str().unwrap().to_string());
    }
    let coupon = |code: &str, member: &str, order: &str| {
        let body = json!({"code": code, "member": member, "order_id": order});
        let app = &app;
        async move { post_json(app, "/api/v1/loyalty/coupons/redeem", body, &[]).await }
    };
    let (status, used) = coupon(&codes[0].to_lowercase(), &members[0], "o-1").await;
    assert_eq!(status, StatusCode::CREATED, "{used}");
    assert_eq!((used["bonus_points"].as_i64(), used["balance"].as_i64()), (Some(25), Some(25)));
    // The till retries: same answer, nothing twice.
    let (status, again) = coupon(&codes[0], &members[0], "o-1").await;
    assert_eq!((status, again["balance"].as_i64()), (StatusCode::OK, Some(25)));
    // Each code once; one per member; two in all.
    assert_eq!(coupon(&codes[0], &members[1], "o-2").await.0, StatusCode::CONFLICT);
    let (status, limited) = coupon(&codes[1], &members[0], "o-3").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(limited["detail"].as_str().unwrap().contains("most allowed"), "{limited}");
    assert_eq!(coupon(&codes[1], &members[1], "o-4").await.0, StatusCode::CREATED);
    let (status, exhausted) = coupon(&codes[2], &members[2], "o-5").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(exhausted["detail"].as_str().unwrap().contains("reached its 2 uses"), "{exhausted}");
    // A typo is caught by the check character.
    let mut typo = codes[2].clone().into_bytes();
    typo[0] = if typo[0] == b'A' { b'B' } else { b'A' };
    let (status, problem) = coupon(&String::from_utf8(typo).unwrap(), &members[2], "o-6").await;
    assert_eq!((status, problem["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("code")), "{problem}");

    // Early access: gold members from today, the others from tomorrow.
    let (_, vip) = issue(
        json!({"id": "vip", "benefit": "avant-première", "valid_from": (today + chrono::Duration::days(1)).to_string(),
               "valid_until": (today + chrono::Duration::days(9)).to_string(),
               "early_access": {"gold": today.to_string()}}),
        1,
    )
    .await;
    let (status, early) = coupon(vip["codes"][0].as_str().unwrap(), &members[2], "o-7").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(early["detail"].as_str().unwrap().contains("starts on"), "{early}");
    let (_, campaigns) = call(&app, "GET", "/api/v1/loyalty/programmes/club/coupons", None, &[]).await;
    let soldes =
        campaigns["campaigns"].as_array().unwrap().iter().find(|c| c["campaign"]["id"] == "soldes").unwrap().clone();
    assert_eq!((soldes["issued"].as_i64(), soldes["used"].as_i64()), (Some(3), Some(2)), "{campaigns}");
    assert_ledger_holds(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_event_enrols_its_sender_who_earns_at_once() {
    let app = TestApp::spawn().await;
    let programme =
        PROGRAMME.replace("expiry = { months = 12 }", "expiry = { months = 12 }\nenrol_on = \"Order Completed\"");
    assert_eq!(apply(&app, &programme).await.0, StatusCode::OK);
    // Browsing enrols nobody; the first order does, and earns with its welcome bonus.
    app.batch(json!([{"type": "track", "userId": "eva", "event": "Product Viewed"}])).await;
    let (status, _) = call(&app, "GET", "/api/v1/loyalty/members?identifier=user_id:eva", None, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.batch(json!([
        order("eva", "e-1", "e1", 20.0, "paris", json!([])),
        order("eva", "e-2", "e2", 10.0, "paris", json!([]))
    ]))
    .await;
    let (status, member) = call(&app, "GET", "/api/v1/loyalty/members?identifier=user_id:eva", None, &[]).await;
    assert_eq!(status, StatusCode::OK, "{member}");
    assert_eq!(member["balance"], 20 + 50 + 10, "{member}");
    let card = member["card_number"].as_str().unwrap();
    assert_eq!(app.customer_by(&format!("card:{card}")).await["id"], member["customer"]);
    assert_ledger_holds(&app).await;
}

/// Random sequences of earns, refunds, debits, adjustments, reward
/// reservations and cancellations, merges and expiry runs, on one store:
/// after every step the ledger sums to zero, every transaction balances, and
/// every balance equals its entries and its lots and is never negative.
#[tokio::test(flavor = "multi_thread")]
async fn random_operation_sequences_keep_the_ledger_invariants() {
    use rand::{Rng, SeedableRng};
    let app = TestApp::spawn().await;
    apply(&app, PROGRAMME).await;
    let (status, _) = post_json(
        &app,
        "/api/v1/loyalty/programmes/club/rewards",
        json!({"id": "cadeau", "name": "Cadeau", "cost": 30, "stock": 5}),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        let engine = store.blocking();
        let settings = relais::config::Settings::default();
        let envelope = relais_domain::message::Envelope {
            received_at: chrono::Utc::now(),
            implied_type: None,
            batch_sent_at: None,
            batch_context: None,
            default_currency: "EUR",
            card_policy: relais_domain::cards::CardPolicy::Reject,
        };
        let ingest = |text: String| {
            let message = relais_domain::TrackingMessage::parse_json(&text, &envelope).unwrap();
            engine.ingest("prop", vec![message]).unwrap();
        };
        let today = settings.ingest.day_of(chrono::Utc::now());
        let mut step = 0u64;
        for seed in 0..12u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let users: Vec<String> = (0..4).map(|u| format!("p{seed}-{u}")).collect();
            let mut members = Vec::new();
            for user in &users {
                ingest(format!(r#"{{"type": "identify", "userId": "{user}"}}"#));
                let customer = engine.customer_id_by_identifier(&format!("user_id:{user}").parse().unwrap()).unwrap().unwrap();
                members.push(engine.loyalty_enrol(customer, "club").unwrap().0.row.member);
            }
            let mut reservations: Vec<String> = Vec::new();
            for _ in 0..40 {
                step += 1;
                let who = rng.gen_range(0..users.len());
                let user = &users[who];
                let operation = |kind, points: i64, reward: Option<&str>| relais::store::loyalty::ManualOperation {
                    kind,
                    member: members[who],
                    points,
                    reward: reward.map(str::to_string),
                    reason: "prop".into(),
                    actor: "test".into(),
                    scope: "prop".into(),
                    key: format!("k{step}"),
                    request_hash: String::new(),
                    day: today,
                };
                match rng.gen_range(0..9) {
                    0 | 1 => {
                        let days = rng.gen_range(0..500);
                        let at = (chrono::Utc::now() - chrono::Duration::days(days)).to_rfc3339();
                        let total = rng.gen_range(1..300);
                        ingest(format!(
                            r#"{{"type": "track", "userId": "{user}", "event": "Order Completed", "timestamp": "{at}",
                                "properties": {{"order_id": "o{seed}-{who}-{}", "total": {total}, "currency": "EUR"}}}}"#,
                            step % 5
                        ));
                    }
                    2 => ingest(format!(
                        r#"{{"type": "track", "userId": "{user}", "event": "Order Refunded",
                            "properties": {{"order_id": "o{seed}-{who}-{}", "total": {}, "currency": "EUR"}}}}"#,
                        step % 5,
                        rng.gen_range(1..200)
                    )),
                    3 => {
                        engine.loyalty_operate(&operation(relais::store::loyalty::Manual::Redemption, -rng.gen_range(1..120), None)).unwrap();
                    }
                    4 => {
                        let points = rng.gen_range(-80..80i64);
                        if points != 0 {
                            engine.loyalty_operate(&operation(relais::store::loyalty::Manual::Adjustment, points, None)).unwrap();
                        }
                    }
                    5 => {
                        let answer = engine.loyalty_operate(&operation(relais::store::loyalty::Manual::Redemption, 0, Some("cadeau"))).unwrap();
                        if let relais::store::loyalty::OperationAnswer::Answer(a) = answer {
                            if a.status == 201 {
                                let body: Value = serde_json::from_str(&a.body).unwrap();
                                reservations.push(body["id"].as_str().unwrap().to_string());
                            }
                        }
                    }
                    6 if !reservations.is_empty() => {
                        let id = reservations.swap_remove(rng.gen_range(0..reservations.len()));
                        let confirm = rng.gen_bool(0.5);
                        engine.loyalty_settle(&id, confirm, "test", today).unwrap();
                    }
                    7 => {
                        // Two of the people turn out to be one: their profiles merge.
                        let other = &users[rng.gen_range(0..users.len())];
                        ingest(format!(r#"{{"type": "alias", "userId": "{user}", "previousId": "{other}"}}"#));
                    }
                    _ => {
                        engine.loyalty_expire(today + chrono::Duration::days(rng.gen_range(0..400))).unwrap();
                    }
                }
                let check = engine.loyalty_check().unwrap();
                assert!(check.holds(), "seed {seed}, step {step}: {check:?}");
            }
        }
    })
    .await
    .unwrap();
}

const GAMES: &str = r#"
[programme]
key = "club"
name = "Club Relais"
point_value_minor = 1

[[version]]
effective_from = "2020-01-01"

[[version.rule]]
id = "tirage"
kind = "draw"
event = "Store Visited"
odds = "1/2"
points = 10
budget = 30

[[version.rule]]
id = "explorateur"
kind = "challenge"
event = "Page Viewed Store"
distinct = "store"
count = 3
per = "month"
points = 200
badge = "explorateur"

[[version.rule]]
id = "fidele"
kind = "streak"
event = "Order Completed"
per = "week"
length = 3
points = 100
badge = "fidele"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn draws_never_exceed_their_budget_and_challenges_and_streaks_pay_once() {
    let app = TestApp::spawn().await;
    let (status, applied) = apply(&app, GAMES).await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    let mut members = Vec::new();
    for n in 0..4 {
        app.batch(json!([{"type": "identify", "userId": format!("g{n}")}])).await;
        members.push(enrol(&app, &format!("user_id:g{n}")).await["id"].as_str().unwrap().to_string());
    }
    // 60 plays at even odds, a budget of 30 points: exactly three wins of 10 are paid.
    let visits: Vec<Value> = (0..60)
        .map(|n| {
            json!({"type": "track", "userId": format!("g{}", n % 4), "event": "Store Visited",
                        "messageId": format!("v{n}"), "properties": {"store": "nantes"}})
        })
        .collect();
    app.batch(Value::Array(visits)).await;
    let mut won = 0;
    for member in &members {
        let statement = statement(&app, member).await;
        won += statement["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "draw")
            .map(|e| e["points"].as_i64().unwrap())
            .sum::<i64>();
    }
    assert_eq!(won, 30, "the budget is paid out, never more");

    // Three different stores in one month complete the challenge, once.
    let now = chrono::Utc::now();
    let month_start = now.date_naive().with_day0(0).unwrap();
    let at = |day: u32| format!("{}T10:00:00Z", month_start + chrono::Duration::days(i64::from(day)));
    let visit = |n: usize, store: &str, day: u32| {
        json!({"type": "track", "userId": "g0", "event": "Page Viewed Store", "messageId": format!("s{n}"),
               "timestamp": at(day), "properties": {"store": store}})
    };
    app.batch(json!([visit(1, "lyon", 0), visit(2, "lyon", 0), visit(3, "paris", 0)])).await;
    let before = statement(&app, &members[0]).await;
    assert!(before["entries"].as_array().unwrap().iter().all(|e| e["kind"] != "challenge"), "two stores are not three");
    app.batch(json!([visit(4, "nantes", 0), visit(5, "rennes", 0)])).await;
    let after = statement(&app, &members[0]).await;
    let challenges: Vec<&Value> =
        after["entries"].as_array().unwrap().iter().filter(|e| e["kind"] == "challenge").collect();
    assert_eq!(challenges.len(), 1, "{after}");
    assert_eq!(challenges[0]["points"], 200);
    assert_eq!(after["badges"][0]["badge"], "explorateur", "{after}");

    // Orders in three consecutive weeks make a streak.
    let weeks_ago = |w: i64| (now - chrono::Duration::weeks(w)).to_rfc3339();
    for (n, w) in [3i64, 2, 1].iter().enumerate() {
        let mut o = order("g1", &format!("st-{n}"), &format!("st{n}"), 20.0, "paris", json!([]));
        o["timestamp"] = json!(weeks_ago(*w));
        app.batch(json!([o])).await;
    }
    let streak = statement(&app, &members[1]).await;
    let streaks: Vec<&Value> = streak["entries"].as_array().unwrap().iter().filter(|e| e["kind"] == "streak").collect();
    assert_eq!(streaks.len(), 1, "{streak}");
    assert!(streaks[0]["reasons"]["fr"].as_str().unwrap().contains("3 périodes d'affilée"), "{streak}");
    let page = reqwest::get(format!("{}/loyalty/club/rules", app.address)).await.unwrap().text().await.unwrap();
    assert!(page.contains("1 chance(s) sur 2") && page.contains("3 semaines d&#39;affilée"), "{page}");
    assert_ledger_holds(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn undoing_a_merge_gives_each_membership_back_its_own_points() {
    let app = TestApp::spawn().await;
    apply(&app, PROGRAMME).await;
    app.batch(json!([
        {"type": "identify", "userId": "rose", "traits": {"email": "rose@exemple.fr"}},
        {"type": "identify", "anonymousId": "borne-rose"},
    ]))
    .await;
    let first = enrol(&app, "user_id:rose").await["id"].as_str().unwrap().to_string();
    let second = enrol(&app, "anonymous_id:borne-rose").await["id"].as_str().unwrap().to_string();
    app.batch(json!([order("rose", "r-1", "r1", 20.0, "paris", json!([]))])).await;
    app.batch(
        json!([{"type": "track", "anonymousId": "borne-rose", "event": "Review Submitted", "messageId": "r-rev"}]),
    )
    .await;
    app.batch(json!([{"type": "identify", "userId": "rose", "anonymousId": "borne-rose", "messageId": "r-link"}]))
        .await;
    // After the merge, a review from the kiosk's device earns on the joined account.
    app.batch(
        json!([{"type": "track", "anonymousId": "borne-rose", "event": "Review Submitted", "messageId": "r-rev2"}]),
    )
    .await;
    assert_eq!(statement(&app, &first).await["balance"], 20 + 50 + 20 + 20);
    let customer = app.customer_by("user_id:rose").await["id"].as_str().unwrap().to_string();
    let (_, merges) = app.get(&format!("/api/v1/customers/{customer}/merges")).await;
    let merge = merges["merges"][0]["merge_id"].as_str().unwrap().to_string();

    // Spent since the merge: the undo is refused, with the reason.
    let (status, _) = redeem(&app, &first, 100, "spend-all").await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, refused) = post_json(&app, &format!("/api/v1/merges/{merge}/undo"), json!({}), &[]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("spent since the merge"), "{refused}");
    // Given back by the team, the undo goes through.
    let (status, _) = post_json(
        &app,
        &format!("/api/v1/loyalty/members/{first}/adjustments"),
        json!({"points": 100, "reason": "annulation de l'achat"}),
        &[("Idempotency-Key", "back")],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, undone) = post_json(&app, &format!("/api/v1/merges/{merge}/undo"), json!({}), &[]).await;
    assert_eq!(status, StatusCode::OK, "{undone}");
    // The kiosk's profile gets its review points back, from before and after the merge.
    let restored = statement(&app, &second).await;
    assert_eq!(restored["balance"], 40, "{restored}");
    let (_, member) = call(&app, "GET", &format!("/api/v1/loyalty/members/{second}"), None, &[]).await;
    assert_eq!(member["status"], "active", "{member}");
    assert_eq!(statement(&app, &first).await["balance"], 20 + 50 + 20 + 20 - 40);
    assert_ledger_holds(&app).await;
}

/// Two profiles merged into one, each undone: both take their points back
/// from the survivor's same large lot, and both get them.
#[tokio::test(flavor = "multi_thread")]
async fn two_merges_into_one_profile_can_both_be_undone() {
    let app = TestApp::spawn().await;
    apply(&app, PROGRAMME).await;
    app.batch(json!([
        {"type": "identify", "userId": "zoe", "traits": {"email": "zoe@exemple.fr"}},
        {"type": "identify", "anonymousId": "borne-1"},
        {"type": "identify", "anonymousId": "borne-2"},
    ]))
    .await;
    let kept = enrol(&app, "user_id:zoe").await["id"].as_str().unwrap().to_string();
    let kiosks = [
        enrol(&app, "anonymous_id:borne-1").await["id"].as_str().unwrap().to_string(),
        enrol(&app, "anonymous_id:borne-2").await["id"].as_str().unwrap().to_string(),
    ];
    app.batch(json!([order("zoe", "z-1", "z1", 100.0, "paris", json!([]))])).await;
    let before = statement(&app, &kept).await["balance"].as_i64().unwrap();
    for device in ["borne-1", "borne-2"] {
        app.batch(json!([{"type": "track", "anonymousId": device, "event": "Review Submitted",
                          "messageId": format!("{device}-rev")}]))
            .await;
        app.batch(json!([{"type": "identify", "userId": "zoe", "anonymousId": device,
                          "messageId": format!("{device}-link")}]))
            .await;
    }
    assert_eq!(statement(&app, &kept).await["balance"].as_i64(), Some(before + 40));
    let customer = app.customer_by("user_id:zoe").await["id"].as_str().unwrap().to_string();
    let (_, merges) = app.get(&format!("/api/v1/customers/{customer}/merges")).await;
    let merges: Vec<String> =
        merges["merges"].as_array().unwrap().iter().map(|m| m["merge_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(merges.len(), 2, "{merges:?}");
    for merge in &merges {
        let (status, undone) = post_json(&app, &format!("/api/v1/merges/{merge}/undo"), json!({}), &[]).await;
        assert_eq!(status, StatusCode::OK, "{undone}");
    }
    for kiosk in &kiosks {
        assert_eq!(statement(&app, kiosk).await["balance"], 20);
    }
    assert_eq!(statement(&app, &kept).await["balance"].as_i64(), Some(before));
    assert_ledger_holds(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_birthday_bonus_is_paid_once_on_the_day() {
    let app = TestApp::spawn().await;
    let programme =
        format!("{PROGRAMME}\n[[version.rule]]\nid = \"anniversaire\"\nkind = \"birthday\"\npoints = 150\n");
    let (status, applied) = apply(&app, &programme).await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    // The organisation's day (Europe/Paris) at noon UTC is the same calendar day.
    let today = chrono::Utc::now().date_naive();
    let noon = format!("{today}T12:00:00Z");
    let born = format!("1990-{:02}-{:02}", today.month(), today.day().min(28));
    let birthday_today = today.day() <= 28;
    app.batch(json!([{"type": "identify", "userId": "noe", "traits": {"birthday": born}, "timestamp": noon}])).await;
    let id = enrol(&app, "user_id:noe").await["id"].as_str().unwrap().to_string();
    let visit = |n: usize| {
        json!({"type": "track", "userId": "noe", "event": "Review Submitted",
                                  "messageId": format!("b-{n}"), "timestamp": noon})
    };
    app.batch(json!([visit(1)])).await;
    app.batch(json!([visit(2), visit(3)])).await;
    let statement = statement(&app, &id).await;
    let birthdays = statement["entries"].as_array().unwrap().iter().filter(|e| e["kind"] == "birthday").count();
    assert_eq!(birthdays, usize::from(birthday_today), "{statement}");
    let page = reqwest::get(format!("{}/loyalty/club/rules", app.address)).await.unwrap().text().await.unwrap();
    assert!(page.contains("150 points le jour de votre anniversaire"), "{page}");
}
