//! RFM: recency, frequency and monetary value per customer, their quintile scores
//! 1..5 computed exactly like SQL's `NTILE(5) OVER (ORDER BY …)`, and the named
//! groups of the (R, FM) grid.
//!
//! Definitions (REFERENCES.md section 2), over the purchases of each customer at a
//! reference instant `now`:
//!
//! - `recency_seconds = floor((now − last purchase) / 1 s)`, from instants in
//!   microseconds (a purchase after `now` gives a negative recency, which still
//!   orders correctly);
//! - `frequency` = the number of purchases;
//! - `monetary` = the sum of their amounts in integer minor units, so the result
//!   does not depend on the order of summation.
//!
//! The scores are the SQL window functions
//!
//! ```sql
//! NTILE(5) OVER (ORDER BY recency_seconds DESC, customer_id) AS r,  -- most recent gets 5
//! NTILE(5) OVER (ORDER BY frequency, customer_id)            AS f,
//! NTILE(5) OVER (ORDER BY monetary, customer_id)             AS m
//! ```
//!
//! over the customers who bought at least once (the others are left out). Ties
//! are broken by customer id compared byte by byte (SQL's binary collation), so
//! the scores are deterministic and equal DuckDB's or PostgreSQL's (with `COLLATE
//! "C"`). `NTILE(5)` over `n` rows puts `n / 5` rows in each bucket and one more in
//! each of the first `n % 5` buckets ([`ntile`]).
//!
//! # Named groups
//!
//! The groups follow the usual published grid of R against the combined
//! frequency–monetary score `FM = (F + M) / 2` rounded half up (`(F + M + 1) / 2`
//! in integers), as in Putler's RFM chart and the widely copied "R × F" segment
//! map, with its bottom-left corner split between *Hibernating* (R = 2) and *Lost*
//! (R = 1). Every cell of the 5 × 5 grid belongs to exactly one group ([`GROUP_MAP`]):
//!
//! | R \ FM | 1 | 2 | 3 | 4 | 5 |
//! |---|---|---|---|---|---|
//! | **5** | New | Potential loyalists | Potential loyalists | Champions | Champions |
//! | **4** | Promising | Potential loyalists | Potential loyalists | Loyal | Loyal |
//! | **3** | About to sleep | About to sleep | Need attention | Loyal | Loyal |
//! | **2** | Hibernating | Hibernating | At risk | At risk | Cannot lose them |
//! | **1** | Lost | Lost | At risk | At risk | Cannot lose them |
//!
//! # Speed
//!
//! Scoring sorts each dimension once. Each sort key packs the value's offset from
//! the dimension's minimum (or maximum, for descending recency) above the
//! customer's rank by id into one `u64` (a `u128` only when the values span more
//! than the bits left), so the tie-break costs nothing and the sort compares plain
//! integers instead of strings. Ids are compared as strings once, to rank them.

use std::collections::HashMap;
use std::ops::RangeInclusive;

use chrono::{DateTime, Utc};

use crate::money::MinorUnits;

/// The number of buckets of every score.
pub const BUCKETS: usize = 5;

const MICROS_PER_SECOND: i64 = 1_000_000;

/// Why RFM scores could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RfmError {
    /// The same customer id appears twice among the totals to score.
    #[error("customer `{customer}` appears twice among the totals to score: fold each customer's purchases into one `PurchaseTotals` first")]
    DuplicateCustomer { customer: String },
    /// The ids and the totals do not pair up.
    #[error("{customers} customer ids but {totals} totals: give one `PurchaseTotals` per customer id")]
    LengthMismatch { customers: usize, totals: usize },
    /// More customers than the scores can rank.
    #[error("{customers} customers is more than the {max} that RFM scoring can rank at once")]
    TooManyCustomers { customers: usize, max: usize },
    /// A customer's amounts add up beyond what 64-bit minor units hold.
    #[error("the purchases of customer `{customer}` add up beyond {max} minor units: check the amounts for a unit error (major units taken as minor, or a corrupted value)")]
    MonetaryOverflow { customer: String, max: MinorUnits },
}

