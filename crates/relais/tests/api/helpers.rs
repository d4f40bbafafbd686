//! `TestApp`: a real server on port 0 with a fresh database and request helpers.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use relais::config::Settings;
use relais::http::AppState;
use relais::store::scratch::Scratch;
use relais::store::{Location, Store};
use relais_domain::Role;
use reqwest::header::{HeaderMap, HeaderValue, COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::Value;

pub struct TestApp {
    pub address: String,
    pub admin: String,
    pub ingest: String,
    pub store: Store,
    pub client: reqwest::Client,
    pub scratch: Scratch,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serve `store` on a new port 0 listener; returns the address and a stop handle.
pub async fn serve(store: Store) -> (String, tokio::sync::oneshot::Sender<()>) {
    serve_with(store, Settings::default()).await
}

/// `serve` with other settings.
pub async fn serve_with(store: Store, settings: Settings) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = AppState::new(store, settings);
    tokio::spawn(relais::http::launch(listener, state, async {
        let _ = stopped.await;
    }));
    (address, stop)
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        // Opening a store and creating keys are blocking calls: keep them off the runtime.
        let (scratch, store, admin, ingest) = tokio::task::spawn_blocking(|| {
            let scratch = Scratch::for_tests("test").expect("scratch database");
            let store = scratch.open(Settings::default().ingest).expect("open store");
            let (admin, _) = relais::cli::create_key(&store, Role::Admin, None, None).expect("admin key");
            let (ingest, _) = relais::cli::create_key(&store, Role::Ingest, None, None).expect("ingest key");
            (scratch, store, admin, ingest)
        })
        .await
        .unwrap();
        let (address, stop) = serve(store.clone()).await;
        TestApp { address, admin, ingest, store, client: reqwest::Client::new(), scratch, stop: Some(stop) }
    }

    pub async fn key(&self, role: Role) -> String {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || relais::cli::create_key(&store, role, None, None).expect("key").0)
            .await
            .unwrap()
    }

    /// POST a tracking body with the ingest key (Segment's basic auth).
    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.post_raw(path, serde_json::to_vec(body).unwrap(), None, Some(&self.ingest)).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: Vec<u8>,
        encoding: Option<&str>,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request =
            self.client.post(format!("{}{path}", self.address)).header("content-type", "application/json").body(body);
        if let Some(encoding) = encoding {
            request = request.header("content-encoding", encoding);
        }
        if let Some(key) = key {
            request = request.basic_auth(key, Some(""));
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn batch(&self, messages: Value) -> (StatusCode, Value) {
        self.post("/v1/batch", &serde_json::json!({ "batch": messages })).await
    }

    /// GET with the admin key, without following redirects.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.get_as(path, &self.admin).await
    }

    pub async fn get_as(&self, path: &str, key: &str) -> (StatusCode, Value) {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let response = client.get(format!("{}{path}", self.address)).bearer_auth(key).send().await.expect("request");
        let status = response.status();
        let location = response.headers().get("location").map(|l| l.to_str().unwrap().to_string());
        let text = response.text().await.expect("body");
        let mut value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if let (Some(location), Value::Object(map)) = (location, &mut value) {
            map.insert("__location".into(), Value::String(location));
        }
        (status, value)
    }

    /// The customer holding an identifier (200 expected).
    pub async fn customer_by(&self, identifier: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/customers?identifier={}", urlencode(identifier))).await;
        assert_eq!(status, StatusCode::OK, "{identifier}: {body}");
        body
    }

    /// Every event of a customer's timeline, following cursors.
    pub async fn all_events(&self, customer: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/customers/{customer}/events?limit=7");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, body) = self.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            events.extend(body["events"].as_array().unwrap().iter().cloned());
            match body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return events,
            }
        }
    }
}

/// Run `sql` on the database behind the server, as a person with direct
/// access to it would (to tamper with what relais wrote).
pub fn raw_execute(location: &Location, sql: &str) {
    match location {
        Location::Folder(folder) => {
            let conn = rusqlite::Connection::open(folder.join("relais.db")).unwrap();
            conn.execute_batch(sql).unwrap();
        }
        Location::Postgres(url) => {
            let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
            client.batch_execute(sql).unwrap();
        }
    }
}

pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A server process that is killed (SIGKILL) when dropped, so a failing test
/// never leaves servers behind.
pub struct Server(pub std::process::Child);

