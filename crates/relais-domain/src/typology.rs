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
}