/// One purchase, as a store of orders or a file holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purchase<'a> {
    /// The buyer's customer id.
    pub customer: &'a str,
    /// When the purchase happened (the event's timestamp).
    pub at: DateTime<Utc>,
    /// The amount, in minor units.
    pub amount: MinorUnits,
}

/// One customer's purchases folded together: the last instant, the count and the
/// sum. Folding is commutative and totals of parts merge, so purchases may come in
/// any order and be folded in parallel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurchaseTotals {
    /// The last purchase, in microseconds since the Unix epoch.
    pub last_purchase_micros: i64,
    /// The number of purchases.
    pub frequency: u64,
    /// The sum of the amounts, in minor units.
    pub monetary: MinorUnits,
}

impl PurchaseTotals {
    /// The totals of a single purchase at `at_micros` (microseconds since the Unix epoch).
    pub const fn of_one(at_micros: i64, amount: MinorUnits) -> Self {
        PurchaseTotals { last_purchase_micros: at_micros, frequency: 1, monetary: amount }
    }

    /// Fold one more purchase in; `None` when the sum leaves the range of `i64`.
    #[inline]
    pub fn add(&mut self, at_micros: i64, amount: MinorUnits) -> Option<()> {
        self.last_purchase_micros = self.last_purchase_micros.max(at_micros);
        self.frequency += 1;
        self.monetary = self.monetary.checked_add(amount)?;
        Some(())
    }

    /// Merge the totals of another part of the same customer's purchases; `None`
    /// when the sum leaves the range of `i64`.
    pub fn merge(&mut self, other: &PurchaseTotals) -> Option<()> {
        self.last_purchase_micros = self.last_purchase_micros.max(other.last_purchase_micros);
        self.frequency += other.frequency;
        self.monetary = self.monetary.checked_add(other.monetary)?;
        Some(())
    }
}

/// One customer's RFM values and scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfm {
    /// Whole seconds from the last purchase to `now` (rounded down).
    pub recency_seconds: i64,
    /// The number of purchases.
    pub frequency: u64,
    /// The sum of the amounts, in minor units.
    pub monetary: MinorUnits,
    /// Recency score, 1..5 (5 for the most recent buyers).
    pub r: u8,
    /// Frequency score, 1..5 (5 for the most frequent buyers).
    pub f: u8,
    /// Monetary score, 1..5 (5 for the biggest spenders).
    pub m: u8,
}

impl Rfm {
    /// The combined frequency–monetary score: the mean of F and M rounded half up.
    pub fn fm(&self) -> u8 {
        fm_score(self.f, self.m)
    }

    /// The customer's named group.
    pub fn group(&self) -> RfmGroup {
        group_of(self.r, self.fm())
    }
}

/// One customer's id with its RFM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerRfm {
    /// The customer id.
    pub customer: String,
    /// Values and scores.
    pub rfm: Rfm,
}

/// The named groups of the (R, FM) grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RfmGroup {
    /// Bought recently, buy often and spend the most.
    Champions,
    /// Buy often and spend well, fairly recently.
    Loyal,
    /// Recent buyers with an average frequency and spend.
    PotentialLoyalists,
    /// Bought very recently, for the first time or nearly.
    New,
    /// Recent buyers who have not spent much yet.
    Promising,
    /// Average on every count: neither recent nor lapsed.
    NeedAttention,
    /// Neither recent nor frequent: slipping away.
    AboutToSleep,
    /// Bought often and spent well, but long ago.
    AtRisk,
    /// Used to be among the best customers, and have not come back for long.
    CannotLoseThem,
    /// Few, small and old purchases.
    Hibernating,
    /// The oldest, rarest and smallest buyers.
    Lost,
}

