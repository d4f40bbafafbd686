//! Markov removal-effect attribution, computed exactly on the absorbing chain.
//!
//! The chain, as ChannelAttribution builds it (`markov_model`):
//!
//! - states are `(start)`, `(conversion)`, `(null)` and, for order `k`, the
//!   k-tuples of consecutive channels of a path: a path `c1 > … > cL` with
//!   `L ≥ k` visits the `L − k + 1` windows `(c1…ck), (c2…ck+1), …`; a path
//!   shorter than `k` is one state holding the whole path (`(c1…cL)`, no
//!   padding: it is a state of its own, distinct from every k-tuple);
//! - consecutive repeats of a *state* are collapsed, so at order 1 `a > a > b`
//!   is `a > b`, while at order 2 `a > a > b` is `(a a) → (a b)` (repeats inside
//!   a tuple stay);
//! - every journey on a path walks `(start)` → its states → `(conversion)` for
//!   its `total_conversions` and `(null)` for its `total_null`; transition
//!   probabilities are these counts normalised per state; a path with neither
//!   conversions nor nulls adds nothing.
//!
//! Removing channel `c` sends every state whose tuple contains `c` to `(null)`.
//! Its removal effect is `1 − P(conversion without c) / P(conversion)`; the total
//! conversions are shared in proportion to the removal effects. Values are shared
//! the same way with the probability weighted by the mean value per conversion of
//! the state the conversion comes from (ChannelAttribution draws the value of a
//! simulated conversion from the values of the paths ending in that state).
//!
//! ChannelAttribution estimates these probabilities by simulation; relais solves
//! the linear system `x = b + Q x` over the transient states, where `b(s)` is the
//! probability of converting straight from `s`: Gauss–Seidel sweeps taken in
//! decreasing distance from `(start)` (paths mostly move away from it, so one
//! sweep nearly solves the acyclic part) until no value moves by more than 1e-14
//! of the largest. The system is sparse (at most one row per distinct state,
//! one entry per distinct transition); each removal starts from the baseline
//! solution, and removals run on all cores.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Mutex;

use super::paths::{Credit, PathSet};
use super::JourneyError;

/// A fast hasher seeded per map (keys derive from caller input); results do not
/// depend on iteration order, since edges are sorted before use.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Sweeps after which an iterative solve is declared not converged.
const MAX_SWEEPS: usize = 1_000_000;

/// Convergence: no value moved by more than this fraction of the largest value.
const TOLERANCE: f64 = 1e-14;

/// The order of a Markov model: 1 to 4 channels per state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order(u8);

impl Order {
    /// An order from 1 to 4.
    pub fn new(order: u32) -> Result<Self, JourneyError> {
        match order {
            1..=4 => Ok(Self(order as u8)),
            _ => Err(JourneyError::OrderOutOfRange { order }),
        }
    }

