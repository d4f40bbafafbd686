//! Journeys: the founding text's what-if and attribution from the command line,
//! a model estimated from a journey file, and the API (JSON, problems, SVG).

use std::process::Command;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::TestApp;

const FOUNDING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/journeys/founding-text.json");

/// Runs the binary; returns (success, stdout, stderr).
fn relais(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_relais")).args(args).output().expect("run relais");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn near(value: &Value, expected: f64, tolerance: f64) -> bool {
    value.as_f64().is_some_and(|v| (v - expected).abs() <= tolerance)
}

#[test]
fn the_founding_example_what_if_prints_the_golden_shares_from_the_command_line() {
    let (ok, out, err) = relais(&[
        "journey",
        "whatif",
        FOUNDING,
        "--into",
        "evaluation",
        "--channel",
        "social",
        "--share",
        "0.2",
        "--op",
        "mix",
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let purchase = &report["scenario"]["purchase"];
    for (channel, share) in
        [("search", 0.0), ("social", 0.0320), ("web", 0.4230), ("catalogue", 0.2493), ("store", 0.2957)]
    {
        assert!(near(&purchase[channel], share, 5e-5), "{channel}: {purchase}");
    }
    assert!(near(&report["baseline"]["evaluation"]["search"], 0.02, 1e-9), "{report}");
    assert_eq!(report["change_pct"]["search"], Value::Null, "no baseline sales: no percentage");
    assert!(near(&report["change_pct"]["store"], -11.80, 5e-3), "{report}");
    // A share outside [0, 1] and an unknown stage are refused with the fix.
    let (ok, _, err) =
        relais(&["journey", "whatif", FOUNDING, "--into", "decision", "--channel", "web", "--share", "1.5"]);
    assert!(!ok && err.contains("outside [0, 1]"), "{err}");
    let (ok, _, err) =
        relais(&["journey", "whatif", FOUNDING, "--into", "sharing", "--channel", "web", "--share", "0.1"]);
    assert!(!ok && err.contains("`purchase`"), "{err}");
}

#[test]
fn attribution_from_a_path_file_prints_every_model_and_refuses_foreign_separators() {
    let folder = tempfile::tempdir().unwrap();
    let file = folder.path().join("paths.csv");
    // start→A 4, start→B 4, A→B 4, B→conversion 3: A's removal halves conversions.
    std::fs::write(&file, "path,total_conversions,total_conversion_value,total_null\nA > B,2,20,2\nB,1,40,3\n")
        .unwrap();
    let (ok, out, err) = relais(&["journey", "attribute", file.to_str().unwrap(), "--format", "json"]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(near(&report["markov"]["A"]["conversions"], 1.0, 1e-9), "{report}");
    assert!(near(&report["markov"]["B"]["value"], 40.0, 1e-9), "{report}");
    assert!(near(&report["first_touch"]["A"]["conversions"], 2.0, 0.0), "{report}");
    assert!(near(&report["last_touch"]["B"]["conversions"], 3.0, 0.0), "{report}");
    assert!(near(&report["linear"]["A"]["value"], 10.0, 1e-12), "{report}");
    let (ok, table, _) = relais(&["journey", "attribute", file.to_str().unwrap(), "--order", "2"]);
    assert!(ok && table.contains("markov (k=2)") && table.lines().any(|l| l.starts_with("A ")), "{table}");
    std::fs::write(&file, "path,total_conversions,total_null\nA > B,2,2\nA -> C,1,0\n").unwrap();
    let (ok, _, err) = relais(&["journey", "attribute", file.to_str().unwrap()]);
    assert!(!ok && err.contains("line 3") && err.contains("`->`"), "{err}");
    let (ok, _, err) = relais(&["journey", "attribute", file.to_str().unwrap(), "--order", "5"]);
    assert!(!ok && err.contains("from 1 to 4"), "{err}");
}

#[test]
fn a_model_estimated_from_journeys_feeds_a_what_if() {
    let folder = tempfile::tempdir().unwrap();
    let journeys = folder.path().join("journeys.csv");
    let mut csv = String::from("journey_id,stage,channel\n");
    for j in 0..60 {
        let first = ["web", "social", "store"][j % 3];
        let second = if j % 4 == 0 { "store" } else { "web" };
        csv.push_str(&format!("j{j},information,{first}\nj{j},evaluation,{second}\n"));
        if j % 5 != 0 {
            csv.push_str(&format!("j{j},purchase,{second}\n"));
        }
    }
    std::fs::write(&journeys, csv).unwrap();
    let model = folder.path().join("model.json");
    let (ok, _, err) = relais(&[
        "journey",
        "model",
        "--journeys",
        journeys.to_str().unwrap(),
        "--stages",
        "information,evaluation,purchase",
        "--replicates",
        "50",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
    assert_eq!(written["journeys"], 60);
    assert_eq!(written["purchasers"], 48);
    assert_eq!(written["counts"]["initial"], json!([20, 20, 20]));
    assert_eq!(written["intervals"]["replicates"], 50);
    let model_path = model.to_str().unwrap();
    let what_if = |op: &str| {
        relais(&[
            "journey",
            "whatif",
            model_path,
            "--into",
            "purchase",
            "--channel",
            "store",
            "--share",
            "0.5",
            "--op",
            op,
            "--format",
            "json",
        ])
    };
    let (ok, out, err) = what_if("mix");
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let baseline = report["baseline"]["purchase"]["store"].as_f64().unwrap();
    assert!(near(&report["scenario"]["purchase"]["store"], 0.5 + 0.5 * baseline, 1e-12), "{report}");
    // Everyone who evaluated in store bought in store: "set share" cannot rescale that row.
    let (ok, _, err) = what_if("set");
    assert!(!ok && err.contains("row `store` sends everyone to `store`"), "{err}");
    // With the default stages nobody reached `decision`: the stage is named. An
    // event at a stage the model does not list is refused with its line.
    let (ok, _, err) =
        relais(&["journey", "model", "--journeys", journeys.to_str().unwrap(), "-o", model.to_str().unwrap()]);
    assert!(!ok && err.contains("stage `decision` has no data"), "{err}");
    let (ok, _, err) = relais(&[
        "journey",
        "model",
        "--journeys",
        journeys.to_str().unwrap(),
        "--stages",
        "information,evaluation",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("line 6: unknown stage `purchase`"), "{err}");
}

async fn post_as(app: &TestApp, key: &str, path: &str, body: &Value) -> (StatusCode, String, String) {
    let response =
        app.client.post(format!("{}{path}", app.address)).bearer_auth(key).json(body).send().await.expect("request");
    let status = response.status();
    let kind = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, kind, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_what_ifs_attribution_problems_and_pictures() {
    let app = TestApp::spawn().await;
    let model: Value = serde_json::from_str(&std::fs::read_to_string(FOUNDING).unwrap()).unwrap();
    let analyst = app.key(relais_domain::Role::Analyst).await;
    let body = json!({"model": model, "what_ifs": [
        {"into_stage": "decision", "op": "set", "channel": "social", "share": 0.2}
    ]});
    let (status, _, text) = post_as(&app, &analyst, "/api/v1/journeys/whatif", &body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let report: Value = serde_json::from_str(&text).unwrap();
    assert!(near(&report["scenario"]["purchase"]["catalogue"], 0.2681, 5e-5), "{report}");
    assert!(near(&report["change_pct"]["catalogue"], 10.41, 5e-3), "{report}");
    assert_eq!(report["change_pct"]["search"], Value::Null);

    // Bad input: problem documents naming the field.
    let bad_share = json!({"model": model, "what_ifs": [{"into_stage": "decision", "op": "mix", "channel": "social", "share": 1.5}]});
    let (status, kind, text) = post_as(&app, &analyst, "/api/v1/journeys/whatif", &bad_share).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(kind.starts_with("application/problem+json"), "{kind}");
    assert!(text.contains("outside [0, 1]"), "{text}");
    let mut broken = model.clone();
    broken["transitions"][0][0] = json!([0.5, 0.5, 0.5, 0.0, 0.0]);
    let (status, _, text) =
        post_as(&app, &analyst, "/api/v1/journeys/whatif", &json!({"model": broken, "what_ifs": []})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let problem: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(problem["errors"][0]["field"], "model", "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("row `search` of information → evaluation"), "{problem}");

    let paths = json!({"order": 2, "paths": [
        {"path": "A > B", "total_conversions": 2, "total_conversion_value": 20, "total_null": 2},
        {"path": "B", "total_conversions": 1, "total_conversion_value": 40, "total_null": 3}
    ]});
    let (status, _, text) = post_as(&app, &analyst, "/api/v1/journeys/attribution", &paths).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let attribution: Value = serde_json::from_str(&text).unwrap();
    for model in ["first_touch", "last_touch", "linear", "markov"] {
        assert!(attribution[model]["B"]["conversions"].as_f64().unwrap() > 0.0, "{attribution}");
    }
    assert_eq!(attribution["order"], 2);
    let empty = json!({"paths": [{"path": "A", "total_conversions": 1}, {"path": " ", "total_conversions": 1}]});
    let (status, _, text) = post_as(&app, &analyst, "/api/v1/journeys/attribution", &empty).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let problem: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(problem["errors"][0]["field"], "paths[1]", "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("empty path"), "{problem}");
    let negative = json!({"paths": [{"path": "A", "total_conversions": -1}]});
    let (status, _, text) = post_as(&app, &analyst, "/api/v1/journeys/attribution", &negative).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");

    // Pictures: server-drawn SVG, no script.
    let (status, kind, sankey) = post_as(&app, &analyst, "/api/v1/journeys/sankey.svg", &json!({"model": model})).await;
    assert_eq!(status, StatusCode::OK, "{sankey}");
    assert_eq!(kind, "image/svg+xml");
    assert!(sankey.starts_with("<svg") && sankey.contains("catalogue") && !sankey.contains("<script"), "{sankey:.300}");
    assert!(sankey.matches("<path").count() >= 40, "bands between stages");
    let (status, kind, bars) = post_as(&app, &analyst, "/api/v1/journeys/whatif.svg", &body).await;
    assert_eq!((status, kind.as_str()), (StatusCode::OK, "image/svg+xml"));
    assert!(bars.contains("set share: social gets 20%") && bars.contains("n/a"), "{bars:.500}");
    // The store role has no analytics.
    let store_key = app.key(relais_domain::Role::Store).await;
    let (status, _, _) = post_as(&app, &store_key, "/api/v1/journeys/whatif", &body).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

fn logged(user: &str, kind: &str, event: Option<&str>, days_ago: i64, channel: &str) -> Value {
    let at = (chrono::Utc::now() - chrono::Duration::days(days_ago)).to_rfc3339();
    let mut message = json!({"type": kind, "userId": user, "timestamp": at, "context": {"channel": channel}});
    if let Some(event) = event {
        message["event"] = json!(event);
    }
    if event == Some("Order Completed") {
        message["properties"] = json!({"order_id": format!("{user}-{days_ago}"), "total": 20.0, "currency": "EUR"});
    }
    message
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stage_model_is_built_from_the_stored_event_log() {
    let app = TestApp::spawn().await;
    let (status, answer) = app
        .batch(json!([
            logged("u1", "page", None, 10, "web"),
            logged("u1", "track", Some("Product Added"), 9, "web"),
            logged("u1", "track", Some("Order Completed"), 8, "store"),
            logged("u1", "page", None, 3, "web"), // after a purchase: a new journey
            logged("u2", "screen", None, 10, "app"),
            logged("u2", "track", Some("Product Added"), 9, "app"),
            logged("u2", "track", Some("Order Completed"), 9, "app"),
            logged("u3", "page", None, 20, "social"),
            logged("u3", "track", Some("Store Visited"), 19, "store"), // no purchase
            logged("u3", "identify", None, 19, "web"),                 // not a journey event
            // Two profiles, merged later: one journey under the survivor.
            json!({"type": "page", "anonymousId": "dev-4", "context": {"channel": "social"},
                   "timestamp": (chrono::Utc::now() - chrono::Duration::days(12)).to_rfc3339()}),
            logged("u4", "track", Some("Product Added"), 11, "web"),
            json!({"type": "identify", "userId": "u4", "anonymousId": "dev-4"}),
            logged("u4", "track", Some("Order Completed"), 10, "store"),
        ]))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let place = crate::helpers::place(&app.scratch);
    let folder = tempfile::tempdir().unwrap();
    let model = folder.path().join("model.json");
    let model_path = model.to_str().unwrap().to_string();
    let (built, recent) = tokio::task::spawn_blocking(move || {
        let stages = ["journey", "model", "--stages", "information,evaluation,purchase", "-o", &model_path];
        let built = crate::helpers::run_binary(&place, &stages);
        let from = (chrono::Utc::now() - chrono::Duration::days(5)).to_rfc3339();
        let mut recent = stages.to_vec();
        recent.extend(["--from", &from]);
        (built, crate::helpers::run_binary(&place, &recent))
    })
    .await
    .unwrap();
    assert!(built.0, "{}", built.2);
    assert!(built.2.contains("12 events read"), "{}", built.2);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
    assert_eq!(written["journeys"], 5, "{written}");
    assert_eq!(written["purchasers"], 3, "{written}");
    let channels: Vec<&str> = written["channels"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    let at = |name: &str| channels.iter().position(|c| *c == name).unwrap();
    // Evaluated in store, no purchase (u3).
    assert_eq!(written["counts"]["transitions"][1][at("app")][at("app")], 1, "{written}");
    assert_eq!(written["counts"]["initial"][at("web")], 2, "{written}");
    // The merged profiles' events make one journey: social, then web, then store.
    assert_eq!(written["counts"]["transitions"][0][at("social")][at("web")], 1, "{written}");
    assert_eq!(written["counts"]["transitions"][1][at("web")][at("store")], 2, "{written}");
    // Only u1's last page is recent: nobody evaluated since.
    assert!(!recent.0 && recent.2.contains("stage `evaluation` has no data"), "{}", recent.2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_estimates_the_stage_model_from_the_event_log_or_a_csv() {
    let app = TestApp::spawn().await;
    let (status, answer) = app
        .batch(json!([
            logged("a1", "page", None, 10, "web"),
            logged("a1", "track", Some("Product Added"), 9, "web"),
            logged("a1", "track", Some("Order Completed"), 8, "store"),
            logged("a2", "screen", None, 10, "app"),
            logged("a2", "track", Some("Product Added"), 9, "app"),
        ]))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let stages = json!(["information", "evaluation", "purchase"]);
    let (status, _, body) =
        post_as(&app, &app.admin, "/api/v1/journeys/model", &json!({"stages": stages, "replicates": 50})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let model: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((model["journeys"].as_u64(), model["purchasers"].as_u64()), (Some(2), Some(1)), "{model}");
    assert_eq!(model["events_read"], 5);
    assert_eq!(model["intervals"]["initial"].as_array().unwrap().len(), model["channels"].as_array().unwrap().len());
    // The answer is a model the what-if endpoint takes.
    let what_if = json!({"model": model.clone(), "what_ifs": [{"into_stage": "purchase", "op": "mix", "channel": "web", "share": 0.5}]});
    assert_eq!(post_as(&app, &app.admin, "/api/v1/journeys/whatif", &what_if).await.0, StatusCode::OK);

    let csv = "journey_id,stage,channel\nj1,information,web\nj1,evaluation,store\nj1,purchase,store\nj2,information,app\nj2,evaluation,app\n";
    let (status, _, body) =
        post_as(&app, &app.admin, "/api/v1/journeys/model", &json!({"stages": stages, "journeys": csv})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = post_as(
        &app,
        &app.admin,
        "/api/v1/journeys/model",
        &json!({"stages": stages, "journeys": "journey_id,stage\nj1,information\n"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("\"field\":\"journeys\"") && body.contains("channel"), "{body}");
    let (status, _, body) = post_as(&app, &app.admin, "/api/v1/journeys/model", &json!({"segment": "personne"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _, body) = post_as(&app, &app.admin, "/api/v1/journeys/model", &json!({"replicates": 5000})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, body) =
        post_as(&app, &app.admin, "/api/v1/journeys/model", &json!({"stages": ["information", "sharing"]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no journey reaches sharing: {body}");
}
