//! File import: Segment messages from JSONL or CSV (columns named by Segment field
//! paths such as `properties.total`), and customers from CSV (one identify per
//! row). Each row is stored or rejected with its reason into a side file;
//! re-importing a file stores nothing twice.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::Utc;
use relais_domain::message::Envelope;
use relais_domain::TrackingMessage;
use serde_json::{Map, Value};

use crate::config::Settings;
use crate::store::{Outcome, Store};

/// Rows stored, duplicates and rejects of an import.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImportSummary {
    /// Rows stored now.
    pub stored: usize,
    /// Rows already stored by an earlier import.
    pub duplicates: usize,
    /// Rows rejected (see the rejected file).
    pub rejected: usize,
}

/// Messages sent to the store at once.
const CHUNK: usize = 5_000;

/// Columns of a customers CSV that are identifiers, with the trait that carries them.
const CUSTOMER_ID_COLUMNS: &[(&str, &str)] = &[
    ("user_id", "userId"),
    ("anonymous_id", "anonymousId"),
    ("email", "email"),
    ("phone", "phone"),
    ("customer_number", "customer_number"),
    ("card_number", "card_number"),
    ("card", "card_number"),
];

/// Where rejected rows go by default: beside the file.
pub fn default_rejected_path(file: &Path, extension: &str) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(format!(".rejected.{extension}"));
    PathBuf::from(name)
}

/// Collects rejected rows lazily (no file when nothing is rejected).
struct Rejects {
    path: PathBuf,
    out: Option<std::io::BufWriter<std::fs::File>>,
    count: usize,
}

impl Rejects {
    fn new(path: PathBuf) -> Rejects {
        Rejects { path, out: None, count: 0 }
    }

    fn write(&mut self, line: usize, reason: &str, row: &str) -> anyhow::Result<()> {
        self.count += 1;
        let out = match &mut self.out {
            Some(out) => out,
            None => self.out.insert(std::io::BufWriter::new(
                std::fs::File::create(&self.path).with_context(|| format!("cannot create {}", self.path.display()))?,
            )),
        };
        writeln!(out, "{}", serde_json::json!({"line": line, "reason": reason, "row": row}))?;
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<usize> {
        if let Some(out) = &mut self.out {
            out.flush()?;
        }
        Ok(self.count)
    }
}

/// Parses rows into messages and stores them in chunks.
struct Importer<'a> {
    store: &'a Store,
    settings: &'a Settings,
    source: &'a str,
    chunk: Vec<TrackingMessage>,
    summary: ImportSummary,
    rejects: Rejects,
}