names!(RfmGroup {
    Champions => "champions",
    Loyal => "loyal",
    PotentialLoyalists => "potential_loyalists",
    New => "new",
    Promising => "promising",
    NeedAttention => "need_attention",
    AboutToSleep => "about_to_sleep",
    AtRisk => "at_risk",
    CannotLoseThem => "cannot_lose_them",
    Hibernating => "hibernating",
    Lost => "lost",
});

impl RfmGroup {
    /// Every group, best first.
    pub const ALL: [RfmGroup; 11] = [
        RfmGroup::Champions,
        RfmGroup::Loyal,
        RfmGroup::PotentialLoyalists,
        RfmGroup::New,
        RfmGroup::Promising,
        RfmGroup::NeedAttention,
        RfmGroup::AboutToSleep,
        RfmGroup::AtRisk,
        RfmGroup::CannotLoseThem,
        RfmGroup::Hibernating,
        RfmGroup::Lost,
    ];

    /// The group's name for people, in English.
    pub fn label(self) -> &'static str {
        match self {
            RfmGroup::Champions => "Champions",
            RfmGroup::Loyal => "Loyal",
            RfmGroup::PotentialLoyalists => "Potential loyalists",
            RfmGroup::New => "New",
            RfmGroup::Promising => "Promising",
            RfmGroup::NeedAttention => "Need attention",
            RfmGroup::AboutToSleep => "About to sleep",
            RfmGroup::AtRisk => "At risk",
            RfmGroup::CannotLoseThem => "Cannot lose them",
            RfmGroup::Hibernating => "Hibernating",
            RfmGroup::Lost => "Lost",
        }
    }
}

/// The group map: each group with the R scores and FM scores of its rectangle of
/// the grid. A test checks that the rectangles cover every cell exactly once.
pub const GROUP_MAP: [(RfmGroup, RangeInclusive<u8>, RangeInclusive<u8>); 11] = [
    (RfmGroup::Champions, 5..=5, 4..=5),
    (RfmGroup::Loyal, 3..=4, 4..=5),
    (RfmGroup::PotentialLoyalists, 4..=5, 2..=3),
    (RfmGroup::New, 5..=5, 1..=1),
    (RfmGroup::Promising, 4..=4, 1..=1),
    (RfmGroup::NeedAttention, 3..=3, 3..=3),
    (RfmGroup::AboutToSleep, 3..=3, 1..=2),
    (RfmGroup::AtRisk, 1..=2, 3..=4),
    (RfmGroup::CannotLoseThem, 1..=2, 5..=5),
    (RfmGroup::Hibernating, 2..=2, 1..=2),
    (RfmGroup::Lost, 1..=1, 1..=2),
];

/// The combined frequency–monetary score: `(f + m) / 2` rounded half up.
pub fn fm_score(f: u8, m: u8) -> u8 {
    (f + m).div_ceil(2)
}

/// The group of the cell (R, FM). Scores outside 1..5 are clamped into it, so a
/// caller's off-by-one shows as a wrong group rather than a panic.
pub fn group_of(r: u8, fm: u8) -> RfmGroup {
    let (r, fm) = (r.clamp(1, 5), fm.clamp(1, 5));
    GROUP_MAP
        .iter()
        .find(|(_, rs, fms)| rs.contains(&r) && fms.contains(&fm))
        .map(|(group, _, _)| *group)
        .expect("the group map covers every cell of the grid (tested)")
}

/// The 1-based bucket of the row at 0-based `position` among `rows` rows split
/// into `buckets` buckets, as SQL's `NTILE(buckets)`: each bucket gets
/// `rows / buckets` rows and the first `rows % buckets` buckets one more; with fewer
/// rows than buckets, row `k` gets bucket `k + 1`.
pub fn ntile(position: usize, rows: usize, buckets: usize) -> usize {
    debug_assert!(position < rows && buckets > 0);
    let buckets = buckets.min(rows);
    let small = rows / buckets;
    let large = rows % buckets;
    // The first `large` buckets hold `small + 1` rows each.
    let in_large = large * (small + 1);
    if position < in_large {
        position / (small + 1) + 1
    } else {
        large + (position - in_large) / small + 1
    }
}