    /// The number of channels per state.
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

/// Removal-effect attribution, per channel in the order of [`PathSet::channels`].
#[derive(Debug, Clone, PartialEq)]
pub struct MarkovAttribution {
    /// The model's order.
    pub order: Order,
    /// Conversions and value credited to each channel.
    pub credit: Vec<Credit>,
    /// Removal effect of each channel on the conversion probability.
    pub removal_effects: Vec<f64>,
    /// Probability that a journey from `(start)` converts.
    pub conversion_probability: f64,
    /// Transient states of the chain (without `(start)`).
    pub states: usize,
    /// Distinct transitions between transient states, `(start)` included.
    pub transitions: usize,
}

/// The absorbing chain in compressed sparse rows over the transient states (0 is `(start)`).
#[derive(Debug)]
pub(crate) struct Chain {
    /// The channels of each state packed 16 bits each (channel id + 1), 0 for `(start)`.
    keys: Vec<u64>,
    row_start: Vec<u32>,
    column: Vec<u32>,
    probability: Vec<f64>,
    /// Probability of going straight to `(conversion)`.
    to_conversion: Vec<f64>,
    /// The same, times the mean value per conversion from that state.
    to_value: Vec<f64>,
    /// Reachable states in sweep order: farthest from `(start)` first.
    sweep: Vec<u32>,
}

/// Packs a window of at most four channel ids into one key.
fn pack(window: &[u16]) -> u64 {
    window.iter().enumerate().fold(0, |key, (i, &c)| key | ((c as u64 + 1) << (16 * i)))
}

/// Whether the state with `key` holds channel `c`.
fn holds(key: u64, c: u16) -> bool {
    let lane = c as u64 + 1;
    (0..4).any(|i| (key >> (16 * i)) & 0xFFFF == lane)
}

impl Chain {
    /// Builds the chain of order `order` from the paths.
    pub(crate) fn build(paths: &PathSet, order: Order) -> Chain {
        let k = order.get();
        let mut ids: FastMap<u64, u32> = FastMap::default();
        ids.insert(0, 0);
        let mut keys = vec![0u64];
        let mut edges: FastMap<u64, f64> = FastMap::default();
        let mut conversions = vec![0.0f64];
        let mut nulls = vec![0.0f64];
        let mut values = vec![0.0f64];
        for row in paths.rows() {
            let weight = row.conversions + row.nulls;
            if weight == 0.0 {
                continue;
            }
            let touches = paths.touches(row);
            let windows = if touches.len() <= k { 1 } else { touches.len() - k + 1 };
            let mut previous = 0u32;
            for i in 0..windows {
                let key = pack(&touches[i..(i + k).min(touches.len())]);
                let next = *ids.entry(key).or_insert_with(|| {
                    keys.push(key);
                    conversions.push(0.0);
                    nulls.push(0.0);
                    values.push(0.0);
                    (keys.len() - 1) as u32
                });
                if next != previous {
                    *edges.entry(((previous as u64) << 32) | next as u64).or_insert(0.0) += weight;
                    previous = next;
                }
            }
            conversions[previous as usize] += row.conversions;
            nulls[previous as usize] += row.nulls;
            values[previous as usize] += row.value;
        }
        let n = keys.len();
        let mut edges: Vec<(u64, f64)> = edges.into_iter().collect();
        edges.sort_unstable_by_key(|&(pair, _)| pair);
        let mut out = conversions.iter().zip(&nulls).map(|(c, n)| c + n).collect::<Vec<f64>>();
        for &(pair, weight) in &edges {
            out[(pair >> 32) as usize] += weight;
        }
        let mut row_start = vec![0u32; n + 1];
        for &(pair, _) in &edges {
            row_start[(pair >> 32) as usize + 1] += 1;
        }
        for s in 0..n {
            row_start[s + 1] += row_start[s];
        }
        let column = edges.iter().map(|&(pair, _)| pair as u32).collect();
        let probability = edges.iter().map(|&(pair, weight)| weight / out[(pair >> 32) as usize]).collect();
        let rate = |amount: &[f64]| -> Vec<f64> {
            amount.iter().zip(&out).map(|(a, o)| if *o > 0.0 { a / o } else { 0.0 }).collect()
        };
        let to_conversion = rate(&conversions);
        let to_value = rate(&values);
        let mut chain = Chain { keys, row_start, column, probability, to_conversion, to_value, sweep: Vec::new() };
        chain.sweep = chain.sweep_order();
        chain
    }

    /// Reachable states ordered by decreasing breadth-first distance from `(start)`.
    fn sweep_order(&self) -> Vec<u32> {
        let n = self.keys.len();
        let mut depth = vec![u32::MAX; n];
        let mut queue = vec![0u32];
        depth[0] = 0;
        let mut head = 0;
        while head < queue.len() {
            let s = queue[head] as usize;
            head += 1;
            for e in self.row_start[s] as usize..self.row_start[s + 1] as usize {
                let t = self.column[e] as usize;
                if depth[t] == u32::MAX {
                    depth[t] = depth[s] + 1;
                    queue.push(t as u32);
                }
            }
        }
        queue.reverse();
        queue
    }

    /// Solves `x = b + Q x` (conversion probability and value) in place, with the
    /// states in `removed` held at 0; `x` and `xv` hold the starting guess.
    fn solve(&self, removed: &[bool], x: &mut [f64], xv: &mut [f64]) -> Result<(), JourneyError> {
        for &s in &self.sweep {
            if removed[s as usize] {
                x[s as usize] = 0.0;
                xv[s as usize] = 0.0;
            }
        }
        for _ in 0..MAX_SWEEPS {
            let (mut change, mut change_value, mut largest, mut largest_value) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
            for &s in &self.sweep {
                let s = s as usize;
                if removed[s] {
                    continue;
                }
                let (mut p, mut v) = (self.to_conversion[s], self.to_value[s]);
                for e in self.row_start[s] as usize..self.row_start[s + 1] as usize {
                    let t = self.column[e] as usize;
                    p += self.probability[e] * x[t];
                    v += self.probability[e] * xv[t];
                }
                change = change.max((p - x[s]).abs());
                change_value = change_value.max((v - xv[s]).abs());
                largest = largest.max(p);
                largest_value = largest_value.max(v);
                x[s] = p;
                xv[s] = v;
            }
            if change <= TOLERANCE * largest && change_value <= TOLERANCE * largest_value {
                return Ok(());
            }
        }
        Err(JourneyError::NotConverged { sweeps: MAX_SWEEPS })
    }

