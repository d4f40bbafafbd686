//! The demo: a deterministic, French-flavoured population of customers and two
//! years of their events across every channel, loaded through the same ingest
//! path as live traffic.

use chrono::{DateTime, Duration, Utc};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use relais_domain::message::{Envelope, MessageType};
use relais_domain::TrackingMessage;
use serde_json::{json, Map, Value};

use crate::config::Settings;
use crate::store::Store;

pub use crate::bench::{bench, BenchCommand};

/// How much demo data to make.
#[derive(Debug, Clone, Copy)]
pub struct DemoSize {
    /// People.
    pub people: usize,
    /// Approximate events.
    pub events: usize,
    /// Generator seed.
    pub seed: u64,
}

const FIRST_NAMES: &[&str] = &[
    "Camille", "Léa", "Manon", "Chloé", "Inès", "Jade", "Louise", "Emma", "Alice", "Zoé", "Lucas", "Hugo", "Louis",
    "Gabriel", "Arthur", "Jules", "Nathan", "Théo", "Raphaël", "Paul", "Ana", "Yasmine", "Mathis", "Sacha", "Anaïs",
];
const LAST_NAMES: &[&str] = &[
    "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy", "Moreau", "Simon",
    "Laurent", "Lefebvre", "Michel", "Garcia", "David", "Bertrand", "Roux", "Vincent", "Fournier", "Morel", "Girard",
];
/// Stores: (id, city, postcode).
pub const STORES: &[(&str, &str, &str)] = &[
    ("lyon-part-dieu", "Lyon", "69003"),
    ("lyon-confluence", "Lyon", "69002"),
    ("paris-rivoli", "Paris", "75001"),
    ("paris-bastille", "Paris", "75011"),
    ("nantes-graslin", "Nantes", "44000"),
    ("bordeaux-sainte-catherine", "Bordeaux", "33000"),
    ("lille-grand-place", "Lille", "59000"),
    ("marseille-vieux-port", "Marseille", "13001"),
    ("toulouse-capitole", "Toulouse", "31000"),
    ("rennes-republique", "Rennes", "35000"),
];
/// Products: (sku, name, category, price in cents).
const PRODUCTS: &[(&str, &str, &str, i64)] = &[
    ("EPI-001", "Confiture de fraises", "épicerie fine", 690),
    ("EPI-002", "Huile d'olive de Provence", "épicerie fine", 1490),
    ("EPI-003", "Calissons d'Aix", "épicerie fine", 1290),
    ("VIN-001", "Côtes-du-Rhône 2022", "vins", 1150),
    ("VIN-002", "Muscadet sèvre-et-maine", "vins", 890),
    ("VIN-003", "Champagne brut", "vins", 3490),
    ("COS-001", "Savon de Marseille", "cosmétiques", 450),
    ("COS-002", "Crème au lait d'ânesse", "cosmétiques", 1990),
    ("MAI-001", "Bougie parfumée figue", "maison", 2490),
    ("MAI-002", "Nappe en lin", "maison", 4990),
    ("MAI-003", "Tasse en grès", "maison", 1290),
    ("LIV-001", "Guide des bouchons lyonnais", "librairie", 1800),
];
const PAGES: &[&str] =
    &["Accueil", "Nouveautés", "Épicerie fine", "Vins", "Maison", "Mon compte", "Magasins", "Recettes"];
const SCREENS: &[&str] = &["Home", "Catalogue", "Carte fidélité", "Panier", "Offres"];
const SOCIAL: &[&str] = &["instagram", "facebook", "tiktok", "x"];

struct Person {
    index: usize,
    user_id: Option<String>,
    devices: Vec<String>,
    email: String,
    phone: Option<String>,
    card: Option<String>,
    social: Option<String>,
    home_store: usize,
    activity: f64,
}

