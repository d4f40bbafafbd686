//! Durability, crash recovery, concurrent servers, OpenAPI and metrics.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use relais::config::Settings;
use relais::store::{Location, Store};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{serve, TestApp};

#[tokio::test(flavor = "multi_thread")]
async fn the_database_runs_with_durable_commit_settings() {
    let app = TestApp::spawn().await;
    let settings = app.store.run(|engine| engine.durability()).await.unwrap();
    let get = |name: &str| settings.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_lowercase());
    match app.store.engine_name() {
        "sqlite" => {
            assert_eq!(get("journal_mode").as_deref(), Some("wal"));
            assert_eq!(get("synchronous").as_deref(), Some("full"));
        }
        _ => {
            assert_eq!(get("synchronous_commit").as_deref(), Some("on"));
            assert_eq!(get("fsync").as_deref(), Some("on"));
        }
    }
}

/// Start the real binary on port 0 and return it with its address.
fn start_binary(location: &Location) -> (std::process::Child, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_relais"));
    command.arg("serve").arg("--listen").arg("127.0.0.1:0");
    match location {
        Location::Folder(folder) => command.arg("--data").arg(folder),
        Location::Postgres(url) => command.arg("--database-url").arg(url),
    };
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start relais");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("banner");
    let address = line.split_whitespace().find(|w| w.starts_with("http://")).expect("address in banner").to_string();
    (child, address)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acknowledged_batch_survives_kill_9_of_the_server() {
    let app = TestApp::spawn().await;
    let location = app.scratch.location.clone();
    let (mut child, address) = start_binary(&location);
    let messages: Vec<Value> = (0..200)
        .map(|i| json!({"type": "track", "userId": format!("k{}", i % 10), "event": "Product Viewed", "messageId": format!("kill-{i}")}))
        .collect();
    let response = reqwest::Client::new()
        .post(format!("{address}/v1/batch"))
        .basic_auth(&app.ingest, Some(""))
        .json(&json!({ "batch": messages }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["stored"], 200);
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    let (mut restarted, _) = start_binary(&location);
    let mut total = 0;
    for user in 0..10 {
        let id = app.customer_by(&format!("user_id:k{user}")).await["id"].as_str().unwrap().to_string();
        total += app.all_events(&id).await.len();
    }
    assert_eq!(total, 200);
    restarted.kill().unwrap();
    restarted.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_racing_on_new_identifiers_make_one_profile_per_person() {
    let app = TestApp::spawn().await;
    // A second, independent server process-equivalent: its own store handle,
    // pool and writer on the same database.
    let location = app.scratch.location.clone();
    let second_store =
        tokio::task::spawn_blocking(move || Store::open(&location, Settings::default().ingest).unwrap()).await.unwrap();
    let (second, _stop) = serve(second_store).await;
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for round in 0..12 {
        for server in [app.address.clone(), second.clone()] {
            let client = client.clone();
            let key = app.ingest.clone();
            tasks.push(tokio::spawn(async move {
                let messages: Vec<Value> = (0..40)
                    .map(|i| {
                        json!({"type": "identify", "userId": format!("race-{}", (i + round) % 25),
                               "anonymousId": format!("dev-{}", (i * 7 + round) % 25),
                               "traits": {"email": format!("race{}@example.fr", (i + round) % 25)},
                               // Rounds overlap in message ids, and both servers get the same ones.
                               "messageId": format!("race-{round}-{i}")})
                    })
                    .collect();
                let response = client
                    .post(format!("{server}/v1/batch"))
                    .basic_auth(key, Some(""))
                    .json(&json!({"batch": messages}));
                let response = response.send().await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                response.json::<Value>().await.unwrap()
            }));
        }
    }
    let mut stored = 0;
    for task in tasks {
        stored += task.await.unwrap()["stored"].as_u64().unwrap();
    }
    assert_eq!(stored, 12 * 40, "each messageId is stored exactly once across both servers");
    // Every identifier resolves to a live profile, and the events add up.
    let mut customers = std::collections::BTreeSet::new();
    for n in 0..25 {
        for identifier in [format!("user_id:race-{n}"), format!("email:race{n}@example.fr")] {
            customers.insert(app.customer_by(&identifier).await["id"].as_str().unwrap().to_string());
        }
    }
    let mut events = 0;
    for customer in &customers {
        events += app.all_events(customer).await.len();
    }
    assert_eq!(events, 12 * 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_describes_every_route() {
    let app = TestApp::spawn().await;
    let document: Value =
        reqwest::get(format!("{}/api/openapi.json", app.address)).await.unwrap().json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    for route in [
        "/healthz",
        "/metrics",
        "/v1/identify",
        "/v1/track",
        "/v1/page",
        "/v1/screen",
        "/v1/group",
        "/v1/alias",
        "/v1/batch",
        "/api/v1/customers",
        "/api/v1/customers/{id}",
        "/api/v1/customers/{id}/events",
        "/api/v1/customers/{id}/merges",
    ] {
        assert!(paths.contains_key(route), "{route} missing from the OpenAPI document");
    }
    let (status, problem) = app.get("/api/v1/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem["status"], 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_ingested_and_rejected_events() {
    let app = TestApp::spawn().await;
    app.batch(json!([{"type": "track", "userId": "m", "event": "x"}, {"type": "track", "event": "x"}])).await;
    let response =
        reqwest::Client::new().get(format!("{}/metrics", app.address)).bearer_auth(&app.admin).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(text.contains("relais_events_ingested_total 1"), "{text}");
    assert!(text.contains("relais_events_rejected_total 1"), "{text}");
    assert!(
        text.contains("relais_http_requests_total{method=\"POST\",route=\"/v1/batch\",status=\"200\"} 1"),
        "{text}"
    );
    let (status, _) = app.get_as("/metrics", &app.ingest).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, health) = app.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
}