    /// The number of transient states, `(start)` excluded.
    fn states(&self) -> usize {
        self.keys.len() - 1
    }
}

/// Removal-effect attribution of order `order` over `paths`.
pub fn markov_attribution(paths: &PathSet, order: Order) -> Result<MarkovAttribution, JourneyError> {
    let total_conversions = paths.total_conversions();
    if total_conversions <= 0.0 {
        return Err(JourneyError::NoConversions);
    }
    let total_value = paths.total_value();
    let chain = Chain::build(paths, order);
    let n = chain.keys.len();
    let mut x = vec![0.0; n];
    let mut xv = vec![0.0; n];
    chain.solve(&vec![false; n], &mut x, &mut xv)?;
    let (p, pv) = (x[0], xv[0]);

    // Each channel's removal is an independent solve from the baseline solution.
    let channels = paths.channels().len();
    let without: Mutex<Vec<(f64, f64)>> = Mutex::new(vec![(0.0, 0.0); channels]);
    let failure: Mutex<Option<JourneyError>> = Mutex::new(None);
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(channels).max(1);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let (mut xc, mut xvc) = (x.clone(), xv.clone());
                let mut removed = vec![false; n];
                loop {
                    let c = next.fetch_add(1, AtomicOrdering::Relaxed);
                    if c >= channels {
                        break;
                    }
                    xc.copy_from_slice(&x);
                    xvc.copy_from_slice(&xv);
                    for (flag, &key) in removed.iter_mut().zip(&chain.keys) {
                        *flag = holds(key, c as u16);
                    }
                    match chain.solve(&removed, &mut xc, &mut xvc) {
                        Ok(()) => without.lock().expect("no panic while holding the lock")[c] = (xc[0], xvc[0]),
                        Err(error) => {
                            *failure.lock().expect("no panic while holding the lock") = Some(error);
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(error) = failure.into_inner().expect("threads ended") {
        return Err(error);
    }
    let without = without.into_inner().expect("threads ended");
    // P(conversion) − P(conversion without c) = P(conversion and c visited) ≥ 0;
    // clamp the rounding dust of channels that never lead to a conversion.
    let lift: Vec<(f64, f64)> = without.iter().map(|&(pc, vc)| ((p - pc).max(0.0), (pv - vc).max(0.0))).collect();
    let (sum, sum_value) = lift.iter().fold((0.0, 0.0), |(a, b), &(l, lv)| (a + l, b + lv));
    let credit = lift
        .iter()
        .map(|&(l, lv)| Credit {
            conversions: if sum > 0.0 { total_conversions * l / sum } else { 0.0 },
            value: if sum_value > 0.0 { total_value * lv / sum_value } else { 0.0 },
        })
        .collect();
    let removal_effects = lift.iter().map(|&(l, _)| if p > 0.0 { l / p } else { 0.0 }).collect();
    Ok(MarkovAttribution {
        order,
        credit,
        removal_effects,
        conversion_probability: p,
        states: chain.states(),
        transitions: chain.column.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journey::paths::tests::set;

    fn order(k: u32) -> Order {
        Order::new(k).unwrap()
    }

    #[test]
    fn a_two_channel_chain_gives_the_hand_computed_shares() {
        // start→A 4, start→B 4, A→B 4, B→conversion 3, B→null 5: P(conv) = 3/8;
        // without A half the journeys die, P = 3/16; without B nothing converts.
        let paths = set(&[("A > B", 2.0, 20.0, 2.0), ("B", 1.0, 40.0, 3.0)]);
        let m = markov_attribution(&paths, order(1)).unwrap();
        assert!((m.conversion_probability - 3.0 / 8.0).abs() < 1e-15);
        assert!((m.removal_effects[0] - 0.5).abs() < 1e-14);
        assert!((m.removal_effects[1] - 1.0).abs() < 1e-14);
        assert!((m.credit[0].conversions - 1.0).abs() < 1e-12);
        assert!((m.credit[1].conversions - 2.0).abs() < 1e-12);
        assert!((m.credit[0].value - 20.0).abs() < 1e-10);
        assert!((m.credit[1].value - 40.0).abs() < 1e-10);
    }

    #[test]
    fn states_are_k_tuples_short_paths_stay_whole_and_repeated_states_collapse() {
        let paths = set(&[("a > a > b", 1.0, 0.0, 0.0), ("a", 1.0, 0.0, 0.0), ("a > b > a > b", 0.0, 0.0, 1.0)]);
        let [a, b] = [0u16, 1];
        let chain = Chain::build(&paths, order(2));
        let mut keys = chain.keys[1..].to_vec();
        keys.sort_unstable();
        let mut expected = vec![pack(&[a, a]), pack(&[a, b]), pack(&[a]), pack(&[b, a])];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        // Order 1 collapses `a > a` into `a`: the first path is `a > b` there.
        let collapsed = set(&[("a > b", 1.0, 0.0, 0.0), ("a", 1.0, 0.0, 0.0), ("a > b > a > b", 0.0, 0.0, 1.0)]);
        let one = markov_attribution(&paths, order(1)).unwrap();
        assert_eq!(one, markov_attribution(&collapsed, order(1)).unwrap());
        assert!(holds(pack(&[a, b]), b) && !holds(pack(&[a, a]), b));
    }

    /// Dense Gaussian elimination of (I − Q) x = b, independent of the sweeps.
    fn dense_conversion_probability(chain: &Chain, removed: &[bool]) -> f64 {
        let n = chain.keys.len();
        let mut a = vec![vec![0.0; n + 1]; n];
        for s in 0..n {
            a[s][s] = 1.0;
            if removed[s] {
                continue;
            }
            a[s][n] = chain.to_conversion[s];
            for e in chain.row_start[s] as usize..chain.row_start[s + 1] as usize {
                a[s][chain.column[e] as usize] -= chain.probability[e];
            }
        }
        for col in 0..n {
            let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap();
            a.swap(col, pivot);
            let pivot_row = a[col].clone();
            for (row, line) in a.iter_mut().enumerate() {
                if row != col && line[col] != 0.0 {
                    let f = line[col] / pivot_row[col];
                    for (x, p) in line[col..].iter_mut().zip(&pivot_row[col..]) {
                        *x -= f * p;
                    }
                }
            }
        }
        a[0][n] / a[0][0]
    }

    #[test]
    fn the_sweeps_agree_with_a_dense_solve_on_cyclic_paths_at_every_order() {
        let paths = set(&[
            ("a > b > a > b > c", 3.0, 30.0, 5.0),
            ("c > a > c > a", 2.0, 10.0, 7.0),
            ("b > b > c > a > b", 1.0, 1.0, 2.0),
            ("d > a", 0.0, 0.0, 4.0),
            ("c", 4.0, 8.0, 9.0),
            ("a > d > b > c > d > a > b", 2.0, 6.0, 1.0),
        ]);
        for k in 1..=4 {
            let chain = Chain::build(&paths, order(k));
            let n = chain.keys.len();
            let m = markov_attribution(&paths, order(k)).unwrap();
            let p = dense_conversion_probability(&chain, &vec![false; n]);
            assert!((m.conversion_probability - p).abs() < 1e-12 * p, "order {k}");
            for c in 0..4u16 {
                let removed: Vec<bool> = chain.keys.iter().map(|&key| holds(key, c)).collect();
                let effect = 1.0 - dense_conversion_probability(&chain, &removed) / p;
                assert!((m.removal_effects[c as usize] - effect).abs() < 1e-10, "order {k} channel {c}");
            }
            let total: f64 = m.credit.iter().map(|c| c.conversions).sum();
            assert!((total - 12.0).abs() < 1e-9);
            assert!(m.credit.iter().all(|c| c.conversions.is_finite() && c.value.is_finite()));
        }
    }

    #[test]
    fn a_channel_seen_only_without_conversion_gets_what_it_leads_to() {
        // `d` only on a path that never converts, but `d → a` and `a` converts.
        let paths = set(&[("d > a", 0.0, 0.0, 4.0), ("a", 2.0, 0.0, 2.0)]);
        let m = markov_attribution(&paths, order(1)).unwrap();
        assert!(m.credit[0].conversions > 0.0);
        let dead_end = set(&[("a", 2.0, 0.0, 2.0), ("a > d", 0.0, 0.0, 4.0)]);
        let m = markov_attribution(&dead_end, order(1)).unwrap();
        assert_eq!(m.credit[1].conversions, 0.0);
        assert_eq!(m.credit[0].conversions, 2.0);
    }

    #[test]
    fn no_conversion_and_bad_orders_are_refused() {
        let paths = set(&[("a > b", 0.0, 0.0, 3.0)]);
        assert_eq!(markov_attribution(&paths, order(1)), Err(JourneyError::NoConversions));
        assert_eq!(Order::new(0), Err(JourneyError::OrderOutOfRange { order: 0 }));
        assert_eq!(Order::new(5), Err(JourneyError::OrderOutOfRange { order: 5 }));
    }
}
