//! A stage model estimated from journeys, with counts and bootstrap intervals.
//!
//! A journey is a list of events, each at a (stage, channel). Conventions:
//!
//! - **Several events at one stage**: the stage's channel is the channel of the
//!   journey's *last* event at that stage (events ordered by the key the caller
//!   gives: time, or line in the file), the channel the customer used when
//!   moving on.
//! - **Revisited stage** (information, evaluation, information again): stages are
//!   ordered by the model, not by time; the stage keeps its last event's channel.
//! - **Skipped stage**: a journey with no event at a stage contributes no
//!   transition into or out of that stage (information → decision is not counted
//!   as a step); it still counts at the stages it has and in the transitions
//!   between consecutive stages it has both of.
//! - **Journeys without a purchase** (no event at the last stage) feed the
//!   matrices of the steps they made, since they show how people move between
//!   channels; with `purchasers_only` only journeys that reached the last stage
//!   count.
//! - **A channel never seen at a stage** has no observed row: its row is the
//!   distribution of the next stage's channels over all journeys that made the
//!   step (counts 0 tell it apart), so the matrix stays row-stochastic and a
//!   what-if that moves people onto that channel has a sensible continuation.
//! - A step that no journey made is an error ([`JourneyError::StageWithoutData`]).
//!
//! Confidence intervals come from the bootstrap: journeys are resampled with
//! replacement (`replicates` times, from a seeded generator, so the same seed
//! gives the same intervals), each transition probability re-estimated, and the
//! 2.5% and 97.5% quantiles taken over the replicates in which its row has data.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Binomial, Distribution};
use serde::Serialize;

use super::stages::{StageModel, StageModelSpec};
use super::{known_names, JourneyError};

/// No channel at a stage.
const NONE: u16 = u16::MAX;

/// Journeys read event by event.
#[derive(Debug, Clone)]
pub struct JourneySet {
    stages: Vec<String>,
    channels: Vec<String>,
    channel_index: HashMap<String, u16>,
    journey_index: HashMap<String, usize>,
    /// Per journey and stage (journey `j`'s stages at `j * stages.len()`…):
    /// (ordering key, channel) of the last event seen. One flat vector, so
    /// millions of journeys are not millions of allocations.
    picks: Vec<(u64, u16)>,
}

/// How to estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EstimateOptions {
    /// Only journeys that reached the last stage feed the model.
    pub purchasers_only: bool,
    /// Bootstrap replicates (0: no intervals).
    pub replicates: usize,
    /// Seed of the bootstrap's generator.
    pub seed: u64,
}

impl Default for EstimateOptions {
    fn default() -> Self {
        Self { purchasers_only: false, replicates: 200, seed: 2026 }
    }
}

/// The estimated model with what it was estimated from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EstimatedModel {
    /// The model (channels, stages, initial, transitions).
    #[serde(flatten)]
    pub model: StageModel,
    /// Journeys that fed the model.
    pub journeys: usize,
    /// Of which reached the last stage.
    pub purchasers: usize,
    /// Observed counts behind the probabilities.
    pub counts: Counts,
    /// Bootstrap intervals of the transition probabilities (absent with 0 replicates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intervals: Option<Intervals>,
}

/// Counts behind a model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Counts {
    /// Journeys per channel at the first stage.
    pub initial: Vec<u64>,
    /// `transitions[t][i][j]`: journeys on `i` at stage `t` and `j` at stage `t + 1`.
    pub transitions: Vec<Vec<Vec<u64>>>,
}

/// Bootstrap confidence intervals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Intervals {
    /// Coverage of each interval.
    pub level: f64,
    /// Number of bootstrap replicates.
    pub replicates: usize,
    /// Seed of the generator.
    pub seed: u64,
    /// `initial[j] = [low, high]`: the share of journeys starting on channel `j`.
    pub initial: Vec<Option<[f64; 2]>>,
    /// `transitions[t][i][j] = [low, high]`; `null` for a row never observed.
    pub transitions: Vec<Vec<Vec<Option<[f64; 2]>>>>,
}

impl JourneySet {
    /// An empty set over these stages (first to last) and, optionally, a fixed
    /// list of channels (otherwise channels are taken in order of appearance).
    pub fn new(stages: Vec<String>, channels: Vec<String>) -> Result<Self, JourneyError> {
        if stages.len() < 2 {
            return Err(JourneyError::TooFewStages { found: stages.len() });
        }
        let mut channel_index = HashMap::new();
        for (i, c) in channels.iter().enumerate() {
            if channel_index.insert(c.clone(), i as u16).is_some() {
                return Err(JourneyError::Duplicate { what: "channel", name: c.clone() });
            }
        }
        Ok(Self { stages, channels, channel_index, journey_index: HashMap::new(), picks: Vec::new() })
    }

