//! Conversion paths in the ChannelAttribution format and the heuristic models.
//!
//! A row is a distinct path (channels joined by `" > "`), its conversions, the
//! value of those conversions and the number of journeys on that path that did
//! not convert (`total_conversions`, `total_conversion_value`, `total_null`).
//! Channel names are trimmed; ChannelAttribution splits on the single character
//! `>`, and so does relais. Refused, with the line: an empty path, an empty
//! channel between two separators (ChannelAttribution drops it silently; an
//! empty touch is almost always a broken export), a path joined by another
//! separator (`->`, `=>`, `|`, `,`, `;`, `→` or a tab found inside a channel
//! name), a negative or non-finite count, a value on a row without conversions.
//!
//! Heuristics, exactly as ChannelAttribution's `heuristic_models`: first touch
//! credits the first channel of the path, last touch the last one, linear gives
//! each touch `1 / length` of the path's conversions and value (a channel
//! touched twice gets two shares). Repeats are not collapsed here.

use std::collections::HashMap;

use serde::Serialize;

use super::JourneyError;

/// The character between channels in a path.
pub const SEPARATOR: char = '>';

/// Channel ids are `u16` so that a k-tuple of channels packs into a `u64` key.
pub(crate) const MAX_CHANNELS: usize = u16::MAX as usize - 1;

/// Strings that, inside a channel name, betray a path joined by another separator
/// (`->` and `=>` are caught by the `-` or `=` they leave at the end of a name).
const FOREIGN_SEPARATORS: [&str; 5] = ["|", ",", ";", "→", "\t"];

/// One distinct path and its totals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PathRow {
    /// Where the path's channels start in [`PathSet::touches`].
    pub start: u32,
    /// How many touches the path has.
    pub len: u32,
    /// Journeys on this path that converted.
    pub conversions: f64,
    /// Value of those conversions.
    pub value: f64,
    /// Journeys on this path that did not convert.
    pub nulls: f64,
}

/// Conversion paths, their channels interned in order of first appearance.
#[derive(Debug, Clone, Default)]
pub struct PathSet {
    channels: Vec<String>,
    /// Channel ids by name; a fast hash with a random seed per map, since names
    /// may come from an API caller.
    index: HashMap<String, u16, foldhash::fast::RandomState>,
    touches: Vec<u16>,
    rows: Vec<PathRow>,
    converting_channel: Vec<bool>,
}

impl PathSet {
    /// An empty set of paths.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one row read at `line` of its file (1-based, for messages).
    pub fn push(
        &mut self,
        line: u64,
        path: &str,
        conversions: f64,
        value: f64,
        nulls: f64,
    ) -> Result<(), JourneyError> {
        for (column, count) in
            [("total_conversions", conversions), ("total_conversion_value", value), ("total_null", nulls)]
        {
            if !count.is_finite() || count < 0.0 {
                return Err(JourneyError::BadCount { line, column, value: count });
            }
        }
        if conversions == 0.0 && value > 0.0 {
            return Err(JourneyError::ValueWithoutConversion { line, value });
        }
        if path.trim().is_empty() {
            return Err(JourneyError::EmptyPath { line });
        }
        // One byte scan finds the rare path that may hold a foreign separator
        // (0xE2 starts `→` in UTF-8); only that path pays for the exact search.
        if path.bytes().any(|b| matches!(b, b'|' | b',' | b';' | b'\t' | 0xE2)) {
            if let Some(separator) = FOREIGN_SEPARATORS.iter().find(|s| path.contains(**s)) {
                return Err(JourneyError::UnknownSeparator {
                    line,
                    path: path.to_string(),
                    separator: separator.escape_default().to_string(),
                });
            }
        }
        let start = self.touches.len();
        let known = self.channels.len();
        for raw in path.split(SEPARATOR) {
            let name = raw.trim_matches(' ');
            // `a -> b` split on `>` leaves `a -`: the same foreign separator, seen from this side.
            let refused = if let Some(cut) = ["-", "="].iter().find(|s| name.ends_with(**s)) {
                Some(JourneyError::UnknownSeparator { line, path: path.to_string(), separator: format!("{cut}>") })
            } else if name.trim().is_empty() {
                Some(JourneyError::EmptyTouch { line, path: path.to_string() })
            } else if self.channels.len() >= MAX_CHANNELS && !self.index.contains_key(name.trim()) {
                Some(JourneyError::TooManyChannels { limit: MAX_CHANNELS })
            } else {
                None
            };
            if let Some(error) = refused {
                // A refused row leaves nothing behind: its touches and the channels it introduced go.
                self.touches.truncate(start);
                for name in self.channels.drain(known..) {
                    self.index.remove(&name);
                }
                self.converting_channel.truncate(known);
                return Err(error);
            }
            let name = name.trim();
            let id = match self.index.get(name) {
                Some(&id) => id,
                None => {
                    let id = self.channels.len() as u16;
                    self.channels.push(name.to_string());
                    self.index.insert(name.to_string(), id);
                    self.converting_channel.push(false);
                    id
                }
            };
            self.touches.push(id);
        }
        let len = (self.touches.len() - start) as u32;
        if conversions > 0.0 {
            for &id in &self.touches[start..] {
                self.converting_channel[id as usize] = true;
            }
        }
        self.rows.push(PathRow { start: start as u32, len, conversions, value, nulls });
        Ok(())
    }

    /// Channel names, in order of first appearance.
    pub fn channels(&self) -> &[String] {
        &self.channels
    }

    /// How many distinct paths were read.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no path was read.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Total conversions over all paths.
    pub fn total_conversions(&self) -> f64 {
        self.rows.iter().map(|r| r.conversions).sum()
    }