fn person(rng: &mut ChaCha8Rng, index: usize) -> Person {
    let first = FIRST_NAMES[index % FIRST_NAMES.len()];
    let last = LAST_NAMES[(index / FIRST_NAMES.len()) % LAST_NAMES.len()];
    let email = format!(
        "{}.{}{}@example.fr",
        ascii_fold(first).to_lowercase(),
        ascii_fold(last).to_lowercase(),
        index / (FIRST_NAMES.len() * LAST_NAMES.len())
    );
    let devices = (0..rng.gen_range(1..=3)).map(|d| format!("dev-{index:06}-{d}")).collect();
    Person {
        index,
        user_id: rng.gen_bool(0.7).then(|| format!("web-{index:06}")),
        devices,
        email,
        phone: rng.gen_bool(0.5).then(|| format!("+336{:08}", rng.gen_range(0..100_000_000u32))),
        card: rng.gen_bool(0.45).then(|| format!("9250{:012}", index)),
        social: rng
            .gen_bool(0.2)
            .then(|| format!("{}:{}.{}", SOCIAL[index % SOCIAL.len()], ascii_fold(first).to_lowercase(), index)),
        home_store: rng.gen_range(0..STORES.len()),
        activity: rng.gen_range(0.2..1.8),
    }
}

fn ascii_fold(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'ï' | 'î' => 'i',
            'ô' => 'o',
            'à' | 'â' => 'a',
            'ç' => 'c',
            other => other,
        })
        .collect()
}

fn name_of(person: &Person) -> (&'static str, &'static str) {
    (FIRST_NAMES[person.index % FIRST_NAMES.len()], LAST_NAMES[(person.index / FIRST_NAMES.len()) % LAST_NAMES.len()])
}

