//! Encryption at rest, lookup tokens, masks by role, payment cards, master keys.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use relais::privacy::keyring::sealed_owner;
use relais::privacy::{Keyring, MasterKey, StoredKeyring};
use relais::store::Location;
use relais_domain::{CustomerId, Role};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{place, run_binary, start_binary, start_binary_with, urlencode, TestApp};

/// Distinctive personal values for one test person; no value of one person
/// contains a value of another.
struct Person {
    email: String,
    phone_sent: String,
    phone_e164: String,
    name: String,
    street: String,
    ip: String,
    note: String,
    message_ids: [String; 2],
}

impl Person {
    fn new() -> Person {
        let n = ulid::Ulid::new().random() as u64;
        let digits = format!("{:08}", n % 100_000_000);
        Person {
            email: format!("zoe.quintessa.{}@exemple.fr", n % 1_000_000_007),
            phone_sent: format!("06 {} {} {} {}", &digits[0..2], &digits[2..4], &digits[4..6], &digits[6..8]),
            phone_e164: format!("+336{digits}"),
            // Numbers are closed on both sides (or of fixed width), so that one
            // person's value never contains another's ("60 rue" is in "160 rue").
            name: format!("Quintessa{}z", n % 999_983),
            street: format!("n°{} rue Vauban-Zephyrine", n % 997),
            ip: format!("198.51.{}.{}", 100 + n % 150, 100 + (n / 150) % 150),
            note: format!("allergie-arachide-{}-fin", n % 99_991),
            message_ids: [format!("id-{}", ulid::Ulid::new()), format!("case-{}", ulid::Ulid::new())],
        }
    }

    fn needles(&self) -> Vec<&str> {
        vec![&self.email, &self.phone_sent, &self.phone_e164, &self.name, &self.street, &self.ip, &self.note]
    }

    fn messages(&self) -> Value {
        json!([
            {"type": "identify", "userId": format!("u-{}", self.name), "messageId": self.message_ids[0],
             "traits": {"email": self.email, "phone": self.phone_sent, "firstName": self.name, "city": "Lyon",
                        "address": {"street": self.street, "city": "Lyon"}}},
            {"type": "track", "userId": format!("u-{}", self.name), "event": "Support Case Opened",
             "messageId": self.message_ids[1],
             "context": {"ip": self.ip, "channel": "call_centre"},
             "properties": {"case_text": self.note, "store": "Lyon Part-Dieu"}},
        ])
    }
}

/// Every file under `root` that holds one of `needles`, with the needle.
fn files_holding(root: &Path, needles: &[&str]) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                for needle in needles {
                    if memchr::memmem::find(&bytes, needle.as_bytes()).is_some() {
                        found.push((path.clone(), needle.to_string()));
                    }
                }
            }
        }
    }
    found
}

/// Rows of one BLOB/BYTEA column, read straight from the database.
fn raw_blobs(location: &Location, sql: &str) -> Vec<Vec<u8>> {
    match location {
        Location::Folder(folder) => {
            let conn = rusqlite::Connection::open(folder.join("relais.db")).unwrap();
            let mut stmt = conn.prepare(sql).unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, Option<Vec<u8>>>(0)).unwrap();
            rows.filter_map(|r| r.unwrap()).collect()
        }
        Location::Postgres(url) => {
            let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
            client.query(sql, &[]).unwrap().iter().filter_map(|r| r.get::<_, Option<Vec<u8>>>(0)).collect()
        }
    }
}

fn raw_texts(location: &Location, sql: &str) -> Vec<String> {
    match location {
        Location::Folder(folder) => {
            let conn = rusqlite::Connection::open(folder.join("relais.db")).unwrap();
            let mut stmt = conn.prepare(sql).unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
            rows.map(|r| r.unwrap()).collect()
        }
        Location::Postgres(url) => {
            let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
            client.query(sql, &[]).unwrap().iter().map(|r| r.get::<_, String>(0)).collect()
        }
    }
}

/// The keyring as stored, read raw.
fn stored_keyring(location: &Location) -> StoredKeyring {
    let names = raw_texts(location, "SELECT name FROM keyring ORDER BY name");
    let wrapped = raw_blobs(location, "SELECT wrapped FROM keyring ORDER BY name");
    let master_fingerprint = raw_texts(location, "SELECT master_fingerprint FROM keyring WHERE name = 'kek'").remove(0);
    StoredKeyring { wrapped: names.into_iter().zip(wrapped).collect(), master_fingerprint }
}

