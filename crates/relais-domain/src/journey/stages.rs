//! The stage model: customers pick a channel at each stage (information,
//! evaluation, decision, purchase…), and the channel at one stage depends on the
//! channel at the stage before. The model is the distribution over channels at
//! the first stage and one row-stochastic matrix per step (rows: this stage's
//! channel; columns: the next stage's channel).
//!
//! What-ifs change the matrix of one step (the transition *into* a stage):
//!
//! - **mix** with channel `c` and share `s`: every row becomes
//!   `(1 − s)·row + s·e_c` ("whatever the previous channel, `s` of the choices now
//!   go through `c`"). Under mix no channel loses more than `s` of its share.
//! - **set share**: every row's entry for `c` becomes `s` and the other entries
//!   are rescaled to sum to `1 − s`. A row that sent everyone to `c` has nothing
//!   to rescale: with `s < 1` that is an error ([`JourneyError::SetSharePureRow`]),
//!   with `s = 1` the row is already what was asked and stays as it is.
//! - **edit row**: replace one row by hand (it must be a distribution).
//!
//! [`compare`] propagates the baseline and the scenario and gives the change
//! per channel at the last stage, in share points and in percent; the percentage
//! is `None` where the baseline share is 0 (below 1e-12, so that rounding dust
//! does not produce huge percentages), never NaN or −100%.

use serde::{Deserialize, Serialize};

use super::{known_names, JourneyError};

/// How far from 1 a distribution's sum may be (files carry rounded figures).
const SUM_TOLERANCE: f64 = 1e-6;

/// A baseline share at or below this has no percentage change.
const ZERO_SHARE: f64 = 1e-12;

/// The model as written in MODEL.json; [`StageModel`] is the checked form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageModelSpec {
    /// Channel names, in the order of the vectors' entries.
    pub channels: Vec<String>,
    /// Stage names, first to last.
    pub stages: Vec<String>,
    /// Distribution over channels at the first stage.
    pub initial: Vec<f64>,
    /// One matrix per step: `transitions[t][i][j]` = P(channel j at stage t+1 | channel i at stage t).
    pub transitions: Vec<Vec<Vec<f64>>>,
}

/// A checked stage model: names unique, every distribution sums to 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StageModelSpec", into = "StageModelSpec")]
pub struct StageModel {
    spec: StageModelSpec,
}

impl TryFrom<StageModelSpec> for StageModel {
    type Error = JourneyError;

    fn try_from(spec: StageModelSpec) -> Result<Self, JourneyError> {
        StageModel::new(spec)
    }
}

impl From<StageModel> for StageModelSpec {
    fn from(model: StageModel) -> Self {
        model.spec
    }
}

/// Checks that `names` are non-empty and unique.
fn check_names(what: &'static str, names: &[String]) -> Result<(), JourneyError> {
    let mut seen = std::collections::HashSet::new();
    for (position, name) in names.iter().enumerate() {
        if name.trim().is_empty() {
            return Err(JourneyError::EmptyName { what, position: position + 1 });
        }
        if !seen.insert(name.as_str()) {
            return Err(JourneyError::Duplicate { what, name: name.clone() });
        }
    }
    Ok(())
}

/// Checks that `values` is a distribution over `n` entries.
fn check_distribution(what: impl Fn() -> String, values: &[f64], n: usize) -> Result<(), JourneyError> {
    if values.len() != n {
        return Err(JourneyError::WrongLength { what: what(), expected: n, found: values.len() });
    }
    for &value in values {
        if !value.is_finite() || !(0.0..=1.0 + SUM_TOLERANCE).contains(&value) {
            return Err(JourneyError::NotAProbability { what: what(), value });
        }
    }
    let sum: f64 = values.iter().sum();
    if (sum - 1.0).abs() > SUM_TOLERANCE {
        return Err(JourneyError::NotADistribution { what: what(), sum });
    }
    Ok(())
}

