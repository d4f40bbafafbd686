//! Every route × every role answers as the access matrix fixture says: allowed
//! (never 401, 403, 404 or 5xx) or 403; and without a key, 401.

use std::collections::{BTreeSet, HashSet};

use relais_domain::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::TestApp;

/// One row of the fixture.
struct Expected {
    method: String,
    path: String,
    public: bool,
    allowed: HashSet<Role>,
}

fn fixture() -> Vec<Expected> {
    include_str!("fixtures/access_matrix.txt")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let mut words = line.split_whitespace();
            let method = words.next().expect("method").to_string();
            let path = words.next().expect("path").to_string();
            let names: Vec<&str> = words.collect();
            let public = names == ["public"];
            let allowed = if public {
                Role::ALL.into_iter().collect()
            } else {
                names
                    .iter()
                    .map(|n| Role::parse(n).unwrap_or_else(|| panic!("unknown role {n} in the fixture")))
                    .collect()
            };
            Expected { method, path, public, allowed }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_every_role_as_the_access_matrix_says() {
    let app = TestApp::spawn().await;
    let expected = fixture();

    // No route forgotten, none invented: the fixture and what the router serves agree.
    let served: BTreeSet<(String, String)> =
        relais::http::routes().iter().map(|r| (r.method.to_string(), r.path.to_string())).collect();
    let listed: BTreeSet<(String, String)> = expected.iter().map(|e| (e.method.clone(), e.path.clone())).collect();
    assert_eq!(served, listed, "the fixture must list exactly the routes the router serves");

    // Data the routes need: a customer with a merge; people to erase, one per allowed call.
    let (_, answer) = app
        .batch(json!([
            {"type": "page", "anonymousId": "acc-device", "name": "Accueil"},
            {"type": "identify", "userId": "acc-user", "traits": {"email": "acces@exemple.fr"}},
            {"type": "track", "userId": "acc-user", "anonymousId": "acc-device", "event": "Product Viewed"},
        ]))
        .await;
    assert!(answer["results"].as_array().unwrap().iter().all(|r| r["status"] == "stored"), "{answer}");
    let customer = app.customer_by("email:acces@exemple.fr").await["id"].as_str().unwrap().to_string();
    let (_, merges) = app.get(&format!("/api/v1/customers/{customer}/merges")).await;
    let merge = merges["merges"][0]["merge_id"].as_str().expect("a merge").to_string();

    // A rights request (rectification: completing it changes nothing else).
    let (_, created) = app
        .post_raw(
            "/api/v1/privacy/requests",
            serde_json::to_vec(&json!({"kind": "rectification", "identifier": "email:acces@exemple.fr"})).unwrap(),
            None,
            Some(&app.admin),
        )
        .await;
    let request = created["request_id"].as_str().expect("a request").to_string();

    // A loyalty programme and a member.
    let programme = crate::loyalty::PROGRAMME_JSON.as_bytes().to_vec();
    let (status, _) = app.post_raw("/api/v1/loyalty/programmes", programme, None, Some(&app.admin)).await;
    assert_eq!(status, StatusCode::OK);
    let enrol = serde_json::to_vec(&json!({"identifier": "email:acces@exemple.fr"})).unwrap();
    let (_, enrolled) = app.post_raw("/api/v1/loyalty/members", enrol, None, Some(&app.admin)).await;
    let member = enrolled["id"].as_str().expect("a member").to_string();
    // A reward reserved by the member (the confirm and cancel routes need one).
    let admin = reqwest::Client::new();
    let reward = json!({"id": "bon-10", "name": "Bon de 10 €", "cost": 5, "stock": 100});
    let put = admin.post(format!("{}/api/v1/loyalty/programmes/club/rewards", app.address)).bearer_auth(&app.admin);
    assert_eq!(put.json(&reward).send().await.unwrap().status(), StatusCode::OK);
    let credit =
        admin.post(format!("{}/api/v1/loyalty/members/{member}/adjustments", app.address)).bearer_auth(&app.admin);
    let credit = credit.header("Idempotency-Key", "access-credit").json(&json!({"points": 100, "reason": "test"}));
    assert_eq!(credit.send().await.unwrap().status(), StatusCode::CREATED);
    let reserve =
        admin.post(format!("{}/api/v1/loyalty/members/{member}/redemptions", app.address)).bearer_auth(&app.admin);
    let reserved: Value = reserve
        .header("Idempotency-Key", "access-reward")
        .json(&json!({"reward": "bon-10"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let redemption = reserved["id"].as_str().expect("a reserved reward").to_string();

    // A saved segment (routes with {name}); DELETE gets one of its own per role.
    // A typology "acces" of that segment (routes with {name} under typologies).
    let save_segment = |name: String, typology: bool| {
        let client = reqwest::Client::new();
        let (url, body) = if typology {
            (format!("{}/api/v1/typologies", app.address), json!({"name": name, "segments": ["acces"]}))
        } else {
            (format!("{}/api/v1/segments", app.address), json!({"name": name, "source": "orders >= 0"}))
        };
        let admin = app.admin.clone();
        async move {
            let status = client.post(url).bearer_auth(admin).json(&body).send().await.unwrap().status();
            assert_eq!(status, StatusCode::OK);
        }
    };
    save_segment("acces".into(), false).await;
    save_segment("acces".into(), true).await;

    let mut keys = Vec::new();
    for role in Role::ALL {
        keys.push((role, app.key(role).await));
    }
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut to_erase = 0;
    let mut failures = Vec::new();
    for route in &expected {
        let id = if route.path.starts_with("/api/v1/privacy/requests/") {
            &request
        } else if route.path.starts_with("/api/v1/loyalty/members/") {
            &member
        } else if route.path.starts_with("/api/v1/loyalty/redemptions/") {
            &redemption
        } else {
            &customer
        };
        let path = route
            .path
            .replace("{id}", id)
            .replace("{merge_id}", &merge)
            .replace("{token}", "not-a-token")
            .replace("{key}", "club")
            .replace("{other}", "acces");
        let url = format!("{}{path}", app.address);
        for (role, key) in keys.iter().map(|(r, k)| (Some(*r), Some(k.as_str()))).chain([(None, None)]) {
            let url = if route.method == "DELETE" {
                let name = format!("efface-{}", role.map_or("none", |r| r.as_str()));
                save_segment(name.clone(), route.path.starts_with("/api/v1/typologies")).await;
                url.replace("{name}", &name)
            } else {
                url.replace("{name}", "acces")
            };
            let body = match route.path.as_str() {
                "/api/v1/privacy/erasures" => {
                    to_erase += 1;
                    let email = format!("efface-{to_erase}@exemple.fr");
                    app.batch(json!([{"type": "identify", "userId": format!("efface-{to_erase}"), "traits": {"email": email}}]))
                        .await;
                    json!({ "identifier": format!("email:{email}") })
                }
                "/api/v1/privacy/exports" => json!({ "identifier": "email:acces@exemple.fr" }),
                "/api/v1/privacy/requests" => json!({"kind": "access", "identifier": "email:acces@exemple.fr"}),
                "/api/v1/privacy/requests/{id}/refuse" => json!({"reason": "identity_not_verified"}),
                "/api/v1/customers/{id}/consents" => json!({
                    "purpose": "email_marketing", "channel": "email", "granted": true, "source": "web",
                    "wording_version": "cgu-1", "proof": {"ip": "192.0.2.7", "user_agent": "Firefox"}
                }),
                "/api/v1/customers/{id}/consents/opt-in" => {
                    json!({"purpose": "email_marketing", "wording_version": "cgu-1"})
                }
                "/api/v1/loyalty/programmes" => serde_json::from_str(crate::loyalty::PROGRAMME_JSON).unwrap(),
                "/api/v1/loyalty/members" => json!({"identifier": "email:acces@exemple.fr"}),
                "/api/v1/clv/fit" => json!({"horizon_weeks": 39}),
                "/api/v1/segments" => json!({"name": "acces-2", "source": "orders >= 1"}),
                "/api/v1/segments/preview" => json!({"source": "orders >= 1"}),
                "/api/v1/typologies" => json!({"name": "acces-2", "segments": ["acces"]}),
                "/api/v1/loyalty/members/{id}/quote" => json!({"basket_minor": 1000}),
                "/api/v1/loyalty/programmes/{key}/coupons" => json!({"count": 1, "campaign": {
                    "id": "acces", "benefit": "-5 €", "valid_from": "2026-01-01", "valid_until": "2030-12-31"}}),
                "/api/v1/loyalty/coupons/redeem" => json!({"code": "0000-0000-0000-0", "member": member}),
                "/api/v1/loyalty/programmes/{key}/rewards" => json!({"id": "bon-5", "name": "Bon de 5 €", "cost": 3}),
                "/api/v1/loyalty/members/{id}/redemptions" => json!({"points": 1, "reason": "test"}),
                "/api/v1/loyalty/members/{id}/adjustments" => json!({"points": 5, "reason": "geste commercial"}),
                "/v1/batch" => json!({"batch": [{"type": "track", "userId": "acc-user", "event": "Product Viewed"}]}),
                "/v1/alias" => json!({"userId": "acc-user", "previousId": "acc-device"}),
                "/v1/group" => json!({"userId": "acc-user", "groupId": "famille-acc"}),
                "/v1/identify" => json!({"userId": "acc-user", "traits": {"city": "Lyon"}}),
                "/v1/track" => json!({"userId": "acc-user", "event": "Product Viewed"}),
                _ => json!({"userId": "acc-user", "name": "Accueil"}),
            };
            let mut request = match route.method.as_str() {
                "GET" => client.get(&url),
                "POST" => client.post(&url).json(&body),
                "DELETE" => client.delete(&url),
                other => panic!("unexpected method {other}"),
            };
            match route.path.as_str() {
                "/api/v1/customers" => request = request.query(&[("identifier", "email:acces@exemple.fr")]),
                "/api/v1/consents/check" => {
                    request = request.query(&[("customer", customer.as_str()), ("purpose", "sms"), ("channel", "sms")])
                }
                "/consent/confirm" => request = request.query(&[("token", "not-a-token")]),
                "/api/v1/loyalty/members" if route.method == "GET" => {
                    request = request.query(&[("identifier", "email:acces@exemple.fr")])
                }
                "/api/v1/loyalty/members/{id}/redemptions" | "/api/v1/loyalty/members/{id}/adjustments" => {
                    request =
                        request.header("Idempotency-Key", format!("access-{}", role.map_or("none", |r| r.as_str())))
                }
                _ => {}
            }
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let status = request.send().await.unwrap().status();
            let who = role.map_or("no key".to_string(), |r| r.to_string());
            let allowed = !matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND)
                && !status.is_server_error();
            let fine = match role {
                // Public pages answer everyone (a bad token is the page's own 400).
                _ if route.public => allowed,
                None => status == StatusCode::UNAUTHORIZED,
                Some(role) if route.allowed.contains(&role) => allowed,
                Some(_) => status == StatusCode::FORBIDDEN,
            };
            if !fine {
                failures.push(format!("{} {} as {who}: {status}", route.method, route.path));
            }
        }
    }
    assert!(failures.is_empty(), "answers that break the matrix:\n{}", failures.join("\n"));
}
