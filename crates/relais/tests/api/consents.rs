//! Consents: proof required, state at any date, the check API, double opt-in
//! links that cannot be forged or replayed, and one-click unsubscribe.

use std::sync::Arc;

use relais::outbox::{DeliveryWorker, FileMailer};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::TestApp;

async fn person(app: &TestApp, user: &str, email: &str) -> String {
    let (status, _) = app.batch(json!([{"type": "identify", "userId": user, "traits": {"email": email}}])).await;
    assert_eq!(status, StatusCode::OK);
    app.customer_by(&format!("email:{email}")).await["id"].as_str().unwrap().to_string()
}

async fn post(app: &TestApp, path: &str, body: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", app.address))
        .bearer_auth(&app.admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn allowed(app: &TestApp, customer: &str, purpose: &str, channel: &str, at: Option<&str>) -> bool {
    let mut path = format!("/api/v1/consents/check?customer={customer}&purpose={purpose}&channel={channel}");
    if let Some(at) = at {
        path.push_str(&format!("&at={}", crate::helpers::urlencode(at)));
    }
    let (status, answer) = app.get(&path).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["allowed"].as_bool().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn consents_need_their_proof_and_answer_for_any_date() {
    let app = TestApp::spawn().await;
    let id = person(&app, "c-1", "lea@exemple.fr").await;
    let path = format!("/api/v1/customers/{id}/consents");

    let (status, problem) = post(
        &app,
        &path,
        json!({"purpose": "email_marketing", "channel": "email", "granted": true, "source": "web", "wording_version": "cgu-3"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["field"], "proof.ip", "{problem}");
    let (status, problem) =
        post(&app, &path, json!({"purpose": "spam", "channel": "email", "granted": true, "source": "web"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["field"], "purpose");
    assert!(!allowed(&app, &id, "email_marketing", "email", None).await, "never by default");

    let (status, recorded) = post(
        &app,
        &path,
        json!({"purpose": "email_marketing", "channel": "email", "granted": true, "source": "web", "wording_version": "cgu-3",
               "proof": {"ip": "198.51.100.4", "user_agent": "Mozilla/5.0"}, "at": "2026-01-10T10:00:00Z"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{recorded}");
    assert!(recorded["consent_id"].as_str().unwrap().starts_with("con_"));
    let (status, _) = post(
        &app,
        &path,
        json!({"purpose": "email_marketing", "channel": "email", "granted": false, "source": "call_centre",
               "proof": {"reference": "appel-4471"}, "at": "2026-02-01T09:00:00Z"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    assert!(allowed(&app, &id, "email_marketing", "email", Some("2026-01-20T00:00:00Z")).await);
    assert!(!allowed(&app, &id, "email_marketing", "email", Some("2026-02-02T00:00:00Z")).await);
    assert!(!allowed(&app, &id, "email_marketing", "email", Some("2026-01-01T00:00:00Z")).await);
    assert!(!allowed(&app, &id, "email_marketing", "email", None).await);

    let (_, view) = app.get(&format!("{path}?at=2026-01-20T00:00:00Z")).await;
    assert_eq!(view["consents"][0]["granted"], true);
    assert_eq!(view["history"].as_array().unwrap().len(), 2);
    assert_eq!(view["history"][0]["proof"]["ip"], "198.51.100.4", "the admin sees the proof");
    let marketing = app.key(relais_domain::Role::Marketing).await;
    let (_, masked) = app.get_as(&path, &marketing).await;
    assert!(masked["history"][0]["proof"]["ip"].is_null(), "the proof is personal data: {masked}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_double_opt_in_link_works_once_and_one_click_unsubscribe_withdraws() {
    let app = TestApp::spawn().await;
    let id = person(&app, "c-2", "hugo@exemple.fr").await;
    let (status, queued) = post(
        &app,
        &format!("/api/v1/customers/{id}/consents/opt-in"),
        json!({"purpose": "email_marketing", "wording_version": "newsletter-2"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");

    // The e-mail goes through the outbox (sealed at rest) with both links.
    let folder = tempfile::tempdir().unwrap();
    let worker = DeliveryWorker::new(
        app.store.clone(),
        Arc::new(FileMailer::new(folder.path().to_path_buf())),
        "Boutique <contact@exemple.fr>".parse().unwrap(),
    );
    let report = tokio::task::spawn_blocking(move || worker.run_once().unwrap()).await.unwrap();
    assert_eq!(report.delivered, 1);
    let outbox_id = queued["outbox_id"].as_str().unwrap();
    let mail = std::fs::read_to_string(folder.path().join(format!("{outbox_id}.eml"))).unwrap();
    assert!(mail.contains("To: hugo@exemple.fr"), "{mail}");
    assert!(mail.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"), "{mail}");
    // Undo quoted-printable soft breaks and escapes, and header folding.
    let unfolded =
        mail.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=").replace("\r\n ", "").replace("\n ", "");
    let token = unfolded.split("token=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let unsubscribe = unfolded
        .split("List-Unsubscribe: <")
        .nth(1)
        .unwrap()
        .split('>')
        .next()
        .unwrap()
        .rsplit("/u/")
        .next()
        .unwrap()
        .to_string();

    let client = reqwest::Client::new();
    let page = client.get(format!("{}/consent/confirm?token={token}", app.address)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(!allowed(&app, &id, "email_marketing", "email", None).await, "opening the page alone confirms nothing");
    let confirm = |token: String| {
        let client = client.clone();
        let url = format!("{}/consent/confirm", app.address);
        async move { client.post(url).form(&[("token", token)]).send().await.unwrap().status() }
    };
    let mut forged = token.clone();
    forged.replace_range(5..6, if &token[5..6] == "A" { "B" } else { "A" });
    assert_eq!(confirm(forged).await, StatusCode::BAD_REQUEST, "a forged link is refused");
    assert_eq!(confirm(token.clone()).await, StatusCode::OK);
    assert!(allowed(&app, &id, "email_marketing", "email", None).await);
    assert_eq!(confirm(token).await, StatusCode::CONFLICT, "a link works once");
    let (_, view) = app.get(&format!("/api/v1/customers/{id}/consents")).await;
    assert_eq!(view["history"][0]["source"], "double_opt_in");

    // One-click unsubscribe, as mail clients send it (RFC 8058).
    let withdrawn = client
        .post(format!("{}/u/{unsubscribe}", app.address))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(withdrawn.status(), StatusCode::OK);
    assert!(!allowed(&app, &id, "email_marketing", "email", None).await, "withdrawing is as easy as giving");
}