#[tokio::test(flavor = "multi_thread")]
async fn personal_values_never_reach_the_disk_or_the_log_in_clear() {
    let app = TestApp::spawn().await;
    let person = Person::new();
    let target = place(&app.scratch);
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("relais.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // The most verbose log level: personal data must stay out of every level.
    let (mut server, address) =
        tokio::task::spawn_blocking(move || start_binary_with(&target, Stdio::from(log), &[("RELAIS_LOG", "trace")]))
            .await
            .unwrap();
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{address}/v1/batch"))
        .basic_auth(&app.ingest, Some(""))
        .json(&json!({ "batch": person.messages() }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert!(answer["results"].as_array().unwrap().iter().all(|r| r["status"] == "stored"), "{answer}");

    // The values are all there for a role that may read them.
    let dpo = app.key(Role::Dpo).await;
    let customer: Value = client
        .get(format!("{address}/api/v1/customers?identifier={}", urlencode(&format!("email:{}", person.email))))
        .bearer_auth(&dpo)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(customer["profile"]["email"], person.email.as_str());
    assert_eq!(customer["profile"]["address"]["street"], person.street.as_str());
    assert!(customer["identifiers"].as_array().unwrap().contains(&json!(format!("phone:{}", person.phone_e164))));
    let id = customer["id"].as_str().unwrap().to_string();
    let (_, timeline) = app.get_as(&format!("/api/v1/customers/{id}/events"), &dpo).await;
    let case = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "Support Case Opened")
        .expect("the case event")
        .clone();
    assert_eq!(case["properties"]["case_text"], person.note.as_str());
    assert_eq!(case["context"]["ip"], person.ip.as_str());
    assert_eq!(case["properties"]["store"], "Lyon Part-Dieu");
    server.kill().unwrap();

    let location = app.scratch.location.clone();
    let master = app.scratch.master.clone();
    // Blocking database clients run off the async runtime.
    tokio::task::spawn_blocking(move || check_at_rest(&location, &master, &person, &id, logs.path(), &log_path))
        .await
        .unwrap();
}

/// Nothing of `person` in clear in the database files, the write-ahead log or
/// the log; the stored values are ciphertext of exactly those values.
fn check_at_rest(location: &Location, master: &MasterKey, person: &Person, id: &str, logs: &Path, log_path: &Path) {
    let needles = person.needles();
    let searched: PathBuf = match location {
        Location::Folder(folder) => folder.clone(),
        Location::Postgres(url) => {
            let mut admin = postgres::Client::connect(url, postgres::NoTls).unwrap();
            admin.batch_execute("CHECKPOINT").unwrap();
            PathBuf::from(std::env::var("RELAIS_PG_DIR").expect(
                "on PostgreSQL this test searches the server's files: start it with .ci/pg.sh (it exports RELAIS_PG_DIR)",
            ))
        }
    };
    assert!(searched.exists());
    assert_eq!(files_holding(&searched, &needles), vec![], "personal values found in clear on disk");
    let log_text = std::fs::read_to_string(log_path).unwrap();
    assert!(log_text.len() > 100, "the server logged at trace level");
    assert_eq!(files_holding(logs, &needles), vec![], "personal values found in the log");

    // The stored values are ciphertext of exactly those values, under the person's key.
    let keyring = Keyring::open(master, &stored_keyring(location)).unwrap();
    let owner: CustomerId = id.parse().unwrap();
    let wrapped = raw_blobs(location, &format!("SELECT wrapped FROM data_keys WHERE customer_id = '{id}'")).remove(0);
    let key = keyring.unwrap_data_key(owner, &wrapped).unwrap();
    let mut opened = String::new();
    for sql in [
        format!("SELECT sealed FROM customers WHERE customer_id = '{id}'"),
        format!("SELECT sealed FROM events WHERE customer_id = '{id}'"),
        format!("SELECT sealed FROM identifiers WHERE customer_id = '{id}'"),
    ] {
        let blobs = raw_blobs(location, &sql);
        assert!(!blobs.is_empty(), "{sql}");
        for blob in blobs {
            assert_eq!(sealed_owner(&blob).unwrap(), owner);
            opened.push_str(&String::from_utf8(key.open(&blob).expect("opens with the person's key")).unwrap());
            let (other, _) = keyring.new_data_key(CustomerId::new());
            assert!(other.open(&blob).is_err(), "only the person's key opens it");
        }
    }
    for needle in [&person.email, &person.phone_e164, &person.name, &person.street, &person.ip, &person.note] {
        assert!(opened.contains(needle.as_str()), "{needle} is among the sealed values");
    }
    // Identifiers are found by token, never stored in clear.
    let tokens = raw_texts(location, &format!("SELECT identifier FROM identifiers WHERE customer_id = '{id}'"));
    assert!(tokens.iter().all(|t| t.contains(":#")), "{tokens:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_role_sees_personal_fields_as_its_classes_allow() {
    let app = TestApp::spawn().await;
    let person = Person::new();
    let (status, _) = app.batch(person.messages()).await;
    assert_eq!(status, StatusCode::OK);
    let id = app.customer_by(&format!("email:{}", person.email)).await["id"].as_str().unwrap().to_string();

    let agent = app.key(Role::Agent).await;
    let (_, seen) = app.get_as(&format!("/api/v1/customers/{id}"), &agent).await;
    assert_eq!(seen["profile"]["email"], person.email.as_str());

    let marketing = app.key(Role::Marketing).await;
    let (status, seen) = app.get_as(&format!("/api/v1/customers/{id}"), &marketing).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen["profile"]["email"], "z***@e***.fr");
    assert_eq!(seen["profile"]["city"], "Lyon", "internal fields stay readable");
    assert_eq!(seen["traits"]["event_count"], 2);
    let text = seen.to_string();
    for needle in person.needles() {
        assert!(!text.contains(needle), "marketing saw {needle}");
    }

    // Analysts see pseudonyms: stable tokens instead of identifiers, the same every time.
    let analyst = app.key(Role::Analyst).await;
    let (_, first) = app.get_as(&format!("/api/v1/customers/{id}"), &analyst).await;
    let (_, again) = app.get_as(&format!("/api/v1/customers/{id}"), &analyst).await;
    let identifiers = first["identifiers"].as_array().unwrap();
    assert!(identifiers.iter().any(|i| i.as_str().unwrap().starts_with("email:#")), "{identifiers:?}");
    assert_eq!(first["identifiers"], again["identifiers"]);
    let (_, timeline) = app.get_as(&format!("/api/v1/customers/{id}/events"), &analyst).await;
    let text = timeline.to_string();
    for needle in person.needles() {
        assert!(!text.contains(needle), "the analyst saw {needle}");
    }
    assert!(text.contains("[sensitive]"), "support-case text is redacted: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payment_card_number_is_refused_and_nothing_else_is_lost() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .batch(json!([
            {"type": "track", "userId": "pan", "event": "Order Completed", "messageId": "pan-1",
             "properties": {"total": 10, "note": "paid with 4111 1111 1111 1111"}},
            {"type": "track", "userId": "pan", "event": "Product Viewed", "messageId": "pan-2"},
        ]))
        .await;
    assert_eq!(status, StatusCode::OK);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], "rejected");
    let reason = results[0]["reason"].as_str().unwrap();
    assert!(reason.contains("properties.note") && reason.contains("payment card"), "{reason}");
    assert!(!reason.contains("4111"), "the number is not echoed: {reason}");
    assert_eq!(results[1]["status"], "stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_master_key_stops_the_server_and_rotation_switches_keys() {
    let app = TestApp::spawn().await;
    let mut target = place(&app.scratch);
    let good = target.env[0].1.clone();
    assert_eq!(target.env[0].0, "RELAIS_MASTER_KEY");
    target.env[0].1 = MasterKey::generate().encode();
    let wrong = target.clone();
    let (ok, _, stderr) =
        tokio::task::spawn_blocking(move || run_binary(&wrong, &["traits", "rebuild"])).await.unwrap();
    assert!(!ok);
    assert!(stderr.contains("is not the one this database was sealed with"), "{stderr}");

    // Rotate: the old key stops working, the new one opens the same data.
    let new_key = MasterKey::generate();
    let keys = tempfile::tempdir().unwrap();
    let new_file = keys.path().join("new.key");
    std::fs::write(&new_file, new_key.encode()).unwrap();
    target.env[0].1 = good;
    let rotating = target.clone();
    let new_path = new_file.to_str().unwrap().to_string();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run_binary(&rotating, &["keys", "rotate-master", "--new-key-file", &new_path])
    })
    .await
    .unwrap();
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&new_key.fingerprint()), "{stdout}");
    let old = target.clone();
    let (ok, _, _) = tokio::task::spawn_blocking(move || run_binary(&old, &["traits", "rebuild"])).await.unwrap();
    assert!(!ok, "the old master key no longer opens the database");
    target.env[0].1 = new_key.encode();
    let (status, _) =
        app.batch(json!([{"type": "identify", "userId": "rot", "traits": {"email": "rot@exemple.fr"}}])).await;
    assert_eq!(status, StatusCode::OK, "the running server keeps working");
    let (mut server, address) = tokio::task::spawn_blocking(move || start_binary(&target)).await.unwrap();
    let found = reqwest::Client::new()
        .get(format!("{address}/api/v1/customers?identifier=email:rot@exemple.fr"))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(found.status(), StatusCode::OK);
    let body: Value = found.json().await.unwrap();
    assert_eq!(body["profile"]["email"], "rot@exemple.fr");
    server.kill().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_with_clear_data_from_before_encryption_is_refused_not_half_upgraded() {
    tokio::task::spawn_blocking(|| {
        let scratch = relais::store::scratch::Scratch::for_tests("legacy").unwrap();
        let insert = "INSERT INTO identifiers (identifier, kind, customer_id, created_at) \
                      VALUES ('email:ana@exemple.fr', 'email', 'cus_01JAAAAAAAAAAAAAAAAAAAAAAA', 0)";
        match &scratch.location {
            Location::Folder(folder) => {
                std::fs::create_dir_all(folder).unwrap();
                let conn = rusqlite::Connection::open(folder.join("relais.db")).unwrap();
                conn.execute_batch(include_str!("../../migrations/sqlite/0001_customer_database.sql")).unwrap();
                conn.execute_batch(
                    "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL); \
                     INSERT INTO schema_migrations VALUES (1, 'customer_database', 0);",
                )
                .unwrap();
                conn.execute_batch(insert).unwrap();
            }
            Location::Postgres(url) => {
                let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
                client.batch_execute(include_str!("../../migrations/postgres/0001_customer_database.sql")).unwrap();
                client
                    .batch_execute(
                        "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now()); \
                         INSERT INTO schema_migrations (version, name) VALUES (1, 'customer_database');",
                    )
                    .unwrap();
                client.batch_execute(&insert.replace(", 0)", ", now())")).unwrap();
            }
        }
        let error = scratch.open(relais::config::Settings::default().ingest).err().expect("refused");
        assert!(error.to_string().contains("before encryption at rest"), "{error}");
        let clear = raw_texts(&scratch.location, "SELECT identifier FROM identifiers");
        assert_eq!(clear, vec!["email:ana@exemple.fr".to_string()], "nothing was changed");
    })
    .await
    .unwrap();
}

