//! Column-at-a-time evaluation: each condition turns one column into a bitmap
//! of the rows it holds for, and `and`, `or`, `not` combine bitmaps a machine
//! word at a time.
//!
//! A missing value (no order yet, no city, no RFM score) satisfies no
//! comparison: `city != "Lyon"` and `city not in ("Lyon")` leave out people
//! without a city, while `not city = "Lyon"` takes them in.

use std::collections::HashMap;

use super::parse::CmpOp;
use super::Column;

/// A checked condition tree; columns are indexes into the segment's columns.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Not(Box<Node>),
    Int { column: usize, op: CmpOp, value: i64 },
    IntIn { column: usize, values: Vec<i64>, negated: bool },
    TextIn { column: usize, values: Vec<String>, negated: bool },
}

/// One value of one row, as the store hands it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact<'a> {
    /// A number, money in minor units, a score, or 0/1 for true/false.
    Int(i64),
    /// Text.
    Text(&'a str),
    /// No value.
    Missing,
}

const MISSING_INT: i64 = i64::MIN;
const MISSING_CODE: u32 = u32::MAX;

#[derive(Debug, Clone)]
enum Data {
    Int(Vec<i64>),
    Text { codes: Vec<u32>, dictionary: Vec<String>, index: HashMap<String, u32> },
}

/// The facts of many profiles, one column per `Column`, one row per profile.
#[derive(Debug, Clone)]
pub struct FactTable {
    columns: Vec<Column>,
    data: Vec<Data>,
    rows: usize,
}

impl FactTable {
    /// An empty table with these columns.
    pub fn new(columns: &[Column]) -> FactTable {
        let data = columns
            .iter()
            .map(|column| {
                if is_text(column) {
                    Data::Text { codes: Vec::new(), dictionary: Vec::new(), index: HashMap::new() }
                } else {
                    Data::Int(Vec::new())
                }
            })
            .collect();
        FactTable { columns: columns.to_vec(), data, rows: 0 }
    }

    /// The columns, in order.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// Rows so far.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Room for `rows` more rows.
    pub fn reserve(&mut self, rows: usize) {
        for data in &mut self.data {
            match data {
                Data::Int(values) => values.reserve(rows),
                Data::Text { codes, .. } => codes.reserve(rows),
            }
        }
    }

    /// Append one row: one fact per column, in column order. A text fact in a
    /// number column (or the reverse) is stored as missing.
    pub fn push(&mut self, row: &[Fact<'_>]) {
        debug_assert_eq!(row.len(), self.data.len());
        for (data, fact) in self.data.iter_mut().zip(row) {
            match data {
                Data::Int(values) => values.push(match fact {
                    Fact::Int(v) if *v != MISSING_INT => *v,
                    _ => MISSING_INT,
                }),
                Data::Text { codes, dictionary, index } => codes.push(match fact {
                    Fact::Text(text) => match index.get(*text) {
                        Some(code) => *code,
                        None => {
                            let code = dictionary.len() as u32;
                            dictionary.push((*text).to_string());
                            index.insert((*text).to_string(), code);
                            code
                        }
                    },
                    _ => MISSING_CODE,
                }),
            }
        }
        self.rows += 1;
    }
}

fn is_text(column: &Column) -> bool {
    use super::{ScoreColumn, TraitColumn};
    matches!(
        column,
        Column::Profile(_)
            | Column::Score(ScoreColumn::Group)
            | Column::Trait(TraitColumn::LastChannel | TraitColumn::FavouriteStore)
    )
}

/// A set of row numbers, one bit per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
    rows: usize,
}

impl Bitmap {
    fn empty(rows: usize) -> Bitmap {
        Bitmap { words: vec![0; rows.div_ceil(64)], rows }
    }

    fn full(rows: usize) -> Bitmap {
        let mut all = Bitmap { words: vec![u64::MAX; rows.div_ceil(64)], rows };
        all.trim();
        all
    }

    fn from_fn(rows: usize, mut test: impl FnMut(usize) -> bool) -> Bitmap {
        let mut words = Vec::with_capacity(rows.div_ceil(64));
        let mut start = 0;
        while start < rows {
            let end = (start + 64).min(rows);
            let mut word = 0u64;
            for row in start..end {
                word |= u64::from(test(row)) << (row - start);
            }
            words.push(word);
            start = end;
        }
        Bitmap { words, rows }
    }

    /// Clear the bits past the last row (after a `not`).
    fn trim(&mut self) {
        let tail = self.rows % 64;
        if tail != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << tail) - 1;
            }
        }
    }

    /// Whether row `row` is in.
    pub fn contains(&self, row: usize) -> bool {
        row < self.rows && self.words[row / 64] & (1 << (row % 64)) != 0
    }

    /// How many rows are in.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The rows in, in order.
    pub fn rows(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                Some(i * 64 + bit)
            })
        })
    }
}

pub(super) fn evaluate(root: &Node, columns: &[Column], table: &FactTable) -> Bitmap {
    // The segment's column i is the table's column at[i].
    let at: Vec<usize> = columns
        .iter()
        .map(|c| {
            table.columns.iter().position(|t| t == c).unwrap_or_else(|| {
                panic!("the fact table lacks a column the segment reads: {c:?} (fill every column of Segment::columns)")
            })
        })
        .collect();
    eval(root, &at, table)
}