impl StageModel {
    /// Checks a model: unique names, at least two stages, one `n × n` row-stochastic
    /// matrix per step, a first-stage distribution.
    pub fn new(spec: StageModelSpec) -> Result<Self, JourneyError> {
        if spec.channels.is_empty() {
            return Err(JourneyError::NoChannels);
        }
        check_names("channel", &spec.channels)?;
        check_names("stage", &spec.stages)?;
        if spec.stages.len() < 2 {
            return Err(JourneyError::TooFewStages { found: spec.stages.len() });
        }
        let n = spec.channels.len();
        check_distribution(|| format!("the distribution at stage `{}`", spec.stages[0]), &spec.initial, n)?;
        let steps = spec.stages.len() - 1;
        if spec.transitions.len() != steps {
            return Err(JourneyError::WrongLength {
                what: "transitions (one matrix per step between stages)".into(),
                expected: steps,
                found: spec.transitions.len(),
            });
        }
        for (t, matrix) in spec.transitions.iter().enumerate() {
            if matrix.len() != n {
                return Err(JourneyError::WrongLength {
                    what: format!("the matrix {} → {}", spec.stages[t], spec.stages[t + 1]),
                    expected: n,
                    found: matrix.len(),
                });
            }
            for (i, row) in matrix.iter().enumerate() {
                check_distribution(
                    || format!("row `{}` of {} → {}", spec.channels[i], spec.stages[t], spec.stages[t + 1]),
                    row,
                    n,
                )?;
            }
        }
        Ok(Self { spec })
    }

    /// Channel names.
    pub fn channels(&self) -> &[String] {
        &self.spec.channels
    }

    /// Stage names, first to last.
    pub fn stages(&self) -> &[String] {
        &self.spec.stages
    }

    /// Distribution over channels at the first stage.
    pub fn initial(&self) -> &[f64] {
        &self.spec.initial
    }

    /// The matrix of step `t` (from stage `t` to stage `t + 1`).
    pub fn transition(&self, t: usize) -> &[Vec<f64>] {
        &self.spec.transitions[t]
    }

    /// The index of a stage by name.
    pub fn stage_index(&self, name: &str) -> Result<usize, JourneyError> {
        self.spec
            .stages
            .iter()
            .position(|s| s == name)
            .ok_or_else(|| JourneyError::UnknownStage { name: name.to_string(), known: known_names(&self.spec.stages) })
    }

    /// The index of a channel by name.
    pub fn channel_index(&self, name: &str) -> Result<usize, JourneyError> {
        self.spec.channels.iter().position(|c| c == name).ok_or_else(|| JourneyError::UnknownChannel {
            name: name.to_string(),
            known: known_names(&self.spec.channels),
        })
    }

    /// The distribution over channels at every stage.
    pub fn propagate(&self) -> Propagation {
        let n = self.spec.channels.len();
        let mut shares = Vec::with_capacity(self.spec.stages.len());
        shares.push(self.spec.initial.clone());
        for matrix in &self.spec.transitions {
            let previous = shares.last().expect("the first stage is there");
            let mut next = vec![0.0; n];
            for (i, row) in matrix.iter().enumerate() {
                for (j, p) in row.iter().enumerate() {
                    next[j] += previous[i] * p;
                }
            }
            shares.push(next);
        }
        Propagation { shares }
    }

    /// The model with one what-if applied to the step into `what_if.into_stage`.
    pub fn apply(&self, what_if: &WhatIf) -> Result<StageModel, JourneyError> {
        let into = self.stage_index(&what_if.into_stage)?;
        if into == 0 {
            return Err(JourneyError::NoTransitionInto { stage: what_if.into_stage.clone() });
        }
        let step = into - 1;
        let transition = format!("{} → {}", self.spec.stages[step], self.spec.stages[into]);
        let mut spec = self.spec.clone();
        let matrix = &mut spec.transitions[step];
        match &what_if.operation {
            Operation::Mix { channel, share } => {
                let c = self.channel_index(channel)?;
                let s = share.value();
                for row in matrix.iter_mut() {
                    for (j, p) in row.iter_mut().enumerate() {
                        *p = (1.0 - s) * *p + if j == c { s } else { 0.0 };
                    }
                }
            }
            Operation::SetShare { channel, share } => {
                let c = self.channel_index(channel)?;
                let s = share.value();
                for (i, row) in matrix.iter_mut().enumerate() {
                    let others = 1.0 - row[c];
                    if others <= ZERO_SHARE {
                        if s < 1.0 {
                            return Err(JourneyError::SetSharePureRow {
                                transition,
                                row: self.spec.channels[i].clone(),
                                channel: channel.clone(),
                            });
                        }
                        continue;
                    }
                    // Sum the other entries rather than trusting 1 − row[c], so a
                    // row that summed to 1 within the tolerance comes out exact.
                    let rest: f64 = row.iter().enumerate().filter(|&(j, _)| j != c).map(|(_, p)| p).sum();
                    for (j, p) in row.iter_mut().enumerate() {
                        *p = if j == c { s } else { *p * (1.0 - s) / rest };
                    }
                }
            }
            Operation::EditRow { from_channel, row } => {
                let i = self.channel_index(from_channel)?;
                check_distribution(
                    || format!("the new row `{from_channel}` of {transition}"),
                    row,
                    self.spec.channels.len(),
                )?;
                matrix[i] = row.clone();
            }
        }
        Ok(StageModel { spec })
    }
}