    /// Adds one event of `journey` at `stage` through `channel`; `order` sorts a
    /// journey's events (a timestamp or the line number).
    pub fn push(
        &mut self,
        line: u64,
        journey: &str,
        stage: &str,
        channel: &str,
        order: u64,
    ) -> Result<(), JourneyError> {
        let stage_index = self.stages.iter().position(|s| s == stage).ok_or_else(|| JourneyError::UnknownStageAt {
            line,
            name: stage.to_string(),
            known: known_names(&self.stages),
        })?;
        let next = self.journeys();
        let j = *self.journey_index.entry(journey.to_string()).or_insert(next);
        self.push_at(line, j, stage_index, channel, order)
    }

    /// Journeys held.
    fn journeys(&self) -> usize {
        self.picks.len() / self.stages.len()
    }

    /// Adds one event of the journey numbered `j` (journeys numbered from 0 in
    /// order of appearance, as a cutter makes them: `j` is at most the number
    /// of journeys so far) at stage number `stage_index`.
    pub fn push_at(
        &mut self,
        line: u64,
        j: usize,
        stage_index: usize,
        channel: &str,
        order: u64,
    ) -> Result<(), JourneyError> {
        let channel = channel.trim();
        if channel.is_empty() {
            return Err(JourneyError::EmptyChannelAt { line });
        }
        let channel_id = match self.channel_index.get(channel) {
            Some(&id) => id,
            None => {
                if self.channels.len() >= super::paths::MAX_CHANNELS {
                    return Err(JourneyError::TooManyChannels { limit: super::paths::MAX_CHANNELS });
                }
                let id = self.channels.len() as u16;
                self.channels.push(channel.to_string());
                self.channel_index.insert(channel.to_string(), id);
                id
            }
        };
        let stages = self.stages.len();
        if j >= self.journeys() {
            self.picks.resize((j + 1) * stages, (0, NONE));
        }
        let pick = &mut self.picks[j * stages + stage_index];
        if pick.1 == NONE || order >= pick.0 {
            *pick = (order, channel_id);
        }
        Ok(())
    }

    /// Estimates the model.
    pub fn estimate(&self, options: EstimateOptions) -> Result<EstimatedModel, JourneyError> {
        let s = self.stages.len();
        let n = self.channels.len();
        if n == 0 {
            return Err(JourneyError::NoChannels);
        }
        let journeys: Vec<Vec<u16>> = self
            .picks
            .chunks_exact(s)
            .filter(|p| !options.purchasers_only || p[s - 1].1 != NONE)
            .map(|p| p.iter().map(|&(_, c)| c).collect())
            .collect();
        let patterns = distinct(&journeys);
        let counts = count(&patterns, patterns.iter().map(|(_, weight)| *weight), s, n);
        let fed = journeys.iter().filter(|j| j.iter().any(|&c| c != NONE)).count();
        let purchasers = journeys.iter().filter(|j| j[s - 1] != NONE).count();
        if counts.initial.iter().sum::<u64>() == 0 {
            return Err(JourneyError::NoJourneys { stage: self.stages[0].clone() });
        }
        for (t, matrix) in counts.transitions.iter().enumerate() {
            if matrix.iter().flatten().sum::<u64>() == 0 {
                return Err(JourneyError::StageWithoutData {
                    stage: self.stages[t + 1].clone(),
                    previous: self.stages[t].clone(),
                });
            }
        }
        let initial_total = counts.initial.iter().sum::<u64>() as f64;
        let spec = StageModelSpec {
            channels: self.channels.clone(),
            stages: self.stages.clone(),
            initial: counts.initial.iter().map(|&c| c as f64 / initial_total).collect(),
            transitions: counts.transitions.iter().map(|m| probabilities(m).0).collect(),
        };
        let model = StageModel::new(spec)?;
        let intervals = (options.replicates > 0).then(|| self.bootstrap(&patterns, journeys.len() as u64, options, n));
        Ok(EstimatedModel { model, journeys: fed, purchasers, counts, intervals })
    }

