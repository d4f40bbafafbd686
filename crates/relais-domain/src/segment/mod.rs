//! Segments: a small language over computed traits, profile attributes,
//! windowed event counts, consents and RFM scores (see `docs/segments.md`).
//!
//! A segment's source is parsed (`parse`), then checked against the fields a
//! role may read (`Segment::compile`), which yields the columns it needs and a
//! tree of typed conditions. Evaluation runs column by column over a
//! `FactTable` into a bitmap (`eval`), so one code path serves a preview over a
//! million profiles, a full refresh and the few profiles an ingest batch
//! touched. Nothing here knows SQL: the store fills the table.

mod check;
mod eval;
pub mod parse;

use std::fmt;

pub use check::{field_catalogue, CheckContext, FieldDoc};
pub use eval::{Bitmap, Fact, FactTable};

use crate::consent::{ConsentChannel, Purpose};
use crate::Channel;

/// What kind of mistake a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// It does not parse.
    Syntax,
    /// It parses, but a name is unknown or a value has the wrong type.
    Type,
    /// A number or window is outside what is allowed.
    Range,
    /// It reads data the caller's role may not see.
    Forbidden,
}

impl ErrorKind {
    /// The name used in problem documents.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Syntax => "syntax",
            ErrorKind::Type => "type",
            ErrorKind::Range => "range",
            ErrorKind::Forbidden => "forbidden",
        }
    }
}

/// A mistake in a segment, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (line {line}, column {column})")]
pub struct SegmentError {
    /// What kind of mistake.
    pub kind: ErrorKind,
    /// What is wrong and what was expected.
    pub message: String,
    /// First byte at fault.
    pub start: usize,
    /// One past the last byte at fault.
    pub end: usize,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl SegmentError {
    fn at(source: &str, kind: ErrorKind, span: parse::Span, message: String) -> SegmentError {
        let start = span.start.min(source.len());
        SegmentError {
            kind,
            message,
            start,
            end: span.end.max(start),
            line: source[..start].matches('\n').count() + 1,
            column: parse::column_of(source, start),
        }
    }
}

/// A profile fact a segment reads; the store fills one column of a
/// `FactTable` per distinct column a segment needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Column {
    /// A computed trait.
    Trait(TraitColumn),
    /// Whether the person ever used a channel.
    ChannelUsed(Channel),
    /// A clear profile attribute, by its path under `traits` (`address.city`);
    /// the first of several paths that holds a value wins.
    Profile(Vec<String>),
    /// Events of one name in the last `days` days (today included).
    EventCount {
        /// The event's name.
        name: String,
        /// The window, in days.
        days: i64,
    },
    /// Whether consent stands now for a purpose on a channel.
    Consent(Purpose, ConsentChannel),
    /// A stored score (RFM, lifetime value).
    Score(ScoreColumn),
}

impl Column {
    /// Whether the column's value changes with time alone (so memberships
    /// built on it need a scheduled refresh).
    pub fn moves_with_time(&self) -> bool {
        match self {
            Column::Trait(t) => t.moves_with_time(),
            Column::EventCount { .. } => true,
            Column::Consent(..) | Column::Score(_) | Column::ChannelUsed(_) | Column::Profile(_) => false,
        }
    }
}

/// The computed traits a segment can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TraitColumn {
    /// Completed orders, ever.
    Orders,
    /// Refunds, ever.
    Refunds,
    /// Events, ever.
    Events,
    /// Net revenue, minor units.
    Revenue,
    /// Mean order value, minor units.
    AverageBasket,
    /// Orders in the last 30 days.
    Orders30d,
    /// Orders in the last 90 days.
    Orders90d,
    /// Orders in the last 365 days.
    Orders365d,
    /// Net revenue in the last 90 days.
    Revenue90d,
    /// Net revenue in the last 365 days.
    Revenue365d,
    /// Channel of the latest event.
    LastChannel,
    /// The store with the most events.
    FavouriteStore,
    /// Days since the latest order.
    DaysSinceLastOrder,
    /// Days since the latest event.
    DaysSinceLastSeen,
    /// Days since the first event.
    DaysSinceFirstSeen,
}

impl TraitColumn {
    fn moves_with_time(self) -> bool {
        matches!(
            self,
            TraitColumn::Orders30d
                | TraitColumn::Orders90d
                | TraitColumn::Orders365d
                | TraitColumn::Revenue90d
                | TraitColumn::Revenue365d
                | TraitColumn::DaysSinceLastOrder
                | TraitColumn::DaysSinceLastSeen
                | TraitColumn::DaysSinceFirstSeen
        )
    }
}

/// The stored scores a segment can read (computed over the whole base at
/// each refresh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScoreColumn {
    /// The named group.
    Group,
    /// Recency score, 1–5.
    R,
    /// Frequency score, 1–5.
    F,
    /// Monetary score, 1–5.
    M,
    /// Expected value over the next 52 weeks, minor units.
    Clv,
}

/// The longest window a segment may count events over, in days.
pub const MAX_WINDOW_DAYS: i64 = 730;

/// A checked segment, ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    source: String,
    columns: Vec<Column>,
    root: eval::Node,
}

impl Segment {
    /// Parse and check a segment's source for a reader.
    pub fn compile(source: &str, context: &CheckContext<'_>) -> Result<Segment, SegmentError> {
        let expr = parse::parse(source)?;
        let mut columns = Vec::new();
        let root = check::check(source, &expr, context, &mut columns)?;
        Ok(Segment { source: source.to_string(), columns, root })
    }

    /// The source it was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The columns it reads, each once.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// Whether memberships can change with time alone.
    pub fn moves_with_time(&self) -> bool {
        self.columns.iter().any(Column::moves_with_time)
    }

    /// The rows of `table` in the segment. The table must hold every column of
    /// `columns()` (in any order, with others besides).
    pub fn evaluate(&self, table: &FactTable) -> Bitmap {
        eval::evaluate(&self.root, &self.columns, table)
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}
