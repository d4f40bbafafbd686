//! The audit log: reads and rights are recorded before they happen; the chain
//! detects edited, removed and truncated records; a failed audit write fails
//! the action.

use relais::privacy::audit::verify;
use relais_domain::Role;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{place, raw_execute, run_binary, urlencode, TestApp};

#[tokio::test(flavor = "multi_thread")]
async fn reads_are_audited_and_tampering_is_found_where_it_happened() {
    let app = TestApp::spawn().await;
    let (status, _) =
        app.batch(json!([{"type": "identify", "userId": "audit-1", "traits": {"email": "audit@exemple.fr"}}])).await;
    assert_eq!(status, StatusCode::OK);
    let agent = app.key(Role::Agent).await;
    let id = app.customer_by("email:audit@exemple.fr").await["id"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let (status, _) = app.get_as(&format!("/api/v1/customers/{id}"), &agent).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = app.get_as(&format!("/api/v1/customers/{id}/events"), &agent).await;
    assert_eq!(status, StatusCode::OK);

    let target = place(&app.scratch);
    let (ok, stdout, stderr) =
        tokio::task::spawn_blocking(move || run_binary(&target, &["audit", "verify"])).await.unwrap();
    assert!(ok, "{stdout}{stderr}");
    assert!(stderr.contains("audit log intact"), "{stderr}");

    let store = app.store.clone();
    let location = app.scratch.location.clone();
    let customer: relais_domain::CustomerId = id.parse().unwrap();
    tokio::task::spawn_blocking(move || {
        let engine = store.blocking();
        let trail = engine.audit_trail(&[customer]).unwrap();
        let reads: Vec<_> = trail.iter().filter(|r| r.action == "customer.read").collect();
        assert_eq!(reads.len(), 4, "the admin lookup and three reads by the agent: {trail:?}");
        assert!(trail.iter().any(|r| r.action == "customer.events"));
        assert!(trail.iter().all(|r| !r.detail.contains("audit@exemple.fr")), "no personal data in the chain");
        let intact = verify(engine, store.audit_dir()).unwrap();
        assert!(intact.findings.is_empty(), "{:?}", intact.findings);
        assert!(intact.records >= 5);

        let segment = trail[0].segment_id.clone();
        let records = engine.audit_records(&segment).unwrap();
        let last = records.last().unwrap().seq;
        assert!(last >= 5);

        // Edit a record: found at that record.
        raw_execute(&location, &format!("UPDATE audit_log SET detail = '{{}}' WHERE segment_id = '{segment}' AND seq = 2"));
        let found = verify(engine, store.audit_dir()).unwrap().findings;
        assert!(found.iter().any(|f| f.seq == Some(2) && f.problem.contains("edited")), "{found:?}");

        // Remove one in the middle: the gap and the broken link are found.
        raw_execute(&location, &format!("DELETE FROM audit_log WHERE segment_id = '{segment}' AND seq = 3"));
        let found = verify(engine, store.audit_dir()).unwrap().findings;
        assert!(found.iter().any(|f| f.seq == Some(3) && f.problem.contains("missing")), "{found:?}");

        // Cut the tail: only the head kept outside the database can tell.
        raw_execute(&location, &format!("DELETE FROM audit_log WHERE segment_id = '{segment}' AND seq = {last}"));
        let found = verify(engine, store.audit_dir()).unwrap().findings;
        assert!(found.iter().any(|f| f.problem.contains("truncated tail")), "{found:?}");

        // Remove the whole segment.
        raw_execute(&location, &format!("DELETE FROM audit_log WHERE segment_id = '{segment}'; DELETE FROM audit_segments WHERE segment_id = '{segment}'"));
        let found = verify(engine, store.audit_dir()).unwrap().findings;
        assert!(found.iter().any(|f| f.segment_id == segment && f.problem.contains("removed from the database")), "{found:?}");
    })
    .await
    .unwrap();
    let target = place(&app.scratch);
    let (ok, stdout, stderr) =
        tokio::task::spawn_blocking(move || run_binary(&target, &["audit", "verify"])).await.unwrap();
    assert!(!ok, "verify fails on a tampered log");
    assert!(stdout.contains("truncated tail") || stdout.contains("removed from the database"), "{stdout}");
    assert!(stderr.contains("tampered with"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_audit_write_that_fails_fails_the_read() {
    let app = TestApp::spawn().await;
    let (status, _) =
        app.batch(json!([{"type": "identify", "userId": "audit-2", "traits": {"email": "secret@exemple.fr"}}])).await;
    assert_eq!(status, StatusCode::OK);
    let id = app.customer_by("email:secret@exemple.fr").await["id"].as_str().unwrap().to_string();
    // The heads' folder becomes unwritable: a file stands where it was.
    let dir = app.store.audit_dir().to_path_buf();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, b"not a folder").unwrap();
    let (status, body) = app.get(&format!("/api/v1/customers/{id}")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(!body.to_string().contains("secret@exemple.fr"), "nothing is shown without its audit record");
    let (status, _) = app.get(&format!("/api/v1/customers?identifier={}", urlencode("email:secret@exemple.fr"))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_removes_closed_segments_which_verify_tells_from_tampering() {
    let app = TestApp::spawn().await;
    let (status, _) =
        app.batch(json!([{"type": "identify", "userId": "audit-3", "traits": {"email": "purge@exemple.fr"}}])).await;
    assert_eq!(status, StatusCode::OK);
    app.customer_by("email:purge@exemple.fr").await;
    let store = app.store.clone();
    let location = app.scratch.location.clone();
    tokio::task::spawn_blocking(move || {
        // Close today's segment (as at shutdown), then a new one opens.
        store.close_audit().unwrap();
        store
            .audit(relais::privacy::audit::AuditEntry {
                actor: "test".into(),
                action: "test.note".into(),
                subject: None,
                detail: json!({}),
            })
            .unwrap();
        store.close_audit().unwrap();
        let engine = store.blocking();
        let segments = engine.audit_segments().unwrap();
        assert_eq!(segments.len(), 2);
        let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).date_naive().to_string();
        let today = chrono::Utc::now().date_naive().to_string();
        assert!(
            relais::privacy::audit::purge(engine, store.audit_dir(), &today).unwrap().is_empty(),
            "today's are kept"
        );

        // Tampering dressed up as retention: records removed, segment marked, head untouched.
        let forged = &segments[1].segment_id;
        raw_execute(
            &location,
            &format!(
                "UPDATE audit_segments SET purged_at = closed_at WHERE segment_id = '{forged}'; \
                 DELETE FROM audit_log WHERE segment_id = '{forged}'"
            ),
        );
        let found = verify(engine, store.audit_dir()).unwrap().findings;
        assert!(found.iter().any(|f| &f.segment_id == forged && f.problem.contains("does not say so")), "{found:?}");

        let removed = relais::privacy::audit::purge(engine, store.audit_dir(), &tomorrow).unwrap();
        assert_eq!(removed, vec![segments[0].segment_id.clone()]);
        let report = verify(engine, store.audit_dir()).unwrap();
        assert_eq!(report.purged_segments, 1, "{report:?}");
        assert!(report.findings.iter().all(|f| &f.segment_id == forged), "{:?}", report.findings);
    })
    .await
    .unwrap();
}
