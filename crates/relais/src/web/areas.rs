//! Back-office pages for the other capabilities: journeys (the Sankey
//! diagram and the what-if with sliders), loyalty (programmes, rewards,
//! coupons, liability) and privacy for the data-protection officer (rights
//! requests and their deadlines, the risk register, the audit log's check).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use chrono::Utc;
use minijinja::{context, Value};
use relais_domain::journey::{EstimateOptions, Operation, Share, StageModel, WhatIf};
use serde::Deserialize;

use super::backoffice::with_frame;
use super::i18n::t;
use super::render::{page, PageError};
use super::session::Staff;
use crate::http::AppState;

/// The founding text's example: the journeys page's model until one is built
/// from the event log.
const FOUNDING_EXAMPLE: &str = include_str!("../../../../examples/journeys/founding-text.json");
/// The stages of a model built from the event log.
const STAGES: [&str; 4] = ["information", "evaluation", "decision", "purchase"];

#[derive(Debug, Deserialize)]
pub(super) struct JourneyQuery {
    /// `log` to build the model from the event log, else the example.
    source: Option<String>,
    /// Days of the event log read.
    days: Option<i64>,
    /// Only this segment's members.
    segment: Option<String>,
    /// Stages, first to last, separated by commas.
    stages: Option<String>,
}

/// `GET /app/journeys`: the model as a Sankey diagram, and the what-if form.
pub(super) async fn journeys(
    State(state): State<AppState>,
    staff: Staff,
    Query(query): Query<JourneyQuery>,
) -> Result<Response, PageError> {
    let lang = staff.lang;
    let from_log = query.source.as_deref() == Some("log");
    let days = query.days.unwrap_or(365).clamp(7, 3650);
    let segment = query.segment.filter(|s| !s.is_empty());
    let stages_text = query.stages.filter(|s| !s.trim().is_empty()).unwrap_or_else(|| STAGES.join(","));
    let stages: Vec<String> = stages_text.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    let segments: Vec<String> = state
        .store
        .run(|engine| engine.segments())
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?
        .into_iter()
        .map(|s| s.name)
        .collect();
    let (model, journeys, purchasers, problem) = if from_log {
        let chosen = segment.clone();
        let stages = stages.clone();
        let built = state
            .store
            .run(move |engine| {
                let members = match &chosen {
                    Some(name) => match crate::segments::member_ids(engine, name) {
                        Ok(ids) => Some(ids),
                        Err(_) => return Ok(Err("journeys.unknown_segment")),
                    },
                    None => None,
                };
                let from = Utc::now() - chrono::Duration::days(days);
                let options = EstimateOptions { purchasers_only: false, replicates: 0, seed: 1 };
                Ok(crate::journey::model_from_store(
                    engine,
                    relais_domain::journey::StageMap::default(),
                    Some(from),
                    None,
                    stages,
                    30,
                    options,
                    members.as_ref(),
                )
                .map_err(|_| "journeys.no_data"))
            })
            .await
            .map_err(|e| PageError::from(e).in_lang(lang))?;
        match built {
            Ok((estimated, _)) => (estimated.model, Some(estimated.journeys), Some(estimated.purchasers), None),
            Err(key) => (example(), None, None, Some(key)),
        }
    } else {
        (example(), None, None, None)
    };
    let words = crate::journey::SankeyWords {
        title: t(lang, "journeys.sankey_title", &[]),
        flow: t(lang, "journeys.sankey_flow", &[]),
    };
    let sankey = crate::journey::sankey_svg(&model, &words);
    let model_json = serde_json::to_string(&model).unwrap_or_default();
    page(
        "journeys.html",
        with_frame(
            &staff,
            "/app/journeys",
            context! {
                sankey => sankey,
                model_json => model_json,
                stages => model.stages()[1..].to_vec(),
                channels => model.channels().to_vec(),
                from_log => from_log && problem.is_none(),
                problem => problem,
                journeys => journeys,
                purchasers => purchasers,
                days => days,
                segment => segment,
                segments => segments,
                stages_text => stages_text,
                label => t(lang, "journeys.sankey", &[]),
            },
        ),
    )
}

fn example() -> StageModel {
    // The example ships with the binary and is checked by the tests.
    serde_json::from_str(FOUNDING_EXAMPLE).expect("the founding example is a valid model")
}

#[derive(Debug, Deserialize)]
pub(super) struct WhatIfForm {
    model: String,
    stage: String,
    channel: String,
    /// Percent, 0 to 100.
    share: f64,
    op: String,
}

