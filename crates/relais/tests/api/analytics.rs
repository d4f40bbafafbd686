//! Customer lifetime value through the command line (on the CDNOW files the
//! published figures come from) and through the API (on the database's orders).

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{place, run_binary, TestApp};

const CDNOW: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/cdnow");

fn close(value: &Value, expected: f64, tolerance: f64) -> bool {
    let got = value.as_f64().unwrap_or(f64::NAN);
    ((got - expected) / expected).abs() <= tolerance
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_line_fits_the_cdnow_panel_as_published() {
    let app = TestApp::spawn().await;
    let location = place(&app.scratch);
    let folder = tempfile::tempdir().unwrap();
    // The 1/10 sample as a CSV of (customer, date, amount), with a bad row.
    let mut csv = String::from("customer_id,date,amount\n");
    for line in std::fs::read_to_string(format!("{CDNOW}/CDNOW_sample.txt")).unwrap().lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        csv.push_str(&format!("{},{},{}\n", f[1], f[2], f[4]));
    }
    csv.push_str("9999,31/02/1997,12.00\n");
    let sample = folder.path().join("sample.csv");
    std::fs::write(&sample, csv).unwrap();
    let predictions = folder.path().join("predictions.csv");
    let (sample, predictions_path) = (sample.to_str().unwrap().to_string(), predictions.to_str().unwrap().to_string());
    let (fitted, master) = tokio::task::spawn_blocking(move || {
        let common = ["--calibration-end", "1997-09-30", "--horizon-weeks", "39", "--currency", "USD"];
        let mut args = vec!["clv", "fit", "--transactions", &sample, "--predictions", &predictions_path];
        args.extend(common);
        let fitted = run_binary(&location, &args);
        let master_file = format!("{CDNOW}/CDNOW_master.txt");
        let mut args = vec!["clv", "fit", "--transactions", &master_file];
        args.extend(common);
        (fitted, run_binary(&location, &args))
    })
    .await
    .unwrap();
    assert!(fitted.0, "{}", fitted.2);
    assert!(fitted.2.contains("is not a date"), "the bad row is reported: {}", fitted.2);
    let fit: Value = serde_json::from_str(fitted.1.lines().last().unwrap()).unwrap();
    for (name, expected) in [("r", 0.243), ("alpha", 4.414), ("a", 0.793), ("b", 2.426)] {
        assert!(close(&fit[name], expected, 0.01), "{name}: {fit}");
    }
    assert!((fit["log_likelihood"].as_f64().unwrap() + 9582.4).abs() <= 0.1, "{fit}");
    for (name, expected) in [("p", 6.2488), ("q", 3.7446), ("v", 15.4477)] {
        assert!(close(&fit[name], expected, 0.01), "{name}: {fit}");
    }
    assert_eq!((fit["customers"].as_u64(), fit["rejected_rows"].as_u64()), (Some(2357), Some(1)));
    // Customer 0001 (ID 1 of the published summary): 1.22591 expected purchases in 39 weeks.
    let rows = std::fs::read_to_string(&predictions).unwrap();
    let first: Vec<&str> = rows.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(first[0], "0001");
    assert!((first[2].parse::<f64>().unwrap() / 1.22591 - 1.0).abs() < 0.01, "{rows:.200}");
    assert!((first[1].parse::<f64>().unwrap() - 0.726609).abs() < 0.005);

    assert!(master.0, "{}", master.2);
    let fit: Value = serde_json::from_str(master.1.lines().last().unwrap()).unwrap();
    for (name, expected) in [("r", 0.2516), ("alpha", 4.7889), ("a", 0.7234), ("b", 2.1611)] {
        assert!(close(&fit[name], expected, 0.01), "{name}: {fit}");
    }
    assert_eq!(fit["customers"], 23570);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_fits_the_database_orders_or_says_why_it_cannot() {
    let app = TestApp::spawn().await;
    let fit = |body: Value| {
        let (client, url, key) = (app.client.clone(), format!("{}/api/v1/clv/fit", app.address), app.admin.clone());
        async move {
            let response = client.post(url).bearer_auth(key).json(&body).send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    // Too little data: a clear message, never NaN.
    let (status, problem) = fit(json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("at least"), "{problem}");
    // Bad input names the field.
    let (status, problem) = fit(json!({"horizon_weeks": -1})).await;
    assert_eq!((status, problem["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("horizon_weeks")));
    let (status, problem) = fit(json!({"horizon": 3})).await;
    assert_eq!(
        (status, problem["errors"][0]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("horizon")),
        "{problem}"
    );
    let (status, problem) = fit(json!({"calibration_end": "hier"})).await;
    assert_eq!((status, problem["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("calibration_end")));

    // 60 customers over a year, some coming back.
    let start = chrono::DateTime::parse_from_rfc3339("2025-01-06T10:00:00Z").unwrap();
    let mut messages = Vec::new();
    for person in 0..60 {
        let visits = 1 + person % 5;
        for visit in 0..visits {
            let at = start + chrono::Duration::days((person * 3 + visit * (20 + person % 7)) as i64);
            messages.push(json!({"type": "track", "userId": format!("client-{person}"), "event": "Order Completed",
                "timestamp": at.to_rfc3339(), "messageId": format!("o-{person}-{visit}"),
                "properties": {"order_id": format!("{person}-{visit}"), "total": 20.0 + (person % 9) as f64 * 3.5 + visit as f64, "currency": "EUR"}}));
        }
    }
    let (status, answer) = app.batch(Value::Array(messages)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, body) = fit(json!({"calibration_end": "2025-12-31", "horizon_weeks": 26, "top": 5})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["fit"]["customers"], 60);
    for name in ["r", "alpha", "a", "b", "p", "q", "v"] {
        assert!(body["fit"][name].as_f64().is_some_and(|v| v.is_finite() && v > 0.0), "{name}: {body}");
    }
    let top = body["top"].as_array().unwrap();
    assert_eq!(top.len(), 5);
    assert!(top[0]["customer"].as_str().unwrap().starts_with("cus_"));
    assert!(top[0]["expected_value"].as_f64().unwrap() >= top[4]["expected_value"].as_f64().unwrap());

    // RFM over the same orders: every buyer scored, each in one named group,
    // quintiles of 12 customers each.
    let response = app.client.post(format!("{}/api/v1/rfm", app.address)).bearer_auth(&app.admin).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let rfm: Value = response.json().await.unwrap();
    assert_eq!(rfm["customers"], 60, "{rfm}");
    let groups = rfm["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 11);
    assert_eq!(groups.iter().map(|g| g["customers"].as_u64().unwrap()).sum::<u64>(), 60, "{rfm}");
}