/// The RFM of every customer who bought, sorted by customer id: the entry point
/// for purchases read from a store. Purchases may come in any order.
pub fn rfm<'a>(
    purchases: impl IntoIterator<Item = Purchase<'a>>,
    now: DateTime<Utc>,
) -> Result<Vec<CustomerRfm>, RfmError> {
    let mut totals: HashMap<&'a str, PurchaseTotals> = HashMap::new();
    for purchase in purchases {
        let at = purchase.at.timestamp_micros();
        match totals.get_mut(purchase.customer) {
            Some(sum) => sum.add(at, purchase.amount).ok_or_else(|| RfmError::MonetaryOverflow {
                customer: purchase.customer.to_owned(),
                max: MinorUnits::MAX,
            })?,
            None => {
                totals.insert(purchase.customer, PurchaseTotals::of_one(at, purchase.amount));
            }
        }
    }
    let mut totals: Vec<(&str, PurchaseTotals)> = totals.into_iter().collect();
    totals.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let customers: Vec<&str> = totals.iter().map(|(customer, _)| *customer).collect();
    let sums: Vec<PurchaseTotals> = totals.iter().map(|(_, sum)| *sum).collect();
    let scores = score(&customers, &sums, now.timestamp_micros())?;
    Ok(customers
        .into_iter()
        .zip(scores)
        .map(|(customer, rfm)| CustomerRfm { customer: customer.to_owned(), rfm })
        .collect())
}

/// Score customers from their folded purchases: `totals[i]` belongs to
/// `customers[i]`, and the answer's `i`-th entry too. `now` is in microseconds
/// since the Unix epoch. Ids must be distinct; their order does not matter.
pub fn score<S: AsRef<str>>(customers: &[S], totals: &[PurchaseTotals], now_micros: i64) -> Result<Vec<Rfm>, RfmError> {
    if customers.len() != totals.len() {
        return Err(RfmError::LengthMismatch { customers: customers.len(), totals: totals.len() });
    }
    let n = customers.len();
    if n > u32::MAX as usize {
        return Err(RfmError::TooManyCustomers { customers: n, max: u32::MAX as usize });
    }
    let by_id = order_by_id(customers)?;
    // rank[i]: the position of customer i in id order, the tie-break of every score.
    let mut rank = vec![0u32; n];
    for (position, &i) in by_id.iter().enumerate() {
        rank[i as usize] = position as u32;
    }
    let recency: Vec<i64> =
        totals.iter().map(|t| (now_micros - t.last_purchase_micros).div_euclid(MICROS_PER_SECOND)).collect();
    // A count of purchases never reaches 2^63, so the cast is exact.
    let frequency: Vec<i64> = totals.iter().map(|t| t.frequency as i64).collect();
    let monetary: Vec<i64> = totals.iter().map(|t| t.monetary).collect();
    let r = quintiles(&recency, Direction::Descending, &rank, &by_id);
    let f = quintiles(&frequency, Direction::Ascending, &rank, &by_id);
    let m = quintiles(&monetary, Direction::Ascending, &rank, &by_id);
    Ok((0..n)
        .map(|i| Rfm {
            recency_seconds: recency[i],
            frequency: totals[i].frequency,
            monetary: totals[i].monetary,
            r: r[i],
            f: f[i],
            m: m[i],
        })
        .collect())
}