impl Importer<'_> {
    fn add(&mut self, line: usize, value: Result<Value, String>, row: &str) -> anyhow::Result<()> {
        let envelope = Envelope {
            received_at: Utc::now(),
            implied_type: None,
            batch_sent_at: None,
            batch_context: None,
            default_currency: &self.settings.ingest.currency,
            card_policy: self.settings.ingest.card_policy,
        };
        match value.and_then(|v| TrackingMessage::parse_value(v, &envelope).map_err(|e| e.to_string())) {
            Ok(message) => {
                self.chunk.push(message);
                if self.chunk.len() >= CHUNK {
                    self.flush()?;
                }
            }
            Err(reason) => self.rejects.write(line, &reason, row)?,
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let outcomes = self.store.blocking().ingest(self.source, std::mem::take(&mut self.chunk))?;
        crate::segments::after_ingest(self.store.blocking(), &self.settings.ingest, &outcomes, None);
        for outcome in outcomes {
            match outcome {
                Outcome::Stored { .. } => self.summary.stored += 1,
                Outcome::Duplicate { .. } => self.summary.duplicates += 1,
            }
        }
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<ImportSummary> {
        self.flush()?;
        self.summary.rejected = self.rejects.finish()?;
        Ok(self.summary)
    }
}

fn progress_bar(size: u64) -> indicatif::ProgressBar {
    let progress = indicatif::ProgressBar::new(size);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress
}

/// Import Segment messages from JSONL (one per line) or CSV (when the file name ends in `.csv`).
pub fn import_events(
    store: &Store,
    settings: &Settings,
    file: &Path,
    source: &str,
    rejected: PathBuf,
) -> anyhow::Result<ImportSummary> {
    let input = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let progress = progress_bar(input.metadata().map(|m| m.len()).unwrap_or(0));
    let mut importer = Importer {
        store,
        settings,
        source,
        chunk: Vec::new(),
        summary: ImportSummary::default(),
        rejects: Rejects::new(rejected),
    };
    let is_csv = file.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if is_csv {
        let mut reader = csv::Reader::from_reader(progress.wrap_read(input));
        let headers = reader.headers().context("cannot read the CSV header")?.clone();
        for (number, record) in reader.records().enumerate() {
            let line = number + 2;
            let record = record.with_context(|| format!("cannot read CSV row at line {line}"))?;
            let row = record.iter().collect::<Vec<_>>().join(",");
            importer.add(line, Ok(message_from_columns(&headers, &record)), &row)?;
        }
    } else {
        let reader = std::io::BufReader::new(progress.wrap_read(input));
        for (number, line) in reader.lines().enumerate() {
            let line_text = line.with_context(|| format!("cannot read line {} of {}", number + 1, file.display()))?;
            if line_text.trim().is_empty() {
                continue;
            }
            let value = serde_json::from_str::<Value>(&line_text).map_err(|e| format!("not JSON: {e}"));
            importer.add(number + 1, value, &line_text)?;
        }
    }
    progress.finish_and_clear();
    importer.finish()
}

/// Fields that are ids or names: kept as text even when they look like numbers.
const TEXT_FIELDS: &[&str] = &["type", "event", "name", "userId", "anonymousId", "messageId", "groupId", "previousId"];

/// Build a message from CSV columns named by Segment field paths (`properties.total`).
fn message_from_columns(headers: &csv::StringRecord, record: &csv::StringRecord) -> Value {
    let mut message = Map::new();
    for (header, cell) in headers.iter().zip(record.iter()) {
        if cell.is_empty() {
            continue;
        }
        let path: Vec<&str> = header.trim().split('.').collect();
        let value = if path.len() == 1 && TEXT_FIELDS.contains(&path[0]) {
            Value::String(cell.to_string())
        } else {
            typed_cell(cell)
        };
        insert_path(&mut message, &path, value);
    }
    Value::Object(message)
}

/// A cell as a JSON number or boolean when it is one, else as text.
fn typed_cell(cell: &str) -> Value {
    match cell {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => match cell.parse::<serde_json::Number>() {
            // Keep leading zeros (postcodes, phone numbers) as text.
            Ok(number) if !(cell.len() > 1 && cell.starts_with('0') && !cell.starts_with("0.")) => {
                Value::Number(number)
            }
            _ => Value::String(cell.to_string()),
        },
    }
}

fn insert_path(map: &mut Map<String, Value>, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            map.insert((*last).to_string(), value);
        }
        [first, rest @ ..] => {
            let entry = map.entry((*first).to_string()).or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            if let Value::Object(inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

/// Import customers from CSV: one identify per row, identifiers from the
/// `user_id`, `email`, `phone`, `customer_number`, `card_number` columns and every
/// other column as a trait. A row's `messageId` is derived from its content, so
/// importing the same file twice stores nothing twice.
pub fn import_customers(
    store: &Store,
    settings: &Settings,
    file: &Path,
    rejected: PathBuf,
) -> anyhow::Result<ImportSummary> {
    use sha2::{Digest, Sha256};
    let input = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let progress = progress_bar(input.metadata().map(|m| m.len()).unwrap_or(0));
    let mut reader = csv::Reader::from_reader(progress.wrap_read(input));
    let headers = reader.headers().context("cannot read the CSV header")?.clone();
    let known: Vec<&str> = CUSTOMER_ID_COLUMNS.iter().map(|(c, _)| *c).collect();
    if !headers.iter().any(|h| known.contains(&h.trim())) {
        anyhow::bail!(
            "{} has no identifier column; name at least one column user_id, email, phone, customer_number or card_number",
            file.display()
        );
    }
    let mut importer = Importer {
        store,
        settings,
        source: "import-customers",
        chunk: Vec::new(),
        summary: ImportSummary::default(),
        rejects: Rejects::new(rejected),
    };
    for (number, record) in reader.records().enumerate() {
        let line = number + 2;
        let record = record.with_context(|| format!("cannot read CSV row at line {line}"))?;
        let row = record.iter().collect::<Vec<_>>().join(",");
        let mut message = Map::new();
        let mut traits = Map::new();
        for (header, cell) in headers.iter().zip(record.iter()) {
            let header = header.trim();
            let cell = cell.trim();
            if cell.is_empty() {
                continue;
            }
            match CUSTOMER_ID_COLUMNS.iter().find(|(column, _)| *column == header) {
                Some((_, "userId")) => {
                    message.insert("userId".into(), Value::String(cell.into()));
                }
                Some((_, "anonymousId")) => {
                    message.insert("anonymousId".into(), Value::String(cell.into()));
                }
                Some((_, field)) => {
                    traits.insert((*field).into(), Value::String(cell.into()));
                }
                None => {
                    traits.insert(header.into(), Value::String(cell.into()));
                }
            }
        }
        let digest = hex::encode(&Sha256::digest(row.as_bytes())[..12]);
        message.insert("type".into(), Value::String("identify".into()));
        message.insert("messageId".into(), Value::String(format!("customers-csv-{digest}")));
        if !message.contains_key("userId") && !message.contains_key("anonymousId") {
            // Customers known only by e-mail, phone or number still need an id for
            // the Segment spec: the row's first identifier serves.
            match CUSTOMER_ID_COLUMNS.iter().find_map(|(_, field)| traits.get(*field).and_then(Value::as_str)) {
                Some(first) => {
                    message.insert("anonymousId".into(), Value::String(format!("import:{first}")));
                }
                None => {
                    importer.rejects.write(
                        line,
                        "the row has no identifier (user_id, email, phone, customer_number or card_number)",
                        &row,
                    )?;
                    continue;
                }
            }
        }
        message.insert("traits".into(), Value::Object(traits));
        importer.add(line, Ok(Value::Object(message)), &row)?;
    }
    progress.finish_and_clear();
    importer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_columns_become_nested_segment_fields() {
        let headers = csv::StringRecord::from(vec![
            "type",
            "userId",
            "event",
            "properties.total",
            "context.store",
            "traits.postcode",
        ]);
        let record =
            csv::StringRecord::from(vec!["track", "00042", "Order Completed", "42.5", "nantes-graslin", "01000"]);
        let message = message_from_columns(&headers, &record);
        assert_eq!(message["userId"], "00042");
        assert_eq!(message["properties"]["total"], 42.5);
        assert_eq!(message["context"]["store"], "nantes-graslin");
        assert_eq!(message["traits"]["postcode"], "01000");
    }
}