impl Server {
    /// SIGKILL now and reap the process.
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()?;
        self.0.wait().map(|_| ())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Start the real binary on port 0 and return it with its address.
/// Where a process finds a scratch database: its location and the environment
/// with its master key.
#[derive(Clone)]
pub struct Place {
    pub location: Location,
    pub env: Vec<(&'static str, String)>,
}

pub fn place(scratch: &Scratch) -> Place {
    Place { location: scratch.location.clone(), env: scratch.env() }
}

pub fn start_binary(place: &Place) -> (Server, String) {
    start_binary_with(place, Stdio::null(), &[])
}

/// `start_binary` with the server's log (stderr) sent to `log` and more environment.
pub fn start_binary_with(place: &Place, log: Stdio, env: &[(&str, &str)]) -> (Server, String) {
    let location = &place.location;
    let mut command = Command::new(env!("CARGO_BIN_EXE_relais"));
    command.arg("serve").arg("--listen").arg("127.0.0.1:0").envs(place.env.clone());
    command.envs(env.iter().copied());
    match location {
        Location::Folder(folder) => command.arg("--data").arg(folder),
        Location::Postgres(url) => command.arg("--database-url").arg(url),
    };
    let mut child = command.stdout(Stdio::piped()).stderr(log).spawn().expect("start relais");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("banner");
    let address = line.split_whitespace().find(|w| w.starts_with("http://")).expect("address in banner").to_string();
    (Server(child), address)
}

/// Run the real binary with a store location; returns (success, stdout, stderr).
pub fn run_binary(place: &Place, args: &[&str]) -> (bool, String, String) {
    let location = &place.location;
    let mut command = Command::new(env!("CARGO_BIN_EXE_relais"));
    command.args(args).envs(place.env.clone());
    match location {
        Location::Folder(folder) => command.arg("--data").arg(folder),
        Location::Postgres(url) => command.arg("--database-url").arg(url),
    };
    let output = command.output().expect("run relais");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The user agent test browsers send (consents record it as proof).
pub const USER_AGENT: &str = "relais-tests/1.0";

/// A browser without JavaScript: keeps cookies, never follows redirects.
pub struct Browser {
    base: String,
    client: reqwest::Client,
    cookies: std::collections::BTreeMap<String, String>,
    lang: &'static str,
}

/// One answer: status, headers and body.
pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers.get(LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// The value of the first `name="csrf"` field of the page.
    pub fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").expect("a form with a csrf field");
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

impl Browser {
    pub fn new(app: &TestApp, lang: &'static str) -> Browser {
        Browser {
            base: app.address.clone(),
            client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
            cookies: Default::default(),
            lang,
        }
    }

    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("accept-language", HeaderValue::from_static(self.lang));
        headers.insert("user-agent", HeaderValue::from_static(USER_AGENT));
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            headers.insert(COOKIE, HeaderValue::from_str(&jar.join("; ")).unwrap());
        }
        headers
    }

    async fn keep(&mut self, response: reqwest::Response) -> Page {
        for cookie in response.headers().get_all(SET_COOKIE) {
            let text = cookie.to_str().unwrap();
            let (pair, attributes) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
        }
        let (status, headers) = (response.status(), response.headers().clone());
        Page { status, headers, body: response.text().await.unwrap() }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let response = self.client.get(format!("{}{path}", self.base)).headers(self.headers()).send().await.unwrap();
        self.keep(response).await
    }

    /// POST a form; `extra` headers (an `Origin`, an `X-CSRF-Token`).
    pub async fn post(&mut self, path: &str, form: &[(&str, &str)], extra: &[(&str, &str)]) -> Page {
        let mut request = self.client.post(format!("{}{path}", self.base)).headers(self.headers()).form(form);
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        self.keep(response).await
    }

    pub fn cookie(&self, name: &str) -> Option<&String> {
        self.cookies.get(name)
    }

    /// Sign in to the back office as a new user of `role`.
    pub async fn sign_in(&mut self, app: &TestApp, role: Role) -> String {
        let email = format!("{}-{}@relais.test", role.as_str(), ulid::Ulid::new().to_string().to_lowercase());
        let store = app.store.clone();
        let login = email.clone();
        let password =
            tokio::task::spawn_blocking(move || relais::users::create(&store, "test", &login, role).unwrap().1)
                .await
                .unwrap();
        let page = self.post("/app/login", &[("email", &email), ("password", &password), ("next", "/app")], &[]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        email
    }
}