/// Indices of `customers` in increasing byte order of their ids; an error names
/// a duplicate.
fn order_by_id<S: AsRef<str>>(customers: &[S]) -> Result<Vec<u32>, RfmError> {
    // Sort on the ids' first 16 bytes as one big-endian integer (cheap to compare
    // and usually decisive), then order runs of equal prefixes by the whole id.
    // Zero padding keeps the prefix order consistent with byte order: a shorter
    // id never sorts after a longer one it is a prefix of.
    let prefix = |s: &str| {
        let bytes = s.as_bytes();
        let mut buf = [0u8; 16];
        let k = bytes.len().min(16);
        buf[..k].copy_from_slice(&bytes[..k]);
        u128::from_be_bytes(buf)
    };
    let mut keyed: Vec<(u128, u32)> =
        customers.iter().enumerate().map(|(i, c)| (prefix(c.as_ref()), i as u32)).collect();
    keyed.sort_unstable_by_key(|&(key, _)| key);
    let mut start = 0;
    while start < keyed.len() {
        let end = start + keyed[start..].iter().take_while(|(key, _)| *key == keyed[start].0).count();
        if end - start > 1 {
            keyed[start..end]
                .sort_unstable_by(|a, b| customers[a.1 as usize].as_ref().cmp(customers[b.1 as usize].as_ref()));
            for pair in keyed[start..end].windows(2) {
                let id = customers[pair[0].1 as usize].as_ref();
                if id == customers[pair[1].1 as usize].as_ref() {
                    return Err(RfmError::DuplicateCustomer { customer: id.to_owned() });
                }
            }
        }
        start = end;
    }
    Ok(keyed.into_iter().map(|(_, i)| i).collect())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ascending,
    Descending,
}