    /// Resampling the journeys with replacement draws, for each distinct
    /// journey, how many times it comes out: a multinomial draw of all the
    /// journeys over the distinct ones, made as a chain of binomial draws, so a
    /// replicate costs one draw per distinct journey, not one per journey.
    fn bootstrap(&self, patterns: &[(Vec<u16>, u64)], journeys: u64, options: EstimateOptions, n: usize) -> Intervals {
        let s = self.stages.len();
        let mut rng = StdRng::seed_from_u64(options.seed);
        // samples[t][i][j]: the replicates' estimates of that cell.
        let mut samples = vec![vec![vec![Vec::with_capacity(options.replicates); n]; n]; s - 1];
        let mut initial_samples = vec![Vec::with_capacity(options.replicates); n];
        let mut draws = vec![0u64; patterns.len()];
        for _ in 0..options.replicates {
            let (mut left, mut weight_left) = (journeys, journeys);
            for ((_, weight), drawn) in patterns.iter().zip(draws.iter_mut()) {
                *drawn = if left == 0 || *weight >= weight_left {
                    left
                } else {
                    let p = *weight as f64 / weight_left as f64;
                    Binomial::new(left, p).map_or(0, |b| b.sample(&mut rng))
                };
                left -= *drawn;
                weight_left -= weight;
            }
            let counts = count(patterns, draws.iter().copied(), s, n);
            let started: u64 = counts.initial.iter().sum();
            if started > 0 {
                for (cell, c) in initial_samples.iter_mut().zip(&counts.initial) {
                    cell.push(*c as f64 / started as f64);
                }
            }
            for (t, matrix) in counts.transitions.iter().enumerate() {
                let (rows, observed) = probabilities(matrix);
                for ((row, seen), cells) in rows.iter().zip(&observed).zip(samples[t].iter_mut()) {
                    if *seen {
                        for (p, cell) in row.iter().zip(cells.iter_mut()) {
                            cell.push(*p);
                        }
                    }
                }
            }
        }
        let transitions = samples
            .into_iter()
            .map(|matrix| {
                matrix.into_iter().map(|row| row.into_iter().map(|mut v| quantiles(&mut v)).collect()).collect()
            })
            .collect();
        let initial = initial_samples.into_iter().map(|mut v| quantiles(&mut v)).collect();
        Intervals { level: 0.95, replicates: options.replicates, seed: options.seed, initial, transitions }
    }
}

/// The distinct journeys with how many times each occurs, in a fixed order
/// (so a seeded bootstrap gives the same intervals every time).
fn distinct(journeys: &[Vec<u16>]) -> Vec<(Vec<u16>, u64)> {
    let mut counted: HashMap<&[u16], u64> = HashMap::new();
    for journey in journeys {
        *counted.entry(journey.as_slice()).or_default() += 1;
    }
    let mut patterns: Vec<(Vec<u16>, u64)> = counted.into_iter().map(|(j, c)| (j.to_vec(), c)).collect();
    patterns.sort_unstable();
    patterns
}

/// Counts of the distinct journeys, each taken `times` times (in order).
fn count(patterns: &[(Vec<u16>, u64)], times: impl Iterator<Item = u64>, s: usize, n: usize) -> Counts {
    let mut initial = vec![0u64; n];
    let mut transitions = vec![vec![vec![0u64; n]; n]; s - 1];
    for ((stages, _), k) in patterns.iter().zip(times) {
        if k == 0 {
            continue;
        }
        if stages[0] != NONE {
            initial[stages[0] as usize] += k;
        }
        for t in 0..s - 1 {
            let (from, to) = (stages[t], stages[t + 1]);
            if from != NONE && to != NONE {
                transitions[t][from as usize][to as usize] += k;
            }
        }
    }
    Counts { initial, transitions }
}

/// Row-normalised probabilities; a row without data gets the column marginal.
/// Also says which rows had data.
fn probabilities(matrix: &[Vec<u64>]) -> (Vec<Vec<f64>>, Vec<bool>) {
    let n = matrix.len();
    let mut columns = vec![0u64; n];
    for row in matrix {
        for (j, &c) in row.iter().enumerate() {
            columns[j] += c;
        }
    }
    let total = columns.iter().sum::<u64>().max(1) as f64;
    let marginal: Vec<f64> = columns.iter().map(|&c| c as f64 / total).collect();
    let mut observed = vec![false; n];
    let rows = matrix
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let sum = row.iter().sum::<u64>();
            if sum == 0 {
                marginal.clone()
            } else {
                observed[i] = true;
                row.iter().map(|&c| c as f64 / sum as f64).collect()
            }
        })
        .collect();
    (rows, observed)
}