/// A share in [0, 1] (a what-if's weight of a channel).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Share(f64);

impl Share {
    /// A share, refused outside [0, 1] or when not a number.
    pub fn new(value: f64) -> Result<Self, JourneyError> {
        if value.is_finite() && (0.0..=1.0).contains(&value) {
            Ok(Self(value))
        } else {
            Err(JourneyError::ShareOutOfRange { value })
        }
    }

    /// The share as a number in [0, 1].
    pub fn value(self) -> f64 {
        self.0
    }

    /// The share in percent, rounded to 1e-6 so that 0.2 reads 20, not 20.000000000000004.
    pub fn percent(self) -> f64 {
        (self.0 * 1e8).round() / 1e6
    }
}

impl TryFrom<f64> for Share {
    type Error = JourneyError;

    fn try_from(value: f64) -> Result<Self, JourneyError> {
        Share::new(value)
    }
}

impl From<Share> for f64 {
    fn from(share: Share) -> f64 {
        share.0
    }
}

/// One change to the matrix of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Operation {
    /// Every row becomes `(1 − s)·row + s·e_c`.
    Mix { channel: String, share: Share },
    /// Every row's entry for `c` becomes `s`, the others rescaled to `1 − s`.
    #[serde(rename = "set")]
    SetShare { channel: String, share: Share },
    /// Replace the row of `from_channel` with `row`.
    EditRow { from_channel: String, row: Vec<f64> },
}

impl Operation {
    /// A short description, shown beside the result so a reader knows what was applied.
    pub fn describe(&self) -> String {
        match self {
            Operation::Mix { channel, share } => format!("mix: {}% of every choice goes to {channel}", share.percent()),
            Operation::SetShare { channel, share } => {
                format!("set share: {channel} gets {}% of every row, the rest rescaled", share.percent())
            }
            Operation::EditRow { from_channel, .. } => format!("row `{from_channel}` edited by hand"),
        }
    }
}

/// A what-if: one operation on the transition into a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhatIf {
    /// The stage whose incoming transition changes.
    pub into_stage: String,
    /// What changes.
    #[serde(flatten)]
    pub operation: Operation,
}

/// The distribution over channels at every stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Propagation {
    /// `shares[t][j]`: share of customers on channel `j` at stage `t`.
    pub shares: Vec<Vec<f64>>,
}

impl Propagation {
    /// The distribution at the last stage.
    pub fn last(&self) -> &[f64] {
        self.shares.last().map(Vec::as_slice).unwrap_or(&[])
    }

    /// Expected sales per channel at the last stage for `customers` entering the first.
    pub fn expected_sales(&self, customers: f64) -> Vec<f64> {
        self.last().iter().map(|share| share * customers).collect()
    }
}

/// A baseline and a scenario, propagated, and the change at the last stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The scenario's model (what was applied, for display).
    pub scenario_model: StageModel,
    /// Distributions of the unchanged model.
    pub baseline: Propagation,
    /// Distributions after the what-ifs.
    pub scenario: Propagation,
    /// Change of share at the last stage per channel (scenario − baseline).
    pub change: Vec<f64>,
    /// Change in percent of the baseline per channel; `None` where the baseline is 0.
    pub change_pct: Vec<Option<f64>>,
}

