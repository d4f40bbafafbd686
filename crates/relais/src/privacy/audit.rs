//! The audit log: who read or changed whose data, key operations, exports and
//! rights requests, as an append-only chain of records.
//!
//! Each record carries the keyed hash (HMAC-SHA256 with the audit key, which
//! only the master key unwraps) of its content and of the previous record, so
//! an edited, inserted or removed record breaks the chain. The chain is cut into
//! segments, one per writing process and day, so several processes append
//! without a global lock; a segment is closed by a checkpoint record. The last
//! head (sequence number and hash) of each segment is also written to a file
//! outside the database, so removing the tail of a segment, or a whole
//! segment, is detected too. Records hold no personal data: a person is
//! referred to by profile id (linked to nothing once they are erased).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use relais_domain::CustomerId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Keyring;
use crate::store::{Engine, StoreError};

/// What to record.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// Who: `key:<key id>` for API keys, `cli` for the command line.
    pub actor: String,
    /// What (`customer.read`, `privacy.export`, `privacy.erase`, `keys.create`…).
    pub action: String,
    /// Whose data, if a person's.
    pub subject: Option<CustomerId>,
    /// Details without personal data.
    pub detail: Value,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    /// Segment.
    pub segment_id: String,
    /// Position in the segment, from 1.
    pub seq: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Whose data (profile id).
    pub subject: Option<String>,
    /// Details (JSON text).
    pub detail: String,
    /// Hash of the previous record (or of the segment's opening).
    #[serde(skip)]
    pub prev_hash: Vec<u8>,
    /// This record's hash.
    #[serde(skip)]
    pub hash: Vec<u8>,
}

/// A segment as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditSegment {
    /// Its id.
    pub segment_id: String,
    /// The writing process (host and pid).
    pub process: String,
    /// The UTC day it covers.
    pub day: String,
    /// When it was opened.
    pub opened_at: DateTime<Utc>,
    /// When its checkpoint closed it.
    pub closed_at: Option<DateTime<Utc>>,
    /// Records written.
    pub records: i64,
    /// Hash of its last record.
    pub last_hash: Option<Vec<u8>>,
    /// When retention removed its records.
    pub purged_at: Option<DateTime<Utc>>,
}

/// A segment's head as kept outside the database.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Head {
    segment_id: String,
    seq: i64,
    hash: String,
    closed: bool,
    purged: bool,
}

fn hash_input(record: &AuditRecord) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(256);
    let at = record.at.timestamp_micros().to_string();
    let seq = record.seq.to_string();
    let subject = record.subject.as_deref().unwrap_or("");
    for field in [&record.segment_id, &seq, &at, &record.actor, &record.action, subject, &record.detail] {
        bytes.extend_from_slice(&(field.len() as u32).to_be_bytes());
        bytes.extend_from_slice(field.as_bytes());
    }
    bytes.extend_from_slice(&record.prev_hash);
    bytes
}

fn genesis(keyring: &Keyring, segment: &AuditSegment) -> Vec<u8> {
    keyring
        .audit_mac(
            format!("relais audit segment|{}|{}|{}", segment.segment_id, segment.process, segment.day).as_bytes(),
        )
        .to_vec()
}

/// The open segment of this process.
#[derive(Debug)]
struct Open {
    segment: AuditSegment,
    last_hash: Vec<u8>,
}

/// Appends this process's audit records.
#[derive(Debug)]
pub struct Auditor {
    head_dir: PathBuf,
    process: String,
    open: Mutex<Option<Open>>,
}

impl Auditor {
    /// An auditor writing heads into `head_dir` (outside the database).
    pub fn new(head_dir: PathBuf) -> Auditor {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        Auditor { head_dir, process: format!("{host}:{}", std::process::id()), open: Mutex::new(None) }
    }

    /// Where heads are kept.
    pub fn head_dir(&self) -> &Path {
        &self.head_dir
    }