/// The 2.5% and 97.5% quantiles (linear interpolation), `None` without samples.
fn quantiles(values: &mut [f64]) -> Option<[f64; 2]> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable_by(f64::total_cmp);
    let at = |q: f64| {
        let position = q * (values.len() - 1) as f64;
        let (low, high) = (position.floor() as usize, position.ceil() as usize);
        values[low] + (values[high] - values[low]) * (position - low as f64)
    };
    Some([at(0.025), at(0.975)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages() -> Vec<String> {
        ["information", "evaluation", "purchase"].iter().map(|s| s.to_string()).collect()
    }

    fn journeys(events: &[(&str, &str, &str)]) -> JourneySet {
        let mut set = JourneySet::new(stages(), vec![]).unwrap();
        for (line, (journey, stage, channel)) in events.iter().enumerate() {
            set.push(line as u64 + 2, journey, stage, channel, line as u64).unwrap();
        }
        set
    }

    #[test]
    fn the_last_event_at_a_stage_is_its_channel_and_skipped_stages_cut_the_step() {
        let set = journeys(&[
            ("j1", "information", "web"),
            ("j1", "information", "social"), // the last one counts
            ("j1", "evaluation", "web"),
            ("j1", "purchase", "store"),
            ("j2", "information", "web"),
            ("j2", "purchase", "web"), // skipped evaluation: no step counted
            ("j3", "information", "web"),
            ("j3", "evaluation", "store"), // no purchase: still feeds the first step
        ]);
        let options = EstimateOptions { replicates: 0, ..Default::default() };
        let estimated = set.estimate(options).unwrap();
        let channels = estimated.model.channels().to_vec();
        assert_eq!(channels, ["web", "social", "store"]);
        assert_eq!(estimated.counts.initial, vec![2, 1, 0]);
        assert_eq!(estimated.counts.transitions[0], vec![vec![0, 0, 1], vec![1, 0, 0], vec![0, 0, 0]]);
        assert_eq!(estimated.counts.transitions[1], vec![vec![0, 0, 1], vec![0, 0, 0], vec![0, 0, 0]]);
        assert_eq!(estimated.journeys, 3);
        assert_eq!(estimated.purchasers, 2);
        // `store` was never at evaluation→… except j3, who did not buy; `social` row
        // never observed at step 2: it gets the column marginal.
        assert_eq!(estimated.model.transition(1)[1], vec![0.0, 0.0, 1.0]);
        let only = set.estimate(EstimateOptions { purchasers_only: true, ..options }).unwrap();
        assert_eq!(only.counts.transitions[0], vec![vec![0, 0, 0], vec![1, 0, 0], vec![0, 0, 0]]);
    }

    #[test]
    fn a_stage_no_journey_reached_is_reported() {
        let set = journeys(&[("j1", "information", "web"), ("j1", "evaluation", "web")]);
        let error = set.estimate(EstimateOptions::default()).unwrap_err();
        assert_eq!(error, JourneyError::StageWithoutData { stage: "purchase".into(), previous: "evaluation".into() });
        let mut unknown = JourneySet::new(stages(), vec![]).unwrap();
        let error = unknown.push(9, "j1", "sharing", "web", 0).unwrap_err();
        assert!(error.to_string().contains("line 9"), "{error}");
    }

    #[test]
    fn bootstrap_intervals_are_seeded_and_hold_the_estimate() {
        let mut events = Vec::new();
        let names: Vec<String> = (0..300).map(|i| format!("j{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            let first = if i % 3 == 0 { "web" } else { "store" };
            let second = if i % 5 < 2 { "web" } else { "store" };
            events.push((name.as_str(), "information", first));
            events.push((name.as_str(), "evaluation", second));
            events.push((name.as_str(), "purchase", second));
        }
        let set = journeys(&events);
        let a = set.estimate(EstimateOptions::default()).unwrap();
        let b = set.estimate(EstimateOptions::default()).unwrap();
        assert_eq!(a, b, "same seed, same intervals");
        let intervals = a.intervals.as_ref().unwrap();
        for (interval_row, row) in intervals.transitions[0].iter().zip(a.model.transition(0)).take(2) {
            for (interval, p) in interval_row.iter().zip(row).take(2) {
                let [low, high] = interval.unwrap();
                assert!(low <= *p && *p <= high && high - low < 0.3, "{low} {p} {high}");
                assert!(high - low > 0.0);
            }
        }
        // A third of the journeys start on the web: the interval holds 1/3 and is narrow.
        let web = a.model.channels().iter().position(|c| c == "web").unwrap();
        let [low, high] = intervals.initial[web].unwrap();
        assert!(low < 1.0 / 3.0 && 1.0 / 3.0 < high && high - low < 0.15, "{low} {high}");
        let other = set.estimate(EstimateOptions { seed: 7, ..Default::default() }).unwrap();
        assert_ne!(other.intervals, a.intervals);
    }
}
