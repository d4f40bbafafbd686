//! Access and portability: everything relais holds about a person, in one zip
//! archive of JSON and CSV files that they can open and reuse elsewhere.

use std::io::Write;

use relais_domain::CustomerId;
use serde_json::{json, Value};
use zip::write::SimpleFileOptions;

use crate::store::{CustomerLookup, Engine, StoreError, StoredEvent, TimelineCursor};

/// Events read per page while exporting.
const PAGE: usize = 1_000;

/// An access export.
#[derive(Debug)]
pub struct ExportArchive {
    /// The zip file.
    pub bytes: Vec<u8>,
    /// The person's profile.
    pub customer: CustomerId,
    /// Events included.
    pub events: usize,
}

const README: &str = "\
Your data held by relais / Vos donnees conservees par relais

profile.json      your profile: identifiers, traits you gave, computed facts
                  (first and last visit, orders, revenue), merged profiles
                  votre profil : identifiants, informations donnees, faits calcules
identifiers.csv   every identifier linked to you / chacun de vos identifiants
events.json       every interaction, across all channels, newest first
events.csv        the same as a table / la meme chose en tableau
merges.json       profiles of yours that were joined / profils rattaches
consents.json     every consent you gave or withdrew, with its proof
                  chaque accord donne ou retire, avec sa preuve
audit.json        who looked at or acted on your data, when
                  qui a consulte vos donnees ou agi dessus, et quand

Dates are UTC (ISO 8601). Amounts in events are as sent by the touchpoint.
Les dates sont en UTC (ISO 8601).
";

fn io_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Database(format!("cannot build the export archive: {error}"))
}

/// Everything relais holds about a person, as the access archive holds it
/// (the portal's `/me/data.json` is this, as JSON).
#[derive(Debug, serde::Serialize)]
pub struct PersonData {
    /// Profile, identifiers, computed facts, orders by day.
    pub profile: Value,
    /// Every interaction, newest first.
    pub events: Vec<StoredEvent>,
    /// Profiles of theirs that were joined.
    pub merges: Vec<crate::store::MergeRecord>,
    /// Every consent given or withdrawn, with its proof.
    pub consents: Vec<relais_domain::consent::ConsentFact>,
    /// Who looked at or acted on their data, when.
    pub audit: Vec<crate::privacy::audit::AuditRecord>,
    /// The identifiers, for the CSV file.
    #[serde(skip)]
    identifiers: Vec<relais_domain::Identifier>,
}

/// Gather a person: their profile (and those merged into it), events, merges,
/// consents and audit trail ("who looked at my data").
pub fn person_data(engine: &dyn Engine, id: CustomerId) -> Result<PersonData, StoreError> {
    let record = match engine.customer(id)? {
        CustomerLookup::Found(record) => *record,
        CustomerLookup::MergedInto(_) | CustomerLookup::NotFound => return Err(StoreError::NotFound),
    };
    let mut events: Vec<StoredEvent> = Vec::new();
    let mut cursor: Option<TimelineCursor> = None;
    loop {
        let page = engine.events(id, cursor.as_ref(), PAGE)?;
        events.extend(page.events);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let merges = engine.merges(id)?;
    let mut subjects = record.merged_from.clone();
    subjects.push(id);
    let trail = engine.audit_trail(&subjects)?;
    let consents = engine.consents(id)?;
    let traits = &record.traits;
    let profile = json!({
        "id": record.id,
        "created_at": record.created_at,
        "profile": record.profile,
        "identifiers": record.identifiers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "shared_identifiers": record.shared_identifiers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "merged_from": record.merged_from,
        "accounts": record.accounts,
        "computed": {
            "first_seen": traits.first_seen,
            "last_seen": traits.last_seen,
            "last_channel": traits.last_channel.map(|c| c.as_str()),
            "event_count": traits.event_count,
            "order_count": traits.order_count,
            "refund_count": traits.refund_count,
            "revenue_minor": traits.revenue_minor,
            "favourite_store": traits.favourite_store(),
        },
        "orders_by_day": record.days.iter().map(|d| json!({
            "day": d.day, "orders": d.orders, "revenue_minor": d.revenue_minor
        })).collect::<Vec<_>>(),
    });

    Ok(PersonData { profile, events, merges, consents, audit: trail, identifiers: record.identifiers })
}

/// Export a person: everything `person_data` gathers, as a zip archive of
/// JSON and CSV files.
pub fn export_person(engine: &dyn Engine, id: CustomerId) -> Result<ExportArchive, StoreError> {
    let PersonData { profile, events, merges, consents, audit: trail, identifiers } = person_data(engine, id)?;
    let mut identifiers_csv = csv::Writer::from_writer(Vec::new());
    identifiers_csv.write_record(["kind", "value"]).map_err(io_error)?;
    for identifier in &identifiers {
        identifiers_csv.write_record([identifier.kind().as_str(), identifier.value()]).map_err(io_error)?;
    }
    let mut events_csv = csv::Writer::from_writer(Vec::new());
    events_csv
        .write_record(["event_id", "timestamp", "type", "name", "channel", "store", "properties", "context", "traits"])
        .map_err(io_error)?;
    for event in &events {
        let json_cell = |v: &Value| if v.is_null() { String::new() } else { v.to_string() };
        events_csv
            .write_record([
                event.event_id.to_string(),
                event.timestamp.to_rfc3339(),
                event.kind.clone(),
                event.name.clone().unwrap_or_default(),
                event.channel.as_str().to_string(),
                event.store.clone().unwrap_or_default(),
                json_cell(&event.properties),
                json_cell(&event.context),
                json_cell(&event.traits),
            ])
            .map_err(io_error)?;
    }

    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let files: [(&str, Vec<u8>); 8] = [
        ("README.txt", README.as_bytes().to_vec()),
        ("profile.json", serde_json::to_vec_pretty(&profile).map_err(io_error)?),
        ("identifiers.csv", identifiers_csv.into_inner().map_err(io_error)?),
        ("events.json", serde_json::to_vec_pretty(&events).map_err(io_error)?),
        ("events.csv", events_csv.into_inner().map_err(io_error)?),
        ("merges.json", serde_json::to_vec_pretty(&merges).map_err(io_error)?),
        ("audit.json", serde_json::to_vec_pretty(&trail).map_err(io_error)?),
        ("consents.json", serde_json::to_vec_pretty(&consents).map_err(io_error)?),
    ];
    for (name, bytes) in files {
        zip.start_file(name, options).map_err(io_error)?;
        zip.write_all(&bytes).map_err(io_error)?;
    }
    let bytes = zip.finish().map_err(io_error)?.into_inner();
    Ok(ExportArchive { bytes, customer: id, events: events.len() })
}
