//! Backups and the erasure journal.
//!
//! A backup is a copy of the database (SQLite's online backup, or `pg_dump`),
//! so it still holds people erased after it was taken. The erasure journal,
//! kept outside the database (beside the audit heads), lists every erasure;
//! a restore re-applies all of them, so an erased person never comes back.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, Utc};
use relais_domain::{CustomerId, ErasureId};
use serde::{Deserialize, Serialize};

use crate::store::{Engine, Location, Store, StoreError};

/// The journal's file name in the outside folder (`RELAIS_AUDIT_DIR`).
pub const JOURNAL_FILE: &str = "erasures.jsonl";

/// One erasure, as journaled (no personal data: profile ids only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The erasure.
    pub erasure_id: ErasureId,
    /// When.
    pub erased_at: DateTime<Utc>,
    /// The profiles erased.
    pub customers: Vec<CustomerId>,
}

fn journal_error(dir: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Config(format!("cannot use the erasure journal in {}: {e}; check RELAIS_AUDIT_DIR", dir.display()))
}

/// Append entries to the journal (flushed to disk).
pub fn append(dir: &Path, entries: &[JournalEntry]) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| journal_error(dir, e))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(JOURNAL_FILE))
        .map_err(|e| journal_error(dir, e))?;
    for entry in entries {
        let line = serde_json::to_string(entry).map_err(|e| journal_error(dir, e))?;
        writeln!(file, "{line}").map_err(|e| journal_error(dir, e))?;
    }
    file.sync_all().map_err(|e| journal_error(dir, e))
}

/// Every journaled erasure.
pub fn read(dir: &Path) -> Result<Vec<JournalEntry>, StoreError> {
    match std::fs::read_to_string(dir.join(JOURNAL_FILE)) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| journal_error(dir, e)))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(journal_error(dir, e)),
    }
}

/// Journal the erasures the database knows and the journal does not (an
/// erasure whose journal write failed); returns how many were added.
pub fn sync(engine: &dyn Engine, dir: &Path) -> Result<usize, StoreError> {
    let known: std::collections::HashSet<ErasureId> = read(dir)?.into_iter().map(|e| e.erasure_id).collect();
    let missing: Vec<JournalEntry> =
        engine.erasures()?.into_iter().filter(|e| !known.contains(&e.erasure_id)).collect();
    append(dir, &missing)?;
    Ok(missing.len())
}

/// What a backup wrote.
#[derive(Debug, Serialize)]
pub struct BackupReport {
    /// The file.
    pub file: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Erasures journaled so far (a restore re-applies them).
    pub journaled_erasures: usize,
}

fn tool_error(tool: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Config(format!(
        "{tool} failed: {e}; it comes with the PostgreSQL client (apt-get install postgresql-client)"
    ))
}

/// Back up the database at `location` (served by `store`) into `output`.
pub fn create(store: &Store, location: &Location, output: &Path) -> Result<BackupReport, StoreError> {
    sync(store.blocking(), store.audit_dir())?;
    match location {
        Location::Folder(folder) => {
            let conn = rusqlite::Connection::open(folder.join("relais.db"))?;
            conn.backup(rusqlite::DatabaseName::Main, output, None)?;
        }
        Location::Postgres(url) => {
            let schema: String = {
                let mut client = postgres::Client::connect(url, postgres::NoTls)
                    .map_err(|e| StoreError::Config(format!("cannot connect to PostgreSQL: {e}")))?;
                client.query_one("SELECT current_schema()", &[])?.get(0)
            };
            let status = Command::new("pg_dump")
                .args(["--format=custom", "--no-owner", "--schema", &schema, "--file"])
                .arg(output)
                .args(["--dbname", url])
                .status()
                .map_err(|e| tool_error("pg_dump", e))?;
            if !status.success() {
                return Err(tool_error("pg_dump", status));
            }
        }
    }
    let bytes = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    Ok(BackupReport { file: output.to_path_buf(), bytes, journaled_erasures: read(store.audit_dir())?.len() })
}

/// What a restore did.
#[derive(Debug, Serialize)]
pub struct RestoreReport {
    /// Profiles erased again because the journal lists them.
    pub erasures_reapplied: usize,
}

/// Replace the database at `location` by the backup `input`, then re-apply
/// every journaled erasure with `open` (which opens the restored store).
/// Servers on this database must be stopped first.
pub fn restore(
    location: &Location,
    input: &Path,
    journal_dir: &Path,
    open: impl Fn() -> Result<Store, StoreError>,
) -> Result<RestoreReport, StoreError> {
    if !input.exists() {
        return Err(StoreError::Config(format!("no backup at {}", input.display())));
    }
    // Erasures of the database being replaced go to the journal first.
    if let Ok(current) = open() {
        sync(current.blocking(), journal_dir)?;
    }
    match location {
        Location::Folder(folder) => {
            let target = folder.join("relais.db");
            for leftover in ["relais.db-wal", "relais.db-shm"] {
                let _ = std::fs::remove_file(folder.join(leftover));
            }
            let staged = folder.join("relais.db.restoring");
            std::fs::copy(input, &staged)
                .map_err(|e| StoreError::Config(format!("cannot copy the backup {}: {e}", input.display())))?;
            std::fs::rename(&staged, &target)
                .map_err(|e| StoreError::Config(format!("cannot put the backup in place: {e}")))?;
        }
        Location::Postgres(url) => {
            let status = Command::new("pg_restore")
                .args(["--clean", "--if-exists", "--no-owner", "--single-transaction", "--dbname", url])
                .arg(input)
                .status()
                .map_err(|e| tool_error("pg_restore", e))?;
            if !status.success() {
                return Err(tool_error("pg_restore", status));
            }
        }
    }
    let store = open()?;
    let mut reapplied = 0;
    for entry in read(journal_dir)? {
        for customer in entry.customers {
            match store.blocking().erase(customer) {
                Ok(_) => reapplied += 1,
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
    }
    store.close_audit()?;
    Ok(RestoreReport { erasures_reapplied: reapplied })
}
