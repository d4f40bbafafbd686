//! The back office's pages over HTTP: signing in, sessions, CSRF, roles,
//! escaping, both languages, and the segment builder agreeing with the API.

use reqwest::header::SET_COOKIE;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{urlencode, Browser, TestApp};
use relais_domain::Role;

fn untranslated(body: &str) -> Vec<String> {
    body.split('⟦').skip(1).map(|p| p.split('⟧').next().unwrap_or("").to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_in_opens_the_back_office_and_signing_out_closes_it() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app, "en");
    let page = browser.get("/app/customers?q=x").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/app/login?next=%2Fapp%2Fcustomers%3Fq%3Dx", "back to the page after signing in");

    let store = app.store.clone();
    let password = tokio::task::spawn_blocking(move || {
        relais::users::create(&store, "test", "Ana@Relais.Test", Role::Admin).unwrap().1
    })
    .await
    .unwrap();
    assert!(password.len() >= 16);
    let wrong =
        browser.post("/app/login", &[("email", "ana@relais.test"), ("password", "nope"), ("next", "/app")], &[]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("Wrong e-mail address or password."), "{}", wrong.body);
    assert!(browser.cookie("relais_staff").is_none());
    let unknown = browser.post("/app/login", &[("email", "who@relais.test"), ("password", &password)], &[]).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED, "an unknown e-mail is refused the same way");

    let page = browser
        .post("/app/login", &[("email", "ana@relais.test"), ("password", &password), ("next", "//evil.example/")], &[])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/app", "never redirected off the site");
    let cookie = page.headers.get(SET_COOKIE).unwrap().to_str().unwrap();
    assert!(cookie.starts_with("relais_staff=") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"));

    let room = browser.get("/app/room").await;
    assert_eq!(room.status, StatusCode::OK);
    assert!(room.body.contains("<h1>Customer room</h1>"), "{}", room.body);
    assert!(room.headers.get("content-security-policy").unwrap().to_str().unwrap().contains("script-src 'self'"));

    let csrf = room.csrf();
    let out = browser.post("/app/logout", &[("csrf", &csrf)], &[]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(browser.cookie("relais_staff").is_none());
    assert_eq!(browser.get("/app/room").await.status, StatusCode::SEE_OTHER, "the session is over");
}

#[tokio::test(flavor = "multi_thread")]
async fn forms_need_the_session_token_and_this_site_as_origin() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app, "en");
    browser.sign_in(&app, Role::Marketing).await;
    let page = browser.get("/app/segments").await;
    let csrf = page.csrf();
    let source = [("source", "orders >= 1")];
    assert_eq!(browser.post("/app/segments/check", &source, &[]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        browser.post("/app/segments/check", &[("source", "orders >= 1"), ("csrf", "forged")], &[]).await.status,
        StatusCode::FORBIDDEN
    );
    let ok = browser.post("/app/segments/check", &source, &[("x-csrf-token", &csrf)]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let cross = browser
        .post(
            "/app/segments/check",
            &[("source", "orders >= 1"), ("csrf", &csrf)],
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    assert!(cross.body.contains("did not come from relais"), "{}", cross.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_role_opens_only_the_pages_it_may() {
    let app = TestApp::spawn().await;
    let mut agent = Browser::new(&app, "fr");
    agent.sign_in(&app, Role::Agent).await;
    let home = agent.get("/app").await;
    assert_eq!(home.location(), "/app/customers", "agents start at the customer search");
    let room = agent.get("/app/room").await;
    assert_eq!(room.status, StatusCode::FORBIDDEN);
    assert!(room.body.contains("Votre rôle ne permet pas"), "{}", room.body);
    assert_eq!(agent.get("/app/customers").await.status, StatusCode::OK);
    let mut ingest = Browser::new(&app, "en");
    ingest.sign_in(&app, Role::Ingest).await;
    assert_eq!(ingest.get("/app/customers").await.status, StatusCode::FORBIDDEN);
    let mut dpo = Browser::new(&app, "en");
    dpo.sign_in(&app, Role::Dpo).await;
    let segments = dpo.get("/app/segments").await;
    assert_eq!(segments.status, StatusCode::OK);
    assert!(!segments.body.contains("seg-source"), "data-protection officers may read segments, not build them");
    let csrf = segments.csrf();
    let refused = dpo.post("/app/segments", &[("name", "x"), ("source", "orders >= 1"), ("csrf", &csrf)], &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread")]
async fn what_customers_send_is_shown_escaped() {
    let app = TestApp::spawn().await;
    let (status, _) = app
        .batch(json!([
            {"type": "identify", "userId": "xss", "messageId": "x1",
             "traits": {"email": "xss@exemple.fr", "firstName": "<img src=x onerror=alert(1)>", "lastName": "Martin"}},
            {"type": "track", "userId": "xss", "messageId": "x2", "event": "<script>alert('event')</script>",
             "properties": {"note": "<script>alert('property')</script>"}, "context": {"channel": "web"}},
        ]))
        .await;
    assert_eq!(status, StatusCode::OK);
    let id = app.customer_by("user_id:xss").await["id"].as_str().unwrap().to_string();
    let mut browser = Browser::new(&app, "en");
    browser.sign_in(&app, Role::Admin).await;
    let page = browser.get(&format!("/app/customers/{id}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(!page.body.contains("<img src=x"), "names are escaped");
    assert!(page.body.contains("&lt;img src=x onerror=alert(1)&gt;"));
    let timeline = browser.get(&format!("/app/customers/{id}/timeline")).await;
    assert!(!timeline.body.contains("<script>alert"), "{}", timeline.body);
    assert!(timeline.body.contains("&lt;script&gt;alert(&#x27;event&#x27;)&lt;&#x2f;script&gt;"), "{}", timeline.body);
    let filtered = browser.get(&format!("/app/customers/{id}/timeline?channel=store")).await;
    assert!(filtered.body.contains("No interaction matches."), "the channel filter applies");
    let search = browser.get(&format!("/app/customers?q={}", urlencode("xss@exemple.fr"))).await;
    assert_eq!(search.location(), format!("/app/customers/{id}"), "a single hit opens the 360");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_builder_counts_what_the_api_counts_and_shows_errors_in_place() {
    let app = TestApp::spawn().await;
    let orders: Vec<_> = (0..6)
        .map(|i| {
            json!({"type": "track", "userId": format!("b{i}"), "event": "Order Completed", "messageId": format!("o{i}"),
                   "properties": {"order_id": format!("o{i}"), "total": 10 + i, "currency": "EUR"},
                   "context": {"channel": if i % 2 == 0 { "store" } else { "web" }}})
        })
        .collect();
    assert_eq!(app.batch(json!(orders)).await.0, StatusCode::OK);
    let source = r#"orders >= 1 and last_channel = "store""#;
    let response = app
        .client
        .post(format!("{}/api/v1/segments/preview", app.address))
        .bearer_auth(&app.admin)
        .json(&json!({ "source": source }))
        .send()
        .await
        .unwrap();
    let preview: serde_json::Value = response.json().await.unwrap();
    assert_eq!(preview["size"], 3);

    let mut browser = Browser::new(&app, "fr");
    browser.sign_in(&app, Role::Marketing).await;
    let csrf = browser.get("/app/segments").await.csrf();
    let count = browser.post("/app/segments/check", &[("source", source), ("csrf", &csrf)], &[]).await;
    assert!(count.body.contains("data-size=\"3\""), "{}", count.body);
    let wrong = browser.post("/app/segments/check", &[("source", "orders >= 1 and"), ("csrf", &csrf)], &[]).await;
    assert!(wrong.body.contains("Erreur de syntaxe"), "{}", wrong.body);
    assert!(wrong.body.contains("ligne 1, colonne"), "{}", wrong.body);
    let unknown = browser.post("/app/segments/check", &[("source", "ordres >= 1"), ("csrf", &csrf)], &[]).await;
    assert!(unknown.body.contains("Nom inconnu"), "{}", unknown.body);

    let saved = browser
        .post("/app/segments", &[("name", "magasin"), ("source", source), ("description", ""), ("csrf", &csrf)], &[])
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let list = browser.get("/app/segments").await;
    assert!(list.body.contains("id=\"seg-magasin\""));
    let refused = browser
        .post("/app/segments", &[("name", "bad name!"), ("source", source), ("description", ""), ("csrf", &csrf)], &[])
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.body.contains("Ce nom ne convient pas"), "{}", refused.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_is_complete_in_french_and_in_english() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.batch(
            json!([{"type": "identify", "userId": "u1", "messageId": "i1", "traits": {"email": "u1@exemple.fr"}}])
        )
        .await
        .0,
        StatusCode::OK
    );
    let id = app.customer_by("user_id:u1").await["id"].as_str().unwrap().to_string();
    for lang in ["fr", "en"] {
        let mut browser = Browser::new(&app, lang);
        browser.sign_in(&app, Role::Admin).await;
        for path in [
            "/app/room".to_string(),
            "/app/room/flow".to_string(),
            "/app/customers".to_string(),
            "/app/customers?q=nobody".to_string(),
            format!("/app/customers/{id}"),
            format!("/app/customers/{id}/timeline"),
            "/app/segments".to_string(),
            "/app/login".to_string(),
            "/app/customers/cus_00000000000000000000000000".to_string(),
        ] {
            let page = browser.get(&path).await;
            assert!(page.status.is_success() || page.status == StatusCode::NOT_FOUND, "{path}: {}", page.status);
            assert_eq!(untranslated(&page.body), Vec::<String>::new(), "{lang} {path}");
            if page.body.starts_with("<!doctype") {
                assert!(page.body.contains(&format!("<html lang=\"{lang}\">")), "{lang} {path}");
            }
        }
    }
    let mut browser = Browser::new(&app, "en");
    browser.sign_in(&app, Role::Analyst).await;
    let flow = browser.get("/app/room/flow").await;
    assert!(
        flow.body.contains("<rect") && flow.body.contains("Other: 1"),
        "the event just received is in the flow: {}",
        flow.body
    );
    assert_eq!(browser.get("/").await.location(), "/app", "the site's root leads to the back office");
    let switched = browser.get("/lang/fr?next=/app/login").await;
    assert_eq!(switched.location(), "/app/login");
    assert!(browser.get("/app/login").await.body.contains("Connexion à relais"), "the chosen language wins");
}

#[tokio::test(flavor = "multi_thread")]
async fn journeys_loyalty_and_privacy_have_their_pages() {
    let app = TestApp::spawn().await;
    let programme = include_str!("../../../../examples/club-relais.toml");
    let response = app
        .client
        .post(format!("{}/api/v1/loyalty/programmes", app.address))
        .bearer_auth(&app.admin)
        .header("content-type", "application/toml")
        .body(programme)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());

    let mut browser = Browser::new(&app, "en");
    browser.sign_in(&app, Role::Admin).await;
    let journeys = browser.get("/app/journeys").await;
    assert_eq!(journeys.status, StatusCode::OK);
    assert!(journeys.body.contains("Journey across 4 stages"), "the founding example's Sankey diagram");
    let csrf = journeys.csrf();
    let model = {
        let at = journeys.body.find("name=\"model\" value=\"").unwrap() + "name=\"model\" value=\"".len();
        let raw = &journeys.body[at..at + journeys.body[at..].find('"').unwrap()];
        raw.replace("&quot;", "\"").replace("&#x27;", "'").replace("&amp;", "&")
    };
    let form = |share: &'static str| {
        vec![
            ("csrf", csrf.clone()),
            ("model", model.clone()),
            ("stage", "evaluation".to_string()),
            ("channel", "social".to_string()),
            ("share", share.to_string()),
            ("op", "mix".to_string()),
        ]
    };
    let body: Vec<(&str, String)> = form("20");
    let pairs: Vec<(&str, &str)> = body.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let what_if = browser.post("/app/journeys/whatif", &pairs, &[]).await;
    assert_eq!(what_if.status, StatusCode::OK, "{}", what_if.body);
    // REFERENCES.md section 4: social at 20 % of evaluations raises catalogue purchases by 2.6 %.
    assert!(what_if.body.contains("+2.6%"), "{}", what_if.body);
    let body = form("140");
    let pairs: Vec<(&str, &str)> = body.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let refused = browser.post("/app/journeys/whatif", &pairs, &[]).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.body.contains("between 0 and 100"), "{}", refused.body);

    let loyalty = browser.get("/app/loyalty").await;
    assert_eq!(loyalty.status, StatusCode::OK);
    assert!(loyalty.body.contains("/loyalty/club-relais/rules"), "{}", loyalty.body);
    assert!(loyalty.body.contains("Liability"));

    let privacy = browser.get("/app/privacy").await;
    assert_eq!(privacy.status, StatusCode::OK);
    assert!(privacy.body.contains("Self-care portal") && privacy.body.contains("Risk register"));
    let csrf = privacy.csrf();
    let verified = browser.post("/app/privacy/verify", &[("csrf", &csrf)], &[]).await;
    assert!(verified.body.contains("The log is intact"), "{}", verified.body);

    let mut marketing = Browser::new(&app, "en");
    marketing.sign_in(&app, Role::Marketing).await;
    assert_eq!(marketing.get("/app/privacy").await.status, StatusCode::FORBIDDEN);
    assert!(
        !marketing.get("/app/loyalty").await.body.contains("href=\"/app/privacy\""),
        "the menu hides what the role may not open"
    );
}