/// The NTILE(5) score of each customer in the order of `values` (ties by id rank),
/// indexed like `values`. `by_id[rank]` is the customer at that rank.
fn quintiles(values: &[i64], direction: Direction, rank: &[u32], by_id: &[u32]) -> Vec<u8> {
    let n = values.len();
    let mut scores = vec![0u8; n];
    if n == 0 {
        return scores;
    }
    let (min, max) = values.iter().fold((i64::MAX, i64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    // The distance from the first value in sort order: an unsigned offset whose
    // ascending order is the wanted order of the values.
    let offset = |v: i64| -> u64 {
        match direction {
            Direction::Ascending => (i128::from(v) - i128::from(min)) as u64,
            Direction::Descending => (i128::from(max) - i128::from(v)) as u64,
        }
    };
    let rank_bits = usize::BITS - (n - 1).leading_zeros();
    let span = (i128::from(max) - i128::from(min)) as u64;
    let span_bits = u64::BITS - span.leading_zeros();
    let mask = (1u64 << rank_bits) - 1;
    let mut assign = |position: usize, rank: u32| {
        scores[by_id[rank as usize] as usize] = ntile(position, n, BUCKETS) as u8;
    };
    if span_bits + rank_bits <= 64 {
        let mut keys: Vec<u64> = (0..n).map(|i| (offset(values[i]) << rank_bits) | u64::from(rank[i])).collect();
        keys.sort_unstable();
        for (position, key) in keys.into_iter().enumerate() {
            assign(position, (key & mask) as u32);
        }
    } else {
        let mut keys: Vec<u128> = (0..n).map(|i| (u128::from(offset(values[i])) << 32) | u128::from(rank[i])).collect();
        keys.sort_unstable();
        for (position, key) in keys.into_iter().enumerate() {
            assign(position, key as u32);
        }
    }
    scores
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// The plain reading of the SQL: sort whole rows with the comparator.
    fn reference_scores(customers: &[&str], values: &[i64], descending: bool) -> Vec<u8> {
        let mut order: Vec<usize> = (0..customers.len()).collect();
        order.sort_by(|&a, &b| {
            let by_value = if descending { values[b].cmp(&values[a]) } else { values[a].cmp(&values[b]) };
            by_value.then(customers[a].cmp(customers[b]))
        });
        let mut scores = vec![0; customers.len()];
        for (position, &i) in order.iter().enumerate() {
            scores[i] = ntile(position, customers.len(), 5) as u8;
        }
        scores
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(seconds, 0).single().expect("valid instant")
    }

    #[test]
    fn ntile_bucket_sizes_match_sql_for_1_to_12_rows() {
        // Bucket sizes of NTILE(5) as PostgreSQL and DuckDB give them.
        let expected: [&[usize]; 12] = [
            &[1],
            &[1, 1],
            &[1, 1, 1],
            &[1, 1, 1, 1],
            &[1, 1, 1, 1, 1],
            &[2, 1, 1, 1, 1],
            &[2, 2, 1, 1, 1],
            &[2, 2, 2, 1, 1],
            &[2, 2, 2, 2, 1],
            &[2, 2, 2, 2, 2],
            &[3, 2, 2, 2, 2],
            &[3, 3, 2, 2, 2],
        ];
        for (rows, sizes) in (1..=12).zip(expected) {
            let mut counts = vec![0usize; 5];
            let mut previous = 1;
            for position in 0..rows {
                let bucket = ntile(position, rows, 5);
                assert!(bucket >= previous, "buckets never go down ({rows} rows)");
                previous = bucket;
                counts[bucket - 1] += 1;
            }
            let used: Vec<usize> = counts.into_iter().filter(|&c| c > 0).collect();
            assert_eq!(used, sizes, "{rows} rows");
        }
    }

    #[test]
    fn every_cell_of_the_grid_belongs_to_exactly_one_group() {
        for r in 1..=5u8 {
            for fm in 1..=5u8 {
                let owners: Vec<RfmGroup> = GROUP_MAP
                    .iter()
                    .filter(|(_, rs, fms)| rs.contains(&r) && fms.contains(&fm))
                    .map(|(group, _, _)| *group)
                    .collect();
                assert_eq!(owners.len(), 1, "cell R={r} FM={fm} belongs to {owners:?}");
            }
        }
        // Every group owns at least one cell, and the map lists each group once.
        for group in RfmGroup::ALL {
            assert_eq!(GROUP_MAP.iter().filter(|(g, _, _)| *g == group).count(), 1, "{group:?}");
            assert_eq!(RfmGroup::parse(group.as_str()), Some(group));
        }
    }

    #[test]
    fn the_grid_matches_the_documented_table() {
        // Row R = 5 down to R = 1, columns FM = 1..5, as in the module doc and docs/rfm.md.
        use RfmGroup::*;
        let table = [
            [New, PotentialLoyalists, PotentialLoyalists, Champions, Champions],
            [Promising, PotentialLoyalists, PotentialLoyalists, Loyal, Loyal],
            [AboutToSleep, AboutToSleep, NeedAttention, Loyal, Loyal],
            [Hibernating, Hibernating, AtRisk, AtRisk, CannotLoseThem],
            [Lost, Lost, AtRisk, AtRisk, CannotLoseThem],
        ];
        for (row, groups) in table.iter().enumerate() {
            for (column, group) in groups.iter().enumerate() {
                assert_eq!(group_of(5 - row as u8, column as u8 + 1), *group);
            }
        }
        assert_eq!(fm_score(1, 2), 2);
        assert_eq!(fm_score(4, 5), 5);
        assert_eq!(fm_score(3, 3), 3);
    }

    #[test]
    fn a_small_example_computed_by_hand() {
        // now = 1,000,000 s. Seven customers, one with no purchase (left out).
        let now = at(1_000_000);
        let purchases = [
            ("cus_a", 999_000, 1_000), // a: recency 1000, f 1, m 1000
            ("cus_b", 900_000, 500),
            ("cus_b", 990_000, 700),   // b: recency 10_000, f 2, m 1200
            ("cus_c", 999_900, 5_000), // c: recency 100, f 1, m 5000
            ("cus_d", 500_000, 200),
            ("cus_d", 600_000, 200),
            ("cus_d", 700_000, 200),   // d: recency 300_000, f 3, m 600
            ("cus_e", 999_000, 1_000), // e: recency 1000 (tie with a), f 1, m 1000 (tie with a)
            ("cus_f", 10, 99),         // f: recency 999_990, f 1, m 99
        ];
        let purchases = purchases.iter().map(|&(customer, s, amount)| Purchase { customer, at: at(s), amount });
        let scores = rfm(purchases, now).expect("scores");
        let ids: Vec<&str> = scores.iter().map(|s| s.customer.as_str()).collect();
        assert_eq!(ids, ["cus_a", "cus_b", "cus_c", "cus_d", "cus_e", "cus_f"]);
        // Six rows: bucket sizes 2, 1, 1, 1, 1.
        // R, recency descending then id: f (999_990), d (300_000), b (10_000), a (1000), e (1000), c (100)
        //   -> f 1, d 1, b 2, a 3, e 4, c 5.
        // F, frequency ascending then id: a, c, e, f (1), b (2), d (3)
        //   -> a 1, c 1, e 2, f 3, b 4, d 5.
        // M, monetary ascending then id: f (99), d (600), a (1000), e (1000), b (1200), c (5000)
        //   -> f 1, d 1, a 2, e 3, b 4, c 5.
        let got: Vec<(i64, u64, i64, u8, u8, u8)> = scores
            .iter()
            .map(|s| (s.rfm.recency_seconds, s.rfm.frequency, s.rfm.monetary, s.rfm.r, s.rfm.f, s.rfm.m))
            .collect();
        assert_eq!(
            got,
            [
                (1_000, 1, 1_000, 3, 1, 2),
                (10_000, 2, 1_200, 2, 4, 4),
                (100, 1, 5_000, 5, 1, 5),
                (300_000, 3, 600, 1, 5, 1),
                (1_000, 1, 1_000, 4, 2, 3),
                (999_990, 1, 99, 1, 3, 1),
            ]
        );
        // c: R 5, FM (1 + 5 + 1) / 2 = 3 -> Potential loyalists; d: R 1, FM 3 -> At risk.
        assert_eq!(scores[2].rfm.group(), RfmGroup::PotentialLoyalists);
        assert_eq!(scores[3].rfm.group(), RfmGroup::AtRisk);
        assert_eq!(scores[5].rfm.group(), RfmGroup::Lost);
    }

    #[test]
    fn ties_are_broken_by_customer_id_whatever_the_input_order() {
        // Everyone alike: the scores follow the ids alone, in byte order
        // (upper case before lower case, a prefix before its extensions).
        let customers =
            ["cus_b", "cus_B", "cus_a", "cus_", "cus_aa", "cus_ab", "cus_a\u{e9}", "cus_ZZ", "cus_0", "cus_9"];
        let totals = vec![PurchaseTotals::of_one(0, 100); customers.len()];
        let scores = score(&customers, &totals, 10 * MICROS_PER_SECOND).expect("scores");
        let mut sorted = customers.to_vec();
        sorted.sort_unstable();
        // Ten rows: two per bucket, in id order for F and M; R orders by recency
        // descending, then id ascending, so it is the same.
        for (i, customer) in customers.iter().enumerate() {
            let position = sorted.iter().position(|c| c == customer).expect("present");
            let expected = (position / 2 + 1) as u8;
            assert_eq!((scores[i].r, scores[i].f, scores[i].m), (expected, expected, expected), "{customer}");
        }
    }

    #[test]
    fn ids_sharing_a_long_prefix_are_ordered_by_their_whole_value() {
        let customers =
            ["cus_0123456789ABCDEFz", "cus_0123456789ABCDEFa", "cus_0123456789ABCDEF", "cus_0123456789ABCDE"];
        let totals = vec![PurchaseTotals::of_one(0, 1); 4];
        let scores = score(&customers, &totals, 0).expect("scores");
        let f: Vec<u8> = scores.iter().map(|s| s.f).collect();
        assert_eq!(f, [4, 3, 2, 1]);
    }

    #[test]
    fn scores_equal_a_plain_sort_on_random_data() {
        // A deterministic pseudo-random population with many ties, both key
        // widths (u64 and u128) exercised through the spans of the values.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (n, wide) in [(1usize, false), (4, false), (37, false), (1000, false), (1000, true)] {
            let ids: Vec<String> = (0..n).map(|i| format!("cus_{:05}", (i * 7919) % 100_003)).collect();
            let customers: Vec<&str> = ids.iter().map(String::as_str).collect();
            let totals: Vec<PurchaseTotals> = (0..n)
                .map(|_| PurchaseTotals {
                    last_purchase_micros: (next() % 50) as i64 * MICROS_PER_SECOND,
                    frequency: next() % 4 + 1,
                    monetary: if wide {
                        (next() % 3) as i64 * (i64::MAX / 2) - i64::MAX / 2
                    } else {
                        (next() % 20) as i64 - 5
                    },
                })
                .collect();
            let scores = score(&customers, &totals, 100 * MICROS_PER_SECOND).expect("scores");
            let recency: Vec<i64> = scores.iter().map(|s| s.recency_seconds).collect();
            let frequency: Vec<i64> = scores.iter().map(|s| s.frequency as i64).collect();
            let monetary: Vec<i64> = scores.iter().map(|s| s.monetary).collect();
            let r: Vec<u8> = scores.iter().map(|s| s.r).collect();
            let f: Vec<u8> = scores.iter().map(|s| s.f).collect();
            let m: Vec<u8> = scores.iter().map(|s| s.m).collect();
            assert_eq!(r, reference_scores(&customers, &recency, true), "R, {n} customers");
            assert_eq!(f, reference_scores(&customers, &frequency, false), "F, {n} customers");
            assert_eq!(m, reference_scores(&customers, &monetary, false), "M, {n} customers");
        }
    }

    #[test]
    fn recency_is_rounded_down_to_whole_seconds() {
        let totals = [
            PurchaseTotals::of_one(1_500_000, 1),                  // 8.5 s before now
            PurchaseTotals::of_one(10 * MICROS_PER_SECOND + 1, 1), // 1 µs after now
        ];
        let scores = score(&["a", "b"], &totals, 10 * MICROS_PER_SECOND).expect("scores");
        assert_eq!(scores[0].recency_seconds, 8);
        assert_eq!(scores[1].recency_seconds, -1);
    }

    #[test]
    fn customers_without_purchases_and_bad_input_are_handled() {
        assert_eq!(rfm(std::iter::empty(), at(0)), Ok(Vec::new()));
        assert_eq!(
            score(&["a", "a"], &[PurchaseTotals::of_one(0, 1); 2], 0),
            Err(RfmError::DuplicateCustomer { customer: "a".into() })
        );
        assert_eq!(
            score(&["a"], &[PurchaseTotals::of_one(0, 1); 2], 0),
            Err(RfmError::LengthMismatch { customers: 1, totals: 2 })
        );
        let overflow =
            [Purchase { customer: "a", at: at(0), amount: i64::MAX }, Purchase { customer: "a", at: at(1), amount: 1 }];
        assert!(matches!(rfm(overflow, at(2)), Err(RfmError::MonetaryOverflow { .. })));
    }

    #[test]
    fn totals_fold_in_any_order_and_merge() {
        let mut one = PurchaseTotals::of_one(50, 10);
        one.add(20, 5).expect("no overflow");
        let mut other = PurchaseTotals::of_one(70, 1);
        other.merge(&one).expect("no overflow");
        assert_eq!(other, PurchaseTotals { last_purchase_micros: 70, frequency: 3, monetary: 16 });
    }
}