    /// Total conversion value over all paths.
    pub fn total_value(&self) -> f64 {
        self.rows.iter().map(|r| r.value).sum()
    }

    /// Channels that appear only on paths without conversion (heuristics give them 0).
    pub fn channels_without_conversion(&self) -> Vec<&str> {
        self.channels.iter().zip(&self.converting_channel).filter(|(_, &c)| !c).map(|(n, _)| n.as_str()).collect()
    }

    pub(crate) fn rows(&self) -> &[PathRow] {
        &self.rows
    }

    pub(crate) fn touches(&self, row: &PathRow) -> &[u16] {
        &self.touches[row.start as usize..(row.start + row.len) as usize]
    }
}

/// Conversions and value credited to one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Credit {
    /// Conversions credited.
    pub conversions: f64,
    /// Conversion value credited.
    pub value: f64,
}

/// The three heuristic models, per channel in the order of [`PathSet::channels`].
#[derive(Debug, Clone, PartialEq)]
pub struct HeuristicAttribution {
    /// Credit to the first channel of each path.
    pub first_touch: Vec<Credit>,
    /// Credit to the last channel of each path.
    pub last_touch: Vec<Credit>,
    /// Credit shared equally among a path's touches.
    pub linear: Vec<Credit>,
}

/// First-touch, last-touch and linear attribution of every path's conversions.
pub fn heuristic_attribution(paths: &PathSet) -> HeuristicAttribution {
    let n = paths.channels.len();
    let mut first_touch = vec![Credit::default(); n];
    let mut last_touch = vec![Credit::default(); n];
    let mut linear = vec![Credit::default(); n];
    for row in &paths.rows {
        if row.conversions == 0.0 {
            continue;
        }
        let touches = paths.touches(row);
        let first = &mut first_touch[touches[0] as usize];
        first.conversions += row.conversions;
        first.value += row.value;
        let last = &mut last_touch[touches[touches.len() - 1] as usize];
        last.conversions += row.conversions;
        last.value += row.value;
        let each = 1.0 / touches.len() as f64;
        for &t in touches {
            linear[t as usize].conversions += row.conversions * each;
            linear[t as usize].value += row.value * each;
        }
    }
    HeuristicAttribution { first_touch, last_touch, linear }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Paths from `(path, conversions, value, nulls)` rows (shared with the Markov tests).
    pub(crate) fn set(rows: &[(&str, f64, f64, f64)]) -> PathSet {
        let mut paths = PathSet::new();
        for (line, (path, c, v, n)) in rows.iter().enumerate() {
            paths.push(line as u64 + 2, path, *c, *v, *n).unwrap();
        }
        paths
    }

    #[test]
    fn heuristics_credit_first_last_and_every_touch() {
        let paths = set(&[("a > b > a", 3.0, 30.0, 1.0), ("b", 1.0, 5.0, 0.0), ("c > a", 0.0, 0.0, 4.0)]);
        assert_eq!(paths.channels(), ["a", "b", "c"]);
        let h = heuristic_attribution(&paths);
        assert_eq!(h.first_touch[0], Credit { conversions: 3.0, value: 30.0 });
        assert_eq!(h.first_touch[1], Credit { conversions: 1.0, value: 5.0 });
        assert_eq!(h.last_touch[0], Credit { conversions: 3.0, value: 30.0 });
        // a touched twice in a three-touch path: two thirds of it.
        assert!((h.linear[0].conversions - 2.0).abs() < 1e-12);
        assert!((h.linear[1].conversions - 2.0).abs() < 1e-12);
        assert!((h.linear[1].value - 15.0).abs() < 1e-12);
        assert_eq!(h.linear[2], Credit::default());
        assert_eq!(paths.channels_without_conversion(), vec!["c"]);
    }

    #[test]
    fn names_are_trimmed_and_split_on_the_single_character() {
        let paths = set(&[(" email>  paid search  > email ", 1.0, 0.0, 0.0)]);
        assert_eq!(paths.channels(), ["email", "paid search"]);
    }

    #[test]
    fn foreign_separators_empty_paths_and_bad_counts_are_refused_with_their_line() {
        let mut paths = PathSet::new();
        for (path, separator) in [("a -> b", "->"), ("a | b", "|"), ("a, b", ","), ("a; b", ";"), ("a => b", "=>")] {
            let error = paths.push(7, path, 1.0, 0.0, 0.0).unwrap_err();
            assert!(
                matches!(&error, JourneyError::UnknownSeparator { line: 7, separator: s, .. } if s == separator),
                "{path}: {error}"
            );
        }
        assert_eq!(paths.push(3, "  ", 1.0, 0.0, 0.0), Err(JourneyError::EmptyPath { line: 3 }));
        assert!(matches!(paths.push(4, "a > > b", 1.0, 0.0, 0.0), Err(JourneyError::EmptyTouch { line: 4, .. })));
        assert!(matches!(
            paths.push(5, "a", -1.0, 0.0, 0.0),
            Err(JourneyError::BadCount { line: 5, column: "total_conversions", .. })
        ));
        assert!(matches!(
            paths.push(6, "a", 1.0, 0.0, f64::NAN),
            Err(JourneyError::BadCount { column: "total_null", .. })
        ));
        assert!(matches!(paths.push(8, "a", 0.0, 3.0, 1.0), Err(JourneyError::ValueWithoutConversion { .. })));
        // Nothing of the refused rows was kept.
        assert!(paths.is_empty());
        assert!(paths.channels().is_empty());
    }
}