/// Applies `what_ifs` in order and compares the result with `model`.
pub fn compare(model: &StageModel, what_ifs: &[WhatIf]) -> Result<Comparison, JourneyError> {
    let mut scenario_model = model.clone();
    for what_if in what_ifs {
        scenario_model = scenario_model.apply(what_if)?;
    }
    let baseline = model.propagate();
    let scenario = scenario_model.propagate();
    let change = baseline.last().iter().zip(scenario.last()).map(|(b, s)| s - b).collect();
    let change_pct = baseline
        .last()
        .iter()
        .zip(scenario.last())
        .map(|(&b, &s)| (b > ZERO_SHARE).then(|| 100.0 * (s - b) / b))
        .collect();
    Ok(Comparison { scenario_model, baseline, scenario, change, change_pct })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// REFERENCES.md section 4: the founding text's journey example.
    pub(crate) fn founding_example() -> StageModel {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        StageModel::new(StageModelSpec {
            channels: names(&["search", "social", "web", "catalogue", "store"]),
            stages: names(&["information", "evaluation", "decision", "purchase"]),
            initial: vec![0.30, 0.20, 0.25, 0.10, 0.15],
            transitions: vec![
                vec![
                    vec![0.00, 0.15, 0.50, 0.15, 0.20],
                    vec![0.10, 0.80, 0.05, 0.03, 0.02],
                    vec![0.00, 0.10, 0.60, 0.10, 0.20],
                    vec![0.00, 0.05, 0.15, 0.70, 0.10],
                    vec![0.00, 0.05, 0.15, 0.10, 0.70],
                ],
                vec![
                    vec![0.05, 0.05, 0.50, 0.10, 0.30],
                    vec![0.00, 0.70, 0.10, 0.15, 0.05],
                    vec![0.02, 0.10, 0.60, 0.08, 0.20],
                    vec![0.00, 0.05, 0.10, 0.75, 0.10],
                    vec![0.00, 0.05, 0.10, 0.05, 0.80],
                ],
                vec![
                    vec![0.00, 0.00, 0.60, 0.10, 0.30],
                    vec![0.00, 0.10, 0.60, 0.20, 0.10],
                    vec![0.00, 0.00, 0.80, 0.05, 0.15],
                    vec![0.00, 0.00, 0.10, 0.85, 0.05],
                    vec![0.00, 0.00, 0.05, 0.05, 0.90],
                ],
            ],
        })
        .expect("the founding example is a valid model")
    }

    fn assert_close(found: &[f64], expected: &[f64], tolerance: f64) {
        assert_eq!(found.len(), expected.len());
        for (f, e) in found.iter().zip(expected) {
            assert!((f - e).abs() <= tolerance, "found {found:?}, expected {expected:?}");
        }
    }

    fn what_if(into: &str, op: &str, channel: &str, share: f64) -> WhatIf {
        let share = Share::new(share).unwrap();
        let channel = channel.to_string();
        let operation = match op {
            "mix" => Operation::Mix { channel, share },
            _ => Operation::SetShare { channel, share },
        };
        WhatIf { into_stage: into.into(), operation }
    }

    #[test]
    fn the_founding_example_propagates_to_the_published_distributions() {
        let shares = founding_example().propagate().shares;
        assert_close(&shares[1], &[0.0200, 0.2425, 0.3475, 0.1610, 0.2290], 5e-5);
        assert_close(&shares[2], &[0.0080, 0.2250, 0.2818, 0.1984, 0.2869], 5e-5);
        assert_close(&shares[3], &[0.0000, 0.0225, 0.3994, 0.2428, 0.3353], 5e-5);
    }

    #[test]
    fn the_three_golden_what_ifs_give_the_published_shares_and_changes() {
        let model = founding_example();
        let cases = [
            (
                what_if("evaluation", "mix", "social", 0.2),
                [0.0000, 0.0320, 0.4230, 0.2493, 0.2957],
                [42.22, 5.92, 2.65, -11.80],
            ),
            (
                what_if("decision", "mix", "social", 0.2),
                [0.0000, 0.0380, 0.4395, 0.2343, 0.2882],
                [68.89, 10.05, -3.53, -14.04],
            ),
            (
                what_if("decision", "set", "social", 0.2),
                [0.0000, 0.0200, 0.3940, 0.2681, 0.3178],
                [-11.11, -1.33, 10.41, -5.21],
            ),
        ];
        for (scenario, shares, pct) in cases {
            let comparison = compare(&model, &[scenario]).unwrap();
            assert_close(comparison.scenario.last(), &shares, 5e-5);
            assert_eq!(comparison.change_pct[0], None, "search has no baseline purchase share");
            let found: Vec<f64> = comparison.change_pct[1..].iter().map(|p| p.unwrap()).collect();
            assert_close(&found, &pct, 5e-3);
        }
    }

    #[test]
    fn mix_never_takes_more_than_the_share_from_a_channel() {
        let model = founding_example();
        let comparison = compare(&model, &[what_if("decision", "mix", "search", 0.2)]).unwrap();
        for (pct, change) in comparison.change_pct.iter().zip(&comparison.change) {
            if let Some(pct) = pct {
                assert!(*pct >= -20.0 - 1e-9, "{pct}");
            }
            assert!(change.is_finite());
        }
    }

    #[test]
    fn set_share_refuses_a_row_that_sent_everyone_to_the_channel() {
        let model = founding_example();
        let mut spec: StageModelSpec = model.into();
        spec.transitions[0][1] = vec![0.0, 1.0, 0.0, 0.0, 0.0];
        let model = StageModel::new(spec).unwrap();
        let error = model.apply(&what_if("evaluation", "set", "social", 0.2)).unwrap_err();
        assert!(matches!(error, JourneyError::SetSharePureRow { ref row, .. } if row == "social"), "{error}");
        // Asking for all of it is what the row already does.
        let all = model.apply(&what_if("evaluation", "set", "social", 1.0)).unwrap();
        assert_eq!(all.transition(0)[1], vec![0.0, 1.0, 0.0, 0.0, 0.0]);
        assert_eq!(all.transition(0)[0], vec![0.0, 1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn an_edited_row_replaces_only_that_row_and_must_be_a_distribution() {
        let model = founding_example();
        let edit = WhatIf {
            into_stage: "purchase".into(),
            operation: Operation::EditRow { from_channel: "web".into(), row: vec![0.0, 0.0, 0.4, 0.6, 0.0] },
        };
        let changed = model.apply(&edit).unwrap();
        assert_eq!(changed.transition(2)[2], vec![0.0, 0.0, 0.4, 0.6, 0.0]);
        assert_eq!(changed.transition(2)[0], model.transition(2)[0]);
        let bad = WhatIf {
            into_stage: "purchase".into(),
            operation: Operation::EditRow { from_channel: "web".into(), row: vec![0.0, 0.0, 0.4, 0.5, 0.0] },
        };
        assert!(matches!(model.apply(&bad), Err(JourneyError::NotADistribution { .. })));
    }

    #[test]
    fn shares_outside_zero_one_are_refused() {
        for value in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert!(matches!(Share::new(value), Err(JourneyError::ShareOutOfRange { .. })), "{value}");
        }
        let parsed: Result<WhatIf, _> =
            serde_json::from_str(r#"{"into_stage": "decision", "op": "mix", "channel": "web", "share": 1.2}"#);
        assert!(parsed.unwrap_err().to_string().contains("outside [0, 1]"));
    }

    #[test]
    fn a_what_if_into_the_first_stage_or_an_unknown_name_is_refused() {
        let model = founding_example();
        assert!(matches!(
            model.apply(&what_if("information", "mix", "web", 0.1)),
            Err(JourneyError::NoTransitionInto { .. })
        ));
        let error = model.apply(&what_if("decison", "mix", "web", 0.1)).unwrap_err();
        assert!(error.to_string().contains("`decision`"), "{error}");
        assert!(matches!(
            model.apply(&what_if("decision", "mix", "tv", 0.1)),
            Err(JourneyError::UnknownChannel { .. })
        ));
    }

    #[test]
    fn bad_models_are_refused_with_the_place_at_fault() {
        let good: StageModelSpec = founding_example().into();
        let mut rows_off = good.clone();
        rows_off.transitions[1][3][0] = 0.5;
        let error = StageModel::new(rows_off).unwrap_err();
        assert!(error.to_string().contains("row `catalogue` of evaluation → decision"), "{error}");
        let mut negative = good.clone();
        negative.initial = vec![-0.1, 0.4, 0.25, 0.3, 0.15];
        assert!(matches!(StageModel::new(negative), Err(JourneyError::NotAProbability { .. })));
        let mut duplicate = good.clone();
        duplicate.channels[4] = "web".into();
        assert!(matches!(StageModel::new(duplicate), Err(JourneyError::Duplicate { .. })));
        let mut short = good.clone();
        short.transitions.pop();
        assert!(matches!(StageModel::new(short), Err(JourneyError::WrongLength { .. })));
        let mut zero_row = good;
        zero_row.transitions[0][0] = vec![0.0; 5];
        assert!(matches!(StageModel::new(zero_row), Err(JourneyError::NotADistribution { .. })));
    }

    #[test]
    fn a_model_reads_from_and_writes_back_to_json() {
        let model = founding_example();
        let text = serde_json::to_string(&model).unwrap();
        let back: StageModel = serde_json::from_str(&text).unwrap();
        assert_eq!(back, model);
        let broken = text.replace("0.3,0.2,0.25", "0.3,0.3,0.25");
        assert!(serde_json::from_str::<StageModel>(&broken).is_err());
    }
}