/// Generate one person's messages as Segment JSON values, oldest first.
fn person_messages(
    rng: &mut ChaCha8Rng,
    person: &Person,
    count: usize,
    start: DateTime<Utc>,
    span_days: i64,
) -> Vec<Value> {
    let mut times: Vec<i64> = (0..count).map(|_| rng.gen_range(0..span_days * 86_400)).collect();
    times.sort_unstable();
    let (first, last) = name_of(person);
    let (store_id, city, postcode) = STORES[person.home_store];
    let mut messages = Vec::with_capacity(count);
    let mut identified = false;
    let mut order_number = 0;
    for (n, offset) in times.into_iter().enumerate() {
        let timestamp = (start + Duration::seconds(offset)).to_rfc3339();
        let message_id = format!("demo-{:06}-{:05}", person.index, n);
        let device = person.devices[n % person.devices.len()].clone();
        let roll: f64 = rng.gen();
        let mut message = Map::new();
        message.insert("messageId".into(), json!(message_id));
        message.insert("timestamp".into(), json!(timestamp));
        // Early web and app activity is anonymous; the first identify links the
        // device to the account (a merge when both had a profile).
        let signed_in = identified && person.user_id.is_some();
        if !identified && n > 2 && (roll < 0.3 || n > 8) {
            identified = true;
            message.insert("type".into(), json!("identify"));
            if let Some(user) = &person.user_id {
                message.insert("userId".into(), json!(user));
            }
            message.insert("anonymousId".into(), json!(device));
            let mut traits = json!({
                "email": person.email, "first_name": first, "last_name": last,
                "city": city, "postcode": postcode, "country": "FR",
            });
            if let Some(phone) = &person.phone {
                traits["phone"] = json!(phone);
            }
            if let Some(card) = &person.card {
                traits["card_number"] = json!(card);
            }
            if let Some(handle) = &person.social {
                let (network, handle) = handle.split_once(':').unwrap_or(("instagram", handle));
                traits["social"] = json!({ network: handle });
            }
            message.insert("traits".into(), traits);
            message.insert("context".into(), json!({"channel": "web", "ip": "203.0.113.7"}));
            messages.push(Value::Object(message));
            continue;
        }
        let web_identity = |message: &mut Map<String, Value>| {
            if signed_in {
                message.insert("userId".into(), json!(person.user_id));
            }
            message.insert("anonymousId".into(), json!(device));
        };
        let product = PRODUCTS.choose(rng).expect("products");
        match roll {
            r if r < 0.40 => {
                web_identity(&mut message);
                message.insert("type".into(), json!("page"));
                message.insert("name".into(), json!(PAGES.choose(rng)));
                message.insert("context".into(), json!({"page": {"path": "/"}, "userAgent": "Mozilla/5.0"}));
            }
            r if r < 0.55 => {
                web_identity(&mut message);
                message.insert("type".into(), json!("screen"));
                message.insert("name".into(), json!(SCREENS.choose(rng)));
                message.insert("context".into(), json!({"app": {"name": "relais-demo"}, "device": {"id": device}}));
            }
            r if r < 0.68 => {
                web_identity(&mut message);
                message.insert("type".into(), json!("track"));
                // Browsing, then (less often) a basket and a checkout: the
                // stages of a journey (information, evaluation, decision).
                let event = match r {
                    r if r < 0.645 => "Product Viewed",
                    r if r < 0.665 => "Product Added",
                    _ => "Checkout Started",
                };
                message.insert("event".into(), json!(event));
                message.insert(
                    "properties".into(),
                    json!({"product_id": product.0, "name": product.1, "category": product.2, "price": product.3 as f64 / 100.0}),
                );
                let web = r < 0.62 || (0.645..0.655).contains(&r) || (0.665..0.672).contains(&r);
                message.insert("context".into(), json!({"channel": if web { "web" } else { "app" }}));
            }
            r if r < 0.76 => {
                // An order: online when signed in, else at the till with the card.
                order_number += 1;
                let quantity = rng.gen_range(1..=3);
                let lines: Vec<Value> = (0..rng.gen_range(1..=3))
                    .map(|_| {
                        let p = PRODUCTS.choose(rng).expect("products");
                        json!({"product_id": p.0, "name": p.1, "category": p.2, "price": p.3 as f64 / 100.0, "quantity": quantity})
                    })
                    .collect();
                let total: f64 = lines.iter().map(|l| l["price"].as_f64().unwrap_or(0.0) * quantity as f64).sum();
                message.insert("type".into(), json!("track"));
                message.insert("event".into(), json!("Order Completed"));
                let at_store = person.card.is_some() && (!signed_in || rng.gen_bool(0.5));
                let store = if rng.gen_bool(0.85) { store_id } else { STORES.choose(rng).expect("stores").0 };
                let mut properties = json!({
                    "order_id": format!("ord-{:06}-{:03}", person.index, order_number),
                    "total": (total * 100.0).round() / 100.0, "currency": "EUR", "products": lines,
                });
                if at_store {
                    message.insert("anonymousId".into(), json!(format!("till-{}", person.index)));
                    message.insert(
                        "context".into(),
                        json!({"channel": "store", "store": store, "traits": {"card_number": person.card}}),
                    );
                    properties["store"] = json!(store);
                } else if signed_in {
                    web_identity(&mut message);
                    message.insert("context".into(), json!({"channel": "web"}));
                } else {
                    web_identity(&mut message);
                    message.insert("context".into(), json!({"channel": "app"}));
                }
                message.insert("properties".into(), properties);
            }
            r if r < 0.84 => {
                message.insert("type".into(), json!("track"));
                message.insert("event".into(), json!("Email Opened"));
                message.insert("anonymousId".into(), json!(format!("mail-{}", person.index)));
                message.insert("context".into(), json!({"channel": "email", "traits": {"email": person.email}}));
                message.insert("properties".into(), json!({"campaign": "lettre-hebdo"}));
            }
            r if r < 0.89 => {
                message.insert("type".into(), json!("track"));
                message.insert("event".into(), json!("Store Visited"));
                match &person.card {
                    Some(card) => {
                        message.insert("anonymousId".into(), json!(format!("till-{}", person.index)));
                        message.insert(
                            "context".into(),
                            json!({"channel": "store", "store": store_id, "traits": {"card_number": card}}),
                        );
                    }
                    None => {
                        web_identity(&mut message);
                        message.insert("context".into(), json!({"channel": "store", "store": store_id}));
                    }
                }
            }
            r if r < 0.92 => {
                message.insert("type".into(), json!("track"));
                message.insert("event".into(), json!("Support Case Opened"));
                message.insert("anonymousId".into(), json!(format!("call-{}", person.index)));
                let mut traits = json!({"email": person.email});
                if let Some(phone) = &person.phone {
                    traits = json!({"phone": phone});
                }
                message.insert("context".into(), json!({"channel": "call_centre", "traits": traits}));
                message.insert(
                    "properties".into(),
                    json!({"topic": (["livraison", "fidélité", "retour"][rng.gen_range(0..3)])}),
                );
            }
            r if r < 0.95 => {
                web_identity(&mut message);
                message.insert("type".into(), json!("track"));
                message.insert("event".into(), json!("Social Interaction"));
                message.insert("context".into(), json!({"channel": "social"}));
                message.insert(
                    "properties".into(),
                    json!({"network": SOCIAL.choose(rng), "action": (["like", "share", "comment", "reply", "mention"][rng.gen_range(0..5)])}),
                );
            }
            r if r < 0.97 => {
                web_identity(&mut message);
                message.insert("type".into(), json!("track"));
                message.insert("event".into(), json!(if r < 0.96 { "Review Submitted" } else { "Survey Answered" }));
                message.insert("context".into(), json!({"channel": "web"}));
                message
                    .insert("properties".into(), json!({"rating": rng.gen_range(1..=5), "nps": rng.gen_range(0..=10)}));
            }
            r if r < 0.985 => {
                message.insert("type".into(), json!("track"));
                message.insert("event".into(), json!("Catalogue Requested"));
                web_identity(&mut message);
                message.insert("context".into(), json!({"channel": "catalogue"}));
                message.insert("properties".into(), json!({"edition": "printemps"}));
            }
            r if r < 0.99 && order_number > 0 => {
                web_identity(&mut message);
                message.insert("type".into(), json!("track"));
                message.insert("event".into(), json!("Order Refunded"));
                message.insert("context".into(), json!({"channel": "web"}));
                message.insert(
                    "properties".into(),
                    json!({"order_id": format!("ord-{:06}-{:03}", person.index, order_number), "total": 5.0, "currency": "EUR"}),
                );
            }
            _ => {
                web_identity(&mut message);
                message.insert("type".into(), json!("track"));
                message.insert("event".into(), json!("Device Reading"));
                message.insert("context".into(), json!({"channel": "device"}));
                message.insert(
                    "properties".into(),
                    json!({"device": "balance-connectee", "reading": rng.gen_range(50..95)}),
                );
            }
        }
        messages.push(Value::Object(message));
    }
    messages
}

