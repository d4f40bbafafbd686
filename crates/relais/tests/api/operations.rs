//! Durability, crash recovery, concurrent servers, OpenAPI and metrics.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{place, run_binary, start_binary, TestApp};

#[tokio::test(flavor = "multi_thread")]
async fn the_database_runs_with_durable_commit_settings() {
    let app = TestApp::spawn().await;
    let settings = app.store.run(|engine| engine.durability()).await.unwrap();
    let get = |name: &str| settings.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_lowercase());
    match app.store.engine_name() {
        "sqlite" => {
            assert_eq!(get("journal_mode").as_deref(), Some("wal"));
            // The writer commits without syncing and every caller waits for the
            // log's fdatasync before its answer (store/sqlite/log_flush.rs).
            assert_eq!(get("synchronous").as_deref(), Some("normal"));
            assert_eq!(get("log_flush").as_deref(), Some("fdatasync before acknowledgement"));
        }
        _ => {
            assert_eq!(get("synchronous_commit").as_deref(), Some("on"));
            assert_eq!(get("fsync").as_deref(), Some("on"));
        }
    }
}

/// SQLite's page cache is wrapped and its log's writes gathered (see
/// `store/sqlite/page_cache.rs` and `log_writes.rs`); the database must stay
/// whole through commits that split pages.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_stays_whole_under_the_wrapped_page_cache_and_gathered_log_writes() {
    let app = TestApp::spawn().await;
    let relais::store::Location::Folder(folder) = &app.scratch.location else {
        return;
    };
    for round in 0..30 {
        // Message ids and people spread over the key space, so inserts split pages
        // all over the indexes.
        let messages: Vec<Value> = (0..100)
            .map(|i| {
                let n: usize = (round * 100 + i) * 7919 % 3001;
                json!({"type": "track", "userId": format!("p{}", n % 97), "event": "Product Viewed",
                    "messageId": format!("{:08x}-split", n.wrapping_mul(2_654_435_761_u64 as usize)),
                    "properties": {"padding": "x".repeat(200 + n % 300)}})
            })
            .collect();
        let (status, answer) = app.batch(json!(messages)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let (installed, skipped) = relais::store::sqlite::page_cache_wrapper();
    assert!(installed, "the wrapper is installed before SQLite's first use");
    assert!(skipped > 0, "commits whose truncation has nothing to drop skip it");
    assert!(relais::store::sqlite::log_writes_shim(), "the log's writes are gathered by the default VFS");
    let conn = rusqlite::Connection::open(folder.join("relais.db")).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let events: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0)).unwrap();
    assert_eq!(events, 3000);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acknowledged_batch_survives_kill_9_of_the_server() {
    let app = TestApp::spawn().await;
    let location = place(&app.scratch);
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

    let (mut restarted, _) = start_binary(&location);
    let mut total = 0;
    for user in 0..10 {
        let id = app.customer_by(&format!("user_id:k{user}")).await["id"].as_str().unwrap().to_string();
        total += app.all_events(&id).await.len();
    }
    assert_eq!(total, 200);
    restarted.kill().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_racing_on_new_identifiers_make_one_profile_per_person() {
    let app = TestApp::spawn().await;
    // Two more server processes on the same database, beside the in-process one.
    let location = place(&app.scratch);
    let (mut first_process, first) = tokio::task::spawn_blocking({
        let l = location.clone();
        move || start_binary(&l)
    })
    .await
    .unwrap();
    let (mut second_process, second) = tokio::task::spawn_blocking(move || start_binary(&location)).await.unwrap();
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for round in 0..12 {
        for server in [first.clone(), second.clone(), app.address.clone()] {
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
    assert_eq!(stored, 12 * 40, "each messageId is stored exactly once across the servers");
    for process in [&mut first_process, &mut second_process] {
        process.kill().unwrap();
    }
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
    // Every route the router serves (but the document itself) is described,
    // with its method.
    for route in relais::http::routes().iter().filter(|r| r.path != "/api/openapi.json") {
        let method = route.method.to_lowercase();
        assert!(
            paths.get(route.path).and_then(|p| p.get(&method)).is_some(),
            "{} {} missing from the OpenAPI document",
            route.method,
            route.path
        );
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

#[tokio::test(flavor = "multi_thread")]
async fn importing_files_stores_good_rows_reports_bad_ones_and_never_twice() {
    let app = TestApp::spawn().await;
    let location = place(&app.scratch);
    let folder = tempfile::tempdir().unwrap();
    let customers = folder.path().join("clients.csv");
    std::fs::write(
        &customers,
        "customer_number,email,phone,first_name,city\n\
         C-100,lea@example.fr,06 11 22 33 44,Léa,Lyon\n\
         C-101,not-an-email,,Hugo,Nantes\n\
         ,,,Personne,Paris\n",
    )
    .unwrap();
    let events = folder.path().join("ventes.csv");
    std::fs::write(
        &events,
        "type,anonymousId,event,messageId,properties.total,properties.currency,context.traits.customer_number,context.store\n\
         track,till-1,Order Completed,v-1,42.5,EUR,C-100,lyon-part-dieu\n\
         track,,Order Completed,v-2,10,EUR,,\n",
    )
    .unwrap();
    let jsonl = folder.path().join("messages.jsonl");
    std::fs::write(&jsonl, "{\"type\":\"page\",\"userId\":\"j1\",\"messageId\":\"j-1\"}\n{oops\n").unwrap();

    let args = |kind: &str, file: &std::path::Path| {
        let location = location.clone();
        let (kind, file) = (kind.to_string(), file.to_path_buf());
        tokio::task::spawn_blocking(move || run_binary(&location, &["import", &kind, file.to_str().unwrap()]))
    };
    let (ok, _, stderr) = args("customers", &customers).await.unwrap();
    assert!(ok, "{stderr}");
    assert!(stderr.contains("1 stored, 0 duplicates, 2 rejected"), "{stderr}");
    let rejects = std::fs::read_to_string(folder.path().join("clients.csv.rejected.jsonl")).unwrap();
    assert!(rejects.contains("traits.email") && rejects.contains("no identifier"), "{rejects}");
    let (ok, _, stderr) = args("customers", &customers).await.unwrap();
    assert!(ok && stderr.contains("0 stored, 1 duplicates"), "re-import: {stderr}");

    let (ok, _, stderr) = args("events", &events).await.unwrap();
    assert!(ok && stderr.contains("1 stored, 0 duplicates, 1 rejected"), "{stderr}");
    let (ok, _, stderr) = args("events", &jsonl).await.unwrap();
    assert!(ok && stderr.contains("1 stored, 0 duplicates, 1 rejected"), "{stderr}");

    let lea = app.customer_by("customer_number:C-100").await;
    assert_eq!(lea["id"], app.customer_by("phone:+33611223344").await["id"]);
    assert_eq!(lea["profile"]["city"], "Lyon");
    assert_eq!(lea["traits"]["revenue_minor"], 4250);
    assert_eq!(lea["traits"]["favourite_store"], "lyon-part-dieu");
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_starting_together_on_a_new_database_all_come_up() {
    let scratch =
        tokio::task::spawn_blocking(|| relais::store::scratch::Scratch::for_tests("migrate").unwrap()).await.unwrap();
    let location = place(&scratch);
    let children = tokio::task::spawn_blocking(move || {
        let starts: Vec<_> = (0..3)
            .map(|_| {
                std::thread::spawn({
                    let l = location.clone();
                    move || start_binary(&l)
                })
            })
            .collect();
        starts.into_iter().map(|s| s.join().unwrap()).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (mut child, address) in children {
        let health: Value = reqwest::get(format!("{address}/healthz")).await.unwrap().json().await.unwrap();
        assert_eq!(health["status"], "ok");
        child.kill().unwrap();
    }
    drop(scratch);
}