fn eval(node: &Node, at: &[usize], table: &FactTable) -> Bitmap {
    let rows = table.rows;
    match node {
        Node::All(parts) => {
            let mut acc = Bitmap::full(rows);
            for part in parts {
                let bits = eval(part, at, table);
                acc.words.iter_mut().zip(&bits.words).for_each(|(a, b)| *a &= b);
            }
            acc
        }
        Node::Any(parts) => {
            let mut acc = Bitmap::empty(rows);
            for part in parts {
                let bits = eval(part, at, table);
                acc.words.iter_mut().zip(&bits.words).for_each(|(a, b)| *a |= b);
            }
            acc
        }
        Node::Not(inner) => {
            let mut bits = eval(inner, at, table);
            bits.words.iter_mut().for_each(|w| *w = !*w);
            bits.trim();
            bits
        }
        Node::Int { column, op, value } => {
            let Data::Int(values) = &table.data[at[*column]] else { return Bitmap::empty(rows) };
            let v = *value;
            // One loop per operator keeps the comparison out of the inner loop.
            match op {
                CmpOp::Eq => Bitmap::from_fn(rows, |r| values[r] == v),
                CmpOp::Ne => Bitmap::from_fn(rows, |r| values[r] != v && values[r] != MISSING_INT),
                CmpOp::Lt => Bitmap::from_fn(rows, |r| values[r] < v && values[r] != MISSING_INT),
                CmpOp::Le => Bitmap::from_fn(rows, |r| values[r] <= v && values[r] != MISSING_INT),
                CmpOp::Gt => Bitmap::from_fn(rows, |r| values[r] > v),
                CmpOp::Ge => Bitmap::from_fn(rows, |r| values[r] >= v),
            }
        }
        Node::IntIn { column, values: wanted, negated } => {
            let Data::Int(values) = &table.data[at[*column]] else { return Bitmap::empty(rows) };
            Bitmap::from_fn(rows, |r| values[r] != MISSING_INT && wanted.contains(&values[r]) != *negated)
        }
        Node::TextIn { column, values: wanted, negated } => {
            let Data::Text { codes, index, dictionary } = &table.data[at[*column]] else {
                return Bitmap::empty(rows);
            };
            // Compare codes, not strings: one lookup per wanted value, then
            // a table of the dictionary's codes that match.
            let mut matching = vec![*negated; dictionary.len()];
            for value in wanted {
                if let Some(code) = index.get(value) {
                    matching[*code as usize] = !*negated;
                }
            }
            Bitmap::from_fn(rows, |r| {
                let code = codes[r];
                code != MISSING_CODE && matching[code as usize]
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CheckContext, Segment};
    use super::*;
    use crate::privacy::Classification;
    use crate::Role;

    fn segment(source: &str) -> Segment {
        let classification = Classification::default();
        Segment::compile(
            source,
            &CheckContext { role: Role::Marketing, classification: &classification, currency_exponent: 2 },
        )
        .unwrap()
    }

    /// A table with orders_90d, city and consent("email"), one row per tuple.
    fn table(segment: &Segment, rows: &[(Option<i64>, Option<&str>, bool)]) -> FactTable {
        let mut table = FactTable::new(segment.columns());
        for (orders, city, consent) in rows {
            let row: Vec<Fact<'_>> = segment
                .columns()
                .iter()
                .map(|c| match c {
                    Column::Trait(_) => orders.map_or(Fact::Missing, Fact::Int),
                    Column::Profile(_) => city.map_or(Fact::Missing, Fact::Text),
                    Column::Consent(..) => Fact::Int(i64::from(*consent)),
                    other => panic!("unexpected column {other:?}"),
                })
                .collect();
            table.push(&row);
        }
        table
    }

    #[test]
    fn conditions_combine_and_missing_values_match_no_comparison() {
        let s = segment(r#"orders_90d >= 2 and city in ("Lyon", "Nantes") and not consent("email")"#);
        let t = table(
            &s,
            &[
                (Some(2), Some("Lyon"), false),
                (Some(5), Some("Nantes"), true),
                (Some(1), Some("Lyon"), false),
                (None, Some("Lyon"), false),
                (Some(3), None, false),
                (Some(3), Some("Paris"), false),
            ],
        );
        let bits = s.evaluate(&t);
        assert_eq!(bits.rows().collect::<Vec<_>>(), vec![0]);

        let s = segment(r#"city != "Lyon" and orders_90d < 4"#);
        let t = table(&s, &[(Some(1), Some("Paris"), false), (Some(1), None, false), (None, Some("Paris"), false)]);
        assert_eq!(s.evaluate(&t).rows().collect::<Vec<_>>(), vec![0]);

        let s = segment(r#"not city = "Lyon""#);
        let t = table(&s, &[(None, Some("Lyon"), false), (None, None, false), (None, Some("Paris"), false)]);
        assert_eq!(s.evaluate(&t).rows().collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn bitmaps_hold_rows_past_a_machine_word_and_not_stays_in_range() {
        let s = segment("not orders_90d >= 1 or orders_90d = 7");
        let rows: Vec<(Option<i64>, Option<&str>, bool)> = (0..130).map(|i| (Some(i % 10), None, false)).collect();
        let bits = s.evaluate(&table(&s, &rows));
        let expected: Vec<usize> = (0..130).filter(|i| i % 10 == 0 || i % 10 == 7).collect();
        assert_eq!(bits.rows().collect::<Vec<_>>(), expected);
        assert_eq!(bits.count(), expected.len());
        assert!(bits.contains(127) && !bits.contains(128) && !bits.contains(500));
    }

    #[test]
    fn an_empty_table_has_no_members() {
        let s = segment("orders_90d >= 0 or not orders_90d >= 0");
        assert_eq!(s.evaluate(&FactTable::new(s.columns())).count(), 0);
    }
}