/// The demo's messages for people `range`, in batches; used by the demo and the benchmark.
pub fn generate(
    size: DemoSize,
    now: DateTime<Utc>,
    mut each: impl FnMut(Vec<Value>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let span_days = 730;
    let start = now - Duration::days(span_days);
    let per_person = size.events as f64 / size.people.max(1) as f64;
    let mut batch = Vec::with_capacity(10_000);
    for index in 0..size.people {
        let mut rng = ChaCha8Rng::seed_from_u64(size.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let person = person(&mut rng, index);
        let count = (per_person * person.activity).round().max(3.0) as usize;
        batch.extend(person_messages(&mut rng, &person, count, start, span_days));
        if batch.len() >= 5_000 {
            each(std::mem::take(&mut batch))?;
        }
    }
    if !batch.is_empty() {
        each(batch)?;
    }
    Ok(())
}

/// The demo's loyalty programme (the example file of the repository).
const DEMO_PROGRAMME: &str = include_str!("../../../examples/club-relais.toml");

/// After the load: rewards, a coupon campaign, and the scheduled jobs run
/// once (points older than a year expire, tiers are reviewed). Prints the
/// programme's figures.
fn loyalty_catalogue(store: &Store, programme: &str, today: chrono::NaiveDate) -> anyhow::Result<()> {
    use relais_domain::loyalty::coupons::Campaign;
    use relais_domain::loyalty::rewards::Reward;
    let engine = store.blocking();
    let rewards = [
        ("bon-5", "Bon d'achat de 5 €", 500, None, vec![]),
        ("bon-10", "Bon d'achat de 10 €", 1000, None, vec![]),
        ("sac-toile", "Sac en toile Relais", 800, Some(500), vec![]),
        ("atelier-or", "Atelier beauté privé (membres Or)", 2000, Some(40), vec!["or".to_string()]),
    ];
    for (id, name, cost, stock, tiers) in rewards {
        let reward = Reward {
            id: id.into(),
            name: name.into(),
            cost,
            stock,
            valid_from: None,
            valid_until: None,
            tiers,
            hold_days: None,
        };
        engine.loyalty_put_reward(programme, &reward)?;
    }
    let campaign = Campaign {
        id: "printemps".into(),
        benefit: "-10 € dès 50 € d'achat".into(),
        bonus_points: 50,
        valid_from: today,
        valid_until: today + Duration::days(60),
        per_member: 1,
        total: Some(1_000),
        tiers: Vec::new(),
        early_access: Default::default(),
        segments: Vec::new(),
    };
    let done = store.blocking_audited(|engine, audit| {
        crate::loyalty::issue_coupons(engine, audit, "demo", programme, &campaign, 1_000)?;
        crate::loyalty::run_scheduled(engine, audit, "demo", today, true)
    })?;
    let expired = done.points;
    let report = crate::store::loyalty::LoyaltyReport::from_rows(
        &engine.loyalty_programmes()?.into_iter().find(|p| p.head.key == programme).expect("applied above"),
        None,
        engine.loyalty_report(programme, None)?,
    );
    eprintln!(
        "loyalty: {} members hold {} points ({:.2} € of liability); {} issued, {expired} expired",
        report.members,
        report.outstanding_points,
        report.liability_minor as f64 / 100.0,
        report.issued,
    );
    Ok(())
}

/// Load the demo into `store`, with a progress bar.
/// The demo's saved segments (name, source, description) and the typology of
/// the customer room that follows them.
const DEMO_SEGMENTS: [(&str, &str, &str); 5] = [
    ("champions", r#"rfm_group in ("champions", "loyal")"#, "Nos meilleurs clients (RFM)"),
    ("a-risque", r#"rfm_group in ("at_risk", "cannot_lose_them")"#, "Bons clients qui s'éloignent"),
    ("acheteurs-du-mois", r#"orders_30d >= 1"#, "Ont acheté ces 30 derniers jours"),
    ("fideles-lyon", r#"orders_365d >= 3 and city = "Lyon""#, "Clients réguliers à Lyon"),
    ("avis-recents", r#"count(event "Review Submitted", 30d) >= 1"#, "Ont donné un avis ce mois-ci"),
];

/// Save the demo's segments and typology, then refresh once: scores (RFM,
/// lifetime value), memberships, and the first daily snapshot.
fn demo_segments(store: &Store, settings: &Settings, now: chrono::DateTime<Utc>) -> anyhow::Result<()> {
    let engine = store.blocking();
    for (name, source, description) in DEMO_SEGMENTS {
        let segment = crate::segments::compile(engine, &settings.ingest, source, relais_domain::Role::Admin)
            .map_err(|e| anyhow::anyhow!("the demo segment `{name}` is invalid: {e}"))?;
        engine.segment_put(&crate::store::segments::SegmentRecord {
            id: relais_domain::SegmentId::new(),
            name: name.into(),
            source: segment.source().into(),
            description: description.into(),
            created_at: now,
            updated_at: now,
            refreshed_at: None,
            members: 0,
        })?;
    }
    let names: Vec<String> = DEMO_SEGMENTS.iter().take(3).map(|(name, _, _)| name.to_string()).collect();
    crate::typologies::save(
        engine,
        "salle-clients",
        &names,
        "La salle clients : meilleurs, à risque, acheteurs du mois",
        now,
    )?;
    let report = crate::segments::refresh(engine, &settings.ingest, now)?;
    let sizes: Vec<String> = report.segments.iter().map(|s| format!("{} {}", s.name, s.size)).collect();
    eprintln!(
        "segments: {} ({} buyers scored, {} with a lifetime value); typology salle-clients",
        sizes.join(", "),
        report.rfm_scored,
        report.clv_scored
    );
    Ok(())
}

/// The founding text's journey example (examples/journeys), with its what-if:
/// social networks take 20% of every evaluation.
const FOUNDING_EXAMPLE: &str = include_str!("../../../examples/journeys/founding-text.json");

fn founding_example() -> anyhow::Result<()> {
    use relais_domain::journey::{Operation, Share, StageModel, WhatIf};
    let model: StageModel = serde_json::from_str(FOUNDING_EXAMPLE)?;
    let operation = Operation::Mix { channel: "social".into(), share: Share::new(0.2)? };
    let report = crate::journey::what_if(&model, &[WhatIf { into_stage: "evaluation".into(), operation }])?;
    let changes: Vec<String> = report
        .channels
        .iter()
        .map(|c| match report.change_pct.get(c).copied().flatten() {
            Some(pct) => format!("{c} {pct:+.1}%"),
            None => format!("{c} n/a"),
        })
        .collect();
    eprintln!(
        "journeys (founding example, examples/journeys): social networks at 20% of evaluations move purchases: {}",
        changes.join(", ")
    );
    Ok(())
}

pub fn load(store: &Store, settings: &Settings, size: DemoSize) -> anyhow::Result<()> {
    let progress = indicatif::ProgressBar::new(size.events as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("demo {bar:40} {pos}/{len} events ({per_sec}, {eta} left)")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let now = Utc::now();
    let started = std::time::Instant::now();
    let mut loaded = 0u64;
    // The loyalty programme is in force from the demo's first day, so the
    // demo's orders and engagement earn through its real rules as they load.
    let today = settings.ingest.day_of(now);
    let mut programme = crate::loyalty::parse_programme(DEMO_PROGRAMME, crate::loyalty::FileFormat::Toml)
        .map_err(|e| anyhow::anyhow!("the demo programme is invalid: {e}"))?;
    programme.versions[0].effective_from = settings.ingest.day_of(now - Duration::days(730));
    store
        .blocking()
        .loyalty_apply(&programme, today)?
        .map_err(|e| anyhow::anyhow!("the demo programme was refused: {e}"))?;
    // Parsing runs on this thread while the store's writer commits the previous
    // batch, so both cores work.
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<TrackingMessage>>(2);
        let writer = scope.spawn(move || -> anyhow::Result<u64> {
            let mut stored = 0u64;
            for messages in receiver {
                stored += store.blocking().ingest("demo", messages)?.len() as u64;
            }
            Ok(stored)
        });
        generate(size, now, |values| {
            let envelope = Envelope {
                received_at: now,
                implied_type: None::<MessageType>,
                batch_sent_at: None,
                batch_context: None,
                default_currency: &settings.ingest.currency,
                card_policy: settings.ingest.card_policy,
            };
            let mut messages = Vec::with_capacity(values.len());
            for value in values {
                messages.push(TrackingMessage::parse_value(value, &envelope)?);
            }
            loaded += messages.len() as u64;
            progress.set_position(loaded);
            sender.send(messages).map_err(|_| anyhow::anyhow!("the demo writer stopped"))?;
            Ok(())
        })?;
        drop(sender);
        writer.join().map_err(|_| anyhow::anyhow!("the demo writer panicked"))??;
        Ok(())
    })?;
    progress.finish_and_clear();
    loyalty_catalogue(store, &programme.head.key, today)?;
    demo_segments(store, settings, now)?;
    founding_example()?;
    let (customers, events) = store.blocking().counts()?;
    eprintln!(
        "demo loaded: {events} events, {customers} customer profiles after identity resolution, in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
