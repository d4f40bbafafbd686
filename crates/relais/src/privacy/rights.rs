//! Data-subject rights requests: received with their legal deadline, then
//! carried out (access and portability: the export; erasure; objection to
//! profiling and restriction: recorded as consent withdrawals) or refused.

use chrono::Utc;
use chrono_tz::Tz;
use relais_domain::consent::{ConsentChannel, ConsentFact, ConsentSource, Proof, Purpose};
use relais_domain::rights::{due_date, RequestStatus, RightKind};
use relais_domain::{CustomerId, Identifier, RequestId};
use serde_json::{json, Value};

use super::export::ExportArchive;
use crate::store::{Audit, Engine, ErasureReport, RightsRequest, StoreError};

/// Reasons a request may be refused (no free text: it could hold personal data).
pub const REFUSAL_REASONS: [&str; 4] =
    ["identity_not_verified", "manifestly_unfounded", "excessive", "legal_obligation_to_keep"];

/// What carrying out a request produced.
#[derive(Debug)]
pub enum Completion {
    /// The person's archive (access, portability).
    Archive(ExportArchive),
    /// What was done.
    Done(Value),
}

/// Find whoever holds `identifier`, record `action` about them, then carry it out.
pub fn carry_out<T>(
    engine: &dyn Engine,
    audit: &Audit<'_>,
    actor: &str,
    action: &str,
    identifier: &Identifier,
    right: fn(&dyn Engine, &Audit<'_>, CustomerId) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let customer = engine.customer_id_by_identifier(identifier)?.ok_or(StoreError::NotFound)?;
    audit.record(actor, action, Some(customer), serde_json::json!({ "identifier_kind": identifier.kind() }))?;
    right(engine, audit, customer)
}

/// Erase a person (see `Engine::erase`) and journal it outside the database,
/// so that restoring an older backup erases them again.
pub fn erase_person(engine: &dyn Engine, audit: &Audit<'_>, customer: CustomerId) -> Result<ErasureReport, StoreError> {
    let report = engine.erase(customer)?;
    let entry = super::backup::JournalEntry {
        erasure_id: report.erasure_id,
        erased_at: report.erased_at,
        customers: report.customers.clone(),
    };
    // The erasure is done; a journal that cannot be written is caught up from
    // the `erasures` table at the next backup or restore, but say so now.
    super::backup::append(audit.outside_dir(), &[entry])?;
    Ok(report)
}

/// Export a person (see `export::export_person`).
pub fn export_person(
    engine: &dyn Engine,
    _audit: &Audit<'_>,
    customer: CustomerId,
) -> Result<super::export::ExportArchive, StoreError> {
    super::export::export_person(engine, customer)
}

/// Record a request from whoever holds `identifier`, due one month later.
pub fn receive(
    engine: &dyn Engine,
    audit: &Audit<'_>,
    actor: &str,
    kind: RightKind,
    identifier: &Identifier,
    zone: Tz,
) -> Result<RightsRequest, StoreError> {
    let customer = engine.customer_id_by_identifier(identifier)?.ok_or(StoreError::NotFound)?;
    receive_for(engine, audit, actor, kind, customer, zone)
}

/// Record a request from a known person (the portal's own requests), due one month later.
pub fn receive_for(
    engine: &dyn Engine,
    audit: &Audit<'_>,
    actor: &str,
    kind: RightKind,
    customer: CustomerId,
    zone: Tz,
) -> Result<RightsRequest, StoreError> {
    let now = Utc::now();
    let request = RightsRequest {
        request_id: RequestId::new(),
        kind,
        customer_id: Some(customer),
        received_at: now,
        due_at: due_date(now, zone),
        status: RequestStatus::Open,
        completed_at: None,
        outcome: json!({}),
        recorded_by: actor.to_string(),
    };
    audit.record(actor, "rights.receive", Some(customer), json!({ "request_id": request.request_id, "kind": kind }))?;
    engine.open_request(&request)?;
    Ok(request)
}

fn open_request(engine: &dyn Engine, id: RequestId) -> Result<RightsRequest, StoreError> {
    let request = engine.request(id)?.ok_or(StoreError::NotFound)?;
    if request.status != RequestStatus::Open {
        return Err(StoreError::Conflict(format!("request {id} is already {}", request.status.as_str())));
    }
    Ok(request)
}

/// Carry out an open request.
pub fn complete(engine: &dyn Engine, audit: &Audit<'_>, actor: &str, id: RequestId) -> Result<Completion, StoreError> {
    let request = open_request(engine, id)?;
    let customer = request.customer_id.ok_or_else(|| StoreError::Conflict(format!("request {id} has no person")))?;
    audit.record(actor, "rights.complete", Some(customer), json!({ "request_id": id, "kind": request.kind }))?;
    let withdraw = |purposes: &[Purpose]| -> Result<Value, StoreError> {
        for purpose in purposes {
            let fact = ConsentFact {
                purpose: *purpose,
                channel: ConsentChannel::Any,
                granted: false,
                at: Utc::now(),
                source: ConsentSource::Paper,
                wording_version: format!("rights request {}", request.kind.as_str()),
                proof: Proof { reference: Some(id.to_string()), ..Proof::default() },
            };
            engine.record_consent(customer, &fact, actor, None)?;
        }
        Ok(json!({ "withdrawn": purposes }))
    };
    let (completion, forget) = match request.kind {
        RightKind::Access | RightKind::Portability => {
            let archive = super::export::export_person(engine, customer)?;
            engine.close_request(id, RequestStatus::Done, &json!({ "events": archive.events }), false)?;
            return Ok(Completion::Archive(archive));
        }
        RightKind::Erasure => {
            let report = erase_person(engine, audit, customer)?;
            (serde_json::to_value(&report).unwrap_or(Value::Null), true)
        }
        RightKind::Objection => (withdraw(&[Purpose::Profiling, Purpose::PersonalisedOffers])?, false),
        RightKind::Restriction => (withdraw(&Purpose::ALL)?, false),
        // Corrections come in through the profile's own updates (identify
        // calls, imports); completing records that they were made in time.
        RightKind::Rectification => (json!({ "corrected": true }), false),
    };
    engine.close_request(id, RequestStatus::Done, &completion, forget)?;
    Ok(Completion::Done(completion))
}

/// Refuse an open request for one of `REFUSAL_REASONS`.
pub fn refuse(
    engine: &dyn Engine,
    audit: &Audit<'_>,
    actor: &str,
    id: RequestId,
    reason: &str,
) -> Result<(), StoreError> {
    let request = open_request(engine, id)?;
    audit.record(actor, "rights.refuse", request.customer_id, json!({ "request_id": id, "reason": reason }))?;
    engine.close_request(id, RequestStatus::Refused, &json!({ "reason": reason }), false)
}