/// Sum of one integer column over a table, read raw.
fn raw_sum(location: &Location, sql: &str) -> i64 {
    match location {
        Location::Folder(folder) => {
            let conn = rusqlite::Connection::open(folder.join("relais.db")).unwrap();
            conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0)).unwrap().unwrap_or(0)
        }
        Location::Postgres(url) => {
            let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
            let row = client.query_one(&format!("SELECT ({sql})::bigint"), &[]).unwrap();
            row.get::<_, Option<i64>>(0).unwrap_or(0)
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn erasure_removes_the_person_keeps_totals_and_destroys_their_keys() {
    let app = TestApp::spawn().await;
    let (ana, bob) = (Person::new(), Person::new());
    let device = format!("device-{}", ulid::Ulid::new());
    // Ana browses anonymously first, then identifies: two profiles, merged.
    let (status, _) = app
        .batch(json!([{"type": "page", "anonymousId": device, "name": "Accueil", "messageId": format!("p-{device}")}]))
        .await;
    assert_eq!(status, StatusCode::OK);
    let identify = ana.messages()[0].clone();
    for person in [&ana, &bob] {
        let (status, _) = app.batch(person.messages()).await;
        assert_eq!(status, StatusCode::OK);
    }
    let user = format!("u-{}", ana.name);
    let (_, linked) = app
        .batch(json!([
            {"type": "track", "userId": user, "anonymousId": device, "event": "Order Completed",
             "properties": {"order_id": "o-ana", "total": 25, "currency": "EUR", "store": "lyon-part-dieu"}},
            {"type": "track", "userId": format!("u-{}", bob.name), "event": "Order Completed",
             "properties": {"order_id": "o-bob", "total": 40, "currency": "EUR", "store": "nantes-graslin"}},
        ]))
        .await;
    assert!(linked["results"].as_array().unwrap().iter().all(|r| r["status"] == "stored"), "{linked}");
    let id = app.customer_by(&format!("email:{}", ana.email)).await["id"].as_str().unwrap().to_string();
    assert_eq!(app.customer_by(&format!("anonymous_id:{device}")).await["id"], id.as_str(), "merged");

    let location = app.scratch.location.clone();
    let (events_before, revenue_before, days_before, ana_keys) = {
        let location = location.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || {
            (
                raw_sum(&location, "SELECT count(*) FROM events"),
                raw_sum(&location, "SELECT sum(amount_minor) FROM events"),
                raw_sum(&location, "SELECT sum(revenue_minor) FROM customer_days"),
                raw_blobs(
                    &location,
                    &format!(
                        "SELECT wrapped FROM data_keys WHERE customer_id IN \
                         (SELECT customer_id FROM customers WHERE customer_id = '{id}' OR merged_into = '{id}')"
                    ),
                ),
            )
        })
        .await
        .unwrap()
    };
    assert_eq!(ana_keys.len(), 2, "one key per profile");
    assert_eq!(revenue_before, 6500);

    // Only the DPO (or admin) may erase; unknown people are a 404 that changes nothing.
    let marketing = app.key(Role::Marketing).await;
    let dpo = app.key(Role::Dpo).await;
    let client = reqwest::Client::new();
    let erase = |key: String, identifier: String| {
        let client = client.clone();
        let url = format!("{}/api/v1/privacy/erasures", app.address);
        async move {
            let response =
                client.post(url).bearer_auth(key).json(&json!({ "identifier": identifier })).send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(erase(marketing, format!("email:{}", ana.email)).await.0, StatusCode::FORBIDDEN);
    let (status, problem) = erase(dpo.clone(), "email:personne@exemple.fr".into()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    let (status, problem) = erase(dpo.clone(), "email:not an address".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["field"], "identifier", "{problem}");

    let (status, report) = erase(dpo.clone(), format!("phone:{}", ana.phone_e164)).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["profiles_erased"], 2);
    assert_eq!(report["keys_destroyed"], 2);
    assert_eq!(report["events_deidentified"], 4);
    assert!(report["erasure_id"].as_str().unwrap().starts_with("era_"));

    // Ana cannot be found by any identifier any more, nor by her old id.
    for identifier in [
        format!("email:{}", ana.email),
        format!("phone:{}", ana.phone_e164),
        format!("user_id:{user}"),
        format!("anonymous_id:{device}"),
    ] {
        let (status, _) = app.get(&format!("/api/v1/customers?identifier={}", urlencode(&identifier))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{identifier}");
    }
    let (status, _) = app.get(&format!("/api/v1/customers/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A client retrying one of her old messages does not bring her back.
    let (_, again) = app.batch(json!([identify])).await;
    assert_eq!(again["results"][0]["status"], "duplicate", "{again}");
    let (status, _) =
        app.get(&format!("/api/v1/customers?identifier={}", urlencode(&format!("email:{}", ana.email)))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Bob is untouched.
    assert_eq!(app.customer_by(&format!("email:{}", bob.email)).await["profile"]["email"], bob.email.as_str());

    let scratch_master = app.scratch.master.clone();
    tokio::task::spawn_blocking(move || {
        // Totals stay right: the events are kept, de-identified.
        assert_eq!(raw_sum(&location, "SELECT count(*) FROM events"), events_before);
        assert_eq!(raw_sum(&location, "SELECT sum(amount_minor) FROM events"), revenue_before);
        assert_eq!(raw_sum(&location, "SELECT sum(revenue_minor) FROM customer_days"), days_before);
        let erased = relais::store::ERASED_CUSTOMER;
        assert_eq!(
            raw_sum(
                &location,
                &format!("SELECT count(*) FROM events WHERE customer_id = '{erased}' AND (sealed IS NOT NULL OR order_id IS NOT NULL OR user_id IS NOT NULL)")
            ),
            0,
            "no personal or linking value is left on her events"
        );
        // Her keys are gone from the database: what they sealed is unreadable.
        for wrapped in &ana_keys {
            let remaining = raw_blobs(&location, "SELECT wrapped FROM data_keys");
            assert!(!remaining.contains(wrapped));
        }
        let keyring = Keyring::open(&scratch_master, &stored_keyring(&location)).unwrap();
        drop(keyring);
        // On SQLite the destroyed keys leave no copy in the file or its log.
        if let Location::Folder(folder) = &location {
            for wrapped in &ana_keys {
                for file in ["relais.db", "relais.db-wal"] {
                    let bytes = std::fs::read(folder.join(file)).unwrap_or_default();
                    assert!(memchr::memmem::find(&bytes, wrapped).is_none(), "a copy of a destroyed key in {file}");
                }
            }
        }
    })
    .await
    .unwrap();
}

/// Two people sent in, and a key of the data-protection officer.
async fn two_people_and_a_dpo(app: &TestApp) -> (Person, Person, String) {
    let (ana, bob) = (Person::new(), Person::new());
    for person in [&ana, &bob] {
        let (status, _) = app.batch(person.messages()).await;
        assert_eq!(status, StatusCode::OK);
    }
    (ana, bob, app.key(Role::Dpo).await)
}

/// The files of a zip archive, by name.
fn unzip(bytes: &[u8]) -> std::collections::BTreeMap<String, String> {
    use std::io::Read;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a zip archive");
    let mut files = std::collections::BTreeMap::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        files.insert(file.name().to_string(), text);
    }
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn an_access_export_holds_everything_about_the_person_and_nothing_after_erasure() {
    let app = TestApp::spawn().await;
    let (ana, bob, dpo) = two_people_and_a_dpo(&app).await;
    let client = reqwest::Client::new();
    let export = |identifier: String| {
        let client = client.clone();
        let dpo = dpo.clone();
        let url = format!("{}/api/v1/privacy/exports", app.address);
        async move {
            let response =
                client.post(url).bearer_auth(dpo).json(&json!({ "identifier": identifier })).send().await.unwrap();
            let status = response.status();
            let kind = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
            (status, kind, response.bytes().await.unwrap().to_vec())
        }
    };
    let (status, kind, bytes) = export(format!("email:{}", ana.email)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kind.as_deref(), Some("application/zip"));
    let files = unzip(&bytes);
    assert_eq!(
        files.keys().cloned().collect::<Vec<_>>(),
        [
            "README.txt",
            "audit.json",
            "consents.json",
            "events.csv",
            "events.json",
            "identifiers.csv",
            "merges.json",
            "profile.json"
        ]
    );
    // "Who looked at my data": the export itself is in the person's audit trail.
    let trail: Vec<Value> = serde_json::from_str(&files["audit.json"]).unwrap();
    assert!(
        trail.iter().any(|r| r["action"] == "privacy.export" && r["actor"].as_str().unwrap().starts_with("key:key_")),
        "{trail:?}"
    );
    let profile: Value = serde_json::from_str(&files["profile.json"]).unwrap();
    assert_eq!(profile["profile"]["email"], ana.email.as_str());
    assert_eq!(profile["computed"]["event_count"], 2);
    assert!(files["identifiers.csv"].contains(&format!("phone,{}", ana.phone_e164)));
    let events: Vec<Value> = serde_json::from_str(&files["events.json"]).unwrap();
    assert_eq!(events.len(), 2);
    assert!(files["events.csv"].contains(&ana.note), "sealed fields are opened for the export");
    let everything: String = files.values().cloned().collect();
    for needle in bob.needles() {
        assert!(!everything.contains(needle), "another person's data ({needle}) in the export");
    }

    let (status, _, body) = export("email:personne@exemple.fr".into()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&body));
    let (status, _) = app
        .post_raw(
            "/api/v1/privacy/erasures",
            serde_json::to_vec(&json!({"identifier": format!("email:{}", ana.email)})).unwrap(),
            None,
            Some(&dpo),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = export(format!("email:{}", ana.email)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "an erased person's export finds nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_carry_security_headers_and_each_key_is_rate_limited() {
    let app = TestApp::spawn().await;
    let settings = relais::config::Settings { rate_limit_per_second: 3, ..relais::config::Settings::default() };
    let (address, _stop) = crate::helpers::serve_with(app.store.clone(), settings).await;
    let client = reqwest::Client::new();
    let url = format!("{address}/api/v1/customers?identifier=email:personne@exemple.fr");
    let first = client.get(&url).bearer_auth(&app.admin).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::NOT_FOUND);
    let headers = first.headers();
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));

    let mut limited = None;
    for _ in 0..20 {
        let response = client.get(&url).bearer_auth(&app.admin).send().await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("a key sending 20 requests at once is limited to 3 per second");
    assert_eq!(limited.headers()["retry-after"], "1");
    let problem: Value = limited.json().await.unwrap();
    assert_eq!(problem["code"], "rate_limited");
    // Another key is not slowed down by the first.
    let other = client.get(&url).bearer_auth(app.key(Role::Agent).await).send().await.unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_security_report_lists_classes_risks_and_fields_nobody_classified() {
    let app = TestApp::spawn().await;
    let (status, _) = app
        .batch(json!([{"type": "track", "userId": "r-1", "event": "Wish Listed",
                       "properties": {"favourite_colour": "vert", "revenue": 12, "store": "lyon-part-dieu"}}]))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, report) = app.get("/api/v1/security/report").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let unclassified: Vec<&str> =
        report["unclassified_fields"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(unclassified.contains(&"properties.favourite_colour"), "{unclassified:?}");
    assert!(!unclassified.contains(&"properties.revenue"), "mapped fields are classified");
    let personal = report["classes"].as_array().unwrap().iter().find(|c| c["class"] == "personal").unwrap();
    assert_eq!(personal["encrypted"], true);
    assert!(personal["fields"].as_array().unwrap().contains(&json!("identifier.email")));
    assert!(personal["risk"]["level"].is_string());
    let ingest = report["parts"].as_array().unwrap().iter().find(|p| p["name"] == "tracking API").unwrap();
    assert_eq!(ingest["risk"]["level"], "critical");

    let target = crate::helpers::place(&app.scratch);
    let (ok, text, stderr) =
        tokio::task::spawn_blocking(move || run_binary(&target, &["security", "report"])).await.unwrap();
    assert!(ok, "{stderr}");
    assert!(text.contains("properties.favourite_colour") && text.contains("DATA CLASSES"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rights_requests_carry_their_deadline_and_are_carried_out() {
    let app = TestApp::spawn().await;
    let (ana, bob, dpo) = two_people_and_a_dpo(&app).await;
    let client = reqwest::Client::new();
    let post = |path: String, body: Value| {
        let (client, dpo) = (client.clone(), dpo.clone());
        let url = format!("{}{path}", app.address);
        async move {
            let response = client.post(url).bearer_auth(dpo).json(&body).send().await.unwrap();
            let status = response.status();
            let kind = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
            (status, kind, response.bytes().await.unwrap().to_vec())
        }
    };
    let json_of = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).unwrap();

    let (status, _, body) =
        post("/api/v1/privacy/requests".into(), json!({"kind": "forget", "identifier": "email:x@exemple.fr"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&body));
    let mut ids = Vec::new();
    for kind in ["access", "objection", "erasure"] {
        let (status, _, body) = post(
            "/api/v1/privacy/requests".into(),
            json!({"kind": kind, "identifier": format!("email:{}", ana.email)}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        let request = json_of(&body);
        assert_eq!(request["status"], "open");
        assert_eq!(request["overdue"], false);
        let received: chrono::DateTime<chrono::Utc> = request["received_at"].as_str().unwrap().parse().unwrap();
        let due: chrono::DateTime<chrono::Utc> = request["due_at"].as_str().unwrap().parse().unwrap();
        assert!((28..=31).contains(&(due - received).num_days()), "one month: {received} → {due}");
        ids.push(request["request_id"].as_str().unwrap().to_string());
    }
    let (_, listed) = app.get_as("/api/v1/privacy/requests?status=open", &dpo).await;
    assert_eq!(listed["requests"].as_array().unwrap().len(), 3);

    // Access: the archive. Objection: profiling withdrawn. Erasure: gone.
    let (status, kind, bytes) = post(format!("/api/v1/privacy/requests/{}/complete", ids[0]), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kind.as_deref(), Some("application/zip"));
    assert!(unzip(&bytes)["profile.json"].contains(&ana.email));
    let customer = app.customer_by(&format!("email:{}", ana.email)).await["id"].as_str().unwrap().to_string();
    let (status, _, _) = post(format!("/api/v1/privacy/requests/{}/complete", ids[1]), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, check) =
        app.get(&format!("/api/v1/consents/check?customer={customer}&purpose=profiling&channel=email")).await;
    assert_eq!(check["allowed"], false);
    let (status, _, again) = post(format!("/api/v1/privacy/requests/{}/complete", ids[1]), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{}", String::from_utf8_lossy(&again));
    let (status, _, body) = post(format!("/api/v1/privacy/requests/{}/complete", ids[2]), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&body)["outcome"]["profiles_erased"], 1);
    let (status, _) = app.get(&format!("/api/v1/customers/{customer}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, done) = app.get_as("/api/v1/privacy/requests?status=done", &dpo).await;
    let erased = done["requests"].as_array().unwrap().iter().find(|r| r["kind"] == "erasure").unwrap().clone();
    assert!(erased["customer_id"].is_null(), "an erased person's request no longer points at them");

    // Refusal, for a listed reason only.
    let (_, _, body) = post(
        "/api/v1/privacy/requests".into(),
        json!({"kind": "rectification", "identifier": format!("email:{}", bob.email)}),
    )
    .await;
    let bob_request = json_of(&body)["request_id"].as_str().unwrap().to_string();
    let (status, _, _) =
        post(format!("/api/v1/privacy/requests/{bob_request}/refuse"), json!({"reason": "because"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) =
        post(format!("/api/v1/privacy/requests/{bob_request}/refuse"), json!({"reason": "identity_not_verified"}))
            .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn restoring_a_backup_erases_again_whoever_was_erased_after_it() {
    tokio::task::spawn_blocking(|| {
        let scratch = relais::store::scratch::Scratch::for_tests("backup").unwrap();
        let settings = relais::config::Settings::default();
        let store = scratch.open(settings.ingest.clone()).unwrap();
        let (ana, bob) = (Person::new(), Person::new());
        let envelope = relais_domain::message::Envelope {
            received_at: chrono::Utc::now(),
            implied_type: None,
            batch_sent_at: None,
            batch_context: None,
            default_currency: "EUR",
            card_policy: relais_domain::cards::CardPolicy::Reject,
        };
        for person in [&ana, &bob] {
            let messages = person
                .messages()
                .as_array()
                .unwrap()
                .iter()
                .map(|m| relais_domain::TrackingMessage::parse_value(m.clone(), &envelope).unwrap())
                .collect();
            store.blocking().ingest("test", messages).unwrap();
        }
        let folder = tempfile::tempdir().unwrap();
        let file = folder.path().join("relais.backup");
        let made = relais::privacy::backup::create(&store, &scratch.location, &file).unwrap();
        assert!(made.bytes > 0);

        // Ana is erased after the backup was taken.
        let email: relais_domain::Identifier = format!("email:{}", ana.email).parse().unwrap();
        store
            .blocking_audited(|engine, audit| {
                relais::privacy::rights::carry_out(
                    engine,
                    audit,
                    "test",
                    "privacy.erase",
                    &email,
                    relais::privacy::rights::erase_person,
                )
            })
            .unwrap();
        let journal = std::fs::read_to_string(scratch.audit_dir.join("erasures.jsonl")).unwrap();
        assert!(!journal.contains(&ana.email), "the journal holds ids, not personal data");
        drop(store);

        let target = crate::helpers::place(&scratch);
        let input = file.display().to_string();
        let (ok, stdout, stderr) = run_binary(&target, &["backup", "restore", "--input", &input]);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("\"erasures_reapplied\": 1"), "{stdout}");

        let store = scratch.open(settings.ingest).unwrap();
        assert_eq!(store.blocking().customer_id_by_identifier(&email).unwrap(), None, "ana stays erased");
        let bob_email: relais_domain::Identifier = format!("email:{}", bob.email).parse().unwrap();
        assert!(store.blocking().customer_id_by_identifier(&bob_email).unwrap().is_some(), "bob is back");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_purges_old_sensitive_values_and_erases_inactive_people() {
    let app = TestApp::spawn().await;
    let old = (chrono::Utc::now() - chrono::Duration::days(400)).to_rfc3339();
    let (status, _) = app
        .batch(json!([
            {"type": "track", "userId": "ret-1", "event": "Support Case Opened", "timestamp": old,
             "properties": {"case_text": "douleur au genou", "favourite": "vert", "revenue": 5}},
            {"type": "track", "userId": "ret-1", "event": "Support Case Opened",
             "properties": {"case_text": "récent", "favourite": "bleu"}},
        ]))
        .await;
    assert_eq!(status, StatusCode::OK);
    let id = app.customer_by("user_id:ret-1").await["id"].as_str().unwrap().to_string();
    let store = app.store.clone();
    let report = tokio::task::spawn_blocking(move || {
        store.blocking_audited(|engine, audit| relais::privacy::retention::run(engine, audit, chrono::Utc::now()))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.events_purged["sensitive"], 1, "{report:?}");
    assert_eq!(report.profiles_erased, 0);

    let dpo = app.key(Role::Dpo).await;
    let (_, timeline) = app.get_as(&format!("/api/v1/customers/{id}/events"), &dpo).await;
    let events = timeline["events"].as_array().unwrap();
    let older = events.iter().find(|e| e["properties"]["favourite"] == "vert").unwrap();
    assert!(older["properties"]["case_text"].is_null(), "a year-old support text is gone: {older}");
    assert_eq!(older["properties"]["revenue"], 5);
    let recent = events.iter().find(|e| e["properties"]["favourite"] == "bleu").unwrap();
    assert_eq!(recent["properties"]["case_text"], "récent");

    // Three years and a day without news: the person is erased.
    let store = app.store.clone();
    let later = chrono::Utc::now() + chrono::Duration::days(3 * 365 + 1);
    let report = tokio::task::spawn_blocking(move || {
        let again = store
            .blocking_audited(|engine, audit| relais::privacy::retention::run(engine, audit, chrono::Utc::now()))?;
        assert_eq!(again.events_purged["sensitive"], 0, "each event is purged once");
        store.blocking_audited(|engine, audit| relais::privacy::retention::run(engine, audit, later))
    })
    .await
    .unwrap()
    .unwrap();
    assert!(report.profiles_erased >= 1);
    let (status, _) = app.get(&format!("/api/v1/customers/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let store = app.store.clone();
    let counted = tokio::task::spawn_blocking(move || {
        let engine = store.blocking();
        engine
            .audit_segments()
            .unwrap()
            .iter()
            .flat_map(|s| engine.audit_records(&s.segment_id).unwrap())
            .filter(|r| r.action == "retention.purge")
            .count()
    })
    .await
    .unwrap();
    assert_eq!(counted, 3, "every purge is counted in the audit log");
}

#[tokio::test(flavor = "multi_thread")]
async fn people_are_found_by_whole_name_words_without_names_in_clear() {
    let app = TestApp::spawn().await;
    let (status, _) = app
        .batch(json!([
            {"type": "identify", "userId": "n-1", "traits": {"firstName": "Léa", "lastName": "Martin-Dubois"}},
            {"type": "identify", "userId": "n-2", "traits": {"firstName": "Hugo", "lastName": "Martin"}},
        ]))
        .await;
    assert_eq!(status, StatusCode::OK);
    let lea = app.customer_by("user_id:n-1").await["id"].as_str().unwrap().to_string();
    let search = |q: &str| {
        let path = format!("/api/v1/customers?q={}", urlencode(q));
        let app = &app;
        async move {
            let (status, body) = app.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["customers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(search("lea martin").await, vec![lea.clone()]);
    assert_eq!(search("DUBOIS").await, vec![lea.clone()]);
    assert_eq!(search("martin").await.len(), 2);
    assert!(search("mart").await.is_empty(), "no substring search on names");
    let location = app.scratch.location.clone();
    let tokens =
        tokio::task::spawn_blocking(move || raw_texts(&location, "SELECT token FROM name_tokens")).await.unwrap();
    assert!(!tokens.is_empty() && tokens.iter().all(|t| !t.contains("martin")), "{tokens:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn card_numbers_are_found_in_a_batch_context_and_behind_json_escapes() {
    let app = TestApp::spawn().await;
    let (status, problem) = app
        .post(
            "/v1/batch",
            &json!({"context": {"note": "4111 1111 1111 1111"}, "batch": [{"type": "track", "userId": "b", "event": "E"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "context.note");
    // The same digits written as JSON escapes are still found.
    let escaped =
        r#"{"batch": [{"type": "track", "userId": "b", "event": "E", "properties": {"n": "\u0034111111111111111"}}]}"#;
    let (status, body) = app.post_raw("/v1/batch", escaped.as_bytes().to_vec(), None, Some(&app.ingest)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["results"][0]["status"], "rejected", "{body}");
}