/// `POST /app/journeys/whatif`: the scenario against the baseline, as bars
/// and a table of changes at the last stage.
pub(super) async fn what_if(staff: Staff, Form(form): Form<WhatIfForm>) -> Result<Response, PageError> {
    let lang = staff.lang;
    let refused = |key: &'static str| {
        let mut response = page("whatif.html", context! { lang => lang.as_str(), problem => key })?;
        *response.status_mut() = StatusCode::BAD_REQUEST;
        Ok::<Response, PageError>(response)
    };
    let Ok(model) = serde_json::from_str::<StageModel>(&form.model) else { return refused("journeys.bad_model") };
    let Ok(share) = Share::new(form.share / 100.0) else { return refused("journeys.bad_share") };
    let operation = match form.op.as_str() {
        "mix" => Operation::Mix { channel: form.channel.clone(), share },
        "set" => Operation::SetShare { channel: form.channel.clone(), share },
        _ => return refused("journeys.bad_op"),
    };
    let Ok(report) = crate::journey::what_if(&model, &[WhatIf { into_stage: form.stage.clone(), operation }]) else {
        return refused("journeys.bad_stage");
    };
    let share_at = |shares: &crate::journey::ByStage, channel: &str| {
        shares.get(&report.last_stage).and_then(|m| m.get(channel)).copied().unwrap_or(0.0) * 100.0
    };
    let before: Vec<f64> = report.channels.iter().map(|c| share_at(&report.baseline, c)).collect();
    let after: Vec<f64> = report.channels.iter().map(|c| share_at(&report.scenario, c)).collect();
    let rows: Vec<Value> = report
        .channels
        .iter()
        .enumerate()
        .map(|(i, c)| {
            context! {
                channel => c.clone(),
                before => before[i],
                after => after[i],
                change => report.change_pct.get(c).copied().flatten(),
            }
        })
        .collect();
    page(
        "whatif.html",
        context! {
            lang => lang.as_str(),
            bars => super::charts::paired_bars(
                &report.channels,
                &before,
                &after,
                [&t(lang, "journeys.before", &[]), &t(lang, "journeys.after", &[])],
                &t(lang, "journeys.bars", &[("stage", report.last_stage.clone())]),
            ),
            rows => rows,
            stage => form.stage,
            channel => form.channel,
            share => form.share,
            op => form.op,
            last_stage => report.last_stage,
        },
    )
}

/// `GET /app/loyalty`: each programme with its rules, rewards, coupon
/// campaigns and liability.
pub(super) async fn loyalty(State(state): State<AppState>, staff: Staff) -> Result<Response, PageError> {
    let lang = staff.lang;
    let programmes = state
        .store
        .run(|engine| {
            let mut out = Vec::new();
            for programme in engine.loyalty_programmes()? {
                let key = programme.head.key.clone();
                let rewards = engine.loyalty_rewards(&key)?;
                let campaigns = engine.loyalty_campaigns(&key)?;
                let rows = engine.loyalty_report(&key, None)?;
                let report = crate::store::loyalty::LoyaltyReport::from_rows(&programme, None, rows);
                out.push((programme, rewards, campaigns, report));
            }
            Ok(out)
        })
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?;
    let programmes: Vec<Value> = programmes
        .into_iter()
        .map(|(programme, rewards, campaigns, report)| {
            let exponent = relais_domain::money::currency_exponent(&report.currency) as i32;
            context! {
                key => programme.head.key.clone(),
                name => programme.head.name.clone(),
                unit => programme.head.unit.clone(),
                currency => report.currency.clone(),
                point_value => programme.head.point_value_minor as f64 / 10f64.powi(exponent),
                members => report.members,
                outstanding => report.outstanding_points,
                liability => report.liability_minor as f64 / 10f64.powi(exponent),
                issued => report.issued,
                redeemed => report.redeemed,
                expired => report.expired,
                breakage => report.breakage_rate.map(|r| r * 100.0),
                expiring => report.expiring_by_month.iter().map(|(month, points)| context! { month => month.clone(), points => *points }).collect::<Vec<_>>(),
                rewards => rewards.iter().map(|(reward, left)| context! {
                    id => reward.id.clone(), name => reward.name.clone(), cost => reward.cost,
                    left => *left, tiers => reward.tiers.clone(),
                    until => reward.valid_until.map(|d| d.to_string()),
                }).collect::<Vec<_>>(),
                campaigns => campaigns.iter().map(|(campaign, issued, used)| context! {
                    id => campaign.id.clone(), benefit => campaign.benefit.clone(),
                    from => campaign.valid_from.to_string(), until => campaign.valid_until.to_string(),
                    issued => *issued, used => *used,
                    tiers => campaign.tiers.clone(), segments => campaign.segments.clone(),
                }).collect::<Vec<_>>(),
            }
        })
        .collect();
    page("loyalty.html", with_frame(&staff, "/app/loyalty", context! { programmes => programmes }))
}

