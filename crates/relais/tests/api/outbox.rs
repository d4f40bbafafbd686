//! The transactional outbox and its delivery worker.

use std::sync::{Arc, Mutex};

use relais::outbox::{DeliveryError, DeliveryWorker, Email, FileMailer, Mailer, SmtpMailer};
use relais::store::OutboxStatus;
use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::helpers::TestApp;

fn email(to: &str) -> Email {
    Email {
        to: to.into(),
        subject: "Votre code de connexion".into(),
        text: "Code : 481 516".into(),
        unsubscribe_url: None,
    }
}

async fn enqueue(app: &TestApp, to: &str) -> relais_domain::OutboxId {
    let store = app.store.clone();
    let email = email(to);
    tokio::task::spawn_blocking(move || relais::outbox::enqueue_email(&store, None, &email).unwrap()).await.unwrap()
}

async fn drain(worker: &DeliveryWorker) -> relais::outbox::DeliveryReport {
    let worker = worker.clone();
    tokio::task::spawn_blocking(move || worker.run_once().unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_email_is_delivered_once_as_a_file_and_listed_as_delivered() {
    let app = TestApp::spawn().await;
    let folder = tempfile::tempdir().unwrap();
    let worker = DeliveryWorker::new(
        app.store.clone(),
        Arc::new(FileMailer::new(folder.path().to_path_buf())),
        "Boutique <contact@example.fr>".parse().unwrap(),
    );
    let id = enqueue(&app, "ana@example.fr").await;
    assert_eq!(drain(&worker).await.delivered, 1);
    assert_eq!(drain(&worker).await.delivered, 0, "a delivered message is never sent again");
    let file = std::fs::read_to_string(folder.path().join(format!("{id}.eml"))).unwrap();
    assert!(file.contains("To: ana@example.fr"), "{file}");
    assert!(file.contains(&format!("Message-ID: <{id}@relais>")), "{file}");
    assert!(file.contains("Subject: Votre code de connexion") || file.contains("Subject: =?utf-8?"), "{file}");

    let (status, listed) = app.get("/api/v1/outbox?status=delivered").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["messages"][0]["outbox_id"], id.to_string());
    assert_eq!(listed["messages"][0]["attempts"], 1);
    let marketing = app.key(relais_domain::Role::Marketing).await;
    assert_eq!(app.get_as("/api/v1/outbox", &marketing).await.0, StatusCode::FORBIDDEN);
    assert_eq!(app.get("/api/v1/outbox?status=lost").await.0, StatusCode::BAD_REQUEST);
}

/// A transport that fails as told and counts its calls.
struct Flaky {
    permanent: bool,
    calls: Mutex<usize>,
}

impl Mailer for Flaky {
    fn send(&self, _id: &str, _message: &lettre::Message) -> Result<(), DeliveryError> {
        *self.calls.lock().unwrap() += 1;
        if self.permanent {
            Err(DeliveryError::Permanent("550 no such mailbox".into()))
        } else {
            Err(DeliveryError::Transient("421 try again later".into()))
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_failure_is_retried_later_and_a_permanent_one_given_up() {
    let app = TestApp::spawn().await;
    let flaky = Arc::new(Flaky { permanent: false, calls: Mutex::new(0) });
    let worker = DeliveryWorker::new(app.store.clone(), flaky.clone(), "relais <r@example.fr>".parse().unwrap());
    let id = enqueue(&app, "lea@example.fr").await;
    let report = drain(&worker).await;
    assert_eq!((report.delivered, report.retried), (0, 1));
    // The retry is due in 5 seconds, not now: a second pass sends nothing.
    assert_eq!(drain(&worker).await.retried, 0);
    assert_eq!(*flaky.calls.lock().unwrap(), 1);
    let store = app.store.clone();
    let item = tokio::task::spawn_blocking(move || store.blocking().outbox(None, 10).unwrap())
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.outbox_id == id)
        .unwrap();
    assert_eq!(item.status, OutboxStatus::Pending);
    assert_eq!(item.last_error.as_deref(), Some("421 try again later"));
    let wait = item.next_attempt_at - chrono::Utc::now();
    assert!(wait > chrono::Duration::seconds(3) && wait <= chrono::Duration::seconds(5), "{wait}");

    let refused = DeliveryWorker::new(
        app.store.clone(),
        Arc::new(Flaky { permanent: true, calls: Mutex::new(0) }),
        "relais <r@example.fr>".parse().unwrap(),
    );
    enqueue(&app, "nobody@example.fr").await;
    assert_eq!(drain(&refused).await.failed, 1);
    let (_, failed) = app.get("/api/v1/outbox?status=failed").await;
    assert_eq!(failed["messages"][0]["last_error"], "550 no such mailbox");
}

/// A minimal SMTP server on port 0 that accepts one message and returns it.
async fn smtp_sink() -> (u16, tokio::task::JoinHandle<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (read, mut write) = socket.into_split();
        let mut lines = BufReader::new(read).lines();
        write.write_all(b"220 sink ESMTP\r\n").await.unwrap();
        let mut data = String::new();
        let mut in_data = false;
        while let Some(line) = lines.next_line().await.unwrap() {
            if in_data {
                if line == "." {
                    in_data = false;
                    write.write_all(b"250 queued\r\n").await.unwrap();
                } else {
                    data.push_str(&line);
                    data.push('\n');
                }
                continue;
            }
            let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "EHLO" | "HELO" => b"250 sink\r\n",
                "DATA" => {
                    in_data = true;
                    b"354 go ahead\r\n"
                }
                "QUIT" => {
                    write.write_all(b"221 bye\r\n").await.unwrap();
                    break;
                }
                _ => b"250 ok\r\n",
            };
            write.write_all(reply).await.unwrap();
        }
        data
    });
    (port, handle)
}

#[tokio::test(flavor = "multi_thread")]
async fn smtp_delivery_reaches_a_local_server() {
    let app = TestApp::spawn().await;
    let (port, received) = smtp_sink().await;
    let mailer = SmtpMailer::from_url(&format!("smtp://127.0.0.1:{port}")).unwrap();
    let worker =
        DeliveryWorker::new(app.store.clone(), Arc::new(mailer), "Boutique <contact@example.fr>".parse().unwrap());
    let id = enqueue(&app, "hugo@example.fr").await;
    assert_eq!(drain(&worker).await.delivered, 1);
    let message = received.await.unwrap();
    assert!(message.contains("To: hugo@example.fr"), "{message}");
    assert!(message.contains(&format!("<{id}@relais>")), "{message}");
}
