//! Typologies: the figures the customer room shows for each segment of a
//! typology — satisfaction read from survey answers, and how a figure
//! changed from one period to the next.
//!
//! Satisfaction comes from `Survey Answered` events: `properties.nps` (0 to
//! 10, "how likely are you to recommend us") and `properties.csat` or
//! `properties.rating` (1 to 5). Values outside those ranges are not answers.

/// Satisfaction of a group of people over a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Satisfaction {
    /// Net Promoter Score: % of 9–10 answers minus % of 0–6 answers, from -100
    /// to 100; `None` without answers.
    pub nps: Option<f64>,
    /// NPS answers counted.
    pub nps_answers: usize,
    /// Customer satisfaction: % of 4–5 answers on the 1–5 scale; `None` without answers.
    pub csat: Option<f64>,
    /// CSAT answers counted.
    pub csat_answers: usize,
}

impl Satisfaction {
    /// Fold survey answers: each is (NPS answer, CSAT answer), either may be absent.
    pub fn of(answers: impl IntoIterator<Item = (Option<i64>, Option<i64>)>) -> Satisfaction {
        let (mut promoters, mut detractors, mut nps_answers) = (0usize, 0usize, 0usize);
        let (mut satisfied, mut csat_answers) = (0usize, 0usize);
        for (nps, csat) in answers {
            if let Some(score) = nps.filter(|s| (0..=10).contains(s)) {
                nps_answers += 1;
                promoters += usize::from(score >= 9);
                detractors += usize::from(score <= 6);
            }
            if let Some(score) = csat.filter(|s| (1..=5).contains(s)) {
                csat_answers += 1;
                satisfied += usize::from(score >= 4);
            }
        }
        let percent = |part: f64, whole: usize| (whole > 0).then(|| 100.0 * part / whole as f64);
        Satisfaction {
            nps: percent(promoters as f64 - detractors as f64, nps_answers),
            nps_answers,
            csat: percent(satisfied as f64, csat_answers),
            csat_answers,
        }
    }
}

/// The change from `before` to `now` in percent of `before`; `None` when there
/// is no earlier figure or it is zero (a change from nothing has no percentage).
pub fn change_pct(now: f64, before: Option<f64>) -> Option<f64> {
    match before {
        Some(b) if b != 0.0 && b.is_finite() && now.is_finite() => Some(100.0 * (now - b) / b.abs()),
        _ => None,
    }
}

/// The mean of `count` values summing to `sum` minor units, rounded to the
/// nearest unit; `None` for no values.
pub fn mean_minor(sum: i64, count: i64) -> Option<i64> {
    (count > 0).then(|| ((sum as f64) / (count as f64)).round() as i64)
}

/// Days of history a size move is judged against (at least this many daily
/// changes before the latest one).
pub const MIN_HISTORY: usize = 7;

/// Whether the latest daily move of a series (sizes, oldest first) is larger
/// than usual: more than three standard deviations from the mean of the
/// previous daily changes, and at least one percent. Returns the move in
/// percent when it is; `None` with too little history.
pub fn unusual_move(series: &[f64]) -> Option<f64> {
    if series.len() < MIN_HISTORY + 2 {
        return None;
    }
    let changes: Vec<f64> = series.windows(2).filter_map(|w| change_pct(w[1], Some(w[0]))).collect();
    let (latest, usual) = changes.split_last()?;
    if usual.len() < MIN_HISTORY {
        return None;
    }
    let mean = usual.iter().sum::<f64>() / usual.len() as f64;
    let variance = usual.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / usual.len() as f64;
    let spread = variance.sqrt().max(0.5);
    ((latest - mean).abs() > 3.0 * spread && latest.abs() >= 1.0).then_some(*latest)
}

/// Answers needed in each period before a satisfaction move is reported.
pub const MIN_ANSWERS: usize = 20;

/// How far NPS moved between two periods (points), when both periods have
/// enough answers and it moved by ten points or more.
pub fn nps_shift(now: &Satisfaction, before: &Satisfaction) -> Option<f64> {
    if now.nps_answers < MIN_ANSWERS || before.nps_answers < MIN_ANSWERS {
        return None;
    }
    let shift = now.nps? - before.nps?;
    (shift.abs() >= 10.0).then_some(shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nps_counts_promoters_against_detractors_and_csat_the_satisfied() {
        let s = Satisfaction::of([
            (Some(10), Some(5)),
            (Some(9), None),
            (Some(7), Some(3)),
            (Some(2), Some(4)),
            (None, None),
        ]);
        // 2 promoters, 1 passive, 1 detractor out of 4: 25.
        assert_eq!((s.nps, s.nps_answers), (Some(25.0), 4));
        // 2 satisfied out of 3.
        assert_eq!(s.csat_answers, 3);
        assert!((s.csat.unwrap() - 200.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn answers_out_of_range_and_no_answers_give_no_score() {
        let s = Satisfaction::of([(Some(11), Some(0)), (Some(-1), Some(6))]);
        assert_eq!(s, Satisfaction::default());
    }

    #[test]
    fn a_change_from_nothing_has_no_percentage() {
        assert_eq!(change_pct(120.0, Some(100.0)), Some(20.0));
        assert_eq!(change_pct(-10.0, Some(-20.0)), Some(50.0));
        assert_eq!(change_pct(5.0, Some(0.0)), None);
        assert_eq!(change_pct(5.0, None), None);
        assert_eq!(mean_minor(10, 3), Some(3));
        assert_eq!(mean_minor(0, 0), None);
    }
    #[test]
    fn a_jump_after_a_steady_series_is_unusual_and_noise_is_not() {
        let mut steady: Vec<f64> = (0..10).map(|d| 1000.0 + d as f64 * 2.0).collect();
        assert_eq!(unusual_move(&steady), None);
        steady.push(1300.0);
        let moved = unusual_move(&steady).expect("a jump of about 29 % is unusual");
        assert!((moved - (1300.0 / 1018.0 - 1.0) * 100.0).abs() < 1e-9);
        let noisy = [100.0, 130.0, 90.0, 125.0, 95.0, 128.0, 92.0, 126.0, 94.0, 120.0];
        assert_eq!(unusual_move(&noisy), None);
        assert_eq!(unusual_move(&[1.0, 100.0]), None, "too little history");
    }

    #[test]
    fn an_nps_shift_needs_answers_on_both_sides() {
        let now = Satisfaction { nps: Some(40.0), nps_answers: 50, ..Satisfaction::default() };
        let before = Satisfaction { nps: Some(25.0), nps_answers: 50, ..Satisfaction::default() };
        assert_eq!(nps_shift(&now, &before), Some(15.0));
        let few = Satisfaction { nps_answers: 5, ..before };
        assert_eq!(nps_shift(&now, &few), None);
        let close = Satisfaction { nps: Some(35.0), ..before };
        assert_eq!(nps_shift(&now, &close), None);
    }
}
