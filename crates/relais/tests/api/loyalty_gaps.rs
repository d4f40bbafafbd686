//! The loyalty gaps of issue 5: coupons targeted by saved segment, tier
//! notices and upgrades told by e-mail through the outbox, and reward
//! reservations released once their hold is over — on SQLite and PostgreSQL.

use chrono::{Datelike, Months, NaiveDate};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::TestApp;
use crate::loyalty::PROGRAMME;

/// A POST with the admin key (JSON, or TOML for a programme) and extra headers.
async fn admin_post(app: &TestApp, path: &str, body: Value, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut request = app.client.post(format!("{}{path}", app.address)).bearer_auth(&app.admin);
    request = match body {
        Value::String(toml) => request.header("content-type", "application/toml").body(toml),
        other => request.json(&other),
    };
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn enrol(app: &TestApp, identifier: &str) -> String {
    let (status, body) = admin_post(app, "/api/v1/loyalty/members", json!({ "identifier": identifier }), &[]).await;
    assert!(status == StatusCode::CREATED || status == StatusCode::OK, "{status}: {body}");
    body["id"].as_str().unwrap().to_string()
}

async fn assert_ledger_holds(app: &TestApp) {
    let (status, check) = app.get("/api/v1/loyalty/check").await;
    assert_eq!((status, &check["holds"], &check["total"]), (StatusCode::OK, &json!(true), &json!(0)), "{check}");
}

fn order(user: &str, message_id: &str, total: f64) -> Value {
    json!({"type": "track", "userId": user, "event": "Order Completed", "messageId": message_id,
           "properties": {"order_id": message_id, "total": total, "currency": "EUR", "store": "lyon"}})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_segment_targeted_coupon_works_only_for_customers_in_the_segment() {
    let app = TestApp::spawn().await;
    let (status, applied) = admin_post(&app, "/api/v1/loyalty/programmes", json!(PROGRAMME), &[]).await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    app.batch(json!([
        {"type": "identify", "userId": "lyonnaise", "traits": {"city": "Lyon"}},
        {"type": "identify", "userId": "parisien", "traits": {"city": "Paris"}},
    ]))
    .await;
    let (status, saved) = admin_post(
        &app,
        "/api/v1/segments",
        json!({"name": "lyonnais", "source": r#"city = "Lyon""#, "description": "Clients de Lyon"}),
        &[],
    )
    .await;
    assert_eq!((status, saved["segment"]["size"].as_i64()), (StatusCode::OK, Some(1)), "{saved}");
    let inside = enrol(&app, "user_id:lyonnaise").await;
    let outside = enrol(&app, "user_id:parisien").await;
    let today = chrono::Utc::now().date_naive();
    let campaign = |segments: Value| {
        json!({"campaign": {"id": "lyon-only", "benefit": "-5 € à Lyon", "bonus_points": 10, "per_member": 1,
                            "valid_from": (today - chrono::Duration::days(1)).to_string(),
                            "valid_until": (today + chrono::Duration::days(30)).to_string(),
                            "segments": segments}, "count": 3})
    };

    // A segment nobody saved is refused when the campaign is issued, naming the field.
    let (status, refused) =
        admin_post(&app, "/api/v1/loyalty/programmes/club/coupons", campaign(json!(["lyonais"])), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert_eq!(refused["errors"][0]["field"], "campaign.segments", "{refused}");
    assert!(
        refused["errors"][0]["reason"].as_str().unwrap().contains("no saved segment is called `lyonais`"),
        "{refused}"
    );
    let (_, campaigns) = app.get("/api/v1/loyalty/programmes/club/coupons").await;
    assert_eq!(campaigns["campaigns"].as_array().unwrap().len(), 0, "nothing issued: {campaigns}");

    let (status, issued) =
        admin_post(&app, "/api/v1/loyalty/programmes/club/coupons", campaign(json!(["lyonnais"])), &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let codes: Vec<String> = issued["codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().into()).collect();
    let (_, campaigns) = app.get("/api/v1/loyalty/programmes/club/coupons").await;
    assert_eq!(campaigns["campaigns"][0]["campaign"]["segments"], json!(["lyonnais"]), "{campaigns}");
    let use_code = |code: String, member: String, order: &'static str| {
        let app = &app;
        async move {
            admin_post(
                app,
                "/api/v1/loyalty/coupons/redeem",
                json!({"code": code, "member": member, "order_id": order}),
                &[],
            )
            .await
        }
    };

    // Not in the segment: refused with the reason, nothing credited, the code still unused.
    let (status, refused) = use_code(codes[0].clone(), outside.clone(), "p-1").await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("in the segment lyonnais"), "{refused}");
    let (_, member) = app.get(&format!("/api/v1/loyalty/members/{outside}")).await;
    assert_eq!(member["balance"], 0, "{member}");
    // In the segment: accepted with its bonus.
    let (status, used) = use_code(codes[0].clone(), inside.clone(), "l-1").await;
    assert_eq!(
        (status, used["bonus_points"].as_i64(), used["balance"].as_i64()),
        (StatusCode::CREATED, Some(10), Some(10)),
        "{used}"
    );
    // Membership is read when the code is used: moving to Lyon lets the other one in.
    app.batch(json!([{"type": "identify", "userId": "parisien", "traits": {"city": "Lyon"}}])).await;
    let (status, used) = use_code(codes[1].clone(), outside.clone(), "p-2").await;
    assert_eq!(status, StatusCode::CREATED, "a customer who entered the segment may use it now: {used}");
    let (_, campaigns) = app.get("/api/v1/loyalty/programmes/club/coupons").await;
    assert_eq!(campaigns["campaigns"][0]["used"], 2, "{campaigns}");
    // The back office's loyalty page says whom the campaign is for.
    let mut browser = crate::helpers::Browser::new(&app, "en");
    browser.sign_in(&app, relais_domain::Role::Admin).await;
    let page = browser.get("/app/loyalty").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("For whom") && page.body.contains("segment lyonnais"), "{}", page.body);
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

/// The e-mails queued for a customer, oldest first: (to, subject, text).
async fn mails_of(app: &TestApp, customer: &str) -> Vec<(String, String, String)> {
    let store = app.store.clone();
    let mut items = tokio::task::spawn_blocking(move || store.blocking().outbox(None, 1000).unwrap()).await.unwrap();
    items.sort_by_key(|i| i.outbox_id);
    items
        .into_iter()
        .filter(|i| i.kind == "email" && i.customer_id.map(|c| c.to_string()).as_deref() == Some(customer))
        .map(|i| {
            let text = |k: &str| i.payload[k].as_str().unwrap_or_default().to_string();
            (text("to"), text("subject"), text("text"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn members_are_told_of_an_upgrade_a_downgrade_notice_and_the_downgrade_by_e_mail_in_their_language() {
    let app = TestApp::spawn().await;
    let (status, applied) = admin_post(&app, "/api/v1/loyalty/programmes", json!(TIERED), &[]).await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    app.batch(json!([
        {"type": "identify", "userId": "lou", "traits": {"email": "Lou@Example.fr", "language": "en-GB"}},
        {"type": "identify", "userId": "zoe", "traits": {"email": "zoe@example.fr"}},
        {"type": "identify", "userId": "sam", "traits": {"city": "Lyon"}},
    ]))
    .await;
    let lou_member = enrol(&app, "user_id:lou").await;
    enrol(&app, "user_id:zoe").await;
    enrol(&app, "user_id:sam").await;
    let id = |user: &'static str| {
        let app = &app;
        async move { app.customer_by(&format!("user_id:{user}")).await["id"].as_str().unwrap().to_string() }
    };
    let (lou, zoe, sam) = (id("lou").await, id("zoe").await, id("sam").await);

    // Upgrades at once, each told in the customer's language (declared, else the organisation's French).
    app.batch(json!([order("lou", "lou-1", 350.0), order("zoe", "zoe-1", 150.0), order("sam", "sam-1", 150.0)])).await;
    let (_, member) = app.get(&format!("/api/v1/loyalty/members/{lou_member}")).await;
    assert_eq!(member["tier"], "gold", "{member}");
    let lou_mails = mails_of(&app, &lou).await;
    assert_eq!(lou_mails.len(), 1, "{lou_mails:?}");
    assert_eq!(lou_mails[0].0, "lou@example.fr");
    assert_eq!(lou_mails[0].1, "Club Relais: welcome to Or");
    assert!(lou_mails[0].2.contains("you hold the Or status of Club Relais"), "{}", lou_mails[0].2);
    let zoe_mails = mails_of(&app, &zoe).await;
    assert_eq!(zoe_mails.len(), 1, "{zoe_mails:?}");
    assert_eq!(
        (zoe_mails[0].0.as_str(), zoe_mails[0].1.as_str()),
        ("zoe@example.fr", "Club Relais : bienvenue au statut Argent")
    );
    assert!(mails_of(&app, &sam).await.is_empty(), "no e-mail address, no e-mail");

    // A year after the next review date, nothing is left in the window: the
    // review gives notice, and says by when and what keeps Gold.
    let today = relais::config::Settings::default().ingest.day_of(chrono::Utc::now());
    let review_on = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap() + Months::new(1);
    let later = review_on + Months::new(12);
    let store = app.store.clone();
    let changes = tokio::task::spawn_blocking(move || {
        let engine = store.blocking();
        let first = engine.loyalty_review(later).unwrap();
        let again = engine.loyalty_review(later + chrono::Duration::days(1)).unwrap();
        (first, again)
    })
    .await
    .unwrap();
    assert_eq!(changes, (3, 0), "one notice each (lou, zoe, sam), given once");
    let lou_mails = mails_of(&app, &lou).await;
    assert_eq!(lou_mails.len(), 2, "{lou_mails:?}");
    let on = later + chrono::Duration::days(30);
    let long_en = |d: NaiveDate| format!("{} {} {}", d.day(), d.format("%B"), d.year());
    let (to, subject, text) = &lou_mails[1];
    assert_eq!(to, "lou@example.fr");
    assert_eq!(subject, &format!("Club Relais: your Or status changes on {}", long_en(on)));
    assert!(text.contains(&format!("you will move to no status on {}", long_en(on))), "{text}");
    assert!(text.contains("Keeping Or takes 300.00 EUR over 12 months"), "{text}");
    assert!(
        text.contains(&format!("You need 300.00 EUR more, by {} at the latest", long_en(on.pred_opt().unwrap()))),
        "{text}"
    );
    let zoe_mails = mails_of(&app, &zoe).await;
    assert_eq!(zoe_mails.len(), 2, "{zoe_mails:?}");
    assert!(zoe_mails[1].1.starts_with("Club Relais : votre statut Argent change le "), "{:?}", zoe_mails[1]);
    assert!(
        zoe_mails[1].2.contains("vous passerez sans statut le ")
            && zoe_mails[1].2.contains("Il vous manque 100,00 EUR")
    );
    assert!(mails_of(&app, &sam).await.is_empty());

    // On the announced day the downgrade takes effect, and is told too.
    let store = app.store.clone();
    let downgraded = tokio::task::spawn_blocking(move || store.blocking().loyalty_review(on).unwrap()).await.unwrap();
    assert_eq!(downgraded, 3, "lou, zoe and sam lose their tier");
    let (_, member) = app.get(&format!("/api/v1/loyalty/members/{lou_member}")).await;
    assert!(member["tier"].is_null(), "{member}");
    let lou_mails = mails_of(&app, &lou).await;
    assert_eq!(lou_mails.len(), 3, "{lou_mails:?}");
    assert_eq!(lou_mails[2].1, "Club Relais: your Or status has ended");
    assert!(
        lou_mails[2].2.contains(&format!("Since {}, your Or status of Club Relais has ended", long_en(on))),
        "{}",
        lou_mails[2].2
    );
    let zoe_mails = mails_of(&app, &zoe).await;
    assert_eq!(zoe_mails.len(), 3, "{zoe_mails:?}");
    assert_eq!(zoe_mails[2].1, "Club Relais : votre statut Argent a pris fin");
    assert!(mails_of(&app, &sam).await.is_empty());

    // The e-mails are delivered like every outbox message.
    let dir = tempfile::tempdir().unwrap();
    let worker = relais::outbox::DeliveryWorker::new(
        app.store.clone(),
        std::sync::Arc::new(relais::outbox::FileMailer::new(dir.path().to_path_buf())),
        "Club Relais <club@example.fr>".parse().unwrap(),
    );
    let report = tokio::task::spawn_blocking(move || worker.run_once().unwrap()).await.unwrap();
    assert_eq!(report.delivered, 6, "{report:?}");
}

/// A reward redemption (reserved), through the API.
async fn reserve(app: &TestApp, member: &str, reward: &str, key: &str) -> Value {
    let (status, body) = admin_post(
        app,
        &format!("/api/v1/loyalty/members/{member}/redemptions"),
        json!({ "reward": reward }),
        &[("Idempotency-Key", key)],
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::CREATED, Some("reserved")), "{body}");
    body
}

async fn stock_left(app: &TestApp, reward: &str) -> Value {
    let (_, catalogue) = app.get("/api/v1/loyalty/programmes/club/rewards").await;
    catalogue["rewards"].as_array().unwrap().iter().find(|r| r["reward"]["id"] == reward).unwrap()["stock_left"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forgotten_reservation_is_released_once_after_its_hold_with_points_and_stock_back() {
    let app = TestApp::spawn().await;
    admin_post(&app, "/api/v1/loyalty/programmes", json!(PROGRAMME), &[]).await;
    let put = |reward: Value| {
        let app = &app;
        async move { admin_post(app, "/api/v1/loyalty/programmes/club/rewards", reward, &[]).await }
    };
    assert_eq!(put(json!({"id": "bon", "name": "Bon de 1 €", "cost": 100, "stock": 2})).await.0, StatusCode::OK);
    let (status, quick) = put(json!({"id": "vite", "name": "Café", "cost": 50, "hold_days": 2})).await;
    assert_eq!((status, quick["reward"]["hold_days"].as_i64()), (StatusCode::OK, Some(2)), "{quick}");
    let (status, refused) = put(json!({"id": "zero", "name": "Jamais", "cost": 5, "hold_days": 0})).await;
    assert_eq!(
        (status, refused["errors"][0]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("hold_days")),
        "{refused}"
    );

    app.batch(json!([{"type": "identify", "userId": "oubli"}])).await;
    let member = enrol(&app, "user_id:oubli").await;
    app.batch(json!([order("oubli", "o-1", 100.0)])).await; // 100 points + 50 welcome
    let bon = reserve(&app, &member, "bon", "r-1").await;
    reserve(&app, &member, "vite", "r-2").await;
    assert_eq!(stock_left(&app, "bon").await, 1);
    let balance = || {
        let (app, path) = (&app, format!("/api/v1/loyalty/members/{member}"));
        async move { app.get(&path).await.1["balance"].as_i64().unwrap() }
    };
    assert_eq!(balance().await, 0);

    let now = chrono::Utc::now();
    let release = |store: relais::store::Store, days: i64| {
        tokio::task::spawn_blocking(move || {
            let at = now + chrono::Duration::days(days);
            store.blocking().loyalty_release(at, at.date_naive()).unwrap()
        })
    };
    // Within both holds: nothing. After two days: the café only (its own hold).
    assert_eq!(release(app.store.clone(), 1).await.unwrap(), (0, 0));
    assert_eq!(release(app.store.clone(), 3).await.unwrap(), (1, 50));
    assert_eq!(balance().await, 50);

    // After the default week, two processes run the job at once: released once.
    let other = tokio::task::block_in_place(|| app.scratch.open(relais::config::Settings::default().ingest).unwrap());
    let (a, b) = tokio::join!(release(app.store.clone(), 8), release(other.clone(), 8));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.0 + b.0, a.1 + b.1), (1, 100), "released exactly once: {a:?} {b:?}");
    assert_eq!(balance().await, 150, "points back");
    assert_eq!(stock_left(&app, "bon").await, 2, "stock back");
    assert_eq!(release(other, 30).await.unwrap(), (0, 0), "nothing left to release");
    let (status, refused) = admin_post(
        &app,
        &format!("/api/v1/loyalty/redemptions/{}/confirm", bon["id"].as_str().unwrap()),
        json!({}),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "a released reservation can no longer be handed over: {refused}");
    assert!(refused["detail"].as_str().unwrap().contains("was cancelled"), "{refused}");

    // The statement says why, in both languages.
    for (lang, words) in
        [("fr", "non confirmée sous 7 jours, points rendus"), ("en", "not confirmed within 7 days, points given back")]
    {
        let (_, statement) = app.get(&format!("/api/v1/loyalty/members/{member}/statement?lang={lang}")).await;
        let lines: Vec<&str> =
            statement["entries"].as_array().unwrap().iter().filter_map(|e| e["reason"].as_str()).collect();
        assert_eq!(lines.iter().filter(|l| l.contains(words)).count(), 1, "{lang}: {statement}");
    }

    // A confirmed reservation is never released.
    let kept = reserve(&app, &member, "bon", "r-3").await;
    admin_post(&app, &format!("/api/v1/loyalty/redemptions/{}/confirm", kept["id"].as_str().unwrap()), json!({}), &[])
        .await;
    assert_eq!(release(app.store.clone(), 60).await.unwrap(), (0, 0));
    assert_eq!((balance().await, stock_left(&app, "bon").await), (50, json!(1)));
    // The scheduled job over the API runs the release too.
    let (status, run) = admin_post(&app, "/api/v1/loyalty/expiry", json!({}), &[]).await;
    assert_eq!((status, run["reservations_released"].as_i64()), (StatusCode::OK, Some(0)), "{run}");
    assert_ledger_holds(&app).await;
}

/// Two memberships of one person, known apart so far: `kept` (enrolled first,
/// under `user_id:{name}`, 20 € spent) and `joined` (under the kiosk's
/// `anonymous_id:borne-{name}`, `till_total` € spent); both got the welcome bonus.
async fn two_memberships_of_one_person(app: &TestApp, name: &str, till_total: f64) -> (String, String) {
    let device = format!("borne-{name}");
    app.batch(json!([{"type": "identify", "userId": name}, {"type": "identify", "anonymousId": device}])).await;
    // The older membership is the one the other joins.
    let kept = enrol(app, &format!("user_id:{name}")).await;
    let joined = enrol(app, &format!("anonymous_id:{device}")).await;
    app.batch(json!([order(name, &format!("{name}-1"), 20.0)])).await;
    let mut at_the_till = order(name, &format!("{name}-2"), till_total);
    at_the_till.as_object_mut().unwrap().remove("userId");
    at_the_till["anonymousId"] = json!(device);
    app.batch(json!([at_the_till])).await;
    (kept, joined)
}

/// One message ties the person's two profiles together: their memberships become one.
async fn tie_together(app: &TestApp, name: &str) {
    let link = json!({"type": "identify", "userId": name, "anonymousId": format!("borne-{name}"),
                      "messageId": format!("{name}-link")});
    app.batch(json!([link])).await;
}

async fn put_reward(app: &TestApp, reward: Value) {
    assert_eq!(admin_post(app, "/api/v1/loyalty/programmes/club/rewards", reward, &[]).await.0, StatusCode::OK);
}

async fn cancel(app: &TestApp, redemption: &Value) -> (StatusCode, Value) {
    let path = format!("/api/v1/loyalty/redemptions/{}/cancel", redemption["id"].as_str().unwrap());
    admin_post(app, &path, json!({}), &[]).await
}

async fn statement_of(app: &TestApp, member: &str) -> Value {
    app.get(&format!("/api/v1/loyalty/members/{member}/statement")).await.1
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reservation_made_before_two_memberships_joined_gives_its_points_to_the_joined_account() {
    let app = TestApp::spawn().await;
    admin_post(&app, "/api/v1/loyalty/programmes", json!(PROGRAMME), &[]).await;
    put_reward(&app, json!({"id": "bon", "name": "Bon de 1 €", "cost": 100, "stock": 2})).await;
    put_reward(&app, json!({"id": "vite", "name": "Café", "cost": 50, "hold_days": 2})).await;
    put_reward(&app, json!({"id": "garde", "name": "Gourde", "cost": 50, "stock": 1})).await;
    // kept: 20 + 50 welcome; joined: 150 + 50 welcome.
    let (kept, joined) = two_memberships_of_one_person(&app, "lia", 150.0).await;
    let expiring = statement_of(&app, &joined).await["expiring"].clone();
    assert_eq!(expiring.as_array().map(Vec::len), Some(1), "{expiring}");
    let expires_on = expiring[0]["on"].clone();
    let bon = reserve(&app, &joined, "bon", "l-r1").await;
    reserve(&app, &joined, "vite", "l-r2").await;
    reserve(&app, &joined, "garde", "l-r3").await;
    assert_eq!(statement_of(&app, &joined).await["balance"], 0);
    assert_eq!((stock_left(&app, "bon").await, stock_left(&app, "garde").await), (json!(1), json!(0)));

    tie_together(&app, "lia").await;
    assert_eq!(statement_of(&app, &kept).await["balance"], 70);

    // Cancelled by staff: the points go to the account the membership joined,
    // keeping the expiry of the lots they were taken from.
    let (status, cancelled) = cancel(&app, &bon).await;
    assert_eq!((status, cancelled["status"].as_str()), (StatusCode::OK, Some("cancelled")), "{cancelled}");
    let after = statement_of(&app, &kept).await;
    assert_eq!(after["balance"], 170, "{after}");
    assert!(after["entries"].as_array().unwrap().iter().any(|e| e["kind"] == "cancellation"), "{after}");
    assert_eq!(after["expiring"], json!([{"on": expires_on, "points": 170}]), "{after}");
    assert_eq!(stock_left(&app, "bon").await, 2, "stock back");

    // Forgotten past its hold, the café is released to it too (the gourde's
    // hold, a week, is not over).
    let at = chrono::Utc::now() + chrono::Duration::days(3);
    let store = app.store.clone();
    let released = tokio::task::spawn_blocking(move || store.blocking().loyalty_release(at, at.date_naive()).unwrap())
        .await
        .unwrap();
    assert_eq!(released, (1, 50));
    assert_eq!(statement_of(&app, &kept).await["balance"], 220);
    assert_ledger_holds(&app).await;

    // An erasure takes the person's reservations with it, the joined
    // membership's included, and gives their units back to the stock.
    let last = reserve(&app, &kept, "bon", "l-r4").await;
    assert_eq!(stock_left(&app, "bon").await, 1);
    let (status, erased) =
        admin_post(&app, "/api/v1/privacy/erasures", json!({"identifier": "user_id:lia"}), &[]).await;
    assert_eq!(status, StatusCode::OK, "{erased}");
    assert_eq!((stock_left(&app, "bon").await, stock_left(&app, "garde").await), (json!(2), json!(1)));
    let (status, gone) = cancel(&app, &last).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{gone}");
    assert_ledger_holds(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn undoing_a_merge_gives_back_the_points_of_a_reservation_cancelled_since() {
    let app = TestApp::spawn().await;
    admin_post(&app, "/api/v1/loyalty/programmes", json!(PROGRAMME), &[]).await;
    put_reward(&app, json!({"id": "bon", "name": "Bon de 1 €", "cost": 100, "stock": 5})).await;
    // kept: 20 + 50 welcome; joined: 100 + 50 welcome.
    let (kept, joined) = two_memberships_of_one_person(&app, "noe", 100.0).await;
    let bon = reserve(&app, &joined, "bon", "n-r1").await;
    tie_together(&app, "noe").await;
    let balance = |member: String| {
        let app = &app;
        async move { statement_of(app, &member).await["balance"].clone() }
    };
    assert_eq!(balance(kept.clone()).await, 70 + 50);
    assert_eq!(cancel(&app, &bon).await.0, StatusCode::OK);
    assert_eq!(balance(kept.clone()).await, 70 + 50 + 100);

    // The merge was wrong: each side takes back what was its own, the
    // cancelled reservation's points included.
    let customer = app.customer_by("user_id:noe").await["id"].as_str().unwrap().to_string();
    let (_, merges) = app.get(&format!("/api/v1/customers/{customer}/merges")).await;
    let merge = merges["merges"][0]["merge_id"].as_str().unwrap().to_string();
    let (status, undone) = admin_post(&app, &format!("/api/v1/merges/{merge}/undo"), json!({}), &[]).await;
    assert_eq!(status, StatusCode::OK, "{undone}");
    assert_eq!(balance(joined).await, 50 + 100);
    assert_eq!(balance(kept).await, 70);
    assert_ledger_holds(&app).await;
}