/// Audit records the privacy page lists.
const AUDIT_SHOWN: usize = 50;

/// `GET /app/privacy`: rights requests with their deadlines, the risk
/// register, the classes of data.
pub(super) async fn privacy(State(state): State<AppState>, staff: Staff) -> Result<Response, PageError> {
    privacy_page(&state, &staff, None).await
}

async fn privacy_page(state: &AppState, staff: &Staff, verification: Option<Value>) -> Result<Response, PageError> {
    let lang = staff.lang;
    let (requests, report, records) = state
        .store
        .run(|engine| {
            // The newest records: the last segments opened, newest first.
            let mut segments = engine.audit_segments()?;
            segments.sort_by_key(|s| std::cmp::Reverse(s.opened_at));
            let mut records = Vec::new();
            for segment in segments.iter().filter(|s| s.purged_at.is_none()) {
                let mut these = engine.audit_records(&segment.segment_id)?;
                these.reverse();
                records.extend(these);
                if records.len() >= AUDIT_SHOWN {
                    break;
                }
            }
            records.sort_by_key(|r| std::cmp::Reverse(r.at));
            records.truncate(AUDIT_SHOWN);
            Ok((engine.requests(None)?, crate::privacy::report::security_report(engine)?, records))
        })
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?;
    let records: Vec<Value> = records
        .iter()
        .map(|r| {
            context! {
                at => r.at.with_timezone(&state.settings.ingest.time_zone).format("%Y-%m-%d %H:%M:%S").to_string(),
                actor => r.actor.clone(),
                action => r.action.clone(),
                subject => r.subject.clone(),
            }
        })
        .collect();
    let now = Utc::now();
    let tz = state.settings.ingest.time_zone;
    let requests: Vec<Value> = requests
        .iter()
        .map(|r| {
            context! {
                id => r.request_id.to_string(),
                kind => format!("right.{}", r.kind.as_str()),
                status => format!("request.{}", r.status.as_str()),
                customer => r.customer_id.map(|c| c.to_string()),
                received => r.received_at.with_timezone(&tz).format("%Y-%m-%d").to_string(),
                due => r.due_at.with_timezone(&tz).format("%Y-%m-%d").to_string(),
                overdue => r.overdue(now),
                days_left => (r.due_at - now).num_days(),
            }
        })
        .collect();
    let classes: Vec<Value> = report
        .classes
        .iter()
        .map(|c| {
            context! {
                class => format!("class.{}", c.class.as_str()),
                readers => c.readers.iter().map(|r| format!("role.{}", r.as_str())).collect::<Vec<_>>(),
                encrypted => c.encrypted,
                retention => c.retention_days,
                level => format!("risk.{}", serde_json::to_value(c.risk.level).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()),
                score => c.risk.impact * c.risk.likelihood,
                fields => c.fields.len(),
            }
        })
        .collect();
    let parts: Vec<Value> = report
        .parts
        .iter()
        .map(|p| {
            context! {
                name => format!("part.{}", part_slug(p.name)),
                level => format!("risk.{}", serde_json::to_value(p.risk.level).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()),
                score => p.risk.impact * p.risk.likelihood,
            }
        })
        .collect();
    page(
        "privacy.html",
        with_frame(
            staff,
            "/app/privacy",
            context! {
                requests => requests,
                classes => classes,
                parts => parts,
                unclassified => report.unclassified_fields.clone(),
                verification => verification,
                records => records,
            },
        ),
    )
}

/// The catalogue key of a part of the application (`customer 360 API` →
/// `customer_360_api`).
pub fn part_slug(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

/// `POST /app/privacy/verify`: recompute every audit chain and compare it
/// with the heads kept outside the database.
pub(super) async fn verify_audit(State(state): State<AppState>, staff: Staff) -> Result<Response, PageError> {
    let lang = staff.lang;
    let heads = state.store.audit_dir().to_path_buf();
    let verification = state
        .store
        .run(move |engine| crate::privacy::audit::verify(engine, &heads))
        .await
        .map_err(|e| PageError::from(e).in_lang(lang))?;
    let result = context! {
        intact => verification.findings.is_empty(),
        segments => verification.segments,
        records => verification.records,
        purged => verification.purged_segments,
        findings => verification.findings.iter().map(|f| context! {
            segment => f.segment_id.clone(), seq => f.seq, problem => f.problem.clone(),
        }).collect::<Vec<_>>(),
    };
    privacy_page(&state, &staff, Some(result)).await
}