    /// Append a record. An error means nothing was recorded, and the caller
    /// must not carry out the action.
    pub fn record(&self, engine: &dyn Engine, entry: AuditEntry) -> Result<(), StoreError> {
        let keyring = &engine.privacy().keyring;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let now = Utc::now();
        let day = now.date_naive().to_string();
        if open.as_ref().is_some_and(|o| o.segment.day != day) {
            if let Some(previous) = open.take() {
                self.close_segment(engine, keyring, previous, now)?;
            }
        }
        let (mut segment, prev_hash) = match open.take() {
            Some(o) => (o.segment, o.last_hash),
            None => {
                let segment = AuditSegment {
                    segment_id: format!("aus_{}", ulid::Ulid::new()),
                    process: self.process.clone(),
                    day,
                    opened_at: now,
                    closed_at: None,
                    records: 0,
                    last_hash: None,
                    purged_at: None,
                };
                let genesis = genesis(keyring, &segment);
                (segment, genesis)
            }
        };
        let mut record = AuditRecord {
            segment_id: segment.segment_id.clone(),
            seq: segment.records + 1,
            at: now,
            actor: entry.actor,
            action: entry.action,
            subject: entry.subject.map(|s| s.to_string()),
            detail: entry.detail.to_string(),
            prev_hash: prev_hash.clone(),
            hash: Vec::new(),
        };
        record.hash = keyring.audit_mac(&hash_input(&record)).to_vec();
        let before = segment.clone();
        segment.records += 1;
        segment.last_hash = Some(record.hash.clone());
        match engine.audit_write(&segment, std::slice::from_ref(&record)) {
            Ok(()) => {
                // The record is stored: the chain moves on even if its head
                // cannot be written (the action still fails; verify reads a
                // head behind the database as harmless, never the reverse).
                let written = self.write_head(&segment, false);
                *open = Some(Open { last_hash: record.hash, segment });
                written
            }
            Err(error) => {
                // Nothing advanced: the next record takes this one's place.
                *open = Some(Open { last_hash: prev_hash, segment: before });
                Err(error)
            }
        }
    }

    /// Close this process's segment with a checkpoint (at shutdown).
    pub fn close(&self, engine: &dyn Engine) -> Result<(), StoreError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.take() {
            Some(segment) => self.close_segment(engine, &engine.privacy().keyring, segment, Utc::now()),
            None => Ok(()),
        }
    }

    fn close_segment(
        &self,
        engine: &dyn Engine,
        keyring: &Keyring,
        open: Open,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut segment = open.segment;
        let mut checkpoint = AuditRecord {
            segment_id: segment.segment_id.clone(),
            seq: segment.records + 1,
            at: now,
            actor: "relais".into(),
            action: "audit.checkpoint".into(),
            subject: None,
            detail: serde_json::json!({ "records": segment.records }).to_string(),
            prev_hash: open.last_hash,
            hash: Vec::new(),
        };
        checkpoint.hash = keyring.audit_mac(&hash_input(&checkpoint)).to_vec();
        segment.records += 1;
        segment.last_hash = Some(checkpoint.hash.clone());
        segment.closed_at = Some(now);
        engine.audit_write(&segment, std::slice::from_ref(&checkpoint))?;
        self.write_head(&segment, true)
    }

    fn write_head(&self, segment: &AuditSegment, closed: bool) -> Result<(), StoreError> {
        let head = Head {
            segment_id: segment.segment_id.clone(),
            seq: segment.records,
            hash: hex::encode(segment.last_hash.as_deref().unwrap_or_default()),
            closed,
            purged: false,
        };
        write_head_file(&self.head_dir, &head)
    }
}

fn write_head_file(dir: &Path, head: &Head) -> Result<(), StoreError> {
    let failed = |e: std::io::Error| {
        StoreError::Config(format!("cannot write the audit head in {}: {e}; check RELAIS_AUDIT_DIR", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    let path = dir.join(format!("{}.head", head.segment_id));
    let aside = dir.join(format!("{}.head.new", head.segment_id));
    std::fs::write(&aside, serde_json::to_vec(head).unwrap_or_default()).map_err(failed)?;
    std::fs::rename(&aside, &path).map_err(failed)
}

fn read_heads(dir: &Path) -> BTreeMap<String, Head> {
    let mut heads = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "head") {
                if let Some(head) =
                    std::fs::read(&path).ok().and_then(|bytes| serde_json::from_slice::<Head>(&bytes).ok())
                {
                    heads.insert(head.segment_id.clone(), head);
                }
            }
        }
    }
    heads
}

