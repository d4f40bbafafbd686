//! Customer journeys across channels: the stage model (a Markov chain over
//! stage × channel), its propagation and what-if scenarios, and the attribution
//! of conversions to channels from conversion paths (heuristics and exact Markov
//! removal effects of order 1 to 4).
//!
//! Everything here is pure: files are read by the binary, which hands rows over
//! one by one ([`PathSet::push`], [`JourneySet::push`]) and gets typed errors
//! naming the line at fault. No output of this module is ever NaN: a quantity
//! without meaning (a percentage change over a zero baseline) is `None`.
//!
//! - [`stages`]: [`StageModel`] (channels, stages, the distribution at the first
//!   stage and one row-stochastic matrix per step), [`StageModel::propagate`],
//!   the what-if operators ([`Operation`]) and [`compare`].
//! - [`estimate`]: a [`StageModel`] estimated from journeys, with counts and
//!   bootstrap confidence intervals; [`events`]: journeys cut from a stored
//!   event log (which stage each event stands for, where a journey ends).
//! - [`paths`]: conversion paths in the ChannelAttribution format and the
//!   first-touch, last-touch and linear models.
//! - [`markov`]: removal-effect attribution on the absorbing chain, solved
//!   exactly (no simulation).

pub mod estimate;
pub mod events;
pub mod markov;
pub mod paths;
pub mod stages;

pub use estimate::{EstimateOptions, EstimatedModel, JourneySet};
pub use events::{journeys_from_events, JourneyCutter, LoggedEvent, StageMap};
pub use markov::{markov_attribution, MarkovAttribution, Order};
pub use paths::{heuristic_attribution, Credit, HeuristicAttribution, PathSet};
pub use stages::{compare, Comparison, Operation, Propagation, Share, StageModel, StageModelSpec, WhatIf};

/// What can be wrong with a stage model, a what-if, a conversion path or a journey.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JourneyError {
    /// A model, a path file or a journey file names no channel at all.
    #[error("no channel: list at least one channel")]
    NoChannels,
    /// A channel or stage name is empty or blank.
    #[error("empty {what} name at position {position}; give every {what} a name")]
    EmptyName { what: &'static str, position: usize },
    /// A channel or stage name appears twice.
    #[error("{what} `{name}` is listed twice; names must be unique")]
    Duplicate { what: &'static str, name: String },
    /// A model needs at least two stages to have a transition.
    #[error("{found} stage(s) given; a model needs at least two stages")]
    TooFewStages { found: usize },
    /// A list or matrix has the wrong length.
    #[error("{what} has {found} entries, expected {expected}")]
    WrongLength { what: String, expected: usize, found: usize },
    /// A probability is negative, above 1 or not a number.
    #[error("{what} holds {value}, which is not a probability in [0, 1]")]
    NotAProbability { what: String, value: f64 },
    /// A distribution (the first stage or a transition row) does not sum to 1.
    #[error("{what} sums to {sum}; it must sum to 1 (within 1e-6)")]
    NotADistribution { what: String, sum: f64 },
    /// A journey event at a stage that the model does not have.
    #[error("line {line}: unknown stage `{name}`; the stages are {known} (set them with --stages)")]
    UnknownStageAt { line: u64, name: String, known: String },
    /// A journey event without a channel.
    #[error("line {line}: empty channel; every event names the channel it went through")]
    EmptyChannelAt { line: u64 },
    /// A stage name that the model does not have.
    #[error("unknown stage `{name}`; the model's stages are {known}")]
    UnknownStage { name: String, known: String },
    /// A channel name that the model does not have.
    #[error("unknown channel `{name}`; the model's channels are {known}")]
    UnknownChannel { name: String, known: String },
    /// A what-if must change the transition into a later stage, not the first.
    #[error("stage `{stage}` is the first stage: no transition leads into it; choose a later stage")]
    NoTransitionInto { stage: String },
    /// A what-if share outside [0, 1].
    #[error("share {value} is outside [0, 1]; give a share such as 0.2 for 20%")]
    ShareOutOfRange { value: f64 },
    /// "set share" cannot rescale a row that sends everyone to the channel itself.
    #[error(
        "set share: in {transition}, row `{row}` sends everyone to `{channel}`, so the other channels \
         have nothing to rescale; edit that row by hand instead"
    )]
    SetSharePureRow { transition: String, row: String, channel: String },
    /// A conversion path with no channel.
    #[error("line {line}: empty path; a path lists at least one channel")]
    EmptyPath { line: u64 },
    /// Two separators with nothing between them.
    #[error("line {line}: empty channel between two `>` in `{path}`")]
    EmptyTouch { line: u64, path: String },
    /// A path whose channels are joined by something other than `" > "`.
    #[error("line {line}: path `{path}` uses the separator `{separator}`; join channels with \" > \"")]
    UnknownSeparator { line: u64, path: String, separator: String },
    /// A count or value that is negative or not a finite number.
    #[error("line {line}: {column} is {value}; it must be a finite number, 0 or more")]
    BadCount { line: u64, column: &'static str, value: f64 },
    /// A value on a path that has no conversion.
    #[error("line {line}: total_conversion_value is {value} but total_conversions is 0; value comes with conversions")]
    ValueWithoutConversion { line: u64, value: f64 },
    /// More distinct channels than the attribution can index.
    #[error("more than {limit} distinct channels; check the path column")]
    TooManyChannels { limit: usize },
    /// Attribution needs at least one conversion.
    #[error("no path has a conversion: there is nothing to attribute")]
    NoConversions,
    /// A Markov order outside 1..=4.
    #[error("order {order} is not supported; choose an order from 1 to 4")]
    OrderOutOfRange { order: u32 },
    /// The iterative solve did not reach machine tolerance (should not happen on
    /// an absorbing chain; reported rather than returning a wrong figure).
    #[error("the absorbing chain did not converge after {sweeps} sweeps")]
    NotConverged { sweeps: usize },
    /// A stage that no journey reached, so its transition cannot be estimated.
    #[error("stage `{stage}` has no data: no journey goes from `{previous}` to it; check the stage names or collect more journeys")]
    StageWithoutData { stage: String, previous: String },
    /// No journey at all.
    #[error("no journey reaches the first stage `{stage}`")]
    NoJourneys { stage: String },
}

/// `names` joined for an error message: "`a`, `b`, `c`".
fn known_names(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}
