//! The customers' portal (`/me`) in a browser's shoes: sign-in with an
//! e-mailed code or a staff link, the card and statement, a reward redeemed
//! once on a double submit, receipts, the data download, consents and
//! erasure, CSRF refusals and escaping.

use std::sync::Arc;

use relais::outbox::{DeliveryWorker, FileMailer};
use reqwest::header::SET_COOKIE;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{place, run_binary, Browser, TestApp, USER_AGENT};
use crate::loyalty::PROGRAMME;

/// A browser: no redirects followed, the member cookie kept by hand.
/// The value of the first `name="…" value="…"` input after `after` in a page.
fn field(page: &str, after: &str, name: &str) -> String {
    let start = page.find(after).unwrap_or_else(|| panic!("`{after}` not in the page:\n{page}"));
    let rest = &page[start..];
    let marker = format!("name=\"{name}\" value=\"");
    let at = rest.find(&marker).unwrap_or_else(|| panic!("no field `{name}` after `{after}`"));
    rest[at + marker.len()..].split('"').next().unwrap().to_string()
}

async fn api(app: &TestApp, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", app.address);
    let mut request = if method == "GET" { client.get(url) } else { client.post(url) }.bearer_auth(&app.admin);
    if let Some(body) = body {
        request = request.json(&body);
    }
    if method == "TOML" {
        request = client
            .post(format!("{}{path}", app.address))
            .bearer_auth(&app.admin)
            .header("content-type", "application/toml")
            .body(PROGRAMME);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A member with an e-mail address, a card, points from one order (with a
/// product name holding markup), and two rewards: one affordable, one not.
struct Fixture {
    member: String,
    card: String,
}

async fn fixture(app: &TestApp) -> Fixture {
    assert_eq!(api(app, "TOML", "/api/v1/loyalty/programmes", None).await.0, StatusCode::OK);
    for reward in [
        json!({"id": "bon-5", "name": "Bon de 5 €", "cost": 100}),
        json!({"id": "voyage", "name": "Voyage", "cost": 900000}),
    ] {
        let (status, body) = api(app, "POST", "/api/v1/loyalty/programmes/club/rewards", Some(reward)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    app.batch(
        json!([{"type": "identify", "userId": "marie", "traits": {"email": "marie@exemple.fr", "firstName": "Marie"}}]),
    )
    .await;
    let (status, member) =
        api(app, "POST", "/api/v1/loyalty/members", Some(json!({"identifier": "user_id:marie"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{member}");
    let (status, _) = app
        .batch(json!([{"type": "track", "userId": "marie", "event": "Order Completed", "messageId": "o-1",
            "context": {"channel": "store"},
            "properties": {"order_id": "ord-1", "total": 180.0, "currency": "EUR", "store": "lyon",
                "products": [{"name": "<script>alert(1)</script>", "category": "Beauté", "price": 60.0, "quantity": 3}]}}]))
        .await;
    assert_eq!(status, StatusCode::OK);
    Fixture {
        member: member["id"].as_str().unwrap().to_string(),
        card: member["card_number"].as_str().unwrap().to_string(),
    }
}

async fn balance(app: &TestApp, member: &str) -> i64 {
    let (status, statement) = api(app, "GET", &format!("/api/v1/loyalty/members/{member}/statement"), None).await;
    assert_eq!(status, StatusCode::OK, "{statement}");
    statement["balance"].as_i64().unwrap()
}

/// Deliver the outbox into a folder and return the e-mails written.
async fn mails(app: &TestApp) -> Vec<String> {
    let folder = tempfile::tempdir().unwrap();
    let worker = DeliveryWorker::new(
        app.store.clone(),
        Arc::new(FileMailer::new(folder.path().to_path_buf())),
        "Boutique <contact@exemple.fr>".parse().unwrap(),
    );
    tokio::task::spawn_blocking(move || worker.run_once().unwrap()).await.unwrap();
    let Ok(entries) = std::fs::read_dir(folder.path()) else { return Vec::new() };
    entries.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect()
}

/// The six-digit code of a sign-in e-mail.
fn code_in(mail: &str) -> String {
    let unfolded = mail.replace("=\r\n", "").replace("=\n", "");
    let body = unfolded.split_once("\r\n\r\n").or_else(|| unfolded.split_once("\n\n")).unwrap().1;
    let digits: Vec<&str> = body.split(|c: char| !c.is_ascii_digit()).filter(|run| run.len() == 6).collect();
    assert_eq!(digits.len(), 1, "one code in: {body}");
    digits[0].to_string()
}

/// Sign in with a link made by `relais portal link`.
async fn link_for(app: &TestApp, identifier: &str) -> String {
    let location = place(&app.scratch);
    let identifier = identifier.to_string();
    let (ok, stdout, stderr) =
        tokio::task::spawn_blocking(move || run_binary(&location, &["portal", "link", "--identifier", &identifier]))
            .await
            .unwrap();
    assert!(ok, "{stderr}");
    let url = stdout.trim();
    assert_eq!(stdout.lines().count(), 1, "only the URL: {stdout}");
    url.split("/me/link/").nth(1).unwrap_or_else(|| panic!("a link: {url}")).to_string()
}

async fn signed_in(app: &TestApp, identifier: &str) -> Browser {
    let token = link_for(app, identifier).await;
    let mut browser = Browser::new(app, "fr");
    let answer = browser.post(&format!("/me/link/{token}"), &[], &[]).await;
    assert_eq!((answer.status, answer.location()), (StatusCode::SEE_OTHER, "/me"), "{}", answer.body);
    browser
}

#[tokio::test(flavor = "multi_thread")]
async fn a_code_sent_by_email_signs_in_and_unknown_people_get_the_same_answer() {
    let app = TestApp::spawn().await;
    let fixture = fixture(&app).await;
    let mut browser = Browser::new(&app, "fr");
    // Without a session, the portal sends to its sign-in page.
    let answer = browser.get("/me").await;
    assert_eq!((answer.status, answer.location()), (StatusCode::SEE_OTHER, "/me/login"));
    assert_eq!(browser.get("/me/login").await.status, StatusCode::OK);

    let known = browser.post("/me/login", &[("identifier", "Marie@Exemple.fr")], &[]).await;
    let unknown = browser.post("/me/login", &[("identifier", "personne@exemple.fr")], &[]).await;
    assert_eq!((known.status, unknown.status), (StatusCode::OK, StatusCode::OK));
    let sent = "Si un compte correspond";
    assert!(known.body.contains(sent) && unknown.body.contains(sent));
    assert_eq!(field(&known.body, "action=\"/me/code\"", "identifier"), "Marie@Exemple.fr");
    let mails = mails(&app).await;
    assert_eq!(mails.len(), 1, "one e-mail, to the known person only");
    assert!(mails[0].contains("To: marie@exemple.fr"), "{}", mails[0]);
    let code = code_in(&mails[0]);

    let answer = browser.post("/me/code", &[("identifier", "marie@exemple.fr"), ("code", &code)], &[]).await;
    assert_eq!((answer.status, answer.location()), (StatusCode::SEE_OTHER, "/me"), "{}", answer.body);
    let set_cookie = answer.headers.get(SET_COOKIE).unwrap().to_str().unwrap();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"), "{set_cookie}");
    let home = browser.get("/me").await;
    assert_eq!(home.status, StatusCode::OK, "{}", home.body);
    assert!(home.body.contains("Bonjour Marie"));
    assert!(home.body.contains(&fixture.card));
    // The code works once.
    let mut other = Browser::new(&app, "fr");
    let again = other.post("/me/code", &[("identifier", "marie@exemple.fr"), ("code", &code)], &[]).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);

    // The card number works as the identifier too (card number plus code).
    let mut till = Browser::new(&app, "fr");
    assert_eq!(till.post("/me/login", &[("identifier", &fixture.card)], &[]).await.status, StatusCode::OK);
    let mails = self::mails(&app).await;
    let code = code_in(&mails[0]);
    let answer = till.post("/me/code", &[("identifier", &fixture.card), ("code", &code)], &[]).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);

    // Signing out ends the session.
    let home = browser.get("/me").await;
    let csrf = field(&home.body, "action=\"/me/logout\"", "csrf");
    let answer = browser.post("/me/logout", &[("csrf", &csrf)], &[]).await;
    assert_eq!((answer.status, answer.location()), (StatusCode::SEE_OTHER, "/me/login"));
    assert_eq!(browser.get("/me").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_codes_are_refused_and_five_of_them_spend_the_code() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    let mut browser = Browser::new(&app, "fr");
    browser.post("/me/login", &[("identifier", "marie@exemple.fr")], &[]).await;
    let code = code_in(&mails(&app).await[0]);
    let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    for _ in 0..5 {
        let answer = browser.post("/me/code", &[("identifier", "marie@exemple.fr"), ("code", &wrong)], &[]).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert!(answer.body.contains("Ce code ne convient pas"), "{}", answer.body);
        assert!(browser.cookie("relais_member").is_none());
    }
    let answer = browser.post("/me/code", &[("identifier", "marie@exemple.fr"), ("code", &code)], &[]).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "the right code no longer works after five wrong ones");
    assert!(browser.cookie("relais_member").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_staff_link_shows_a_button_and_signs_in_once() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    let token = link_for(&app, "email:marie@exemple.fr").await;
    let mut browser = Browser::new(&app, "fr");
    let page = browser.get(&format!("/me/link/{token}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(&format!("action=\"/me/link/{token}\"")));
    assert!(browser.cookie("relais_member").is_none(), "opening the link does not sign in");
    let answer = browser.post(&format!("/me/link/{token}"), &[], &[]).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(browser.get("/me").await.status, StatusCode::OK);
    let mut other = Browser::new(&app, "fr");
    assert_eq!(other.post(&format!("/me/link/{token}"), &[], &[]).await.status, StatusCode::GONE);
    // Nobody holds this identifier: no link.
    let location = place(&app.scratch);
    let (ok, stdout, _) = tokio::task::spawn_blocking(move || {
        run_binary(&location, &["portal", "link", "--identifier", "email:personne@exemple.fr"])
    })
    .await
    .unwrap();
    assert!(!ok && stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pages_show_the_card_and_statement_and_a_double_submit_redeems_once() {
    let app = TestApp::spawn().await;
    let fixture = fixture(&app).await;
    let mut browser = signed_in(&app, &format!("card:{}", fixture.card)).await;
    let before = balance(&app, &fixture.member).await;
    assert!(before >= 100, "{before}");
    let home = browser.get("/me").await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(home.body.contains("<svg"), "the card is drawn inline");
    assert!(home.body.contains(&format!("data-balance=\"{before}\"")), "{}", home.body);
    assert!(home.body.contains("Mon relevé de points"));
    assert!(home.body.contains("Bon de 5 €"));

    let form = "action=\"/me/rewards/bon-5/redeem\"";
    let fields = [
        ("csrf", field(&home.body, form, "csrf")),
        ("member", field(&home.body, form, "member")),
        ("key", field(&home.body, form, "key")),
    ];
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for _ in 0..2 {
        let answer = browser.post("/me/rewards/bon-5/redeem", &fields, &[]).await;
        assert_eq!((answer.status, answer.location()), (StatusCode::SEE_OTHER, "/me?redeemed=bon-5"));
    }
    assert_eq!(balance(&app, &fixture.member).await, before - 100, "debited once");
    let home = browser.get("/me?redeemed=bon-5").await;
    assert!(home.body.contains("votre récompense est réservée"));

    // Too expensive: a message on the page, not an error page.
    let form = "action=\"/me/rewards/voyage/redeem\"";
    let csrf = field(&home.body, form, "csrf");
    let member = field(&home.body, form, "member");
    let key = field(&home.body, form, "key");
    let answer =
        browser.post("/me/rewards/voyage/redeem", &[("csrf", &csrf), ("member", &member), ("key", &key)], &[]).await;
    assert_eq!(answer.location(), "/me?refused=insufficient_balance");
    let page = browser.get(answer.location()).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Votre solde ne suffit pas"));
    assert_eq!(balance(&app, &fixture.member).await, before - 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn receipts_list_orders_escape_what_events_hold_and_download() {
    let app = TestApp::spawn().await;
    fixture(&app).await;
    let mut browser = signed_in(&app, "email:marie@exemple.fr").await;
    let page = browser.get("/me/receipts").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;"), "{}", page.body);
    assert!(!page.body.contains("<script>alert"));
    assert!(page.body.contains("href=\"/me/receipts/ord-1\""));
    assert!(page.body.contains("<svg"), "the spending charts");
    let detail = browser.get("/me/receipts/ord-1").await;
    assert_eq!(detail.status, StatusCode::OK);
    assert!(detail.body.contains("lyon") && !detail.body.contains("<script>alert"));
    assert_eq!(browser.get("/me/receipts/ord-404").await.status, StatusCode::NOT_FOUND);
    let json = browser.get("/me/receipts.json").await;
    let orders: Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!(orders["orders"][0]["order_id"], "ord-1");
    assert_eq!(orders["orders"][0]["amount"], 180.0);
    let csv = browser.get("/me/receipts.csv").await;
    assert!(csv.headers.get("content-type").unwrap().to_str().unwrap().starts_with("text/csv"));
    let mut lines = csv.body.lines();
    assert!(lines.next().unwrap().starts_with("order_id,date,store"));
    assert!(lines.next().unwrap().starts_with("ord-1,"));
}

#[tokio::test(flavor = "multi_thread")]
async fn my_data_downloads_as_json_consents_change_with_proof_and_erasure_is_requested() {
    let app = TestApp::spawn().await;
    let fixture = fixture(&app).await;
    let mut browser = signed_in(&app, "email:marie@exemple.fr").await;
    let data = browser.get("/me/data.json").await;
    assert_eq!(data.status, StatusCode::OK);
    let data: Value = serde_json::from_str(&data.body).unwrap();
    let identifiers = data["profile"]["identifiers"].as_array().unwrap();
    assert!(identifiers.contains(&json!("email:marie@exemple.fr")), "{identifiers:?}");
    assert!(identifiers.contains(&json!(format!("card:{}", fixture.card))), "{identifiers:?}");
    assert!(!data["events"].as_array().unwrap().is_empty());

    let page = browser.get("/me/data").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("marie@exemple.fr"));
    let form = "value=\"email_marketing\"";
    let csrf = field(&page.body, "action=\"/me/consents\"", "csrf");
    let answer = browser
        .post("/me/consents", &[("csrf", &csrf), ("purpose", "email_marketing"), ("granted", "true")], &[])
        .await;
    assert_eq!((answer.status, answer.location()), (StatusCode::SEE_OTHER, "/me/data?saved=consents"));
    assert!(page.body.contains(form));
    let id = data["profile"]["id"].as_str().unwrap();
    let (_, consents) = api(&app, "GET", &format!("/api/v1/customers/{id}/consents"), None).await;
    let fact = &consents["history"][0];
    assert_eq!(
        (fact["purpose"].as_str(), fact["granted"].as_bool()),
        (Some("email_marketing"), Some(true)),
        "{consents}"
    );
    assert_eq!(fact["source"], "web");
    assert_eq!(fact["proof"]["ip"], "127.0.0.1");
    assert_eq!(fact["proof"]["user_agent"], USER_AGENT);

    let answer = browser.post("/me/erasure", &[("csrf", &csrf)], &[]).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    let page = browser.get("/me/data").await;
    assert!(page.body.contains("Demande reçue le"), "{}", page.body);
    let (_, requests) = api(&app, "GET", "/api/v1/privacy/requests?status=open", None).await;
    let requests = requests["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!((requests[0]["kind"].as_str(), requests[0]["customer_id"].as_str()), (Some("erasure"), Some(id)));
    assert_eq!(requests[0]["recorded_by"], format!("member:{id}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_without_the_csrf_token_is_refused() {
    let app = TestApp::spawn().await;
    let fixture = fixture(&app).await;
    let mut browser = signed_in(&app, "email:marie@exemple.fr").await;
    let before = balance(&app, &fixture.member).await;
    let home = browser.get("/me").await;
    let form = "action=\"/me/rewards/bon-5/redeem\"";
    let (member, key) = (field(&home.body, form, "member"), field(&home.body, form, "key"));
    let answer = browser.post("/me/rewards/bon-5/redeem", &[("member", &member), ("key", &key)], &[]).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    let answer =
        browser.post("/me/rewards/bon-5/redeem", &[("csrf", "forged"), ("member", &member), ("key", &key)], &[]).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(browser.post("/me/erasure", &[], &[]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        browser.post("/me/consents", &[("purpose", "sms"), ("granted", "true")], &[]).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(browser.post("/me/logout", &[], &[]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(balance(&app, &fixture.member).await, before);
    assert_eq!(browser.get("/me").await.status, StatusCode::OK, "still signed in");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_opened_before_a_merge_shows_the_survivor() {
    let app = TestApp::spawn().await;
    app.batch(json!([{"type": "page", "anonymousId": "device-9", "name": "Accueil", "messageId": "p-9",
        "timestamp": "2026-01-01T10:00:00Z"}]))
        .await;
    app.batch(json!([{"type": "identify", "userId": "zoe", "traits": {"email": "zoe@exemple.fr"}}])).await;
    let older = app.customer_by("anonymous_id:device-9").await["id"].as_str().unwrap().to_string();
    let mut browser = signed_in(&app, "email:zoe@exemple.fr").await;
    let (status, _) = app.post("/v1/identify", &json!({"userId": "zoe", "anonymousId": "device-9"})).await;
    assert_eq!(status, StatusCode::OK);
    let survivor = app.customer_by("email:zoe@exemple.fr").await["id"].as_str().unwrap().to_string();
    assert_eq!(survivor, older, "the oldest profile survives");
    for path in ["/me", "/me/receipts", "/me/data"] {
        assert_eq!(browser.get(path).await.status, StatusCode::OK, "{path}");
    }
    let data: Value = serde_json::from_str(&browser.get("/me/data.json").await.body).unwrap();
    assert_eq!(data["profile"]["id"], survivor);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_erasure_ends_the_members_portal_session() {
    let app = TestApp::spawn().await;
    let _fixture = fixture(&app).await;
    let mut browser = signed_in(&app, "email:marie@exemple.fr").await;
    assert_eq!(browser.get("/me").await.status, StatusCode::OK);
    assert_eq!(browser.get("/").await.location(), "/me", "a member's root is the portal");
    let (status, body) =
        api(&app, "POST", "/api/v1/privacy/erasures", Some(json!({"identifier": "email:marie@exemple.fr"}))).await;
    assert!(status.is_success(), "{body}");
    let after = browser.get("/me").await;
    assert_eq!(
        (after.status, after.location()),
        (StatusCode::SEE_OTHER, "/me/login"),
        "the session went with the person"
    );
}