/// Remove, for retention, every closed segment of a day before `before_day`
/// (YYYY-MM-DD, UTC): their records go, their rows and heads say so. Returns
/// the segments removed.
pub fn purge(engine: &dyn Engine, head_dir: &Path, before_day: &str) -> Result<Vec<String>, StoreError> {
    let mut heads = read_heads(head_dir);
    let mut removed = Vec::new();
    for segment in engine.audit_segments()? {
        if segment.closed_at.is_none() || segment.purged_at.is_some() || segment.day.as_str() >= before_day {
            continue;
        }
        // The head says "purged" first: a crash in between leaves a head that
        // verify reports (and a rerun completes), never a silent gap.
        if let Some(head) = heads.get_mut(&segment.segment_id) {
            head.purged = true;
            write_head_file(head_dir, head)?;
        }
        engine.audit_purge_segment(&segment.segment_id)?;
        removed.push(segment.segment_id);
    }
    Ok(removed)
}

/// Something `verify` found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The segment.
    pub segment_id: String,
    /// The record, when one is at fault.
    pub seq: Option<i64>,
    /// What is wrong.
    pub problem: String,
}

/// The outcome of `verify`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verification {
    /// Segments checked.
    pub segments: usize,
    /// Records checked.
    pub records: usize,
    /// Segments removed by retention (not tampering).
    pub purged_segments: usize,
    /// Problems; empty when the log is intact.
    pub findings: Vec<Finding>,
}

/// Check every segment's chain and compare its end with the heads kept outside
/// the database.
pub fn verify(engine: &dyn Engine, head_dir: &Path) -> Result<Verification, StoreError> {
    let keyring = &engine.privacy().keyring;
    let heads = read_heads(head_dir);
    let segments = engine.audit_segments()?;
    let mut report = Verification { segments: segments.len(), ..Verification::default() };
    let finding =
        |segment: &str, seq: Option<i64>, problem: String| Finding { segment_id: segment.to_string(), seq, problem };
    for segment in &segments {
        let id = segment.segment_id.as_str();
        let head = heads.get(id);
        if segment.purged_at.is_some() {
            match head {
                Some(h) if h.purged => report.purged_segments += 1,
                _ => report.findings.push(finding(
                    id,
                    None,
                    "marked as removed by retention, but its head outside the database does not say so".into(),
                )),
            }
            continue;
        }
        let records = engine.audit_records(id)?;
        report.records += records.len();
        let mut prev = genesis(keyring, segment);
        let mut expected = 1;
        for record in &records {
            if record.seq > expected {
                report.findings.push(finding(
                    id,
                    Some(expected),
                    format!("records {expected} to {} are missing (removed)", record.seq - 1),
                ));
            } else if record.seq < expected {
                report.findings.push(finding(id, Some(record.seq), "a record appears twice (inserted)".into()));
            }
            if record.prev_hash != prev {
                report.findings.push(finding(
                    id,
                    Some(record.seq),
                    "does not follow the record before it (a record was inserted or removed before it)".into(),
                ));
            }
            if keyring.audit_mac(&hash_input(record)).as_slice() != record.hash.as_slice() {
                report.findings.push(finding(id, Some(record.seq), "its content was changed (edited)".into()));
            }
            prev = record.hash.clone();
            expected = record.seq + 1;
        }
        let last_seq = records.last().map_or(0, |r| r.seq);
        if segment.closed_at.is_some() {
            let closed_properly = records.last().is_some_and(|r| {
                r.action == "audit.checkpoint"
                    && serde_json::from_str::<Value>(&r.detail).ok().and_then(|d| d["records"].as_i64())
                        == Some(r.seq - 1)
            });
            if !closed_properly {
                report.findings.push(finding(
                    id,
                    Some(last_seq),
                    "closed, but its checkpoint is missing or wrong (tail removed)".into(),
                ));
            }
        }
        match head {
            None => {
                report.findings.push(finding(id, None, "has no head outside the database (inserted segment?)".into()))
            }
            Some(head) if head.seq > last_seq => report.findings.push(finding(
                id,
                Some(last_seq + 1),
                format!("records {} to {} are missing at the end (truncated tail)", last_seq + 1, head.seq),
            )),
            Some(head) => {
                let at_head = records.iter().find(|r| r.seq == head.seq).map(|r| hex::encode(&r.hash));
                if at_head.as_deref() != Some(head.hash.as_str()) {
                    report.findings.push(finding(
                        id,
                        Some(head.seq),
                        "differs from the head kept outside the database".into(),
                    ));
                }
            }
        }
    }
    for (id, head) in &heads {
        if !segments.iter().any(|s| &s.segment_id == id) && !head.purged {
            report.findings.push(finding(id, None, "was removed from the database".into()));
        }
    }
    Ok(report)
}
